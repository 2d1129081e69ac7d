// The terminal calls `lmctl top` (its live view) and the CLIs' progress
// lines need: whether a descriptor is a terminal, its size, and a raw mode
// (keys arrive one at a time, unechoed) that is always undone.
import Glibc

/// A terminal on a file descriptor. Not thread-safe: one thread owns it.
public enum Terminal {
    /// Whether `fd` is a terminal (isatty(3)).
    public static func isTerminal(_ fd: Int32) -> Bool { isatty(fd) == 1 }

    /// Rows and columns of the terminal on `fd` (TIOCGWINSZ); nil when it
    /// is not a terminal or says 0.
    public static func size(_ fd: Int32) -> (rows: Int, columns: Int)? {
        var w = winsize()
        guard ioctl(fd, UInt(TIOCGWINSZ), &w) == 0, w.ws_row > 0, w.ws_col > 0 else { return nil }
        return (Int(w.ws_row), Int(w.ws_col))
    }

    /// The terminal settings of `fd` before `enterRaw`, to put back.
    public struct Saved: Sendable {
        let fd: Int32
        let settings: termios
    }

    /// Raw input on `fd`: no line editing, no echo, and no signals from
    /// keys (Ctrl-C arrives as byte 3, so the caller restores the terminal
    /// itself before it exits); output processing stays (\n is a new line).
    /// Returns what to give `restore`.
    public static func enterRaw(_ fd: Int32) throws(SystemError) -> Saved {
        var t = termios()
        let (r, e) = Sys.retry { tcgetattr(fd, &t) }
        if r != 0 { throw SystemError("tcgetattr", "fd \(fd)", e) }
        let saved = Saved(fd: fd, settings: t)
        t.c_lflag &= ~tcflag_t(ICANON | ECHO | ISIG | IEXTEN)
        t.c_iflag &= ~tcflag_t(IXON | ICRNL)
        // read() returns at once with what there is (the caller polls).
        withUnsafeMutableBytes(of: &t.c_cc) { cc in
            cc[Int(VMIN)] = 0
            cc[Int(VTIME)] = 0
        }
        let (r2, e2) = Sys.retry { tcsetattr(fd, TCSAFLUSH, &t) }
        if r2 != 0 { throw SystemError("tcsetattr", "fd \(fd)", e2) }
        return saved
    }

    /// Puts back the settings `enterRaw` found.
    public static func restore(_ saved: Saved) {
        var t = saved.settings
        _ = Sys.retry { tcsetattr(saved.fd, TCSAFLUSH, &t) }
    }

    /// Waits up to `timeoutMs` (-1: forever) for any of `fds` to be
    /// readable; returns those that are (empty on timeout or EINTR).
    public static func waitReadable(_ fds: [Int32], timeoutMs: Int32) -> [Int32] {
        var p = fds.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
        let n = poll(&p, nfds_t(p.count), timeoutMs)
        guard n > 0 else { return [] }
        return p.filter { $0.revents != 0 }.map(\.fd)
    }
}
