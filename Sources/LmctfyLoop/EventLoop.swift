// One uv_loop_t, one thread that runs it, and the only door in from other
// threads: execute(), which queues a closure and wakes the loop through an
// eventfd the loop polls. libuv handles are not thread-safe, so every handle is created,
// used and closed on that thread and nothing but the work queue needs a lock.
import CLibUV
import CLmctfyUV
import Glibc
import LmctfySystem
import Synchronization

/// Which EventLoop runs on the current thread, if any. A thread-specific
/// value rather than a stored pthread_t compared with pthread_self(): the
/// loop thread may ask before pthread_create has returned its id to us.
private let currentLoopKey: pthread_key_t = {
    var key = pthread_key_t()
    let rc = pthread_key_create(&key, nil)
    precondition(rc == 0, "pthread_key_create: \(rc)")
    return key
}()

/// A libuv event loop on its own thread.
///
/// Thread-safety: `execute`, `offload`, `submit`, `runAndWait`, `shutdown`,
/// `inLoop` and the counters may be called from any thread. Everything else
/// in LmctfyLoop (listeners, connections, timers, signal watchers) must be
/// created and used on this loop's thread: call it from their callbacks or
/// from work passed to `execute`. They check, and crash on a violation,
/// because a libuv handle touched from two threads corrupts silently.
///
/// Lifetime: `start()` spawns the thread; `shutdown()` closes every handle
/// still open, waits for their close callbacks and for offloaded work, then
/// `uv_loop_close`s and joins the thread. The loop object must outlive
/// `shutdown()`; the thread keeps it alive until then.
public final class EventLoop: @unchecked Sendable {
    // @unchecked Sendable: the fields in "Shared" are only touched under
    // `lock`; the counters are atomics; "Loop-affine" state is touched only
    // on the loop thread (before start() and after the join, no other thread
    // touches the loop at all, and pthread_create/pthread_join order those).

    private enum Phase { case idle, running, stopping, stopped }

    /// A name for messages (defaults to "loop").
    public let name: String

    // MARK: Shared (under `lock`)
    private let lock = Lock()
    private var phase = Phase.idle
    private var queue: [@Sendable () -> Void] = []
    /// The eventfd was written since the loop last took the queue: later
    /// work rides on that wake-up (one write per batch).
    private var wakePending = false
    /// The loop's wake-up: written by `execute` after it has let go of the
    /// lock, read by the loop's poll handle. Opened by `start()`, closed only
    /// by `deinit`, when no thread can be inside `execute` any more, so a
    /// write never reaches a closed (or reused) descriptor.
    private var wakeFd: Int32 = -1
    private var closeResult: Int32?
    // Serializes shutdown() callers so exactly one joins and all see the result.
    private let joinLock = Lock()
    private var thread: pthread_t?

    // MARK: Loop-affine
    let uvLoop: UnsafeMutablePointer<uv_loop_t>
    /// Polls `wakeFd`. Not a uv_async_t: libuv 1.44's loop spins (up to
    /// ~1,000 `pause`s, then sched_yield) while a sender is between its two
    /// atomics around the eventfd write, and the sender did that write under
    /// `lock`, so the loop it woke often spun and then blocked on the lock the
    /// sender still held: two more hand-offs for one wake-up (a profile of
    /// one-call lifecycles put ~5 % of the agent's samples in that spin).
    private let wakeup: UnsafeMutablePointer<uv_poll_t>
    private var loopInitialized = false
    /// Open handles, so shutdown can close them. Unretained: each handle's
    /// `data` already holds the retain that keeps its object alive until its
    /// close callback, which is also where it leaves this table.
    private var handles: [ObjectIdentifier: Unmanaged<LoopHandle>] = [:]
    /// Shutdown has begun: no new handles (they would keep uv_run alive).
    private(set) var isClosing = false
    /// uv_run has returned for good: no new offloads either.
    private var isFinalizing = false
    /// Open signal watchers per signal, and whether the loop thread blocked
    /// that signal before the first one (see SignalWatcher).
    private var watchedSignals: [Int32: (watchers: Int, wasBlocked: Bool)] = [:]
    /// One read buffer for every stream of the loop. libuv calls alloc, read
    /// and the read callback back to back for one stream at a time, and the
    /// callback copies the bytes out, so the buffer is free again when the
    /// next stream reads.
    static let readBufferSize = 64 * 1024
    let readBuffer: UnsafeMutableRawPointer

