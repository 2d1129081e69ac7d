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

/// The signals of a tool that runs a foreground command and must outlive
/// it to clean up after it (lmctfy run --create --rm), from before anything
/// is made until the cleanup is over: SIGINT and SIGQUIT ignored (a
/// terminal sends them to the command too, as for system(3)); SIGTERM and
/// SIGHUP caught, unless ignored already (nohup: they stay so): passed on
/// to the command while it runs (`forward`; through a pidfd, so never to a
/// later process with its pid), held before it starts and after it ended,
/// so that the cleanup is not cut short. The previous dispositions are back
/// afterwards, unless `restoring` is false (a process that exits next:
/// they stay held until it has). One at a time per process (its main
/// thread).
public final class ForegroundJobSignals {
    /// The four that were ignored when it began (the command keeps them
    /// ignored, as an exec would leave them).
    public let ignoredAtStart: [Int32]
    private var pidfd: Int32 = -1

    private init(ignored: [Int32]) { ignoredAtStart = ignored }

    public static func around<T>(restoring: Bool = true, _ body: (ForegroundJobSignals) throws(LmctfyError) -> T) throws(LmctfyError) -> T {
        var mask: UInt64 = 0
        let installed = lm_job_signals_start(&mask) == 0
        let job = ForegroundJobSignals(ignored: [SIGINT, SIGQUIT, SIGTERM, SIGHUP].filter { mask & (1 << UInt64($0)) != 0 })
        defer {
            job.hold()
            if installed && restoring { _ = lm_job_signals_stop() }
        }
        return try body(job)
    }

    /// The last SIGTERM or SIGHUP held (none came while no command ran: nil).
    public var caught: Int32? {
        let s = lm_job_signals_caught()
        return s == 0 ? nil : s
    }

    /// Passes them on to `pid` (an unreaped child of ours) from now on, and
    /// one held since `caught` was last read.
    public func forward(to pid: pid_t) {
        hold()
        guard let fd = try? Sys.pidfdOpen(pid) else { return }
        pidfd = fd
        lm_job_signals_forward(fd)
    }

    /// Holds them again (the command ended).
    public func hold() {
        guard pidfd >= 0 else { return }
        lm_job_signals_forward(-1)
        close(pidfd)
        pidfd = -1
    }
}
