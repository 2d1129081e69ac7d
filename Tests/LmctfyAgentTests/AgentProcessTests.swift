// The built lmctfy-agent binary as a process: what only a real process shows
// (its RSS under a peer that does not read, its exit codes, its state dir).
import Glibc
import Lmctfy
import LmctfyAgent
import LmctlCommands
import LmctfyProto
import LmctfyRPC
import LmctfySystem
import LmctfyTestSupport
import Testing

/// A lmctfy-agent process on a private socket and state dir, SIGTERMed and
/// reaped at the end.
struct AgentProcess {
    let dir: String
    let socket: String
    let pid: pid_t

    /// `reusing`: the directory (socket, state) of an agent that died, for
    /// its successor. `environment`: extra variables for the agent only.
    init(config extra: String = "", reusing: String? = nil, environment: [String] = []) throws {
        dir = reusing ?? "/tmp/lmctfy-agent-proc-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        socket = dir + "/agent.sock"
        if reusing == nil {
            try Sys.mkdir(dir, mode: 0o755)
            let config = """
                unix_socket_path: "\(socket)" unix_socket_mode: 0666 log_level: LOG_WARNING
                state_dir: "\(dir)/state" \(extra)
                """
            try Sys.createFile(dir + "/agent.conf", config)
        } else {
            // The dead agent's socket file; the new one would replace it,
            // but the wait below must see the new one.
            _ = try? Sys.unlink(socket)
        }
        pid = try spawnWithEnvironment([builtTool("lmctfy-agent"), "--config", dir + "/agent.conf"], environment)
        // Listening, not only bound: the file exists a moment before the
        // agent listens on it (a connect then is refused; seen under load).
        // (30 s: a sanitized agent, on a machine the other tests load.)
        var listening = false
        for _ in 0..<3000 where !listening {
            if Sys.exists(socket), let fd = try? RpcSocket.connectUnix(path: socket) {
                close(fd)
                listening = true
            } else {
                usleep(10_000)
            }
        }
        guard listening else {
            TestProcess.end(pid)
            throw LmctfyError(.unavailable, "lmctfy-agent did not listen on \(socket)")
        }
    }

    /// Resident set size in bytes (VmRSS).
    var rss: Int {
        guard let status = try? Sys.readFile("/proc/\(pid)/status"),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
              let kb = Int(line.split(separator: " ").dropFirst().first ?? "") else { return 0 }
        return kb * 1024
    }

    /// SIGKILL, as a crash: the directory stays for a successor.
    func crash() { TestProcess.end(pid) }

    /// SIGTERM, as a clean stop; `keepingState`: the directory stays for a
    /// successor (the socket is gone: the agent removes it).
    func stop(keepingState: Bool = false) {
        kill(pid, SIGTERM)
        // Once reaped, reapIfExited answers nil (not our child any more):
        // stop asking then, or every stop would sleep the whole wait. (30 s:
        // a sanitized agent on a loaded machine; SIGKILLed before its clean
        // end, a test of what a clean stop leaves saw a crash's.)
        var reaped = false
        for _ in 0..<3000 where !reaped {
            reaped = TestProcess.reapIfExited(pid) != nil
            if !reaped { usleep(10_000) }
        }
        if !reaped { TestProcess.end(pid) }
        if !keepingState { _ = removeTree(dir) }
    }
}

/// posix_spawn with `extra` added to this process's environment (the test
/// process's own stays untouched: other suites run agents in-process).
func spawnWithEnvironment(_ argv: [String], _ extra: [String]) throws -> pid_t {
    var cargs = argv.map { strdup($0) }
    cargs.append(nil)
    var env = extra.map { strdup($0) }
    var p = environ
    while let e = p.pointee {
        env.append(strdup(e))
        p += 1
    }
    env.append(nil)
    defer {
        for c in cargs { free(c) }
        for e in env { free(e) }
    }
    var pid: pid_t = 0
    let rc = posix_spawn(&pid, argv[0], nil, nil, cargs, env)
    guard rc == 0 else { throw SystemError("posix_spawn", argv[0], rc) }
    return pid
}

/// A peer that handshakes, then writes pipelined requests and never reads.
struct SlowReader {
    let fd: Int32
    var session: Session
    var nextId: UInt32 = 1

