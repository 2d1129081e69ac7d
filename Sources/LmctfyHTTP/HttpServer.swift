// A small HTTP/1.1 server on the agent's (or the controller's) libuv loop:
// libmicrohttpd does the HTTP (parsing, limits, keep-alive, errors for
// malformed requests) in its external-epoll mode, with no thread of its
// own; the loop watches MHD's epoll descriptor with a uv_poll, runs MHD
// when it is readable and keeps MHD's timeouts with a timer. The handler
// is therefore called on the loop thread and may read loop-confined state
// directly. Why libmicrohttpd and not libh2o: README "Prometheus metrics".
import CLmctfyHTTP
import Glibc
import LmctfyLoop
import LmctfySystem

/// One HTTP answer.
public struct HttpReply: Sendable {
    public var status: UInt32
    public var contentType: String
    public var body: [UInt8]

    public init(status: UInt32, contentType: String = "text/plain; charset=utf-8", body: [UInt8]) {
        self.status = status
        self.contentType = contentType
        self.body = body
    }

    public init(status: UInt32, text: String) {
        self.init(status: status, body: Array(text.utf8))
    }
}

/// Where an HTTP server listens.
public enum HttpAddress: Sendable, Equatable, CustomStringConvertible {
    case tcp(host: String, port: UInt16)
    /// `group`: the socket file's group (nil: the process's).
    case unix(path: String, mode: mode_t, group: gid_t? = nil)

    public var description: String {
        switch self {
        case .tcp(let host, let port): host.contains(":") ? "tcp:[\(host)]:\(port)" : "tcp:\(host):\(port)"
        case .unix(let path, _, _): "unix:\(path)"
        }
    }
}

/// An HTTP server driven by an EventLoop. Create, use and stop it on the
/// loop thread (loop-affine like the loop's handles).
public final class HttpServer: @unchecked Sendable {
    // @unchecked Sendable: every member is touched on the loop thread only.
    public typealias Handler = (_ method: String, _ path: String) -> HttpReply

    private let loop: EventLoop
    private var server: OpaquePointer?
    private var poll: LoopPoll?
    private var timer: LoopTimer?
    private var handler: Handler?
    /// The TCP port bound (a port of 0 picks one); nil on a Unix socket.
    public let port: UInt16?
    /// The Unix socket file we bound (removed on stop if still ours).
    private let unixPath: String?
    private var identity: FileIdentity?
    /// Requests answered (for tests and the benchmark).
    public private(set) var requests = 0

    /// Binds `address` and starts serving `handler`'s answers. A Unix
    /// socket file left by a dead process is replaced; one somebody listens
    /// on is refused. Call on the loop thread.
    public init(on loop: EventLoop, address: HttpAddress, connectionLimit: UInt32 = 64, idleTimeoutSeconds: UInt32 = 30,
                requestBytes: Int = 16384, handler: @escaping Handler) throws(LmctfyError) {
        loop.assertInLoop()
        self.loop = loop
        self.handler = handler
        var step: UnsafePointer<CChar>?
        let fd: Int32
        switch address {
        case .tcp(let host, let port):
            var bound: UInt16 = 0
            fd = lm_http_listen_tcp(host, port, &bound, &step)
            self.port = bound
            self.unixPath = nil
        case .unix(let path, let mode, let group):
            try Self.removeStaleSocket(path)
            fd = lm_http_listen_unix(path, UInt32(mode), group ?? UInt32.max, &step)
            self.port = nil
            self.unixPath = path
        }
        guard fd >= 0 else {
            let call = step.map { String(cString: $0) } ?? "listen"
            throw LmctfyError(fd == -EADDRINUSE ? .alreadyExists : .failedPrecondition,
                              "Metrics endpoint \(address): \(call): \(String(cString: strerror(-fd)))", errno: -fd)
        }
        if let unixPath { identity = try? Sys.fileIdentity(unixPath) }
        let context = Unmanaged.passUnretained(self).toOpaque()
        guard let s = lm_http_start(fd, connectionLimit, idleTimeoutSeconds, requestBytes, { context, method, path, reply in
            guard let context, let method, let path, let reply else { return }
            let me = Unmanaged<HttpServer>.fromOpaque(context).takeUnretainedValue()
            me.answer(String(cString: method), String(cString: path), reply)
        }, context) else {
            removeSocketFile()
            throw LmctfyError(.internal, "Metrics endpoint \(address): MHD_start_daemon failed")
        }
        server = s
        do {
            poll = try LoopPoll(on: loop, fd: lm_http_epoll_fd(s)) { [unowned self] error in
                if error == nil { self.run() }
            }
            // MHD's own deadlines (idle connections) are in seconds: a
            // one-second tick keeps them without re-arming per run.
            timer = try LoopTimer.repeating(on: loop, every: .seconds(1)) { [unowned self] _ in self.run() }
        } catch {
            stop()
            throw LmctfyError(.internal, "Metrics endpoint \(address): \(error)")
        }
    }

    deinit {
        if server != nil { lm_http_stop(server) }
    }

    /// Closes every connection and the listener (and removes the socket
    /// file if it is still ours). Idempotent; loop thread.
    public func stop() {
        poll?.close()
        poll = nil
        timer?.cancel()
        timer = nil
        if let server { lm_http_stop(server) }
        server = nil
        handler = nil
        removeSocketFile()
    }

