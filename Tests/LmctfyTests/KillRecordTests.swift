// The `killing` record of an interrupted kill names its killer by pid and
// start time; a killer that is dead but not yet reaped (a zombie: its
// parent has not waited for it) is gone, not a kill still running (a
// probe: the container stayed frozen, "paused", until the parent reaped).
import Glibc
@testable import Lmctfy
import LmctfySystem
import LmctfyTestSupport
import Testing

@Suite struct KillRecordTests {
    @Test func aKillerThatIsAZombieIsGone() throws {
        let pid = try TestProcess.spawn(["/bin/true"])
        defer { TestProcess.end(pid) }
        // Not reaped: a zombie once it has exited (bounded wait, 10 s).
        var state: Substring?
        for _ in 0..<1000 {
            state = Sys.procStatFields("/proc/\(pid)/stat")?.first
            if state == "Z" { break }
            usleep(10_000)
        }
        try #require(state == "Z", "the child never became a zombie (state \(state ?? "gone"))")
        #expect(Container.processStart(pid) == nil)
        #expect(Container.processStart(getpid()) != nil, "a running process has its start time")
    }
}