    init(socket: String) throws {
        fd = try RpcSocket.connectUnix(path: socket)
        session = Session(dialler: .peerCredentials, name: "slow-reader", now: MonotonicClock.milliseconds())
        var buf = [UInt8](repeating: 0, count: 65536)
        var actions = session.start(now: MonotonicClock.milliseconds())
        while true {
            for case .write(let bytes) in actions { try Sys.writeAll(fd, bytes) }
            if session.isEstablished { break }
            guard !session.isClosed else { throw LmctfyError(.unavailable, "handshake failed") }
            let n = read(fd, &buf, buf.count)
            guard n > 0 else { throw LmctfyError(.unavailable, "agent closed during the handshake") }
            actions = session.receive(buf[0..<n], now: MonotonicClock.milliseconds())
        }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
    }

    /// Writes Ping requests of `payload` until `total` bytes are written or
    /// the agent has taken nothing for `stallMs`. Returns the bytes written.
    mutating func flood(payload: [UInt8], total: Int, stallMs: UInt64, sample: () -> Void) -> Int {
        var written = 0
        var frame: [UInt8] = []
        var offset = 0
        var lastProgress = MonotonicClock.milliseconds()
        while written < total {
            if offset == frame.count {
                frame = FrameCodec.encode(Frame(kind: .frameRequest, streamId: nextId, method: "Ping", payload: payload))
                nextId += 2
                offset = 0
            }
            let n = frame[offset...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if n > 0 {
                offset += n
                written += n
                lastProgress = MonotonicClock.milliseconds()
                if written % (16 << 20) < n { sample() }
                continue
            }
            if n < 0 && errno != EAGAIN && errno != EINTR { break }
            sample()
            if MonotonicClock.milliseconds() - lastProgress >= stallMs { break }
            var p = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            _ = poll(&p, 1, 50)
        }
        return written
    }

    func close() { _ = Glibc.close(fd) }
}

/// p99 of `count` small Ping round trips on a fresh connection, in µs.
func pingP99(_ socket: String, count: Int = 400) throws -> UInt64 {
    let client = try RpcClient.connect(unixPath: socket)
    defer { client.close() }
    var times: [UInt64] = []
    for i in 0..<count {
        let t0 = MonotonicClock.nanoseconds()
        _ = try client.call("Ping", PingRequest(data: Array("\(i)".utf8)), as: PingResponse.self)
        times.append((MonotonicClock.nanoseconds() - t0) / 1000)
    }
    times.sort()
    return times[times.count * 99 / 100]
}

@Suite(.enabled(if: RealCgroups.available, "\(RealCgroups.unavailableReason ?? "")"), .serialized)
struct AgentProcessTests {
    /// SIGUSR1 (log rotation sends it) and SIGUSR2 ended the agent at once,
    /// by their default, without a clean stop (the agent probe): logged and
    /// ignored; the agent serves on and stops cleanly after.
    /// A call for a host (Frame.host) reaching an agent is refused: a
    /// controller routes it. `lmctl --controller <an agent's socket> --host
    /// beta create` made the container on that agent, whatever host it
    /// named (the fleet probe).
    @Test func aCallRoutedToAHostIsRefusedByAnAgent() throws {
        let agent = try AgentProcess()
        defer { agent.stop() }
        let client = try RpcClient.connect(unixPath: agent.socket)
        defer { client.close() }
        client.host = "beta"
        #expect { _ = try client.call(AgentMethods.machineInfo, MachineInfoRequest()) } throws: { e in
            let e = e as? LmctfyError
            return e?.code == .invalidArgument && e?.message.contains("not a controller") == true
        }
        client.host = nil
        _ = try client.call(AgentMethods.machineInfo, MachineInfoRequest())
        let name = RealCgroups.uniqueName("routedaway")
        defer { RealCgroups.destroy(name) }
        let r = try TestProcess.capture([builtTool("lmctl"), "--controller", "unix://" + agent.socket, "--host", "beta", "create", name, ""])
        #expect(r.status == 3, "\(r.status) \(String(decoding: r.stderr, as: UTF8.self))")
        #expect(try !ContainerApi.detect().exists(try ContainerName.resolve(name, relativeTo: .root)), "made on the agent")
    }

    @Test func userSignalsNeitherStopNorKillTheAgent() throws {
        let agent = try AgentProcess()
        defer { agent.stop() }
        #expect(kill(agent.pid, SIGUSR1) == 0 && kill(agent.pid, SIGUSR2) == 0)
        usleep(300_000)
        #expect(!TestProcess.hasExited(agent.pid), "the agent ended")
        let client = try RpcClient.connect(unixPath: agent.socket)
        defer { client.close() }
        _ = try client.call(AgentMethods.machineInfo, MachineInfoRequest())
    }

