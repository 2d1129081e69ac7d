// Locks and threads. Mutual exclusion is the standard library's
// Synchronization.Mutex; what is hand-rolled here is what it cannot do:
// block one thread until another says so (Latch), start a plain thread, and
// show ThreadSanitizer the order its critical sections run in (lm_tsan_*:
// the mutex's own lock and unlock are invisible to it).
import CLmctfyShims
import Glibc
import Synchronization

/// A lock for small critical sections that guard state kept elsewhere (a
/// class's own fields). Prefer `Mutex` or `Mutexed` when the lock can own
/// the state it guards.
///
/// Thread-safety: any thread; not reentrant.
public final class Lock: Sendable {
    private let mutex = Mutex(())

    /// An unlocked lock.
    public init() {}

    /// Runs `body` with the lock held.
    public func locked<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
        // The result leaves through a local: Mutex.locked (below) returns
        // `sending` values, which a generic non-Sendable T cannot promise to be.
        var result: T?
        try mutex.locked { (_: inout Void) throws(E) -> Void in result = try body() }
        return result!
    }
}

/// A value behind a lock, as a shared reference: a `Mutex` (which cannot be
/// copied) that escaping closures and other threads can hold.
///
/// Thread-safety: any thread; `locked` is not reentrant.
public final class Mutexed<T: Sendable>: Sendable {
    private let mutex: Mutex<T>

    /// A lock around `value`.
    public init(_ value: T) { mutex = Mutex(value) }

    /// Runs `body` on the value with the lock held.
    public func locked<R, E: Error>(_ body: (inout T) throws(E) -> R) throws(E) -> R {
        // As in Lock.locked: the result may not be Sendable, so it leaves
        // through a local rather than as Mutex.locked's `sending` result.
        var result: R?
        try mutex.locked { (value: inout sending T) throws(E) -> Void in result = try body(&value) }
        return result!
    }
}

extension Mutex where Value: ~Copyable {
    /// `withLock`, with the critical section shown to ThreadSanitizer (see
    /// lm_tsan_acquire): what every Mutex of ours is locked with (tools/test
    /// refuses `.withLock` in our code), so that TSan needs no suppressions.
    public borrowing func locked<Result: ~Copyable, E: Error>(
        _ body: (inout sending Value) throws(E) -> sending Result
    ) throws(E) -> sending Result {
        // The mutex's own address (a borrowed ~Copyable value is not moved),
        // used as an identity only.
        let sync = withUnsafePointer(to: self) { UnsafeMutableRawPointer(mutating: $0) }
        return try withLock { (value: inout sending Value) throws(E) -> sending Result in
            lm_tsan_acquire(sync)
            defer { lm_tsan_release(sync) }
            return try body(&value)
        }
    }
}

/// A pthread mutex and a condition variable on CLOCK_MONOTONIC (a timed
/// wait must not stretch or shrink when the wall clock is set), at stable
/// heap addresses: what Latch and ThreadCache block on. pthread rather than
/// Synchronization.Mutex because a thread must sleep on the condition.
final class Monitor: @unchecked Sendable {
    // @unchecked Sendable: the pthread objects do their own locking.
    let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    let cond = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)

    init() {
        mutex.initialize(to: pthread_mutex_t())
        cond.initialize(to: pthread_cond_t())
        pthread_mutex_init(mutex, nil)
        var attr = pthread_condattr_t()
        pthread_condattr_init(&attr)
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC)
        pthread_cond_init(cond, &attr)
        pthread_condattr_destroy(&attr)
    }

    deinit {
        pthread_cond_destroy(cond)
        pthread_mutex_destroy(mutex)
        cond.deallocate()
        mutex.deallocate()
    }

    func lock() { pthread_mutex_lock(mutex) }
    func unlock() { pthread_mutex_unlock(mutex) }
    func wait() { pthread_cond_wait(cond, mutex) }
    /// Waits (the mutex held) until signalled or `deadline` (CLOCK_MONOTONIC)
    /// has passed; false when it timed out.
    func wait(until deadline: inout timespec) -> Bool { pthread_cond_timedwait(cond, mutex, &deadline) != ETIMEDOUT }
    func signal() { pthread_cond_signal(cond) }
    func broadcast() { pthread_cond_broadcast(cond) }
}

