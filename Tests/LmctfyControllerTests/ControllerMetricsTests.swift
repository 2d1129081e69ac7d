// The controller's Prometheus endpoint with two agents dialled in: hosts by
// state, calls routed by method and how they ended, events relayed into the
// fleet log; a lost host is counted as disconnected.
import Glibc
import LmctfyAgent
import LmctfyController
import LmctfyHTTP
import LmctfyProto
import LmctfyRPC
import LmctfySystem
import LmctfyTestSupport
import Testing

@Suite(.enabled(if: RealCgroups.available, "\(RealCgroups.unavailableReason ?? "")"), .serialized)
struct ControllerMetricsTests {
    func scrape(_ port: UInt16) throws -> [String: Double] {
        let r = try get("/metrics", port: port)
        #expect(r.status == 200)
        var out: [String: Double] = [:]
        for line in String(decoding: r.body, as: UTF8.self).split(separator: "\n") where !line.hasPrefix("#") {
            if let space = line.lastIndex(of: " ") { out[String(line[..<space])] = Double(line[line.index(after: space)...]) }
        }
        return out
    }

    @Test func fleetFiguresFollowHostsCallsAndEvents() throws {
        let fleet = try Fleet()
        try fleet.startController(extra: "metrics { address: \"127.0.0.1:0\" }")
        let port = try #require(fleet.controller?.metricsPort)
        #expect(try scrape(port)["lmctfy_controller_hosts{state=\"connected\"}"] == 0)
        try fleet.startAgent("a", host: "alpha", keyId: "host-a")
        try fleet.startAgent("b", host: "beta", keyId: "host-b")
        fleet.waitForHosts(2)
        let admin = try fleet.client()
        defer { admin.close() }
        admin.host = "alpha"
        let name = RealCgroups.uniqueName("cmetrics")
        defer { _ = try? admin.call(AgentMethods.destroy, DestroyRequest(name: name, force: true)) }
        _ = try admin.call(AgentMethods.create, CreateRequest(name: name, spec: ContainerSpec()))
        _ = try admin.call(AgentMethods.machineInfo, MachineInfoRequest())
        #expect(throws: LmctfyError.self) { _ = try admin.call(AgentMethods.stats, StatsRequest(name: "/lmctfy_test_no_such_container")) }
        // The created event reaches the fleet log.
        var m: [String: Double] = [:]
        for _ in 0..<200 {
            m = try scrape(port)
            if (m["lmctfy_controller_events_relayed_total"] ?? 0) >= 1 { break }
            usleep(20_000)
        }
        #expect(m["lmctfy_controller_hosts{state=\"connected\"}"] == 2)
        #expect(m["lmctfy_controller_hosts{state=\"disconnected\"}"] == 0)
        #expect(m["lmctfy_controller_connections{kind=\"agent\"}"] == 2)
        #expect((m["lmctfy_controller_connections{kind=\"client\"}"] ?? 0) >= 1)
        #expect(m["lmctfy_controller_calls_routed_total{method=\"Create\"}"] == 1)
        #expect(m["lmctfy_controller_calls_routed_total{method=\"MachineInfo\"}"] == 1)
        #expect(m["lmctfy_controller_calls_routed_total{method=\"Stats\"}"] == 1)
        #expect((m["lmctfy_controller_routed_calls_ended_total{code=\"OK\"}"] ?? 0) >= 2)
        #expect(m["lmctfy_controller_routed_calls_ended_total{code=\"NOT_FOUND\"}"] == 1)
        // Calls their callers end (a cancel, a deadline, which sends one,
        // a caller gone) are counted as ended, CANCELLED (they were only
        // counted as routed).
        admin.host = "alpha"
        try admin.stream(AgentMethods.subscribe, SubscribeRequest()) { (_: SubscribeResponse) in false }
        #expect(throws: LmctfyError.self) {
            try admin.stream(AgentMethods.subscribe, SubscribeRequest(), deadlineMs: 200) { (_: SubscribeResponse) in true }
        }
        let gone = try fleet.client()
        gone.host = "alpha"
        gone.sendOnly(AgentMethods.subscribe.name, try SubscribeRequest().serializedBytes())
        usleep(100_000)
        gone.close()
        for _ in 0..<200 {
            m = try scrape(port)
            if (m["lmctfy_controller_routed_calls_ended_total{code=\"CANCELLED\"}"] ?? 0) >= 3 { break }
            usleep(20_000)
        }
        #expect(m["lmctfy_controller_routed_calls_ended_total{code=\"CANCELLED\"}"] == 3, "\(m.filter { $0.key.contains("ended") })")
        #expect((m["lmctfy_controller_events_relayed_total"] ?? 0) >= 1)
        #expect((m["lmctfy_controller_events_total{kind=\"created\"}"] ?? 0) >= 1)
        // A host that goes is counted as disconnected.
        fleet.stopAgent("b")
        for _ in 0..<200 {
            m = try scrape(port)
            if m["lmctfy_controller_hosts{state=\"disconnected\"}"] == 1 { break }
            usleep(20_000)
        }
        #expect(m["lmctfy_controller_hosts{state=\"connected\"}"] == 1)
        #expect(m["lmctfy_controller_hosts{state=\"disconnected\"}"] == 1)
        let promtool = "/usr/bin/promtool"
        if access(promtool, X_OK) == 0 {
            let body = try get("/metrics", port: port).body
            let file = fleet.dir + "/scrape.prom"
            try Sys.createFile(file, String(decoding: body, as: UTF8.self), mode: 0o600)
            let r = try TestProcess.capture(["/bin/sh", "-c", "\(promtool) check metrics < \(file)"])
            #expect(r.status == 0, "promtool: \(String(decoding: r.stdout + r.stderr, as: UTF8.self))")
        } else {
            Issue.record("promtool is not installed (Debian package prometheus, in tools/deps.sh): the controller's output was not checked")
        }
    }

    @Test func theControllerEndpointIsOffByDefaultAndLoopbackOnly() throws {
        let keys = "/tmp/lmctfy-cmetrics-keys-\(getpid())"
        try Sys.createFile(keys, "k \(JSONFormat.base64Encoded(Crypto.randomBytes(32)))\n", mode: 0o600)
        defer { unlink(keys) }
        let base = "agent_address: \"127.0.0.1:0\" allow_plaintext_tcp: true key_file: \"\(keys)\""
        #expect(try ControllerSettings.parse(base, source: "t").metrics == nil)
        #expect(try ControllerSettings.parse(base + " metrics { address: \"127.0.0.1:9103\" }", source: "t").metrics == .tcp(host: "127.0.0.1", port: 9103))
        do {
            _ = try ControllerSettings.parse(base + " metrics { address: \"0.0.0.0:9103\" }", source: "t")
            Issue.record("a non-loopback controller metrics address was accepted")
        } catch {
            #expect(error.message.contains("not a loopback address"), "\(error.message)")
        }
    }
}
