// The event log on disk (state_dir/events/), so that after an agent restart
// a subscriber of the previous boot learns exactly which of that boot's
// events survived, and gets them (PROTOCOL.md section 6.2).
//
// Two files, `current` and `previous`, each a sequence of records: a 4-byte
// big-endian length with its top bit set, the first 4 bytes of the body's
// SHA-256, and a serialized ContainerEvent (`Record`; a length without the
// bit, and no checksum, is a record an earlier version wrote, still read).
// Every event is appended
// to `current` as it is recorded (one write; not fsynced, like the request
// journal: it serves an agent that dies, whose writes the page cache keeps).
// When `current` holds `capacity` events, or half of `maxBytes` (a log with
// a byte budget: the controller's fleet log), it becomes `previous` (the
// older `previous` goes), so the disk keeps between `capacity` and 2 x
// `capacity` events, and about `maxBytes` at most. A torn last record (the
// agent killed mid-write) ends the reading; the journal cuts it off when it
// opens, and an append a full disk cut short at once, so that the records
// appended after it are read.
//
// A third file, `floor`, says which numbers below the oldest kept event are
// gone: every sequence up to it that the files do not hold was let go (the
// last of the `previous` a rotation dropped, or what the log had let go of
// when it started the journal again), and those between it and the oldest
// kept were never journaled (STATS samples, a lasting log's numbers
// reserved before a restart and never used). It is written (in place, two
// slots, synced: a SequenceReservation) before the files change; one that
// cannot be is removed, and without it the journal's reader takes every
// number below the oldest kept as gone, as before the file existed.
//
// A fourth, `ended`, names the boots that ended cleanly: a line "BOOT SEQ"
// written when an agent stops with its journal whole, SEQ the last event
// it journaled (the latest `maxEnded` boots). A boot whose kept events end
// at that SEQ lost nothing at its end, and a subscriber carried across the
// restart is told so (EventGap.boot_ended): a controller recorded a
// HOST_GAP at every restart of every agent (a soak probe). A boot that
// journaled nothing ends as "BOOT 0 PREV", PREV the boot before it in the
// journal ("-": none), so that the next start knows where it stood among
// the boots the journal kept: a subscriber whose point was in it (an idle
// host's agent restarted) was resumed from the start of everything kept,
// behind a gap, and a controller stored its host's events a second time.
// A boot says "BOOT started PREV" there when it begins: killed before it
// journaled anything, the next start still knows it (not as ended: a
// subscriber whose point was in it is told of a gap, and goes on from the
// boot after it). Without it, every `lmctl events -f` attached to an idle
// agent that crashed printed everything kept again (the agent probe).
import Glibc
import LmctfyProto
import LmctfyRPC
import LmctfySystem

/// Used only under the event log's lock.
final class EventJournal: @unchecked Sendable {
    let directory: String
    let capacity: Int
    /// The budget of both files together (nil: none).
    let maxBytes: Int?
    private var fd: Int32 = -1
    /// The errno of the last append that failed.
    private(set) var lastErrno: Int32 = 0
    private var count = 0
    private var bytes = 0
    /// The records the files held when they were opened (`previous`, then
    /// `current`), serialized: what earlier boots left. Each is decoded by
    /// its reader when it needs it (decoded all at once, 2 x `capacity`
    /// events of 2,296 bytes each as values, a restarting controller took
    /// 300 MB at once).
    private(set) var opened: [[UInt8]]

    let currentPath: String
    let previousPath: String
    let floorPath: String
    let endedPath: String
    /// `ended`'s lines, in the order written: each boot that ended cleanly
    /// with the last sequence it journaled, or that said it started and
    /// never ended cleanly (`last` nil). `previous`: of a boot that
    /// journaled nothing, the boot before it.
    private var endedLines: [(boot: String, last: UInt64?, previous: String?)] = []
    /// The boots that ended cleanly (read before this boot writes its own
    /// line: as `ended` said when opened).
    var openedEnds: [(boot: String, last: UInt64, previous: String?)] {
        endedLines.compactMap { line in line.last.map { (line.boot, $0, line.previous) } }
    }
    /// The boots that journaled nothing as far as `ended` knows (ended
    /// with `last` 0, or started and never ended cleanly), with the boot
    /// before each, in the order written.
    var openedEmptyBoots: [(boot: String, previous: String?)] {
        endedLines.filter { $0.last == nil || $0.last == 0 }.map { ($0.boot, $0.previous) }
    }
    /// How many boots `ended` names at most.
    static let maxEnded = 32
    /// The sequence of the last record in `previous` and in `current`
    /// (0: none).
    private var previousLast: UInt64 = 0
    private var currentLast: UInt64 = 0
    /// The floor file (opened when first written, or at open when there).
    private var floorFile: SequenceReservation?
    /// The floor the journal held when opened: nil without the file (a
    /// journal an earlier version wrote, or a floor that failed).
    private(set) var openedFloor: UInt64?
    /// What `current` held past its last good record that no torn last
    /// write explains (a length no record can have, a record that does not
    /// decode): the file was kept aside as `damaged`, and this says so.
    /// It was cut off silently (a probe: half a journal gone, nothing
    /// logged).
    private(set) var damage: String?

