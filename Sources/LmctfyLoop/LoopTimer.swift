// Timers on the loop thread. libuv counts in whole milliseconds from the
// loop's cached "now", so a timer fires no earlier than asked, rounded up.
import CLibUV
import CLmctfyUV

/// A one-shot or repeating timer. The handle keeps itself alive until it is
/// cancelled (a one-shot timer also closes itself after firing) or the loop
/// shuts down; keeping a reference is only needed to cancel it.
///
/// Thread-safety: loop-affine (see `LoopHandle`).
public final class LoopTimer: LoopHandle, @unchecked Sendable {
    // @unchecked Sendable: as LoopHandle; `fire` is only touched on the loop thread.
    private var fire: ((LoopTimer) -> Void)?
    private let repeats: Bool
    private var timer: UnsafeMutablePointer<uv_timer_t> { raw.assumingMemoryBound(to: uv_timer_t.self) }

    private init(loop: EventLoop, repeats: Bool, fire: @escaping (LoopTimer) -> Void) throws(LoopError) {
        self.fire = fire
        self.repeats = repeats
        try super.init(loop: loop, type: UV_TIMER, call: "uv_timer_init")
        raw.bindMemory(to: uv_timer_t.self, capacity: 1)
        try check(uv_timer_init(loop.uvLoop, timer), "uv_timer_init")
        adopt()
    }

    /// Calls `fire` once, on the loop thread, after `delay`; the timer then
    /// closes itself. Call on the loop thread.
    @discardableResult
    public static func once(on loop: EventLoop, after delay: Duration,
                            _ fire: @escaping () -> Void) throws(LoopError) -> LoopTimer {
        let t = try LoopTimer(loop: loop, repeats: false) { _ in fire() }
        try t.start(timeout: milliseconds(delay), repeat: 0)
        return t
    }

    /// Calls `fire` every `interval` (at least 1 ms), first after
    /// `initialDelay` (default: one interval), until cancelled. Ticks missed
    /// while the loop was busy are not made up. Call on the loop thread.
    @discardableResult
    public static func repeating(on loop: EventLoop, every interval: Duration, initialDelay: Duration? = nil,
                                 _ fire: @escaping (LoopTimer) -> Void) throws(LoopError) -> LoopTimer {
        let t = try LoopTimer(loop: loop, repeats: true, fire: fire)
        let every = max(1, milliseconds(interval))
        try t.start(timeout: initialDelay.map(milliseconds) ?? every, repeat: every)
        return t
    }

    private func start(timeout: UInt64, repeat every: UInt64) throws(LoopError) {
        let rc = uv_timer_start(timer, { timer in
            handleObject(timer, as: LoopTimer.self)?.fired()
        }, timeout, every)
        if rc < 0 {
            close()
            throw LoopError("uv_timer_start", "", rc)
        }
    }

    private func fired() {
        // A one-shot timer is done: close first, so a `fire` that inspects
        // the timer sees it closing, and nothing lingers until shutdown.
        if !repeats { close() }
        fire?(self)
    }

    /// Stops the timer and closes it; `fire` is not called again. Idempotent.
    public func cancel() { close() }

    override func didClose() { fire = nil }
}

/// Whole milliseconds, rounded up so a timer never fires early.
private func milliseconds(_ d: Duration) -> UInt64 {
    let (seconds, attoseconds) = d.components
    if seconds < 0 || (seconds == 0 && attoseconds <= 0) { return 0 }
    let ms = UInt64(seconds) &* 1000 &+ UInt64(attoseconds / 1_000_000_000_000_000)
    return attoseconds % 1_000_000_000_000_000 == 0 ? ms : ms + 1
}
