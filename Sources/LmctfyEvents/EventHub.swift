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
public struct EventFilter: Equatable, Sendable {
    /// An absolute container name; nil: every container.
    public var container: String?
    /// With `container`: everything below it too.
    public var recursive = false
    /// Empty: every kind.
    public var kinds: Set<ContainerEventKind> = []
    /// At a controller: only these hosts (empty: every host).
    public var hosts: Set<String> = []

    /// Every event of every container.
    public init() {}

    /// A Subscribe request's filter, its name resolved by `resolve` as every
    /// other method resolves names (the backend's). INVALID_ARGUMENT for a
    /// bad name, or for `recursive` without one.
    public init(_ r: SubscribeRequest, resolve: (String) throws(LmctfyError) -> String) throws(LmctfyError) {
        recursive = r.recursive ?? false
        kinds = Set(r.kinds)
        hosts = Set(r.hosts)
        if let name = r.name {
            container = try resolve(name)
        } else if recursive {
            throw .invalidArgument("recursive needs a container name")
        }
    }

    public func matches(_ e: ContainerEvent) -> Bool {
        if !kinds.isEmpty && !kinds.contains(e.kind ?? .containerEventUnspecified) { return false }
        if !hosts.isEmpty && !hosts.contains(e.host ?? "") { return false }
        guard let container else { return true }
        let name = e.container ?? ""
        if name == container { return true }
        guard recursive else { return false }
        return container == "/" || name.hasPrefix(container + "/")
    }
}

/// The subscribers and how far the log has been handed out. Loop thread only.
///
/// A subscriber with credit (protocol version 3, PROTOCOL.md section 4.4)
/// is sent only what it granted; the rest waits in its own queue: stats
/// samples coalesce to the latest per container, other events queue up to
/// `buffer`, past which the subscription ends "lagged". A subscriber without
/// credit is sent everything as it comes, bounded by its connection.
public final class EventHub {
    public struct Key: Hashable, Sendable {
        public let conn: Int
        public let stream: UInt32
        public init(conn: Int, stream: UInt32) {
            self.conn = conn
            self.stream = stream
        }
    }

    /// Where a subscriber resumes: after this sequence of this boot.
    public struct ResumePoint: Sendable, Equatable {
        public let after: UInt64
        public let boot: String
        public init(after: UInt64, boot: String) {
            self.after = after
            self.boot = boot
        }
    }

    /// One response waiting for credit: its sequence (0 for a gap or the
    /// caught-up marker, which keep their place), bytes, and where its
    /// subscriber resumes once it has been sent (nil: where it did).
    public struct Waiting {
        let sequence: UInt64
        let bytes: [UInt8]
        var resume: ResumePoint? = nil
    }

    public struct Subscriber {
        let filter: EventFilter
        /// The sequence of the last event handed to this stream, sent or
        /// waiting (0: none yet): what `publish` does not give it again.
        var lastSent: UInt64
        /// Where it resumes: after what it has really been sent. (A lagged
        /// stream named `lastSent`, which counts the replay held for credit
        /// from the start: "resume after 60000" to a subscriber sent 17,614
        /// events, who lost the rest.)
        var resume: ResumePoint
        /// Responses it may still be sent; nil: not flow-controlled.
        var credit: Int?
        /// What waits for credit, in order (no stats samples).
        var queue: [Waiting] = []
        var queueHead = 0
        /// Stats samples waiting: the latest of each container.
        var samples: [String: Waiting] = [:]
        /// How many responses may wait (the buffer, plus the replay).
        var allowance: Int
        /// The bytes of what waits (queue and samples), counted against its
        /// connection's `connectionLimit` too.
        var heldBytes = 0
        /// A replay held for credit only up to its connection's limit: the
        /// point after the last response held. Once that has been sent the
        /// stream ends as lagged, naming it (the caller asks again for the
        /// rest); live events are not queued behind the cut meanwhile.
        var cut: ResumePoint? = nil

        var waiting: Int { queue.count - queueHead }
    }

    /// Sends one response on a subscriber's stream; false when it cannot
    /// take it (its connection is past its limit: it lags).
    public typealias Deliver = (Key, [UInt8]) -> Bool
    /// Ends a subscription that lags, naming where it resumes.
    public typealias Lagged = (Key, ResumePoint) -> Void