    /// Issue 9 item 11: a client that pipelines 1 GiB of 60 KB Pings and
    /// never reads must not grow the agent (it stops reading from that peer),
    /// and must not slow anyone else down.
    @Test func aSlowReaderIsThrottledNotBuffered() throws {
        let agent = try AgentProcess()
        defer { agent.stop() }
        let rssIdle = agent.rss
        let p99Before = try pingP99(agent.socket)
        var reader = try SlowReader(socket: agent.socket)
        let payload = try PingRequest(data: [UInt8](repeating: 0x5a, count: 60 * 1024)).serializedBytes()
        var peak = 0
        let t0 = MonotonicClock.milliseconds()
        let written = reader.flood(payload: payload, total: 1 << 30, stallMs: 1500) { peak = max(peak, agent.rss) }
        let floodMs = MonotonicClock.milliseconds() - t0
        // The reader is still connected, its answers unread.
        let p99During = try pingP99(agent.socket)
        peak = max(peak, agent.rss)
        reader.close()
        usleep(500_000)
        let rssAfter = agent.rss
        print("slow reader: wrote \(written >> 20) MiB in \(floodMs) ms; agent RSS idle \(rssIdle >> 20) MiB, peak \(peak >> 20) MiB, after \(rssAfter >> 20) MiB; ping p99 \(p99Before) µs before, \(p99During) µs during")
        #expect(peak < 64 << 20, "agent RSS peaked at \(peak >> 20) MiB")
        #expect(rssAfter < 64 << 20, "agent RSS after the reader left: \(rssAfter >> 20) MiB")
        #expect(written < 1 << 30, "the agent stopped reading from the slow reader")
        #expect(p99During <= max(3 * p99Before, p99Before + 20_000), "ping p99 \(p99Before) µs before, \(p99During) µs during")
    }