    /// Opens (making the directory, 0700) and reads what earlier boots left.
    init(directory: String, capacity: Int, maxBytes: Int? = nil) throws(LmctfyError) {
        self.directory = directory
        self.capacity = max(1, capacity)
        self.maxBytes = maxBytes
        currentPath = directory + "/current"
        previousPath = directory + "/previous"
        floorPath = directory + "/floor"
        endedPath = directory + "/ended"
        if mkdir(directory, 0o700) != 0 && errno != EEXIST {
            throw SystemError("mkdir", directory, errno).lmctfy(.failedPrecondition, "Making the event journal directory")
        }
        Self.settle(directory, previous: previousPath)
        let (current, length) = Self.recordsAndLength(currentPath)
        count = current.count
        bytes = length
        if let why = Self.damageAfter(currentPath, length) {
            let aside = directory + "/current.damaged-\(time(nil))"
            if let data = try? Sys.readRegularFile(currentPath, maxBytes: .max),
               (try? Sys.writeFileAtomically(aside, data, mode: 0o600)) != nil {
                damage = "\(currentPath) is damaged at byte \(length) (\(why)): the events after it are not read; the file is kept as \(aside)"
            } else {
                damage = "\(currentPath) is damaged at byte \(length) (\(why)): the events after it are not read (and could not be kept aside)"
            }
        }
        let previous = Self.records(previousPath)
        opened = previous + current
        if let text = try? Sys.readRegularFile(endedPath, maxBytes: 1 << 16) {
            for line in String(decoding: text, as: UTF8.self).split(separator: "\n") {
                let parts = line.split(separator: " ")
                guard parts.count == 2 || parts.count == 3 else { continue }
                let previous = parts.count == 3 && parts[2] != "-" ? String(parts[2]) : nil
                let last = UInt64(parts[1])
                guard last != nil || parts[1] == "started" else { continue }
                endedLines.append((String(parts[0]), last, previous))
            }
        }
        previousLast = Self.sequence(previous.last)
        currentLast = Self.sequence(current.last)
        // A new journal lets nothing go yet: its floor is 0. One without
        // the file (an earlier version's) gets it at its first rotation.
        if access(floorPath, F_OK) == 0 || opened.isEmpty {
            if let file = try? SequenceReservation(path: floorPath) {
                floorFile = file
                openedFloor = file.saved
            } else {
                unlink(floorPath)
            }
        }
        try open()
        // A record cut short (a full disk, a machine crash) goes: the
        // events appended after it would never be read.
        _ = ftruncate(fd, off_t(bytes))
    }

    deinit {
        if fd >= 0 { close(fd) }
    }

    private func open() throws(LmctfyError) {
        let f = Glibc.open(currentPath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NONBLOCK, 0o600)
        guard f >= 0 else { throw SystemError("open", currentPath, errno).lmctfy(.failedPrecondition, "Opening the event journal") }
        fd = f
    }

    /// Says that boot `boot` ended cleanly with `last` its last journaled
    /// event (see `ended`). Best effort: without it the next start says
    /// the boot change may have lost events, as after a crash.
    /// `previous`: the boot before it in the journal, said for a boot that
    /// journaled nothing (`last` 0).
    func markEnded(boot: String, last: UInt64, previous before: String? = nil) {
        // The records first: the journal is not fsynced as it goes, and a
        // machine that crashed after the mark could have kept it and lost
        // records before it.
        if fd >= 0 { _ = fsync(fd) }
        let previous = Glibc.open(previousPath, O_RDONLY | O_CLOEXEC)
        if previous >= 0 {
            _ = fsync(previous)
            close(previous)
        }
        write(boot, last, before)
    }

    /// Says that boot `boot` started, `previous` the boot before it in the
    /// journal (see `ended`). Best effort, as `markEnded`.
    func markStarted(boot: String, previous: String?) {
        write(boot, nil, previous)
    }

