// Sys.waitForExit and ExitStatus against real child processes, started with
// the spawn helpers the library and the tests use.
import Glibc
import LmctfySystem
import LmctfyTestSupport
import Testing

@Suite struct ExitStatusTests {
    @Test func decodesWaitStatusWords() {
        #expect(ExitStatus(waitStatus: 0) == .exited(0))
        #expect(ExitStatus(waitStatus: 7 << 8) == .exited(7))
        #expect(ExitStatus(waitStatus: 255 << 8) == .exited(255))
        #expect(ExitStatus(waitStatus: SIGKILL) == .signaled(SIGKILL))
        // 0x80 is the core-dump flag; the signal is the low seven bits.
        #expect(ExitStatus(waitStatus: 0x80 | SIGSEGV) == .signaled(SIGSEGV))
    }

    @Test func shellStatusIsTheCodeOr128PlusTheSignal() {
        #expect(ExitStatus.exited(3).shellStatus == 3)
        #expect(ExitStatus.signaled(SIGTERM).shellStatus == 128 + SIGTERM)
        #expect(ExitStatus.exited(3).exitCode == 3 && ExitStatus.exited(3).signal == nil)
        #expect(ExitStatus.signaled(9).signal == 9 && ExitStatus.signaled(9).exitCode == nil)
        #expect(ExitStatus.signaled(9).description == "killed by signal 9")
    }
}

@Suite struct WaitForExitTests {
    @Test(arguments: [0, 1, 7, 255])
    func reportsTheExitCode(_ code: Int32) throws {
        let pid = try Spawn.spawn(SpawnOptions(argv: ["/bin/sh", "-c", "exit \(code)"]))
        #expect(try Sys.waitForExit(pid) == .exited(code))
    }

    @Test func reportsTheSignalThatEndedTheChild() throws {
        // Spawn.spawn, not posix_spawn: the test runner's threads block
        // SIGTERM, and only the shim clears the mask the child inherits.
        let pid = try Spawn.spawn(SpawnOptions(argv: ["/bin/sh", "-c", "kill -TERM $$"]))
        let status = try Sys.waitForExit(pid)
        #expect(status == .signaled(SIGTERM))
        #expect(status.shellStatus == 143)
    }

    @Test func reapsAKilledChild() throws {
        let pid = try TestProcess.spawn(["/bin/sleep", "100"])
        defer { TestProcess.end(pid) }
        #expect(try Sys.exitStatusIfExited(pid) == nil, "still running")
        #expect(kill(pid, SIGKILL) == 0)
        #expect(try Sys.waitForExit(pid) == .signaled(SIGKILL))
        // Reaped: no longer our child.
        #expect(throws: SystemError("waitpid", "pid \(pid)", ECHILD)) { try Sys.waitForExit(pid) }
    }

    @Test func exitStatusIfExitedReapsOnceEnded() throws {
        let pid = try TestProcess.spawn(["/bin/sh", "-c", "exit 4"])
        var status: LmctfySystem.ExitStatus?
        for _ in 0..<2000 where status == nil {
            status = try Sys.exitStatusIfExited(pid)
            if status == nil { usleep(1000) }
        }
        #expect(status == .exited(4))
    }

    @Test func aProcessThatIsNotOurChildIsAnError() {
        // pid 1 is never our child.
        #expect(throws: SystemError("waitpid", "pid 1", ECHILD)) { try Sys.waitForExit(1) }
    }
}

@Suite struct SpawnFailureTests {
    /// Each step of the child's set-up that fails reaches the caller with
    /// its stage and errno: from a foreground child (vfork: it leaves the
    /// failure in our memory) and from a detached one (through a pipe).
    @Test(arguments: [false, true])
    func eachStepsFailureReachesTheCaller(_ detach: Bool) throws {
        func failure(_ o: SpawnOptions) -> SpawnError? {
            var o = o
            o.detach = detach
            do { let pid = try Spawn.spawn(o); _ = try? Sys.waitForExit(pid); return nil } catch { return error }
        }
        let notFound = failure(SpawnOptions(argv: ["/nonexistent/lmctfy-no-such-command"]))
        #expect(notFound?.stage == .exec && notFound?.errno == ENOENT, "\(String(describing: notFound))")
        var join = SpawnOptions(argv: ["/bin/true"])
        join.cgroupFiles = ["/proc/self/status", "/nonexistent/lmctfy/tasks"]
        let joined = failure(join)
        #expect(joined?.stage == .cgroup && joined?.subject == "/proc/self/status", "\(String(describing: joined))")
        join.cgroupFiles = ["/nonexistent/lmctfy/tasks"]
        let missing = failure(join)
        #expect(missing?.stage == .cgroup && missing?.errno == ENOENT && missing?.subject == "/nonexistent/lmctfy/tasks")
        var stdio = SpawnOptions(argv: ["/bin/true"])
        stdio.stdout = .fd(987_654)
        let badFd = failure(stdio)
        #expect(badFd?.stage == .stdio && badFd?.errno == EBADF, "\(String(describing: badFd))")
        // And a start that works still works, stdio on /dev/null.
        var ok = SpawnOptions(argv: ["/bin/sh", "-c", "[ \"$(readlink /proc/$$/fd/0)\" = /dev/null ] && [ \"$(readlink /proc/$$/fd/2)\" = /dev/null ]"])
        ok.stdin = .devNull
        ok.stderr = .devNull
        ok.detach = false
        #expect(try Sys.waitForExit(try Spawn.spawn(ok)) == .exited(0))
    }
}
