// A connected TCP or Unix stream socket. Bytes arrive through callbacks on
// the loop thread; writes are queued by libuv and complete later, and the
// queue is visible so a producer can stop when the peer does not read.
import CLibUV
import CLmctfyUV
import Glibc
import LmctfySystem

/// A connected stream: accepted by a listener or dialled.
///
/// Reading starts when `resumeReading()` is called, so callbacks can be set
/// first. On end of stream `onEOF` runs (without one the connection closes);
/// on a read or write error `onError` runs and the connection closes. The
/// connection stays open, even when no Swift reference is left, until
/// `close()`, one of those, or loop shutdown; callbacks are dropped after
/// `onClose`, which breaks any cycle through a captured reference.
///
/// Thread-safety: loop-affine (see `LoopHandle`).
public final class Connection: LoopHandle, @unchecked Sendable {
    // @unchecked Sendable: as LoopHandle; all mutable state below is only
    // touched on the loop thread (the public accessors check).

    /// Which kind of socket the connection is: TCP, or a Unix stream socket.
    public enum Transport: Sendable { case tcp, unix }

    /// Whether this is a TCP or a Unix-socket connection (fixed at creation;
    /// readable from any thread).
    public let transport: Transport
    private var _peerCredentials: PeerCredentials?
    /// The socket's descriptor once connected (-1 before): for a look
    /// from another thread at whether the peer hung up
    /// (`Sys.peerHasHungUp`), never to read or write.
    public private(set) var socketFd: Int32 = -1
    private var _localAddress: SocketAddress?
    private var _remoteAddress: SocketAddress?
    private var _onRead: ((Connection, [UInt8]) -> Void)?
    private var _onEOF: ((Connection) -> Void)?
    private var _onError: ((Connection, LoopError) -> Void)?
    private var _onDrain: ((Connection) -> Void)?
    private var reading = false
    private var sawEOF = false
    private var closeWhenFlushed = false
    private var _pendingWrites = 0
    private var _bytesReceived: UInt64 = 0
    private var _bytesSent: UInt64 = 0

    var stream: UnsafeMutablePointer<uv_stream_t> { lm_uv_stream(raw) }

    init(loop: EventLoop, transport: Transport) throws(LoopError) {
        self.transport = transport
        let (type, call) = LoopHandle.streamKind(transport)
        try super.init(loop: loop, type: type, call: call)
        try initStream(transport)
    }

    // MARK: Callbacks and state (loop thread)

    /// Each chunk as it arrives; the array is the caller's to keep.
    public var onRead: ((Connection, [UInt8]) -> Void)? {
        get { loop.assertInLoop(); return _onRead }
        set { loop.assertInLoop(); _onRead = newValue }
    }
    /// The peer finished sending. Without this callback the connection closes.
    public var onEOF: ((Connection) -> Void)? {
        get { loop.assertInLoop(); return _onEOF }
        set { loop.assertInLoop(); _onEOF = newValue }
    }
    /// A read or write failed (not a cancellation); the connection closes
    /// right after.
    public var onError: ((Connection, LoopError) -> Void)? {
        get { loop.assertInLoop(); return _onError }
        set { loop.assertInLoop(); _onError = newValue }
    }
    /// Every queued write has completed (pendingWriteCount fell to 0).
    public var onDrain: ((Connection) -> Void)? {
        get { loop.assertInLoop(); return _onDrain }
        set { loop.assertInLoop(); _onDrain = newValue }
    }

    /// Unix sockets: the peer process (SO_PEERCRED), read when the connection
    /// was accepted or established; nil for TCP.
    public var peerCredentials: PeerCredentials? { loop.assertInLoop(); return _peerCredentials }
    /// TCP: our end's address; nil for Unix sockets.
    public var localAddress: SocketAddress? { loop.assertInLoop(); return _localAddress }
    /// TCP: the peer's address; nil for Unix sockets.
    public var remoteAddress: SocketAddress? { loop.assertInLoop(); return _remoteAddress }
    /// Whether reading is on (between `startReading` and `stopReading`, EOF or
    /// closing). Loop thread only.
    public var isReading: Bool { loop.assertInLoop(); return reading }
    /// Bytes handed to write() that the kernel has not taken yet.
    public var bytesQueued: Int {
        loop.assertInLoop()
        return isOpen ? uv_stream_get_write_queue_size(stream) : 0
    }
    /// Writes whose completion has not been reported yet.
    public var pendingWriteCount: Int { loop.assertInLoop(); return _pendingWrites }
    /// Bytes read from the peer so far. Loop thread only.
    public var bytesReceived: UInt64 { loop.assertInLoop(); return _bytesReceived }
    /// Bytes of completed writes.
    public var bytesSent: UInt64 { loop.assertInLoop(); return _bytesSent }

