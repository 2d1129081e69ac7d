// lmctl top at a controller (issue #16): without --host, every connected
// host's containers (HOST:NAME), or those of the hosts --hosts selects.
// The two test hosts share this machine, so each sees the same containers.
import Glibc
import LmctfyProto
import LmctfyRPC
import LmctfySystem
import LmctfyTestSupport
import Testing

@Suite(.enabled(if: RealCgroups.available, "\(RealCgroups.unavailableReason ?? "")"), .serialized)
struct TopControllerTests {
    @Test func everyHostsContainersOrTheSelectedOnes() throws {
        let fleet = try Fleet.twoHosts()
        let base = RealCgroups.uniqueName("fleettop")
        defer { _ = try? fleet.lmctl(["--host", "alpha", "destroy", "-f", base]) }
        for (name, spec) in [(base, "memory:{limit:209715200}"), (base + "/web", "memory:{limit:104857600}")] {
            let r = try fleet.lmctl(["--host", "alpha", "create", name, spec])
            #expect(r.status == 0, "\(r.err)")
        }
        let all = try fleet.lmctl(["top", "--once", "-r", "--sort", "name", base])
        #expect(all.status == 0, "\(all.err)")
        let rows = all.lines.dropFirst().map { $0.split(separator: " ").map(String.init) }
        #expect(rows.map { $0[0] } == ["alpha:\(base)/web", "beta:\(base)/web"], "\(all.out)")
        #expect(rows.allSatisfy { $0[3] == "100.0M" }, "\(all.out)")

        let selected = try fleet.lmctl(["--hosts", "zone=z2", "top", "--once", base])
        #expect(selected.status == 0, "\(selected.err)")
        #expect(selected.lines.dropFirst().map { String($0.split(separator: " ")[0]) } == ["beta:\(base)/web"], "\(selected.out)")

        // One host: its names as they are.
        let one = try fleet.lmctl(["--host", "alpha", "top", "--once", base])
        #expect(one.lines.dropFirst().map { String($0.split(separator: " ")[0]) } == ["\(base)/web"], "\(one.out)")

        let none = try fleet.lmctl(["--hosts", "zone=nowhere", "top", "--once"])
        #expect(none.status == 5, "\(none.err)")
        // A container no host has: 5, as at one agent (it was an empty table and 0).
        let missing = try fleet.lmctl(["top", "--once", base + "-missing"])
        #expect(missing.status == 5 && missing.err.contains("does not exist on any host"), "\(missing)")

        // A host not connected: its containers are not shown, though the
        // fleet's log has them (they were, from its CREATED; the fleet probe).
        #expect(try fleet.lmctl(["--host", "beta", "create", base + "/solo", ""]).status == 0)
        fleet.stopAgent("b")
        fleet.waitForHosts(1)
        let alone = try fleet.lmctl(["top", "--once", "-r", "--sort", "name", base])
        #expect(alone.status == 0, "\(alone.err)")
        #expect(alone.lines.dropFirst().map { String($0.split(separator: " ")[0]) } == ["alpha:\(base)/solo", "alpha:\(base)/web"], "\(alone.out)")
        try fleet.startAgent("b", host: "beta", keyId: "host-b", labels: ["zone": "z2"])
        fleet.waitForHosts(2)
        #expect(try fleet.lmctl(["--host", "beta", "destroy", base + "/solo"]).status == 0)

        // A host that registered and answers nothing (as a SIGSTOPped
        // agent whose link has not timed out): the others' table within
        // its 2 s, the silent host said on stderr, its status the exit's.
        // It held the whole table for two minutes, then failed it (a probe).
        let hung = try RawLink(fd: try RpcSocket.connectTCP(host: "127.0.0.1", port: fleet.agentPort),
                               Session(dialler: .sharedKey(keyId: "other", key: fleet.keys["other"]!), name: "hung",
                                       now: MonotonicClock.milliseconds()))
        hung.open(ControllerMethods.register.name, try RegisterRequest(identity: HostIdentity(hostName: "gamma", bootId: "g")).serializedBytes())
        hung.pump { !hung.responses.isEmpty || !hung.statuses.isEmpty }
        fleet.waitForHosts(3)
        let t0 = MonotonicClock.milliseconds()
        let partial = try fleet.lmctl(["top", "--once", "-r", "--sort", "name", base])
        #expect(MonotonicClock.milliseconds() - t0 < 15_000, "bounded by the host deadline")
        #expect(partial.status == StatusCode.deadlineExceeded.rawValue, "\(partial)")
        #expect(partial.err.contains("host gamma did not answer"), "\(partial.err)")
        #expect(partial.lines.dropFirst().map { String($0.split(separator: " ")[0]) } == ["alpha:\(base)/web", "beta:\(base)/web"], "\(partial.out)")
        // Any verb, bounded by --timeout (none: the host's link's timeout,
        // two minutes): 4 from the silent host, the others' answers.
        let t1 = MonotonicClock.milliseconds()
        let bounded = try fleet.lmctl(["--timeout", "500ms", "--hosts=", "list", "containers", base])
        #expect(MonotonicClock.milliseconds() - t1 < 10_000, "bounded by --timeout")
        #expect(bounded.status == StatusCode.deadlineExceeded.rawValue, "\(bounded)")
        #expect(bounded.lines.filter { $0.hasPrefix("==") } == ["== alpha", "== beta", "== gamma"], "\(bounded.out)")
        #expect(bounded.lines.filter { $0.contains("\(base)/web") }.count == 2, "\(bounded.out)")
        #expect(bounded.err.contains("gamma: Command exited with error message: 4"), "\(bounded.err)")
        for bad in ["abc", "0", "-1s", "2d"] {
            let r = try fleet.lmctl(["--timeout", bad, "--host", "alpha", "info"])
            #expect(r.status == 3 && r.err.contains("--timeout"), "\(bad): \(r)")
        }
    }
}

