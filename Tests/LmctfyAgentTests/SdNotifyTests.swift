// sd_notify (tools/systemd units are Type=notify): the datagram itself on a
// socket the test binds, and the built agent saying READY=1 only once it
// listens, then STOPPING=1 on SIGTERM.
import Glibc
import LmctfyProto
import LmctfyRPC
import LmctfySystem
import LmctfyTestSupport
import Testing

/// A bound Unix datagram socket standing in for systemd's notify socket.
final class NotifySocket {
    let fd: Int32
    let path: String

    /// `abstract`: bound in the abstract namespace; `path` is then "@name".
    init(abstract: Bool = false) throws {
        let name = "/tmp/lmctfy-notify-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        path = abstract ? "@" + name.dropFirst(5) : name
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SystemError("socket", path, errno) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        var bytes = Array(path.utf8)
        if abstract { bytes[0] = 0 }
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count + (abstract ? 0 : 1))
        let r = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) } }
        guard r == 0 else {
            let e = errno
            close(fd)
            throw SystemError("bind", path, e)
        }
    }

    /// The next datagram, or nil after `timeoutMs`.
    func receive(timeoutMs: Int32) -> String? {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&p, 1, timeoutMs) == 1 else { return nil }
        var buf = [UInt8](repeating: 0, count: 4096)
        let n = recv(fd, &buf, buf.count, 0)
        return n < 0 ? nil : String(decoding: buf[..<n], as: UTF8.self)
    }

    deinit {
        close(fd)
        if path.hasPrefix("/") { unlink(path) }
    }
}

@Suite struct SdNotifyTests {
    @Test func sendsOneDatagramToAFileOrAbstractSocket() throws {
        for abstract in [false, true] {
            let s = try NotifySocket(abstract: abstract)
            #expect(SdNotify.send("READY=1", to: s.path) == nil)
            #expect(s.receive(timeoutMs: 1000) == "READY=1", "\(s.path)")
            #expect(SdNotify.send("STATUS=serving 3 containers\nSTOPPING=1", to: s.path) == nil)
            #expect(s.receive(timeoutMs: 1000) == "STATUS=serving 3 containers\nSTOPPING=1")
        }
    }

    @Test func badSocketPathsAreErrorsNotCrashes() {
        // Relative, empty, too long: refused before any socket is made.
        for bad in ["", "relative.sock", "/" + String(repeating: "x", count: 200)] {
            let e = SdNotify.send("READY=1", to: bad)
            #expect(e?.errno == EINVAL, "\(bad): \(String(describing: e))")
        }
        // Nobody bound there: the sendto error, named.
        let e = SdNotify.send("READY=1", to: "/tmp/lmctfy-notify-nobody-\(getpid()).sock")
        #expect(e?.call == "sendto" && e?.errno == ENOENT, "\(String(describing: e))")
    }

    @Test func withoutNotifySocketNothingIsSent() {
        // The test process never captured a socket (only the daemons' mains
        // do): notify is a no-op, not an error.
        #expect(!SdNotify.isEnabled)
        #expect(SdNotify.notify("READY=1") == nil)
    }
}

@Suite(.enabled(if: RealCgroups.available, "\(RealCgroups.unavailableReason ?? "")"), .serialized)
struct SdNotifyAgentTests {
    /// The built agent under a NOTIFY_SOCKET: READY=1 arrives, and by then
    /// the agent answers on its socket; STOPPING=1 follows SIGTERM.
    @Test func agentSaysReadyOnceItListensAndStoppingOnSigterm() throws {
        let notify = try NotifySocket()
        // Spawned here rather than by AgentProcess, which waits for the
        // socket file: READY=1 itself must be what says the agent listens.
        let dir = "/tmp/lmctfy-agent-notify-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try Sys.mkdir(dir, mode: 0o755)
        defer { _ = removeTree(dir) }
        let socket = dir + "/agent.sock"
        try Sys.createFile(dir + "/agent.conf", """
            unix_socket_path: "\(socket)" unix_socket_mode: 0666 log_level: LOG_WARNING state_dir: "\(dir)/state"
            """)
        let pid = try spawnWithEnvironment([builtTool("lmctfy-agent"), "--config", dir + "/agent.conf"],
                                           ["NOTIFY_SOCKET=\(notify.path)"])
        var reaped = false
        defer { if !reaped { TestProcess.end(pid) } }
        let ready = notify.receive(timeoutMs: 10_000)
        #expect(ready == "READY=1")
        // At the moment READY=1 arrives the socket accepts, and a call works.
        #expect(try Sys.unixSocketAccepts(socket), "READY=1 came before the agent listened")
        let client = try RpcClient.connect(unixPath: socket, name: "sd-notify-test")
        _ = try client.call(AgentMethods.ping, PingRequest())
        client.close()
        // Nothing else is said while it runs.
        #expect(notify.receive(timeoutMs: 200) == nil)
        kill(pid, SIGTERM)
        #expect(notify.receive(timeoutMs: 5000) == "STOPPING=1")
        for _ in 0..<500 where !reaped {
            reaped = TestProcess.reapIfExited(pid) != nil
            if !reaped { usleep(10_000) }
        }
        #expect(reaped, "the agent did not exit after SIGTERM")
    }

    /// The built controller likewise: READY=1 once it listens, STOPPING=1 on SIGTERM.
    @Test func controllerSaysReadyOnceItListensAndStoppingOnSigterm() throws {
        let notify = try NotifySocket()
        let dir = "/tmp/lmctfy-controller-notify-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try Sys.mkdir(dir, mode: 0o700)
        defer { _ = removeTree(dir) }
        try Sys.createFile(dir + "/keys", "host-a \(JSONFormat.base64Encoded(Crypto.randomBytes(32)))\n", mode: 0o600)
        let socket = dir + "/controller.sock"
        try Sys.createFile(dir + "/controller.conf", """
            unix_socket_path: "\(socket)" unix_socket_mode: 0666 agent_address: "127.0.0.1:0" key_file: "\(dir)/keys"
            allow_plaintext_tcp: true state_dir: "\(dir)/state" log_level: LOG_WARNING
            """)
        let pid = try spawnWithEnvironment([builtTool("lmctfy-controller"), "--config", dir + "/controller.conf"],
                                           ["NOTIFY_SOCKET=\(notify.path)"])
        var reaped = false
        defer { if !reaped { TestProcess.end(pid) } }
        #expect(notify.receive(timeoutMs: 10_000) == "READY=1")
        #expect(try Sys.unixSocketAccepts(socket), "READY=1 came before the controller listened")
        kill(pid, SIGTERM)
        #expect(notify.receive(timeoutMs: 5000) == "STOPPING=1")
        for _ in 0..<500 where !reaped {
            reaped = TestProcess.reapIfExited(pid) != nil
            if !reaped { usleep(10_000) }
        }
        #expect(reaped, "the controller did not exit after SIGTERM")
    }

    /// Without NOTIFY_SOCKET the agent starts and serves as before.
    @Test func agentWithoutNotifySocketStartsAsBefore() throws {
        let agent = try AgentProcess()
        defer { agent.stop() }
        let client = try RpcClient.connect(unixPath: agent.socket, name: "sd-notify-test")
        _ = try client.call(AgentMethods.ping, PingRequest())
        client.close()
    }
}
