// The hub's "lagged, resume after N" without a kernel or a socket: N is
// the last event a subscriber was really sent. (With credit, the replay
// held for it counted as sent from the start: a subscriber sent 17,614 of
// 60,000 events was told to resume after 60,000 and lost the rest; the
// controller's replay without credit named the request's own point, so a
// replay longer than the connection's limit was cut at the same place at
// every retry. A probe.)
import LmctfyEvents
import LmctfyProto
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
