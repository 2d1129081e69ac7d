// The hub's "lagged, resume after N" without a kernel or a socket: N is
// the last event a subscriber was really sent. (With credit, the replay
// held for it counted as sent from the start: a subscriber sent 17,614 of
// 60,000 events was told to resume after 60,000 and lost the rest; the
// controller's replay without credit named the request's own point, so a
// replay longer than the connection's limit was cut at the same place at
// every retry. A probe.)
import LmctfyEvents
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
        let first = try hub.subscribe(key, SubscribeRequest(afterSequence: 0, credit: 1_000_000), filter: EventFilter(), credit: 1_000_000)
        hub.hold(key, first)
        hub.drain(key, deliver: sink.deliver, lagged: { sink.lagged.append($1) })
        #expect(sink.sent == Array(1...30))
        #expect(sink.lagged == [EventHub.ResumePoint(after: 30, boot: "boot")])
    }

    @Test func aReplayWithoutCreditResumesAfterTheLastEventSent() throws {
        let hub = hub(100)
        let sink = Sink(room: 30)
        let first = try hub.subscribe(key, SubscribeRequest(afterSequence: 10), filter: EventFilter())
        #expect(!hub.replay(key, first, deliver: sink.deliver, lagged: { sink.lagged.append($1) }))
        #expect(sink.sent == Array(11...40))
        #expect(sink.lagged == [EventHub.ResumePoint(after: 40, boot: "boot")])
        #expect(hub.subscribers.isEmpty)
        // Resumed there, the rest comes.
        let rest = Sink(room: 1000)
        let again = try hub.subscribe(key, SubscribeRequest(afterSequence: 40), filter: EventFilter())
        #expect(hub.replay(key, again, deliver: rest.deliver, lagged: { rest.lagged.append($1) }))
        #expect(rest.sent == Array(41...100) && rest.lagged.isEmpty)
    }

    @Test func nothingSentResumesWhereItAsked() throws {
        let hub = hub(5)
        let sink = Sink(room: 0)
        let first = try hub.subscribe(key, SubscribeRequest(afterSequence: 2), filter: EventFilter())
        #expect(!hub.replay(key, first, deliver: sink.deliver, lagged: { sink.lagged.append($1) }))
        #expect(sink.lagged == [EventHub.ResumePoint(after: 2, boot: "boot")])
        // Live only: after what was published when it came.
        let live = try hub.subscribe(key, SubscribeRequest(credit: 0), filter: EventFilter(), credit: 0)
        hub.hold(key, live)
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
            try hub.subscribe(EventHub.Key(conn: 1, stream: 1), SubscribeRequest(bootId: "bootA", afterSequence: after), filter: EventFilter())
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
/// credit, had the hub hold every replay; a probe): a replay is held up to
/// the connection's limit, sent as credit comes, and then ends as lagged,
/// naming the last event held; resuming there goes on without a gap or a
/// duplicate.
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
        // Ten streams on one connection, none granting credit.
        for stream in 1...10 {
            let key = EventHub.Key(conn: 1, stream: UInt32(stream))
            hub.hold(key, try hub.subscribe(key, SubscribeRequest(afterSequence: 0, credit: 0), filter: EventFilter(), credit: 0))
        }
        let held = hub.connectionHeld[1] ?? 0
        #expect(held > 0 && held <= 2048 + 10 * 100, "one connection's replays held within its limit (and the first response of each): \(held) bytes")
        // Another connection has its own.
        let other = EventHub.Key(conn: 2, stream: 1)
        hub.hold(other, try hub.subscribe(other, SubscribeRequest(afterSequence: 0, credit: 0), filter: EventFilter(), credit: 0))
        #expect((hub.connectionHeld[2] ?? 0) > 1024)
        for stream in 1...10 { hub.remove(EventHub.Key(conn: 1, stream: UInt32(stream))) }
        #expect(hub.connectionHeld[1] == nil, "removed, nothing is counted")

        // One that reads: every event once, in order, over several resumes.
        let sink = Sink()
        var after: UInt64 = 0
        var parts = 0
        while parts < 1000 {
            parts += 1
            let key = EventHub.Key(conn: 3, stream: UInt32(parts))
            hub.hold(key, try hub.subscribe(key, SubscribeRequest(afterSequence: after, credit: 0), filter: EventFilter(), credit: 0))
            let lags = sink.lagged.count
            hub.grant(key, 1_000_000, deliver: sink.deliver, lagged: { sink.lagged.append($1) })
            guard sink.lagged.count > lags else { break }
            let point = try #require(sink.lagged.last)
            #expect(point.after == sink.sent.last, "resume after the last event sent")
            after = point.after
        }
        #expect(sink.sent == Array(1...1000), "\(sink.sent.count) events")
        #expect(parts > 10, "the replay came in parts (\(parts))")
        // Live events go to one caught up as before.
        log.record(container: "/live", kind: .containerEventCreated)
        hub.publish(deliver: sink.deliver, lagged: { sink.lagged.append($1) })
        #expect(sink.sent.last == 1001)
    }
}