    /// The agent-wide limit: two slow readers, each under its own limit,
    /// together pass the agent's; both are stopped, and a third client that
    /// reads its answers is still served.
    /// At a task limit (systemd's TasksMax, a pids cgroup) a call that needs
    /// a thread the kernel will not give is refused with RESOURCE_EXHAUSTED
    /// and the agent goes on: pthread_create's EAGAIN stopped it (a probe,
    /// with any reader's Notify streams).
    @Test(.enabled(if: (try? CgroupMounts.detect())?.v1[.pids] != nil, "needs the cgroup v1 pids hierarchy"))
    func aTaskLimitRefusesACallAndTheAgentGoesOn() throws {
        let pids = try #require(try CgroupMounts.detect().v1[.pids])
        try withTestContainer(try ContainerApi.detect()) { name in
            try ContainerApi.detect().create(name, spec: ContainerSpec(memory: MemorySpec(limit: 64 << 20)))
            let agent = try AgentProcess()
            let group = pids + "/" + RealCgroups.uniqueName("tasks")
            try Sys.mkdir(group, mode: 0o755)
            defer {
                agent.stop()
                for _ in 0..<100 where (try? Sys.rmdir(group)) == nil && Sys.exists(group) { usleep(10_000) }
            }
            let client = try RpcClient.connect(unixPath: agent.socket)
            defer { client.close() }
            // The pool's threads exist before the limit.
            _ = try client.call("ListContainers", ListContainersRequest(name: "/"), as: ListContainersResponse.self)
            try Sys.writeFile(group + "/cgroup.procs", "\(agent.pid)")
            try Sys.writeFile(group + "/pids.max", try Sys.readFile(group + "/pids.current").trimmingWhitespace)
            let notify = NotifyRequest(name: name.path, spec: EventSpec(oom: EventSpec.Oom()))
            for _ in 0..<3 {
                #expect {
                    try client.stream("Notify", notify, as: NotifyResponse.self, deadlineMs: 2000) { _ in true }
                } throws: { error in
                    let e = error as? LmctfyError
                    return e?.code == .resourceExhausted && e?.message.contains("could not start a thread") == true
                }
            }
            _ = try client.call("Ping", PingRequest(), as: PingResponse.self)
            #expect(kill(agent.pid, 0) == 0, "the agent is alive")
            // Without the limit the same call is served (until its deadline).
            try Sys.writeFile(group + "/pids.max", "max")
            #expect {
                try client.stream("Notify", notify, as: NotifyResponse.self, deadlineMs: 200) { _ in true }
            } throws: { ($0 as? LmctfyError)?.code == .deadlineExceeded }
        }
    }

    @Test func theAgentWideLimitStopsEveryPeerThatHoldsSomething() throws {
        let agent = try AgentProcess(config: "limits { max_connection_buffered_bytes: 100000000 max_agent_buffered_bytes: 3000000 }")
        defer { agent.stop() }
        let payload = try PingRequest(data: [UInt8](repeating: 1, count: 60 * 1024)).serializedBytes()
        var a = try SlowReader(socket: agent.socket)
        var b = try SlowReader(socket: agent.socket)
        defer { a.close(); b.close() }
        let wroteA = a.flood(payload: payload, total: 64 << 20, stallMs: 1000) {}
        let wroteB = b.flood(payload: payload, total: 64 << 20, stallMs: 1000) {}
        print("agent-wide limit: slow readers wrote \(wroteA >> 10) KiB and \(wroteB >> 10) KiB; agent RSS \(agent.rss >> 20) MiB")
        #expect(wroteA < 8 << 20 && wroteB < 8 << 20)
        #expect(try pingP99(agent.socket, count: 50) < 200_000)
    }

    /// Every peer that held nothing was read, and its answer queued whole,
    /// however far past its limit the agent already was: 100 peers that
    /// sent a 4 MB Ping each and read nothing took the agent to 1.2 GB (a
    /// probe). An answer over 64 KiB that would take the agent past the
    /// limit is refused (RESOURCE_EXHAUSTED) instead; small ones still go,
    /// and big ones again once the peers have gone.
    @Test func bigAnswersPastTheAgentWideLimitAreRefusedNotQueued() throws {
        let agent = try AgentProcess(config: "limits { max_agent_buffered_bytes: 2000000 }")
        defer { agent.stop() }
        let data = [UInt8](repeating: 7, count: 1 << 20)
        let big = try PingRequest(data: data).serializedBytes()
        var readers: [SlowReader] = []
        defer { for r in readers { r.close() } }
        for _ in 0..<12 {
            var r = try SlowReader(socket: agent.socket)
            #expect(r.flood(payload: big, total: big.count, stallMs: 2000) {} >= big.count)
            readers.append(r)
        }
        usleep(300_000)
        let client = try RpcClient.connect(unixPath: agent.socket)
        defer { client.close() }
        #expect {
            _ = try client.call("Ping", PingRequest(data: data), as: PingResponse.self)
        } throws: { error in
            let e = error as? LmctfyError
            return e?.code == .resourceExhausted && e?.message.contains("max_agent_buffered_bytes") == true
        }
        #expect(try client.call("Ping", PingRequest(data: [1, 2, 3]), as: PingResponse.self).data == [1, 2, 3])
        for r in readers { r.close() }
        readers = []
        var echoed = false
        for _ in 0..<40 where !echoed {
            echoed = (try? client.call("Ping", PingRequest(data: data), as: PingResponse.self).data == data) ?? false
            if !echoed { usleep(50_000) }
        }
        #expect(echoed, "a big answer once the slow peers had gone")
    }
}

/// Issue 9 item 14: an agent killed in the middle of a Create (after the
/// cgroup work, before the answer: the LMCTFY_AGENT_TEST_HOLD_AFTER hook),
/// then restarted. The caller retries with the same request_id and gets OK,
/// and there is one container; lmctl does that by itself.
@Suite(.enabled(if: RealCgroups.available, "\(RealCgroups.unavailableReason ?? "")"), .serialized)
struct AgentRetryTests {
    static let hold = ["LMCTFY_AGENT_TEST_HOLD_AFTER=Create"]

    /// Waits for the held call's marker (at most 20 s).
    func waitForHold(_ agent: AgentProcess) -> Bool {
        for _ in 0..<2000 where !Sys.exists(agent.dir + "/state/test-hold") { usleep(10_000) }
        return Sys.exists(agent.dir + "/state/test-hold")
    }

    func destroy(_ name: String) {
        RealCgroups.destroy(name)
    }

    func count(_ name: String, _ client: RpcClient) throws -> Int {
        try client.call(AgentMethods.listContainers, ListContainersRequest(name: "/", recursive: false)).names.filter { $0 == name }.count
    }