    /// Writes `ended`: what it had, with `boot`'s line (`last` nil:
    /// started) in place of any it had, the latest `maxEnded`.
    private func write(_ boot: String, _ last: UInt64?, _ previous: String?) {
        endedLines = (endedLines.filter { $0.boot != boot } + [(boot, last, previous)]).suffix(Self.maxEnded)
        let text = endedLines.map { line in
            guard let last = line.last else { return "\(line.boot) started \(line.previous ?? "-")\n" }
            return last == 0 ? "\(line.boot) 0 \(line.previous ?? "-")\n" : "\(line.boot) \(last)\n"
        }.joined()
        try? Sys.writeFileAtomically(endedPath, Array(text.utf8), mode: 0o600)
    }

    /// Lets go of `opened` once its reader is done with it.
    func dropOpened() { opened = [] }

    /// Every event on disk in `directory`, oldest first (`previous`, then
    /// `current`), as a journal opened now would read them, and without
    /// touching anything: a reader beside a running daemon (a test, an
    /// operator's tool). Opening a journal to read it removed the daemon's
    /// start-again file under it (`settle`), and cut `current` to the
    /// length it had read, taking the daemon's appends since. A rotation or
    /// a start-again between the two files' reads is read again.
    static func stored(directory: String) -> [ContainerEvent] {
        let current = directory + "/current", previous = directory + "/previous"
        func files() -> [UInt64] {
            [current, previous, newPath(directory), supersededPath(directory)].map { path in
                var st = stat()
                return stat(path, &st) == 0 ? UInt64(st.st_ino) : 0
            }
        }
        var out: [ContainerEvent] = []
        for _ in 0..<20 {
            let before = files()
            // The mark without the new file: `current` is the new file
            // already, and `previous` goes (see `settle`).
            let superseded = before[3] != 0 && before[2] == 0
            out = (superseded ? [] : read(previous)) + read(current)
            if files() == before { break }
        }
        return out
    }

    /// Appends one event; see `append(serialized:)`.
    @discardableResult
    func append(_ e: ContainerEvent) -> Bool {
        guard let body = try? e.serializedBytes() else { return false }
        return append(serialized: body, seq: e.sequence ?? 0)
    }

    /// Appends one serialized event (sequence `seq`); rotates first when
    /// `current` is full (`capacity` events, or half of `maxBytes`),
    /// moving the floor to the last of the `previous` it drops first. A
    /// failure is returned, not thrown: the event is in memory either way.
    @discardableResult
    func append(serialized body: [UInt8], seq: UInt64) -> Bool {
        if count >= capacity || (count > 0 && bytes + Record.size(body) > (maxBytes ?? Int.max) / 2) {
            if previousLast > 0 {
                let e = moveFloor(to: previousLast)
                guard e == 0 else {
                    lastErrno = e
                    return false
                }
            }
            close(fd)
            fd = -1
            guard rename(currentPath, previousPath) == 0 else {
                lastErrno = errno
                return false
            }
            count = 0
            bytes = 0
            previousLast = currentLast
            currentLast = 0
        }
        // After a rotation, or an open that failed before.
        if fd < 0 {
            do { try open() } catch {
                lastErrno = error.errno ?? EIO
                return false
            }
        }
        guard body.count <= Self.maxRecordBytes else {
            lastErrno = EMSGSIZE
            return false
        }
        let failed = Self.writeRecord(fd, body)
        guard failed == 0 else {
            lastErrno = failed
            // Cut short (a full disk): taken off, or it would end the
            // reading before every event appended after it.
            _ = ftruncate(fd, off_t(bytes))
            return false
        }
        count += 1
        bytes += Record.size(body)
        currentLast = seq
        return true
    }

    /// Writes `value` as the floor: 0, or (when it could neither be written
    /// nor its file removed, which makes every number below the oldest
    /// kept gone to a reader) the errno.
    private func moveFloor(to value: UInt64) -> Int32 {
        if floorFile == nil { floorFile = try? SequenceReservation(path: floorPath) }
        if let file = floorFile, file.write(value) == 0 { return 0 }
        floorFile = nil
        return unlink(floorPath) == 0 || errno == ENOENT ? 0 : errno
    }

    /// The sequence of a serialized event (0: none, or not one).
    private static func sequence(_ body: [UInt8]?) -> UInt64 {
        body.flatMap { try? ContainerEvent(serializedBytes: $0) }?.sequence ?? 0
    }

