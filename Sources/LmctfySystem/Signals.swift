// Process-wide signal dispositions.
import CLmctfyShims
import Glibc

extension Sys {
    /// Ignores SIGPIPE for the whole process, once; later calls do nothing.
    /// libuv does not, so a write to a peer that went away would kill the
    /// process instead of failing with EPIPE. Every program and test suite
    /// that writes to sockets calls this (the agent at start, every
    /// `EventLoop`).
    public static func ignoreSIGPIPE() {
        _ = sigpipeIgnored
    }

    private static let sigpipeIgnored: Void = {
        // sigaction fails only for an invalid signal or handler: a bug here.
        if lm_ignore_sigpipe() != 0 { fatalError("\(SystemError("sigaction", "SIGPIPE", Glibc.errno))") }
    }()
}

/// Ctrl-C (or SIGTERM, SIGHUP) during something that must tell another
/// party it stopped, or undo what it made (an upload the agent would
/// otherwise hold open, a half-unpacked image): the signal is caught into
/// a flag instead of killing the process, `body` looks at the flag between
/// its steps, then the previous dispositions are back. After an interrupt
/// the caller cleans up and calls `dieOfInterrupt`, so its parent sees the
/// signal it sent. One at a time per process.
public enum InterruptWatch {
    public static func around<T>(_ body: (_ interrupted: () -> Bool) throws(LmctfyError) -> T) throws(LmctfyError) -> T {
        _ = lm_catch_sigint()
        defer { _ = lm_release_sigint() }
        return try body { lm_sigint_caught() != 0 }
    }

    /// The signal caught by the last `around` (SIGINT if none).
    public static var caughtSignal: Int32 {
        let s = lm_sigint_caught()
        return s == 0 ? SIGINT : s
    }

    /// Ends the process as the caught signal's default would (130 to a
    /// shell for SIGINT, 143 for SIGTERM).
    public static func dieOfInterrupt() -> Never {
        let sig = caughtSignal
        signal(sig, SIG_DFL)
        raise(sig)
        exit(128 + sig)
    }
}

/// A foreground child that stands for the process (lmctfy run --create
/// --rm): SIGTERM and SIGHUP sent to the process are passed on to the child
/// while `body` runs, so that a `kill` of the parent ends the command and
/// the parent, still alive, cleans up after it. `body` names the child with
/// its argument once it is known (a signal that came before then is passed
/// on at that moment); the previous dispositions are back afterwards. One
/// at a time per process.
public enum SignalForwarding {
    public static func around<T>(_ body: (_ child: (pid_t) -> Void) throws(LmctfyError) -> T) throws(LmctfyError) -> T {
        let installed = lm_forward_signals_start() == 0
        defer { if installed { _ = lm_forward_signals_stop() } }
        return try body { pid in if installed { lm_forward_signals_to(pid) } }
    }
}
