// The agent's container snapshots on disk (issue #13, README "Snapshots and
// restart recovery"): one file per container, state_dir/snapshots/<escaped
// name>, each a ContainerSnapshot framed as
//
//     "LMSNAP01" | serialized ContainerSnapshot | SHA-256 of the serialized bytes
//
// so a file damaged after it was written (a disk, a hand edit) is told from a
// good one rather than half-parsed (protobuf parses many truncations).
//
// Every write is atomic: a temp file beside the target (`.tmp-<file>`),
// written, renamed over the target. An agent that dies at any instant
// leaves the old snapshot or the new one (the page cache keeps what it
// wrote); a temp file it left is removed when the store is opened. Writes
// of one name are serialised (their temp file is shared).
//
// Durability against a machine crash comes after the answer (issue #13 asks
// that snapshot writes not make create slow): the files written and the
// directory are fsynced by a flusher thread at most `syncDelayMs` (50 ms)
// after the first write of a batch, once for the whole batch (group
// commit). A call that changed a container is answered once its snapshot is
// renamed into place, which is what an agent crash or restart needs; a
// machine crash in the window may lose the last changes or leave a torn file
// (the checksum below tells it, and recovery sets it aside and reports it).
// That window is safe to give up: every container a snapshot describes dies
// with the machine too. Measured: a create through the agent paid ~0.6 ms
// more with the fsyncs before the answer, a create+run+destroy ~2 ms
// (README). `syncDelayMs: 0` fsyncs before returning (file, then
// directory), as a store that must be durable at once would.
//
// Names are container names as the agent's clients know them ("/a/b"). The
// file name is reversible: every byte outside [A-Za-z0-9_-] is %XX, so "/"
// can never make a path separator and "." never a "." or ".." entry (every
// name starts with "/", hence every file name with "%2F"). A name whose
// escaped form would be longer than a file name may be is stored as
// "~<SHA-256 hex>" (the name itself is in the snapshot).
import Glibc
import LmctfyProto
import LmctfyRPC
import LmctfySystem

/// Where a test makes the agent die inside a snapshot write (the environment
/// variable LMCTFY_AGENT_TEST_SNAPSHOT_CRASH="<step>:<n>", step `temp` or
/// `rename`): at the `n`th write that reaches that step the process calls
/// _exit(86). Off unless the environment asks for it.
public struct SnapshotCrashPoint: Sendable {
    public var step: AtomicWriteStep
    public var nth: Int
    let count = Mutexed(0)

    public init(step: AtomicWriteStep, nth: Int) {
        self.step = step
        self.nth = nth
    }

    /// The crash point the environment asks for, or nil (the default).
    public static func fromEnvironment() -> SnapshotCrashPoint? {
        guard let v = getenv("LMCTFY_AGENT_TEST_SNAPSHOT_CRASH"), v.pointee != 0 else { return nil }
        let parts = String(cString: v).split(separator: ":")
        guard let first = parts.first, let step = AtomicWriteStep(rawValue: String(first)) else { return nil }
        return SnapshotCrashPoint(step: step, nth: parts.count > 1 ? Int(parts[1]) ?? 1 : 1)
    }

    func reached(_ s: AtomicWriteStep) {
        guard s == step else { return }
        if count.locked({ c in c += 1; return c }) == nth { _exit(86) }
    }
}

/// Runs a job per key at most once at a time. A request made while the
/// key's job runs is served by the next run, which starts after that one
/// ends; every request made before that next run starts shares it. A job
/// that reads the state it saves when it starts thereby saves every change
/// requested before it: N requests during one write cost two writes, not N.
final class Coalescer<Key: Hashable & Sendable>: @unchecked Sendable {
    // @unchecked: `entries` only under `lock`; a Round's `error` is written
    // by its runner before `done` opens and read by the others after.
    final class Round: @unchecked Sendable {
        let done = Latch()
        var error: (any Error)?
    }

    private struct Entry {
        var running: Round?
        var next: Round?
    }

    private let lock = Lock()
    private var entries: [Key: Entry] = [:]

    /// Runs `body` for `key`, or waits for a run that starts after this call
    /// and shares its outcome.
    func run(_ key: Key, _ body: () throws -> Void) throws {
        let (round, runs, after): (Round, Bool, Round?) = lock.locked {
            var e = entries[key] ?? Entry()
            if let next = e.next { return (next, false, nil) }
            let r = Round()
            defer { entries[key] = e }
            if let running = e.running {
                e.next = r
                return (r, true, running)
            }
            e.running = r
            return (r, true, nil)
        }
        guard runs else {
            round.done.wait()
            if let error = round.error { throw error }
            return
        }
        if let after {
            after.done.wait()
            lock.locked {
                entries[key]?.running = round
                entries[key]?.next = nil
            }
        }
        do { try body() } catch { round.error = error }
        lock.locked {
            if entries[key]?.next == nil { entries[key] = nil } else { entries[key]?.running = nil }
        }
        round.done.signal()
        if let error = round.error { throw error }
    }
}

