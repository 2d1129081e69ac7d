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
    private let observer = Mutexed<(@Sendable () -> Void)?>(nil)

    struct State {
        var next: UInt64 = 1
        /// Where events are also written (state_dir/events), once attached.
        var journal: EventJournal?
        /// The last boot before this one whose events the journal kept.
        var previous: (id: String, events: [ContainerEvent])?
        /// The kept events: a ring of at most `capacity`, the oldest at
        /// `start` once it is full (an append replaces the oldest in place
        /// instead of shifting the whole history down).
        var ring: [ContainerEvent] = []
        var start = 0

        mutating func append(_ e: ContainerEvent, capacity: Int) {
            guard capacity > 0 else { return }
            if ring.count < capacity {
                ring.append(e)
            } else {
                ring[start] = e
                start = (start + 1) % capacity
            }
        }

        /// The oldest event kept.
        var oldest: ContainerEvent? { ring.isEmpty ? nil : ring[start] }

        /// The kept events, oldest first, that match.
        func kept(where matching: (ContainerEvent) -> Bool) -> [ContainerEvent] {
            ring[start...].filter(matching) + ring[..<start].filter(matching)
        }
    }

    /// An empty log keeping `capacity` events, under `bootId` (nil: a random one).
    public init(capacity: Int = 4096, bootId: String? = nil) {
        self.capacity = capacity
        self.bootId = bootId ?? Crypto.randomBytes(16).map { String($0, radix: 16).leftPadded(2) }.joined()
    }

    /// Runs `observe` after every event recorded from now on (nil: none).
    public func onRecord(_ observe: (@Sendable () -> Void)?) {
        observer.locked { $0 = observe }
    }

    /// Appends an event with the next sequence number and returns it.
    @discardableResult
    public func record(container: String, kind: ContainerEventKind, threshold: Int64? = nil, frozen: Bool? = nil,
                       pid: Int32? = nil, exitCode: Int32? = nil, termSignal: Int32? = nil) -> ContainerEvent {
        let now = WallClock.nanosecondsSinceEpoch()
        let e = state.locked { s in
            let e = ContainerEvent(
                bootId: bootId, sequence: s.next, timestampNs: now,
                container: container, kind: kind, memoryThreshold: threshold, frozen: frozen,
                pid: pid, exitCode: exitCode, termSignal: termSignal)
            s.next += 1
            s.append(e, capacity: capacity)
            s.journal?.append(e)
            return e
        }
        observer.locked { $0 }?()
        return e
    }

    /// Keeps the log on disk from now on, in `directory` (made 0700), after
    /// reading what the last boot before this one left there: its events are
    /// served to a subscriber of that boot (`previousBoot`).
    public func attachJournal(directory: String) throws(LmctfyError) {
        let journal = try EventJournal(directory: directory, capacity: capacity)
        let stored = journal.opened
        let previous = stored.last(where: { $0.bootId != bootId })?.bootId
        state.locked { s in
            s.journal = journal
            if let previous {
                s.previous = (previous, stored.filter { $0.bootId == previous })
            }
        }
    }

    /// The last boot before this one and its events as the journal kept
    /// them (oldest first); nil without a journal or before any.
    public var previousBoot: (id: String, events: [ContainerEvent])? { state.locked { $0.previous } }

    /// The newest sequence number recorded (0: none yet).
    public var newest: UInt64 { state.locked { $0.next - 1 } }

    /// The kept events with `after` < sequence <= `upTo`, in order, and the
    /// oldest sequence kept when some after `after` are gone (nil: none are).
    public func range(after: UInt64, upTo: UInt64) -> (events: [ContainerEvent], droppedBefore: UInt64?) {
        state.locked { s in
            let first = s.oldest?.sequence ?? s.next
            let events = s.kept { let q = $0.sequence ?? 0; return q > after && q <= upTo }
            return (events, after + 1 < first && after < upTo ? first : nil)
        }
    }

    /// Events after `after` (of this boot) that match, and a gap when some
    /// may be missing: another boot id, or history already dropped.
    public func since(bootId asked: String?, after: UInt64, matching: (ContainerEvent) -> Bool) -> ([ContainerEvent], EventGap?) {
        state.locked { s in
            let first = s.oldest?.sequence ?? s.next
            if asked != bootId || after + 1 < first {
                let gap = EventGap(requestedBootId: asked, afterSequence: after, bootId: bootId, firstSequence: first)
                return (s.kept(where: matching), gap)
            }
            return (s.kept { ($0.sequence ?? 0) > after && matching($0) }, nil)
        }
    }
}

extension String {
    func leftPadded(_ width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}
