// The terminal calls `lmctl top` (its live view) and the CLIs' progress
// lines need: whether a descriptor is a terminal, its size, and a raw mode
// (keys arrive one at a time, unechoed) that is always undone.
import CLmctfyShims
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
        try change(fd, when: TCSAFLUSH) { t in
            t.c_lflag &= ~tcflag_t(ICANON | ECHO | ISIG | IEXTEN)
            t.c_iflag &= ~tcflag_t(IXON | ICRNL)
            // read() returns at once with what there is (the caller polls).
            withUnsafeMutableBytes(of: &t.c_cc) { cc in
                cc[Int(VMIN)] = 0
                cc[Int(VTIME)] = 0
            }
        }
    }

    /// The settings of `fd` changed by `body`, applied `when` (TCSA*);
    /// returns what they were.
    private static func change(_ fd: Int32, when: Int32, _ body: (inout termios) -> Void) throws(SystemError) -> Saved {
        var t = termios()
        let (r, e) = Sys.retry { tcgetattr(fd, &t) }
        if r != 0 { throw SystemError("tcgetattr", "fd \(fd)", e) }
        let saved = Saved(fd: fd, settings: t)
        body(&t)
        let (r2, e2) = Sys.retry { tcsetattr(fd, when, &t) }
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

/// A terminal's size in characters (`lmctl run -t`, the agent's
/// pseudo-terminals).
public struct TerminalWindow: Sendable, Equatable {
    public var rows: UInt16
    public var cols: UInt16

    public init(rows: UInt16, cols: UInt16) {
        self.rows = rows
        self.cols = cols
    }

    /// A window told in a message (each 1...65535), or nil.
    public init?(rows: UInt32?, cols: UInt32?) {
        guard let rows, let cols, (1...65535).contains(rows), (1...65535).contains(cols) else { return nil }
        self.init(rows: UInt16(rows), cols: UInt16(cols))
    }
}

extension Terminal {
    /// The size of the terminal on `fd`; nil when it is not one (or says 0).
    public static func window(_ fd: Int32) -> TerminalWindow? {
        size(fd).map { TerminalWindow(rows: UInt16(clamping: $0.rows), cols: UInt16(clamping: $0.columns)) }
    }

    /// Sets the size of the terminal on `fd` (a pseudo-terminal's master:
    /// the kernel sends SIGWINCH to its foreground process group).
    public static func setWindow(_ fd: Int32, _ window: TerminalWindow) throws(SystemError) {
        var w = winsize(ws_row: window.rows, ws_col: window.cols, ws_xpixel: 0, ws_ypixel: 0)
        guard ioctl(fd, UInt(TIOCSWINSZ), &w) == 0 else { throw SystemError("ioctl(TIOCSWINSZ)", "fd \(fd)", errno) }
    }

    /// A new pseudo-terminal: its master and its slave, both close-on-exec
    /// and not made anyone's controlling terminal. The slave is opened from
    /// the master (TIOCGPTPEER), never by a path another could swap.
    public static func openPseudoTerminal() throws(SystemError) -> (master: Int32, slave: Int32) {
        let master = open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC)
        guard master >= 0 else { throw SystemError("open", "/dev/ptmx", errno) }
        // Unlocked (unlockpt(3)): the slave may be opened.
        var unlock: Int32 = 0
        guard ioctl(master, Self.tiocsptlck, &unlock) == 0 else {
            let e = errno
            close(master)
            throw SystemError("ioctl(TIOCSPTLCK)", "/dev/ptmx", e)
        }
        let slave = ioctl(master, Self.tiocgptpeer, O_RDWR | O_NOCTTY | O_CLOEXEC)
        guard slave >= 0 else {
            let e = errno
            close(master)
            throw SystemError("ioctl(TIOCGPTPEER)", "/dev/ptmx", e)
        }
        return (master, slave)
    }

    /// TIOCGPTPEER (Linux 4.13) and TIOCSPTLCK: macros Glibc's Swift
    /// overlay does not import.
    private static let tiocgptpeer: UInt = 0x5441
    private static let tiocsptlck: UInt = 0x4004_5431

    /// Everything typed on `fd` passes through untouched, to a terminal
    /// elsewhere (`lmctl run -t`): cfmakeraw(3), output processing too (the
    /// far terminal's line discipline did it). Returns what to give `restore`.
    public static func enterPassThrough(_ fd: Int32) throws(SystemError) -> Saved {
        try change(fd, when: TCSADRAIN) { cfmakeraw(&$0) }
    }
}

