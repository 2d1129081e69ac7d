// Listening sockets. Each accepted connection is handed to `onAccept` on the
// loop thread, already established (TCP: no-delay, addresses; Unix: peer
// credentials) and not yet reading.
import CLibUV
import CLmctfyUV
import Glibc
import LmctfySystem

/// What TCP and Unix listeners share: listen, accept, report.
///
/// Thread-safety: loop-affine (see `LoopHandle`).
public class Listener: LoopHandle, @unchecked Sendable {
    // @unchecked Sendable: as LoopHandle; the callbacks are only touched on
    // the loop thread.

    private let transport: Connection.Transport
    private var onAccept: ((Connection) -> Void)?
    private var _onAcceptError: ((LoopError) -> Void)?

    /// Accepting failed (e.g. EMFILE); the listener stays open.
    public var onAcceptError: ((LoopError) -> Void)? {
        get { loop.assertInLoop(); return _onAcceptError }
        set { loop.assertInLoop(); _onAcceptError = newValue }
    }

    /// An accepted connection's descriptor is at 90 % of the open file
    /// limit (RLIMIT_NOFILE, read when the listener was made): the line to
    /// log, at most once a minute. At the limit libuv closes each new
    /// connection at once, saying nothing (its EMFILE trick), so this is
    /// the warning an operator gets.
    public var onNearFileLimit: ((String) -> Void)? {
        get { loop.assertInLoop(); return _onNearFileLimit }
        set { loop.assertInLoop(); _onNearFileLimit = newValue }
    }
    private var _onNearFileLimit: ((String) -> Void)?
    private let fileLimit = Sys.fileLimit
    private var warnedAtMs: UInt64?

    init(loop: EventLoop, transport: Connection.Transport, onAccept: @escaping (Connection) -> Void) throws(LoopError) {
        self.transport = transport
        self.onAccept = onAccept
        let (type, call) = LoopHandle.streamKind(transport)
        try super.init(loop: loop, type: type, call: call)
        try initStream(transport)
    }

    func listen(backlog: Int32, target: String) throws(LoopError) {
        let rc = uv_listen(lm_uv_stream(raw), backlog) { server, status in
            handleObject(server, as: Listener.self)?.incoming(status)
        }
        try check(rc, "uv_listen", target)
    }

    private func incoming(_ status: Int32) {
        guard isOpen else { return }
        if status < 0 {
            _onAcceptError?(LoopError("accept", "", status))
            return
        }
        let connection: Connection
        do {
            connection = try Connection(loop: loop, transport: transport)
        } catch {
            // Only while shutting down (or out of memory): the pending
            // connection stays in the backlog and dies with the listener.
            _onAcceptError?(error)
            return
        }
        let rc = uv_accept(lm_uv_stream(raw), connection.stream)
        if rc < 0 {
            connection.close()
            _onAcceptError?(LoopError("uv_accept", "", rc))
            return
        }
        do {
            try connection.established()
        } catch {
            connection.close()
            _onAcceptError?(error)
            return
        }
        let fd = connection.socketFd
        if fd >= 0, fileLimit > 0, UInt64(fd) >= fileLimit / 10 * 9, let warn = _onNearFileLimit {
            let now = MonotonicClock.milliseconds()
            if warnedAtMs.map({ now - $0 >= 60_000 }) ?? true {
                warnedAtMs = now
                warn("descriptor \(fd) of an open file limit of \(fileLimit) (RLIMIT_NOFILE): at the limit, new connections are closed at once and files cannot be opened")
            }
        }
        onAccept?(connection)
    }

    override func didClose() {
        onAccept = nil
        _onAcceptError = nil
        _onNearFileLimit = nil
    }
}

/// A listening TCP socket.
public final class TcpListener: Listener, @unchecked Sendable {
    // @unchecked Sendable: as LoopHandle; `_address` is only touched on the
    // loop thread.

    private var _address: SocketAddress

    private init(loop: EventLoop, requested: SocketAddress, onAccept: @escaping (Connection) -> Void) throws(LoopError) {
        _address = requested
        try super.init(loop: loop, transport: .tcp, onAccept: onAccept)
    }

    /// The bound address; the port is the real one when 0 was asked for.
    public var address: SocketAddress { loop.assertInLoop(); return _address }
    /// The bound port (the real one when 0 was asked for). Loop thread only.
    public var port: UInt16 { address.port }

    /// Binds `host:port` (numeric; port 0 picks a free port) and listens.
    /// `onAccept` runs on the loop thread for each connection, which is then
    /// the callee's to read from and to close. Call on the loop thread.
    public static func bind(on loop: EventLoop, host: String, port: UInt16, backlog: Int32 = 511,
                            _ onAccept: @escaping (Connection) -> Void) throws(LoopError) -> TcpListener {
        let requested = try SocketAddress(host: host, port: port)
        let listener = try TcpListener(loop: loop, requested: requested, onAccept: onAccept)
        do throws(LoopError) {
            try listener.bindAndListen(backlog: backlog)
        } catch {
            listener.close()
            throw error
        }
        return listener
    }

    private func bindAndListen(backlog: Int32) throws(LoopError) {
        let tcp = raw.assumingMemoryBound(to: uv_tcp_t.self)
        let target = _address.description
        try check(_address.withSockaddr { uv_tcp_bind(tcp, $0, 0) }, "uv_tcp_bind", target)
        try listen(backlog: backlog, target: target)
        guard let bound = SocketAddress.of(tcp, peer: false) else {
            throw LoopError("uv_tcp_getsockname", target, UV_EINVAL.rawValue)
        }
        _address = bound
    }
}