    /// Also with a memory limit the kernel rounds to pages (100000000
    /// reads back 99999744): the retry was ALREADY_EXISTS (a probe).
    @Test(arguments: [ContainerSpec(pids: PidsSpec(limit: 50)), ContainerSpec(memory: MemorySpec(limit: 100_000_000))])
    func aCreateTheAgentDiedUnderSucceedsWhenRetriedWithItsId(_ asked: ContainerSpec) throws {
        let name = RealCgroups.uniqueName("retry")
        defer { destroy(name) }
        let first = try AgentProcess(environment: Self.hold)
        var firstAlive = true
        defer { if firstAlive { first.stop() } }
        let create = CreateRequest(name: name, spec: asked, requestId: RemoteBackend.newRequestId())
        var peer = try SlowReader(socket: first.socket)
        defer { peer.close() }
        let (_, actions) = peer.session.openStream(method: "Create", payload: try create.serializedBytes(), deadlineMs: nil,
                                                   now: MonotonicClock.milliseconds())
        for case .write(let bytes) in actions { try Sys.writeAll(peer.fd, bytes) }
        try #require(waitForHold(first), "the agent did not reach the hold")
        first.crash()
        firstAlive = false
        #expect(try ContainerApi.detect().exists(try ContainerName.resolve(name, relativeTo: .root)), "made before the crash")

        let second = try AgentProcess(reusing: first.dir)
        defer { second.stop() }
        let client = try RpcClient.connect(unixPath: second.socket)
        defer { client.close() }
        #expect(throws: Never.self) { _ = try client.call(AgentMethods.create, create) }
        #expect(throws: Never.self, "replayed") { _ = try client.call(AgentMethods.create, create) }
        var fresh = create
        fresh.requestId = RemoteBackend.newRequestId()
        #expect(throws: LmctfyError.self) { _ = try client.call(AgentMethods.create, fresh) }
        #expect(try count(name, client) == 1)
        let spec = try client.call(AgentMethods.spec, SpecRequest(name: name)).spec
        if asked.pids != nil { #expect(spec?.pids?.limit == 50) }
        if asked.memory != nil { #expect(spec?.memory?.limit == 100_000_000 / Sys.pageSize * Sys.pageSize) }
    }

    @Test func lmctlRetriesOnceWhenTheAgentRestartsUnderIt() throws {
        let name = RealCgroups.uniqueName("lmctlretry")
        defer { destroy(name) }
        let first = try AgentProcess(environment: Self.hold)
        var firstAlive = true
        defer { if firstAlive { first.stop() } }
        let lmctl = BackgroundRun([builtTool("lmctl"), "--agent", "unix://" + first.socket, "create", name, "pids:{limit:50}"])
        try #require(waitForHold(first), "the agent did not reach the hold")
        first.crash()
        firstAlive = false
        let second = try AgentProcess(reusing: first.dir)
        defer { second.stop() }
        let r = try #require(lmctl.result(seconds: 30), "lmctl did not finish")
        let err = String(decoding: r.stderr, as: UTF8.self)
        #expect(r.status == 0, "\(err)")
        #expect(err.contains("retrying once"), "\(err)")
        let client = try RpcClient.connect(unixPath: second.socket)
        defer { client.close() }
        #expect(try count(name, client) == 1)
    }

    /// The agent killed after a change and its event, before its answer:
    /// lmctl's retry is a redo, which finds the event the dead agent
    /// recorded and does not make (nor record) the change again. An
    /// Update, a Pause or a Resume so recorded its event twice (a probe).
    @Test(arguments: ["Update", "Pause", "Resume"])
    func aRedoneChangeIsRecordedOnce(_ method: String) throws {
        let name = RealCgroups.uniqueName("redo")
        defer { destroy(name) }
        let first = try AgentProcess(environment: ["LMCTFY_AGENT_TEST_HOLD_AFTER=\(method)"])
        var firstAlive = true
        defer { if firstAlive { first.stop() } }
        let lmctl = [builtTool("lmctl"), "--agent", "unix://" + first.socket]
        #expect(try TestProcess.capture(lmctl + ["create", name, "cpu:{limit:100}"]).status == 0)
        if method == "Resume" {
            #expect(try TestProcess.capture(lmctl + ["pause", name]).status == 0)
        }
        let verb = switch method {
        case "Update": ["update", "diff", name, "cpu:{limit:200}"]
        case "Pause": ["pause", name]
        default: ["resume", name]
        }
        let run = BackgroundRun(lmctl + verb)
        try #require(waitForHold(first), "the agent did not reach the hold")
        first.crash()
        firstAlive = false
        let second = try AgentProcess(reusing: first.dir)
        defer { second.stop() }
        let r = try #require(run.result(seconds: 30), "lmctl did not finish")
        let err = String(decoding: r.stderr, as: UTF8.self)
        #expect(r.status == 0 && err.contains("retrying once"), "\(err)")
        let all = try TestProcess.capture([builtTool("lmctl"), "--agent", "unix://" + second.socket, "-o", "json", "events", name])
        let lines = String(decoding: all.stdout, as: UTF8.self).split(separator: "\n")
        let kind = method == "Update" ? "CONTAINER_EVENT_UPDATED" : "CONTAINER_EVENT_FREEZER"
        let frozen = method == "Pause" ? "true" : "false"
        let recorded = lines.filter { $0.contains(kind) && (method == "Update" || $0.contains("\"frozen\":\(frozen)")) }
        #expect(recorded.count == 1, "\(lines)")
    }

    /// A verb started while the agent is restarting (its socket left by
    /// the one killed, nobody listening yet: ECONNREFUSED) waits for it, up
    /// to 2 s, instead of failing at once (nothing was sent: safe). No
    /// socket at all still fails at once. The same for a create with a
    /// policy flag (--tier, --dry-run), which failed with 14 at once (the
    /// policy probe).
    @Test func lmctlWaitsForAnAgentThatIsRestarting() throws {
        let name = RealCgroups.uniqueName("lmctlwait")
        let tiered = RealCgroups.uniqueName("lmctlwaittier")
        defer { destroy(name); destroy(tiered) }
        let first = try AgentProcess()
        first.crash()
        #expect(Sys.exists(first.socket), "the killed agent's socket is not there")
        let agent = [builtTool("lmctl"), "--agent", "unix://" + first.socket]
        let lmctl = BackgroundRun(agent + ["create", name, "pids:{limit:50}"])
        let withTier = BackgroundRun(agent + ["create", "--tier", "prod", tiered, "memory:{limit:10485760}"])
        let dryRun = BackgroundRun(agent + ["-o", "json", "create", "--dry-run", name + "_dry", "pids:{limit:50}"])
        usleep(300_000)
        let second = try AgentProcess(reusing: first.dir)
        defer { second.stop() }
        let r = try #require(lmctl.result(seconds: 30), "lmctl did not finish")
        #expect(r.status == 0, "\(String(decoding: r.stderr, as: UTF8.self))")
        let t = try #require(withTier.result(seconds: 30), "lmctl create --tier did not finish")
        #expect(t.status == 0, "\(String(decoding: t.stderr, as: UTF8.self))")
        let d = try #require(dryRun.result(seconds: 30), "lmctl create --dry-run did not finish")
        #expect(d.status == 0 && String(decoding: d.stdout, as: UTF8.self).contains("\"admitted\":true"),
                "\(d.status) \(String(decoding: d.stdout, as: UTF8.self)) \(String(decoding: d.stderr, as: UTF8.self))")
        let client = try RpcClient.connect(unixPath: second.socket)
        defer { client.close() }
        #expect(try count(name, client) == 1)
        #expect(try count(tiered, client) == 1)
        let started = MonotonicClock.milliseconds()
        let none = try TestProcess.capture([builtTool("lmctl"), "--agent", "unix://" + first.dir + "/no.sock", "list", "containers"])
        #expect(none.status == StatusCode.unavailable.rawValue && MonotonicClock.milliseconds() - started < 1500,
                "\(none.status) after \(MonotonicClock.milliseconds() - started) ms")
    }