    public let log: EventLog
    /// Events held for one flow-controlled subscriber without credit.
    let buffer: Int
    /// At most how many bytes wait for credit on one connection, over all
    /// its subscribers: a peer opening many flow-controlled streams, each
    /// replaying the whole log without granting credit, had the hub hold
    /// every replay (about 4 MB each with the default log, a hundred and
    /// more a connection; a probe).
    public let connectionLimit: Int
    /// The bytes waiting for credit by connection.
    public private(set) var connectionHeld: [Int: Int] = [:]
    public private(set) var subscribers: [Key: Subscriber] = [:] {
        didSet { active.store(!subscribers.isEmpty, ordering: .releasing) }
    }
    /// Whether anyone subscribes: read by recording threads, so that an
    /// event wakes the loop only when someone will get it.
    public let active = Atomic<Bool>(false)
    /// Every event up to this sequence has been handed to the subscribers
    /// that were there when it was.
    private(set) var published: UInt64

    public init(log: EventLog, buffer: Int = 1024, connectionLimit: Int = 4 << 20) {
        self.log = log
        self.buffer = buffer
        self.connectionLimit = max(1, connectionLimit)
        published = log.newest
    }

    /// Counts `delta` bytes more (or fewer) waiting for `key`'s subscriber.
    private func account(_ key: Key, _ sub: inout Subscriber, _ delta: Int) {
        guard delta != 0 else { return }
        sub.heldBytes += delta
        let total = connectionHeld[key.conn, default: 0] + delta
        connectionHeld[key.conn] = total > 0 ? total : nil
    }

    /// Takes a subscriber out, and what waited for it off its connection's count.
    private func drop(_ key: Key) {
        guard var sub = subscribers.removeValue(forKey: key) else { return }
        account(key, &sub, -sub.heldBytes)
    }

    /// A new subscription: checks the request and returns what to send
    /// first (a gap, then the kept events after the resume point up to what
    /// has been published, then `caught_up`; the rest comes live). The
    /// subscriber is added; `credit` (nil: none) says how many it takes.
    public func subscribe(_ key: Key, _ r: SubscribeRequest, filter: EventFilter, credit: Int? = nil) throws(LmctfyError) -> [SubscribeResponse] {
        var r = r
        if r.fromOldest == true && r.bootId == nil {
            // The oldest kept: the oldest boot before this one the journal has.
            r.bootId = log.olderBootIds.first
            r.afterSequence = 0
        }
        var first: [SubscribeResponse] = []
        var lastSent = published
        if let after = r.afterSequence {
            let ownBoot = r.bootId == nil || r.bootId == log.bootId
            try log.checkResumePoint(bootId: r.bootId, after: after)
            // A subscriber of a boot before this one: what the journal kept
            // of it after its point first, then of each boot after it (each
            // boot change a gap, which says through which sequence the boot
            // before survived); the last gap leads to this boot. (Only the
            // boot just before this one was served: a resume across two
            // restarts got the gap alone, and a follower lost whole boots
            // the journal kept.)
            var gapAfter = after
            var gapBoot = r.bootId
            if !ownBoot, let asked = r.bootId {
                for (i, boot) in log.olderBoots(from: asked).enumerated() {
                    let from = i == 0 ? after : 0
                    if i == 0, let oldest = boot.events.first?.sequence, EventLog.isBeforeFirst(after, oldest) {
                        // The journal rotated out the boot's oldest events:
                        // a gap within it (they were left out unsaid, and
                        // the resume went on as if nothing were missing).
                        first.append(SubscribeResponse(gap: EventGap(
                            requestedBootId: asked, afterSequence: after, bootId: boot.id, firstSequence: oldest)))
                    }
                    if i > 0 {
                        first.append(SubscribeResponse(gap: EventGap(
                            requestedBootId: gapBoot, afterSequence: gapAfter, bootId: boot.id,
                            firstSequence: boot.events.first?.sequence ?? 1)))
                    }
                    first += boot.events.filter { ($0.sequence ?? 0) > from && filter.matches($0) }.map { SubscribeResponse(event: $0) }
                    gapAfter = max(from, boot.events.last?.sequence ?? 0)
                    gapBoot = boot.id
                }
            }
            let from: UInt64 = ownBoot ? after : 0
            var (events, dropped) = log.range(after: from, upTo: published)
            if !ownBoot || dropped != nil {
                // The gap says where the log is complete again: after the
                // newest event pushed out (`dropped`), not at the oldest
                // item kept, which may be a STATS sample kept apart from
                // the events and older than events already gone (a resume
                // from before them was told it continued from that sample
                // and silently missed the events between). Samples from
                // before that point are not sent after the gap.
                if let dropped { events.removeAll { ($0.sequence ?? 0) < dropped } }
                first.append(SubscribeResponse(gap: EventGap(
                    requestedBootId: gapBoot, afterSequence: gapAfter, bootId: log.bootId,
                    firstSequence: dropped ?? events.first?.sequence ?? published + 1)))
            }
            first += events.filter(filter.matches).map { SubscribeResponse(event: $0) }
        }
        if let last = first.last(where: { $0.event?.bootId == log.bootId })?.event?.sequence { lastSent = last }
        // A caller resuming after an event recorded but not yet handed out
        // (seen through Notify) gets what follows it only.
        if let after = r.afterSequence, r.bootId == nil || r.bootId == log.bootId { lastSent = max(lastSent, after) }
        first.append(SubscribeResponse(caughtUp: published, caughtUpBootId: log.bootId))
        // Before anything is sent it resumes where it asked to start
        // (live only: after what was published when it came).
        let start = r.afterSequence.map { ResumePoint(after: $0, boot: r.bootId ?? log.bootId) }
            ?? ResumePoint(after: published, boot: log.bootId)
        drop(key)
        subscribers[key] = Subscriber(filter: filter, lastSent: lastSent, resume: start, credit: credit, allowance: buffer + first.count)
        return first
    }

