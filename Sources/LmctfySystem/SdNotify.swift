// sd_notify(3) without libsystemd: systemd (Type=notify) passes the path of
// a datagram socket in NOTIFY_SOCKET; a service says READY=1 once it serves
// and STOPPING=1 when it begins to stop, each one datagram of text. The
// protocol is a few lines; linking libsystemd for it would be a dependency
// for nothing (and the agent must run where there is no systemd at all).
import Glibc

/// The service manager's notification socket, read once from NOTIFY_SOCKET
/// at start (then removed from the environment, so that the processes the
/// agent starts in containers do not inherit it and cannot speak for us).
public enum SdNotify {
    private static let target = Mutexed<String?>(nil)

    /// Reads NOTIFY_SOCKET, keeps it, and unsets it. Call once, first thing
    /// in main; without NOTIFY_SOCKET every `notify` does nothing.
    public static func captureFromEnvironment() {
        guard let p = getenv("NOTIFY_SOCKET") else { return }
        let path = String(cString: p)
        unsetenv("NOTIFY_SOCKET")
        target.locked { $0 = path.isEmpty ? nil : path }
    }

    /// Whether a service manager asked for notifications.
    public static var isEnabled: Bool { target.locked { $0 != nil } }

    /// Sends `state` (e.g. "READY=1", "STOPPING=1", "STATUS=...") to the
    /// socket captured at start; nothing when there is none. Failures are
    /// returned, not thrown: a manager that went away must not stop us.
    @discardableResult
    public static func notify(_ state: String) -> SystemError? {
        guard let path = target.locked({ $0 }) else { return nil }
        return send(state, to: path)
    }

    /// One datagram `state` to the socket at `path`: a filesystem path, or
    /// an abstract address when it starts with "@" (as systemd allows).
    public static func send(_ state: String, to path: String) -> SystemError? {
        var bytes = Array(path.utf8)
        guard !bytes.isEmpty, bytes.count <= MemoryLayout.size(ofValue: sockaddr_un().sun_path) - 1,
              bytes[0] == UInt8(ascii: "/") || bytes[0] == UInt8(ascii: "@") else {
            return SystemError("sd_notify", "NOTIFY_SOCKET \"\(path)\": not an absolute or abstract socket path", EINVAL)
        }
        let abstract = bytes[0] == UInt8(ascii: "@")
        if abstract { bytes[0] = 0 }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
        // An abstract name has no terminating NUL: its length is exact.
        let length = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count + (abstract ? 0 : 1))
        let (fd, e) = Sys.retry { socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
        if fd < 0 { return SystemError("socket", path, e) }
        defer { close(fd) }
        let message = Array(state.utf8)
        let (n, sendErrno) = message.withUnsafeBytes { m in
            withUnsafePointer(to: &address) { a in
                a.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                    Sys.retry { sendto(fd, m.baseAddress, m.count, Int32(MSG_NOSIGNAL), sa, length) }
                }
            }
        }
        if n < 0 { return SystemError("sendto", path, sendErrno) }
        return nil
    }
}