    /// A name for messages: the peer address or credentials.
    var peerName: String {
        switch transport {
        case .tcp: _remoteAddress?.description ?? "tcp"
        case .unix: _peerCredentials.map { "unix peer \($0)" } ?? "unix"
        }
    }

    /// Called once the stream is connected (accepted or dialled).
    func established() throws(LoopError) {
        var fd: uv_os_fd_t = -1
        if uv_fileno(uvHandle, &fd) == 0 { socketFd = fd }
        switch transport {
        case .tcp:
            let tcp = raw.assumingMemoryBound(to: uv_tcp_t.self)
            // RPC traffic is small request/response frames; Nagle plus
            // delayed ACKs would add up to 40 ms to each.
            try check(uv_tcp_nodelay(tcp, 1), "uv_tcp_nodelay")
            _localAddress = SocketAddress.of(tcp, peer: false)
            _remoteAddress = SocketAddress.of(tcp, peer: true)
        case .unix:
            try check(uv_fileno(uvHandle, &fd), "uv_fileno")
            do {
                _peerCredentials = try Sys.peerCredentials(fd)
            } catch {
                throw LoopError("getsockopt(SO_PEERCRED)", "fd \(fd)", error)
            }
        }
    }

    // MARK: Reading

    /// Starts (or restarts) delivering data to `onRead`. No-op when already
    /// reading, after EOF or once closing.
    public func resumeReading() {
        loop.assertInLoop()
        guard isOpen, !reading, !sawEOF else { return }
        let rc = uv_read_start(stream, { handle, _, buf in
            guard let buf, let loop = handleObject(handle, as: Connection.self)?.loop else { return }
            buf.pointee = uv_buf_init(loop.readBuffer.assumingMemoryBound(to: CChar.self),
                                      UInt32(EventLoop.readBufferSize))
        }, { stream, nread, buf in
            handleObject(stream, as: Connection.self)?.didRead(nread, buf?.pointee.base)
        })
        if rc < 0 {
            fail(LoopError("uv_read_start", peerName, rc))
        } else {
            reading = true
        }
    }

    /// Stops delivering data until `resumeReading()`; the kernel buffers what
    /// arrives and, once full, the peer's writes stall (TCP flow control).
    public func pauseReading() {
        loop.assertInLoop()
        guard isOpen, reading else { return }
        uv_read_stop(stream)
        reading = false
    }

    private func didRead(_ nread: Int, _ base: UnsafeMutablePointer<CChar>?) {
        if nread > 0, let base {
            _bytesReceived += UInt64(nread)
            let chunk = [UInt8](UnsafeRawBufferPointer(start: base, count: nread))
            _onRead?(self, chunk)
        } else if nread == Int(UV_EOF.rawValue) {
            // libuv has stopped reading already.
            reading = false
            sawEOF = true
            if let onEOF = _onEOF { onEOF(self) } else { close() }
        } else if nread < 0 {
            fail(LoopError("read", peerName, Int32(truncatingIfNeeded: nread)))
        }
        // nread == 0: EAGAIN, nothing to deliver.
    }

    /// Reports an error once and closes.
    private func fail(_ error: LoopError) {
        guard isOpen else { return }
        if reading {
            uv_read_stop(stream)
            reading = false
        }
        _onError?(self, error)
        close()
    }

    // MARK: Writing

