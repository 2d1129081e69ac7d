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
        matches(kind: e.kind, host: e.host, container: e.container)
    }

    /// `matches`, on an event as kept (serialized).
    func matches(_ v: PackedEventView) -> Bool {
        matches(kind: v.kind, host: v.host, container: v.container)
    }

    private func matches(kind: ContainerEventKind?, host: String?, container eventContainer: String?) -> Bool {
        // A host's gap (at a controller) is never filtered out but by its
        // host: it may hide any event of any container of that host, and
        // a gap is never silent (one watching a container or a kind was
        // never told of it).
        if kind == .containerEventHostGap { return hosts.isEmpty || hosts.contains(host ?? "") }
        if !kinds.isEmpty && !kinds.contains(kind ?? .containerEventUnspecified) { return false }
        if !hosts.isEmpty && !hosts.contains(host ?? "") { return false }
        guard let container else { return true }
        let name = eventContainer ?? ""
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
        /// What it costs while it waits, counted against the bounds: its
        /// bytes and its bookkeeping (the entry, the array's header; the
        /// bytes alone were counted, which let ~80 bytes an event more be
        /// held than the bound said).
        var cost: Int { bytes.count + EventHub.responseOverhead }
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
        /// What waits for credit (see Pending).
        let pending = Pending()
        /// How many responses may wait (the buffer, plus the replay).
        var allowance: Int
        /// What waits costs (queue and samples: bytes and bookkeeping, see
        /// `Waiting.cost`), counted against its connection's
        /// `connectionLimit` too.
        var heldBytes = 0
        /// Its replay, while some of it has not been sent (or held): live
        /// events are not handed to it meanwhile; the replay reads them from
        /// the log in their place.
        var replay: Replay?

        var waiting: Int { pending.queue.count - pending.queueHead }
    }

    /// What waits for a subscriber's credit, in a box of its own. A
    /// Subscriber is taken out of `subscribers`, changed and put back; with
    /// the queue and the samples in the value, the copy left in the
    /// dictionary shared their storage, so each change copied them whole:
    /// every stats sample offered to a subscriber with samples waiting cost
    /// as much as all of them (2,000 containers and 40 `lmctl events -f`
    /// saturated the loop thread, and new connections timed out in their
    /// handshake; a probe).
    final class Pending {
        /// In order (no stats samples), from `queueHead`.
        var queue: [Waiting] = []
        var queueHead = 0
        /// Stats samples: the latest of each container.
        var samples: [String: Waiting] = [:]
    }

    /// Where a replay not sent in full goes on. A replay is read from the
    /// log a part at a time (`partEvents` events, and no more bytes than
    /// the subscriber's connection takes then), each part on its own turn of
    /// the loop: built in one go, a resume from far back held the loop
    /// thread, and every other connection, while every event kept was
    /// decoded (3.5 ms of the agent's CPU a Subscribe on the default log of
    /// 4,096 events, seconds near the maximum capacity; a probe), and the
    /// replay waited whole in memory for the connection or for credit.
    struct Replay {
        /// The boots before this one still to read, the one being read
        /// first, each with the first sequence the journal kept of it;
        /// empty: this boot.
        var boots: [(id: String, first: UInt64?)]
        /// The sequence, in the boot being read, the next part reads after.
        var after: UInt64
        /// This boot has not been read yet: its first part says whether a
        /// gap leads into it.
        var fresh: Bool
        /// The resume was of this boot (no boot change to say).
        let ownBoot: Bool
        /// Where the boot read before the next one ended, for the gap that
        /// says so (at first: the request's own point).
        var gapBoot: String?
        var gapAfter: UInt64
        /// What `lastSent` is at least once it has caught up (a resume after
        /// an event recorded but not yet handed out, seen through Notify,
        /// gets what follows it only).
        let floor: UInt64
        /// Gaps decided, sent first in the next part.
        var pending: [SubscribeResponse] = []
        /// A boot before this one was read to its end (`gapBoot`, `gapAfter`
        /// are where it ended, not the request's own point).
        var readOlder = false
    }

    /// At most how many events one part of a replay reads from the log.
    public static let partEvents = 256
    /// At most how many events `advance` reads from the log in one call
    /// over all replays (about a millisecond of decoding): a part is read
    /// for each replay in turn, the one served last going to the back, so
    /// that a peer's many replaying streams hold the loop no longer than
    /// one (with 128 streams from far back, each turn read 32,768 events).
    public static let turnEvents = 4 * partEvents

    /// Sends one response on a subscriber's stream; false when it cannot
    /// take it (its connection is past its limit: it lags).
    public typealias Deliver = (Key, [UInt8]) -> Bool
    /// Ends a subscription that lags, naming where it resumes.
    public typealias Lagged = (Key, ResumePoint) -> Void
    /// How many bytes a subscriber's connection takes now (its limit less
    /// what it holds unsent).
    public typealias Room = (Key) -> Int

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
    /// The subscribers whose replay has not all been sent (or held).
    public private(set) var replaying: Set<Key> = []
    /// The same in the order `advance` serves them (the next first; a
    /// key no longer replaying is passed over and forgotten).
    private var replayOrder: [Key] = []
    /// Connections with a replay waiting for room (see `roomCame`).
    private var roomWanted: Set<Int> = []
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
        // The connection's wish for room goes with its last replay (one
        // closed while its replay waited for room stayed here for good).
        if replaying.remove(key) != nil, roomWanted.contains(key.conn), !replaying.contains(where: { $0.conn == key.conn }) {
            roomWanted.remove(key.conn)
        }
        guard var sub = subscribers.removeValue(forKey: key) else { return }
        account(key, &sub, -sub.heldBytes)
    }

    /// A new subscription: checks the request and adds the subscriber
    /// (`credit`, nil: none, says how many responses it takes). What it gets
    /// first, `advance` sends a part at a time: a gap where events may be
    /// missing, the kept events after the resume point up to what has been
    /// published, then `caught_up`; the rest comes live.
    public func subscribe(_ key: Key, _ r: SubscribeRequest, filter: EventFilter, credit: Int? = nil) throws(LmctfyError) {
        var r = r
        if r.fromOldest == true && r.bootId == nil {
            // The oldest kept: the oldest boot before this one the journal has.
            r.bootId = log.olderBootIds.first
            r.afterSequence = 0
        }
        // Live only: nothing to read but the caught-up marker.
        var replay = Replay(boots: [], after: published, fresh: false, ownBoot: true, gapBoot: nil, gapAfter: 0, floor: published)
        if let after = r.afterSequence {
            let ownBoot = r.bootId == nil || r.bootId == log.bootId
            try log.checkResumePoint(bootId: r.bootId, after: after)
            replay = Replay(boots: [], after: ownBoot ? after : 0, fresh: true, ownBoot: ownBoot,
                            gapBoot: r.bootId, gapAfter: after, floor: ownBoot ? after : 0)
            if !ownBoot, let asked = r.bootId {
                // A subscriber of a boot before this one: what the journal
                // kept of it after its point first, then of each boot after
                // it (each boot change a gap, which says through which
                // sequence the boot before survived); the last gap leads to
                // this boot. (Only the boot just before this one was served:
                // a resume across two restarts got the gap alone, and a
                // follower lost whole boots the journal kept.)
                replay.boots = log.olderBootBounds(from: asked).map { ($0.id, $0.first) }
                if replay.boots.isEmpty {
                    // A boot the journal no longer has (or never had):
                    // everything kept follows, from the oldest boot on,
                    // after a gap saying so. (The resume went straight to
                    // this boot, and the kept events of the boots between
                    // were skipped: a controller back after a long outage
                    // lost thousands its agent still served.)
                    replay.boots = log.olderBootBounds(from: nil).map { ($0.id, $0.first) }
                    if let oldest = replay.boots.first {
                        replay.after = (oldest.first ?? 1) - 1
                        replay.pending.append(SubscribeResponse(gap: EventGap(
                            requestedBootId: asked, afterSequence: after, bootId: oldest.id, firstSequence: oldest.first ?? 1)))
                    }
                } else if let boot = replay.boots.first {
                    replay.after = after
                    if let oldest = boot.first, EventLog.isBeforeFirst(after, oldest) {
                        // The journal rotated out the boot's oldest events:
                        // a gap within it (they were left out unsaid, and
                        // the resume went on as if nothing were missing).
                        replay.pending.append(SubscribeResponse(gap: EventGap(
                            requestedBootId: asked, afterSequence: after, bootId: boot.id, firstSequence: oldest)))
                        replay.after = oldest - 1
                    }
                }
            }
        }
        // Before anything is sent it resumes where it asked to start
        // (live only: after what was published when it came).
        let start = r.afterSequence.map { ResumePoint(after: $0, boot: r.bootId ?? log.bootId) }
            ?? ResumePoint(after: published, boot: log.bootId)
        drop(key)
        subscribers[key] = Subscriber(filter: filter, lastSent: published, resume: start, credit: credit, allowance: buffer, replay: replay)
        if !replaying.contains(key) && !replayOrder.contains(key) { replayOrder.append(key) }
        replaying.insert(key)
    }

    /// What a response costs besides its bytes, counted against a replay
    /// part's budget and the credit bound: the frame around it, or its
    /// entry while it waits.
    static let responseOverhead = 80

    /// The next part of `sub`'s replay: responses of at most `budget` bytes
    /// (with `responseOverhead` each; the first always), each with where
    /// the subscriber resumes once it has been sent. The caught-up marker
    /// ends the last part, and the subscriber then takes live events.
    private func nextPart(_ key: Key, _ sub: inout Subscriber, budget: Int, read total: inout Int) -> [Waiting] {
        // Read no more than can be sent: every response costs at least
        // its overhead (a part of one event read 256, decoding 255 for
        // nothing), nor more than the turn has left.
        let limit = max(1, min(Self.partEvents, Self.turnEvents - total, budget / Self.responseOverhead + 1))
        guard var rep = sub.replay else { return [] }
        var out: [Waiting] = []
        var bytes = 0
        /// False when the part is full: `r` is left for the next one.
        func fits(_ r: SubscribeResponse) -> Bool {
            guard let b = try? r.serializedBytes() else { return true }
            return fits(b, resume: resumePoint(after: r))
        }
        func fits(_ b: [UInt8], resume: ResumePoint?) -> Bool {
            if bytes > 0 && bytes + b.count + Self.responseOverhead > budget { return false }
            bytes += b.count + Self.responseOverhead
            out.append(Waiting(sequence: 0, bytes: b, resume: resume))
            return true
        }
        /// A gap goes now, or first in the next part.
        func gap(_ g: EventGap) -> Bool {
            let r = SubscribeResponse(gap: g)
            guard fits(r) else {
                rep.pending.append(r)
                return false
            }
            return true
        }
        /// Takes `events` that match; false when the part is full (the
        /// next reads from the one that did not fit).
        /// Read off the wire, not decoded (see PackedEventView), and sent
        /// as kept; one that does not read so is decoded as before.
        func take(_ events: [EventLog.PackedEvent]) -> Bool {
            for p in events {
                let sequence: UInt64?
                let fitted: Bool
                if let v = PackedEventView(p.bytes) {
                    guard sub.filter.matches(v) else { continue }
                    sequence = v.sequence
                    fitted = fits(PackedEventView.subscribeResponse(p.bytes),
                                  resume: v.sequence.map { ResumePoint(after: $0, boot: v.bootId ?? log.bootId) })
                } else {
                    guard let e = try? ContainerEvent(serializedBytes: p.bytes), sub.filter.matches(e) else { continue }
                    sequence = e.sequence
                    fitted = fits(SubscribeResponse(event: e))
                }
                guard fitted else {
                    rep.after = max(rep.after, (sequence ?? 1) - 1)
                    return false
                }
            }
            return true
        }
        while let r = rep.pending.first {
            guard fits(r) else {
                sub.replay = rep
                return out
            }
            rep.pending.removeFirst()
        }
        var read = 0
        defer { total += read }
        reading: while read < limit {
            if let boot = rep.boots.first {
                // The log's bound let the boot's oldest events go while the
                // replay read it: a gap where they were (EventLog.trimOlder).
                if let kept = log.olderBoot(boot.id), kept.trimmed > rep.after {
                    let g = EventGap(requestedBootId: boot.id, afterSequence: rep.after, bootId: boot.id, firstSequence: kept.first)
                    rep.after = kept.trimmed
                    if !gap(g) { break reading }
                }
                let p = log.olderBootPackedPart(boot.id, after: rep.after, limit: limit - read)
                read += max(1, p.events.count)
                guard take(p.events) else { break reading }
                rep.after = max(rep.after, p.next)
                guard p.complete else { continue }
                rep.gapBoot = boot.id
                rep.gapAfter = rep.after
                rep.readOlder = true
                rep.boots.removeFirst()
                rep.after = 0
                // Boots the log's bound let go of whole meanwhile are passed
                // over (and the boot change then lost events).
                var skipped = false
                var next: (id: String, first: UInt64, fromStart: Bool)?
                while let candidate = rep.boots.first {
                    if let kept = log.olderBoot(candidate.id) {
                        next = (candidate.id, kept.first, kept.fromStart)
                        break
                    }
                    rep.boots.removeFirst()
                    skipped = true
                }
                if let next {
                    rep.after = next.first - 1
                    // Nothing lost between the two: this boot ended
                    // cleanly and the next one's kept events start with
                    // the first it journaled (nothing of it let go).
                    var g = EventGap(requestedBootId: rep.gapBoot, afterSequence: rep.gapAfter, bootId: next.id, firstSequence: next.first)
                    if !skipped && log.bootEnded(boot.id) && next.fromStart { g.bootEnded = true }
                    if !gap(g) { break reading }
                } else if skipped {
                    // This boot's gap says the boot change lost events.
                    rep.readOlder = false
                }
                continue
            }
            let p = log.packedRange(after: rep.after, upTo: published, limit: limit - read)
            read += max(1, p.events.count)
            var said: EventGap?
            if rep.fresh {
                rep.fresh = false
                if !rep.ownBoot || p.droppedBefore != nil {
                    // The gap says where the log is complete again: after
                    // the newest event pushed out, not at the oldest item
                    // kept, which may be a STATS sample kept apart from the
                    // events and older than events already gone.
                    said = EventGap(requestedBootId: rep.gapBoot, afterSequence: rep.gapAfter, bootId: log.bootId,
                                    firstSequence: p.droppedBefore ?? p.events.first?.seq ?? published + 1)
                    // A boot change that lost nothing: the boot read last
                    // (not one asked for and not kept) ended cleanly, and
                    // this one has let nothing go.
                    if !rep.ownBoot, rep.boots.isEmpty, rep.readOlder, p.droppedBefore == nil, log.bootEnded(rep.gapBoot) {
                        said!.bootEnded = true
                    }
                }
            } else if let dropped = p.droppedBefore {
                // The log let events go while the replay went on.
                said = EventGap(requestedBootId: log.bootId, afterSequence: rep.after, bootId: log.bootId, firstSequence: dropped)
            }
            // The part was read from the oldest kept.
            if let dropped = p.droppedBefore { rep.after = max(rep.after, dropped - 1) }
            if let said, !gap(said) { break reading }
            guard take(p.events) else { break reading }
            rep.after = max(rep.after, p.next)
            // Done: the marker, unless the part is full (then it goes alone
            // in the next one).
            if p.complete, fits(SubscribeResponse(caughtUp: published, caughtUpBootId: log.bootId)) {
                sub.lastSent = max(published, rep.floor)
                sub.replay = nil
                replaying.remove(key)
                return out
            }
            if p.complete { break }
        }
        sub.replay = rep
        return out
    }

    /// Sends the next part of every replay that can take one now: without
    /// credit, when its connection has `room`; with credit, once all it
    /// held before has been sent. True when some replay can go on at once:
    /// call again on the loop's next turn (other connections are served in
    /// between). One waiting for credit goes on after `grant`; one waiting
    /// for room once `roomCame` says so.
    public func advance(deliver: Deliver, lagged: Lagged, room: Room) -> Bool {
        guard !replaying.isEmpty else { return false }
        // What was recorded before goes first (for the subscribers caught
        // up; a replay reads it from the log).
        publish(deliver: deliver, lagged: lagged)
        var more = false
        var read = 0
        let order = replayOrder
        var next = 0
        var served: [Key] = []
        while next < order.count && read < Self.turnEvents {
            let key = order[next]
            next += 1
            guard replaying.contains(key), var sub = subscribers[key], sub.replay != nil else { continue }
            defer { if replaying.contains(key) { served.append(key) } }
            if sub.credit == nil {
                let budget = room(key)
                guard budget > 0 else {
                    roomWanted.insert(key.conn)
                    continue
                }
                let part = nextPart(key, &sub, budget: budget, read: &read)
                subscribers[key] = sub
                for w in part {
                    guard deliver(key, w.bytes) else {
                        drop(key)
                        lagged(key, sub.resume)
                        break
                    }
                    if let point = w.resume { sub.resume = point }
                    subscribers[key]?.resume = sub.resume
                }
                guard subscribers[key]?.replay != nil else { continue }
                if room(key) > 0 { more = true } else { roomWanted.insert(key.conn) }
            } else {
                guard sub.waiting == 0 && sub.pending.samples.isEmpty else { continue }
                let part = nextPart(key, &sub, budget: connectionLimit - connectionHeld[key.conn, default: 0], read: &read)
                for w in part {
                    sub.pending.queue.append(w)
                    account(key, &sub, w.cost)
                }
                sub.allowance = max(sub.allowance, buffer + sub.waiting)
                subscribers[key] = sub
                drain(key, deliver: deliver, lagged: lagged)
                if let s = subscribers[key], s.replay != nil, s.waiting == 0 { more = true }
            }
        }
        // Those not served this time first, next time.
        replayOrder = order[next...].filter { replaying.contains($0) } + served
        return more || next < order.count
    }

    /// Whether a replay on connection `conn` waited for room: once it has
    /// some, its owner calls `advance` again.
    public func roomCame(conn: Int) -> Bool {
        roomWanted.remove(conn) != nil
    }

    /// Where a subscriber that has been sent `r` resumes (nil: the
    /// caught-up marker, which moves nothing). A gap: before its first
    /// sequence, in its boot.
    public func resumePoint(after r: SubscribeResponse) -> ResumePoint? {
        if let e = r.event, let seq = e.sequence { return ResumePoint(after: seq, boot: e.bootId ?? log.bootId) }
        if let g = r.gap { return ResumePoint(after: max(1, g.firstSequence ?? 1) - 1, boot: g.bootId ?? log.bootId) }
        return nil
    }

    public func remove(_ key: Key) {
        drop(key)
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
        // The samples in sequence order, sorted once for a drain that sends
        // many (the oldest looked for at each response made a drain of n
        // samples cost n squared: 40 subscribers granted 2,000 samples
        // each took the loop seconds); looked for one at a time otherwise.
        var ordered: [(key: String, value: Waiting)]?
        var nextOrdered = 0
        func oldestSample() -> (key: String, value: Waiting)? {
            guard !sub.pending.samples.isEmpty else { return nil }
            if ordered == nil && sub.credit! >= 16 && sub.pending.samples.count >= 16 {
                ordered = sub.pending.samples.sorted { $0.value.sequence < $1.value.sequence }
            }
            guard let o = ordered else { return sub.pending.samples.min { $0.value.sequence < $1.value.sequence } }
            while nextOrdered < o.count {
                let s = o[nextOrdered]
                // Still waiting as it was (not sent, not replaced).
                if sub.pending.samples[s.key]?.sequence == s.value.sequence { return s }
                nextOrdered += 1
            }
            ordered = nil
            return sub.pending.samples.min { $0.value.sequence < $1.value.sequence }
        }
        while sub.credit! > 0 {
            let head: Waiting? = sub.pending.queueHead < sub.pending.queue.count ? sub.pending.queue[sub.pending.queueHead] : nil
            let sample = oldestSample()
            let next: Waiting
            if let sample, head == nil || (head!.sequence != 0 && sample.value.sequence < head!.sequence) {
                next = sample.value
                sub.pending.samples[sample.key] = nil
            } else if let head {
                next = head
                sub.pending.queueHead += 1
            } else {
                break
            }
            account(key, &sub, -next.cost)
            // Stored first: `deliver` may end the subscription (its stream
            // cancelled: the response was over the peer's frame limit),
            // and `remove` must find it as it is now.
            subscribers[key] = sub
            guard deliver(key, next.bytes) else {
                drop(key)
                lagged(key, sub.resume)
                return
            }
            // Ended by `deliver`: not written back (it came back as a
            // subscriber no one served or ended, holding its queue for
            // good; a reader repeated it stream after stream).
            guard subscribers[key] != nil else { return }
            sub.credit! -= 1
            if next.sequence > 0 { sub.lastSent = max(sub.lastSent, next.sequence) }
            if let point = next.resume { sub.resume = point }
        }
        if sub.pending.queueHead > 64 && sub.pending.queueHead * 2 > sub.pending.queue.count {
            sub.pending.queue.removeFirst(sub.pending.queueHead)
            sub.pending.queueHead = 0
        }
        subscribers[key] = sub
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
            for key in Array(subscribers.keys) where subscribers[key]?.replay == nil { offer(key, Waiting(sequence: 0, bytes: bytes, resume: point), sample: nil, deliver: deliver, lagged: lagged) }
        }
        published = newest
        // The keys each event goes to, gathered in one reused array (a
        // filtered dictionary built for every event was a fifth of the
        // loop's time with 2,000 subscribers; a probe).
        var keys: [Key] = []
        keys.reserveCapacity(subscribers.count)
        for e in events {
            let sequence = e.sequence ?? 0
            keys.removeAll(keepingCapacity: true)
            for (key, sub) in subscribers where sub.replay == nil && sub.lastSent < sequence && sub.filter.matches(e) { keys.append(key) }
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
        if credit > 0 && sub.waiting == 0 && sub.pending.samples.isEmpty {
            guard deliver(key, w.bytes) else {
                drop(key)
                lagged(key, sub.resume)
                return
            }
            guard subscribers[key] != nil else { return }  // ended by `deliver` (see `drain`)
            sub.credit = credit - 1
            if w.sequence > 0 { sub.lastSent = w.sequence }
            if let point = w.resume { sub.resume = point }
            subscribers[key] = sub
            return
        }
        if w.sequence > 0 { sub.lastSent = w.sequence }
        if let sample {
            account(key, &sub, w.cost - (sub.pending.samples[sample]?.cost ?? 0))
            sub.pending.samples[sample] = w
        } else {
            sub.pending.queue.append(w)
            account(key, &sub, w.cost)
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
