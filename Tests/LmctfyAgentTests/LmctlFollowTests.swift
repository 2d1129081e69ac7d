// `lmctl events -f` across a restart of its agent: it dials again and
// resumes after the last event it printed, or from where it started
// following if it printed none (it ended with 14, and a follower had to be
// started again by hand, missing what happened between).
import Glibc
import LmctfyProto
import LmctfySystem
import LmctfyTestSupport
import Testing

@Suite(.enabled(if: RealCgroups.available, "\(RealCgroups.unavailableReason ?? "")"), .serialized)
struct LmctlFollowTests {
    @Test func eventsFollowOutlivesAnAgentRestart() throws {
        let (lmctl, lmctfy) = (builtTool("lmctl"), builtTool("lmctfy"))
        // An agent of its own root: the late follower must see nothing but
        // this test's containers (a machine-wide one printed other tests'
        // events, and resumed after those instead of from its caught_up point).
        let root = RealCgroups.uniqueName("follow")
        #expect(try TestProcess.capture([lmctfy, "create", root, "memory:{limit:1000000000}"]).status == 0)
        defer { _ = try? TestProcess.capture([lmctfy, "destroy", "-f", root]) }
        let first = try AgentProcess(config: "root_container: \"\(root)\" stats_interval_ms: 0")
        var firstAlive = true
        defer { if firstAlive { first.stop() } }
        let tag = "\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let outs = ["/tmp/lmctfy-follow-\(tag)-early.out", "/tmp/lmctfy-follow-\(tag)-late.out"]
        defer { for o in outs { unlink(o) } }
        let (x, a, b) = ("/x", "/a", "/b")
        func follower(_ out: String) throws -> pid_t {
            try TestProcess.spawn(["/bin/sh", "-c", "exec \(lmctl) --agent unix://\(first.socket) events -f > \(out) 2>&1"])
        }
        func printed(_ out: String) -> String { (try? Sys.readFile(out)) ?? "" }
        func waitFor(_ text: String, in out: String) -> Bool {
            for _ in 0..<1000 where !printed(out).contains(text) { usleep(10_000) }
            return printed(out).contains(text)
        }
        // The early follower prints x before the agent goes; the late one
        // starts after x and has printed nothing when it goes.
        // Connections the agent has accepted and holds now (the listener's
        // line aside): each follower's, once it is there.
        func held() -> Int {
            let lines = ((try? Sys.readFile("/proc/net/unix")) ?? "").split(separator: "\n")
            return lines.filter { $0.hasSuffix(" " + first.socket) }.count - 1
        }
        let early = try startFollower(first.socket, outs[0])
        defer { TestProcess.end(early) }
        #expect(try TestProcess.capture([lmctl, "--agent", "unix://" + first.socket, "create", x, ""]).status == 0)
        #expect(waitFor("CREATED \(x)", in: outs[0]), "\(printed(outs[0]))")
        let late = try follower(outs[1])
        defer { TestProcess.end(late) }
        // The late one must have its answer before the agent goes and print
        // nothing: its connection, then time for its hello and subscribe.
        for _ in 0..<1000 where held() < 2 { usleep(10_000) }
        #expect(held() >= 2, "the late follower never connected")
        usleep(1_000_000)

        first.crash()
        firstAlive = false
        // Made while the agent is down: the restarted agent records it.
        #expect(try TestProcess.capture([lmctfy, "create", root + a, ""]).status == 0)
        let second = try AgentProcess(reusing: first.dir)
        defer { second.stop() }
        #expect(try TestProcess.capture([lmctl, "--agent", "unix://" + second.socket, "create", b, ""]).status == 0)
        for out in outs {
            #expect(waitFor("CREATED \(b)", in: out), "the follower did not come back: \(printed(out))")
            let lines = printed(out).split(separator: "\n")
            #expect(lines.contains { $0.hasPrefix("lmctl: events:") && $0.contains("following again after") }, "\(lines)")
            for n in [a, b] {
                #expect(lines.filter { $0.contains(" CREATED \(n)") }.count == 1, "\(n) printed once: \(lines)")
            }
            #expect(lines.filter { $0.contains(" CREATED \(x)") }.count == (out == outs[0] ? 1 : 0), "\(lines)")
        }
        #expect(TestProcess.reapIfExited(early) == nil && TestProcess.reapIfExited(late) == nil, "both still follow")
    }

