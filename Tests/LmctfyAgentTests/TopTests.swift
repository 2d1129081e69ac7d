// lmctl top: the model (events in, rows out) without an agent; the built
// lmctl against a real agent with real containers, --once, and the live
// view as a person uses it: in tmux, keys sent with send-keys, the screen
// read with capture-pane.
import Glibc
import LmctfyProto
import LmctfyRPC
import LmctfySystem
import LmctfyTestSupport
import Testing
@testable import LmctlCommands

private func stats(_ name: String, at ns: UInt64, cpuNs: UInt64, memory: Int64, procs: UInt64) -> ContainerEvent {
    var e = ContainerEvent(timestampNs: ns, container: name, kind: .containerEventStats)
    var s = ContainerStats()
    s.cpu = CpuStats(usage: CpuStats.Usage(total: cpuNs))
    s.memory = MemoryStats(usage: memory)
    s.pids = PidsStats(current: Int64(procs))
    e.stats = s
    return e
}

private func event(_ name: String, _ kind: ContainerEventKind, frozen: Bool? = nil) -> ContainerEvent {
    ContainerEvent(timestampNs: 1, container: name, kind: kind, frozen: frozen)
}

@Suite struct TopModelTests {
    @Test func cpuPercentComesFromTheLastTwoSamples() {
        var m = TopCommand.Model(base: "/")
        m.list(["/a", "/b"], frozen: ["/b"])
        m.apply(stats("/a", at: 1_000_000_000, cpuNs: 5_000_000_000, memory: 100, procs: 2))
        #expect(m.entries["/a"]?.cpuPercent == nil, "one sample has no rate")
        // 0.25 s of CPU in 0.5 s: 50 %.
        m.apply(stats("/a", at: 1_500_000_000, cpuNs: 5_250_000_000, memory: 2048, procs: 3))
        #expect(m.entries["/a"]?.cpuPercent == 50)
        #expect(m.entries["/a"]?.memory == 2048)
        #expect(m.entries["/a"]?.procs == 3)
        #expect(m.entries["/b"]?.frozen == true)
        m.apply(event("/b", .containerEventFreezer, frozen: false))
        #expect(m.entries["/b"]?.frozen == false)
        m.apply(event("/a", .containerEventOom))
        m.apply(event("/a", .containerEventOom))
        #expect(m.entries["/a"]?.ooms == 2)
        m.apply(event("/b", .containerEventDestroyed))
        #expect(m.entries["/b"] == nil)
        m.apply(event("/c", .containerEventCreated))
        #expect(m.entries["/c"]?.specWanted == true)
    }

    @Test func childrenOrEveryDescendantAndOnlyBelowTheBase() {
        #expect(TopCommand.Model(base: "web").base == "/web")
        #expect(TopCommand.Model(base: "//").base == "/")
        var m = TopCommand.Model(base: "/web/")
        #expect(m.base == "/web")
        m.list(["/web/a", "/web/a/x", "/web/b", "/webby", "/db"], frozen: [])
        #expect(Set(m.entries.keys) == ["/web/a", "/web/a/x", "/web/b"])
        #expect(m.rows(recursive: false, sort: .name).map(\.name) == ["/web/a", "/web/b"])
        #expect(m.rows(recursive: true, sort: .name).map(\.name) == ["/web/a", "/web/a/x", "/web/b"])
        // Events of other containers are ignored.
        let changed = m.apply(stats("/db", at: 1, cpuNs: 1, memory: 1, procs: 1))
        #expect(!changed)
        #expect(m.entries["/db"] == nil)
    }

