// The agent's event history: one boot id per agent start, sequence numbers
// that start at 1 and increase by exactly one, a bounded replay log so a
// subscriber can resume, and an explicit gap when it cannot.
import Glibc
import LmctfyProto
import LmctfyRPC
import LmctfySystem

/// The agent's event history: container lifecycle events and notifications,
/// each with the boot id and a sequence number from 1 up, the latest
/// `capacity` kept for replay. Thread-safe (state behind a lock).
public final class EventLog: Sendable {
    /// Identifies this agent start (32 hex digits): sequence numbers are only
    /// comparable within one boot id.
    public let bootId: String
    /// How many events the log keeps; older ones are dropped, and a resume
    /// from before them reports a gap.
    public let capacity: Int
    private let state = Mutexed(State())
    /// Called after every record, on the recording thread (the agent's hub
    /// schedules its fan-out from here).
    ///
    /// The closure sits in a class: read through `Mutexed.locked`'s generic
    /// `inout`, a closure value is converted to the generic representation
    /// and back on the way in and out, and written back wrapped in two more
    /// thunks each time, so it grew by two calls with every event recorded
    /// (found by profiling an agent recording 1,000 samples a second).
    private let observer = Mutexed<CallbackBox?>(nil)
    /// Bumped after every record, for threads that wait for the next event.
    public let changes = ChangeCounter()

    /// Items in sequence order, at most `capacity`: once full, an append
    /// replaces the oldest in place instead of shifting the history down.
    struct Ring<Item: Sequenced>: Sendable {
        var items: [Item] = []
        var start = 0

        /// Appends; returns the item it pushed out, if any.
        mutating func append(_ e: Item, capacity: Int) -> Item? {
            guard capacity > 0 else { return e }
            if items.count < capacity {
                items.append(e)
                return nil
            }
            let out = items[start]
            items[start] = e
            start = (start + 1) % capacity
            return out
        }

        /// The oldest item kept.
        var oldest: Item? { items.isEmpty ? nil : items[start] }

        private func at(_ i: Int) -> Item { items[(start + i) % items.count] }

        /// The kept items with `after` < sequence <= `upTo`, oldest first
        /// (found by binary search: the ring is in sequence order).
        func range(after: UInt64, upTo: UInt64) -> [Item] {
            var lo = 0, hi = items.count
            while lo < hi {
                let mid = (lo + hi) / 2
                if at(mid).seq <= after { lo = mid + 1 } else { hi = mid }
            }
            var out: [Item] = []
            var i = lo
            while i < items.count, at(i).seq <= upTo {
                out.append(at(i))
                i += 1
            }
            return out
        }
    }

    /// A STATS sample as the ring keeps it: serialized. A `ContainerStats`
    /// value holds every field of the message inline (a few KB, though a
    /// summary sets a handful), so `capacity` samples of a thousand
    /// containers' sweeps held ~11 MB as values and a few hundred KB so.
    /// Decoded only when replayed or published.
    struct PackedEvent: Sequenced, Sendable {
        let seq: UInt64
        let bytes: [UInt8]
    }

    struct State {
        var next: UInt64 = 1
        /// A log whose id outlives the process: the file holding a bound
        /// every sequence number handed out is below, and that bound.
        var reservation: (path: String, through: UInt64)?
        /// Where events are also written (state_dir/events), once attached.
        var journal: EventJournal?
        /// The boots before this one whose events the journal kept, oldest
        /// first (an agent restarted twice keeps two).
        var older: [(id: String, events: [ContainerEvent])] = []
        /// Every event but stats samples, the latest `capacity`.
        var events = Ring<ContainerEvent>()
        /// Stats samples, the latest `capacity`, apart: a sweep of a
        /// thousand containers must not push the other events out. An older
        /// sample is superseded by a newer one of its container, so one that
        /// is gone is no gap.
        var stats = Ring<PackedEvent>()
        /// The newest sequence of an event (not a sample) pushed out: a
        /// resume from before it has missed something.
        var evictedThrough: UInt64 = 0
        /// Each container's newest STATS sample (for its snapshot), until
        /// its DESTROYED.
        var latestStats: [String: ContainerStats] = [:]
        /// Events recorded by kind since the log began (metrics), and each
        /// container's OOMs until its DESTROYED.
        var kindCounts: [ContainerEventKind: UInt64] = [:]
        var ooms: [String: UInt64] = [:]

        /// Both rings' events in (after, upTo], merged in sequence order.
        func range(after: UInt64, upTo: UInt64) -> [ContainerEvent] {
            let a = events.range(after: after, upTo: upTo)
            let b = stats.range(after: after, upTo: upTo).compactMap { try? ContainerEvent(serializedBytes: $0.bytes) }
            if b.isEmpty { return a }
            if a.isEmpty { return b }
            var out: [ContainerEvent] = []
            out.reserveCapacity(a.count + b.count)
            var i = 0, j = 0
            while i < a.count || j < b.count {
                if j == b.count || (i < a.count && (a[i].sequence ?? 0) < (b[j].sequence ?? 0)) {
                    out.append(a[i]); i += 1
                } else {
                    out.append(b[j]); j += 1
                }
            }
            return out
        }

