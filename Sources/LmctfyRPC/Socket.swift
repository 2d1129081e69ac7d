// The few socket calls the blocking client needs, each with errno read at
// once and EINTR retried (the LmctfySystem convention). The agent's sockets
// live in LmctfyLoop; these serve lmctl, tests and other Swift programs.
import Glibc
import LmctfySystem

/// Blocking socket calls for RpcClient (lmctl, tests): connect, write all,
/// wait, read (errno read at once, EINTR retried). The descriptors returned
/// are the caller's to close. A failed connect is UNAVAILABLE (a bad Unix
/// socket path INVALID_ARGUMENT).
public enum RpcSocket {
    /// A connected, blocking, close-on-exec Unix stream socket.
    public static func connectUnix(path: String) throws(LmctfyError) -> Int32 {
        let address: UnixSocketAddress
        do {
            address = try UnixSocketAddress(path, for: "connect")
        } catch {
            throw LmctfyError(.invalidArgument, "socket path \(path) is empty or longer than \(UnixSocketAddress.maxPathBytes) bytes")
        }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        if fd < 0 { throw SystemError("socket", path, errno).lmctfy(.unavailable, "cannot connect") }
        let (r, e) = address.withSockaddr { sa, length in Sys.retry { connect(fd, sa, length) } }
        if r < 0 {
            close(fd)
            // The socket file's mode shuts this user out: not the agent
            // being away (14, "try again"), a permission (7).
            let code: StatusCode = e == EACCES || e == EPERM ? .permissionDenied : .unavailable
            throw SystemError("connect", path, e).lmctfy(code, "cannot connect to the agent")
        }
        return fd
    }

    /// A connected, blocking, close-on-exec TCP socket to the first address
    /// of `host` that answers.
    public static func connectTCP(host: String, port: UInt16) throws(LmctfyError) -> Int32 {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_family = AF_UNSPEC
        var list: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, String(port), &hints, &list)
        guard rc == 0, let first = list else {
            throw LmctfyError(.unavailable, "cannot resolve \(host): \(String(cString: gai_strerror(rc)))")
        }
        defer { freeaddrinfo(first) }
        var lastError = SystemError("connect", "\(host):\(port)", ECONNREFUSED)
        var next: UnsafeMutablePointer<addrinfo>? = first
        while let ai = next {
            next = ai.pointee.ai_next
            let fd = socket(ai.pointee.ai_family, ai.pointee.ai_socktype | Int32(SOCK_CLOEXEC.rawValue), ai.pointee.ai_protocol)
            if fd < 0 { lastError = SystemError("socket", "\(host):\(port)", errno); continue }
            let (r, e) = Sys.retry { connect(fd, ai.pointee.ai_addr, ai.pointee.ai_addrlen) }
            if r == 0 { return fd }
            lastError = SystemError("connect", "\(host):\(port)", e)
            close(fd)
        }
        throw lastError.lmctfy(.unavailable, "cannot connect to \(host):\(port)")
    }

    /// Writes everything; MSG_NOSIGNAL so a vanished peer is an error, not SIGPIPE.
    static func sendAll(_ fd: Int32, _ bytes: [UInt8]) throws(SystemError) {
        var offset = 0
        while offset < bytes.count {
            let (n, e) = bytes.withUnsafeBytes { b in
                Sys.retry { send(fd, b.baseAddress! + offset, b.count - offset, Int32(MSG_NOSIGNAL)) }
            }
            if n < 0 { throw SystemError("send", "fd \(fd)", e) }
            offset += n
        }
    }

    /// Waits until `fd` is readable or `timeoutMs` passes (-1: forever).
    static func waitReadable(_ fd: Int32, timeoutMs: Int32) throws(SystemError) -> Bool {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let (n, e) = Sys.retry { poll(&p, 1, timeoutMs) }
        if n < 0 { throw SystemError("poll", "fd \(fd)", e) }
        return n > 0
    }

    /// One read; 0 at end of stream.
    static func receive(_ fd: Int32, into buffer: inout [UInt8]) throws(SystemError) -> Int {
        let (n, e) = buffer.withUnsafeMutableBytes { b in Sys.retry { recv(fd, b.baseAddress, b.count, 0) } }
        if n < 0 { throw SystemError("recv", "fd \(fd)", e) }
        return n
    }
}
