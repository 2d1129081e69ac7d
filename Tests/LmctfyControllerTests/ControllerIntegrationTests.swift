// The controller with real agents dialling home on this machine (issue
// #12): registration and the inventory, calls routed to one host, roles,
// a host name bound to its key, a host gone and back (reconnect with
// backoff, also across a controller restart).
import Foundation
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
    func startController() throws {
        let settings = try ControllerSettings.parse("""
            unix_socket_path: "\(dir)/controller.sock" unix_socket_mode: 0666
            agent_address: "127.0.0.1:\(agentPort)" tcp_address: "127.0.0.1:\(clientPort)"
            key_file: "\(dir)/keys" state_dir: "\(dir)/controller" log_level: LOG_WARNING
            role { role: AGENT_ROLE_READER key_id: "reader" }
            role { role: AGENT_ROLE_ADMIN key_id: "ops" }
            """, source: "test")
        let c = try LmctfyController.Controller(settings: settings)
        try c.start(handleSignals: false)
        agentPort = c.agentPort
        clientPort = c.clientPort ?? 0
        controller = c
    }

    func stopController() {
        #expect(controller?.stop() == 0)
        controller = nil
    }

    /// Starts an agent registering as `host` with key `keyId`.
    @discardableResult
    func startAgent(_ name: String, host: String, keyId: String, labels: [String: String] = [:]) throws -> Agent {
        let state = "\(dir)/agent-\(name)"
        let labelText = labels.sorted { $0.key < $1.key }.map { "label { key: \"\($0.key)\" value: \"\($0.value)\" }" }.joined(separator: " ")
        let settings = try AgentSettings.parse("""
            unix_socket_path: "\(state).sock" unix_socket_mode: 0666 state_dir: "\(state)" log_level: LOG_WARNING
            stats_interval_ms: 0 reconcile_interval_ms: 0 watch_containers: false
            key_file: "\(dir)/keys" controller_address: "127.0.0.1:\(agentPort)" controller_key_id: "\(keyId)"
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
}

@Suite(.enabled(if: RealCgroups.available, "\(RealCgroups.unavailableReason ?? "")"), .serialized)
struct ControllerIntegrationTests {
    @Test func agentsRegisterAndAreListedWithTheirIdentity() throws {
        let fleet = try Fleet()
        try fleet.startController()
        try fleet.startAgent("a", host: "alpha", keyId: "host-a", labels: ["zone": "z1", "tier": "web"])
        try fleet.startAgent("b", host: "beta", keyId: "host-b", labels: ["zone": "z2"])
        fleet.waitForHosts(2)
        let client = try fleet.client()
        defer { client.close() }
        let all = try client.call(ControllerMethods.listHosts, ListHostsRequest()).hosts
        #expect(all.map { $0.identity?.hostName } == ["alpha", "beta"])
        for h in all {
            #expect(h.state == .hostConnected)
            #expect((h.identity?.cpus ?? 0) > 0 && (h.identity?.memoryBytes ?? 0) > 0)
            #expect(h.identity?.bootId?.count == 32)
            #expect((h.identity?.cgroupVersion ?? 0) >= 1)
        }
        #expect(all.first?.keyId == "host-a")
        let z1 = try client.call(ControllerMethods.listHosts, ListHostsRequest(selector: "zone=z1")).hosts
        #expect(z1.map { $0.identity?.hostName } == ["alpha"])
        #expect(try client.call(ControllerMethods.listHosts, ListHostsRequest(selector: "zone=z1,tier=db")).hosts.isEmpty)
        #expect { _ = try client.call(ControllerMethods.listHosts, ListHostsRequest(selector: "zone")) }
            throws: { ($0 as? LmctfyError)?.code == .invalidArgument }
    }

    @Test func aCallNamingAHostIsServedByThatHostsAgent() throws {
        let fleet = try Fleet()
        try fleet.startController()
        let alpha = try fleet.startAgent("a", host: "alpha", keyId: "host-a")
        let beta = try fleet.startAgent("b", host: "beta", keyId: "host-b")
        fleet.waitForHosts(2)
        let client = try fleet.client()
        defer { client.close() }
        // Each host answers with its own boot id.
        client.host = "alpha"
        let a = try client.call(AgentMethods.machineInfo, MachineInfoRequest())
        client.host = "beta"
        let b = try client.call(AgentMethods.machineInfo, MachineInfoRequest())
        #expect(a.bootId == alpha.dispatcher.events.bootId && b.bootId == beta.dispatcher.events.bootId)
        // A create routed to alpha is done by alpha (its event log has it).
        let name = RealCgroups.uniqueName("routed")
        client.host = "alpha"
        defer { _ = try? client.call(AgentMethods.destroy, DestroyRequest(name: name, force: true)) }
        _ = try client.call(AgentMethods.create, CreateRequest(name: name, spec: ContainerSpec()))
        #expect(try ContainerApi.detect().exists(ContainerName.resolve(name, relativeTo: .root)))
        #expect(alpha.dispatcher.events.range(after: 0, upTo: .max).events.contains { $0.container == name && $0.kind == .containerEventCreated })
        #expect(!beta.dispatcher.events.range(after: 0, upTo: .max).events.contains { $0.container == name })
        // A streaming call comes back whole: Run's STARTED then EXITED.
        var kinds: [RunEventKind] = []
        try client.stream(AgentMethods.run, RunRequest(name: name, argv: ["/bin/true"])) { (r: RunResponse) in
            kinds.append(r.kind ?? .runEventUnspecified)
            return true
        }
        #expect(kinds == [.runStarted, .runExited])
        // An agent's error status comes back as it was.
        #expect { _ = try client.call(AgentMethods.create, CreateRequest(name: name, spec: ContainerSpec())) }
            throws: { ($0 as? LmctfyError)?.code == .alreadyExists }
        // No such host; a host that left; an agent method without a host.
        client.host = "gamma"
        #expect { _ = try client.call(AgentMethods.ping, PingRequest()) } throws: { ($0 as? LmctfyError)?.code == .notFound }
        fleet.stopAgent("b")
        fleet.waitForHosts(1)
        client.host = "beta"
        #expect { _ = try client.call(AgentMethods.ping, PingRequest()) } throws: { ($0 as? LmctfyError)?.code == .unavailable }
        client.host = nil
        #expect { _ = try client.call(AgentMethods.spec, SpecRequest(name: name)) } throws: { ($0 as? LmctfyError)?.code == .invalidArgument }
        #expect(try client.call(ControllerMethods.listHosts, ListHostsRequest()).hosts.first { $0.identity?.hostName == "beta" }?.state == .hostDisconnected)
    }

    @Test func watchHostsListsThenReportsEachChange() throws {
        let fleet = try Fleet()
        try fleet.startController()
        try fleet.startAgent("a", host: "alpha", keyId: "host-a", labels: ["zone": "z1"])
        fleet.waitForHosts(1)
        let seen = Mutexed<[String]>([])
        let done = DispatchSemaphore(value: 0)
        let socket = fleet.dir + "/controller.sock"
        let watcher = Thread {
            defer { done.signal() }
            guard let client = try? RpcClient.connect(unixPath: socket) else { return }
            defer { client.close() }
            try? client.stream(ControllerMethods.watchHosts, WatchHostsRequest(), deadlineMs: 20_000) { (r: WatchHostsResponse) in
                let line = "\(r.change?.protoName ?? "") \(r.host?.identity?.hostName ?? "") \(r.host?.state?.protoName ?? "")"
                let all = seen.locked { $0.append(line); return $0 }
                return all.count < 3
            }
        }
        watcher.start()
        for _ in 0..<500 where seen.locked({ $0.isEmpty }) { usleep(10_000) }
        try fleet.startAgent("b", host: "beta", keyId: "host-b", labels: ["zone": "z2"])
        fleet.waitForHosts(2)
        fleet.stopAgent("b")
        fleet.waitForHosts(1)
        done.wait()
        #expect(seen.locked { $0 } == ["HOST_LISTED alpha HOST_CONNECTED", "HOST_UP beta HOST_CONNECTED", "HOST_DOWN beta HOST_DISCONNECTED"])
        // A selector keeps only the matching hosts; a bad one is refused.
        let client = try fleet.client()
        defer { client.close() }
        var listed: [String] = []
        try client.stream(ControllerMethods.watchHosts, WatchHostsRequest(selector: "zone=z2")) { (r: WatchHostsResponse) in
            listed.append(r.host?.identity?.hostName ?? "")
            return false
        }
        #expect(listed == ["beta"])
        #expect { try client.stream(ControllerMethods.watchHosts, WatchHostsRequest(selector: "=x")) { (_: WatchHostsResponse) in true } }
            throws: { ($0 as? LmctfyError)?.code == .invalidArgument }
    }

    @Test func aReaderAtTheControllerCannotCreate() throws {
        let fleet = try Fleet()
        try fleet.startController()
        try fleet.startAgent("a", host: "alpha", keyId: "host-a")
        fleet.waitForHosts(1)
        let reader = try RpcClient.connect(host: "127.0.0.1", port: fleet.clientPort, keyId: "reader", key: fleet.keys["reader"]!)
        defer { reader.close() }
        #expect(try reader.call(ControllerMethods.listHosts, ListHostsRequest()).hosts.count == 1)
        reader.host = "alpha"
        _ = try reader.call(AgentMethods.ping, PingRequest())
        #expect { _ = try reader.call(AgentMethods.create, CreateRequest(name: RealCgroups.uniqueName("no"), spec: ContainerSpec())) }
            throws: { ($0 as? LmctfyError)?.code == .permissionDenied }
    }

    @Test func aHostNameStaysBoundToTheKeyThatRegisteredIt() throws {
        let fleet = try Fleet()
        try fleet.startController()
        try fleet.startAgent("a", host: "alpha", keyId: "host-a")
        fleet.waitForHosts(1)
        // Another key under the same name: refused, again and again (backoff).
        let impostor = try fleet.startAgent("x", host: "alpha", keyId: "other")
        usleep(500_000)
        #expect(!impostor.isRegisteredWithController)
        let client = try fleet.client()
        defer { client.close() }
        let hosts = try client.call(ControllerMethods.listHosts, ListHostsRequest()).hosts
        #expect(hosts.count == 1 && hosts.first?.keyId == "host-a" && hosts.first?.state == .hostConnected)
        client.host = "alpha"
        #expect(try client.call(AgentMethods.machineInfo, MachineInfoRequest()).bootId == fleet.agents["a"]?.dispatcher.events.bootId)
        // Even after the rightful host left, and across a controller restart.
        fleet.stopAgent("a")
        fleet.stopController()
        try fleet.startController()
        usleep(500_000)
        #expect(!impostor.isRegisteredWithController)
        let again = try fleet.client()
        defer { again.close() }
        let after = try again.call(ControllerMethods.listHosts, ListHostsRequest()).hosts
        #expect(after.count == 1 && after.first?.keyId == "host-a" && after.first?.state == .hostDisconnected)
    }

    @Test func agentsComeBackAfterTheControllerRestarts() throws {
        let fleet = try Fleet()
        try fleet.startController()
        let alpha = try fleet.startAgent("a", host: "alpha", keyId: "host-a")
        try fleet.startAgent("b", host: "beta", keyId: "host-b")
        fleet.waitForHosts(2)
        fleet.stopController()
        // Away for a moment: the agents keep serving their own sockets.
        usleep(300_000)
        let local = try RpcClient.connect(unixPath: fleet.dir + "/agent-a.sock")
        #expect(try local.call(AgentMethods.machineInfo, MachineInfoRequest()).bootId == alpha.dispatcher.events.bootId)
        local.close()
        try fleet.startController()
        fleet.waitForHosts(2)
        #expect(alpha.isRegisteredWithController)
        let client = try fleet.client()
        defer { client.close() }
        client.host = "beta"
        _ = try client.call(AgentMethods.ping, PingRequest(data: [1]))
    }
}