    @Test func sortsByEachKey() {
        var m = TopCommand.Model(base: "/")
        m.list(["/a", "/b", "/c"], frozen: [])
        for (name, cpu, mem, procs) in [("/a", UInt64(10), Int64(300), UInt64(1)), ("/b", 30, 100, 5), ("/c", 20, 200, 3)] {
            m.apply(stats(name, at: 1_000_000_000, cpuNs: 0, memory: mem, procs: procs))
            m.apply(stats(name, at: 2_000_000_000, cpuNs: cpu * 10_000_000, memory: mem, procs: procs))
        }
        #expect(m.rows(recursive: false, sort: .cpu).map(\.name) == ["/b", "/c", "/a"])
        #expect(m.rows(recursive: false, sort: .mem).map(\.name) == ["/a", "/c", "/b"])
        #expect(m.rows(recursive: false, sort: .procs).map(\.name) == ["/b", "/c", "/a"])
        #expect(m.rows(recursive: false, sort: .name).map(\.name) == ["/a", "/b", "/c"])
        let table = m.table(recursive: false, sort: .cpu, width: 80)
        #expect(table.count == 4)
        #expect(table.allSatisfy { $0.count == 80 }, "\(table)")
        #expect(table[1].hasPrefix("/b ") && table[1].contains(" 30.0 "), "\(table[1])")
    }

    @Test func formatsBytesAndLimits() {
        #expect(TopCommand.bytes(nil) == "-")
        #expect(TopCommand.bytes(-1) == "-")
        #expect(TopCommand.bytes(9_223_372_036_854_771_712) == "-", "v1's unlimited")
        #expect(TopCommand.bytes(512) == "512")
        #expect(TopCommand.bytes(104_857_600) == "100.0M")
        #expect(TopCommand.bytes(1536) == "1.5K")
    }

    @Test func badArgumentsAreUsageErrors() throws {
        for bad in [["--sort"], ["--sort", "size"], ["--bogus"], ["/a", "/b"]] {
            do {
                _ = try TopCommand.parse(bad)
                Issue.record("\(bad) was accepted")
            } catch {
                #expect(error.code == .invalidArgument, "\(bad): \(error)")
            }
        }
        let o = try TopCommand.parse(["-r", "--sort", "mem", "--once", "/web"])
        #expect(o.recursive && o.once && o.sort == .mem && o.name == "/web")
    }

    /// What a refresh costs at 1,000 containers: one sweep of STATS events
    /// applied and the table built and sorted. Printed; bounded loosely so
    /// a regression by an order of magnitude fails.
    @Test func refreshCostAtAThousandContainers() {
        var m = TopCommand.Model(base: "/")
        let names = (0..<1000).map { "/c\($0)" }
        m.list(names, frozen: [])
        for (i, n) in names.enumerated() { m.apply(stats(n, at: 1_000_000_000, cpuNs: UInt64(i), memory: Int64(i), procs: 1)) }
        var best = UInt64.max
        for round in 0..<5 {
            let t0 = MonotonicClock.nanoseconds()
            for (i, n) in names.enumerated() {
                m.apply(stats(n, at: UInt64(2 + round) * 1_000_000_000, cpuNs: UInt64(i * 1000 * (round + 2)), memory: Int64(i), procs: 1))
            }
            let lines = m.table(recursive: true, sort: .cpu, width: 120, maxRows: 50)
            best = min(best, MonotonicClock.nanoseconds() - t0)
            #expect(lines.count == 51)
        }
        print("lmctl top refresh at 1000 containers (1000 STATS events applied + sorted table): \(best / 1000) us")
        #expect(best < 500_000_000)
    }
}

/// An agent serving a container of this test (cpu, memory and pids
/// isolated, so its subcontainers can be too), with STATS every 200 ms.
struct TopAgent {
    let root: String
    let agent: AgentProcess
    var address: String { "unix://\(agent.socket)" }

    init() throws {
        root = RealCgroups.uniqueName("top")
        let made = try TestProcess.capture([builtTool("lmctfy"), "create", root,
                                            "cpu:{limit:1000} memory:{limit:4000000000} pids:{limit:1000}"])
        guard made.status == 0 else {
            throw LmctfyError(.internal, "lmctfy create \(root): \(String(decoding: made.stderr, as: UTF8.self))")
        }
        do {
            agent = try AgentProcess(config: "root_container: \"\(root)\" stats_interval_ms: 200")
        } catch {
            RealCgroups.destroy(root)
            throw error
        }
    }

    func lmctl(_ args: [String]) throws -> ChildResult {
        try TestProcess.capture([builtTool("lmctl"), "--agent", address] + args)
    }

