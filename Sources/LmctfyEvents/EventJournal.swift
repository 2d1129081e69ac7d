// The event log on disk (state_dir/events/), so that after an agent restart
// a subscriber of the previous boot learns exactly which of that boot's
// events survived, and gets them (PROTOCOL.md section 6.2).
//
// Two files, `current` and `previous`, each a sequence of records: a 4-byte
// big-endian length and a serialized ContainerEvent. Every event is appended
// to `current` as it is recorded (one write; not fsynced, like the request
// journal: it serves an agent that dies, whose writes the page cache keeps).
// When `current` holds `capacity` events it becomes `previous` (the older
// `previous` goes), so the disk keeps between `capacity` and 2 x `capacity`
// events. A torn last record (the agent killed mid-write) ends the reading.
import Glibc
import LmctfyProto
import LmctfySystem

/// Used only under the event log's lock.
final class EventJournal: @unchecked Sendable {
    let directory: String
    let capacity: Int
    private var fd: Int32 = -1
    private var count = 0
    /// What the files held when they were opened (`previous`, then
    /// `current`): what earlier boots left.
    let opened: [ContainerEvent]

    let currentPath: String
    let previousPath: String

    /// Opens (making the directory, 0700) and reads what earlier boots left.
    init(directory: String, capacity: Int) throws(LmctfyError) {
        self.directory = directory
        self.capacity = max(1, capacity)
        currentPath = directory + "/current"
        previousPath = directory + "/previous"
        if mkdir(directory, 0o700) != 0 && errno != EEXIST {
            throw SystemError("mkdir", directory, errno).lmctfy(.failedPrecondition, "Making the event journal directory")
        }
        let current = Self.read(currentPath)
        count = current.count
        opened = Self.read(previousPath) + current
        try open()
    }

    deinit {
        if fd >= 0 { close(fd) }
    }

    private func open() throws(LmctfyError) {
        let f = Glibc.open(currentPath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        guard f >= 0 else { throw SystemError("open", currentPath, errno).lmctfy(.failedPrecondition, "Opening the event journal") }
        fd = f
    }

    /// Every event on disk, oldest first (`previous`, then `current`).
    func stored() -> [ContainerEvent] {
        Self.read(previousPath) + Self.read(currentPath)
    }

    /// Appends one event; rotates first when `current` is full. A failure
    /// is returned, not thrown: the event is in memory either way.
    @discardableResult
    func append(_ e: ContainerEvent) -> Bool {
        if count >= capacity {
            close(fd)
            fd = -1
            guard rename(currentPath, previousPath) == 0 else { return false }
            count = 0
            do { try open() } catch { return false }
        }
        guard fd >= 0, let body = try? e.serializedBytes(), body.count <= Self.maxRecordBytes else { return false }
        let n = UInt32(body.count)
        let record = [UInt8(n >> 24), UInt8((n >> 16) & 0xff), UInt8((n >> 8) & 0xff), UInt8(n & 0xff)] + body
        let written = record.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        guard written == record.count else { return false }
        count += 1
        return true
    }

    /// The largest record written and read. (The reader stopped at a
    /// larger one, which the writer wrote: a fleet event of a hostile agent
    /// lost every event after it at each restart, silently.)
    static let maxRecordBytes = 1 << 20

    /// The records of one file; stops at the first torn or malformed one
    /// (a whole record above `maxRecordBytes`, which an earlier version
    /// wrote, is passed over).
    static func read(_ path: String) -> [ContainerEvent] {
        guard let data = try? Sys.readBytes(path) else { return [] }
        var out: [ContainerEvent] = []
        var i = 0
        while i + 4 <= data.count {
            let n = Int(data[i]) << 24 | Int(data[i + 1]) << 16 | Int(data[i + 2]) << 8 | Int(data[i + 3])
            guard i + 4 + n <= data.count else { break }
            if n > maxRecordBytes {
                i += 4 + n
                continue
            }
            guard let e = try? ContainerEvent(serializedBytes: Array(data[(i + 4)..<(i + 4 + n)])) else { break }
            out.append(e)
            i += 4 + n
        }
        return out
    }
}
