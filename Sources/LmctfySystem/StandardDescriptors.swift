// Descriptors 0, 1 and 2 open before anything else is: a program started
// with one of them closed (`lmctl ... >&-`) otherwise got its first socket or
// file there, and wrote its output into it (a command's output through
// lmctl went into the agent's socket as frames of an admin connection; a
// probe), or read it as its stdin.
import Glibc

extension Sys {
    /// Opens /dev/null on each of descriptors 0, 1 and 2 that is closed,
    /// the wrong way round (stdin for writing only, stdout and stderr for
    /// reading only), so that using it fails as it did while it was closed
    /// (a detached run's pid that cannot be printed still starts nothing;
    /// a read of stdin still fails), and nothing else can take its place.
    /// Every executable calls it first. Fails (false) only when /dev/null
    /// cannot be opened; the caller then stops.
    @discardableResult
    public static func openStandardDescriptors() -> Bool {
        for fd in Int32(0)...2 where fcntl(fd, F_GETFD) < 0 && errno == EBADF {
            let null = Glibc.open("/dev/null", fd == 0 ? O_WRONLY : O_RDONLY)
            guard null >= 0 else { return false }
            // The lowest free descriptor: this one, as those below it are open.
            if null != fd {
                guard dup2(null, fd) == fd else { return false }
                Glibc.close(null)
            }
        }
        return true
    }
}