/// A listening Unix socket at a path, with a chosen file mode. A socket file
/// left behind by a dead process is replaced; one some process still listens
/// on is never touched (bind fails with EADDRINUSE), nor is a path that is
/// not a socket. Closing the listener removes its socket file, unless the
/// path meanwhile names another file.
public final class UnixListener: Listener, @unchecked Sendable {
    // @unchecked Sendable: as LoopHandle; `identity` is only touched on the
    // loop thread.

    /// The socket file's path, as given.
    public let path: String
    /// The mode the socket file was given after bind (e.g. 0660).
    public let mode: mode_t
    /// The socket file we bound, to tell it from a later one at the path.
    private var identity: FileIdentity?

    private init(loop: EventLoop, path: String, mode: mode_t, onAccept: @escaping (Connection) -> Void) throws(LoopError) {
        self.path = path
        self.mode = mode
        try super.init(loop: loop, transport: .unix, onAccept: onAccept)
    }

    /// Binds `path` (replacing a stale socket file), sets its mode and
    /// listens. Accepted connections carry the peer's credentials. Call on
    /// the loop thread; the stale check makes a few quick, non-blocking
    /// syscalls on it.
    public static func bind(on loop: EventLoop, path: String, mode: mode_t = 0o600, backlog: Int32 = 511,
                            _ onAccept: @escaping (Connection) -> Void) throws(LoopError) -> UnixListener {
        try loop.checkAcceptsHandles("uv_pipe_bind")
        try checkSocketPath(path, call: "uv_pipe_bind")
        try removeStaleSocket(path)
        let listener = try UnixListener(loop: loop, path: path, mode: mode, onAccept: onAccept)
        do throws(LoopError) {
            try listener.bindAndListen(backlog: backlog)
        } catch {
            listener.close()
            throw error
        }
        return listener
    }

    /// Listens on `fd`, a Unix stream socket already bound to `path` and
    /// listening, handed over by a service manager (SocketActivation). Its
    /// file is the manager's: closing the listener leaves it there, and
    /// connections made until the next start wait in its backlog. Call on
    /// the loop thread.
    public static func adopt(on loop: EventLoop, fd: Int32, path: String, backlog: Int32 = 511,
                             _ onAccept: @escaping (Connection) -> Void) throws(LoopError) -> UnixListener {
        try loop.checkAcceptsHandles("uv_pipe_open")
        let listener = try UnixListener(loop: loop, path: path, mode: 0, onAccept: onAccept)
        do throws(LoopError) {
            try check(uv_pipe_open(listener.raw.assumingMemoryBound(to: uv_pipe_t.self), fd), "uv_pipe_open", path)
            try listener.listen(backlog: backlog, target: path)
        } catch {
            listener.close()
            throw error
        }
        return listener
    }

    /// Unlinks `path` only if it is a socket nobody listens on. Between the
    /// probe and the unlink another process could start listening there; the
    /// window is a few syscalls wide, and the same as in every daemon that
    /// cleans up this way.
    static func removeStaleSocket(_ path: String) throws(LoopError) {
        let existing: FileIdentity?
        do { existing = try Sys.fileIdentity(path) } catch { throw LoopError("lstat", path, error) }
        guard let existing else { return }
        guard existing.type == S_IFSOCK else {
            throw LoopError("uv_pipe_bind", "\(path): exists and is not a socket", UV_EADDRINUSE.rawValue)
        }
        let live: Bool
        do { live = try Sys.unixSocketAccepts(path) } catch { throw LoopError("connect", path, error) }
        if live {
            throw LoopError("uv_pipe_bind", "\(path): a live listener owns it", UV_EADDRINUSE.rawValue)
        }
        do {
            try Sys.unlink(path)
        } catch where error.errno == ENOENT {
            // Gone already: what we wanted.
        } catch {
            throw LoopError("unlink", path, error)
        }
    }

    private func bindAndListen(backlog: Int32) throws(LoopError) {
        let pipe = raw.assumingMemoryBound(to: uv_pipe_t.self)
        try check(uv_pipe_bind(pipe, path), "uv_pipe_bind", path)
        // The file is ours from here on; remember which it is so that close()
        // removes it, even when a later step fails.
        identity = try? Sys.fileIdentity(path)
        // Before listen(): until then a connect() is refused, so nobody gets
        // in under the umask's mode.
        do { try Sys.chmod(path, mode) } catch { throw LoopError("chmod", path, error) }
        try listen(backlog: backlog, target: path)
    }

    override func willClose() {
        if let identity, (try? Sys.fileIdentity(path)) == identity {
            try? Sys.unlink(path)
        }
    }
}

extension LoopError {
    /// A daemon's log line for an accept that failed (`onAcceptError`):
    /// at the open file limit libuv closes the pending connection at once
    /// (its peer sees the connection closed, nothing else), so the log is
    /// where an operator learns why.
    public var acceptFailure: String {
        let why = switch code {
        case UV_EMFILE.rawValue: " (this process's open file limit, RLIMIT_NOFILE \(Sys.fileLimit)): new connections are closed until descriptors are free"
        case UV_ENFILE.rawValue: " (the system's open file limit): new connections are closed until descriptors are free"
        default: ""
        }
        return "cannot accept a connection: \(self)\(why)"
    }
}