/// The snapshot files. Thread-safe.
public final class SnapshotStore: Sendable {
    /// The format this agent writes; a snapshot of a later one is refused.
    public static let formatVersion: UInt32 = 1
    static let magic = Array("LMSNAP01".utf8)

    /// state_dir/snapshots.
    public let directory: String
    /// fsync the file and the directory (false only for measurements).
    public let durable: Bool
    /// How long after a batch's first write its fsyncs run (0: before the
    /// write returns).
    public let syncDelayMs: Int
    let crash: SnapshotCrashPoint?
    private let writes = Coalescer<String>()
    private let directorySyncs = Coalescer<Int>()
    /// Files renamed into place whose data and name are not yet fsynced,
    /// and whether the flusher thread runs.
    private let unsynced = Mutexed<(files: Set<String>, directory: Bool, flusher: Bool, stopping: Bool)>(([], false, false, false))
    private let wake = ChangeCounter()
    /// The fsync batches done, for the measurements.
    public let syncBatches = Mutexed(0)

    public init(directory: String, durable: Bool = true, syncDelayMs: Int = 50, crash: SnapshotCrashPoint? = nil) {
        self.directory = directory
        self.durable = durable
        self.syncDelayMs = syncDelayMs
        self.crash = crash
    }

    // MARK: Names