/// Counts down from a number; `wait` blocks the calling thread until the
/// count reaches zero. A one-shot "it has happened" between threads (the
/// agent has stopped, a loop callback ran).
///
/// Hand-rolled on a pthread mutex and condition variable because the
/// standard library has none: Synchronization offers `Mutex` and `Atomic`,
/// neither of which can put a thread to sleep until another wakes it, and
/// Dispatch's semaphores would bring Dispatch's threads (and their blocked
/// signal masks) into processes that otherwise have none.
///
/// Thread-safety: any thread.
public final class Latch: @unchecked Sendable {
    // @unchecked Sendable: `remaining` is only touched with the monitor held.
    private let monitor = Monitor()
    private var remaining: Int

    /// A latch that opens after `count` calls to `signal`.
    public init(_ count: Int = 1) {
        remaining = count
    }

    /// Counts down by one; at zero every waiter wakes.
    public func signal() {
        monitor.lock()
        remaining -= 1
        if remaining <= 0 { monitor.broadcast() }
        monitor.unlock()
    }

    /// Blocks until the count is zero.
    public func wait() {
        monitor.lock()
        while remaining > 0 { monitor.wait() }
        monitor.unlock()
    }

    /// Blocks until the count is zero or `seconds` have passed; true when
    /// it reached zero.
    public func wait(seconds: Int) -> Bool {
        wait(milliseconds: seconds * 1000)
    }

    /// Blocks until the count is zero or `milliseconds` have passed; true
    /// when it reached zero.
    public func wait(milliseconds: Int) -> Bool {
        var deadline = MonotonicClock.timespecNow()
        let ns = Int(deadline.tv_nsec) + (milliseconds % 1000) * 1_000_000
        deadline.tv_sec += milliseconds / 1000 + ns / 1_000_000_000
        deadline.tv_nsec = ns % 1_000_000_000
        monitor.lock()
        defer { monitor.unlock() }
        while remaining > 0 {
            if !monitor.wait(until: &deadline) { return remaining <= 0 }
        }
        return true
    }
}

/// One holder at a time per key (a container tree), reentrant: the thread
/// holding a key may take it again (each `enter` with its `leave`). Keys
/// are independent; a key no one holds or waits for takes no room.
///
/// Thread-safety: any thread. A thread must not hold two keys at once
/// unless every thread takes them in the same order.
public final class KeyedLocks: @unchecked Sendable {
    // @unchecked Sendable: `held` and `waiting` are only touched with the
    // monitor held.
    private let monitor = Monitor()
    private var held: [String: (owner: pthread_t, depth: Int)] = [:]
    private var waiting = 0

    public init() {}

    /// Takes `key`, waiting while another thread holds it.
    public func enter(_ key: String) {
        let me = pthread_self()
        monitor.lock()
        while let h = held[key], pthread_equal(h.owner, me) == 0 {
            waiting += 1
            monitor.wait()
            waiting -= 1
        }
        held[key] = (me, (held[key]?.depth ?? 0) + 1)
        monitor.unlock()
    }

    /// Lets go of `key` (taken by this thread with `enter`).
    public func leave(_ key: String) {
        monitor.lock()
        if let h = held[key], h.depth > 1 {
            held[key] = (h.owner, h.depth - 1)
        } else {
            held[key] = nil
            if waiting > 0 { monitor.broadcast() }
        }
        monitor.unlock()
    }

    /// Whether some thread holds `key` now.
    public func isHeld(_ key: String) -> Bool {
        monitor.lock()
        defer { monitor.unlock() }
        return held[key] != nil
    }
}

/// A count that only grows, and a way for threads to sleep until it has
/// grown past what they saw (or a timeout): "something changed, look again"
/// between threads, without missing a change that came before the wait.
///
/// Thread-safety: any thread.
public final class ChangeCounter: @unchecked Sendable {
    // @unchecked Sendable: `count` is only touched with the monitor held.
    private let monitor = Monitor()
    private var count: UInt64 = 0

    public init() {}

    /// The count now.
    public var value: UInt64 {
        monitor.lock()
        defer { monitor.unlock() }
        return count
    }

    /// Counts one change and wakes every waiter.
    public func bump() {
        monitor.lock()
        count += 1
        monitor.broadcast()
        monitor.unlock()
    }

    /// Blocks until the count exceeds `seen` or `timeoutMs` have passed;
    /// returns the count then.
    public func wait(past seen: UInt64, timeoutMs: Int) -> UInt64 {
        var deadline = MonotonicClock.timespecNow()
        let ns = Int(deadline.tv_nsec) + (timeoutMs % 1000) * 1_000_000
        deadline.tv_sec += timeoutMs / 1000 + ns / 1_000_000_000
        deadline.tv_nsec = ns % 1_000_000_000
        monitor.lock()
        defer { monitor.unlock() }
        while count <= seen {
            if !monitor.wait(until: &deadline) { break }
        }
        return count
    }
}

