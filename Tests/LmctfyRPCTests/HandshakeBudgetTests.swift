// The budget of TCP connections still in their handshake: refused at the
// limit while the oldest is young, the oldest closed for a new one once it
// has stalled a tenth of the hello timeout, and a finished or closed
// connection's place given back.
import LmctfyRPC
import LmctfySystem
import Testing

@Suite struct HandshakeBudgetTests {
    @Test func atTheLimitANewConnectionIsRefusedWhileTheOldestIsYoung() {
        var b = HandshakeBudget(limit: 3, helloTimeoutMs: 10_000)
        #expect(b.evictAfterMs == 1_000)
        #expect((1...3).map { b.admit($0, now: 100) } == [.admit, .admit, .admit])
        #expect(b.admit(4, now: 1_099) == .refuse)
        #expect(b.count == 3 && !b.contains(4))
        // A finished handshake gives its place back.
        b.finished(2)
        #expect(b.admit(5, now: 1_099) == .admit)
        #expect(b.count == 3)
        b.finished(42)  // not counted: nothing changes
        #expect(b.count == 3)
    }

    @Test func theOldestStalledOneIsClosedForANewOne() {
        var b = HandshakeBudget(limit: 2, helloTimeoutMs: 10_000)
        #expect(b.admit(7, now: 0) == .admit)
        #expect(b.admit(8, now: 500) == .admit)
        // 7 has stalled 1 s: it goes; then 8 is the oldest, 500 ms younger.
        #expect(b.admit(9, now: 1_000) == .admitEvicting(7))
        #expect(b.admit(10, now: 1_400) == .refuse)
        #expect(b.admit(11, now: 1_500) == .admitEvicting(8))
        #expect(!b.contains(7) && !b.contains(8) && b.contains(9) && b.contains(11))
        // Equal start times: the lower id (the earlier accept) goes first.
        var c = HandshakeBudget(limit: 2, helloTimeoutMs: 100)
        _ = c.admit(3, now: 0)
        _ = c.admit(2, now: 0)
        #expect(c.admit(4, now: 10) == .admitEvicting(2))
    }

    @Test func theConfiguredLimitIsChecked() throws {
        #expect(try HandshakeBudget.limit(nil, default: 64, source: "t") == 64)
        #expect(try HandshakeBudget.limit(1, default: 64, source: "t") == 1)
        #expect(try HandshakeBudget.limit(65_536, default: 64, source: "t") == 65_536)
        for bad: UInt32 in [0, 65_537] {
            #expect { _ = try HandshakeBudget.limit(bad, default: 64, source: "a.conf") } throws: { error in
                let e = error as? LmctfyError
                return e?.code == .invalidArgument && e?.message == "a.conf: limits.max_handshaking_connections must be 1 to 65536, not \(bad)"
            }
        }
        // A zero hello timeout still gives a 1 ms floor.
        #expect(HandshakeBudget(limit: 0, helloTimeoutMs: 0).evictAfterMs == 1)
        #expect(HandshakeBudget(limit: 0, helloTimeoutMs: 0).limit == 1)
    }
}