    /// Sends `bytes`, queueing (a copy of) what the kernel does not take at
    /// once. `completion` runs exactly once on the loop thread: with nil once
    /// the kernel took every byte (before write returns when it took them
    /// at once), with ECANCELED when the connection closed first, or with the
    /// error (the connection then closes and `onError` runs too). When the
    /// connection is not open, or `closeAfterWrites()` was called, it fails
    /// at once, before write returns.
    public func write(_ bytes: [UInt8], completion: ((Connection, LoopError?) -> Void)? = nil) {
        loop.assertInLoop()
        guard isOpen, !closeWhenFlushed else {
            completion?(self, LoopError("uv_write", peerName, UV_ECANCELED.rawValue))
            return
        }
        guard bytes.count <= Int(UInt32.max) else {
            completion?(self, LoopError("uv_write", "\(bytes.count) bytes in one write", UV_EINVAL.rawValue))
            return
        }
        // Nothing queued (so nothing is overtaken): hand the bytes to the
        // kernel now. Most writes go whole this way, without a request, a
        // copy, or the EPOLL_CTL_MOD libuv makes after every uv_write.
        var taken = 0
        if _pendingWrites == 0 {
            let n = bytes.withUnsafeBytes { raw -> Int32 in
                var buf = uv_buf_init(UnsafeMutablePointer(mutating: raw.baseAddress?.assumingMemoryBound(to: CChar.self)),
                                      UInt32(raw.count))
                return uv_try_write(stream, &buf, 1)
            }
            if n >= 0 {
                taken = Int(n)
                _bytesSent += UInt64(taken)
                if taken == bytes.count {
                    completion?(self, nil)
                    return
                }
            } else if n != UV_EAGAIN.rawValue {
                let error = LoopError("uv_try_write", peerName, n)
                completion?(self, error)
                fail(error)
                return
            }
        }
        let request = WriteRequest(connection: self, bytes: taken == 0 ? bytes : Array(bytes[taken...]), completion: completion)
        var buf = uv_buf_init(request.bytes.assumingMemoryBound(to: CChar.self), UInt32(request.count))
        // libuv copies the uv_buf_t array itself; only the bytes must live
        // until the callback, and the request owns them.
        let rc = uv_write(request.req, stream, &buf, 1) { req, status in
            guard let req, let data = req.pointee.data else { return }
            Unmanaged<WriteRequest>.fromOpaque(data).takeRetainedValue().finished(status)
        }
        if rc < 0 {
            // The callback will not run: take back the retain it would have.
            Unmanaged<WriteRequest>.fromOpaque(request.req.pointee.data).release()
            let error = LoopError("uv_write", peerName, rc)
            completion?(self, error)
            fail(error)
            return
        }
        _pendingWrites += 1
    }

    fileprivate func writeFinished(count: Int, status: Int32, completion: ((Connection, LoopError?) -> Void)?) {
        _pendingWrites -= 1
        if status == 0 {
            _bytesSent += UInt64(count)
            completion?(self, nil)
        } else {
            let error = LoopError("uv_write", peerName, status)
            completion?(self, error)
            if !error.isCancelled { fail(error) }
        }
        guard _pendingWrites == 0, isOpen else { return }
        if closeWhenFlushed { close() } else { _onDrain?(self) }
    }

    // MARK: Closing

    /// Stops reading and closes once every write queued so far has completed
    /// (at once when none is pending). Writes after this fail with ECANCELED.
    public func closeAfterWrites() {
        loop.assertInLoop()
        guard isOpen else { return }
        pauseReading()
        if _pendingWrites == 0 { close() } else { closeWhenFlushed = true }
    }

    override func didClose() {
        reading = false
        _onRead = nil
        _onEOF = nil
        _onError = nil
        _onDrain = nil
    }

    // MARK: Dialling

    /// Connects to a numeric address (names are not resolved on the loop).
    /// `completion` runs once on the loop thread with the connected
    /// connection or the error. The returned connection is not usable until
    /// then; closing it abandons the attempt (completion gets ECANCELED).
    /// Throws at once for a bad address or when the loop is shutting down.
    /// Call on the loop thread.
    @discardableResult
    public static func dialTCP(on loop: EventLoop, host: String, port: UInt16,
                               _ completion: @escaping (Result<Connection, LoopError>) -> Void) throws(LoopError) -> Connection {
        let address = try SocketAddress(host: host, port: port)
        let connection = try Connection(loop: loop, transport: .tcp)
        let request = ConnectRequest(connection: connection, target: address.description, completion: completion)
        let tcp = connection.raw.assumingMemoryBound(to: uv_tcp_t.self)
        let rc = address.withSockaddr { sa in
            uv_tcp_connect(request.req, tcp, sa) { req, status in
                guard let req, let data = req.pointee.data else { return }
                Unmanaged<ConnectRequest>.fromOpaque(data).takeRetainedValue().finished(status)
            }
        }
        if rc < 0 {
            Unmanaged<ConnectRequest>.fromOpaque(request.req.pointee.data).release()
            connection.close()
            throw LoopError("uv_tcp_connect", address.description, rc)
        }
        return connection
    }

