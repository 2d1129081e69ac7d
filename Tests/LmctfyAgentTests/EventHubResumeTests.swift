// The hub's "lagged, resume after N" without a kernel or a socket: N is
// the last event a subscriber was really sent. (With credit, the replay
// held for it counted as sent from the start: a subscriber sent 17,614 of
// 60,000 events was told to resume after 60,000 and lost the rest; the
// controller's replay without credit named the request's own point, so a
// replay longer than the connection's limit was cut at the same place at
// every retry. A probe.)
@testable import LmctfyEvents
import LmctfyProto
import LmctfySystem
import Glibc
import Testing

@Suite struct EventHubResumeTests {
    /// A log of `n` CREATED events and a hub over it.
    private func hub(_ n: Int) -> EventHub {
        let log = EventLog(capacity: 5000, bootId: "boot")
        for i in 0..<n { log.record(container: "/c\(i)", kind: .containerEventCreated) }
        return EventHub(log: log)
    }

    /// A delivery that takes `room` responses and then refuses, and what
    /// it got (the events' sequences).
    private final class Sink {
        var room: Int
        var sent: [UInt64] = []
        var lagged: [EventHub.ResumePoint] = []
        init(room: Int) { self.room = room }
        func deliver(_ key: EventHub.Key, _ bytes: [UInt8]) -> Bool {
            guard room > 0 else { return false }
            room -= 1
            if let e = try? SubscribeResponse(serializedBytes: bytes).event { sent.append(e.sequence ?? 0) }
            return true
        }
    }

    private let key = EventHub.Key(conn: 1, stream: 1)

    @Test func aReplayHeldForCreditResumesAfterTheLastEventSent() throws {
        let hub = hub(100)
        let sink = Sink(room: 30)
        try hub.subscribe(key, SubscribeRequest(afterSequence: 0, credit: 1_000_000), filter: EventFilter(), credit: 1_000_000)
        _ = hub.advance(deliver: sink.deliver, lagged: { sink.lagged.append($1) }, room: { _ in 0 })
        #expect(sink.sent == Array(1...30))
        #expect(sink.lagged == [EventHub.ResumePoint(after: 30, boot: "boot")])
    }

    @Test func aReplayWithoutCreditResumesAfterTheLastEventSent() throws {
        let hub = hub(100)
        let sink = Sink(room: 30)
        try hub.subscribe(key, SubscribeRequest(afterSequence: 10), filter: EventFilter())
        #expect(!hub.advance(deliver: sink.deliver, lagged: { sink.lagged.append($1) }, room: { _ in .max / 2 }))
        #expect(sink.sent == Array(11...40))
        #expect(sink.lagged == [EventHub.ResumePoint(after: 40, boot: "boot")])
        #expect(hub.subscribers.isEmpty)
        // Resumed there, the rest comes.
        let rest = Sink(room: 1000)
        try hub.subscribe(key, SubscribeRequest(afterSequence: 40), filter: EventFilter())
        #expect(!hub.advance(deliver: rest.deliver, lagged: { rest.lagged.append($1) }, room: { _ in .max / 2 }), "all of it in one part")
        #expect(rest.sent == Array(41...100) && rest.lagged.isEmpty && hub.replaying.isEmpty)
    }

    @Test func nothingSentResumesWhereItAsked() throws {
        let hub = hub(5)
        let sink = Sink(room: 0)
        try hub.subscribe(key, SubscribeRequest(afterSequence: 2), filter: EventFilter())
        #expect(!hub.advance(deliver: sink.deliver, lagged: { sink.lagged.append($1) }, room: { _ in .max / 2 }))
        #expect(sink.lagged == [EventHub.ResumePoint(after: 2, boot: "boot")])
        // Live only: after what was published when it came.
        try hub.subscribe(key, SubscribeRequest(credit: 0), filter: EventFilter(), credit: 0)
        _ = hub.advance(deliver: sink.deliver, lagged: { sink.lagged.append($1) }, room: { _ in 0 })
        hub.log.record(container: "/x", kind: .containerEventCreated)
        let none = Sink(room: 0)
        for _ in 0..<1100 { hub.log.record(container: "/y", kind: .containerEventCreated) }
        hub.publish(deliver: none.deliver, lagged: { none.lagged.append($1) })
        #expect(none.lagged == [EventHub.ResumePoint(after: 5, boot: "boot")], "past its buffer, nothing sent")
    }
}