        /// The first sequence a resume can still get without a gap.
        var firstAvailable: UInt64 { evictedThrough + 1 }
    }

    /// An empty log keeping `capacity` events, under `bootId` (nil: a random one).
    public init(capacity: Int = 4096, bootId: String? = nil) {
        self.capacity = capacity
        self.bootId = bootId ?? Crypto.randomBytes(16).map { String($0, radix: 16).leftPadded(2) }.joined()
    }

    /// Runs `observe` after every event recorded from now on (nil: none).
    public func onRecord(_ observe: (@Sendable () -> Void)?) {
        observer.locked { $0 = observe.map(CallbackBox.init) }
    }

    /// Appends an event with the next sequence number and returns it.
    @discardableResult
    public func record(container: String, kind: ContainerEventKind, threshold: Int64? = nil, frozen: Bool? = nil,
                       pid: Int32? = nil, exitCode: Int32? = nil, termSignal: Int32? = nil) -> ContainerEvent {
        append(ContainerEvent(container: container, kind: kind, memoryThreshold: threshold, frozen: frozen,
                              pid: pid, exitCode: exitCode, termSignal: termSignal))
    }

    /// Appends a stats sample of one container (kept apart from the other
    /// events and not journaled: a sample is superseded by the next).
    @discardableResult
    public func recordStats(container: String, _ stats: ContainerStats) -> ContainerEvent {
        append(ContainerEvent(container: container, kind: .containerEventStats, stats: stats))
    }

    /// Keeps the log on disk from now on, in `directory` (made 0700), after
    /// reading what the last boot before this one left there: its events are
    /// served to a subscriber of that boot (`previousBoot`).
    ///
    /// A log whose id outlives the process (the controller's fleet log,
    /// whose id is kept in its state directory) finds its own events there
    /// instead: they are kept again, and its sequence goes on after them.
    public func attachJournal(directory: String) throws(LmctfyError) {
        let journal = try EventJournal(directory: directory, capacity: capacity)
        let stored = journal.opened
        let own = stored.filter { $0.bootId == bootId }
        var older: [(id: String, events: [ContainerEvent])] = []
        for e in stored where e.bootId != bootId {
            guard let id = e.bootId else { continue }
            if let i = older.firstIndex(where: { $0.id == id }) { older[i].events.append(e) } else { older.append((id, [e])) }
        }
        state.locked { s in
            s.journal = journal
            s.older = older
            // What rotated out of the journal before the oldest kept is gone.
            if let first = own.first?.sequence, first > 1 { s.evictedThrough = max(s.evictedThrough, first - 1) }
            for e in own where (e.sequence ?? 0) >= s.next {
                if let out = s.events.append(e, capacity: capacity) { s.evictedThrough = out.sequence ?? s.evictedThrough }
                s.next = (e.sequence ?? 0) + 1
            }
        }
    }

    /// Sequence numbers handed out at a time past the last journaled event.
    public static let reservationBlock: UInt64 = 16384

    /// For a log whose id outlives the process (the controller's fleet
    /// log; after `attachJournal`): sequence numbers are never handed out
    /// twice across restarts, SIGKILL included. STATS samples take numbers
    /// but are not journaled, so the journal alone restarted the numbering
    /// after its last event, and a subscriber resuming from a sample's
    /// number silently skipped the new events given the same numbers (a
    /// probe's finding). `path` holds a bound the numbers handed out stay
    /// below; it is moved a block ahead (fsynced) before they reach it, and
    /// a restart goes on from it.
    public func reserveSequences(path: String) throws(LmctfyError) {
        let saved = (try? Sys.readFile(path)).flatMap { UInt64($0.trimmingWhitespace) } ?? 0
        var failure: LmctfyError?
        state.locked { s in
            s.next = max(s.next, saved)
            s.reservation = (path, 0)
            if !Self.reserve(&s) { failure = LmctfyError(.failedPrecondition, "Writing the event log's sequence reservation \(path)") }
        }
        if let failure { throw failure }
    }

    /// Moves the reservation a block past `next` (false if it cannot be
    /// written: the numbers then stay within the old bound's promise as
    /// long as the process lives, and the next append tries again).
    @discardableResult
    private static func reserve(_ s: inout State) -> Bool {
        guard let r = s.reservation else { return true }
        let through = s.next + reservationBlock
        do {
            try Sys.writeFileAtomically(r.path, Array("\(through)\n".utf8), mode: 0o600)
        } catch {
            return false
        }
        s.reservation = (r.path, through)
        return true
    }

