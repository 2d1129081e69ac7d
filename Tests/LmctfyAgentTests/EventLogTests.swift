// The agent's event history on its own: sequence numbers, the bounded
// replay ring (the oldest event replaced in place once it is full) and the
// gap a resume from dropped history reports.
@testable import LmctfyAgent
import LmctfyProto
import Testing

@Suite struct EventLogTests {
    @Test func keepsTheLatestCapacityEventsInOrderAcrossWrapArounds() {
        let log = EventLog(capacity: 3, bootId: "boot")
        for i in 1...7 { log.record(container: "/c\(i)", kind: .containerEventCreated) }
        // 7 events in a ring of 3: 5, 6, 7 are kept, oldest first.
        let (all, gap) = log.since(bootId: "boot", after: 0) { _ in true }
        #expect(all.map(\.sequence) == [5, 6, 7])
        #expect(all.map(\.container) == ["/c5", "/c6", "/c7"])
        #expect(gap?.firstSequence == 5, "a resume from before the oldest kept event is a gap")
        let (tail, noGap) = log.since(bootId: "boot", after: 5) { _ in true }
        #expect(tail.map(\.sequence) == [6, 7])
        #expect(noGap == nil)
        // Exactly at the edge: everything after 4 is still there.
        #expect(log.since(bootId: "boot", after: 4) { _ in true }.1 == nil)
        #expect(log.since(bootId: "boot", after: 7) { _ in true }.0.isEmpty)
        // A filter applies across the ring's wrap point.
        let odd = log.since(bootId: "boot", after: 0) { ($0.sequence ?? 0) % 2 == 1 }.0
        #expect(odd.map(\.sequence) == [5, 7])
    }

    @Test func anotherBootIdIsAGapWithEverythingKept() {
        let log = EventLog(capacity: 4, bootId: "boot")
        for _ in 1...2 { log.record(container: "/c", kind: .containerEventDestroyed) }
        let (events, gap) = log.since(bootId: "earlier", after: 1) { _ in true }
        #expect(events.map(\.sequence) == [1, 2])
        #expect(gap?.bootId == "boot" && gap?.requestedBootId == "earlier")
    }

    @Test func zeroCapacityKeepsNothingButStillNumbers() {
        let log = EventLog(capacity: 0, bootId: "boot")
        #expect(log.record(container: "/a", kind: .containerEventCreated).sequence == 1)
        #expect(log.record(container: "/a", kind: .containerEventCreated).sequence == 2)
        let (events, gap) = log.since(bootId: "boot", after: 0) { _ in true }
        #expect(events.isEmpty)
        #expect(gap?.firstSequence == 3)
    }
}