/// A resume into a boot before this one from a point its journal has
/// rotated out: a gap within that boot, then what the journal kept (the
/// kept events came as if they followed the resume point: 6 to 30 of 50
/// were left out unsaid; a probe).
@Suite struct OlderBootResumeTests {
    @Test func aResumeIntoAnOlderBootBeforeWhatItsJournalKeptIsAGap() throws {
        let dir = "/tmp/lmctfy-test-oldboot-\(getpid())"
        defer { try? Sys.removeTree(dir) }
        let a = EventLog(capacity: 10, bootId: "bootA")
        try a.attachJournal(directory: dir)
        for i in 0..<50 { a.record(container: "/c\(i)", kind: .containerEventCreated) }
        let b = EventLog(capacity: 10, bootId: "bootB")
        try b.attachJournal(directory: dir)
        let kept = (b.olderBoots.first?.events ?? []).compactMap(\.sequence)
        let oldest = try #require(kept.first)
        #expect(oldest > 6 && kept.last == 50 && kept == Array(oldest...50), "the journal kept the newest of boot A: \(kept)")
        let hub = EventHub(log: b)
        func replay(after: UInt64) throws -> [SubscribeResponse] {
            try hub.replayed(EventHub.Key(conn: 1, stream: 1), SubscribeRequest(bootId: "bootA", afterSequence: after))
        }
        let cut = try replay(after: 5)
        #expect(cut.first?.gap == EventGap(requestedBootId: "bootA", afterSequence: 5, bootId: "bootA", firstSequence: oldest))
        #expect(cut.compactMap(\.event?.sequence) == kept)
        #expect(cut.dropLast().last?.gap?.bootId == "bootB", "then the boot change")
        // From the oldest kept on, no gap within the boot.
        let whole = try replay(after: oldest - 1)
        #expect(whole.first?.event?.sequence == oldest)
        #expect(whole.compactMap(\.gap).map(\.bootId) == ["bootB"])
    }
}

/// What waits for credit is bounded by connection (a peer that opened
/// many flow-controlled streams replaying the whole log, granting no
/// credit, had the hub hold every replay; a probe): a replay is held a part
/// at a time, within the connection's limit, and the next part only once
/// the one before has been sent.
@Suite struct HubConnectionLimitTests {
    private final class Sink {
        var sent: [UInt64] = []
        var lagged: [EventHub.ResumePoint] = []
        func deliver(_ key: EventHub.Key, _ bytes: [UInt8]) -> Bool {
            if let e = try? SubscribeResponse(serializedBytes: bytes).event { sent.append(e.sequence ?? 0) }
            return true
        }
    }

    @Test func aReplayHeldForCreditStaysWithinItsConnectionsLimit() throws {
        let log = EventLog(capacity: 5000, bootId: "boot")
        for i in 0..<1000 { log.record(container: "/c\(i)", kind: .containerEventCreated) }
        let hub = EventHub(log: log, connectionLimit: 2048)
        let none = Sink()
        func advance() -> Bool { hub.advance(deliver: none.deliver, lagged: { none.lagged.append($1) }, room: { _ in 0 }) }
        // Ten streams on one connection, none granting credit.
        for stream in 1...10 {
            try hub.subscribe(EventHub.Key(conn: 1, stream: UInt32(stream)), SubscribeRequest(afterSequence: 0, credit: 0), filter: EventFilter(), credit: 0)
        }
        #expect(!advance(), "nothing goes on without credit")
        #expect(!advance())
        let held = hub.connectionHeld[1] ?? 0
        #expect(held > 0 && held <= 2048 + 10 * 180, "one connection's replays held within its limit (and the first response of each): \(held) bytes")
        // Another connection has its own.
        let other = EventHub.Key(conn: 2, stream: 1)
        try hub.subscribe(other, SubscribeRequest(afterSequence: 0, credit: 0), filter: EventFilter(), credit: 0)
        _ = advance()
        #expect((hub.connectionHeld[2] ?? 0) > 200, "more than one response")
        for stream in 1...10 { hub.remove(EventHub.Key(conn: 1, stream: UInt32(stream))) }
        #expect(hub.connectionHeld[1] == nil, "removed, nothing is counted")
        #expect(none.sent.isEmpty && none.lagged.isEmpty)

        // One that reads: every event once, in order, on one stream, a
        // part at a time within the limit (it ended "lagged" at the limit,
        // and the caller had to ask again for the rest).
        let sink = Sink()
        let key = EventHub.Key(conn: 3, stream: 1)
        try hub.subscribe(key, SubscribeRequest(afterSequence: 0, credit: 0), filter: EventFilter(), credit: 0)
        var turns = 0
        var most = 0
        // A part at a time as credit comes (a grant of one response each
        // time what was held has gone), then all the rest at once.
        while turns < 10_000 && hub.replaying.contains(key) {
            turns += 1
            _ = hub.advance(deliver: sink.deliver, lagged: { sink.lagged.append($1) }, room: { _ in 0 })
            most = max(most, hub.connectionHeld[3] ?? 0)
            hub.grant(key, turns < 20 ? 1 : 1_000_000, deliver: sink.deliver, lagged: { sink.lagged.append($1) })
        }
        #expect(sink.sent == Array(1...1000), "\(sink.sent.count) events")
        #expect(sink.lagged.isEmpty)
        #expect(turns > 10, "the replay came in parts (\(turns))")
        #expect(most <= 2048 + 100, "each part within the limit: \(most) bytes")
        // Live events go to one caught up as before.
        log.record(container: "/live", kind: .containerEventCreated)
        hub.publish(deliver: sink.deliver, lagged: { sink.lagged.append($1) })
        #expect(sink.sent.last == 1001)
    }
}