    // MARK: Counters (any thread)
    private let _liveHandles = Atomic<Int>(0)
    private let _liveConnections = Atomic<Int>(0)
    private let _liveObjects = Atomic<Int>(0)
    private let _pendingOffloads = Atomic<Int>(0)
    private let _strayHandles = Atomic<Int>(0)
    private let started = Atomic<Bool>(false)

    /// A loop that is set up but not running: no thread until `start()`.
    /// `name` appears in its messages.
    public init(name: String = "loop") {
        self.name = name
        uvLoop = .allocate(capacity: 1)
        uvLoop.initialize(to: uv_loop_t())
        wakeup = .allocate(capacity: 1)
        wakeup.initialize(to: uv_poll_t())
        readBuffer = .allocate(byteCount: Self.readBufferSize, alignment: 16)
    }

    deinit {
        readBuffer.deallocate()
        if wakeFd >= 0 { Glibc.close(wakeFd) }
        // Freeing a loop libuv refused to close (handles still open) would
        // leave those handles pointing into freed memory; leak it instead.
        // A loop never started was never initialized and is plain memory.
        if !loopInitialized || closeResult == 0 {
            uvLoop.deallocate()
            wakeup.deallocate()
        }
    }

    // MARK: Starting

    /// Initializes the loop and starts its thread. Work queued with `execute`
    /// before this runs first, in order. Call once.
    public func start() throws(LoopError) {
        precondition(!started.exchange(true, ordering: .relaxed), "\(name): start() called twice")
        // libuv leaves SIGPIPE's default, which would kill the process on a
        // write to a peer that went away; before the first stream exists.
        Sys.ignoreSIGPIPE()
        // Initialized before the thread exists: pthread_create publishes
        // these writes to it, and no other thread writes `wakeFd` until
        // `phase` becomes .running under the lock below.
        let fd: Int32
        do { fd = try EventFds.eventfd() } catch { throw LoopError("eventfd", name, error) }
        try check(uv_loop_init(uvLoop), "uv_loop_init", name)
        loopInitialized = true
        var rc = uv_poll_init(uvLoop, wakeup, fd)
        if rc == 0 {
            wakeup.pointee.data = Unmanaged.passUnretained(self).toOpaque()
            rc = uv_poll_start(wakeup, Int32(UV_READABLE.rawValue)) { poll, _, _ in
                guard let poll, let data = poll.pointee.data else { return }
                let loop = Unmanaged<EventLoop>.fromOpaque(data).takeUnretainedValue()
                // Reset before the queue is taken: a write after this read is
                // another wake-up, and work queued before it is in the batch.
                _ = try? EventFds.readCounter(loop.wakeFd)
                loop.drain()
            }
            if rc < 0 { uv_close(lm_uv_handle(wakeup), nil) }
        }
        if rc < 0 {
            uv_run(uvLoop, UV_RUN_DEFAULT)
            uv_loop_close(uvLoop)
            loopInitialized = false
            Glibc.close(fd)
            throw LoopError("uv_poll_start", name, rc)
        }
        wakeFd = fd

        let wake = lock.locked { () -> Bool in
            // The thread owns a retain of the loop until it ends.
            let context = Unmanaged.passRetained(self).toOpaque()
            var tid = pthread_t()
            let created = pthread_create(&tid, nil, { context in
                Unmanaged<EventLoop>.fromOpaque(context!).takeRetainedValue().runThread()
                return nil
            }, context)
            precondition(created == 0, "\(name): pthread_create: \(created)")
            thread = tid
            phase = .running
            return !queue.isEmpty && claimWake()
        }
        if wake { EventFds.signal(wakeFd) }
    }

    private func runThread() {
        // Named for `top -H`, `ps -L` and tools/run-bench: "agent-loop",
        // "controller-loop" (the kernel keeps 15 bytes).
        let short = name.hasPrefix("lmctfy-") ? String(name.dropFirst("lmctfy-".count)) : name
        _ = lm_uv_name_thread(short == "loop" ? short : short + "-loop")
        pthread_setspecific(currentLoopKey, Unmanaged.passUnretained(self).toOpaque())
        defer { pthread_setspecific(currentLoopKey, nil) }
        // Returns once shutdown has unref'd the wakeup handle, every other
        // handle's close callback has run and no request (write, connect,
        // offloaded work) is pending.
        uv_run(uvLoop, UV_RUN_DEFAULT)
        finish()
    }

    // MARK: Work from any thread

