// systemd socket activation (sd_listen_fds(3)) without libsystemd: the
// service manager binds the socket (a .socket unit), keeps it across the
// service's restarts, and hands it to each start as descriptor 3 onwards,
// saying so in LISTEN_PID (the service's own pid) and LISTEN_FDS (how many).
// A client that connects while the service restarts waits in the socket's
// backlog instead of finding no socket file (a clean restart of an agent
// that binds its own socket fails every call made meanwhile).
import Glibc

public enum SocketActivation {
    /// The first descriptor passed (SD_LISTEN_FDS_START).
    public static let firstFd: Int32 = 3

    private static let passed = Mutexed<[Int32]>([])

    /// Reads LISTEN_PID and LISTEN_FDS, keeps the descriptors passed to
    /// this process (close-on-exec from now on), and unsets the variables
    /// (and LISTEN_FDNAMES), so that the processes the agent starts do not
    /// take them for theirs. Call once, first thing in main.
    public static func captureFromEnvironment() {
        defer {
            unsetenv("LISTEN_PID")
            unsetenv("LISTEN_FDS")
            unsetenv("LISTEN_FDNAMES")
        }
        guard let p = getenv("LISTEN_PID"), let n = getenv("LISTEN_FDS"),
              let pid = Int32(String(cString: p)), pid == getpid(),
              let count = Int32(String(cString: n)), count > 0, count < 1024 else { return }
        let fds = Array(firstFd..<(firstFd + count))
        for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        passed.locked { $0 = fds }
    }

    /// The passed descriptor that is a listening Unix stream socket bound
    /// to `path`; nil when none is (or nothing was passed). Taken: a second
    /// call does not find it again.
    public static func takeUnixListener(path: String) -> Int32? {
        passed.locked { fds in
            guard let i = fds.firstIndex(where: { unixStreamPath($0) == path && isListening($0) }) else { return nil }
            return fds.remove(at: i)
        }
    }

    /// The descriptors passed and not taken (a configuration that does not
    /// match the socket unit), each with what it is, for the error that
    /// says so.
    public static var untaken: [String] {
        passed.locked { $0 }.map { fd in
            guard let path = unixStreamPath(fd) else { return "\(fd) (not a Unix stream socket)" }
            return "\(fd) (\(path)\(isListening(fd) ? "" : ", not listening"))"
        }
    }

    /// The path a Unix stream socket `fd` is bound to; nil for anything else.
    public static func unixStreamPath(_ fd: Int32) -> String? {
        var type: Int32 = 0
        var typeLength = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &typeLength) == 0, type == Int32(SOCK_STREAM.rawValue) else { return nil }
        var address = sockaddr_un()
        var length = socklen_t(MemoryLayout<sockaddr_un>.size)
        let rc = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard rc == 0, address.sun_family == sa_family_t(AF_UNIX) else { return nil }
        let bytes = withUnsafeBytes(of: &address.sun_path) { Array($0.prefix(Int(length) - MemoryLayout<sa_family_t>.size)) }
        let path = bytes.prefix { $0 != 0 }
        return path.isEmpty ? nil : String(decoding: path, as: UTF8.self)
    }

    private static func isListening(_ fd: Int32) -> Bool {
        var on: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        return getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &on, &length) == 0 && on != 0
    }
}