/// A replay is read from the log a part at a time, each on its own turn of
/// the loop (built whole on the loop thread, a Subscribe from far back held
/// every other connection while every kept event was decoded: 3.5 ms with
/// the default log, seconds near its largest capacity; a probe).
@Suite struct HubReplayPartTests {
    private final class Sink {
        var responses: [SubscribeResponse] = []
        var lagged: [EventHub.ResumePoint] = []
        var room = Int.max / 2
        var events: [UInt64] { responses.compactMap { $0.event?.sequence } }
        func deliver(_ key: EventHub.Key, _ bytes: [UInt8]) -> Bool {
            if let r = try? SubscribeResponse(serializedBytes: bytes) { responses.append(r) }
            room -= bytes.count
            return true
        }
    }

    private func log(_ n: Int, capacity: Int = 10_000) -> EventLog {
        let log = EventLog(capacity: capacity, bootId: "boot")
        for i in 0..<n { log.record(container: "/c\(i % 7)", kind: .containerEventCreated) }
        return log
    }

    @Test func aLongReplayGoesAPartATurnAndLiveEventsFollowIt() throws {
        let log = log(3000)
        let hub = EventHub(log: log)
        let sink = Sink()
        let key = EventHub.Key(conn: 1, stream: 1)
        try hub.subscribe(key, SubscribeRequest(afterSequence: 0), filter: EventFilter())
        var turns = 0
        var largest = 0
        while hub.replaying.contains(key) && turns < 1000 {
            turns += 1
            let before = sink.responses.count
            let more = hub.advance(deliver: sink.deliver, lagged: { sink.lagged.append($1) }, room: { _ in .max / 2 })
            largest = max(largest, sink.responses.count - before)
            #expect(more == hub.replaying.contains(key))
            // Recorded meanwhile: comes after the replay, once, in order.
            if turns == 3 { for _ in 0..<10 { log.record(container: "/live", kind: .containerEventCreated) } }
        }
        #expect(turns >= 3000 / EventHub.partEvents, "\(turns) turns")
        #expect(largest <= EventHub.partEvents + 1, "at most a part a turn: \(largest)")
        log.record(container: "/later", kind: .containerEventCreated)
        hub.publish(deliver: sink.deliver, lagged: { sink.lagged.append($1) })
        #expect(sink.events == Array(1...3011), "every event once, in order (\(sink.events.count))")
        let marker = try #require(sink.responses.firstIndex { $0.caughtUp != nil })
        #expect(sink.responses[marker].caughtUp == 3010 && sink.responses[marker - 1].event?.sequence == 3010)
        #expect(sink.lagged.isEmpty && sink.responses.allSatisfy { $0.gap == nil })
    }