    private func run() {
        guard let server else { return }
        // MHD handles a bounded number of ready sockets per run and says
        // (timeout 0) when more are ready: run again then, a few times,
        // before giving the loop back.
        for _ in 0..<8 {
            _ = lm_http_run(server)
            if lm_http_timeout_ms(server) != 0 { return }
        }
        _ = try? LoopTimer.once(on: loop, after: .zero) { [weak self] in self?.run() }
    }

    private func answer(_ method: String, _ path: String, _ out: UnsafeMutablePointer<lm_http_reply>) {
        requests += 1
        let reply = handler?(method, path) ?? HttpReply(status: 503, text: "stopping\n")
        out.pointee.status = reply.status
        out.pointee.content_type = Self.contentType(reply.contentType)
        if reply.body.isEmpty {
            out.pointee.body = nil
            out.pointee.length = 0
            return
        }
        guard let body = malloc(reply.body.count) else {
            out.pointee.status = 500
            return
        }
        reply.body.withUnsafeBytes { body.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        out.pointee.body = body.assumingMemoryBound(to: CChar.self)
        out.pointee.length = reply.body.count
    }

    /// MHD copies the header value; the C string must live only through
    /// the call, but the reply struct outlives this function: the few
    /// content types in use are kept as static C strings.
    private static func contentType(_ type: String) -> UnsafePointer<CChar> {
        switch type {
        case MetricsText.contentType: return MetricsText.contentTypeC
        default: return HttpServer.plainC
        }
    }
    private nonisolated(unsafe) static let plainC: UnsafePointer<CChar> = UnsafePointer(strdup("text/plain; charset=utf-8")!)

    private func removeSocketFile() {
        if let unixPath, let identity, (try? Sys.fileIdentity(unixPath)) == identity {
            try? Sys.unlink(unixPath)
        }
        identity = nil
    }

    /// Unlinks `path` only if it is a socket nobody listens on.
    static func removeStaleSocket(_ path: String) throws(LmctfyError) {
        let existing: FileIdentity?
        do { existing = try Sys.fileIdentity(path) } catch { throw LmctfyError(.failedPrecondition, "Metrics endpoint unix:\(path): lstat: \(error)") }
        guard let existing else { return }
        guard existing.type == S_IFSOCK else {
            throw LmctfyError(.alreadyExists, "Metrics endpoint unix:\(path): exists and is not a socket")
        }
        if (try? Sys.unixSocketAccepts(path)) == true {
            throw LmctfyError(.alreadyExists, "Metrics endpoint unix:\(path): a live listener owns it")
        }
        try? Sys.unlink(path)
    }
}

extension HttpAddress {
    /// Parses an endpoint address: "host:port" with a numeric IPv4 host,
    /// "[v6]:port", or "unix:/absolute/path". A TCP address that is not
    /// loopback (127.0.0.0/8, ::1) is refused unless `allowNonLoopback`:
    /// the endpoint has neither authentication nor TLS of its own.
    /// `what` names the setting in errors.
    public static func parse(_ text: String, unixMode: mode_t, unixGroup: gid_t? = nil, allowNonLoopback: Bool,
                             what: String) throws(LmctfyError) -> HttpAddress {
        if text.hasPrefix("unix:") {
            let path = String(text.dropFirst(5))
            guard path.hasPrefix("/"), path.utf8.count < 108 else {
                throw .invalidArgument("\(what): a Unix socket path must be absolute and under 108 bytes, not \"\(path)\"")
            }
            guard unixMode <= 0o777 else { throw .invalidArgument("\(what): \(String(unixMode, radix: 8)) is not a file mode") }
            return .unix(path: path, mode: unixMode, group: unixGroup)
        }
        guard let colon = text.lastIndex(of: ":"), let port = UInt16(text[text.index(after: colon)...]) else {
            throw .invalidArgument("\(what) must be host:port or unix:/path, not \"\(text)\"")
        }
        var host = String(text[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        var v4 = in_addr()
        var v6 = in6_addr()
        let loopback: Bool
        if inet_pton(AF_INET, host, &v4) == 1 {
            loopback = (UInt32(bigEndian: v4.s_addr) >> 24) == 127
        } else if inet_pton(AF_INET6, host, &v6) == 1 {
            loopback = host == "::1" || withUnsafeBytes(of: v6) { b in b.prefix(15).allSatisfy { $0 == 0 } && b[15] == 1 }
        } else {
            throw .invalidArgument("\(what): the host must be a numeric IPv4 or [IPv6] address, not \"\(host)\"")
        }
        if !loopback && !allowNonLoopback {
            throw .invalidArgument("\(what) \(text) is not a loopback address: the metrics endpoint has no authentication and no TLS; use 127.0.0.1, a unix: socket, or set allow_non_loopback: true to expose it anyway")
        }
        return .tcp(host: host, port: port)
    }

    /// Whether this is TCP on a loopback address (or a Unix socket).
    public var isLocal: Bool {
        switch self {
        case .unix: return true
        case .tcp(let host, _):
            var v4 = in_addr()
            if inet_pton(AF_INET, host, &v4) == 1 { return (UInt32(bigEndian: v4.s_addr) >> 24) == 127 }
            var v6 = in6_addr()
            return inet_pton(AF_INET6, host, &v6) == 1 && withUnsafeBytes(of: v6) { b in b.prefix(15).allSatisfy { $0 == 0 } && b[15] == 1 }
        }
    }
}
