// The agent's container snapshots on disk (issue #13, README "Snapshots and
// restart recovery"): one file per container, state_dir/snapshots/<escaped
// name>, each a ContainerSnapshot framed as
//
//     "LMSNAP01" | serialized ContainerSnapshot | SHA-256 of the serialized bytes
//
// so a file cut short or damaged is told from a good one rather than
// half-parsed (protobuf parses many truncations).
//
// Each snapshot file is written with the whole sequence temp file, fsync,
// rename, fsync of the directory, but not while a client waits:
//
// 1. `write` and `remove` (the call, before it answers) append one record
//    to an intent log, state_dir/snapshots/log.a or log.b: the framed
//    snapshot (or the name removed) with a sequence number and a SHA-256.
//    One write(2), no file made, no fsync: a killed agent keeps it (the
//    page cache does), and the next start replays it (3).
// 2. The flusher thread, at once, for everything logged meanwhile (group
//    commit: while it waits for the disk the next batch forms; a container
//    changed five times meanwhile is written once): it switches appends to
//    the other log, then writes each changed snapshot to `.tmp-<file>`,
//    fdatasyncs those, renames each over its snapshot (or unlinks a removed
//    one), fsyncs the directory once, and only then empties the log it
//    covered.
// 3. `open` (at start): the records of both logs, in sequence order, are
//    applied the same way (the newest state of each snapshot wins), then
//    both logs are emptied and stray temp files removed.
//
// A crash at any instant (the agent killed, or the machine) therefore leaves
// each snapshot old or new, never torn: a snapshot file only ever changes by
// a rename of a whole, fsynced temp file; a log record cut short fails its
// checksum and ends that log's replay (the records before it stand). What a
// killed agent logged is never lost; what a machine crash lost from the page
// cache is at most the changes of the last moments, whose containers (cgroups)
// did not survive the crash either. `load` and `loadAll` see what `open`
// would make of the files.
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
/// variable LMCTFY_AGENT_TEST_SNAPSHOT_CRASH="<step>:<n>"): at the `n`th
/// time that step is reached the process calls _exit(86). Steps: `written`
/// (a snapshot logged, before the call answers), `temp` (the flusher has
/// fsynced a batch of temp files, before any rename), `rename` (renamed,
/// before the directory's fsync), `intent` (a create's intent logged,
/// SnapshotKeeper.created). `written` does not count intents, nor `temp` and
/// `rename` a pass that wrote intents only: the keeper writes the full
/// snapshot after them on a thread of its own, so counting them would make
/// the nth step depend on timing. Off unless the environment asks for it.
public struct SnapshotCrashPoint: Sendable {
    public enum Step: String, Sendable {
        case written, temp, rename, intent
    }
    public var step: Step
    public var nth: Int
    let count = Mutexed(0)

    public init(step: Step, nth: Int) {
        self.step = step
        self.nth = nth
    }

    /// The crash point the environment asks for, or nil (the default).
    public static func fromEnvironment() -> SnapshotCrashPoint? {
        guard let v = getenv("LMCTFY_AGENT_TEST_SNAPSHOT_CRASH"), v.pointee != 0 else { return nil }
        let parts = String(cString: v).split(separator: ":")
        guard let first = parts.first, let step = Step(rawValue: String(first)) else { return nil }
        return SnapshotCrashPoint(step: step, nth: parts.count > 1 ? Int(parts[1]) ?? 1 : 1)
    }