    @Test func manyReplaysShareATurn() throws {
        let hub = EventHub(log: log(3000))
        var got: [EventHub.Key: [UInt64]] = [:]
        var perTurn: [Int] = []
        func deliver(_ key: EventHub.Key, _ bytes: [UInt8]) -> Bool {
            if let s = try? SubscribeResponse(serializedBytes: bytes).event?.sequence { got[key, default: []].append(s) }
            return true
        }
        let keys = (1...20).map { EventHub.Key(conn: $0 % 3, stream: UInt32($0)) }
        for key in keys { try hub.subscribe(key, SubscribeRequest(afterSequence: 0), filter: EventFilter()) }
        var turns = 0
        while !hub.replaying.isEmpty && turns < 10_000 {
            turns += 1
            let before = got.values.map(\.count).reduce(0, +)
            _ = hub.advance(deliver: deliver, lagged: { _, _ in }, room: { _ in .max / 2 })
            perTurn.append(got.values.map(\.count).reduce(0, +) - before)
        }
        #expect(perTurn.max() ?? 0 <= EventHub.turnEvents, "at most \(EventHub.turnEvents) events a turn over all replays: \(perTurn.max() ?? 0)")
        #expect(turns >= 20 * 3000 / EventHub.turnEvents)
        for key in keys { #expect(got[key] == Array(1...3000), "\(key): every event once, in order") }
        // In turn: after the first turn, the first served were not served first again.
        #expect(perTurn.first == EventHub.turnEvents)
    }

    @Test func aFilterThatMatchesNothingStillReadsAPartATurn() throws {
        let hub = EventHub(log: log(3000))
        let sink = Sink()
        var filter = EventFilter()
        filter.kinds = [.containerEventOom]
        try hub.subscribe(EventHub.Key(conn: 1, stream: 1), SubscribeRequest(afterSequence: 0), filter: filter)
        var turns = 1
        while hub.advance(deliver: sink.deliver, lagged: { sink.lagged.append($1) }, room: { _ in .max / 2 }) { turns += 1 }
        #expect(turns >= 3000 / EventHub.partEvents && hub.replaying.isEmpty)
        #expect(sink.responses.count == 1 && sink.responses.first?.caughtUp == 3000, "the marker alone")
    }

    @Test func eventsTheLogLetsGoDuringAReplayAreAGap() throws {
        let log = log(1000, capacity: 1000)
        let hub = EventHub(log: log)
        let sink = Sink()
        try hub.subscribe(EventHub.Key(conn: 1, stream: 1), SubscribeRequest(afterSequence: 0), filter: EventFilter())
        _ = hub.advance(deliver: sink.deliver, lagged: { sink.lagged.append($1) }, room: { _ in .max / 2 })
        let sent = try #require(sink.events.last)
        #expect(sent == UInt64(EventHub.partEvents))
        // 600 more push 1...600 out: those after the part sent are lost.
        for _ in 0..<600 { log.record(container: "/more", kind: .containerEventCreated) }
        while hub.advance(deliver: sink.deliver, lagged: { sink.lagged.append($1) }, room: { _ in .max / 2 }) {}
        let gap = try #require(sink.responses.compactMap(\.gap).first)
        #expect(gap.afterSequence == sent && gap.firstSequence == 601 && gap.bootId == "boot")
        #expect(sink.events == Array(1...sent) + Array(601...1600))
    }

    @Test func withoutRoomAReplayWaitsForItsConnection() throws {
        let hub = EventHub(log: log(2000))
        let sink = Sink()
        sink.room = 5000
        let key = EventHub.Key(conn: 4, stream: 1)
        try hub.subscribe(key, SubscribeRequest(afterSequence: 0), filter: EventFilter())
        let room: EventHub.Room = { _ in sink.room }
        _ = hub.advance(deliver: sink.deliver, lagged: { sink.lagged.append($1) }, room: room)
        #expect(!sink.events.isEmpty && sink.events.count < EventHub.partEvents, "a part within the room: \(sink.events.count)")
        #expect(sink.room >= 0, "within it")
        sink.room = 0
        #expect(!hub.advance(deliver: sink.deliver, lagged: { sink.lagged.append($1) }, room: room), "no room: nothing to do at once")
        #expect(hub.roomCame(conn: 4) && !hub.roomCame(conn: 4))
        // It reads; each time it has room the replay goes on where it was.
        var turns = 0
        while hub.replaying.contains(key) && turns < 10_000 {
            turns += 1
            sink.room = 5000
            _ = hub.advance(deliver: sink.deliver, lagged: { sink.lagged.append($1) }, room: room)
        }
        #expect(sink.events == Array(1...2000) && sink.lagged.isEmpty)
    }

    /// A subscription its own delivery ends (its stream cancelled: the
    /// response was over the peer's frame limit) is gone, not written back
    /// as a subscriber no one serves or ends, holding its queue (a reader
    /// made one a stream, for good: the controller's memory).
    @Test func aSubscriptionEndedByItsOwnDeliveryIsGone() throws {
        let hub = EventHub(log: log(600))
        let keys = [EventHub.Key(conn: 2, stream: 1), EventHub.Key(conn: 2, stream: 3)]
        // As the controller's `deliver`: the session cancels the stream and
        // the hub is told at once; the delivery itself "worked".
        let deliver: EventHub.Deliver = { key, _ in hub.remove(key); return true }
        try hub.subscribe(keys[0], SubscribeRequest(afterSequence: 0), filter: EventFilter(), credit: 1)
        while hub.advance(deliver: deliver, lagged: { _, _ in }, room: { _ in .max / 2 }) {}
        try hub.subscribe(keys[1], SubscribeRequest(), filter: EventFilter(), credit: 5)  // live
        _ = hub.advance(deliver: { _, _ in true }, lagged: { _, _ in }, room: { _ in .max / 2 })
        hub.grant(keys[1], 5, deliver: { _, _ in true }, lagged: { _, _ in })
        hub.log.record(container: "/live", kind: .containerEventCreated)
        hub.publish(deliver: deliver, lagged: { _, _ in })
        #expect(hub.subscribers.isEmpty, "\(hub.subscribers.keys)")
        #expect(hub.connectionHeld.isEmpty && hub.replaying.isEmpty)
    }

    /// A connection that closes while its replay waits for room is
    /// forgotten with its last replay (each such id stayed for good).
    @Test func aConnectionClosedWhileItsReplayWaitsForRoomIsForgotten() throws {
        let hub = EventHub(log: log(2000))
        let sink = Sink()
        let keys = [EventHub.Key(conn: 4, stream: 1), EventHub.Key(conn: 4, stream: 3)]
        for key in keys { try hub.subscribe(key, SubscribeRequest(afterSequence: 0), filter: EventFilter()) }
        _ = hub.advance(deliver: sink.deliver, lagged: { sink.lagged.append($1) }, room: { _ in 0 })
        hub.remove(keys[0])
        #expect(hub.roomCame(conn: 4), "its other replay still waits")
        _ = hub.advance(deliver: sink.deliver, lagged: { sink.lagged.append($1) }, room: { _ in 0 })
        hub.remove(keys[1])
        #expect(!hub.roomCame(conn: 4), "nothing of the connection is left")
        #expect(hub.replaying.isEmpty)
    }

    @Test func aResumeAcrossOlderBootsComesInPartsAsWhole() throws {
        let dir = "/tmp/lmctfy-test-hubparts-\(getpid())"
        defer { try? Sys.removeTree(dir) }
        let a = EventLog(capacity: 2000, bootId: "bootA")
        try a.attachJournal(directory: dir)
        for i in 0..<700 { a.record(container: "/a\(i)", kind: .containerEventCreated) }
        let b = EventLog(capacity: 2000, bootId: "bootB")
        try b.attachJournal(directory: dir)
        for i in 0..<600 { b.record(container: "/b\(i)", kind: .containerEventCreated) }
        let c = EventLog(capacity: 2000, bootId: "bootC")
        try c.attachJournal(directory: dir)
        for i in 0..<300 { c.record(container: "/c\(i)", kind: .containerEventCreated) }
        let hub = EventHub(log: c)
        let got = try hub.replayed(EventHub.Key(conn: 1, stream: 1), SubscribeRequest(bootId: "bootA", afterSequence: 100))
        let boots = got.compactMap { $0.event.map { "\($0.bootId ?? ""):\($0.sequence ?? 0)" } }
        #expect(boots == (101...700).map { "bootA:\($0)" } + (1...600).map { "bootB:\($0)" } + (1...300).map { "bootC:\($0)" })
        let gaps = got.compactMap(\.gap)
        #expect(gaps == [EventGap(requestedBootId: "bootA", afterSequence: 700, bootId: "bootB", firstSequence: 1),
                         EventGap(requestedBootId: "bootB", afterSequence: 600, bootId: "bootC", firstSequence: 1)])
        #expect(got.last?.caughtUp == 300)
    }
}
/// Stats samples coalesce to the latest of each container while a
/// subscriber has no credit, for many subscribers and containers at once.
/// (Each sample offered copied the subscriber's waiting samples whole: 2,000
/// containers and 40 subscribers saturated the agent's loop thread; a
/// probe. The time is printed, not asserted.)
@Suite struct EventHubSampleTests {
    @Test func samplesOfManyContainersCoalesceForEverySubscriber() throws {
        let containers = 2_000
        let subscribers = 40
        let log = EventLog(capacity: 3 * containers + 10, bootId: "boot")
        let hub = EventHub(log: log, connectionLimit: 64 << 20)
        var got: [EventHub.Key: [(String, UInt64)]] = [:]
        func deliver(_ key: EventHub.Key, _ bytes: [UInt8]) -> Bool {
            if let e = try? SubscribeResponse(serializedBytes: bytes).event { got[key, default: []].append((e.container ?? "", e.sequence ?? 0)) }
            return true
        }
        let keys = (1...subscribers).map { EventHub.Key(conn: $0, stream: 1) }
        for key in keys {
            try hub.subscribe(key, SubscribeRequest(credit: 0), filter: EventFilter(), credit: 0)
        }
        while hub.advance(deliver: deliver, lagged: { _, _ in }, room: { _ in .max / 2 }) {}
        got = [:]
        let start = MonotonicClock.nanoseconds()
        for round in 0..<2 {
            for c in 0..<containers {
                _ = log.recordStats(container: "/c\(c)", ContainerStats())
                if c % 100 == 99 || c == containers - 1 { hub.publish(deliver: deliver, lagged: { _, _ in }) }
            }
            _ = round
        }
        let offered = MonotonicClock.nanoseconds() - start
        print("EventHub: \(2 * containers) samples offered to \(subscribers) subscribers without credit in \(offered / 1_000_000) ms")
        #expect(got.isEmpty, "nothing is sent without credit")
        for key in keys { hub.grant(key, UInt32(containers * 4), deliver: deliver, lagged: { _, _ in }) }
        for key in keys {
            let sent = got[key] ?? []
            // One per container, the second round's (the latest), in order.
            #expect(sent.count == containers, "\(key): \(sent.count)")
            #expect(sent.map(\.1) == Array(UInt64(containers + 1)...UInt64(2 * containers)), "\(key)")
        }
        #expect(hub.connectionHeld.isEmpty, "nothing held once sent")
    }
}

