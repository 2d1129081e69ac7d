// Progress of long work (destroying a container with thousands of
// processes, killall's rounds): the library says what it is doing with
// `Progress.report`, and whoever started the work on this thread decides
// whether and where that goes: the CLIs draw one line on a terminal's
// stderr, the agent streams it to a caller who asked (DestroyResponse and
// KillAllResponse `progress`), lmctl forwards what its agent streams. With
// no reporter installed (the usual case) a report costs one lock.
//
// A reporter belongs to the thread that installed it: CL1 calls run on
// their caller's thread, so no signature between the CLI (or the agent's
// dispatcher) and the library has to carry it.
import Glibc

public enum Progress {
    final class Box: @unchecked Sendable {
        // @unchecked: only the installing thread calls `report` (or, through
        // `current`, a thread it waits for meanwhile).
        let report: (String) -> Void
        init(_ report: @escaping (String) -> Void) { self.report = report }
    }

    private static let reporters = Mutexed<[UInt: Box]>([:])

    /// Runs `body` with `reporter` receiving this thread's reports; the
    /// previous reporter (if any) is put back after.
    public static func with<T, E: Error>(_ reporter: @escaping (String) -> Void, _ body: () throws(E) -> T) throws(E) -> T {
        let me = UInt(pthread_self())
        let previous = reporters.locked { r -> Box? in
            let p = r[me]
            r[me] = Box(reporter)
            return p
        }
        defer { reporters.locked { $0[me] = previous } }
        return try body()
    }

    /// Whether a reporter listens on this thread.
    public static var isActive: Bool {
        let me = UInt(pthread_self())
        return reporters.locked { $0[me] != nil }
    }

    /// This thread's reporter, for work it hands to a thread of its own and
    /// waits for (the image store's unpacking thread): that thread's
    /// reports then go where this thread's would. nil: nobody listens.
    public static var current: (@Sendable (String) -> Void)? {
        let me = UInt(pthread_self())
        guard let box = reporters.locked({ $0[me] }) else { return nil }
        // The installing thread waits for the work: one reporter at a time.
        return { box.report($0) }
    }

    /// Bytes as MiB with one decimal, for progress lines.
    public static func mib(_ bytes: UInt64) -> String {
        // Not `bytes * 10`: it trapped above 1.6 EiB (a size an archive's
        // header may claim).
        let tenths = bytes / (1 << 20) * 10 + bytes % (1 << 20) * 10 / (1 << 20)
        return "\(tenths / 10).\(tenths % 10) MiB"
    }

    /// Tells this thread's reporter, if any, what is being done now;
    /// `message` is not built when nobody listens.
    public static func report(_ message: @autoclosure () -> String) {
        let me = UInt(pthread_self())
        guard let box = reporters.locked({ $0[me] }) else { return }
        box.report(message())
    }

    /// LMCTFY_TEST_PROGRESS_DELAY_MS, for the tests: the delay, and every
    /// report passed on (no interval).
    static let testDelayMs: UInt64? = getenv("LMCTFY_TEST_PROGRESS_DELAY_MS").flatMap { UInt64(String(cString: $0)) }

    /// How long work runs before its progress is shown: 300 ms (what takes
    /// less is not worth a line).
    public static var delayMs: UInt64 { testDelayMs ?? 300 }
}

/// A reporter that passes on the latest message once the work has run for
/// `Progress.delayMs`, then at most every `intervalMs`.
///
/// Thread-safety: one thread (the one that installed it).
public final class ThrottledProgress {
    private let start: UInt64
    private var last: UInt64?
    private let intervalMs: UInt64
    private let emit: (String) -> Void
    /// The clock (milliseconds; a test's own).
    private let clock: () -> UInt64
    /// Whether anything was passed on.
    public private(set) var emitted = false

    public init(intervalMs: UInt64 = 100, clock: @escaping () -> UInt64 = { MonotonicClock.milliseconds() },
                emit: @escaping (String) -> Void) {
        self.intervalMs = intervalMs
        self.clock = clock
        self.emit = emit
        start = clock()
    }

    public func report(_ message: String) {
        let now = clock()
        guard now - start >= Progress.delayMs else { return }
        if let last, now - last < intervalMs, Progress.testDelayMs == nil { return }
        last = now
        emitted = true
        emit(message)
    }
}