/// A terminal passed through to a command elsewhere (`lmctl run -t`): its
/// size changes (SIGWINCH), and the signals that end or stop this process
/// while the terminal is in pass-through mode, taken through a signalfd.
/// Such a signal puts the terminal back before the process dies of it, as
/// it would have (a SIGTSTP: while it is stopped). Single-threaded
/// processes only (the signals are blocked on the calling thread); `close`
/// undoes it all.
public final class TerminalSignals {
    /// Polls readable when a signal came; -1 once closed.
    public private(set) var fd: Int32
    private let terminalFd: Int32
    private var saved: Terminal.Saved?
    private var old = sigset_t()
    private static let ending: [Int32] = [SIGTERM, SIGHUP, SIGINT, SIGQUIT, SIGUSR1, SIGUSR2, SIGALRM]

    /// Watches the terminal on `terminalFd`; `saved` is put back before an
    /// ending signal takes effect.
    public init(terminalFd: Int32, saved: Terminal.Saved?) throws(SystemError) {
        let signals = [SIGWINCH, SIGTSTP] + Self.ending
        let fd = lm_signalfd_open(signals, Int32(signals.count), &old)
        guard fd >= 0 else { throw SystemError("signalfd", "SIGWINCH", errno) }
        self.fd = fd
        self.terminalFd = terminalFd
        self.saved = saved
    }

    /// Takes the signals that came: the terminal's size when it changed
    /// (nil: no change). An ending signal puts the terminal back and kills
    /// the process with it.
    public func changed() -> TerminalWindow? {
        var resized = false
        while fd >= 0 {
            let signal = lm_signalfd_next(fd)
            if signal <= 0 { break }
            if signal == SIGWINCH {
                resized = true
                continue
            }
            if signal == SIGTSTP {
                // Stopped from outside: the terminal is put back while this
                // process is stopped, and passes keys through again when it
                // continues (its size may have changed meanwhile).
                if let saved { Terminal.restore(saved) }
                raise(SIGSTOP)
                if let saved { self.saved = (try? Terminal.enterPassThrough(saved.fd)) ?? saved }
                resized = true
                continue
            }
            close()
            Glibc.signal(signal, SIG_DFL)
            var one = sigset_t()
            sigemptyset(&one)
            sigaddset(&one, signal)
            raise(signal)
            pthread_sigmask(SIG_UNBLOCK, &one, nil)
            _exit(128 + signal)
        }
        return resized ? Terminal.window(terminalFd) : nil
    }

    /// Puts the terminal back and the signal mask as it was; once.
    public func close() {
        if let saved { Terminal.restore(saved) }
        saved = nil
        guard fd >= 0 else { return }
        Glibc.close(fd)
        fd = -1
        pthread_sigmask(SIG_SETMASK, &old, nil)
    }
}

/// One of a terminal's modes, in a form that does not depend on the
/// machine's termios layout: numbered as the SSH terminal modes are (RFC
/// 4254 section 8, and RFC 8160 for IUTF8), as `ssh` passes a local
/// terminal's modes to the far one. A control character's value is the
/// byte (255: disabled); a flag's 0 or 1.
public struct TerminalSetting: Sendable, Equatable {
    public var opcode: UInt32
    public var value: UInt32

    public init(opcode: UInt32, value: UInt32) {
        self.opcode = opcode
        self.value = value
    }

    /// At most this many in one list.
    public static let maxCount = 64
    /// The numbers a mode can have (0 ends ssh's encoding; 160 and up are
    /// not defined).
    public static let opcodes: ClosedRange<UInt32> = 1...159
    /// A control character's value when it is disabled.
    public static let disabled: UInt32 = 255

    /// The control characters this machine has, by mode number, as c_cc
    /// indexes (VDSUSP, VFLUSH, VSWTCH and VSTATUS are not Linux's).
    static let characters: [UInt32: Int32] = [
        1: VINTR, 2: VQUIT, 3: VERASE, 4: VKILL, 5: VEOF, 6: VEOL, 7: VEOL2, 8: VSTART, 9: VSTOP,
        10: VSUSP, 12: VREPRINT, 13: VWERASE, 14: VLNEXT, 18: VDISCARD,
    ]

    /// Which termios word a flag is in.
    enum Word { case input, local, output }

