// The daemons at their open file limit (RLIMIT_NOFILE), set low with
// prlimit(1) on the real binaries: the agent does not spin, warns before the
// limit (at it, libuv closes each new connection at once, saying nothing),
// and serves again once peers go; the controller raises its soft limit to
// the hard one, as the agent does (it never did: a fleet of more than
// ~1,000 hosts had its new links closed at once under the usual soft limit).
import Glibc
import Lmctfy
import LmctfyProto
import LmctfyRPC
import LmctfySystem
import LmctfyTestSupport
import Testing

/// The soft and hard "Max open files" of `pid` (/proc/<pid>/limits).
private func openFileLimits(_ pid: pid_t) -> (soft: String, hard: String)? {
    guard let text = try? Sys.readFile("/proc/\(pid)/limits"),
          let line = text.split(separator: "\n").first(where: { $0.hasPrefix("Max open files") }) else { return nil }
    let f = line.split(separator: " ", omittingEmptySubsequences: true)
    return f.count >= 5 ? (String(f[3]), String(f[4])) : nil
}

/// User and system CPU ticks of `pid` so far.
private func cpuTicks(_ pid: pid_t) -> Int {
    guard let f = Sys.procStatFields("/proc/\(pid)/stat"), f.count > 12 else { return 0 }
    return (Int(f[11]) ?? 0) + (Int(f[12]) ?? 0)
}

/// An agent on `dir` (its config, socket, state and `agent.log`) serving
/// `root`, under an open file limit of 64; its pid.
private func agentAt64Files(_ dir: String, root: String) throws -> pid_t {
    try Sys.createFile(dir + "/agent.conf", """
        unix_socket_path: "\(dir)/agent.sock" unix_socket_mode: 0666 log_level: LOG_WARNING
        state_dir: "\(dir)/state" root_container: "\(root)" stats_interval_ms: 0
        """)
    return try TestProcess.spawn(["/bin/sh", "-c",
        "exec /usr/bin/prlimit --nofile=64:64 '\(builtTool("lmctfy-agent"))' --config '\(dir)/agent.conf' 2>'\(dir)/agent.log'"])
}

@Suite(.enabled(if: RealCgroups.available && Sys.exists("/usr/bin/prlimit"),
                "\(RealCgroups.unavailableReason ?? "prlimit(1) is not installed")"), .serialized)
struct FileLimitTests {
    @Test func theAgentAtItsFileLimitWarnsDoesNotSpinAndServesAgain() throws {
        let dir = "/tmp/lmctfy-filelimit-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try Sys.mkdir(dir, mode: 0o755)
        defer { _ = removeTree(dir) }
        let socket = dir + "/agent.sock"
        let root = RealCgroups.uniqueName("filelimit")
        _ = try TestProcess.capture([builtTool("lmctfy"), "create", root, "memory:{limit:100000000}"])
        defer { RealCgroups.destroy(root) }
        let pid = try agentAt64Files(dir, root: root)
        defer { TestProcess.end(pid) }
        var client: RpcClient?
        for _ in 0..<3000 where client == nil {
            client = try? RpcClient.connect(unixPath: socket)
            if client == nil { usleep(10_000) }
        }
        try #require(client != nil, "the agent did not listen")
        client?.close()
        // Peers that say nothing: more than the descriptors left.
        var peers: [Int32] = []
        defer { for fd in peers { close(fd) } }
        for _ in 0..<80 { if let fd = try? RpcSocket.connectUnix(path: socket) { peers.append(fd) } }
        usleep(500_000)
        let before = cpuTicks(pid)
        usleep(1_000_000)
        let spent = cpuTicks(pid) - before
        // A spin on EMFILE (accept failing at once, again and again) is a
        // whole CPU: 100 ticks a second.
        #expect(spent < 50, "\(spent) CPU ticks in a second at the file limit")
        let log = (try? Sys.readFile(dir + "/agent.log")) ?? ""
        #expect(log.contains("of an open file limit of 64 (RLIMIT_NOFILE)"), "\(log)")
        for fd in peers { close(fd) }
        peers = []
        // Served again: the descriptors came back.
        var served = false
        for _ in 0..<300 where !served {
            if let c = try? RpcClient.connect(unixPath: socket) {
                served = (try? c.call("Ping", PingRequest(data: [1]), as: PingResponse.self)) != nil
                c.close()
            }
            if !served { usleep(10_000) }
        }
        #expect(served, "no answer once the silent peers had gone")
    }

