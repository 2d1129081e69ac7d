// The fleet log's cursors across a controller restart: what the
// controller stored of a host before it stopped is not fetched and stored
// again after it starts, STATS samples included (they are not journaled).
import Glibc
import Lmctfy
import LmctfyProto
import LmctfyRPC
import LmctfySystem
import LmctfyTestSupport
import Testing

@Suite(.enabled(if: RealCgroups.available, "\(RealCgroups.unavailableReason ?? "")"), .serialized)
struct FleetCursorTests {
    /// The STATS of one container at the controller from `after` (a fleet
    /// sequence) on, and the newest fleet sequence seen.
    private func stats(_ fleet: Fleet, _ name: String, after: UInt64) throws -> ([ContainerEvent], UInt64) {
        let client = try fleet.client()
        defer { client.close() }
        var got: [ContainerEvent] = []
        var newest = after
        try client.stream(AgentMethods.subscribe, SubscribeRequest(name: name, kinds: [.containerEventStats], afterSequence: after),
                          deadlineMs: 5_000) { (r: SubscribeResponse) in
            if let e = r.event {
                got.append(e)
                newest = max(newest, e.sequence ?? 0)
            }
            if let c = r.caughtUp { newest = max(newest, c) }
            return r.caughtUp == nil
        }
        return (got, newest)
    }

    /// A subscriber that resumes at the controller after a restart gets no
    /// sample a second time: the cursor of its host went back to the
    /// journal's last event (a CREATED), and the samples after it were
    /// fetched from the agent and stored again.
    @Test func aRestartedControllerStoresNoSampleTwice() throws {
        let fleet = try Fleet()
        try fleet.startController()
        try fleet.startAgent("a", host: "alpha", keyId: "host-a", statsMs: 100)
        fleet.waitForHosts(1)
        let name = RealCgroups.uniqueName("fleetstats")
        let agent = try RpcClient.connect(unixPath: fleet.dir + "/agent-a.sock")
        defer {
            _ = try? agent.call(AgentMethods.destroy, DestroyRequest(name: name, force: true))
            agent.close()
        }
        _ = try agent.call(AgentMethods.create, CreateRequest(name: name, spec: ContainerSpec()))
        var before: [ContainerEvent] = []
        var cursor: UInt64 = 0
        for _ in 0..<100 where before.count < 5 {
            usleep(100_000)
            (before, cursor) = try stats(fleet, name, after: 0)
        }
        #expect(before.count >= 5, "samples reach the controller")
        fleet.stopController()
        usleep(300_000)
        try fleet.startController()
        fleet.waitForHosts(1)
        // Samples made since come; none from before comes again.
        var after: [ContainerEvent] = []
        for _ in 0..<100 where after.count < 3 {
            usleep(100_000)
            after = try stats(fleet, name, after: cursor).0
        }
        #expect(after.count >= 3, "samples reach the restarted controller")
        func key(_ e: ContainerEvent) -> String { "\(e.host ?? "")/\(e.hostBootId ?? "")/\(e.hostSequence ?? 0)" }
        let seen = Set(before.map(key))
        let again = after.filter { seen.contains(key($0)) }
        #expect(again.count == 0, "\(again.count) of \(before.count) samples stored again after the restart")
        #expect(Set(after.map(key)).count == after.count, "no sample twice")
    }

    /// An agent stopped cleanly and started again loses nothing: the fleet
    /// log gets no HOST_GAP for its restart, and has both boots' events
    /// (every restart of every agent was a HOST_GAP; a soak probe).
    @Test func aCleanAgentRestartIsNoHostGap() throws {
        let fleet = try Fleet()
        try fleet.startController()
        try fleet.startAgent("a", host: "alpha", keyId: "host-a")
        fleet.waitForHosts(1)
        let before = RealCgroups.uniqueName("cleanA"), after = RealCgroups.uniqueName("cleanB")
        defer {
            for n in [before, after] { RealCgroups.destroy(n) }
        }
        func fleetEvents() throws -> [ContainerEvent] {
            let client = try fleet.client()
            defer { client.close() }
            var got: [ContainerEvent] = []
            try client.stream(AgentMethods.subscribe, SubscribeRequest(afterSequence: 0), deadlineMs: 5_000) { (r: SubscribeResponse) in
                if let e = r.event { got.append(e) }
                return r.caughtUp == nil
            }
            return got
        }
        func created(_ name: String) throws -> Bool {
            try fleetEvents().contains { $0.kind == .containerEventCreated && $0.container == name }
        }
        func make(_ name: String) throws {
            let agent = try RpcClient.connect(unixPath: fleet.dir + "/agent-a.sock")
            defer { agent.close() }
            _ = try agent.call(AgentMethods.create, CreateRequest(name: name, spec: ContainerSpec()))
        }
        try make(before)
        for _ in 0..<200 where try !created(before) { usleep(25_000) }
        fleet.stopAgent("a")
        try fleet.startAgent("a", host: "alpha", keyId: "host-a")
        fleet.waitForHosts(1)
        try make(after)
        for _ in 0..<200 where try !created(after) { usleep(25_000) }
        let events = try fleetEvents()
        #expect(try created(before) && created(after), "both boots' events reach the fleet log")
        #expect(Set(events.compactMap(\.hostBootId)).count == 2, "two boots of alpha")
        #expect(!events.contains { $0.kind == .containerEventHostGap }, "no HOST_GAP: \(events.filter { $0.kind == .containerEventHostGap })")

        // Two more clean restarts, the first boot recording nothing (an
        // idle host): still no HOST_GAP, and nothing stored twice. The
        // boot with no event was unknown to the next start: a HOST_GAP,
        // then every kept event of alpha stored again (the policy probe).
        let last = RealCgroups.uniqueName("cleanC")
        defer { RealCgroups.destroy(last) }
        for _ in 0..<2 {
            fleet.stopAgent("a")
            try fleet.startAgent("a", host: "alpha", keyId: "host-a")
            fleet.waitForHosts(1)
            usleep(300_000)
        }
        try make(last)
        for _ in 0..<200 where try !created(last) { usleep(25_000) }
        let all = try fleetEvents()
        #expect(try created(last))
        #expect(!all.contains { $0.kind == .containerEventHostGap }, "no HOST_GAP: \(all.filter { $0.kind == .containerEventHostGap })")
        let ids = all.map { "\($0.hostBootId ?? ""):\($0.hostSequence ?? 0)" }
        #expect(Set(ids).count == ids.count, "stored twice: \(ids)")
    }
}