    /// Two agents cannot share a state_dir: the second, on another socket,
    /// exits at once with 9 naming the first's pid, before it recovers or
    /// journals anything (it ran beside the first, both appending to the
    /// event journal). Once the first has stopped, the dir is free again.
    @Test func twoAgentsCannotShareAStateDir() throws {
        let first = try AgentProcess()
        var firstRunning = true
        defer { if firstRunning { first.stop() } }
        let config = first.dir + "/second.conf"
        try Sys.createFile(config, """
            unix_socket_path: "\(first.dir)/second.sock" log_level: LOG_WARNING
            state_dir: "\(first.dir)/state"
            """)
        let r = try TestProcess.capture([builtTool("lmctfy-agent"), "--config", config])
        let err = String(decoding: r.stderr, as: UTF8.self)
        #expect(r.status == StatusCode.failedPrecondition.rawValue, "\(err)")
        #expect(err.contains("state_dir \(first.dir)/state is in use by another agent (pid \(first.pid))"), "\(err)")
        #expect(!Sys.exists(first.dir + "/second.sock"))
        // Stopped, the first lets it go: a successor takes the same dir.
        kill(first.pid, SIGTERM)
        var reaped = false
        for _ in 0..<500 where !reaped {
            reaped = TestProcess.reapIfExited(first.pid) != nil
            if !reaped { usleep(10_000) }
        }
        try #require(reaped, "the first agent did not stop on SIGTERM")
        firstRunning = false
        let second = try AgentProcess(reusing: first.dir)
        defer { second.stop() }
        #expect(try Sys.readFile(first.dir + "/state/agent.lock").trimmingWhitespace == "\(second.pid)")
    }