extension TopControllerTests {
    /// The live view at a controller, in tmux: a container made on one host
    /// while it runs appears as HOST:NAME (from the fleet's event log), and
    /// goes when destroyed; q quits with 0.
    @Test(.enabled(if: access("/usr/bin/tmux", X_OK) == 0, "SKIPPED LOUDLY: tmux is not installed"))
    func liveFleetViewFollowsTheHostsEvents() throws {
        let fleet = try Fleet.twoHosts()
        let base = RealCgroups.uniqueName("fleetlive")
        defer { _ = try? fleet.lmctl(["--host", "alpha", "destroy", "-f", base]) }
        #expect(try fleet.lmctl(["--host", "alpha", "create", base, "memory:{limit:209715200}"]).status == 0)
        let socket = "lmctfy-fleettop-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        func tmux(_ args: [String]) -> ChildResult? { try? TestProcess.capture(["/usr/bin/tmux", "-L", socket, "-f", "/dev/null"] + args) }
        defer {
            _ = tmux(["kill-server"])
            _ = try? Sys.unlink("/tmp/tmux-\(getuid())/\(socket)")
        }
        let exitFile = fleet.dir + "/top.exit"
        let command = "\(builtTool("lmctl")) --controller unix://\(fleet.dir)/controller.sock top -r \(base); echo $? > \(exitFile).new; mv \(exitFile).new \(exitFile); sleep 1000"
        // The server must get signals (its panes' exits, kill-server's SIGHUPs).
        #expect(try TestProcess.runWithSignalsUnblocked(["/usr/bin/tmux", "-L", socket, "-f", "/dev/null", "new-session", "-d",
                                                         "-s", "top", "-x", "160", "-y", "30", "sh", "-c", command]) == 0)
        func screen() -> [String] {
            String(decoding: tmux(["capture-pane", "-p", "-t", "top"])?.stdout ?? [], as: UTF8.self).split(separator: "\n").map(String.init)
        }
        func waitFor(_ what: String, _ ok: ([String]) -> Bool) -> Bool {
            for _ in 0..<200 {
                if ok(screen()) { return true }
                usleep(50_000)
            }
            Issue.record("\(what); the screen:\n\(screen().joined(separator: "\n"))")
            return false
        }
        guard waitFor("no status line", { $0.first?.contains("lmctl top \(base) (all below)") == true }) else { return }
        #expect(try fleet.lmctl(["--host", "alpha", "create", base + "/late", "memory:{limit:1048576}"]).status == 0)
        _ = waitFor("alpha:\(base)/late never showed") { $0.contains { $0.hasPrefix("alpha:\(base)/late ") && $0.contains(" 1.0M ") } }
        #expect(try fleet.lmctl(["--host", "alpha", "destroy", base + "/late"]).status == 0)
        _ = waitFor("alpha:\(base)/late stayed") { !$0.contains { $0.hasPrefix("alpha:\(base)/late ") } }
        _ = tmux(["send-keys", "-t", "top", "q"])
        var status: String?
        for _ in 0..<300 where status == nil {
            status = try? Sys.readFile(exitFile)
            if status == nil { usleep(10_000) }
        }
        #expect(status == "0\n")
    }
}

/// Shell completion at a controller: `--host` completes the controller's
/// host names (from `lmctl hosts` over the line's connection options).
@Suite(.enabled(if: RealCgroups.available, "\(RealCgroups.unavailableReason ?? "")"), .serialized)
struct HostCompletionTests {
    static let script: String = {
        var path = #filePath
        for _ in 0..<3 { path = String(path[..<path.lastIndex(of: "/")!]) }
        return path + "/tools/completion/lmctfy.bash"
    }()

    func complete(_ words: [String]) throws -> [String] {
        let quoted = words.map { "'" + $0 + "'" }.joined(separator: " ")
        var bin = String(builtTool("lmctl")[..<builtTool("lmctl").lastIndex(of: "/")!])
        if !bin.hasPrefix("/") {
            var buf = [CChar](repeating: 0, count: 4096)
            bin = String(cString: getcwd(&buf, buf.count)) + "/" + bin
        }
        let program = "source '\(Self.script)'; COMP_WORDS=(\(quoted)); COMP_CWORD=\(words.count - 1); _lmctfy_complete; printf '%s\\n' \"${COMPREPLY[@]}\" | sort -u"
        let r = try TestProcess.capture(["/usr/bin/env", "PATH=\(bin):/usr/bin:/bin", "bash", "--norc", "--noprofile", "-c", program])
        return String(decoding: r.stdout, as: UTF8.self).split(separator: "\n").map(String.init)
    }

    @Test func hostNamesComeFromTheController() throws {
        let fleet = try Fleet.twoHosts()
        let controller = "unix://\(fleet.dir)/controller.sock"
        #expect(try complete(["lmctl", "--controller", controller, "--host", ""]) == ["alpha", "beta"])
        #expect(try complete(["lmctl", "--controller", controller, "--host", "b"]) == ["beta"])
        #expect(try complete(["lmctl", "--controller", controller, "migrate", "/x", "--from", ""]) == ["alpha", "beta"])
        // No controller there: nothing, quickly.
        #expect(try complete(["lmctl", "--controller", "unix:///nonexistent/c.sock", "--host", ""]) == [])
    }
}
