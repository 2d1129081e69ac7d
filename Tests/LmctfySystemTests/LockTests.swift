// Mutexed and Lock (on Synchronization.Mutex) and the hand-rolled Latch.
import Glibc
import LmctfySystem
import Synchronization
import Testing

@Suite struct LockTests {
    @Test func mutexedCountsEveryIncrementFromManyThreads() {
        let counter = Mutexed(0)
        let threads = (0..<4).map { _ in Threads.start { for _ in 0..<10_000 { counter.locked { $0 += 1 } } } }
        for t in threads { pthread_join(t, nil) }
        #expect(counter.locked { $0 } == 40_000)
    }

    // These three are also ThreadSanitizer's check of the locks (tools/test
    // runs them under it, with no suppressions): a critical section TSan is
    // not shown (lm_tsan_acquire/lm_tsan_release) makes it report a race here.
    @Test func mutexLockedCountsEveryIncrementFromManyThreads() {
        final class Box: Sendable { let count = Mutex(0) }
        let box = Box()
        let threads = (0..<4).map { _ in Threads.start { for _ in 0..<10_000 { box.count.locked { $0 += 1 } } } }
        for t in threads { pthread_join(t, nil) }
        #expect(box.count.locked { $0 } == 40_000)
    }

    @Test func lockGuardsAFieldKeptOutsideIt() {
        final class Counter: @unchecked Sendable {
            // @unchecked Sendable: `value` is only touched under `lock`.
            let lock = Lock()
            var value = 0
        }
        let c = Counter()
        let threads = (0..<4).map { _ in Threads.start { for _ in 0..<10_000 { c.lock.locked { c.value += 1 } } } }
        for t in threads { pthread_join(t, nil) }
        #expect(c.lock.locked { c.value } == 40_000)
    }

    @Test func lockedPassesResultsAndTypedErrorsThrough() {
        struct Refused: Error, Equatable {}
        let lock = Lock()
        #expect(lock.locked { 42 } == 42)
        #expect(throws: Refused()) { try lock.locked { () throws(Refused) -> Int in throw Refused() } }
        let box = Mutexed([1])
        #expect(throws: Refused()) { try box.locked { (v: inout [Int]) throws(Refused) in v.append(2); throw Refused() } }
        #expect(box.locked { $0 } == [1, 2], "changes before the throw stay")
    }

    @Test func latchOpensAfterCountSignalsFromOtherThreads() {
        let latch = Latch(3)
        let threads = (0..<3).map { _ in Threads.start { latch.signal() } }
        #expect(latch.wait(seconds: 20))
        latch.wait()  // stays open
        for t in threads { pthread_join(t, nil) }
    }

    @Test func latchWaitTimesOutWhileClosed() {
        let latch = Latch()
        let start = MonotonicClock.milliseconds()
        #expect(!latch.wait(seconds: 1))
        #expect(MonotonicClock.milliseconds() - start >= 900)
    }
}

@Suite struct ChangeCounterTests {
    @Test func aWaiterWakesForAChangeMadeAfterWhatItSawAndNotBefore() {
        let changes = ChangeCounter()
        let seen = changes.value
        // A change made before the wait starts is not missed.
        changes.bump()
        #expect(changes.wait(past: seen, timeoutMs: 5000) == seen + 1)
        // One made while it sleeps wakes it.
        let t = Threads.start {
            usleep(100_000)
            changes.bump()
        }
        let start = MonotonicClock.milliseconds()
        #expect(changes.wait(past: seen + 1, timeoutMs: 10_000) == seen + 2)
        #expect(MonotonicClock.milliseconds() - start < 5000)
        pthread_join(t, nil)
    }

    @Test func withoutAChangeTheWaitTimesOut() {
        let changes = ChangeCounter()
        let start = MonotonicClock.milliseconds()
        #expect(changes.wait(past: 0, timeoutMs: 300) == 0)
        #expect(MonotonicClock.milliseconds() - start >= 250)
        // Sub-second and over-a-second timeouts both carry into the deadline.
        let start2 = MonotonicClock.milliseconds()
        #expect(changes.wait(past: 0, timeoutMs: 1_250) == 0)
        #expect(MonotonicClock.milliseconds() - start2 >= 1_200)
    }
}

@Suite struct VersionTests {
    @Test func oneVersionStringWithoutSpaces() {
        // `lmctfy version` and MachineInfo print it; their tests compare
        // against LmctfyVersion.string itself.
        #expect(!LmctfyVersion.string.isEmpty && !LmctfyVersion.string.contains(" "))
    }
}
