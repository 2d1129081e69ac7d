// The lifetime rule every handle wrapper follows (libuv docs, handle.rst):
// the memory of a handle and whatever its callbacks reach must stay valid
// until its close callback has run. So: handle.data holds a *retain* of the
// Swift object from the moment libuv knows the handle until the close
// callback, which frees the handle memory and drops that retain, exactly
// once. Dropping every Swift reference to an open handle therefore never
// frees it; close() (or loop shutdown) does.
import CLibUV
import CLmctfyUV

/// The object whose retain a handle's `data` holds, for C callbacks. The
/// field is read by libuv's accessor, in C: the memory is bound to the
/// concrete uv_xxx_t, and Swift may not load it through a pointer to another
/// struct type (uv_handle_t, uv_stream_t) the way C code does.
func handleObject<T: LoopHandle>(_ handle: UnsafeMutableRawPointer?, as _: T.Type) -> T? {
    guard let handle, let data = uv_handle_get_data(lm_uv_handle(handle)) else { return nil }
    return Unmanaged<T>.fromOpaque(data).takeUnretainedValue()
}

/// The common part of a libuv handle wrapper: memory, close, registration.
/// Not subclassable outside this module.
///
/// Thread-safety: loop-affine. Methods must be called on the owning loop's
/// thread (they check); `isClosed` may also be read after `shutdown()`.
public class LoopHandle: @unchecked Sendable {
    // @unchecked Sendable: a reference may travel to another thread (to be
    // handed back through `loop.execute`), but every method that touches
    // state first asserts it runs on the loop thread, so no state is ever
    // accessed from two threads.

    private enum State { case fresh, open, closing, closed }

    /// The loop that owns the handle.
    public let loop: EventLoop
    /// The uv_xxx_t, uv_handle_size(type) bytes; freed in the close callback.
    let raw: UnsafeMutableRawPointer
    private var state = State.fresh

    /// Called on the loop thread once libuv has closed the handle, after
    /// the handle's own close work; cleared afterwards.
    public var onClose: (() -> Void)? {
        get { loop.assertInLoop(); return _onClose }
        set { loop.assertInLoop(); _onClose = newValue }
    }
    private var _onClose: (() -> Void)?

    init(loop: EventLoop, type: uv_handle_type, call: String) throws(LoopError) {
        try loop.checkAcceptsHandles(call)
        self.loop = loop
        raw = .allocate(byteCount: uv_handle_size(type), alignment: 16)
        raw.initializeMemory(as: UInt8.self, repeating: 0, count: uv_handle_size(type))
        loop.objectCreated()
    }

    deinit {
        // Only a handle libuv never knew (its init failed) still has memory:
        // adopted handles are retained by libuv until their close callback.
        if state == .fresh { raw.deallocate() }
        loop.objectDestroyed()
    }

    var uvHandle: UnsafeMutablePointer<uv_handle_t> { lm_uv_handle(raw) }

    /// The handle type and init call of a TCP or Unix-socket stream (for
    /// connections and listeners alike).
    static func streamKind(_ transport: Connection.Transport) -> (uv_handle_type, String) {
        switch transport {
        case .tcp: (UV_TCP, "uv_tcp_init")
        case .unix: (UV_NAMED_PIPE, "uv_pipe_init")
        }
    }

    /// uv_tcp_init / uv_pipe_init on our memory, then adopt().
    func initStream(_ transport: Connection.Transport) throws(LoopError) {
        switch transport {
        case .tcp:
            try check(uv_tcp_init(loop.uvLoop, raw.bindMemory(to: uv_tcp_t.self, capacity: 1)), "uv_tcp_init")
        case .unix:
            try check(uv_pipe_init(loop.uvLoop, raw.bindMemory(to: uv_pipe_t.self, capacity: 1), 0), "uv_pipe_init")
        }
        adopt()
    }

    /// After a successful uv_xxx_init: libuv now holds the handle, so it
    /// holds a retain of us, and shutdown knows to close it.
    func adopt() {
        state = .open
        uv_handle_set_data(uvHandle, Unmanaged.passRetained(self).toOpaque())
        loop.register(self)
    }

    /// Open: not closed and not being closed. Operations on a handle that is
    /// not open are no-ops (or fail with ECANCELED), never libuv calls.
    public var isOpen: Bool {
        loop.assertInLoop()
        return state == .open
    }

    /// True once close() was called (the close callback may still be due).
    public var isClosing: Bool {
        loop.assertInLoop()
        return state == .closing || state == .closed
    }

    /// True once the close callback ran. Readable on the loop thread and,
    /// without a race, after the loop's `shutdown()` returned.
    public var isClosed: Bool {
        precondition(loop.inLoop || loop.loopCloseResult != nil, "\(loop.name): isClosed read off the loop while it runs")
        return state == .closed
    }

    /// Starts closing the handle: libuv stops it now and calls back on a
    /// later loop iteration, which frees it and calls `onClose`. Idempotent.
    public func close() {
        loop.assertInLoop()
        guard state == .open else { return }
        state = .closing
        willClose()
        uv_close(uvHandle) { handle in
            guard let handle, let data = uv_handle_get_data(handle) else { return }
            uv_handle_set_data(handle, nil)
            Unmanaged<LoopHandle>.fromOpaque(data).takeRetainedValue().closed()
        }
    }

    /// The close callback, with the retain libuv held now ours.
    private func closed() {
        state = .closed
        raw.deallocate()
        loop.deregister(self)
        didClose()
        let callback = _onClose
        _onClose = nil
        callback?()
    }

    /// Subclass hook just before uv_close (the handle is still usable).
    func willClose() {}

    /// Subclass hook in the close callback (the handle memory is gone):
    /// drop every callback, which breaks cycles through captured references.
    func didClose() {}
}