/// A replay reads what it needs of a kept event off the wire (boot,
/// sequence, container, kind, host) and sends the bytes as kept: the same
/// fields, the same filter answers and the same response bytes as decoding
/// and encoding again, for every kind of event the log keeps.
@Suite struct PackedEventViewTests {
    @Test func theViewAgreesWithTheDecodedEvent() throws {
        let log = EventLog(capacity: 100, bootId: "b00t")
        var stats = ContainerStats()
        stats.memory = MemoryStats(usage: 1234)
        var events = [
            log.record(container: "/a", kind: .containerEventCreated),
            log.record(container: "/a/b", kind: .containerEventMemoryThreshold, threshold: 99),
            log.record(container: "/a", kind: .containerEventProcessExited, pid: 7, exitCode: -1),
            log.recordStats(container: "/a/b", stats),
            log.append(ContainerEvent(container: "/h", kind: .containerEventHostGap, host: "host-1")),
            log.append(ContainerEvent(kind: .containerEventOom)),
        ]
        events.append(ContainerEvent())
        let filters: [EventFilter] = [
            EventFilter(),
            { var f = EventFilter(); f.container = "/a"; return f }(),
            { var f = EventFilter(); f.container = "/a"; f.recursive = true; return f }(),
            { var f = EventFilter(); f.kinds = [.containerEventStats]; return f }(),
            { var f = EventFilter(); f.hosts = ["host-1"]; return f }(),
            { var f = EventFilter(); f.container = "/"; f.recursive = true; f.kinds = [.containerEventOom, .containerEventHostGap]; return f }(),
        ]
        for e in events {
            let bytes = try e.serializedBytes()
            let v = try #require(PackedEventView(bytes), "\(e)")
            #expect(v.bootId == e.bootId && v.sequence == e.sequence && v.container == e.container && v.kind == e.kind && v.host == e.host)
            for f in filters { #expect(f.matches(v) == f.matches(e), "\(f) on \(e)") }
            #expect(PackedEventView.subscribeResponse(bytes) == (try SubscribeResponse(event: e).serializedBytes()))
        }
        // A field cut short, a group: not read so (the replay decodes them).
        let whole = try events[0].serializedBytes()
        #expect(PackedEventView(Array(whole.dropLast())) == nil)
        #expect(PackedEventView([0x0b]) == nil)
        // An unknown field of each wire type is passed over.
        let extra: [UInt8] = [0xf8, 0x07, 0x01, 0xfd, 0x07, 1, 2, 3, 4, 0xf9, 0x07, 1, 2, 3, 4, 5, 6, 7, 8, 0xfa, 0x07, 2, 9, 9]
        let v = try #require(PackedEventView(whole + extra))
        #expect(v.container == "/a" && v.sequence == events[0].sequence)
    }
}

/// The boots before this one and this one's events stay within the log's
/// capacity together, the oldest going first: the older boots were kept
/// whole until the next restart while this boot's ring let its own oldest
/// go, so older events outlived newer ones (a soak probe). A replay reading
/// an older boot that is trimmed under it gets a gap where the events were,
/// never a silent hole.
@Suite struct OlderBootBoundTests {
    private final class Sink {
        var responses: [SubscribeResponse] = []
        func deliver(_ key: EventHub.Key, _ bytes: [UInt8]) -> Bool {
            if let r = try? SubscribeResponse(serializedBytes: bytes) { responses.append(r) }
            return true
        }
        var events: [String] { responses.compactMap { $0.event.map { "\($0.bootId ?? ""):\($0.sequence ?? 0)" } } }
    }

