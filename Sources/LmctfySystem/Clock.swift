// The two clocks lmctfy reads. Deadlines, timeouts and durations use the
// monotonic clock (never set, never jumps); only timestamps shown to people
// or other machines (event times) use the wall clock.
import Glibc

/// CLOCK_MONOTONIC: time since an unspecified start (boot), which only moves
/// forward. The clock of every deadline, timeout, keepalive and benchmark.
///
/// Thread-safety: any thread.
public enum MonotonicClock {
    /// Now, as the kernel's timespec (for pthread timed waits and the like).
    public static func timespecNow() -> timespec {
        var ts = timespec()
        // Cannot fail: the clock id is valid and `ts` is writable.
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return ts
    }

    /// Now, in nanoseconds.
    public static func nanoseconds() -> UInt64 {
        let ts = timespecNow()
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }

    /// Now, in whole milliseconds: the clock RPC sessions are driven with.
    public static func milliseconds() -> UInt64 {
        let ts = timespecNow()
        return UInt64(ts.tv_sec) * 1000 + UInt64(ts.tv_nsec) / 1_000_000
    }

    /// Now, in microseconds with a fraction (benchmarks).
    public static func microseconds() -> Double {
        let ts = timespecNow()
        return Double(ts.tv_sec) * 1e6 + Double(ts.tv_nsec) / 1e3
    }
}

/// CLOCK_REALTIME: the wall clock, which an administrator or NTP may set
/// backwards. Only for timestamps that leave the process; never for
/// measuring time.
///
/// Thread-safety: any thread.
public enum WallClock {
    /// Nanoseconds since the Unix epoch.
    public static func nanosecondsSinceEpoch() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }
}