    func reached(_ s: Step) {
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
public final class SnapshotStore: @unchecked Sendable {
    // @unchecked: `seq`, `live`, `pending`, `flusher*` only under `lock`;
    // a flush pass at a time (`passLock`).

    /// The format this agent writes; a snapshot of a later one is refused.
    public static let formatVersion: UInt32 = 1
    static let magic = Array("LMSNAP01".utf8)
    /// The largest snapshot file read (its spec and its process records:
    /// a megabyte holds some ten thousand processes), and log file; a
    /// larger one, or one that is not a regular file, is damaged.
    public static let maxFileBytes = 64 << 20
    static let maxLogBytes = 256 << 20

    /// state_dir/snapshots.
    public let directory: String
    /// fsync the temp files and the directory (false only for measurements).
    public let durable: Bool
    let crash: SnapshotCrashPoint?

    private let lock = Lock()
    private let passLock = Lock()
    /// The logs (see the top): `active` takes the appends.
    private var logFds: [Int32] = [-1, -1]
    /// Each log's length: an append the disk could not take whole is cut
    /// back to it (a torn record would end the replay of every record
    /// appended after it).
    private var logSize = [0, 0]
    /// The logs may hold records older than the files (a pass failed, or
    /// `open` could not apply them): the next pass that succeeds rewrites
    /// them as what is still pending (`compactLogs`), so that a replay can
    /// never put an older snapshot back over a newer file.
    private var stale = false
    private var active = 0
    private var seq: UInt64 = 0
    /// What was logged since the last pass: each snapshot file's newest
    /// framed bytes, nil for a removal.
    private var pending: [String: [UInt8]?] = [:]
    /// The files in `pending` whose bytes are a create's intent (not
    /// counted by the crash points).
    private var intents: Set<String> = []
    /// The files in `pending` whose newest bytes no log holds (the append
    /// failed): kept in memory only, until a pass writes their files.
    private var unlogged: Set<String> = []
    private var flusherRunning = false
    private var flusherStopping = false
    private let wake = ChangeCounter()
    private let flusherDone = Latch()
    /// Opened by `stopFlusher`: cuts a gathering batch short.
    private let flusherStop = Latch()
    /// The snapshot files there are (`open` lists them, `materialize` keeps
    /// the set; only under `passLock`, or in `open` before any pass): a
    /// removal of a container that never got a file (made and destroyed
    /// within one pass) unlinks nothing, and a pass that changed no file
    /// does not fsync the directory.
    private var onDisk: Set<String> = []

    /// The flusher's work so far (for the cost figures).
    public struct FlushCosts: Sendable {
        public var passes = 0
        /// Passes that failed (a full disk): what they held stays pending.
        public var failed = 0
        public var renamed = 0
        public var ns: UInt64 = 0
    }
    public let flushCosts = Mutexed(FlushCosts())

    /// How long the flusher lets a batch gather (startFlusher).
    public let gatherMs: Int

    /// The longest the flusher waits before trying a failed pass again
    /// (it doubles from `gatherMs`).
    public let maxBackoffMs: Int
    /// Where the store says what it could not write, and when it could
    /// again (the agent's log).
    let report: @Sendable (String) -> Void

    public init(directory: String, durable: Bool = true, gatherMs: Int = 100, maxBackoffMs: Int = 5_000,
                crash: SnapshotCrashPoint? = nil, report: @escaping @Sendable (String) -> Void = { _ in }) {
        self.directory = directory
        self.durable = durable
        self.gatherMs = gatherMs
        self.maxBackoffMs = max(gatherMs, maxBackoffMs)
        self.crash = crash
        self.report = report
    }

    /// Snapshot changes not yet in their files (logged, or only in memory
    /// where the log could not take them).
    public var unwritten: Int { lock.locked { pending.count } }

    deinit {
        for fd in logFds where fd >= 0 { close(fd) }
    }

    // MARK: Names

    /// Whether a file of the directory is a snapshot (its escaped name
    /// starts with `%` or `~`; the logs, temp and set-aside files do not).
    static func isSnapshotFile(_ file: String) -> Bool { file.hasPrefix("%") || file.hasPrefix("~") }

    /// The file name of `name`'s snapshot (see the top of this file).
    public static func fileName(_ name: String) -> String {
        // Made as bytes (at every snapshot write): %XX for each byte
        // outside [A-Za-z0-9_-].
        let hex = Array("0123456789ABCDEF".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(name.utf8.count + 8)
        for b in name.utf8 {
            switch b {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
                 UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "_"), UInt8(ascii: "-"):
                out.append(b)
            default:
                out += [UInt8(ascii: "%"), hex[Int(b >> 4)], hex[Int(b & 15)]]
            }
        }
        if out.count > 200 {
            return "~" + Sys.hex(Crypto.sha256(Array(name.utf8)))
        }
        return String(decoding: out, as: UTF8.self)
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

    func path(_ file: String) -> String { directory + "/" + file }
    func logPath(_ i: Int) -> String { directory + (i == 0 ? "/log.a" : "/log.b") }

    // MARK: Encoding

    static func encode(_ s: ContainerSnapshot) throws(LmctfyError) -> [UInt8] {
        encode(body: try serialized(s))
    }

    /// A snapshot's (or a part of one's) bytes; `name` for the error, by
    /// default the snapshot's own.
    static func serialized(_ s: ContainerSnapshot, name: String? = nil) throws(LmctfyError) -> [UInt8] {
        do { return try s.serializedBytes() } catch {
            throw .internalError("Encoding the snapshot of \(name ?? s.name ?? "?"): \(error)")
        }
    }

    /// A file's bytes around a serialized ContainerSnapshot.
    static func encode(body: [UInt8]) -> [UInt8] {
        magic + body + Crypto.sha256(body)
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

    /// The snapshot in one file, nil if there is none or it does not check
    /// out (for tests that look at a file itself).
    public static func decodeFile(_ path: String) -> ContainerSnapshot? {
        guard let bytes = try? Sys.readRegularFile(path, maxBytes: maxFileBytes), case .success(let s) = decode(bytes) else { return nil }
        return s
    }

    // MARK: The intent log

    /// One log record: length (4 bytes, big-endian, of what follows), kind
    /// ("S" a snapshot, "R" a removal), seq (8 bytes), the snapshot file's
    /// name (2-byte length, then the name), the payload (a framed snapshot;
    /// nothing for a removal), SHA-256 of everything after the length.
    static func record(kind: UInt8, seq: UInt64, file: String, payload: [UInt8]) -> [UInt8] {
        var body: [UInt8] = [kind]
        for i in (0..<8).reversed() { body.append(UInt8((seq >> (8 * UInt64(i))) & 0xff)) }
        let f = Array(file.utf8)
        body += [UInt8(f.count >> 8), UInt8(f.count & 0xff)] + f + payload
        body += Crypto.sha256(body)
        let n = UInt32(body.count)
        return [UInt8(n >> 24), UInt8((n >> 16) & 0xff), UInt8((n >> 8) & 0xff), UInt8(n & 0xff)] + body
    }

    /// The records of one log, in order; stops at the first one cut short
    /// or damaged (a crash mid-append).
    static func records(_ bytes: [UInt8]) -> [(seq: UInt64, file: String, payload: [UInt8]?)] {
        recordsAndLength(bytes).records
    }

    /// `records`, and how many bytes of the log they take (what follows is
    /// a record cut short or damaged: an append that a full disk cut short
    /// is taken off again, so that the records after it are read).
    static func recordsAndLength(_ bytes: [UInt8]) -> (records: [(seq: UInt64, file: String, payload: [UInt8]?)], length: Int) {
        var out: [(UInt64, String, [UInt8]?)] = []
        var i = 0
        while i + 4 <= bytes.count {
            let n = Int(bytes[i]) << 24 | Int(bytes[i + 1]) << 16 | Int(bytes[i + 2]) << 8 | Int(bytes[i + 3])
            guard n >= 1 + 8 + 2 + 32, i + 4 + n <= bytes.count else { break }
            let body = Array(bytes[(i + 4)..<(i + 4 + n - 32)])
            guard Crypto.sha256(body) == Array(bytes[(i + 4 + n - 32)..<(i + 4 + n)]) else { break }
            let seq = body[1..<9].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
            let fl = Int(body[9]) << 8 | Int(body[10])
            guard 11 + fl <= body.count else { break }
            let file = String(decoding: body[11..<(11 + fl)], as: UTF8.self)
            // Only names fileName makes: nothing a path could be built from.
            guard isFileName(file) else { break }
            let payload = Array(body[(11 + fl)...])
            out.append((seq, file, body[0] == UInt8(ascii: "S") ? payload : nil))
            i += 4 + n
        }
        return (out, i)
    }

    /// Whether `f` is a name `fileName` makes (so it stays in the directory).
    public static func isFileName(_ f: String) -> Bool {
        guard let first = f.utf8.first, first == UInt8(ascii: "%") || first == UInt8(ascii: "~") else { return false }
        return f.utf8.allSatisfy { b in
            (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(b) || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(b)
                || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(b) || b == UInt8(ascii: "_") || b == UInt8(ascii: "-")
                || b == UInt8(ascii: "%") || b == UInt8(ascii: "~")
        }
    }

    /// Every snapshot file's newest logged state (nil: removed), from both
    /// logs in sequence order, and the highest seq.
    /// And each log's length up to its first record cut short.
    private func replay() -> (state: [String: [UInt8]?], seq: UInt64, lengths: [Int]) {
        var all: [(seq: UInt64, file: String, payload: [UInt8]?)] = []
        var lengths = [0, 0]
        for i in 0..<2 {
            let (records, length) = Self.recordsAndLength((try? Sys.readRegularFile(logPath(i), maxBytes: Self.maxLogBytes)) ?? [])
            all += records
            lengths[i] = length
        }
        var state: [String: [UInt8]?] = [:]
        for r in all.sorted(by: { $0.seq < $1.seq }) { state[r.file] = .some(r.payload) }
        return (state, all.map(\.seq).max() ?? 0, lengths)
    }

    /// Appends a record to a log, the active one by default (the caller
    /// holds `lock`). One the disk cannot take whole is cut off again.
    private func append(kind: UInt8, file: String, payload: [UInt8], to log: Int? = nil) throws(SystemError) {
        let i = log ?? active
        seq += 1
        let r = Self.record(kind: kind, seq: seq, file: file, payload: payload)
        do {
            try Sys.writeAll(logFds[i], r)
        } catch {
            try? Sys.truncate(logFds[i], to: logSize[i], path: logPath(i))
            throw error
        }
        logSize[i] += r.count
    }

    // MARK: Files

    /// Makes the directory (0700) if absent, applies what the logs hold
    /// (a crash's unflushed changes), removes stray temp files, empties the
    /// logs and opens them. Returns how many snapshots it rolled forward
    /// from the logs and how many stray files it removed. Before any write.
    @discardableResult
    public func open() throws(LmctfyError) -> (rolledForward: Int, removed: Int) {
        if !Sys.isDirectory(directory) {
            do { try Sys.mkdir(directory, mode: 0o700) } catch { throw error.lmctfy(.failedPrecondition, "Creating the snapshot directory") }
        }
        var removed = 0
        let listed = (try? Sys.subdirectoriesAndFiles(directory)) ?? []
        for f in listed where f.hasPrefix(".tmp-") {
            if (try? Sys.unlink(path(f))) != nil { removed += 1 }
        }
        passLock.locked { onDisk = Set(listed.filter(Self.isSnapshotFile)) }
        let (state, lastSeq, lengths) = replay()
        do throws(SystemError) {
            try materialize(state)
        } catch {
            try keepLogs(state, seq: lastSeq, lengths: lengths, error)
            return (0, removed)
        }
        do throws(SystemError) {
            for i in 0..<2 {
                let fd = try Sys.open(logPath(i), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_NONBLOCK, mode: 0o600)
                lock.locked { logFds[i] = fd }
            }
            if durable { try Sys.syncDirectory(directory) }
        } catch {
            throw error.lmctfy(.internal, "Settling the snapshots")
        }
        lock.locked { active = 0; seq = 0; logSize = [0, 0] }
        return (state.count, removed)
    }

    /// `open` when what the logs hold could not be written to the files (a
    /// full disk): the logs stay (each cut back to its last whole record),
    /// their state is pending, and the flusher writes it when it can; the
    /// agent starts meanwhile (`load` and `loadAll` read the logs too).
    private func keepLogs(_ state: [String: [UInt8]?], seq lastSeq: UInt64, lengths: [Int],
                          _ why: SystemError) throws(LmctfyError) {
        do throws(SystemError) {
            for i in 0..<2 {
                let fd = try Sys.open(logPath(i), O_WRONLY | O_CREAT | O_APPEND | O_NONBLOCK, mode: 0o600)
                lock.locked { logFds[i] = fd }
                try Sys.truncate(fd, to: lengths[i], path: logPath(i))
            }
        } catch {
            throw error.lmctfy(.internal, "Opening the snapshot logs")
        }
        let kept = passLock.locked { needingFiles(state) }
        lock.locked {
            active = 0
            seq = lastSeq
            logSize = lengths
            pending = kept
            stale = true
        }
        report("snapshots: \(kept.count) logged changes could not be written to their files at start (\(why)); "
               + "they stay in the logs and are written when the disk has room")
        wake.bump()
    }

    /// What of `state` changes a file: every write, and the removals of
    /// files there are (a container made and destroyed within one pass
    /// never had one). Under `passLock`, or in `open` before any pass.
    private func needingFiles(_ state: [String: [UInt8]?]) -> [String: [UInt8]?] {
        state.filter { $0.value != nil || onDisk.contains($0.key) }
    }

    /// Writes each file's state the safe way: temp files written and
    /// fdatasynced, renamed (removals unlinked), the directory fsynced.
    /// Returns how many files it wrote or removed (a removal of a file there
    /// never was is nothing to do).
    @discardableResult
    private func materialize(_ state: [String: [UInt8]?], counted: Bool = true) throws(SystemError) -> Int {
        let state = needingFiles(state)
        guard !state.isEmpty else { return 0 }
        // Removals first: they need no room, and make some.
        for (file, bytes) in state where bytes == nil {
            do { try Sys.unlink(path(file)) } catch where error.errno == ENOENT {}
            onDisk.remove(file)
        }
        var temps: [String] = []
        do throws(SystemError) {
            for (file, bytes) in state {
                guard let bytes else { continue }
                let temp = directory + "/.tmp-" + file
                let fd = try Sys.open(temp, O_WRONLY | O_CREAT | O_TRUNC, mode: 0o600)
                defer { close(fd) }
                temps.append(temp)
                try Sys.writeAll(fd, bytes)
                if durable { try Sys.syncData(fd, path: temp) }
            }
        } catch {
            // A full disk: the temp files go (they hold its last blocks).
            for t in temps { _ = try? Sys.unlink(t) }
            throw error
        }
        if counted { crash?.reached(.temp) }
        for (file, bytes) in state where bytes != nil {
            try Sys.rename(directory + "/.tmp-" + file, path(file))
            onDisk.insert(file)
        }
        if counted { crash?.reached(.rename) }
        if durable { try Sys.syncDirectory(directory) }
        return state.count
    }

    /// Logs `s` as its name's newest snapshot before returning (a killed
    /// agent keeps it); the flusher (or a `flush`) writes its file.
    public func write(_ s: ContainerSnapshot) throws(LmctfyError) {
        guard let name = s.name else { throw .internalError("A snapshot without a name") }
        try log(file: Self.fileName(name), bytes: try Self.encode(s), what: "Writing the snapshot of \(name)")
    }

    /// Writes `name`'s snapshot already serialized (`body`: a
    /// ContainerSnapshot's bytes, naming `name`), for a caller that has
    /// serialized it anyway.
    public func write(name: String, body: [UInt8], intent: Bool = false) throws(LmctfyError) {
        try log(file: Self.fileName(name), bytes: Self.encode(body: body), what: "Writing the snapshot of \(name)", intent: intent)
    }

    /// Logs the removal of `name`'s snapshot (nothing if there is none);
    /// the flusher unlinks its file soon after.
    public func remove(_ name: String) throws(LmctfyError) {
        try log(file: Self.fileName(name), bytes: nil, what: "Removing the snapshot of \(name)")
    }

    /// A record the log cannot take (a full disk) is still pending, so the
    /// flusher writes its file when it can; the error says that a killed
    /// agent would not have it.
    private func log(file: String, bytes: [UInt8]?, what: String, intent: Bool = false) throws(LmctfyError) {
        let failed: SystemError? = lock.locked {
            guard logFds[active] >= 0 else { return SystemError("write", logPath(active), EBADF) }
            var failed: SystemError?
            do throws(SystemError) {
                try append(kind: bytes == nil ? UInt8(ascii: "R") : UInt8(ascii: "S"), file: file, payload: bytes ?? [])
            } catch {
                failed = error
            }
            pending[file] = .some(bytes)
            if intent { intents.insert(file) } else { intents.remove(file) }
            if failed == nil { unlogged.remove(file) } else { unlogged.insert(file) }
            return failed
        }
        if let failed {
            if failed.errno == EBADF { throw failed.lmctfy(.internal, what + " (the store is not open?)") }
            wake.bump()
            throw failed.lmctfy(failed.isNoSpace ? .resourceExhausted : .internal,
                                what + " (kept in memory, written to its file when the disk has room)")
        }
        crash?.reached(intent ? .intent : .written)
        wake.bump()
    }

    /// One flush pass (see the top): what was logged before it starts is
    /// written to the snapshot files the safe way, then the log that held
    /// it is emptied. A failure keeps that log (the next pass, or the next
    /// start, tries again). Returns how many files it wrote or removed.
    @discardableResult
    public func flush() -> Int {
        (try? pass()) ?? 0
    }

    /// `flush`, throwing what failed (what the pass held stays pending).
    @discardableResult
    func pass() throws(SystemError) -> Int {
        try passLock.locked { () throws(SystemError) -> Int in
            let (batch, covered, batchIntents, batchUnlogged): ([String: [UInt8]?], Int, Set<String>, Set<String>) = lock.locked {
                defer { pending = [:]; intents = []; unlogged = [] }
                let covered = active
                if !pending.isEmpty { active = 1 - active }
                return (pending, covered, intents, unlogged)
            }
            guard !batch.isEmpty else { return 0 }
            let t0 = MonotonicClock.nanoseconds()
            var changed = 0
            var failed = false
            defer {
                let ns = MonotonicClock.nanoseconds() - t0
                flushCosts.locked { $0.passes += 1; $0.ns += ns; $0.renamed += changed; $0.failed += failed ? 1 : 0 }
            }
            do throws(SystemError) {
                changed = try materialize(batch, counted: batch.keys.contains { !batchIntents.contains($0) })
                // Everything the covered log held is in the files now.
                let fd = lock.locked { logFds[covered] }
                try Sys.truncate(fd, to: 0, path: logPath(covered))
                lock.locked {
                    logSize[covered] = 0
                    if stale { compactLogs(into: covered) }
                }
            } catch {
                // Pending again, and the covered log, which still holds
                // every record of the batch, is the active one again: the
                // next pass covers it. (The batch was logged again into
                // the other log at every failed pass: a flush failing for
                // a day grew the logs by a copy of every pending snapshot
                // each time; a probe.) What was logged into the other log
                // during the pass is pending too, and newer; the pass that
                // succeeds compacts the logs (`stale`).
                failed = true
                lock.locked {
                    if logSize[1 - covered] > 0 { stale = true }
                    active = covered
                    for (file, bytes) in batch where pending[file] == nil {
                        pending[file] = .some(bytes)
                        if batchIntents.contains(file) { intents.insert(file) }
                        if batchUnlogged.contains(file) { unlogged.insert(file) }
                    }
                }
                throw error
            }
            return changed
        }
    }

    /// After a pass that wrote every file its covered log held (now empty)
    /// while the active log may hold records older than those files (a
    /// failed pass's, or those `open` kept): what is pending (everything
    /// logged since the pass began) is appended to the covered log, the
    /// active one is emptied, and the covered one takes the appends. A
    /// crash at any step replays the newest state of each file (the copies
    /// have the highest seqs). The caller holds `lock`.
    private func compactLogs(into covered: Int) {
        let other = 1 - covered
        do throws(SystemError) {
            for (file, bytes) in pending {
                try append(kind: bytes == nil ? UInt8(ascii: "R") : UInt8(ascii: "S"), file: file, payload: bytes ?? [], to: covered)
            }
            try Sys.truncate(logFds[other], to: 0, path: logPath(other))
        } catch {
            return  // `stale` stays: the next pass that succeeds tries again
        }
        logSize[other] = 0
        active = covered
        stale = false
    }

    /// Starts the flusher thread: a pass `gatherMs` after something is
    /// logged (what is logged meanwhile joins it), the next one no sooner
    /// than `gatherMs` after the last. Every container's file is then
    /// written once a pass however often it changed, and a container made
    /// and destroyed within one never gets a file: on a busy agent a pass
    /// after every record was a fifth of its CPU (temp file, fdatasync,
    /// rename and directory fsync each time). The log already keeps every
    /// record across an agent's crash; a machine crash may lose the last
    /// `gatherMs` (with the containers it describes, which die with it).
    /// A pass that fails (a full disk) is tried again after twice the wait
    /// of the last, up to `maxBackoffMs`; the first failure and then every
    /// doubling of their count is reported, and the pass that succeeds
    /// after them.
    public func startFlusher() {
        let start = lock.locked { () -> Bool in
            defer { flusherRunning = true }
            return !flusherRunning
        }
        guard start else { return }
        Threads.detach { [self] in
            var seen: UInt64 = 0
            var failures = 0
            var waitMs = gatherMs
            while true {
                let (work, stopping) = lock.locked { (!pending.isEmpty, flusherStopping) }
                if work {
                    // Let the batch gather (a stop cuts it short), or wait
                    // out the backoff after a failed pass.
                    _ = flusherStop.wait(milliseconds: waitMs)
                    do throws(SystemError) {
                        try pass()
                        if failures > 0 {
                            report("snapshots: written again after \(failures) failed passes")
                        }
                        failures = 0
                        waitMs = gatherMs
                    } catch {
                        failures += 1
                        if failures & (failures - 1) == 0 {
                            report("snapshots: \(unwritten) changed snapshots not written to their files "
                                   + "(\(failures) failed passes, tried again within \(min(waitMs * 2, maxBackoffMs)) ms): \(error)")
                        }
                        waitMs = min(waitMs * 2, maxBackoffMs)
                        // Stopping: that was the last try.
                        if stopping { break }
                    }
                    continue
                }
                if stopping { break }
                seen = wake.wait(past: seen, timeoutMs: 1000)
            }
            flusherDone.signal()
        }
    }

    /// Flushes what is left and stops the flusher thread. What a full disk
    /// kept from its files is reported: the logs hold it where they could
    /// take it, and the next start writes it; the rest, the next start
    /// reads from the kernel.
    public func stopFlusher() {
        let running = lock.locked { () -> Bool in
            flusherStopping = true
            return flusherRunning
        }
        flusherStop.signal()
        wake.bump()
        if running { flusherDone.wait() } else { flush() }
        let left = unwritten
        if left > 0 {
            report("snapshots: \(left) changed snapshots not written to their files at stop (the disk is full?); "
                   + "the next start writes what the logs hold and reads the rest from the kernel")
        }
    }

    /// Whether `name`'s newest snapshot is held in memory only: its log
    /// append failed (a full disk), and no pass has written its file since.
    /// `current` returns it.
    public func keptInMemoryOnly(_ name: String) -> Bool {
        let file = Self.fileName(name)
        return lock.locked { unlogged.contains(file) }
    }

    /// `name`'s snapshot as the store holds it now: what waits in memory
    /// for its file (a full disk refused the log too), else `load`.
    public func current(_ name: String) -> ContainerSnapshot? {
        let file = Self.fileName(name)
        if let waiting = lock.locked({ pending[file] }) {
            guard let bytes = waiting, case .success(let s) = Self.decode(bytes) else { return nil }
            return s
        }
        return load(name)
    }

    /// `name`'s snapshot as `open` would leave it; nil when there is none
    /// or it is damaged.
    public func load(_ name: String) -> ContainerSnapshot? {
        let file = Self.fileName(name)
        if let logged = replay().state[file] {
            guard let bytes = logged, case .success(let s) = Self.decode(bytes) else { return nil }
            return s
        }
        return Self.decodeFile(path(file))
    }

    /// Every snapshot as `open` would leave them, by container name, and
    /// the snapshot files that are damaged (with why).
    public func loadAll() -> (snapshots: [String: ContainerSnapshot], damaged: [(file: String, why: String)]) {
        var out: [String: ContainerSnapshot] = [:]
        var damaged: [(String, String)] = []
        let logged = replay().state
        var files = Set(((try? Sys.subdirectoriesAndFiles(directory)) ?? []).filter(Self.isSnapshotFile))
        files.formUnion(logged.keys)
        for f in files.sorted() {
            let bytes: [UInt8]
            if let l = logged[f] {
                guard let l else { continue }  // removed
                bytes = l
            } else {
                do { bytes = try Sys.readRegularFile(path(f), maxBytes: Self.maxFileBytes) } catch {
                    damaged.append((f, "\(error)"))
                    continue
                }
            }
            switch Self.decode(bytes) {
            case .success(let found):
                // A file must be where its name says: one renamed by hand is damaged.
                guard let name = found.name, Self.fileName(name) == f else {
                    damaged.append((f, "holds the snapshot of \(found.name ?? "?"), whose file is \(Self.fileName(found.name ?? ""))"))
                    continue
                }
                out[name] = found
            case .failure(let e):
                damaged.append((f, e.message))
            }
        }
        return (out, damaged)
    }

    /// Moves a damaged file aside (`damaged-<file>`), so it is reported once
    /// and kept for a human, not read again.
    public func setAside(_ file: String) {
        _ = try? Sys.rename(path(file), directory + "/damaged-" + file)
    }
}