    @discardableResult
    func must(_ args: [String]) throws -> String {
        let r = try lmctl(args)
        guard r.status == 0 else {
            throw LmctfyError(.internal, "lmctl \(args): \(r.status): \(String(decoding: r.stderr, as: UTF8.self))")
        }
        return String(decoding: r.stdout, as: UTF8.self)
    }

    func stop() {
        agent.stop()
        RealCgroups.destroy(root)
    }
}

/// The columns of a table line: name, cpu, mem, limit, oom, frozen, procs.
private func columns(_ output: String, _ name: String) -> [String]? {
    output.split(separator: "\n").map { $0.split(separator: " ").map(String.init) }.first { $0.first == name }
}

@Suite(.enabled(if: RealCgroups.available, "\(RealCgroups.unavailableReason ?? "")"), .serialized)
struct LmctlTopTests {
    @Test func onceShowsRealContainers() throws {
        let t = try TopAgent()
        defer { t.stop() }
        try t.must(["create", "/busy", "cpu:{limit:500} memory:{limit:104857600} pids:{limit:100}"])
        try t.must(["create", "/idle", "cpu:{limit:500} memory:{limit:209715200} pids:{limit:100}"])
        try t.must(["create", "/idle/inner", "memory:{limit:10485760}"])
        try t.must(["run", "-n", "/busy", "/bin/sh", "-c", "while :; do :; done"])
        try t.must(["run", "-n", "/idle", "/bin/sleep", "1000"])
        try t.must(["run", "-n", "/idle", "/bin/sleep", "1000"])
        try t.must(["pause", "/idle"])
        // Two samples at least, for CPU %.
        usleep(700_000)
        let out = try t.must(["top", "--once"])
        #expect(out.hasPrefix("NAME "), "\(out)")
        let busy = try #require(columns(out, "/busy"), "\(out)")
        let idle = try #require(columns(out, "/idle"), "\(out)")
        #expect(columns(out, "/idle/inner") == nil, "without -r only the children")
        #expect((Double(busy[1]) ?? 0) > 5, "a busy loop uses CPU: \(busy)")
        #expect(busy[3] == "100.0M" && idle[3] == "200.0M", "limits: \(busy) \(idle)")
        #expect(busy[5] == "no" && idle[5] == "yes", "frozen: \(busy) \(idle)")
        #expect(busy[6] == "1" && idle[6] == "2", "processes: \(busy) \(idle)")
        // Sorted by CPU: the busy one first.
        #expect(out.split(separator: "\n")[1].hasPrefix("/busy "), "\(out)")
        let all = try t.must(["top", "--once", "-r", "--sort", "name"])
        #expect(all.split(separator: "\n").dropFirst().map { String($0.split(separator: " ")[0]) } == ["/busy", "/idle", "/idle/inner"])
        let below = try t.must(["top", "--once", "/idle"])
        #expect(below.split(separator: "\n").dropFirst().map { String($0.split(separator: " ")[0]) } == ["/idle/inner"])
        try t.must(["resume", "/idle"])
        try t.must(["destroy", "-f", "/busy"])
        try t.must(["destroy", "-f", "/idle"])
    }

    @Test func errorsAreReportedAndChangeNothing() throws {
        let t = try TopAgent()
        defer { t.stop() }
        let bad = try t.lmctl(["top", "--sort", "size"])
        #expect(bad.status == 3)
        #expect(String(decoding: bad.stderr, as: UTF8.self).contains("--sort takes cpu, mem, procs or name"))
        let missing = try t.lmctl(["top", "--once", "/nothing"])
        #expect(missing.status == 5, "\(String(decoding: missing.stderr, as: UTF8.self))")
        let gone = try TestProcess.capture([builtTool("lmctl"), "--agent", "unix:///nonexistent/agent.sock", "top", "--once"])
        #expect(gone.status == 14)
    }

