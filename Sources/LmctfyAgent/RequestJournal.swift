// The request journal (PROTOCOL.md section 6.1): what the agent did for each
// mutating call that carried a `request_id`, so that a caller who lost the
// answer (the connection dropped, the agent died) can send the same request
// again and get the same answer without the work being done twice.
//
// One file per id, state_dir/requests/<id>, holding a RequestJournalEntry:
// written (temp file, rename) when the call starts and again when it has its
// outcome. Not fsynced: the journal is for an agent that dies (the page cache
// keeps what it wrote), and what every journaled call changes (cgroups,
// freezer states, tasks, mounts) does not outlive a machine crash either, so
// an entry that did would not make a retry's answer any truer. The four
// fsyncs cost a mutating call about 2.7 ms (most of an lmctl pause). Entries expire `retention` after
// they started and there are at most `maxEntries` (the oldest go first);
// the agent sweeps them at start and on a loop timer.
import Glibc
import LmctfyProto
import LmctfyRPC
import LmctfySystem

/// The agent's request journal. Thread-safe: pool threads call `begin` and
/// `finish`, the loop's sweep runs on a pool thread too; the index is behind
/// a lock, and a second call with an id whose first call is still running in
/// this agent waits for it.
public final class RequestJournal: @unchecked Sendable {
    // @unchecked: `index` and `inFlight` are only touched with `lock` held.

    /// How long and how many entries are kept.
    public struct Limits: Sendable {
        /// An entry is forgotten this long after its call started (10 min).
        public var retentionNs: UInt64 = 600 * 1_000_000_000
        /// At most this many entries; a new one evicts the oldest (4096).
        public var maxEntries = 4096

        public init(retentionNs: UInt64 = 600 * 1_000_000_000, maxEntries: Int = 4096) {
            self.retentionNs = retentionNs
            self.maxEntries = maxEntries
        }
    }

    /// What `begin` tells the handler to do.
    public enum Begin: Equatable, Sendable {
        /// The id is new: do the work, then `finish`.
        case fresh
        /// The call finished before: answer with this status and (if OK)
        /// these response bytes, and do nothing.
        case replay(CallStatus, [UInt8])
        /// The call started but never finished (the agent died under it): do
        /// the work again, taking "already done" for success, then `finish`.
        /// When it first started (wall clock ns).
        case redo(startedNs: UInt64)
        /// The id is new but the disk is full: a call whose second run
        /// changes nothing (a destroy, which also makes room) does the work
        /// anyway, unrecorded, then `finish` (which records it if there is
        /// room by then). Why it is unrecorded.
        case unrecorded(LmctfyError)
    }

    /// state_dir/requests.
    public let directory: String
    let bootId: String
    let limits: Limits
    let now: @Sendable () -> UInt64
    /// Where a call that goes on unrecorded is told of (the agent's log).
    let report: @Sendable (String) -> Void
    private let lock = Lock()
    /// Every entry on disk: id -> started_ns.
    private var index: [String: UInt64] = [:]
    /// Calls with an id running in this agent now, and who waits for them.
    private var inFlight: [String: Latch] = [:]

    /// A journal in `directory` (not touched until `open`); `now` is the wall
    /// clock in nanoseconds (entries outlive the agent, so monotonic time
    /// would not do).
    public init(directory: String, bootId: String, limits: Limits = Limits(),
                now: @escaping @Sendable () -> UInt64 = WallClock.nanosecondsSinceEpoch,
                report: @escaping @Sendable (String) -> Void = { _ in }) {
        self.directory = directory
        self.bootId = bootId
        self.limits = limits
        self.now = now
        self.report = report
    }

    /// Makes the directory (0700) if absent, loads the index, removes
    /// temp files a crash left and what has expired. Returns how many
    /// entries it removed.
    @discardableResult
    public func open() throws(LmctfyError) -> Int {
        if !Sys.isDirectory(directory) {
            do { try Sys.mkdir(directory, mode: 0o700) } catch { throw error.lmctfy(.failedPrecondition, "Creating the request journal") }
        }
        let names: [String]
        do { names = try Sys.subdirectoriesAndFiles(directory) } catch { throw error.lmctfy(.failedPrecondition, "Reading the request journal") }
        var removed = 0
        var loaded: [String: UInt64] = [:]
        for name in names {
            guard Self.isValid(name), let entry = read(name) else {
                _ = try? Sys.unlink(directory + "/" + name)  // a temp file, or unreadable
                removed += 1
                continue
            }
            loaded[name] = entry.startedNs ?? 0
        }
        lock.locked { index = loaded }
        return removed + sweep()
    }

    /// How many entries the journal holds.
    public var count: Int { lock.locked { index.count } }

