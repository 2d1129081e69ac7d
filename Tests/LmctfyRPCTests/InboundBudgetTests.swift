// The budget of incomplete frames over all connections: pausing the one
// that takes it over, closing the longest-stalled ones at a tick, reading
// the paused ones again once it is back under.
import LmctfyRPC
import Testing

struct InboundBudgetTests {
    @Test func overTheBudgetTheReaderPausesAndTheStalledGo() {
        var b = InboundBudget(limit: 100, evictAfterMs: 1_000)
        #expect(b.received(1, holds: 40, now: 0) == .init())
        #expect(b.received(2, holds: 40, now: 500) == .init())
        // The third read takes it over: that connection is not read.
        #expect(b.received(3, holds: 30, now: 900) == .init(pause: true))
        #expect(b.isPaused(3) && b.total == 110)
        // Nothing has stalled long enough yet.
        #expect(b.tick(now: 950) == .init())
        // 1 stalled for a second: closed (enough to get under); 2 stays.
        #expect(b.tick(now: 1_000) == .init(evict: [1]))
        #expect(b.stalledMs(1, now: 1_000) == 1_000)
        // Its close brings the total under: 3 is read again.
        #expect(b.closed(1) == .init(resume: [3]))
        #expect(!b.isPaused(3) && b.total == 70)
    }

    @Test func aFrameThatCompletesGivesItsBytesBack() {
        var b = InboundBudget(limit: 100)
        _ = b.received(1, holds: 90, now: 0)
        #expect(b.received(2, holds: 20, now: 0) == .init(pause: true))
        // 1's frame is whole: its bytes go, and 2 is read again.
        #expect(b.received(1, holds: 0, now: 10) == .init(resume: [2]))
        #expect(b.total == 20 && b.holds(1) == 0)
        // A frame that grows is not stalled; one that shrinks keeps its age.
        _ = b.received(2, holds: 50, now: 800)
        #expect(b.stalledMs(2, now: 1_000) == 200)
        #expect(b.closed(7) == .init() && b.total == 50)
    }

    @Test func underTheBudgetATickOnlyResumes() {
        var b = InboundBudget(limit: 10, evictAfterMs: 1)
        _ = b.received(1, holds: 8, now: 0)
        #expect(b.received(2, holds: 8, now: 0).pause)
        // Evicting 1 or 2 (both stalled) gets under: the older id first.
        #expect(b.tick(now: 5) == .init(evict: [1]))
        _ = b.closed(1)
        #expect(b.tick(now: 6) == .init())
        #expect(InboundBudget.defaultLimit(maxFrameBytes: 4 << 20) == 64 << 20)
        #expect(InboundBudget.defaultLimit(maxFrameBytes: 64 << 20) == 256 << 20)
    }
}