    /// The live view in tmux: sorted by CPU at first; `n` sorts by name,
    /// `m` by memory, `r` shows the grandchildren; a container made, paused
    /// and destroyed meanwhile shows up, frozen, and goes; `q` quits with 0
    /// and gives the terminal back.
    @Test(.enabled(if: access("/usr/bin/tmux", X_OK) == 0, "SKIPPED LOUDLY: tmux is not installed"))
    func liveViewInTmux() throws {
        let t = try TopAgent()
        defer { t.stop() }
        try t.must(["create", "/a", "cpu:{limit:500} memory:{limit:104857600} pids:{limit:100}"])
        try t.must(["create", "/b", "cpu:{limit:500} memory:{limit:104857600} pids:{limit:100}"])
        try t.must(["create", "/b/child", "memory:{limit:10485760}"])
        try t.must(["run", "-n", "/b", "/bin/sh", "-c", "while :; do :; done"])
        // /a holds more memory (a shell keeping 8 MiB), /b the CPU.
        try t.must(["run", "-n", "/a", "/bin/sh", "-c", "x=$(head -c 8388608 /dev/zero | tr '\\0' a); sleep 1000"])
        let tmux = Tmux()
        defer { tmux.kill() }
        let exitFile = t.agent.dir + "/top.exit"
        // Written aside and renamed: the shell creates the file before it
        // writes the status, and a poll in between read "" (a CI failure).
        try tmux.start("\(builtTool("lmctl")) --agent \(t.address) top; echo $? > \(exitFile).new; mv \(exitFile).new \(exitFile)")

        // The first frame with CPU figures: /b (busy) above /a.
        let first = try tmux.waitFor { screen in
            guard let a = screen.firstIndex(where: { $0.hasPrefix("/a ") }), let b = screen.firstIndex(where: { $0.hasPrefix("/b ") }) else { return false }
            return b < a && !(columns(screen.joined(separator: "\n"), "/b")?[1] == "-")
        }
        #expect(first[0].contains("lmctl top / (children)") && first[0].contains("sort cpu"), "\(first[0])")
        #expect(!first.contains { $0.hasPrefix("/b/child") }, "children only at first")

        tmux.keys("n")
        let byName = try tmux.waitFor { $0.first?.contains("sort name") == true }
        #expect(byName.firstIndex { $0.hasPrefix("/a ") }! < byName.firstIndex { $0.hasPrefix("/b ") }!, "\(byName)")

        tmux.keys("m")
        let byMemory = try tmux.waitFor { screen in
            screen.first?.contains("sort mem") == true
                && screen.firstIndex { $0.hasPrefix("/a ") }! < screen.firstIndex { $0.hasPrefix("/b ") }!
        }
        #expect(byMemory.first?.contains("sort mem") == true)

        tmux.keys("r")
        _ = try tmux.waitFor { $0.contains { $0.hasPrefix("/b/child ") } && $0.first?.contains("(all below)") == true }
        tmux.keys("c")
        _ = try tmux.waitFor { $0.first?.contains("sort cpu") == true }

        // Changes made meanwhile: a new container appears, its pause shows,
        // its destruction removes it.
        try t.must(["create", "/late", "memory:{limit:1048576}"])
        _ = try tmux.waitFor { columns($0.joined(separator: "\n"), "/late")?[3] == "1.0M" }
        try t.must(["pause", "/late"])
        _ = try tmux.waitFor { columns($0.joined(separator: "\n"), "/late")?[5] == "yes" }
        try t.must(["destroy", "/late"])
        _ = try tmux.waitFor { screen in !screen.contains { $0.hasPrefix("/late ") } }

        tmux.keys("q")
        var status: String?
        for _ in 0..<300 where status == nil {
            status = try? Sys.readFile(exitFile)
            if status == nil { usleep(10_000) }
        }
        #expect(status == "0\n", "lmctl top did not quit with 0 on q: \(String(describing: status))")
        // Back from the alternate screen: the shell's screen shows no table.
        let after = tmux.capture()
        #expect(!after.contains { $0.hasPrefix("NAME ") }, "the table stayed on the screen: \(after)")
        try t.must(["destroy", "-f", "/a"])
        try t.must(["destroy", "-f", "/b"])
    }
}

