// The agent's container snapshots on disk (issue #13, README "Snapshots and
// restart recovery"): one file per container, state_dir/snapshots/<escaped
// name>, each a ContainerSnapshot framed as
//
//     "LMSNAP01" | serialized ContainerSnapshot | SHA-256 of the serialized bytes
//
// so a file cut short or damaged is told from a good one rather than
// half-parsed (protobuf parses many truncations).
//
// A write goes through the whole sequence temp file, fsync, rename, fsync of
// the directory, split in two so that a create does not wait for the disk:
//
// 1. `write` (the caller, before it answers): the new snapshot is written
//    whole to a temp file of its own, `.tmp-<file>.<seq>`, seq increasing.
//    From here a killed agent keeps it (the page cache does), and the next
//    start rolls it forward (3).
// 2. The flusher thread, at once and for every temp file written meanwhile
//    (group commit: while it waits for the disk the next batch forms):
//    fdatasync of each temp file, then, per file, unlink of the older temp
//    files and the rename of the newest over the snapshot, then one fsync
//    of the directory.
// 3. `open` (at start): for each snapshot, the newest temp file that checks
//    out is renamed over it (it is newer than the snapshot: a temp file is
//    only ever renamed or removed, newest last), the others removed.
//
// A crash at any instant (the agent killed, or the machine) therefore
// leaves the old snapshot or the new one, never a torn one: a temp file
// the machine lost part of fails its checksum and the old snapshot stays;
// one that is whole was fsynced or survived in the page cache, and is the
// new one. `load` and `loadAll` see what `open` would make of the files.
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
/// (a temp file written, before the call answers), `temp` (the flusher has
/// fsynced a batch of temp files, before any rename), `rename` (renamed,
/// before the directory's fsync). Off unless the environment asks for it.
public struct SnapshotCrashPoint: Sendable {
    public enum Step: String, Sendable {
        case written, temp, rename
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

    /// state_dir/snapshots.
    public let directory: String
    /// fsync the temp files and the directory (false only for measurements).
    public let durable: Bool
    let crash: SnapshotCrashPoint?

    private let lock = Lock()
    private let passLock = Lock()
    private var seq: UInt64 = 0
    /// Temp files written and not yet renamed or removed: by snapshot
    /// file, their seqs in increasing order.
    private var live: [String: [UInt64]] = [:]
    /// Snapshot files with a temp file to flush (or a removal to make durable).
    private var pending: Set<String> = []
    private var directoryDirty = false
    private var flusherRunning = false
    private var flusherStopping = false
    private let wake = ChangeCounter()
    private let flusherDone = Latch()

    /// The flusher's work so far (for the cost figures).
    public struct FlushCosts: Sendable {
        public var passes = 0
        public var renamed = 0
        public var ns: UInt64 = 0
    }
    public let flushCosts = Mutexed(FlushCosts())