    /// The flags this machine has, by mode number. The character size and
    /// parity (CS7, CS8, PARENB, PARODD: 90-93) are not among them: a
    /// pseudo-terminal keeps its own.
    static let flags: [UInt32: (Word, tcflag_t)] = [
        30: (.input, tcflag_t(IGNPAR)), 31: (.input, tcflag_t(PARMRK)), 32: (.input, tcflag_t(INPCK)),
        33: (.input, tcflag_t(ISTRIP)), 34: (.input, tcflag_t(INLCR)), 35: (.input, tcflag_t(IGNCR)),
        36: (.input, tcflag_t(ICRNL)), 37: (.input, tcflag_t(IUCLC)), 38: (.input, tcflag_t(IXON)),
        39: (.input, tcflag_t(IXANY)), 40: (.input, tcflag_t(IXOFF)), 41: (.input, tcflag_t(IMAXBEL)),
        42: (.input, tcflag_t(IUTF8)),
        50: (.local, tcflag_t(ISIG)), 51: (.local, tcflag_t(ICANON)), 52: (.local, tcflag_t(XCASE)),
        53: (.local, tcflag_t(ECHO)), 54: (.local, tcflag_t(ECHOE)), 55: (.local, tcflag_t(ECHOK)),
        56: (.local, tcflag_t(ECHONL)), 57: (.local, tcflag_t(NOFLSH)), 58: (.local, tcflag_t(TOSTOP)),
        59: (.local, tcflag_t(IEXTEN)), 60: (.local, tcflag_t(ECHOCTL)), 61: (.local, tcflag_t(ECHOKE)),
        62: (.local, tcflag_t(PENDIN)),
        70: (.output, tcflag_t(OPOST)), 71: (.output, tcflag_t(OLCUC)), 72: (.output, tcflag_t(ONLCR)),
        73: (.output, tcflag_t(OCRNL)), 74: (.output, tcflag_t(ONOCR)), 75: (.output, tcflag_t(ONLRET)),
    ]

    /// Why `modes` cannot be a terminal's (nil: they can): too many, a
    /// number out of range, a flag other than 0 or 1, a character above a
    /// byte. A number in range this machine does not have is let be (and
    /// ignored where applied), as ssh does.
    public static func refusal(_ modes: [TerminalSetting]) -> String? {
        if modes.count > maxCount { return "\(modes.count) terminal modes: at most \(maxCount)" }
        for m in modes {
            guard opcodes.contains(m.opcode) else { return "terminal mode \(m.opcode): modes are numbered \(opcodes.lowerBound) to \(opcodes.upperBound)" }
            if characters[m.opcode] != nil, m.value > 255 {
                return "terminal mode \(m.opcode) is a control character: 0 to 255 (255: disabled), not \(m.value)"
            }
            if flags[m.opcode] != nil, m.value > 1 { return "terminal mode \(m.opcode) is a flag: 0 or 1, not \(m.value)" }
        }
        return nil
    }
}

extension Terminal {
    /// The modes of the terminal on `fd`, every one this machine has; nil
    /// when it is not a terminal.
    public static func modes(_ fd: Int32) -> [TerminalSetting]? {
        var t = termios()
        guard tcgetattr(fd, &t) == 0 else { return nil }
        var modes: [TerminalSetting] = []
        withUnsafeBytes(of: t.c_cc) { cc in
            for (opcode, index) in TerminalSetting.characters.sorted(by: { $0.key < $1.key }) {
                let c = cc[Int(index)]
                modes.append(TerminalSetting(opcode: opcode, value: c == 0 ? TerminalSetting.disabled : UInt32(c)))
            }
        }
        for (opcode, (word, bit)) in TerminalSetting.flags.sorted(by: { $0.key < $1.key }) {
            let set: Bool
            switch word {
            case .input: set = t.c_iflag & bit == bit
            case .local: set = t.c_lflag & bit == bit
            case .output: set = t.c_oflag & bit == bit
            }
            modes.append(TerminalSetting(opcode: opcode, value: set ? 1 : 0))
        }
        return modes
    }

    /// Sets `modes` on the terminal on `fd` at once, leaving the rest of its
    /// settings; numbers this machine does not have are ignored. The caller
    /// has checked them (`TerminalSetting.refusal`).
    public static func setModes(_ fd: Int32, _ modes: [TerminalSetting]) throws(SystemError) {
        guard !modes.isEmpty else { return }
        _ = try change(fd, when: TCSANOW) { t in
            for m in modes {
                if let index = TerminalSetting.characters[m.opcode] {
                    withUnsafeMutableBytes(of: &t.c_cc) { cc in
                        cc[Int(index)] = m.value >= TerminalSetting.disabled ? 0 : UInt8(truncatingIfNeeded: m.value)
                    }
                } else if let (word, bit) = TerminalSetting.flags[m.opcode] {
                    let on = m.value != 0
                    switch word {
                    case .input: t.c_iflag = on ? t.c_iflag | bit : t.c_iflag & ~bit
                    case .local: t.c_lflag = on ? t.c_lflag | bit : t.c_lflag & ~bit
                    case .output: t.c_oflag = on ? t.c_oflag | bit : t.c_oflag & ~bit
                    }
                }
            }
        }
    }
}