extension LmctlTopTests {
    /// Many containers: every row has its own limit.
    @Test func manyContainersEachWithItsLimit() throws {
        let t = try TopAgent()
        defer { t.stop() }
        let client = try RpcClient.connect(unixPath: t.agent.socket, name: "top-test")
        defer { client.close() }
        let count = 80
        for i in 1...count {
            var spec = ContainerSpec()
            spec.memory = MemorySpec(limit: Int64(i) * 1_048_576)
            _ = try client.call(AgentMethods.create, CreateRequest(name: "/m\(i)", spec: spec))
        }
        let out = try t.must(["top", "--once", "--sort", "name"])
        let rows = out.split(separator: "\n").dropFirst().map { $0.split(separator: " ").map(String.init) }
        #expect(rows.count == count, "\(out)")
        for row in rows {
            guard let i = Int(row[0].dropFirst(2)) else { Issue.record("row \(row)"); continue }
            #expect(row[3] == "\(i).0M", "\(row)")
        }
    }

    /// The agent going away under the live view: top gives the terminal
    /// back and exits with UNAVAILABLE (14), saying why.
    @Test(.enabled(if: access("/usr/bin/tmux", X_OK) == 0, "SKIPPED LOUDLY: tmux is not installed"))
    func liveViewEndsCleanlyWhenTheAgentGoes() throws {
        let t = try TopAgent()
        var stopped = false
        defer { if !stopped { t.stop() } }
        try t.must(["create", "/x", "memory:{limit:1048576}"])
        let tmux = Tmux()
        defer { tmux.kill() }
        let exitFile = t.agent.dir + ".top-exit"
        defer { _ = try? Sys.unlink(exitFile) }
        // Renamed into place, as in liveViewInTmux: never read half-written.
        try tmux.start("\(builtTool("lmctl")) --agent \(t.address) top 2>&1; echo status=$? > \(exitFile).new; mv \(exitFile).new \(exitFile)")
        _ = try tmux.waitFor { $0.contains { $0.hasPrefix("/x ") } }
        t.stop()
        stopped = true
        var status: String?
        for _ in 0..<500 where status == nil {
            status = try? Sys.readFile(exitFile)
            if status == nil { usleep(10_000) }
        }
        #expect(status == "status=14\n", "\(String(describing: status))")
        let screen = tmux.capture()
        #expect(screen.contains { $0.contains("Command exited with error message: 14") }, "\(screen)")
        #expect(!screen.contains { $0.hasPrefix("NAME ") }, "the table stayed: \(screen)")
    }
}

/// A tmux server of this test's own (-L), one window of 120x30.
final class Tmux {
    let socketName = "lmctfy-top-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"

    func tmux(_ args: [String]) -> ChildResult? {
        try? TestProcess.capture(["/usr/bin/tmux", "-L", socketName, "-f", "/dev/null"] + args)
    }

    /// Runs `command` (through sh) in a new detached session; the shell
    /// stays after it so the screen can be read.
    func start(_ command: String) throws {
        // The server must get signals (its panes' exits, kill-server's SIGHUPs).
        let status = try TestProcess.runWithSignalsUnblocked(
            ["/usr/bin/tmux", "-L", socketName, "-f", "/dev/null", "new-session", "-d", "-s", "top", "-x", "120", "-y", "30",
             "sh", "-c", command + "; sleep 1000"])
        guard status == 0 else { throw LmctfyError(.internal, "tmux new-session failed: \(status)") }
    }

    func keys(_ k: String) { _ = tmux(["send-keys", "-t", "top", k]) }

    /// The screen, one string per line, trailing blanks removed.
    func capture() -> [String] {
        guard let r = tmux(["capture-pane", "-p", "-t", "top"]) else { return [] }
        return String(decoding: r.stdout, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false).map {
            String($0.reversed().drop { $0 == " " }.reversed())
        }
    }

    /// The first screen `ok` accepts within 10 s; throws with the last screen.
    func waitFor(_ ok: ([String]) -> Bool) throws -> [String] {
        var screen: [String] = []
        for _ in 0..<200 {
            screen = capture()
            if ok(screen) { return screen }
            usleep(50_000)
        }
        throw LmctfyError(.deadlineExceeded, "screen never matched:\n\(screen.joined(separator: "\n"))")
    }

    /// Ends the server (SIGHUP to its panes) and removes its socket file.
    func kill() {
        _ = tmux(["kill-server"])
        _ = try? Sys.unlink("/tmp/tmux-\(getuid())/\(socketName)")
    }
}
