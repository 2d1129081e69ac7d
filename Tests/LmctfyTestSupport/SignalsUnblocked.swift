// Starting a program that must get signals as usual. The test runner's
// threads block every signal (DESIGN.md, "Threads"), and a posix_spawned
// child inherits that mask: a tmux server started from a test would then
// never see its panes' SIGCHLD nor its SIGHUPs land, and `kill-server`
// would leave it running.
import Glibc
import LmctfySystem

extension TestProcess {
    /// Runs `argv` (absolute path first) with no signal blocked and every
    /// signal at its default action, waits for it, and returns its exit
    /// status (a daemonizing program, such as `tmux new-session -d`,
    /// returns once its server is up).
    public static func runWithSignalsUnblocked(_ argv: [String]) throws -> Int32 {
        let pid = try spawnWithSignalsUnblocked(argv)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        return (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
    }

    /// Starts `argv` (absolute path first) with no signal blocked and every
    /// signal at its default action; the caller waits for it.
    public static func spawnWithSignalsUnblocked(_ argv: [String]) throws -> pid_t {
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var none = sigset_t()
        sigemptyset(&none)
        var all = sigset_t()
        sigfillset(&all)
        posix_spawnattr_setsigmask(&attr, &none)
        posix_spawnattr_setsigdefault(&attr, &all)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        var cargs = argv.map { strdup($0) }
        cargs.append(nil)
        defer { for p in cargs { free(p) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, argv[0], nil, &attr, cargs, environ)
        guard rc == 0 else { throw SystemError("posix_spawn", argv[0], rc) }
        return pid
    }
}
