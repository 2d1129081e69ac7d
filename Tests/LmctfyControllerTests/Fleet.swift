// The test fleet: a controller and in-process agents dialling home to it,
// in one temp directory (used by the controller's and lmctl's tests).
import Glibc
import Lmctfy
import LmctfyAgent
import LmctfyController
import LmctfyProto
import LmctfyRPC
import LmctfySystem
import LmctfyTestSupport
import Testing

/// A controller and agents in one temp directory, all stopped and removed
/// at the end.
final class Fleet {
    let dir: String
    let keys: [String: [UInt8]]
    var controller: LmctfyController.Controller?
    var agents: [String: Agent] = [:]
    private(set) var agentPort: UInt16 = 0
    private(set) var clientPort: UInt16 = 0

    init() throws {
        dir = "/tmp/lmctfy-fleet-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try Sys.mkdir(dir, mode: 0o700)
        var k: [String: [UInt8]] = [:]
        for id in ["host-a", "host-b", "other", "reader", "ops"] { k[id] = Crypto.randomBytes(32) }
        keys = k
        let lines = k.keys.sorted().map { "\($0) \(JSONFormat.base64Encoded(k[$0]!))" }.joined(separator: "\n") + "\n"
        try Sys.createFile(dir + "/keys", lines, mode: 0o600)
    }

    deinit {
        for a in agents.values { _ = a.stop(graceMs: 1000) }
        _ = controller?.stop()
        _ = removeTree(dir)
    }

    /// Starts the controller (on the agent port it had, after a restart).
    /// The first start takes ports below the kernel's ephemeral range: on
    /// one the kernel gave out, an agent redialling a stopped controller
    /// could connect to itself (TCP's self-connect: its own local port is
    /// the one it dials), holding the port, and the restart's listen failed
    /// with EADDRINUSE (seen once in the suite).
    func startController(extra: String = "") throws {
        guard agentPort == 0 && clientPort == 0 else { return try start(extra: extra) }
        for attempt in 1...10 {
            agentPort = Self.unusedPort()
            clientPort = Self.unusedPort()
            do {
                return try start(extra: extra)
            } catch let e as LmctfyError where e.message.contains("EADDRINUSE") && attempt < 10 {
                continue  // taken meanwhile (another test's fleet): others
            }
        }
    }

    /// Ports handed out in this process: a fleet's controller restarts on
    /// its ports, and another test's fleet, finding one free while that
    /// controller was stopped, took it (the restart failed with
    /// EADDRINUSE; seen once in the suite).
    private static let handedOut = Mutexed<Set<UInt16>>([])

    /// A port in 20000..<32768 nothing listens on now, and not handed out
    /// to another fleet of this process before.
    private static func unusedPort() -> UInt16 {
        for _ in 0..<100 {
            let port = UInt16.random(in: 20000..<32768)
            guard handedOut.locked({ $0.insert(port).inserted }) else { continue }
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var addr = sockaddr_in()
            addr.sin_family = sa_family_t(AF_INET)
            addr.sin_port = port.bigEndian
            addr.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
            let ok = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
            }
            close(fd)
            if ok { return port }
        }
        return 0
    }

    private func start(extra: String) throws {
        let settings = try ControllerSettings.parse("""
            unix_socket_path: "\(dir)/controller.sock" unix_socket_mode: 0666
            agent_address: "127.0.0.1:\(agentPort)" tcp_address: "127.0.0.1:\(clientPort)"
            key_file: "\(dir)/keys" allow_plaintext_tcp: true state_dir: "\(dir)/controller" log_level: LOG_WARNING
            role { role: AGENT_ROLE_READER key_id: "reader" }
            role { role: AGENT_ROLE_ADMIN key_id: "ops" }
            \(extra)
            """, source: "test")
        let c = try LmctfyController.Controller(settings: settings)
        try c.start(handleSignals: false)
        agentPort = c.agentPort
        clientPort = c.clientPort ?? 0
        controller = c
    }

    /// Agents dial `port` (a controller process the test runs itself).
    func agentPortOverride(_ port: UInt16) { agentPort = port }

    func stopController() {
        #expect(controller?.stop() == 0)
        controller = nil
    }

    /// Starts an agent registering as `host` with key `keyId`.
    @discardableResult
    func startAgent(_ name: String, host: String, keyId: String, labels: [String: String] = [:],
                    controllerHost: String = "127.0.0.1", statsMs: Int = 0) throws -> Agent {
        let state = "\(dir)/agent-\(name)"
        let labelText = labels.sorted { $0.key < $1.key }.map { "label { key: \"\($0.key)\" value: \"\($0.value)\" }" }.joined(separator: " ")
        let settings = try AgentSettings.parse("""
            unix_socket_path: "\(state).sock" unix_socket_mode: 0666 state_dir: "\(state)" log_level: LOG_WARNING
            stats_interval_ms: \(statsMs) reconcile_interval_ms: 0 watch_containers: false
            key_file: "\(dir)/keys" allow_plaintext_tcp: true controller_address: "\(controllerHost):\(agentPort)" controller_key_id: "\(keyId)"
            host_name: "\(host)" reconnect_base_ms: 20 reconnect_max_ms: 200 \(labelText)
            """, source: "test")
        let agent = Agent(settings: settings, api: try ContainerApi.detect())
        try agent.start(handleSignals: false)
        agents[name] = agent
        return agent
    }

    func stopAgent(_ name: String) {
        #expect(agents.removeValue(forKey: name)?.stop(graceMs: 1000) == 0)
    }

    /// Waits (up to 10 s) until `n` hosts are connected.
    func waitForHosts(_ n: Int) {
        for _ in 0..<1000 where (controller?.hostCount ?? -1) != n { usleep(10_000) }
        #expect(controller?.hostCount == n, "\(n) hosts connected")
    }

    func client() throws -> RpcClient { try RpcClient.connect(unixPath: dir + "/controller.sock") }

    /// A Register over a fresh agent link with key host-b, closed after:
    /// the status code (nil: registered).
    func register(_ identity: HostIdentity) throws -> StatusCode? {
        let agent = try RawLink(fd: try RpcSocket.connectTCP(host: "127.0.0.1", port: agentPort),
                                Session(dialler: .sharedKey(keyId: "host-b", key: keys["host-b"]!), name: "reg", now: MonotonicClock.milliseconds()))
        agent.open(ControllerMethods.register.name, try RegisterRequest(identity: identity).serializedBytes())
        agent.pump { !agent.responses.isEmpty || !agent.statuses.isEmpty }
        return agent.responses.isEmpty ? (agent.statuses.first?.code ?? .unknown) : nil
    }
}