    /// Boot A with `a` events journaled in `dir`, then boot B on it.
    private func twoBoots(_ dir: String, capacity: Int, a: Int) throws -> EventLog {
        let first = EventLog(capacity: capacity, bootId: "bootA")
        try first.attachJournal(directory: dir)
        for i in 0..<a { first.record(container: "/a\(i)", kind: .containerEventCreated) }
        let b = EventLog(capacity: capacity, bootId: "bootB")
        try b.attachJournal(directory: dir)
        return b
    }

    @Test func olderBootsGoFirstWhenThisBootGrows() throws {
        let dir = "/tmp/lmctfy-test-olderbound-\(getpid())"
        defer { try? Sys.removeTree(dir) }
        let b = try twoBoots(dir, capacity: 8, a: 6)
        #expect(b.olderBoots.first?.events.compactMap(\.sequence) == Array(1...6))
        for i in 0..<4 { b.record(container: "/b\(i)", kind: .containerEventCreated) }
        #expect(b.olderBoots.first?.events.compactMap(\.sequence) == Array(3...6), "the oldest two went")
        for i in 0..<4 { b.record(container: "/b\(i)", kind: .containerEventCreated) }
        #expect(b.olderBoots.isEmpty, "boot A is gone once boot B fills the log")
        // A resume from boot A is now a gap to what boot B kept.
        let got = try EventHub(log: b).replayed(EventHub.Key(conn: 1, stream: 1), SubscribeRequest(bootId: "bootA", afterSequence: 2))
        #expect(got.first?.gap?.requestedBootId == "bootA" && got.first?.gap?.bootEnded == nil)
        #expect(got.compactMap(\.event?.sequence) == Array(1...8))
    }