    /// Containers whose OOM eventfds the open file limit refuses are said
    /// in the log (they were skipped silently: their OOMs were never
    /// events), and the eventfds stop at half the limit: the rest is the
    /// clients' (they took every descriptor, and every client was refused
    /// without a word; a probe). v1: v2 reports OOMs through inotify on
    /// memory.events.
    @Test(.enabled(if: (try? CgroupMounts.detect())?.version == .v1, "v1's OOM eventfds"))
    func containersTheWatcherCannotWatchAreSaidInTheLog() throws {
        let dir = "/tmp/lmctfy-filelimit-watch-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try Sys.mkdir(dir, mode: 0o755)
        defer { _ = removeTree(dir) }
        let root = RealCgroups.uniqueName("filelimitwatch")
        let lmctfy = builtTool("lmctfy")
        _ = try TestProcess.capture([lmctfy, "create", root, "memory:{limit:400000000}"])
        defer { _ = try? TestProcess.capture([lmctfy, "destroy", "-f", root]) }
        for i in 0..<40 { _ = try TestProcess.capture([lmctfy, "create", "\(root)/c\(i)", "memory:{limit:10000000}"]) }
        let pid = try agentAt64Files(dir, root: root)
        defer { TestProcess.end(pid) }
        var log = ""
        let said = "are read on a timer, not evented"
        for _ in 0..<3000 where !log.contains(said) {
            usleep(10_000)
            log = (try? Sys.readFile(dir + "/agent.log")) ?? ""
        }
        #expect(log.contains(said) && log.contains("reached half of the open file limit (RLIMIT_NOFILE 64)"), "\(log)")
        // Every container looked at (the first listing), and clients served.
        var served = false
        for _ in 0..<300 where !served {
            if let c = try? RpcClient.connect(unixPath: dir + "/agent.sock") {
                served = (try? c.call(AgentMethods.machineInfo, MachineInfoRequest())) != nil
                    && (try? c.call(AgentMethods.listContainers, ListContainersRequest(name: "/")))?.names.count == 40
                c.close()
            }
            if !served { usleep(10_000) }
        }
        #expect(served, "no client served under the open file limit: \((try? Sys.readFile(dir + "/agent.log")) ?? "")")
        // The OOM kills of one past the ceiling are events all the same:
        // its counter is read on a timer (they were lost, and a Notify of
        // it never ended; a probe).
        let marker = "the OOMs of container \(root)/"
        let at = try #require(log.range(of: marker), "no container past the ceiling named: \(log)")
        let sub = String(log[at.upperBound...].prefix { $0 != " " })
        let c = try ContainerApi.detect().get(try ContainerName.resolve(root + "/" + sub, relativeTo: .root))
        let hog = try c.run([testHelperPath, "alloc", "200"])
        for _ in 0..<30_000 where kill(hog, 0) == 0 { usleep(1000) }  // killed by the OOM killer
        let client = try RpcClient.connect(unixPath: dir + "/agent.sock")
        defer { client.close() }
        var oom: ContainerEvent?
        try client.stream(AgentMethods.notify, NotifyRequest(name: "/" + sub, spec: EventSpec(oom: EventSpec.Oom()), afterSequence: 0),
                          deadlineMs: 30_000) { (r: NotifyResponse) in
            oom = r.event ?? oom
            return oom == nil
        }
        #expect(oom?.container == "/" + sub, "the OOM kill of /\(sub), past the descriptor ceiling, is an event")
    }

    @Test func theControllerRaisesItsSoftFileLimit() throws {
        let dir = "/tmp/lmctfy-filelimit-ctl-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try Sys.mkdir(dir, mode: 0o700)
        defer { _ = removeTree(dir) }
        try Sys.createFile(dir + "/controller.conf", """
            unix_socket_path: "\(dir)/controller.sock" unix_socket_mode: 0666
            agent_address: "127.0.0.1:0" allow_plaintext_tcp: true key_file: "\(dir)/keys"
            state_dir: "\(dir)/state" log_level: LOG_WARNING
            """, mode: 0o600)
        try Sys.createFile(dir + "/keys", "k \(JSONFormat.base64Encoded(Crypto.randomBytes(32)))\n", mode: 0o600)
        let pid = try TestProcess.spawn(["/bin/sh", "-c",
            "exec /usr/bin/prlimit --nofile=1024:4096 '\(builtTool("lmctfy-controller"))' --config '\(dir)/controller.conf'"])
        defer { TestProcess.end(pid) }
        for _ in 0..<3000 where !Sys.exists(dir + "/controller.sock") { usleep(10_000) }
        try #require(Sys.exists(dir + "/controller.sock"), "the controller did not start")
        let limits = openFileLimits(pid)
        #expect(limits?.soft == "4096" && limits?.hard == "4096", "\(String(describing: limits))")
    }
}