    /// Where a subscriber that has been sent `r` resumes (nil: the
    /// caught-up marker, which moves nothing). A gap: before its first
    /// sequence, in its boot.
    public func resumePoint(after r: SubscribeResponse) -> ResumePoint? {
        if let e = r.event, let seq = e.sequence { return ResumePoint(after: seq, boot: e.bootId ?? log.bootId) }
        if let g = r.gap { return ResumePoint(after: max(1, g.firstSequence ?? 1) - 1, boot: g.bootId ?? log.bootId) }
        return nil
    }

    /// Sends what `subscribe` returned to a subscriber without credit, in
    /// order; past what its connection takes, the subscription ends and
    /// `lagged` names the last of them sent. False then.
    public func replay(_ key: Key, _ responses: [SubscribeResponse], deliver: Deliver, lagged: Lagged) -> Bool {
        for r in responses {
            guard let bytes = try? r.serializedBytes(), let sub = subscribers[key] else { continue }
            guard deliver(key, bytes) else {
                drop(key)
                lagged(key, sub.resume)
                return false
            }
            if let point = resumePoint(after: r) { subscribers[key]?.resume = point }
        }
        return true
    }

    public func remove(_ key: Key) {
        drop(key)
    }

    /// The responses `subscribe` returned, for a flow-controlled subscriber:
    /// they wait for its credit like any event.
    /// Past its connection's limit the rest is not held: the stream ends
    /// once what was held has been sent (see `Subscriber.cut`).
    public func hold(_ key: Key, _ responses: [SubscribeResponse]) {
        guard var sub = subscribers[key] else { return }
        var point: ResumePoint?
        for r in responses {
            guard let bytes = try? r.serializedBytes() else { continue }
            if sub.waiting > 0, connectionHeld[key.conn, default: 0] + bytes.count > connectionLimit {
                sub.cut = point ?? sub.resume
                break
            }
            let resume = resumePoint(after: r)
            sub.queue.append(Waiting(sequence: 0, bytes: bytes, resume: resume))
            account(key, &sub, bytes.count)
            if let resume { point = resume }
        }
        subscribers[key] = sub
    }

    /// More credit from a subscriber; sends what waited for it.
    public func grant(_ key: Key, _ credit: UInt32, deliver: Deliver, lagged: Lagged) {
        guard var sub = subscribers[key], let have = sub.credit else { return }
        sub.credit = have > Int.max / 2 ? have : have + Int(credit)  // a peer's grants cannot overflow it
        subscribers[key] = sub
        drain(key, deliver: deliver, lagged: lagged)
    }