    /// Starts a journal again from `bodies` (what the log still keeps,
    /// oldest first), after it gave up (see EventLog.flushJournal): they
    /// are written to a new file beside `current`, outside the log's lock;
    /// `adopt` then makes it the journal. Returns its descriptor and
    /// length, or the errno that stopped it (nothing is left then).
    /// Not tried while the file system has less room than the new file
    /// and a margin (`restartMarginBytes`): each try on a disk still full
    /// wrote until ENOSPC, taking the last free blocks from everyone else
    /// on it every few seconds.
    static func prepare(directory: String, _ bodies: [[UInt8]]) -> (fd: Int32, bytes: Int, errno: Int32) {
        guard hasRoom(directory, bytes: bodies.reduce(0) { $0 + Record.size($1) }) else { return (-1, 0, ENOSPC) }
        let fd = Glibc.open(newPath(directory), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return (-1, 0, errno) }
        var bytes = 0
        for body in bodies where body.count <= maxRecordBytes {
            let written = writeRecord(fd, body)
            guard written == 0 else {
                discard(fd, directory: directory)
                return (-1, 0, written)
            }
            bytes += Record.size(body)
        }
        return (fd, bytes, 0)
    }

    /// Makes what `prepare` wrote the journal (under the log's lock),
    /// after appending `more` (recorded since): it replaces `current`, and
    /// `previous` goes (its events are in it, or were let go: the floor
    /// moves to `floor`, the newest the log let go of, first). `last` is
    /// the sequence of the last record. False, with `lastErrno`, when that
    /// fails: the new file is gone, the old journal stays as it was.
    func adopt(_ prepared: (fd: Int32, bytes: Int, errno: Int32), records: Int, more: [[UInt8]], last: UInt64, floor: UInt64) -> Bool {
        var bytes = prepared.bytes
        var failed: Int32 = 0
        for body in more where body.count <= Self.maxRecordBytes {
            failed = Self.writeRecord(prepared.fd, body)
            if failed != 0 { break }
            bytes += Record.size(body)
        }
        if failed == 0 { failed = moveFloor(to: floor) }
        // The mark says, to a journal opened after a crash, that `previous`
        // goes once the new file is `current` (see `settle`).
        let marker = Self.supersededPath(directory)
        if failed == 0 {
            let m = Glibc.open(marker, O_WRONLY | O_CREAT | O_CLOEXEC, 0o600)
            if m < 0 { failed = errno } else { close(m) }
        }
        if failed == 0 && rename(Self.newPath(directory), currentPath) != 0 {
            failed = errno
            unlink(marker)
        }
        guard failed == 0 else {
            Self.discard(prepared.fd, directory: directory)
            lastErrno = failed
            return false
        }
        unlink(previousPath)
        unlink(marker)
        if fd >= 0 { close(fd) }
        fd = prepared.fd
        count = records + more.count
        self.bytes = bytes
        previousLast = 0
        currentLast = last
        lastErrno = 0
        return true
    }

    /// Where `prepare` writes a journal started again.
    private static func newPath(_ directory: String) -> String { directory + "/current.new" }

    /// Made by `adopt` just before the new file replaces `current`, and
    /// removed once `previous` has gone.
    private static func supersededPath(_ directory: String) -> String { directory + "/previous.superseded" }

    /// Finishes or undoes a start again that a crash cut short. With the
    /// mark and no new file, the new file is `current` already, and
    /// `previous` goes as `adopt` would have let it go: read before it, the
    /// events it had and the new file had let go of were one boot with a
    /// hole in it that no subscriber was told of. A new file still there
    /// was not adopted (the mark or not): it goes, and the journal is as it
    /// was before (it stayed, up to a whole log, on a disk just full).
    private static func settle(_ directory: String, previous: String) {
        let marker = supersededPath(directory)
        if access(marker, F_OK) == 0 && access(newPath(directory), F_OK) != 0 {
            unlink(previous)
        }
        unlink(newPath(directory))
        unlink(marker)
    }

    /// Whether the file system of `directory` has room for `bytes` and
    /// the margin (`restartMarginBytes`); true when it cannot tell.
    static func hasRoom(_ directory: String, bytes: Int) -> Bool {
        guard let room = Sys.room(of: directory) else { return true }
        return room.free >= UInt64(bytes + restartMarginBytes)
    }

    /// The room a start again leaves on the file system beyond its file.
    static let restartMarginBytes = 64 << 10

    /// Closes and removes what `prepare` wrote, not adopted.
    static func discard(_ fd: Int32, directory: String) {
        close(fd)
        unlink(newPath(directory))
    }

    /// Writes one record whole: 0, or the errno (ENOSPC for a short write).
    private static func writeRecord(_ fd: Int32, _ body: [UInt8]) -> Int32 {
        let record = Record.encode(body)
        let written = record.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        return written == record.count ? 0 : written < 0 ? errno : ENOSPC
    }

