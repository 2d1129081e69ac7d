// The descriptor kinds notifications are built on: eventfd (cgroup v1
// event_control), inotify (v2 *.events files), timerfd (polling), and poll(2)
// for blocking waits. Each wrapper reads errno at once and retries EINTR.
import CLmctfyShims
import Glibc

/// Wrappers for the descriptors notifications poll: eventfd, inotify,
/// timerfd, and poll(2). Every descriptor returned is non-blocking and
/// close-on-exec, and the caller owns it (closes it when done).
public enum EventFds {
    /// A new eventfd with its counter at 0 (the caller closes it).
    /// Throws the SystemError of eventfd(2).
    public static func eventfd() throws(SystemError) -> Int32 {
        let fd = CLmctfyShims.eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK))
        if fd < 0 { throw SystemError("eventfd", "", Glibc.errno) }
        return fd
    }

    /// Reads and resets an eventfd counter; 0 when nothing was pending.
    public static func readCounter(_ fd: Int32) throws(SystemError) -> UInt64 {
        var value: UInt64 = 0
        let (n, e) = Sys.retry { Glibc.read(fd, &value, 8) }
        if n < 0 {
            if e == EAGAIN { return 0 }
            throw SystemError("read", "eventfd", e)
        }
        return value
    }

    /// Adds 1 to an eventfd's counter, waking whoever polls it. A failed write
    /// (a counter already at its maximum, a closed fd) is ignored.
    public static func signal(_ fd: Int32) {
        var one: UInt64 = 1
        _ = Glibc.write(fd, &one, 8)
    }

    /// A new inotify descriptor watching the file at `path` for modification
    /// and removal (IN_MODIFY, IN_DELETE_SELF, IN_IGNORED); the caller closes
    /// it. Throws the SystemError of inotify_init1 or inotify_add_watch (the
    /// descriptor is closed first).
    public static func inotify(watching path: String) throws(SystemError) -> Int32 {
        let fd = inotify_init1(Int32(IN_CLOEXEC | IN_NONBLOCK))
        if fd < 0 { throw SystemError("inotify_init1", path, Glibc.errno) }
        if inotify_add_watch(fd, path, UInt32(IN_MODIFY | IN_DELETE_SELF | IN_IGNORED)) < 0 {
            let e = Glibc.errno
            Glibc.close(fd)
            throw SystemError("inotify_add_watch", path, e)
        }
        return fd
    }

    /// Drains pending inotify events; true if the watched file went away.
    public static func drainInotify(_ fd: Int32) -> (events: Int, gone: Bool) {
        var buf = [UInt8](repeating: 0, count: 4096)
        var events = 0
        var gone = false
        while true {
            let n = buf.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            var offset = 0
            while offset + MemoryLayout<inotify_event>.size <= n {
                let e = buf.withUnsafeBytes { $0.load(fromByteOffset: offset, as: inotify_event.self) }
                events += 1
                if e.mask & UInt32(IN_IGNORED | IN_DELETE_SELF) != 0 { gone = true }
                offset += MemoryLayout<inotify_event>.size + Int(e.len)
            }
        }
        return (events, gone)
    }

    /// A periodic timer descriptor.
    public static func timer(periodMs: Int) throws(SystemError) -> Int32 {
        let fd = timerfd_create(CLOCK_MONOTONIC, Int32(TFD_CLOEXEC | TFD_NONBLOCK))
        if fd < 0 { throw SystemError("timerfd_create", "", Glibc.errno) }
        let interval = timespec(tv_sec: periodMs / 1000, tv_nsec: (periodMs % 1000) * 1_000_000)
        var spec = itimerspec(it_interval: interval, it_value: interval)
        if timerfd_settime(fd, 0, &spec, nil) < 0 {
            let e = Glibc.errno
            Glibc.close(fd)
            throw SystemError("timerfd_settime", "", e)
        }
        return fd
    }

    /// Sets a timer descriptor's period, its first expiry `firstMs` from
    /// now (default: one period); a period of 0 stops it. A failure (a
    /// closed descriptor) is ignored.
    public static func setTimer(_ fd: Int32, periodMs: Int, firstMs: Int? = nil) {
        func span(_ ms: Int) -> timespec { timespec(tv_sec: ms / 1000, tv_nsec: (ms % 1000) * 1_000_000) }
        var spec = itimerspec(it_interval: span(periodMs), it_value: span(periodMs == 0 ? 0 : firstMs ?? periodMs))
        _ = timerfd_settime(fd, 0, &spec, nil)
    }

    /// Waits until fd is readable; false on timeout. timeoutMs < 0 waits forever.
    public static func waitReadable(_ fd: Int32, timeoutMs: Int32) throws(SystemError) -> Bool {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let (n, e) = Sys.retry { poll(&p, 1, timeoutMs) }
        if n < 0 { throw SystemError("poll", "", e) }
        return n > 0
    }
}

/// An epoll instance watching descriptors for readability, each under a
/// 64-bit key (for a listener thread that multiplexes many watches).
public final class Epoll: Sendable {
    /// The epoll descriptor; owned by this instance and closed on deinit.
    public let fd: Int32

    /// An epoll instance watching nothing yet (close-on-exec). Throws the
    /// SystemError of epoll_create1.
    public init() throws(SystemError) {
        let (r, e) = Sys.retry { epoll_create1(Int32(EPOLL_CLOEXEC)) }
        if r < 0 { throw SystemError("epoll_create1", "", e) }
        fd = r
    }

    deinit { close(fd) }

    /// Watches `watched` for input under `key`.
    public func add(_ watched: Int32, key: UInt64) throws(SystemError) {
        var ev = epoll_event()
        ev.events = EPOLLIN.rawValue
        ev.data.u64 = key
        let (r, e) = Sys.retry { epoll_ctl(fd, EPOLL_CTL_ADD, watched, &ev) }
        if r < 0 { throw SystemError("epoll_ctl(ADD)", "fd \(watched)", e) }
    }

    /// Stops watching `watched` (a descriptor already closed is not an error).
    public func remove(_ watched: Int32) {
        _ = Sys.retry { epoll_ctl(fd, EPOLL_CTL_DEL, watched, nil) }
    }

    /// Waits up to `timeoutMs` for input; the keys of the ready descriptors
    /// (empty on timeout or an interrupted wait).
    public func wait(max: Int = 32, timeoutMs: Int32) throws(SystemError) -> [UInt64] {
        var events = [epoll_event](repeating: epoll_event(), count: max)
        let n = epoll_wait(fd, &events, Int32(max), timeoutMs)
        if n < 0 {
            if errno == EINTR { return [] }
            throw SystemError("epoll_wait", "", errno)
        }
        return events.prefix(Int(n)).map { $0.data.u64 }
    }
}