    /// The file name of `name`'s snapshot (see the top of this file).
    public static func fileName(_ name: String) -> String {
        var out = ""
        for b in name.utf8 {
            switch b {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
                 UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "_"), UInt8(ascii: "-"):
                out.unicodeScalars.append(Unicode.Scalar(b))
            default:
                out += "%" + String(b >> 4, radix: 16, uppercase: true) + String(b & 15, radix: 16, uppercase: true)
            }
        }
        if out.utf8.count > 200 {
            return "~" + Crypto.sha256(Array(name.utf8)).map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
        }
        return out
    }

    /// The name a file name stands for; nil for a hashed name (read the
    /// snapshot) or a file that is no snapshot's.
    public static func name(ofFile file: String) -> String? {
        guard file.hasPrefix("%") else { return nil }
        var bytes: [UInt8] = []
        var it = Array(file.utf8)[...]
        while let b = it.popFirst() {
            if b == UInt8(ascii: "%") {
                guard it.count >= 2, let v = UInt8(String(decoding: it.prefix(2), as: UTF8.self), radix: 16) else { return nil }
                bytes.append(v)
                it = it.dropFirst(2)
            } else {
                bytes.append(b)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    func path(_ name: String) -> String { directory + "/" + Self.fileName(name) }

    // MARK: Encoding

    static func encode(_ s: ContainerSnapshot) throws(LmctfyError) -> [UInt8] {
        let body: [UInt8]
        do { body = try s.serializedBytes() } catch { throw .internalError("Encoding the snapshot of \(s.name ?? "?"): \(error)") }
        return magic + body + Crypto.sha256(body)
    }

    /// The snapshot in a file's bytes, or why it is not one.
    static func decode(_ bytes: [UInt8]) -> Result<ContainerSnapshot, LmctfyError> {
        guard bytes.count >= magic.count + 32, Array(bytes.prefix(magic.count)) == magic else {
            return .failure(LmctfyError(.dataLoss, "not a snapshot (no LMSNAP01 header, or too short)"))
        }
        let body = Array(bytes[magic.count..<(bytes.count - 32)])
        guard Crypto.sha256(body) == Array(bytes.suffix(32)) else {
            return .failure(LmctfyError(.dataLoss, "checksum mismatch (damaged)"))
        }
        guard let s = try? ContainerSnapshot(serializedBytes: body) else {
            return .failure(LmctfyError(.dataLoss, "the checksum matches but it does not parse"))
        }
        guard let name = s.name, name.hasPrefix("/") else { return .failure(LmctfyError(.dataLoss, "no container name")) }
        guard (s.formatVersion ?? 0) <= formatVersion else {
            return .failure(LmctfyError(.dataLoss, "format version \(s.formatVersion ?? 0) is newer than this agent's \(formatVersion)"))
        }
        return .success(s)
    }

    // MARK: Files

    /// Makes the directory (0700) if absent and removes the temp files a
    /// crash left. Returns how many it removed.
    @discardableResult
    public func open() throws(LmctfyError) -> Int {
        if !Sys.isDirectory(directory) {
            do { try Sys.mkdir(directory, mode: 0o700) } catch { throw error.lmctfy(.failedPrecondition, "Creating the snapshot directory") }
        }
        var removed = 0
        let files: [String]
        do { files = try Sys.subdirectoriesAndFiles(directory) } catch { throw error.lmctfy(.failedPrecondition, "Listing the snapshots") }
        for f in files where f.hasPrefix(".tmp-") {
            if (try? Sys.unlink(directory + "/" + f)) != nil { removed += 1 }
        }
        return removed
    }

    /// Replaces `s.name`'s snapshot atomically and durably (see the top).
    public func write(_ s: ContainerSnapshot) throws(LmctfyError) {
        guard let name = s.name else { throw .internalError("A snapshot without a name") }
        let bytes = try Self.encode(s)
        let target = path(name)
        do {
            let now = durable && syncDelayMs == 0
            try writes.run(target) {
                try Sys.writeFileAtomically(target, bytes, mode: 0o600, durable: now, syncDirectory: false,
                                            step: crash.map { c in { c.reached($0) } })
            }
            if now { try syncDirectory() } else { unsyncedChange(file: target) }
        } catch let error as SystemError {
            throw error.lmctfy(.internal, "Writing the snapshot of \(name)")
        } catch {
            throw .internalError("Writing the snapshot of \(name): \(error)")
        }
    }

    /// Removes `name`'s snapshot (nothing if there is none).
    public func remove(_ name: String) throws(LmctfyError) {
        let target = path(name)
        do {
            try writes.run(target) {
                do throws(SystemError) { try Sys.unlink(target) } catch { if error.errno != ENOENT { throw error } }
            }
            if durable && syncDelayMs == 0 { try syncDirectory() } else { unsyncedChange(file: nil) }
        } catch let error as SystemError {
            throw error.lmctfy(.internal, "Removing the snapshot of \(name)")
        } catch {
            throw .internalError("Removing the snapshot of \(name): \(error)")
        }
    }

    /// One fsync of the directory for every rename and unlink made before it
    /// started.
    private func syncDirectory() throws {
        guard durable else { return }
        try directorySyncs.run(0) { try Sys.syncDirectory(directory) }
    }

    /// A rename or unlink to make durable later (the flusher's batch).
    private func unsyncedChange(file: String?) {
        guard durable else { return }
        let start = unsynced.locked { u -> Bool in
            if let file { u.files.insert(file) }
            u.directory = true
            defer { u.flusher = true }
            return !u.flusher
        }
        if start {
            Threads.detach { [self] in flusher() }
        } else {
            wake.bump()
        }
    }

    private func flusher() {
        var seen: UInt64 = 0
        while true {
            let (pending, stopping) = unsynced.locked { ($0.directory, $0.stopping) }
            if stopping { return }
            if pending {
                // Let the batch gather, then make all of it durable at once.
                usleep(UInt32(syncDelayMs) * 1000)
                flush()
            }
            seen = wake.wait(past: seen, timeoutMs: 1000)
        }
    }

    /// Makes every write and removal so far durable now: each file written
    /// fsynced, then the directory (the flusher calls it; so do the agent's
    /// stop and tests).
    public func flush() {
        let (files, directory) = unsynced.locked { u in
            defer { u.files = []; u.directory = false }
            return (u.files, u.directory)
        }
        guard directory else { return }
        for f in files {
            let fd = Glibc.open(f, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
            guard fd >= 0 else { continue }  // replaced or removed since: its successor is in the batch
            _ = fdatasync(fd)
            Glibc.close(fd)
        }
        _ = try? syncDirectory()
        syncBatches.locked { $0 += 1 }
    }

    /// Stops the flusher after a last flush.
    public func close() {
        flush()
        unsynced.locked { $0.stopping = true }
        wake.bump()
    }

    /// `name`'s snapshot; nil when there is none or it is damaged.
    public func load(_ name: String) -> ContainerSnapshot? {
        guard let bytes = try? Sys.readBytes(path(name)), case .success(let s) = Self.decode(bytes) else { return nil }
        return s
    }

    /// Every snapshot, by container name, and the files that are damaged
    /// (with why). Temp files are skipped (`open` removes them).
    public func loadAll() -> (snapshots: [String: ContainerSnapshot], damaged: [(file: String, why: String)]) {
        var out: [String: ContainerSnapshot] = [:]
        var damaged: [(String, String)] = []
        for f in ((try? Sys.subdirectoriesAndFiles(directory)) ?? []).sorted()
        where f.hasPrefix("%") || f.hasPrefix("~") {
            let bytes: [UInt8]
            do { bytes = try Sys.readBytes(directory + "/" + f) } catch {
                damaged.append((f, "\(error)"))
                continue
            }
            switch Self.decode(bytes) {
            case .success(let s):
                // A file must be where its name says: one renamed by hand is damaged.
                guard let name = s.name, Self.fileName(name) == f else {
                    damaged.append((f, "holds the snapshot of \(s.name ?? "?"), whose file is \(Self.fileName(s.name ?? ""))"))
                    continue
                }
                out[name] = s
            case .failure(let e):
                damaged.append((f, e.message))
            }
        }
        return (out, damaged)
    }

    /// Moves a damaged file aside (`damaged-<file>`), so it is reported once
    /// and kept for a human, not read again.
    public func setAside(_ file: String) {
        _ = rename(directory + "/" + file, directory + "/damaged-" + file)
    }
}
