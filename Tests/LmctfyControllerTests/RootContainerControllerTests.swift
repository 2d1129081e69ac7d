// Agents with a root_container behind the controller (issue #12): each
// registers its root, and a call routed to a host is served inside that
// host's root, by names relative to it. Two agents on one machine are two
// hosts.
import Glibc
import Lmctfy
import LmctfyAgent
import LmctfyController
import LmctfyProto
import LmctfyRPC
import LmctfySystem
import LmctfyTestSupport
import Testing

extension Fleet {
    /// Starts an agent registering as `host`, serving `root`.
    @discardableResult
    func startAgent(_ name: String, host: String, keyId: String, root: ContainerName) throws -> Agent {
        let state = "\(dir)/agent-\(name)"
        let settings = try AgentSettings.parse("""
            unix_socket_path: "\(state).sock" unix_socket_mode: 0666 state_dir: "\(state)" log_level: LOG_WARNING
            stats_interval_ms: 0 reconcile_interval_ms: 0
            key_file: "\(dir)/keys" allow_plaintext_tcp: true controller_address: "127.0.0.1:\(agentPort)" controller_key_id: "\(keyId)"
            host_name: "\(host)" reconnect_base_ms: 20 reconnect_max_ms: 200 root_container: "\(root)"
            """, source: "test")
        let agent = Agent(settings: settings, api: try ContainerApi.detect())
        try agent.start(handleSignals: false)
        agents[name] = agent
        return agent
    }
}

@Suite(.enabled(if: RealCgroups.available, "\(RealCgroups.unavailableReason ?? "")"), .serialized)
struct RootContainerControllerTests {
    @Test func agentsWithRootContainersAreHostsOfTheirOwn() throws {
        let api = try ContainerApi.detect()
        let roots = try ["rootalpha", "rootbeta"].map { try ContainerName.resolve(RealCgroups.uniqueName($0), relativeTo: .root) }
        defer { for r in roots { _ = try? api.destroy(r) } }
        for r in roots { try api.create(r, spec: ContainerSpec()) }
        let fleet = try Fleet()
        try withExtendedLifetime(fleet) {
            try fleet.startController()
            try fleet.startAgent("a", host: "alpha", keyId: "host-a", root: roots[0])
            try fleet.startAgent("b", host: "beta", keyId: "host-b", root: roots[1])
            fleet.waitForHosts(2)
            let client = try fleet.client()
            defer { client.close() }
            let hosts = try client.call(ControllerMethods.listHosts, ListHostsRequest()).hosts
            #expect(hosts.map { $0.identity?.rootContainer } == [roots[0].path, roots[1].path], "each registers its root")

            client.host = "alpha"
            _ = try client.call(AgentMethods.create, CreateRequest(name: "/web", spec: ContainerSpec()))
            #expect(try api.exists(ContainerName.resolve(roots[0].path + "/web", relativeTo: .root)))
            #expect(try api.get(roots[1]).subcontainers(recursive: true).isEmpty)
            #expect(try client.call(AgentMethods.listContainers, ListContainersRequest(name: "/", recursive: true)).names == ["/web"])
            client.host = "beta"
            #expect(try client.call(AgentMethods.listContainers, ListContainersRequest(name: "/", recursive: true)).names.isEmpty)
            #expect { _ = try client.call(AgentMethods.spec, SpecRequest(name: "/web")) }
                throws: { ($0 as? LmctfyError)?.code == .notFound }
        }
    }

    /// The inventory counts each host's containers: as it registered, then
    /// again after each CREATED or DESTROYED it reports.
    @Test func theInventoryCountsAHostsContainers() throws {
        let api = try ContainerApi.detect()
        let root = try ContainerName.resolve(RealCgroups.uniqueName("countroot"), relativeTo: .root)
        defer { _ = try? api.destroy(root) }
        try api.create(root, spec: ContainerSpec())
        try api.create(root.path + "/before", spec: ContainerSpec())
        let fleet = try Fleet()
        try fleet.startController()
        try fleet.startAgent("a", host: "alpha", keyId: "host-a", root: root)
        fleet.waitForHosts(1)
        let client = try fleet.client()
        defer { client.close() }
        func count(until wanted: UInt32) throws -> UInt32? {
            var c: UInt32?
            for _ in 0..<300 {
                client.host = nil
                c = try client.call(ControllerMethods.listHosts, ListHostsRequest()).hosts.first?.containerCount
                if c == wanted { break }
                usleep(10_000)
            }
            return c
        }
        #expect(try count(until: 1) == 1, "as it registered: one container below its root")
        client.host = "alpha"
        _ = try client.call(AgentMethods.create, CreateRequest(name: "/one", spec: ContainerSpec()))
        _ = try client.call(AgentMethods.create, CreateRequest(name: "/two", spec: ContainerSpec()))
        #expect(try count(until: 3) == 3)
        client.host = "alpha"
        _ = try client.call(AgentMethods.destroy, DestroyRequest(name: "/one"))
        #expect(try count(until: 2) == 2)
    }
}
