// Signals delivered as loop callbacks. libuv's own handler only writes to a
// pipe, so the callback runs as ordinary code on the loop thread, never in
// signal context.
import CLibUV
import CLmctfyUV

/// Calls a handler on the loop thread each time the process receives a
/// signal (SIGTERM, SIGINT, SIGHUP for the agent). While any watcher for a
/// signal is open, libuv's handler replaces the default action, so e.g. a
/// watched SIGTERM no longer kills the process; closing the last watcher
/// restores the default.
///
/// A process-directed signal (kill(pid), a terminal's ^C, systemd's SIGTERM)
/// reaches a thread that does not block it. The loop thread inherits its
/// mask from whoever called `start()`, and thread pools (Dispatch, the test
/// runner) block everything, so a watcher unblocks its signal on the loop
/// thread for as long as one is open, and restores the mask afterwards. A
/// signal raised by one thread at itself (raise()) stays with that thread.
///
/// Thread-safety: loop-affine (see `LoopHandle`).
public final class SignalWatcher: LoopHandle, @unchecked Sendable {
    // @unchecked Sendable: as LoopHandle; `handler` is only touched on the loop thread.
    /// The signal watched (SIGTERM, SIGINT, ...).
    public let signal: Int32
    private var handler: ((Int32) -> Void)?
    private var uvSignal: UnsafeMutablePointer<uv_signal_t> { raw.assumingMemoryBound(to: uv_signal_t.self) }

    private init(loop: EventLoop, signal: Int32, handler: @escaping (Int32) -> Void) throws(LoopError) {
        self.signal = signal
        self.handler = handler
        try super.init(loop: loop, type: UV_SIGNAL, call: "uv_signal_init")
        raw.bindMemory(to: uv_signal_t.self, capacity: 1)
        try check(uv_signal_init(loop.uvLoop, uvSignal), "uv_signal_init")
        adopt()
        loop.watchingSignal(signal)
    }

    /// Starts watching `signal`. Call on the loop thread.
    @discardableResult
    public static func watch(on loop: EventLoop, signal: Int32,
                             _ handler: @escaping (Int32) -> Void) throws(LoopError) -> SignalWatcher {
        let w = try SignalWatcher(loop: loop, signal: signal, handler: handler)
        let rc = uv_signal_start(w.uvSignal, { h, signum in
            handleObject(h, as: SignalWatcher.self)?.handler?(signum)
        }, signal)
        if rc < 0 {
            w.close()
            throw LoopError("uv_signal_start", "signal \(signal)", rc)
        }
        return w
    }

    /// Stops watching and closes the handle. Idempotent.
    public func cancel() { close() }

    override func didClose() {
        handler = nil
        loop.stoppedWatchingSignal(signal)
    }
}