    @Test func aReplayOfAnOlderBootTrimmedUnderItGetsAGap() throws {
        let dir = "/tmp/lmctfy-test-olderbound2-\(getpid())"
        defer { try? Sys.removeTree(dir) }
        let b = try twoBoots(dir, capacity: 1000, a: 600)
        let hub = EventHub(log: b)
        let sink = Sink()
        let key = EventHub.Key(conn: 1, stream: 1)
        try hub.subscribe(key, SubscribeRequest(bootId: "bootA", afterSequence: 0), filter: EventFilter())
        _ = hub.advance(deliver: sink.deliver, lagged: { _, _ in }, room: { _ in .max / 2 })
        let sent = sink.events.count
        #expect(sent == EventHub.partEvents && sink.events.last == "bootA:\(sent)")
        // 800 of boot B push boot A's oldest 400 or so out (a batch at a
        // time) while the replay is at its 256th.
        for i in 0..<800 { b.record(container: "/b\(i)", kind: .containerEventCreated) }
        let kept = b.olderBoots.first?.events.compactMap(\.sequence) ?? []
        let first = try #require(kept.first)
        #expect(first > 400 && first < 450 && kept == Array(first...600) && kept.count + 800 <= 1000, "\(first)")
        while hub.advance(deliver: sink.deliver, lagged: { _, _ in }, room: { _ in .max / 2 }) {}
        let gaps = sink.responses.compactMap(\.gap)
        #expect(gaps.first == EventGap(requestedBootId: "bootA", afterSequence: UInt64(sent), bootId: "bootA", firstSequence: first))
        #expect(sink.events == (1...sent).map { "bootA:\($0)" } + (first...600).map { "bootA:\($0)" } + (1...800).map { "bootB:\($0)" })
        #expect(gaps.count == 2 && gaps[1].requestedBootId == "bootA" && gaps[1].afterSequence == 600 && gaps[1].bootId == "bootB")
    }
}

/// A clean restart stays "nothing lost" once the boot after it is an older
/// boot too, even when that boot's first journaled event is above 1 (its
/// lower numbers were STATS samples, never journaled): it was replayed as a
/// gap (the snapshot probe, 3 of 5 clean restarts).
@Suite struct CleanRestartAfterStatsTests {
    @Test func aBootWhoseFirstJournaledEventIsAboveOneLostNothing() throws {
        let dir = "/tmp/lmctfy-test-cleanstats-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? Sys.removeTree(dir) }
        let a = EventLog(capacity: 100, bootId: "bootA")
        try a.attachJournal(directory: dir)
        a.record(container: "/x", kind: .containerEventCreated)
        a.markEnded()
        let b = EventLog(capacity: 100, bootId: "bootB")
        try b.attachJournal(directory: dir)
        for _ in 0..<5 { b.recordStats(container: "/x", ContainerStats()) }
        b.record(container: "/x", kind: .containerEventUpdated)
        b.markEnded()
        let c = EventLog(capacity: 100, bootId: "bootC")
        try c.attachJournal(directory: dir)
        c.record(container: "/x", kind: .containerEventDestroyed)
        let got = try EventHub(log: c).replayed(EventHub.Key(conn: 1, stream: 1), SubscribeRequest(bootId: "bootA", afterSequence: 0))
        let gaps = got.compactMap(\.gap)
        #expect(gaps.count == 2, "\(gaps)")
        #expect(gaps.allSatisfy { $0.bootEnded == true }, "a clean restart replayed as a gap: \(gaps)")
        #expect(gaps.first?.bootId == "bootB" && gaps.first?.firstSequence == 6, "\(gaps)")
        #expect(got.compactMap { $0.event.map { "\($0.bootId ?? ""):\($0.sequence ?? 0)" } } == ["bootA:1", "bootB:6", "bootC:1"])
    }
}

/// A boot that journaled nothing (an idle host's agent: STATS samples
/// only) and stopped cleanly is known to the next start, in its place
/// among the boots kept: a subscriber whose point was in it goes on from
/// there, told nothing was lost. It was taken for a boot the journal never
/// had: a gap, then everything kept from the oldest boot on, which a
/// controller stored a second time (the policy probe).
@Suite struct EmptyBootRestartTests {
    private func journalled(_ dir: String, _ boot: String, events: Int, samples: Int = 0, ended: Bool = true) throws -> EventLog {
        let log = EventLog(capacity: 100, bootId: boot)
        try log.attachJournal(directory: dir)
        for _ in 0..<samples { log.recordStats(container: "/x", ContainerStats()) }
        for _ in 0..<events { log.record(container: "/x", kind: .containerEventUpdated) }
        if ended { log.markEnded() }
        return log
    }

