// Readiness of a descriptor the loop does not own (an eventfd, an inotify
// fd), through uv_poll. The descriptor stays the caller's: closing the poll
// never closes it, and the caller closes the descriptor only after the poll
// has been closed (libuv must not watch a number that may be reused).
import CLibUV
import CLmctfyUV

/// Calls `readable` on the loop thread each time `fd` is readable (level
/// triggered: until what is pending has been read), or with an error once,
/// after which the poll is closed.
///
/// Thread-safety: loop-affine (see `LoopHandle`).
public final class LoopPoll: LoopHandle, @unchecked Sendable {
    // @unchecked Sendable: as LoopHandle; `readable` is only touched on the loop thread.
    private var readable: ((LoopError?) -> Void)?
    private var poll: UnsafeMutablePointer<uv_poll_t> { raw.assumingMemoryBound(to: uv_poll_t.self) }
    /// The descriptor watched (still the caller's).
    public let fd: Int32

    /// Starts watching `fd` for readability. Call on the loop thread.
    public init(on loop: EventLoop, fd: Int32, _ readable: @escaping (LoopError?) -> Void) throws(LoopError) {
        self.fd = fd
        self.readable = readable
        try super.init(loop: loop, type: UV_POLL, call: "uv_poll_init")
        raw.bindMemory(to: uv_poll_t.self, capacity: 1)
        try check(uv_poll_init(loop.uvLoop, poll, fd), "uv_poll_init", "fd \(fd)")
        adopt()
        let rc = start()
        if rc < 0 {
            close()
            throw LoopError("uv_poll_start", "fd \(fd)", rc)
        }
    }

    /// Stops calling back until `resume` (the descriptor stays registered
    /// with libuv). Idempotent.
    public func pause() {
        loop.assertInLoop()
        guard isOpen, watching else { return }
        uv_poll_stop(poll)
        watching = false
    }

    /// Calls back again when the descriptor is readable. Idempotent.
    public func resume() {
        loop.assertInLoop()
        guard isOpen, !watching else { return }
        if start() == 0 { watching = true }
    }

    private var watching = true

    private func start() -> Int32 {
        uv_poll_start(poll, Int32(UV_READABLE.rawValue)) { handle, status, _ in
            handleObject(handle, as: LoopPoll.self)?.fired(status)
        }
    }

    private func fired(_ status: Int32) {
        guard isOpen else { return }
        if status < 0 {
            let callback = readable
            close()
            callback?(LoopError("uv_poll", "fd \(fd)", status))
            return
        }
        readable?(nil)
    }

    override func didClose() { readable = nil }
}