/// Plain threads, for work that must not sit on a pool (waiting on events or
/// processes) and for tests that need a second actor. Hand-rolled because
/// Swift on Linux has no thread API below Foundation's `Thread`, and the
/// agent and CLI do not link Foundation.
public enum Threads {
    /// Starts `body` on a new thread; join it with pthread_join.
    public static func start(_ body: @escaping @Sendable () -> Void) -> pthread_t {
        let (t, rc) = spawn(body, detached: false)
        precondition(rc == 0, "pthread_create failed: \(rc)")
        return t
    }

    /// Starts `body` on a new thread nobody joins.
    public static func detach(_ body: @escaping @Sendable () -> Void) {
        let rc = tryDetach(body)
        precondition(rc == 0, "pthread_create failed: \(rc)")
    }

    /// `detach` that says when no thread could be made (pthread_create's
    /// error: EAGAIN at a task limit, a pids cgroup's or RLIMIT_NPROC)
    /// instead of stopping the process; 0 when `body` runs. For work a
    /// peer's request starts, whose refusal must not take the server down.
    public static func tryDetach(_ body: @escaping @Sendable () -> Void) -> Int32 {
        spawn(body, detached: true).rc
    }

    private final class Box: @unchecked Sendable {
        let body: @Sendable () -> Void
        init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    }

    private static func spawn(_ body: @escaping @Sendable () -> Void, detached: Bool) -> (pthread_t, rc: Int32) {
        var t = pthread_t()
        var attr = pthread_attr_t()
        pthread_attr_init(&attr)
        if detached { pthread_attr_setdetachstate(&attr, Int32(PTHREAD_CREATE_DETACHED)) }
        let box = Unmanaged.passRetained(Box(body))
        let rc = pthread_create(&t, &attr, { arg in
            Unmanaged<Box>.fromOpaque(arg!).takeRetainedValue().body()
            return nil
        }, box.toOpaque())
        pthread_attr_destroy(&attr)
        if rc != 0 { box.release() }  // the thread that would have taken it never ran
        return (t, rc)
    }
}

/// Threads for work that lasts (the agent's Run and Notify calls), reused:
/// a thread whose work is done waits up to `idleSeconds` for the next piece
/// instead of exiting, so a burst of calls does not pay a pthread_create
/// and an exit each. At most `maxIdle` threads wait; work never waits for a
/// thread (a new one starts when none is idle).
public final class ThreadCache: @unchecked Sendable {
    // @unchecked Sendable: `queue` and `idle` are only touched with the
    // monitor held.
    private let monitor = Monitor()
    private var queue: [@Sendable () -> Void] = []
    /// Waiting threads not yet handed a piece of work: waiting threads =
    /// idle + queue.count, always.
    private var idle = 0
    private let maxIdle: Int
    private let idleSeconds: Int

    /// A cache keeping at most `maxIdle` idle threads for `idleSeconds` each.
    public init(maxIdle: Int = 8, idleSeconds: Int = 10) {
        self.maxIdle = maxIdle
        self.idleSeconds = idleSeconds
    }

    /// Runs `body` on an idle thread of the cache, or on a new one; 0, or
    /// pthread_create's error when no thread was idle and none could be
    /// made (`body` then does not run).
    @discardableResult
    public func run(_ body: @escaping @Sendable () -> Void) -> Int32 {
        monitor.lock()
        if idle > 0 {
            idle -= 1
            queue.append(body)
            monitor.unlock()
            // After the unlock: a waiter woken under it would only block on
            // the mutex until then (a second sleep and wake-up, which the
            // scheduler traces showed when it landed on this CPU).
            monitor.signal()
            return 0
        }
        monitor.unlock()
        return Threads.tryDetach { [self] in
            var next: (@Sendable () -> Void)? = body
            while let work = next {
                work()
                next = self.waitForWork()
            }
        }
    }

    /// Threads waiting for work right now (for tests).
    public var idleThreads: Int {
        monitor.lock()
        defer { monitor.unlock() }
        return idle + queue.count
    }

    /// The next piece of work, or nil when none came in time (the thread
    /// then exits).
    private func waitForWork() -> (@Sendable () -> Void)? {
        monitor.lock()
        defer { monitor.unlock() }
        guard idle + queue.count < maxIdle else { return nil }
        idle += 1
        var deadline = MonotonicClock.timespecNow()
        deadline.tv_sec += idleSeconds
        while queue.isEmpty {
            if !monitor.wait(until: &deadline) { break }
        }
        guard !queue.isEmpty else {
            idle -= 1
            return nil
        }
        // `run` took this thread's idle unit when it queued the work.
        return queue.removeFirst()
    }
}