    /// Runs `work` on the loop thread, after all work queued before it (FIFO
    /// across all callers). Thread-safe. Returns false, and drops `work`, when
    /// the loop has stopped for good; work queued during shutdown still runs.
    @discardableResult
    public func execute(_ work: @Sendable @escaping () -> Void) -> Bool {
        let (queued, wake) = lock.locked { () -> (Bool, Bool) in
            switch phase {
            case .idle:
                queue.append(work)
                return (true, false)
            case .running, .stopping:
                queue.append(work)
                return (true, claimWake())
            case .stopped:
                return (false, false)
            }
        }
        // After the lock: the loop it wakes does not find it held. The
        // descriptor stays open as long as this object lives.
        if wake { EventFds.signal(wakeFd) }
        return queued
    }

    /// Under `lock`: whether the caller is to write the wake-up (once per
    /// batch: the loop takes everything queued when it wakes, and clears
    /// `wakePending` as it does).
    private func claimWake() -> Bool {
        defer { wakePending = true }
        return !wakePending
    }

    /// Runs `body` on the loop thread and returns its result to the caller's
    /// task. Throws `body`'s error, or a LoopError when the loop has stopped.
    public func submit<T: Sendable>(_ body: @Sendable @escaping () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
            let queued = execute { continuation.resume(with: Result { try body() }) }
            if !queued { continuation.resume(throwing: LoopError.shutDown("submit")) }
        }
    }

    /// Runs `body` on the loop thread and blocks the calling thread until it
    /// returned. On the loop thread itself it runs `body` inline (waiting for
    /// ourselves would never end).
    @discardableResult
    public func runAndWait<T: Sendable>(_ body: @Sendable @escaping () throws -> T) throws -> T {
        if inLoop { return try body() }
        let mailbox = Mailbox<Result<T, any Error>>()
        guard execute({ mailbox.put(Result { try body() }) }) else {
            throw LoopError.shutDown("runAndWait")
        }
        return try mailbox.take().get()
    }

    /// `runAndWait` for a body whose errors are LmctfyErrors: they come back
    /// as they were; a loop that is not running is UNAVAILABLE ("`owner`'s
    /// loop is not running").
    public func runAndWait<T: Sendable>(_ owner: String, _ body: @Sendable @escaping () throws(LmctfyError) -> T) throws(LmctfyError) -> T {
        let result: Result<T, LmctfyError>
        do {
            result = try runAndWait { () -> Result<T, LmctfyError> in
                do throws(LmctfyError) { return .success(try body()) } catch { return .failure(error) }
            }
        } catch {
            throw .unavailable("\(owner)'s loop is not running: \(error)")
        }
        return try result.get()
    }

    /// Runs the queued work, on the loop thread, in order. Work it queues runs
    /// on the next wakeup, so a closure that keeps re-queueing itself cannot
    /// starve I/O.
    private func drain() {
        let (work, stopping) = lock.locked { () -> ([@Sendable () -> Void], Bool) in
            defer { queue.removeAll() }
            wakePending = false
            return (queue, phase == .stopping)
        }
        inBatch = true
        for item in work { item() }
        inBatch = false
        afterBatch?()
        if stopping && !isClosing { beginClosing() }
    }

    /// Whether the loop is running a batch of `execute`d work (loop thread
    /// only): what it writes may wait for `afterBatch`, so that answers
    /// queued together (a streamed response and the call's status, say)
    /// leave in one write.
    public private(set) var inBatch = false
    /// Runs on the loop thread after each batch of `execute`d work. Set it
    /// on the loop thread (or before `start`).
    public var afterBatch: (() -> Void)?

    // MARK: Thread checks

    /// True on this loop's thread.
    public var inLoop: Bool {
        pthread_getspecific(currentLoopKey) == Unmanaged.passUnretained(self).toOpaque()
    }

    /// Crashes unless called on this loop's thread (in release builds too:
    /// the alternative is a libuv handle corrupted from two threads).
    public func assertInLoop(file: StaticString = #fileID, line: UInt = #line) {
        precondition(inLoop, "\(name): must be called on the loop thread", file: file, line: line)
    }

    // MARK: Shutting down

    /// Closes every handle the loop still owns, runs the loop until all close
    /// callbacks and pending requests (writes, connects, offloaded work) are
    /// done, closes the loop and joins its thread. Returns what
    /// `uv_loop_close` returned: 0, unless a handle escaped (a bug). Callable
    /// from any thread but the loop's own, any number of times; a loop never
    /// started is started first so queued work still runs.
    @discardableResult
    public func shutdown() -> Int32 {
        precondition(!inLoop, "\(name): shutdown() joins the loop thread; call it from another thread")
        return joinLock.locked {
            if !started.load(ordering: .relaxed) {
                do { try start() } catch { fatalError("\(name): start for shutdown: \(error)") }
            }
            let wake = lock.locked { () -> Bool in
                guard phase == .running else { return false }
                phase = .stopping
                return claimWake()
            }
            if wake { EventFds.signal(wakeFd) }
            if let tid = lock.locked({ () -> pthread_t? in defer { thread = nil }; return thread }) {
                let rc = pthread_join(tid, nil)
                precondition(rc == 0, "\(name): pthread_join: \(rc)")
            }
            return lock.locked { closeResult ?? -1 }
        }
    }

    /// What `uv_loop_close` returned at the end of shutdown; nil before.
    public var loopCloseResult: Int32? { lock.locked { closeResult } }

    /// On the loop thread, once shutdown was requested: close everything and
    /// let uv_run return when the last close callback has run.
    private func beginClosing() {
        isClosing = true
        uv_unref(lm_uv_handle(wakeup))
        // Closing runs user callbacks that may close other handles: iterate
        // over a copy; close() is idempotent.
        for handle in Array(handles.values) { handle.takeUnretainedValue().close() }
    }

    /// On the loop thread after uv_run returned: no work is accepted from now
    /// on; what is queued runs, then the wakeup handle closes and the loop.
    private func finish() {
        isFinalizing = true
        isClosing = true
        let leftover = lock.locked { () -> [@Sendable () -> Void] in
            phase = .stopped
            defer { queue.removeAll() }
            return queue
        }
        for item in leftover { item() }
        // Any handle still open was left by that work (it could not create
        // new ones): close them the ordinary way.
        for handle in Array(handles.values) { handle.takeUnretainedValue().close() }
        uv_close(lm_uv_handle(wakeup), nil)
        // A handle we do not know would be a bug in this module; close it so
        // the loop can close, and count it so the tests notice.
        let strays = Unmanaged.passUnretained(self).toOpaque()
        uv_walk(uvLoop, { handle, context in
            guard let handle, uv_is_closing(handle) == 0 else { return }
            let loop = Unmanaged<EventLoop>.fromOpaque(context!).takeUnretainedValue()
            loop._strayHandles.add(1, ordering: .relaxed)
            uv_close(handle, nil)
        }, strays)
        uv_run(uvLoop, UV_RUN_DEFAULT)
        let rc = uv_loop_close(uvLoop)
        lock.locked { closeResult = rc }
    }

    // MARK: Handle registry (loop thread)

    /// Throws when the loop no longer takes new handles.
    func checkAcceptsHandles(_ call: String) throws(LoopError) {
        assertInLoop()
        if isClosing { throw LoopError.shutDown(call) }
    }

    func register(_ handle: LoopHandle) {
        handles[ObjectIdentifier(handle)] = .passUnretained(handle)
        _liveHandles.add(1, ordering: .relaxed)
        if handle is Connection { _liveConnections.add(1, ordering: .relaxed) }
    }

    func deregister(_ handle: LoopHandle) {
        if handles.removeValue(forKey: ObjectIdentifier(handle)) != nil {
            _liveHandles.subtract(1, ordering: .relaxed)
            if handle is Connection { _liveConnections.subtract(1, ordering: .relaxed) }
        }
    }

    func watchingSignal(_ signum: Int32) {
        if let w = watchedSignals[signum] {
            watchedSignals[signum] = (w.watchers + 1, w.wasBlocked)
            return
        }
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, signum)
        var old = sigset_t()
        pthread_sigmask(SIG_UNBLOCK, &set, &old)
        watchedSignals[signum] = (1, sigismember(&old, signum) == 1)
    }

    func stoppedWatchingSignal(_ signum: Int32) {
        guard let w = watchedSignals[signum] else { return }
        if w.watchers > 1 {
            watchedSignals[signum] = (w.watchers - 1, w.wasBlocked)
            return
        }
        watchedSignals[signum] = nil
        if w.wasBlocked {
            var set = sigset_t()
            sigemptyset(&set)
            sigaddset(&set, signum)
            pthread_sigmask(SIG_BLOCK, &set, nil)
        }
    }

    func objectCreated() { _liveObjects.add(1, ordering: .relaxed) }
    func objectDestroyed() { _liveObjects.subtract(1, ordering: .relaxed) }

    // MARK: Counters

    /// libuv handles of ours that are open or closing (the loop's own wakeup
    /// handle not included).
    public var liveHandleCount: Int { _liveHandles.load(ordering: .relaxed) }
    /// Connections (accepted or dialled) not yet fully closed.
    public var liveConnectionCount: Int { _liveConnections.load(ordering: .relaxed) }
    /// Handle objects (listeners, connections, timers, watchers) not yet
    /// deinitialized: stays above zero if a closed handle is still referenced,
    /// e.g. by a retain cycle through a callback.
    public var liveObjectCount: Int { _liveObjects.load(ordering: .relaxed) }
    /// Offloaded jobs whose result has not been delivered yet.
    public var pendingOffloadCount: Int { _pendingOffloads.load(ordering: .relaxed) }
    /// Handles shutdown found that this module did not create (should be 0).
    public var strayHandleCount: Int { _strayHandles.load(ordering: .relaxed) }

    // MARK: Offloading

    /// Runs `blocking` on libuv's worker pool, off the loop thread, and then
    /// `then` with its result on the loop thread; the loop keeps serving I/O
    /// meanwhile. Callable from any thread. Returns false, and runs neither,
    /// once the loop has stopped.
    ///
    /// The pool has UV_THREADPOOL_SIZE threads (4 by default, fixed when the
    /// first job runs) shared by every loop in the process: more long jobs
    /// than that wait for each other.
    @discardableResult
    public func offload<T: Sendable>(
        _ blocking: @Sendable @escaping () -> T,
        then: @Sendable @escaping (T) -> Void
    ) -> Bool {
        guard inLoop else { return execute { self.offload(blocking, then: then) } }
        if isFinalizing { return false }
        let job = OffloadJob(loop: self, blocking: blocking, then: then)
        let req = UnsafeMutablePointer<uv_work_t>.allocate(capacity: 1)
        req.initialize(to: uv_work_t())
        req.pointee.data = Unmanaged<AnyOffloadJob>.passRetained(job).toOpaque()
        let rc = uv_queue_work(uvLoop, req, { req in
            Unmanaged<AnyOffloadJob>.fromOpaque(req!.pointee.data).takeUnretainedValue().work()
        }, { req, status in
            let job = Unmanaged<AnyOffloadJob>.fromOpaque(req!.pointee.data).takeRetainedValue()
            req!.deinitialize(count: 1)
            req!.deallocate()
            job.done(status: status)
        })
        if rc < 0 {
            // Only invalid arguments make uv_queue_work fail; the job never ran.
            Unmanaged<AnyOffloadJob>.fromOpaque(req.pointee.data).release()
            req.deinitialize(count: 1)
            req.deallocate()
            return false
        }
        _pendingOffloads.add(1, ordering: .relaxed)
        return true
    }

    fileprivate func offloadDone() { _pendingOffloads.subtract(1, ordering: .relaxed) }
}