    /// Appends an event with this log's boot id and next sequence number
    /// (the time now, unless it has one); its other fields are kept (an
    /// event made elsewhere, at the controller: the host, the host's own
    /// numbering, the time it happened). A STATS sample is kept apart from
    /// the other events and not journaled.
    @discardableResult
    public func append(_ event: ContainerEvent) -> ContainerEvent {
        let e = state.locked { s in
            var e = event
            e.bootId = bootId
            e.sequence = s.next
            if e.timestampNs == nil { e.timestampNs = WallClock.nanosecondsSinceEpoch() }
            s.next += 1
            // Moved before the next number reaches the bound: every number
            // handed out stays below the bound on disk.
            if let r = s.reservation, s.next >= r.through { Self.reserve(&s) }
            s.kindCounts[e.kind ?? .containerEventUnspecified, default: 0] += 1
            if e.kind == .containerEventOom, let c = e.container { s.ooms[c, default: 0] += 1 }
            if e.kind == .containerEventStats {
                if let bytes = try? e.serializedBytes() { _ = s.stats.append(PackedEvent(seq: e.sequence ?? 0, bytes: bytes), capacity: capacity) }
                if let c = e.container, let stats = e.stats { s.latestStats[c] = stats }
            } else {
                if e.kind == .containerEventDestroyed, let c = e.container, !s.latestStats.isEmpty || !s.ooms.isEmpty {
                    // It and what was below it.
                    let gone: (String) -> Bool = { $0 == c || $0.hasPrefix(c == "/" ? "/" : c + "/") }
                    s.latestStats = s.latestStats.filter { !gone($0.key) }
                    s.ooms = s.ooms.filter { !gone($0.key) }
                }
                if let out = s.events.append(e, capacity: capacity) { s.evictedThrough = out.sequence ?? s.evictedThrough }
                s.journal?.append(e)
            }
            return e
        }
        changes.bump()
        observer.locked { $0 }?.call()
        return e
    }

    /// The newest STATS sample of `container` since it was last destroyed
    /// (nil: none).
    public func latestStats(container: String) -> ContainerStats? {
        state.locked { $0.latestStats[container] }
    }

    /// What the metrics endpoint serves, taken in one go under the lock
    /// (the dictionaries are copied on write, so this is cheap): every
    /// container's newest STATS sample and OOM count, and the events
    /// recorded by kind since the log began.
    public var metricsSnapshot: (stats: [String: ContainerStats], ooms: [String: UInt64], kinds: [ContainerEventKind: UInt64]) {
        state.locked { ($0.latestStats, $0.ooms, $0.kindCounts) }
    }

    /// The last boot before this one and its events as the journal kept
    /// them (oldest first); nil without a journal or before any.
    public var previousBoot: (id: String, events: [ContainerEvent])? { state.locked { $0.older.last } }

    /// Every boot before this one whose events the journal kept, oldest
    /// first, each with its events (oldest first).
    public var olderBoots: [(id: String, events: [ContainerEvent])] { state.locked { $0.older } }

    /// The newest sequence number recorded (0: none yet).
    public var newest: UInt64 { state.locked { $0.next - 1 } }

    /// A resume point is refused when it names an event of this boot
    /// (`bootId` nil or this one) that was never recorded: nobody handled
    /// it, and a subscriber resuming there would silently skip whatever is
    /// recorded up to it. OUT_OF_RANGE. (Subscribe and Notify share it.)
    public func checkResumePoint(bootId asked: String?, after: UInt64) throws(LmctfyError) {
        guard asked == nil || asked == bootId else { return }
        let newest = self.newest
        if after > newest {
            throw LmctfyError(.outOfRange, "after_sequence \(after) is beyond the newest event \(newest) of boot \(bootId)")
        }
    }

    /// The kept events with `after` < sequence <= `upTo`, in order, and the
    /// oldest sequence kept when some after `after` are gone (nil: none are).
    public func range(after: UInt64, upTo: UInt64) -> (events: [ContainerEvent], droppedBefore: UInt64?) {
        state.locked { s in
            let first = s.firstAvailable
            return (s.range(after: after, upTo: upTo), Self.isBeforeFirst(after, first) && after < upTo ? first : nil)
        }
    }

    /// Whether events after `after` are gone: the oldest kept, `first`, is
    /// not the one right after it. (`after + 1` overflowed, a trap, for a
    /// peer's after_sequence of 2^64-1.)
    static func isBeforeFirst(_ after: UInt64, _ first: UInt64) -> Bool { first > 0 && after < first - 1 }

    /// Events after `after` (of this boot) that match, and a gap when some
    /// may be missing: another boot id, or history already dropped.
    public func since(bootId asked: String?, after: UInt64, matching: (ContainerEvent) -> Bool) -> ([ContainerEvent], EventGap?) {
        state.locked { s in
            let first = s.firstAvailable
            if asked != bootId || Self.isBeforeFirst(after, first) {
                let gap = EventGap(requestedBootId: asked, afterSequence: after, bootId: bootId, firstSequence: first)
                return (s.range(after: 0, upTo: s.next).filter(matching), gap)
            }
            return (s.range(after: after, upTo: s.next).filter(matching), nil)
        }
    }
}

/// What a Ring keeps: an item with its sequence number.
protocol Sequenced: Sendable {
    var seq: UInt64 { get }
}

extension ContainerEvent: Sequenced {
    var seq: UInt64 { sequence ?? 0 }
}

extension String {
    func leftPadded(_ width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}

/// A closure held by reference (see EventLog.observer).
final class CallbackBox: Sendable {
    let call: @Sendable () -> Void
    init(_ call: @escaping @Sendable () -> Void) { self.call = call }
}
