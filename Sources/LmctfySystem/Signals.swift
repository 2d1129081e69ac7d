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