    private func names(_ got: [SubscribeResponse]) -> [String] {
        got.compactMap { $0.event.map { "\($0.bootId ?? ""):\($0.sequence ?? 0)" } }
    }

    @Test func aSubscriberInAnEmptyBootGoesOnFromThere() throws {
        let dir = "/tmp/lmctfy-test-emptyboot-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? Sys.removeTree(dir) }
        _ = try journalled(dir, "bootA", events: 2)
        _ = try journalled(dir, "bootE", events: 0, samples: 3)
        let c = try journalled(dir, "bootC", events: 1, ended: false)
        #expect(c.olderBootIds == ["bootA", "bootE"])
        let got = try EventHub(log: c).replayed(EventHub.Key(conn: 1, stream: 1), SubscribeRequest(bootId: "bootE", afterSequence: 3))
        #expect(names(got) == ["bootC:1"], "bootA's events again: \(names(got))")
        let gaps = got.compactMap(\.gap)
        #expect(gaps.count == 1 && gaps[0].bootEnded == true && gaps[0].requestedBootId == "bootE" && gaps[0].bootId == "bootC", "\(gaps)")
    }

    /// Between two boots with events, in its place: a resume from it reads
    /// the boots after it only, and one from before it passes it by as a
    /// clean boot change (not a boot the log let go of).
    @Test func anEmptyBootBetweenTwoKeepsItsPlace() throws {
        let dir = "/tmp/lmctfy-test-emptyboot-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? Sys.removeTree(dir) }
        _ = try journalled(dir, "bootA", events: 2)
        _ = try journalled(dir, "bootE", events: 0)
        _ = try journalled(dir, "bootF", events: 0, samples: 1)
        _ = try journalled(dir, "bootB", events: 2)
        let c = try journalled(dir, "bootC", events: 1, ended: false)
        #expect(c.olderBootIds == ["bootA", "bootE", "bootF", "bootB"])
        let fromE = try EventHub(log: c).replayed(EventHub.Key(conn: 1, stream: 1), SubscribeRequest(bootId: "bootE", afterSequence: 0))
        #expect(names(fromE) == ["bootB:1", "bootB:2", "bootC:1"], "\(names(fromE))")
        #expect(fromE.compactMap(\.gap).allSatisfy { $0.bootEnded == true }, "\(fromE.compactMap(\.gap))")
        let fromA = try EventHub(log: c).replayed(EventHub.Key(conn: 1, stream: 1), SubscribeRequest(bootId: "bootA", afterSequence: 2))
        #expect(names(fromA) == ["bootB:1", "bootB:2", "bootC:1"], "\(names(fromA))")
        let gaps = fromA.compactMap(\.gap)
        #expect(gaps.map { $0.bootId ?? "" } == ["bootE", "bootF", "bootB", "bootC"] && gaps.allSatisfy { $0.bootEnded == true }, "\(gaps)")
    }

    /// One that did not end cleanly (killed) is a gap, for it may have lost
    /// events, in its place: the resume goes on from the boot after it.
    /// It was a boot the journal never had, and every `lmctl events -f`
    /// attached to an idle agent that crashed printed everything kept
    /// again (the agent probe: 90,000 lines twice in a crash loop).
    @Test func anEmptyBootKilledIsAGapInItsPlace() throws {
        let dir = "/tmp/lmctfy-test-emptyboot-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? Sys.removeTree(dir) }
        _ = try journalled(dir, "bootA", events: 2)
        _ = try journalled(dir, "bootK", events: 0, ended: false)
        _ = try journalled(dir, "bootL", events: 0, ended: false)
        _ = try journalled(dir, "bootE", events: 0)
        let c = try journalled(dir, "bootC", events: 1, ended: false)
        #expect(c.olderBootIds == ["bootA", "bootK", "bootL", "bootE"])
        let got = try EventHub(log: c).replayed(EventHub.Key(conn: 1, stream: 1), SubscribeRequest(bootId: "bootK", afterSequence: 0))
        #expect(names(got) == ["bootC:1"], "bootA's events again: \(names(got))")
        let gaps = got.compactMap(\.gap)
        #expect(gaps.first?.bootEnded != true && gaps.first?.requestedBootId == "bootK", "\(gaps)")
        // A killed boot that journaled events is known by them, as before.
        _ = try journalled(dir, "bootM", events: 1, ended: false)
        let d = try journalled(dir, "bootD", events: 0, ended: false)
        #expect(d.olderBootIds == ["bootA", "bootK", "bootL", "bootE", "bootC", "bootM"])
    }
}
