import Glibc
import LmctfySystem
import Testing

@Suite struct ClockTests {
    @Test func monotonicClockNeverGoesBack() {
        var last = MonotonicClock.nanoseconds()
        for _ in 0..<10_000 {
            let now = MonotonicClock.nanoseconds()
            #expect(now >= last)
            last = now
        }
    }

    @Test func monotonicClockMeasuresASleep() {
        let startNs = MonotonicClock.nanoseconds()
        let startMs = MonotonicClock.milliseconds()
        let startUs = MonotonicClock.microseconds()
        usleep(20_000)
        let ns = MonotonicClock.nanoseconds() - startNs
        #expect(ns >= 20_000_000 && ns < 5_000_000_000, "\(ns) ns")
        #expect(MonotonicClock.milliseconds() - startMs >= 19)
        #expect(MonotonicClock.microseconds() - startUs >= 20_000)
        // The three units read the same clock.
        #expect(startNs / 1_000_000 <= startMs + 1 && startMs <= startNs / 1_000_000 + 1)
    }

    @Test func wallClockIsTheTimeOfDay() {
        let seconds = UInt64(time(nil))
        let wall = WallClock.nanosecondsSinceEpoch() / 1_000_000_000
        #expect(wall >= seconds && wall <= seconds + 2)
    }
}