    /// Connects to the Unix socket at `path`; otherwise as `dialTCP`.
    @discardableResult
    public static func dialUnix(on loop: EventLoop, path: String,
                                _ completion: @escaping (Result<Connection, LoopError>) -> Void) throws(LoopError) -> Connection {
        try checkSocketPath(path, call: "uv_pipe_connect")
        let connection = try Connection(loop: loop, transport: .unix)
        let request = ConnectRequest(connection: connection, target: path, completion: completion)
        let pipe = connection.raw.assumingMemoryBound(to: uv_pipe_t.self)
        // Reports every failure through the callback.
        uv_pipe_connect(request.req, pipe, path) { req, status in
            guard let req, let data = req.pointee.data else { return }
            Unmanaged<ConnectRequest>.fromOpaque(data).takeRetainedValue().finished(status)
        }
        return connection
    }
}

/// libuv 1.44 silently truncates a socket path longer than sun_path holds
/// (binding or dialling a different one): refuse it first, with the one
/// check every Unix address goes through.
func checkSocketPath(_ path: String, call: String) throws(LoopError) {
    do {
        _ = try UnixSocketAddress(path, for: call)
    } catch {
        throw LoopError(call, error.path, error)
    }
}

/// One uv_write: the request, a copy of the bytes, and what to call back.
/// `req.data` holds a retain of this object from uv_write to its callback.
private final class WriteRequest {
    let connection: Connection
    let req: UnsafeMutablePointer<uv_write_t>
    let bytes: UnsafeMutableRawPointer
    let count: Int
    let completion: ((Connection, LoopError?) -> Void)?

    init(connection: Connection, bytes source: [UInt8], completion: ((Connection, LoopError?) -> Void)?) {
        self.connection = connection
        self.completion = completion
        count = source.count
        let copy = UnsafeMutableRawPointer.allocate(byteCount: max(1, source.count), alignment: 1)
        source.withUnsafeBytes { if let base = $0.baseAddress { copy.copyMemory(from: base, byteCount: $0.count) } }
        bytes = copy
        req = .allocate(capacity: 1)
        req.initialize(to: uv_write_t())
        req.pointee.data = Unmanaged.passRetained(self).toOpaque()
    }

    deinit {
        req.deinitialize(count: 1)
        req.deallocate()
        bytes.deallocate()
    }

    func finished(_ status: Int32) {
        connection.writeFinished(count: count, status: status, completion: completion)
    }
}

/// One connect attempt; `req.data` holds a retain of it until the callback.
private final class ConnectRequest {
    let connection: Connection
    let target: String
    let req: UnsafeMutablePointer<uv_connect_t>
    let completion: (Result<Connection, LoopError>) -> Void

    init(connection: Connection, target: String, completion: @escaping (Result<Connection, LoopError>) -> Void) {
        self.connection = connection
        self.target = target
        self.completion = completion
        req = .allocate(capacity: 1)
        req.initialize(to: uv_connect_t())
        req.pointee.data = Unmanaged.passRetained(self).toOpaque()
    }

    deinit {
        req.deinitialize(count: 1)
        req.deallocate()
    }

    func finished(_ status: Int32) {
        var status = status
        if status == 0 && !connection.isOpen { status = UV_ECANCELED.rawValue }
        if status == 0 {
            do {
                try connection.established()
                completion(.success(connection))
            } catch {
                connection.close()
                completion(.failure(error))
            }
        } else {
            connection.close()
            completion(.failure(LoopError(connection.transport == .tcp ? "uv_tcp_connect" : "uv_pipe_connect",
                                          target, status)))
        }
    }
}