    /// A follower outlives an agent that takes its connection but does not
    /// answer its hello in time (restarted, then SIGSTOPped for longer
    /// than the 10 s a hello may take): it dials again. It ended with 4,
    /// GOAWAY_HELLO_TIMEOUT, missing what came after (a probe).
    @Test func eventsFollowOutlivesAHelloNotAnsweredInTime() throws {
        let (lmctl, lmctfy) = (builtTool("lmctl"), builtTool("lmctfy"))
        let root = RealCgroups.uniqueName("followhello")
        #expect(try TestProcess.capture([lmctfy, "create", root, "memory:{limit:1000000000}"]).status == 0)
        defer { _ = try? TestProcess.capture([lmctfy, "destroy", "-f", root]) }
        let first = try AgentProcess(config: "root_container: \"\(root)\" stats_interval_ms: 0")
        var firstAlive = true
        defer { if firstAlive { first.stop() } }
        let out = "/tmp/lmctfy-follow-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).out"
        defer { unlink(out) }
        func printed() -> String { (try? Sys.readFile(out)) ?? "" }
        let follower = try startFollower(first.socket, out)
        defer { TestProcess.end(follower) }
        first.crash()
        firstAlive = false
        let second = try AgentProcess(reusing: first.dir)
        defer { second.stop() }
        kill(second.pid, SIGSTOP)
        sleep(13)
        kill(second.pid, SIGCONT)
        #expect(TestProcess.reapIfExited(follower) == nil, "the follower gave up: \(printed())")
        #expect(try TestProcess.capture([lmctl, "--agent", "unix://" + second.socket, "create", "/c", ""]).status == 0)
        for _ in 0..<1500 where !printed().contains("CREATED /c") { usleep(20_000) }
        #expect(printed().split(separator: "\n").contains { $0.hasSuffix(" CREATED /c") || $0.contains(" CREATED /c ") }, "\(printed())")
    }

    /// A follower outlives an agent stopped for longer than a minute (an
    /// upgrade): it says once a minute that it still waits, and prints
    /// what the next agent records. It gave up after 60 s, with 14.
    @Test func eventsFollowWaitsForAnAgentDownMoreThanAMinute() throws {
        let (lmctl, lmctfy) = (builtTool("lmctl"), builtTool("lmctfy"))
        let root = RealCgroups.uniqueName("followlong")
        #expect(try TestProcess.capture([lmctfy, "create", root, "memory:{limit:1000000000}"]).status == 0)
        defer { _ = try? TestProcess.capture([lmctfy, "destroy", "-f", root]) }
        let first = try AgentProcess(config: "root_container: \"\(root)\" stats_interval_ms: 0")
        var stopped = false
        defer { if !stopped { first.stop() } }
        let out = "/tmp/lmctfy-follow-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).out"
        defer { unlink(out) }
        func printed() -> String { (try? Sys.readFile(out)) ?? "" }
        let follower = try startFollower(first.socket, out)
        defer { TestProcess.end(follower) }
        first.stop(keepingState: true)
        stopped = true
        defer { _ = removeTree(first.dir) }
        sleep(65)
        #expect(TestProcess.reapIfExited(follower) == nil, "the follower gave up: \(printed())")
        let second = try AgentProcess(reusing: first.dir)
        defer { second.stop() }
        #expect(try TestProcess.capture([lmctl, "--agent", "unix://" + second.socket, "create", "/b", ""]).status == 0)
        for _ in 0..<1000 where !printed().contains("CREATED /b") { usleep(10_000) }
        let lines = printed().split(separator: "\n")
        #expect(lines.contains { $0.hasSuffix(" CREATED /b") || $0.contains(" CREATED /b ") }, "\(lines)")
        #expect(lines.contains { $0.hasPrefix("lmctl: events: not following for 6") && $0.hasSuffix("still trying") }, "\(lines)")
    }
}

/// Starts `lmctl events -f` on the agent at `socket`, its output in `out`,
/// and returns once it follows: it printed a container made after it
/// started (a sanitized lmctl took more than the 300 ms a fixed wait gave).
private func startFollower(_ socket: String, _ out: String) throws -> pid_t {
    let lmctl = builtTool("lmctl")
    func printed() -> String { (try? Sys.readFile(out)) ?? "" }
    let pid = try TestProcess.spawn(["/bin/sh", "-c", "exec \(lmctl) --agent unix://\(socket) events -f > \(out) 2>&1"])
    var probes = 0
    while probes < 100 && !printed().contains("CREATED /probe") {
        probes += 1
        #expect(try TestProcess.capture([lmctl, "--agent", "unix://" + socket, "create", "/probe\(probes)", ""]).status == 0)
        for _ in 0..<50 where !printed().contains("CREATED /probe") { usleep(10_000) }
    }
    #expect(printed().contains("CREATED /probe"), "the follower never followed")
    return pid
}
