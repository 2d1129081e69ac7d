// systemd socket activation (tools/systemd/lmctfy-agent.socket): the agent
// listens on the socket the service manager passes (LISTEN_PID, LISTEN_FDS,
// descriptor 3) and leaves it when it stops, so that a call made while the
// agent restarts waits in the socket's backlog and is answered by the next
// one. Bound by the agent itself, the socket file went with a clean stop and
// every call made until the next start failed at once (a probe). A small
// Python supervisor plays systemd: it binds the socket, keeps it, and starts
// and stops the agent on the test's word.
import Glibc
import LmctfyProto
import LmctfyRPC
import LmctfySystem
import LmctfyTestSupport
import Testing

@Suite(.enabled(if: RealCgroups.available, "\(RealCgroups.unavailableReason ?? "")"), .serialized)
struct SocketActivationTests {
    static let supervisor = """
        import os, signal, socket, sys
        path, agent, conf = sys.argv[1], sys.argv[2], sys.argv[3]
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(path); os.chmod(path, 0o666); s.listen(64)
        child = 0
        for line in sys.stdin:
            word = line.strip()
            if word == "start":
                child = os.fork()
                if child == 0:
                    if s.fileno() != 3: os.dup2(s.fileno(), 3)
                    os.set_inheritable(3, True)
                    env = dict(os.environ, LISTEN_PID=str(os.getpid()), LISTEN_FDS="1")
                    os.execve(agent, [agent, "--config", conf], env)
                print("started", child, flush=True)
            elif word == "stop":
                os.kill(child, signal.SIGTERM)
                _, status = os.waitpid(child, 0)
                print("stopped", status, os.path.exists(path), flush=True)
        if child:
            try:
                os.kill(child, signal.SIGTERM); os.waitpid(child, 0)
            except OSError:
                pass
        """

    @Test func aCallMadeWhileTheAgentRestartsIsAnsweredByTheNextOne() throws {
        let dir = "/tmp/lmctfy-activation-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try Sys.mkdir(dir, mode: 0o755)
        defer { _ = removeTree(dir) }
        let socket = dir + "/agent.sock"
        try Sys.createFile(dir + "/agent.conf", """
            unix_socket_path: "\(socket)" log_level: LOG_WARNING state_dir: "\(dir)/state" stats_interval_ms: 0
            """)
        let (outR, outW) = try Sys.pipe()
        let (inR, inW) = try Sys.pipe()
        var o = SpawnOptions(argv: ["/usr/bin/python3", "-c", Self.supervisor, socket, builtTool("lmctfy-agent"), dir + "/agent.conf"])
        o.stdout = .fd(outW)
        o.stdin = .fd(inR)
        let pid = try Spawn.spawn(o)
        close(outW)
        close(inR)
        var inOpen = true
        defer {
            if inOpen { close(inW) }
            _ = try? Sys.waitForExit(pid)
            close(outR)
        }
        var pending: [UInt8] = []
        func say(_ word: String) -> String {
            _ = Array((word + "\n").utf8).withUnsafeBytes { write(inW, $0.baseAddress, $0.count) }
            var buf = [UInt8](repeating: 0, count: 256)
            while !pending.contains(UInt8(ascii: "\n")) {
                var p = pollfd(fd: outR, events: Int16(POLLIN), revents: 0)
                guard poll(&p, 1, 30_000) == 1 else { return "" }
                let n = read(outR, &buf, buf.count)
                guard n > 0 else { return "" }
                pending += buf[0..<n]
            }
            let i = pending.firstIndex(of: UInt8(ascii: "\n"))!
            defer { pending.removeSubrange(0...i) }
            return String(decoding: pending[..<i], as: UTF8.self)
        }
        let started = say("start")
        let agentPid = try #require(Int32(started.split(separator: " ").last ?? ""), "\(started)")
        // Until it answers; not once it has died (the socket still takes
        // connections, the supervisor's: a hello there waits for nobody).
        func running() -> Bool {
            guard let stat = try? Sys.readFile("/proc/\(agentPid)/stat"), let close = stat.lastIndex(of: ")") else { return false }
            return stat[stat.index(close, offsetBy: 2)] != "Z"
        }
        var first: RpcClient?
        for _ in 0..<500 where first == nil && running() {
            first = try? RpcClient.connect(unixPath: socket, limits: SessionLimits(helloTimeoutMs: 1000))
            if first == nil { usleep(20_000) }
        }
        let client = try #require(first, "the agent never answered on the socket it was passed")
        #expect(try client.call("Ping", PingRequest(data: [1]), as: PingResponse.self).data == [1])
        client.close()
        // A clean stop leaves the socket, which is the manager's.
        #expect(say("stop") == "stopped 0 True")
        // A call made now waits in the backlog for the next agent.
        let answered = Mutexed<[UInt8]?>(nil)
        let failed = Mutexed<String?>(nil)
        let caller = Threads.start {
            do {
                let c = try RpcClient.connect(unixPath: socket)
                defer { c.close() }
                let r = try c.call("Ping", PingRequest(data: [2]), as: PingResponse.self)
                answered.locked { $0 = r.data }
            } catch {
                failed.locked { $0 = "\(error)" }
            }
        }
        usleep(300_000)
        #expect(answered.locked { $0 } == nil && failed.locked { $0 } == nil, "it waits: \(String(describing: failed.locked { $0 }))")
        #expect(say("start").hasPrefix("started"))
        pthread_join(caller, nil)
        #expect(answered.locked { $0 } == [2], "\(String(describing: failed.locked { $0 }))")
        close(inW)
        inOpen = false
    }
}