    /// An agent that answers UNAVAILABLE itself (here the kernel refusing,
    /// EBUSY, a memory limit below what the container's processes hold
    /// and cannot give back: no swap) is still there: lmctl reports its
    /// answer and does not send the call again (it said "retrying once"
    /// and repeated it).
    @Test(.enabled(if: hostHasNoSwap, "this machine has swap: a memory limit below usage would be met by swapping, not refused (EBUSY)"))
    func lmctlDoesNotRetryAnUnavailableAnswer() throws {
        let name = RealCgroups.uniqueName("lmctlnoretry")
        defer { destroy(name) }
        let agent = try AgentProcess()
        defer { agent.stop() }
        let lmctl = [builtTool("lmctl"), "--agent", "unix://" + agent.socket]
        #expect(try TestProcess.capture(lmctl + ["create", name, "memory:{limit:268435456}"]).status == 0)
        #expect(try TestProcess.capture(lmctl + ["run", "-n", name, testHelperPath, "alloc", "64", "300"]).status == 0)
        let api = try ContainerApi.detect()
        let container = try api.get(try ContainerName.resolve(name, relativeTo: .root))
        var held = false
        for _ in 0..<1500 where !held {
            held = ((try? container.stats(.summary))?.memory?.usage ?? 0) > 64 << 20
            if !held { usleep(20_000) }
        }
        #expect(held, "the helper holds 64 MiB")
        let r = try TestProcess.capture(lmctl + ["update", "diff", name, "memory:{limit:16777216}"])
        let err = String(decoding: r.stderr, as: UTF8.self)
        #expect(r.status == 14, "\(err)")
        #expect(!err.contains("retrying"), "\(err)")
        #expect(err.contains("limit_in_bytes") || err.contains("memory.max"), "\(err)")
    }
}

/// `lmctfy-agent --check-config`: exit 0 and "config OK", or exit 3 for
/// every kind of config error (issue 9 item 13), as --help says.
@Suite struct AgentCheckConfigTests {
    func check(_ files: [String: (String, mode_t)], _ config: String) throws -> ChildResult {
        let dir = "/tmp/lmctfy-check-config-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try Sys.mkdir(dir, mode: 0o700)
        defer { _ = removeTree(dir) }
        for (name, (text, mode)) in files {
            try Sys.createFile(dir + "/" + name, text.split(separator: "DIR", omittingEmptySubsequences: false).joined(separator: dir), mode: mode)
            chmod(dir + "/" + name, mode)
        }
        return try TestProcess.capture([builtTool("lmctfy-agent"), "--check-config", "--config", dir + "/" + config])
    }

    @Test func everyConfigErrorExits3() throws {
        let key = "ops " + JSONFormat.base64Encoded((0..<32).map { UInt8($0) }) + "\n"
        let good = try check(["a.conf": ("unix_socket_path: \"DIR/s\" state_dir: \"DIR/state\"", 0o644)], "a.conf")
        #expect(good.status == 0 && String(decoding: good.stdout, as: UTF8.self).hasPrefix("config OK"))
        let reserving = try check(["a.conf": ("unix_socket_path: \"DIR/s\" state_dir: \"DIR/state\" policy { reserved_memory_bytes: 1048576 reserved_milli_cpu: 100 }", 0o644)], "a.conf")
        #expect(reserving.status == 0, "a reservation below the machine's: \(String(decoding: reserving.stderr, as: UTF8.self))")
        let cases: [(String, [String: (String, mode_t)])] = [
            ("missing file", [:]),
            ("syntax", ["a.conf": ("no_such_key: 1", 0o644)]),
            ("value", ["a.conf": ("unix_socket_path: \"relative\"", 0o644)]),
            // Longer than sun_path holds: it failed only at bind, after the
            // whole restart recovery.
            ("socket path too long", ["a.conf": ("unix_socket_path: \"/tmp/\(String(repeating: "s", count: 110))\"", 0o644)]),
            ("key file others can read", ["a.conf": ("tcp_address: \"127.0.0.1:0\" allow_plaintext_tcp: true key_file: \"DIR/keys\"", 0o644), "keys": (key, 0o644)]),
            ("missing key file", ["a.conf": ("tcp_address: \"127.0.0.1:0\" allow_plaintext_tcp: true key_file: \"DIR/nokeys\"", 0o644)]),
            // A reservation of the whole machine: every Create was refused
            // by an agent that started fine.
            ("memory reserved past the machine's", ["a.conf": ("unix_socket_path: \"DIR/s\" state_dir: \"DIR/state\" policy { reserved_memory_bytes: 1099511627776000 }", 0o644)]),
            ("CPU reserved past the machine's", ["a.conf": ("unix_socket_path: \"DIR/s\" state_dir: \"DIR/state\" policy { reserved_milli_cpu: 1000000000 }", 0o644)]),
        ]
        for (what, files) in cases {
            let r = try check(files, "a.conf")
            #expect(r.status == 3, "\(what): exit \(r.status), \(String(decoding: r.stderr, as: UTF8.self))")
        }
    }
}

