// Syscalls around Unix sockets that LmctfyLoop and LmctfyRPC need outside
// libuv: building the address, deciding whether a socket file is stale,
// restricting its mode, and naming the peer.
import CLmctfyShims
import Glibc

/// Who is on the other end of a Unix socket (SO_PEERCRED): the process that
/// called connect() or listen(), as of that call.
public struct PeerCredentials: Sendable, Equatable, CustomStringConvertible {
    /// The peer's process id (in the caller's pid namespace).
    public var pid: pid_t
    /// The peer's effective user id.
    public var uid: uid_t
    /// The peer's effective (primary) group id.
    public var gid: gid_t
    /// Supplementary groups, where the caller looked them up (SO_PEERCRED
    /// gives only the primary gid).
    public var groups: [gid_t]

    /// Credentials as given (`groups`: the supplementary groups, if looked up).
    public init(pid: pid_t, uid: uid_t, gid: gid_t, groups: [gid_t] = []) {
        self.pid = pid
        self.uid = uid
        self.gid = gid
        self.groups = groups
    }

    public var description: String { "pid \(pid) uid \(uid) gid \(gid)" }
}

/// The address of a Unix-domain socket at a filesystem path (a
/// `sockaddr_un`), built once and checked: a path that does not fit
/// `sun_path` is refused rather than silently truncated (which would bind
/// or dial a different file).
public struct UnixSocketAddress: Sendable {
    /// The longest path that fits: `sun_path` (108 bytes) less its NUL.
    public static let maxPathBytes = MemoryLayout.size(ofValue: sockaddr_un().sun_path) - 1

    /// The filesystem path, as given.
    public let path: String
    private let address: sockaddr_un
    /// The family, the path and its NUL: the length bind/connect are given.
    private let length: socklen_t

    /// The address of `path`. An empty path throws EINVAL (it would name
    /// the abstract namespace, not a file), a path over `maxPathBytes`
    /// ENAMETOOLONG; the error names `call` (the syscall the address was
    /// for) and the path with the limit.
    public init(_ path: String, for call: String) throws(SystemError) {
        let bytes = Array(path.utf8)
        guard !bytes.isEmpty, bytes.count <= Self.maxPathBytes else {
            throw SystemError(call, "\(path): socket paths are 1 to \(Self.maxPathBytes) bytes",
                              bytes.isEmpty ? EINVAL : ENAMETOOLONG)
        }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
        self.path = path
        self.address = address
        self.length = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count + 1)
    }

    /// A listening socket's `unix_socket_path` and `unix_socket_mode` as a
    /// configuration (`source`) gives them, checked as --check-config must:
    /// the path absolute and short enough to bind (a longer one failed only
    /// at start, after the agent's whole restart recovery), the mode a file
    /// mode. Returns the mode.
    public static func checkConfigured(path: String, mode: UInt32, source: String) throws(LmctfyError) -> mode_t {
        guard path.hasPrefix("/") else { throw .invalidArgument("\(source): unix_socket_path \"\(path)\" must be absolute") }
        guard path.utf8.count <= maxPathBytes else {
            throw .invalidArgument("\(source): unix_socket_path is \(path.utf8.count) bytes; a Unix socket's path holds at most \(maxPathBytes)")
        }
        guard mode <= 0o777 else { throw .invalidArgument("\(source): unix_socket_mode \(String(mode, radix: 8)) is not a file mode") }
        return mode_t(mode)
    }

    /// Calls `body` with the address as the `sockaddr` pointer and length
    /// that bind(2) and connect(2) take; the pointer is valid only inside.
    public func withSockaddr<R, E: Error>(_ body: (UnsafePointer<sockaddr>, socklen_t) throws(E) -> R) throws(E) -> R {
        var copy = address
        return try withUnsafePointer(to: &copy) { (p: UnsafePointer<sockaddr_un>) throws(E) -> R in
            try p.withMemoryRebound(to: sockaddr.self, capacity: 1) { (sa: UnsafePointer<sockaddr>) throws(E) -> R in
                try body(sa, length)
            }
        }
    }
}

/// A file's type and identity as lstat(2) sees it; the identity tells "the
/// socket we bound" from one somebody else bound at the same path later.
public struct FileIdentity: Sendable, Equatable {
    /// The file type bits of st_mode (`S_IFSOCK`, `S_IFREG`, ...).
    public var type: mode_t
    /// The device the file is on (st_dev).
    public var device: UInt64
    /// The file's inode number on that device (st_ino).
    public var inode: UInt64
}

extension Sys {
    /// chmod(2) on `path` (follows symlinks), retrying EINTR; throws the SystemError.
    public static func chmod(_ path: String, _ mode: mode_t) throws(SystemError) {
        let (r, e) = retry { Glibc.chmod(path, mode) }
        if r < 0 { throw SystemError("chmod", path, e) }
    }

    /// lstat(2): the link itself, never its target; nil when nothing is there.
    public static func fileIdentity(_ path: String) throws(SystemError) -> FileIdentity? {
        var st = stat()
        let (r, e) = retry { lstat(path, &st) }
        if r < 0 {
            if e == ENOENT || e == ENOTDIR { return nil }
            throw SystemError("lstat", path, e)
        }
        return FileIdentity(type: st.st_mode & S_IFMT, device: UInt64(st.st_dev), inode: UInt64(st.st_ino))
    }

    /// Whether some process accepts connections on the Unix socket at `path`:
    /// false only when the kernel says nobody listens (ECONNREFUSED) or the
    /// file vanished. A full backlog (EAGAIN) counts as listening. The probe
    /// is non-blocking, so it cannot hang on a busy listener; a listener that
    /// is there sees one connection that closes at once.
    public static func unixSocketAccepts(_ path: String) throws(SystemError) -> Bool {
        let address = try UnixSocketAddress(path, for: "connect")
        let type = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        let (fd, socketErrno) = retry { socket(AF_UNIX, type, 0) }
        if fd < 0 { throw SystemError("socket", path, socketErrno) }
        defer { close(fd) }
        // connect() is not retried on EINTR: a retry would report EALREADY/
        // EISCONN; for a Unix socket the outcome is settled by the first call.
        let r = address.withSockaddr { connect(fd, $0, $1) }
        if r == 0 { return true }
        switch Glibc.errno {
        case EAGAIN, EINPROGRESS, EINTR: return true
        case ECONNREFUSED, ENOENT: return false
        case let e: throw SystemError("connect", path, e)
        }
    }

    /// SO_PEERCRED of a connected Unix socket: the one reader of it (the
    /// loop's connections, the RPC client and the tests all come here).
    public static func peerCredentials(_ fd: Int32) throws(SystemError) -> PeerCredentials {
        var c = PeerCredentials(pid: 0, uid: 0, gid: 0)
        if lm_peer_credentials(fd, &c.pid, &c.uid, &c.gid) != 0 {
            throw SystemError("getsockopt(SO_PEERCRED)", "fd \(fd)", Glibc.errno)
        }
        return c
    }
}
