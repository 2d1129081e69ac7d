// ThreadCache: work runs at once (on an idle thread or a new one), idle
// threads are reused, and they leave after their idle time.
import Glibc
import LmctfySystem
import Testing

@Suite struct ThreadCacheTests {
    @Test func everyPieceRunsAndAnIdleThreadIsReused() {
        let cache = ThreadCache(maxIdle: 2, idleSeconds: 5)
        let threads = Mutexed<[UInt]>([])
        for _ in 0..<5 {
            let done = Latch()
            cache.run {
                let me = UInt(pthread_self())
                threads.locked { $0.append(me) }
                done.signal()
            }
            done.wait()
            // The thread is back in the cache before the next piece comes.
            for _ in 0..<5000 where cache.idleThreads == 0 { usleep(1000) }
        }
        let seen = threads.locked { $0 }
        #expect(seen.count == 5)
        #expect(Set(seen).count == 1, "one thread did all five pieces: \(seen)")
    }

    @Test func workDoesNotWaitForABusyThread() {
        let cache = ThreadCache(maxIdle: 1, idleSeconds: 5)
        let release = Latch()
        let started = Latch(2)
        cache.run { started.signal(); release.wait() }
        cache.run { started.signal(); release.wait() }
        #expect(started.wait(seconds: 5), "the second piece waited for the first one's thread")
        release.signal()
    }

    @Test func idleThreadsLeaveAfterTheirTime() {
        let cache = ThreadCache(maxIdle: 4, idleSeconds: 1)
        let done = Latch()
        cache.run { done.signal() }
        done.wait()
        for _ in 0..<5000 where cache.idleThreads == 0 { usleep(1000) }
        #expect(cache.idleThreads == 1)
        for _ in 0..<300 where cache.idleThreads > 0 { usleep(10_000) }
        #expect(cache.idleThreads == 0)
    }
}