    /// Whether `id` may name an entry: 1 to 64 of [A-Za-z0-9_-] (it is a
    /// file name).
    public static func isValid(_ id: String) -> Bool {
        let u = id.utf8
        return (1...64).contains(u.count) && u.allSatisfy { c in
            (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || c == 0x2D || c == 0x5F
        }
    }

    /// Starts a call carrying `id`. INVALID_ARGUMENT for a malformed id or an
    /// id already used for another method or other request bytes. If a call
    /// with this id is running in this agent, waits until it has finished
    /// and replays its outcome.
    /// `evenWhenFull`: a call whose second run changes nothing goes on when
    /// a full disk cannot take its new entry (`unrecorded`); any other is
    /// refused (RESOURCE_EXHAUSTED), since a retry after a lost answer
    /// would do its work twice.
    public func begin(id: String, method: String, payload: [UInt8], evenWhenFull: Bool = false) throws(LmctfyError) -> Begin {
        guard Self.isValid(id) else {
            throw .invalidArgument("request_id \"\(id)\" must be 1 to 64 characters of [A-Za-z0-9_-]")
        }
        let digest = Crypto.sha256(payload)
        while true {
            // Claim the id, or find whom to wait for, under the lock.
            let (waitFor, known): (Latch?, Bool) = lock.locked {
                if let latch = inFlight[id] { return (latch, true) }
                inFlight[id] = Latch()
                return (nil, index[id] != nil)
            }
            if let waitFor {
                waitFor.wait()
                continue
            }
            do throws(LmctfyError) {
                if known, let entry = read(id) {
                    guard entry.method == method, entry.requestSha256 == digest else {
                        throw .invalidArgument("request_id \"\(id)\" was used for another request (\(entry.method ?? "?"))")
                    }
                    if entry.finished == true {
                        release(id)
                        let code = StatusCode(rawValue: entry.code ?? 2) ?? .unknown
                        return .replay(CallStatus(code, entry.message ?? ""), entry.response ?? [])
                    }
                    // Started in an earlier life (or its outcome could not be
                    // written): it is ours now.
                    try write(RequestJournalEntry(requestId: id, method: method, requestSha256: digest,
                                                  startedNs: entry.startedNs, bootId: bootId))
                    return .redo(startedNs: entry.startedNs ?? 0)
                }
                let started = now()
                do throws(LmctfyError) {
                    try write(RequestJournalEntry(requestId: id, method: method, requestSha256: digest, startedNs: started, bootId: bootId))
                } catch where evenWhenFull && error.code == .resourceExhausted {
                    report("\(method) with request_id \(id) goes on unrecorded: \(error.message)")
                    return .unrecorded(error)  // the id stays claimed until `finish`
                }
                let evict: [String] = lock.locked {
                    index[id] = started
                    guard index.count > limits.maxEntries else { return [] }
                    let idle = index.filter { inFlight[$0.key] == nil }.sorted { $0.value < $1.value }
                    let victims = idle.prefix(index.count - limits.maxEntries).map(\.key)
                    for v in victims { index[v] = nil }
                    return victims
                }
                for v in evict { _ = try? Sys.unlink(directory + "/" + v) }
                return .fresh
            } catch {
                release(id)
                throw error
            }
        }
    }

    /// Records the outcome of a call `begin` told to run (`response`: the
    /// serialized response of an OK call) and wakes whoever waits for it.
    /// A failure to write is returned (the call's answer stands; a retry
    /// would redo the work).
    @discardableResult
    public func finish(id: String, method: String, payload: [UInt8], status: CallStatus, response: [UInt8]) -> LmctfyError? {
        defer { release(id) }
        let started = lock.locked { index[id] } ?? now()
        do {
            try write(RequestJournalEntry(requestId: id, method: method, requestSha256: Crypto.sha256(payload),
                                          startedNs: started, bootId: bootId, finished: true, code: status.code.rawValue,
                                          message: status.message, response: status.code == .ok ? response : nil))
            // One that went on unrecorded (a full disk) is known from now.
            lock.locked { if index[id] == nil { index[id] = started } }
            return nil
        } catch {
            return error
        }
    }

    /// Removes the entries older than the retention (not those running).
    /// Returns how many it removed.
    @discardableResult
    public func sweep() -> Int {
        let t = now()
        let expired: [String] = lock.locked {
            let old = index.filter { inFlight[$0.key] == nil && t >= $0.value && t - $0.value >= limits.retentionNs }.map(\.key)
            for id in old { index[id] = nil }
            return old
        }
        for id in expired { _ = try? Sys.unlink(directory + "/" + id) }
        return expired.count
    }

    private func release(_ id: String) {
        let latch = lock.locked { inFlight.removeValue(forKey: id) }
        latch?.signal()
    }

    private func read(_ id: String) -> RequestJournalEntry? {
        guard let bytes = try? Sys.readBytes(directory + "/" + id) else { return nil }
        return try? RequestJournalEntry(serializedBytes: bytes)
    }

    /// Temp file renamed over the entry: an agent killed at any instant
    /// leaves the old entry or the new one, never a torn one (not fsynced:
    /// see the top of this file).
    private func write(_ entry: RequestJournalEntry) throws(LmctfyError) {
        let path = directory + "/" + (entry.requestId ?? "")
        let bytes: [UInt8]
        do { bytes = try entry.serializedBytes() } catch { throw .internalError("encoding a journal entry: \(error)") }
        do {
            try Sys.writeFileAtomically(path, bytes, mode: 0o600, durable: false)
        } catch where error.isNoSpace {
            throw error.lmctfy(.resourceExhausted, "Writing the request journal (\(directory): the disk is full; destroy, killall, pause and resume still work)")
        } catch {
            throw error.lmctfy(.unavailable, "Writing the request journal")
        }
    }
}