    public init(directory: String, durable: Bool = true, crash: SnapshotCrashPoint? = nil) {
        self.directory = directory
        self.durable = durable
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

    func path(_ file: String) -> String { directory + "/" + file }
    func tempPath(_ file: String, _ seq: UInt64) -> String { directory + "/.tmp-" + file + "." + String(seq) }

    /// A temp file's snapshot file and seq (`.tmp-<file>.<seq>`; the
    /// `.tmp-<file>` of Sys.writeFileAtomically is seq 0).
    static func parseTemp(_ entry: String) -> (file: String, seq: UInt64)? {
        guard entry.hasPrefix(".tmp-") else { return nil }
        let rest = entry.dropFirst(5)
        if let dot = rest.lastIndex(of: "."), let n = UInt64(rest[rest.index(after: dot)...]) {
            return (String(rest[..<dot]), n)
        }
        return (String(rest), 0)
    }

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

    /// The snapshot in one file, nil if there is none or it does not check
    /// out (for tests that look at a file itself).
    public static func decodeFile(_ path: String) -> ContainerSnapshot? {
        guard let bytes = try? Sys.readBytes(path), case .success(let s) = decode(bytes) else { return nil }
        return s
    }

    // MARK: Files

    /// What is on disk: each snapshot file, with the seqs of its temp files
    /// (which may exist without it).
    private func scan() -> (files: Set<String>, temps: [String: [UInt64]]) {
        var files = Set<String>()
        var temps: [String: [UInt64]] = [:]
        for f in (try? Sys.subdirectoriesAndFiles(directory)) ?? [] {
            if let (file, n) = Self.parseTemp(f) {
                temps[file, default: []].append(n)
            } else if f.hasPrefix("%") || f.hasPrefix("~") {
                files.insert(f)
            }
        }
        return (files, temps.mapValues { $0.sorted() })
    }

    private func tempName(_ file: String, _ n: UInt64) -> String {
        n == 0 ? directory + "/.tmp-" + file : tempPath(file, n)
    }

    /// The newest temp file of `file` that checks out, if any.
    private func newestTemp(_ file: String, _ seqs: [UInt64]) -> (seq: UInt64, snapshot: ContainerSnapshot)? {
        for n in seqs.reversed() {
            if let s = Self.decodeFile(tempName(file, n)) { return (n, s) }
        }
        return nil
    }

    /// Makes the directory (0700) if absent and settles what a crash left:
    /// each snapshot's newest whole temp file is renamed over it, the other
    /// temp files are removed. Returns how many it rolled forward and how
    /// many it removed. Before any write.
    @discardableResult
    public func open() throws(LmctfyError) -> (rolledForward: Int, removed: Int) {
        if !Sys.isDirectory(directory) {
            do { try Sys.mkdir(directory, mode: 0o700) } catch { throw error.lmctfy(.failedPrecondition, "Creating the snapshot directory") }
        }
        let (_, temps) = scan()
        var rolled = 0, removed = 0
        for (file, seqs) in temps {
            let newest = newestTemp(file, seqs)
            for n in seqs where n != newest?.seq {
                if (try? Sys.unlink(tempName(file, n))) != nil { removed += 1 }
            }
            if let newest {
                let (r, e) = Sys.retry { rename(tempName(file, newest.seq), path(file)) }
                if r != 0 { throw SystemError("rename", path(file), e).lmctfy(.internal, "Rolling a snapshot forward") }
                rolled += 1
            }
        }
        if rolled + removed > 0 && durable {
            do { try Sys.syncDirectory(directory) } catch { throw error.lmctfy(.internal, "Syncing the snapshot directory") }
        }
        return (rolled, removed)
    }

    /// Writes `s` as its name's newest snapshot: whole, in a temp file of
    /// its own, before returning (a killed agent keeps it); the flusher
    /// makes it durable and renames it soon after (see the top). Writes of
    /// one name must not run concurrently (the keeper serialises them).
    public func write(_ s: ContainerSnapshot) throws(LmctfyError) {
        guard let name = s.name else { throw .internalError("A snapshot without a name") }
        let bytes = try Self.encode(s)
        let file = Self.fileName(name)
        let n = lock.locked { seq += 1; return seq }
        let temp = tempPath(file, n)
        do throws(SystemError) {
            let (fd, oe) = Sys.retry { Glibc.open(temp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o600) }
            if fd < 0 { throw SystemError("open", temp, oe) }
            defer { close(fd) }
            do throws(SystemError) { try Sys.writeAll(fd, bytes) } catch {
                _ = try? Sys.unlink(temp)
                throw error
            }
        } catch {
            throw error.lmctfy(.internal, "Writing the snapshot of \(name)")
        }
        let flushNow = lock.locked { () -> Bool in
            live[file, default: []].append(n)
            pending.insert(file)
            return !flusherRunning
        }
        crash?.reached(.written)
        if flushNow { flush() } else { wake.bump() }
    }

    /// Removes `name`'s snapshot and its temp files (nothing if there are
    /// none). Not fsynced here: the flusher's next directory fsync makes it
    /// durable.
    public func remove(_ name: String) throws(LmctfyError) {
        let file = Self.fileName(name)
        do throws(SystemError) {
            try lock.locked { () throws(SystemError) in
                for n in live[file] ?? [] { _ = try? Sys.unlink(tempPath(file, n)) }
                live[file] = nil
                _ = pending.remove(file)
                do throws(SystemError) { try Sys.unlink(path(file)) } catch { if error.errno != ENOENT { throw error } }
                directoryDirty = true
            }
        } catch {
            throw error.lmctfy(.internal, "Removing the snapshot of \(name)")
        }
        wake.bump()
    }

    /// One flush pass (see the top): every temp file written before it
    /// starts is fsynced and renamed over its snapshot, then the directory
    /// is fsynced. Errors are kept for the next pass (the temp files stay).
    /// Returns how many snapshots it renamed.
    @discardableResult
    public func flush() -> Int {
        passLock.locked {
            let (batch, dirty): ([(file: String, newest: UInt64)], Bool) = lock.locked {
                defer { pending = []; directoryDirty = false }
                return (pending.compactMap { f in live[f]?.last.map { (f, $0) } }, directoryDirty)
            }
            guard !batch.isEmpty || dirty else { return 0 }
            let t0 = MonotonicClock.nanoseconds()
            defer {
                let ns = MonotonicClock.nanoseconds() - t0
                flushCosts.locked { $0.passes += 1; $0.ns += ns }
            }
            var synced: [(file: String, newest: UInt64)] = []
            for entry in batch {
                let temp = tempPath(entry.file, entry.newest)
                guard durable else { synced.append(entry); continue }
                let fd = Glibc.open(temp, O_RDONLY | O_CLOEXEC)
                guard fd >= 0 else { continue }  // removed meanwhile
                let (r, _) = Sys.retry { fdatasync(fd) }
                close(fd)
                if r == 0 { synced.append(entry) } else { lock.locked { _ = pending.insert(entry.file) } }
            }
            crash?.reached(.temp)
            var renamed = 0
            lock.locked {
                for (file, newest) in synced {
                    // Still there (not removed, not renamed by a pass before).
                    guard let seqs = live[file], seqs.contains(newest) else { continue }
                    // The older ones go first: a crash in between leaves
                    // only temp files newer than the snapshot.
                    for n in seqs where n < newest { _ = try? Sys.unlink(tempPath(file, n)) }
                    let (r, _) = Sys.retry { rename(tempPath(file, newest), path(file)) }
                    live[file] = seqs.filter { $0 > newest }
                    if r != 0 {
                        pending.insert(file)
                        live[file]?.insert(newest, at: 0)
                        continue
                    }
                    if live[file]?.isEmpty == true { live[file] = nil }
                    renamed += 1
                }
            }
            crash?.reached(.rename)
            flushCosts.locked { [renamed] in $0.renamed += renamed }
            if durable {
                do throws(SystemError) { try Sys.syncDirectory(directory) } catch { lock.locked { directoryDirty = true } }
            }
            return renamed
        }
    }

    /// Starts the flusher thread: a pass as soon as something is written,
    /// and the next one as soon as it ends if more was written meanwhile.
    public func startFlusher() {
        let start = lock.locked { () -> Bool in
            defer { flusherRunning = true }
            return !flusherRunning
        }
        guard start else { return }
        Threads.detach { [self] in
            var seen: UInt64 = 0
            while true {
                let (work, stopping) = lock.locked { (!pending.isEmpty || directoryDirty, flusherStopping) }
                if work {
                    flush()
                    continue
                }
                if stopping { break }
                seen = wake.wait(past: seen, timeoutMs: 1000)
            }
            flusherDone.signal()
        }
    }

    /// Flushes what is left and stops the flusher thread.
    public func stopFlusher() {
        let running = lock.locked { () -> Bool in
            flusherStopping = true
            return flusherRunning
        }
        wake.bump()
        if running { flusherDone.wait() } else { flush() }
    }

    /// `name`'s snapshot as `open` would leave it (its newest whole temp
    /// file, else the file); nil when there is none or it is damaged.
    public func load(_ name: String) -> ContainerSnapshot? {
        let file = Self.fileName(name)
        let seqs = scan().temps[file] ?? []
        return newestTemp(file, seqs)?.snapshot ?? Self.decodeFile(path(file))
    }

    /// Every snapshot as `open` would leave them, by container name, and
    /// the snapshot files that are damaged (with why; a temp file that does
    /// not check out is no damage: a crash cut it short, the snapshot it
    /// would have replaced stands).
    public func loadAll() -> (snapshots: [String: ContainerSnapshot], damaged: [(file: String, why: String)]) {
        var out: [String: ContainerSnapshot] = [:]
        var damaged: [(String, String)] = []
        let (files, temps) = scan()
        for f in files.union(temps.keys).sorted() {
            let found: ContainerSnapshot
            if let t = newestTemp(f, temps[f] ?? []) {
                found = t.snapshot
            } else {
                guard files.contains(f) else { continue }
                let bytes: [UInt8]
                do { bytes = try Sys.readBytes(path(f)) } catch {
                    damaged.append((f, "\(error)"))
                    continue
                }
                switch Self.decode(bytes) {
                case .success(let s): found = s
                case .failure(let e):
                    damaged.append((f, e.message))
                    continue
                }
            }
            // A file must be where its name says: one renamed by hand is damaged.
            guard let name = found.name, Self.fileName(name) == f else {
                damaged.append((f, "holds the snapshot of \(found.name ?? "?"), whose file is \(Self.fileName(found.name ?? ""))"))
                continue
            }
            out[name] = found
        }
        return (out, damaged)
    }

    /// Moves a damaged file aside (`damaged-<file>`), so it is reported once
    /// and kept for a human, not read again.
    public func setAside(_ file: String) {
        _ = rename(path(file), directory + "/damaged-" + file)
    }
}