    /// Sends what waits while the subscriber has credit, oldest first (a
    /// coalesced sample goes in its sequence's place).
    public func drain(_ key: Key, deliver: Deliver, lagged: Lagged) {
        guard var sub = subscribers[key], sub.credit != nil else { return }
        while sub.credit! > 0 {
            let head: Waiting? = sub.queueHead < sub.queue.count ? sub.queue[sub.queueHead] : nil
            let sample = sub.samples.min { $0.value.sequence < $1.value.sequence }
            let next: Waiting
            if let sample, head == nil || (head!.sequence != 0 && sample.value.sequence < head!.sequence) {
                next = sample.value
                sub.samples[sample.key] = nil
            } else if let head {
                next = head
                sub.queueHead += 1
            } else {
                break
            }
            account(key, &sub, -next.bytes.count)
            guard deliver(key, next.bytes) else {
                subscribers[key] = sub
                drop(key)
                lagged(key, sub.resume)
                return
            }
            sub.credit! -= 1
            if next.sequence > 0 { sub.lastSent = max(sub.lastSent, next.sequence) }
            if let point = next.resume { sub.resume = point }
        }
        if sub.queueHead > 64 && sub.queueHead * 2 > sub.queue.count {
            sub.queue.removeFirst(sub.queueHead)
            sub.queueHead = 0
        }
        subscribers[key] = sub
        if let cut = sub.cut, sub.waiting == 0, sub.samples.isEmpty {
            // The part of its replay that was held has all gone.
            drop(key)
            lagged(key, cut)
        }
    }

    /// Hands out what the log has recorded since the last call, in order,
    /// each event encoded once. A subscriber that cannot take it (its
    /// connection, or its queue without credit, is full) is removed and
    /// `lagged` says where it got to.
    public func publish(deliver: Deliver, lagged: Lagged) {
        let newest = log.newest
        guard newest > published else { return }
        let (events, dropped) = log.range(after: published, upTo: newest)
        if let dropped {
            // The loop fell more than the log's capacity behind: say so on
            // every stream rather than skip silently.
            let gap = SubscribeResponse(gap: EventGap(
                requestedBootId: log.bootId, afterSequence: published, bootId: log.bootId, firstSequence: dropped))
            let bytes = (try? gap.serializedBytes()) ?? []
            let point = resumePoint(after: gap)
            for key in Array(subscribers.keys) { offer(key, Waiting(sequence: 0, bytes: bytes, resume: point), sample: nil, deliver: deliver, lagged: lagged) }
        }
        published = newest
        for e in events {
            let sequence = e.sequence ?? 0
            let keys = subscribers.filter { $0.value.lastSent < sequence && $0.value.filter.matches(e) }.map(\.key)
            guard !keys.isEmpty, let bytes = try? SubscribeResponse(event: e).serializedBytes() else { continue }
            let sample = e.kind == .containerEventStats ? e.container ?? "" : nil
            let point = ResumePoint(after: sequence, boot: log.bootId)
            for key in keys { offer(key, Waiting(sequence: sequence, bytes: bytes, resume: point), sample: sample, deliver: deliver, lagged: lagged) }
        }
    }

    /// One response for one subscriber: sent now if it can take it, else
    /// queued (a sample replacing the one of its container that waits).
    private func offer(_ key: Key, _ w: Waiting, sample: String?, deliver: Deliver, lagged: Lagged) {
        guard var sub = subscribers[key] else { return }
        guard let credit = sub.credit else {
            if deliver(key, w.bytes) {
                if w.sequence > 0 { subscribers[key]?.lastSent = w.sequence }
                if let point = w.resume { subscribers[key]?.resume = point }
            } else {
                drop(key)
                lagged(key, sub.resume)
            }
            return
        }
        // Its replay was cut: it ends there, and resumes from there.
        if sub.cut != nil { return }
        if credit > 0 && sub.waiting == 0 && sub.samples.isEmpty {
            guard deliver(key, w.bytes) else {
                drop(key)
                lagged(key, sub.resume)
                return
            }
            sub.credit = credit - 1
            if w.sequence > 0 { sub.lastSent = w.sequence }
            if let point = w.resume { sub.resume = point }
            subscribers[key] = sub
            return
        }
        if w.sequence > 0 { sub.lastSent = w.sequence }
        if let sample {
            account(key, &sub, w.bytes.count - (sub.samples[sample]?.bytes.count ?? 0))
            sub.samples[sample] = w
        } else {
            sub.queue.append(w)
            account(key, &sub, w.bytes.count)
            if sub.waiting > sub.allowance || connectionHeld[key.conn, default: 0] > connectionLimit {
                subscribers[key] = sub
                drop(key)
                lagged(key, sub.resume)
                return
            }
        }
        subscribers[key] = sub
        if credit > 0 { drain(key, deliver: deliver, lagged: lagged) }
    }
}
