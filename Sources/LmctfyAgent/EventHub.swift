// The agent's event hub: the subscribers of the one event log, served on
// the loop thread (PROTOCOL.md section 6.2). Events are taken from the log
// in sequence order (whatever thread recorded them, in whatever order their
// notifications arrive) and handed to every matching subscriber, so each
// event reaches each subscriber once, with the log's (boot id, sequence).
import LmctfyProto
import LmctfyRPC
import LmctfySystem
import Synchronization

/// Which events a subscriber wants.
struct EventFilter: Equatable {
    /// An absolute container name; nil: every container.
    var container: String?
    /// With `container`: everything below it too.
    var recursive = false
    /// Empty: every kind.
    var kinds: Set<ContainerEventKind> = []

    /// Every event of every container.
    init() {}

    /// A Subscribe request's filter, its name resolved by `resolve` as every
    /// other method resolves names (the backend's). INVALID_ARGUMENT for a
    /// bad name, or for `recursive` without one.
    init(_ r: SubscribeRequest, resolve: (String) throws(LmctfyError) -> String) throws(LmctfyError) {
        recursive = r.recursive ?? false
        kinds = Set(r.kinds)
        if let name = r.name {
            container = try resolve(name)
        } else if recursive {
            throw .invalidArgument("recursive needs a container name")
        }
    }

    func matches(_ e: ContainerEvent) -> Bool {
        if !kinds.isEmpty && !kinds.contains(e.kind ?? .containerEventUnspecified) { return false }
        guard let container else { return true }
        let name = e.container ?? ""
        if name == container { return true }
        guard recursive else { return false }
        return container == "/" || name.hasPrefix(container + "/")
    }
}

/// The subscribers and how far the log has been handed out. Loop thread only.
final class EventHub {
    struct Key: Hashable {
        let conn: Int
        let stream: UInt32
    }

    struct Subscriber {
        let filter: EventFilter
        /// The sequence of the last event sent on this stream (0: none yet).
        var lastSent: UInt64
    }

    let log: EventLog
    private(set) var subscribers: [Key: Subscriber] = [:] {
        didSet { active.store(!subscribers.isEmpty, ordering: .releasing) }
    }
    /// Whether anyone subscribes: read by recording threads, so that an
    /// event wakes the loop only when someone will get it.
    let active = Atomic<Bool>(false)
    /// Every event up to this sequence has been handed to the subscribers
    /// that were there when it was.
    private(set) var published: UInt64

    init(log: EventLog) {
        self.log = log
        published = log.newest
    }

    /// A new subscription: checks the request and returns what to send
    /// first (a gap, then the kept events after the resume point up to what
    /// has been published; the rest comes live). The subscriber is added.
    func subscribe(_ key: Key, _ r: SubscribeRequest, filter: EventFilter) throws(LmctfyError) -> [SubscribeResponse] {
        var first: [SubscribeResponse] = []
        var lastSent = published
        if let after = r.afterSequence {
            let ownBoot = r.bootId == nil || r.bootId == log.bootId
            if ownBoot && after > log.newest {
                throw LmctfyError(.outOfRange, "after_sequence \(after) is beyond the newest event \(log.newest) of boot \(log.bootId)")
            }
            // A subscriber of the boot before this one: what the journal kept
            // of it after its point first; the gap then says through which
            // sequence that boot's events survived.
            var gapAfter = after
            if !ownBoot, let previous = log.previousBoot, previous.id == r.bootId {
                first += previous.events.filter { ($0.sequence ?? 0) > after && filter.matches($0) }.map { SubscribeResponse(event: $0) }
                gapAfter = max(after, previous.events.last?.sequence ?? 0)
            }
            let from: UInt64 = ownBoot ? after : 0
            let (events, dropped) = log.range(after: from, upTo: published)
            if !ownBoot || dropped != nil {
                first.append(SubscribeResponse(gap: EventGap(
                    requestedBootId: r.bootId, afterSequence: gapAfter, bootId: log.bootId,
                    firstSequence: events.first?.sequence ?? dropped ?? published + 1)))
            }
            first += events.filter(filter.matches).map { SubscribeResponse(event: $0) }
        }
        if let last = first.last(where: { $0.event?.bootId == log.bootId })?.event?.sequence { lastSent = last }
        // A caller resuming after an event recorded but not yet handed out
        // (seen through Notify) gets what follows it only.
        if let after = r.afterSequence, r.bootId == nil || r.bootId == log.bootId { lastSent = max(lastSent, after) }
        subscribers[key] = Subscriber(filter: filter, lastSent: lastSent)
        first.append(SubscribeResponse(caughtUp: published))
        return first
    }

    func remove(_ key: Key) {
        subscribers[key] = nil
    }

    /// Hands out what the log has recorded since the last call, in order:
    /// `send` gets each subscriber's responses (encoded once per event) and
    /// returns false to end that subscription (it is then removed).
    func publish(_ send: (Key, [UInt8], UInt64) -> Bool) {
        let newest = log.newest
        guard newest > published else { return }
        let (events, dropped) = log.range(after: published, upTo: newest)
        if let dropped {
            // The loop fell more than the log's capacity behind: say so on
            // every stream rather than skip silently.
            let gap = SubscribeResponse(gap: EventGap(
                requestedBootId: log.bootId, afterSequence: published, bootId: log.bootId, firstSequence: dropped))
            let bytes = (try? gap.serializedBytes()) ?? []
            for key in Array(subscribers.keys) where !send(key, bytes, published) { subscribers[key] = nil }
        }
        published = newest
        for e in events {
            let sequence = e.sequence ?? 0
            let keys = subscribers.filter { $0.value.lastSent < sequence && $0.value.filter.matches(e) }.map(\.key)
            guard !keys.isEmpty, let bytes = try? SubscribeResponse(event: e).serializedBytes() else { continue }
            for key in keys {
                if send(key, bytes, sequence) {
                    subscribers[key]?.lastSent = sequence
                } else {
                    subscribers[key] = nil
                }
            }
        }
    }
}