/// state_dir (issue 9 item 16): made 0700 at start, and the agent refuses to
/// start (or a config check fails, exit 3) when it is not private.
@Suite struct AgentStateDirTests {
    func scratch() throws -> String {
        let dir = "/tmp/lmctfy-state-dir-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try Sys.mkdir(dir, mode: 0o755)
        return dir
    }

    @Test func theStateDirIsMadePrivateWithItsParents() throws {
        let dir = try scratch()
        defer { _ = removeTree(dir) }
        let settings = try AgentSettings.parse("state_dir: \"\(dir)/a/state/\"", source: "test")
        try settings.checkStateDir(create: true)
        var st = stat()
        #expect(lstat(dir + "/a/state", &st) == 0 && st.st_mode & 0o7777 == 0o700)
        #expect(lstat(dir + "/a", &st) == 0 && st.st_mode & 0o7777 == 0o755)
        try settings.checkStateDir(create: true)  // an existing private one is fine
    }

    @Test func aStateDirThatIsNotPrivateIsRefused() throws {
        let dir = try scratch()
        defer { _ = removeTree(dir) }
        try Sys.mkdir(dir + "/open", mode: 0o755)
        chmod(dir + "/open", 0o750)
        try Sys.mkdir(dir + "/private", mode: 0o700)
        symlink(dir + "/private", dir + "/link")
        try Sys.createFile(dir + "/file", "", mode: 0o600)
        for (name, why) in [("open", "mode 750"), ("link", "not a directory"), ("file", "not a directory")] {
            let settings = try AgentSettings.parse("state_dir: \"\(dir)/\(name)\"", source: "test")
            #expect { try settings.checkStateDir(create: true) } throws: { error in
                let e = error as? LmctfyError
                return e?.code == .failedPrecondition && e?.message.contains(why) == true
            }
            try Sys.createFile(dir + "/\(name).conf", "unix_socket_path: \"\(dir)/s\" state_dir: \"\(dir)/\(name)\"")
            let r = try TestProcess.capture([builtTool("lmctfy-agent"), "--check-config", "--config", dir + "/\(name).conf"])
            #expect(r.status == 3, "\(name): \(String(decoding: r.stderr, as: UTF8.self))")
            #expect(String(decoding: r.stderr, as: UTF8.self).contains(why))
            // Started for real, it refuses too (and is ended if it did not).
            let pid = try TestProcess.spawn([builtTool("lmctfy-agent"), "--config", dir + "/\(name).conf"])
            var status: LmctfySystem.ExitStatus?
            for _ in 0..<3000 where status == nil {
                status = TestProcess.reapIfExited(pid)
                if status == nil { usleep(10_000) }
            }
            TestProcess.end(pid)
            #expect(status == .exited(3), "\(name): the agent started anyway")
        }
        #expect(!Sys.exists(dir + "/s"), "the agent did not start")
    }
}

/// A command run on another thread while the test goes on.
private final class BackgroundRun: Sendable {
    private let outcome = Mutexed<ChildResult?>(nil)
    private let done = Latch()

    init(_ argv: [String]) {
        Threads.detach { [outcome, done] in
            let r = try? TestProcess.capture(argv)
            outcome.locked { $0 = r }
            done.signal()
        }
    }

    /// How it ended, waiting up to `seconds`; nil if it did not (or could not start).
    func result(seconds: Int) -> ChildResult? {
        guard done.wait(seconds: seconds) else { return nil }
        return outcome.locked { $0 }
    }
}

/// Whether this machine has no swap (/proc/swaps lists none): the kernel
/// then cannot meet a memory limit below what a container holds.
private let hostHasNoSwap: Bool = {
    guard let swaps = try? Sys.readFile("/proc/swaps") else { return false }
    return swaps.split(separator: "\n").count <= 1
}()