    /// The largest record written and read. (The reader stopped at a
    /// larger one, which the writer wrote: a fleet event of a hostile agent
    /// lost every event after it at each restart, silently.)
    static let maxRecordBytes = 1 << 20

    /// Why `path` past `length` (where its reading stopped) is not a torn
    /// last record: nil when it is one (or nothing is left).
    static func damageAfter(_ path: String, _ length: Int) -> String? {
        guard let data = try? Sys.readRegularFile(path, maxBytes: .max), data.count > length else { return nil }
        switch Record.parse(data, at: length) {
        case .end, .torn: return nil
        case .damaged(let why): return why
        case .record(_, let next), .oversize(let next):
            // What stopped the reading is whole: its body did not decode.
            return "a record that does not decode, with \(data.count - next) bytes after it"
        }
    }

    /// The records of one file; stops at the first torn or malformed one
    /// (a whole record above `maxRecordBytes`, which an earlier version
    /// wrote, is passed over).
    static func read(_ path: String) -> [ContainerEvent] {
        records(path).map { (try? ContainerEvent(serializedBytes: $0)) ?? ContainerEvent() }
    }

    /// The same, serialized (each record checked to decode).
    static func records(_ path: String) -> [[UInt8]] { recordsAndLength(path).records }

    /// `records`, and how many bytes of the file they (and the whole
    /// records passed over) take.
    static func recordsAndLength(_ path: String) -> (records: [[UInt8]], length: Int) {
        // A regular file only (a FIFO held the daemon's start).
        guard let data = try? Sys.readRegularFile(path, maxBytes: .max) else { return ([], 0) }
        var out: [[UInt8]] = []
        var i = 0
        scan: while true {
            switch Record.parse(data, at: i) {
            case .end, .torn, .damaged: break scan
            case .oversize(let next): i = next
            case .record(let body, let next):
                guard (try? ContainerEvent(serializedBytes: body)) != nil else { break scan }
                out.append(body)
                i = next
            }
        }
        return (out, i)
    }

    /// One record on disk. Written: a 4-byte big-endian word, the body's
    /// length with the top bit set, then the first 4 bytes of the body's
    /// SHA-256, then the body (a byte changed in a record that still
    /// decoded was taken for an event). Read too: the word without the bit
    /// and no checksum, as versions before it wrote.
    enum Record {
        static let checked: UInt32 = 0x8000_0000

        /// The bytes `body` takes on disk.
        static func size(_ body: [UInt8]) -> Int { 8 + body.count }

        static func checksum(_ body: [UInt8]) -> ArraySlice<UInt8> { Crypto.sha256(body).prefix(4) }

        static func encode(_ body: [UInt8]) -> [UInt8] {
            let w = checked | UInt32(body.count)
            return [UInt8(w >> 24), UInt8((w >> 16) & 0xff), UInt8((w >> 8) & 0xff), UInt8(w & 0xff)] + checksum(body) + body
        }

        enum Parsed {
            /// Nothing left.
            case end
            /// Cut short: the last write torn (or a length cut short).
            case torn
            /// Whole, and not a record (why).
            case damaged(String)
            /// A whole record above `maxRecordBytes` (an earlier version
            /// wrote them), passed over.
            case oversize(next: Int)
            case record(body: [UInt8], next: Int)
        }

        static func parse(_ data: [UInt8], at i: Int) -> Parsed {
            let left = data.count - i
            if left <= 0 { return .end }
            guard left >= 4 else { return .torn }
            let w = UInt32(data[i]) << 24 | UInt32(data[i + 1]) << 16 | UInt32(data[i + 2]) << 8 | UInt32(data[i + 3])
            let isChecked = w & checked != 0
            let n = Int(w & ~checked), header = isChecked ? 8 : 4
            if n > maxRecordBytes && (isChecked || header + n > left) {
                return .damaged("a record length of \(n) bytes, more than any record")
            }
            if header + n > left { return .torn }
            if n > maxRecordBytes { return .oversize(next: i + header + n) }
            // No event is empty: a run of zeros (a crash's unwritten blocks)
            // is not read as events.
            if n == 0 { return .damaged("a record of 0 bytes") }
            let body = Array(data[(i + header)..<(i + header + n)])
            if isChecked && Array(data[(i + 4)..<(i + 8)]) != Array(checksum(body)) {
                return .damaged("a record whose checksum does not match its \(n) bytes")
            }
            return .record(body: body, next: i + header + n)
        }
    }
}