/// The type-erased side of an offloaded job: C callbacks cannot be generic.
private class AnyOffloadJob {
    func work() {}
    func done(status: Int32) {}
}

private final class OffloadJob<T: Sendable>: AnyOffloadJob, @unchecked Sendable {
    // @unchecked Sendable: `result` is written by a pool thread in work() and
    // read on the loop thread in done(). libuv orders the two: the pool hands
    // the finished request back through a mutex-protected queue and an async
    // wakeup before the after-work callback runs.
    let loop: EventLoop
    let blocking: @Sendable () -> T
    let then: @Sendable (T) -> Void
    var result: T?

    init(loop: EventLoop, blocking: @Sendable @escaping () -> T, then: @Sendable @escaping (T) -> Void) {
        self.loop = loop
        self.blocking = blocking
        self.then = then
    }

    override func work() { result = blocking() }

    override func done(status: Int32) {
        loop.offloadDone()
        // status is UV_ECANCELED only after uv_cancel, which we never call;
        // a job that did not run has no result to deliver.
        if let result { then(result) }
    }
}

/// A one-value hand-off from one thread to another that blocks the taker.
final class Mailbox<T: Sendable>: Sendable {
    private let value = Mutex<T?>(nil)
    private let arrived = Latch()

    func put(_ v: T) {
        value.locked { $0 = v }
        arrived.signal()
    }

    func take() -> T {
        arrived.wait()
        return value.locked { $0! }
    }
}
