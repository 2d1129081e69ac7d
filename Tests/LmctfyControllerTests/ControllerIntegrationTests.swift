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

@Suite(.enabled(if: RealCgroups.available, "\(RealCgroups.unavailableReason ?? "")"), .serialized)
struct ControllerIntegrationTests {
    /// TCP peers that never finish their handshake: the controller bounded
    /// nothing, so anyone who could reach its ports made it hold an SSL
    /// object (or a session) for each until its file descriptors ran out,
    /// and agents could no longer dial home. Now at most
    /// max_handshaking_connections (both TCP ports together); agents and the
    /// Unix socket's clients are served meanwhile.
    @Test func connectionsInTheirHandshakeAreBounded() throws {
        let fleet = try Fleet()
        try fleet.startController(extra: "limits { max_handshaking_connections: 4 hello_timeout_ms: 60000 } metrics { address: \"127.0.0.1:0\" }")
        try fleet.startAgent("a", host: "alpha", keyId: "host-a")
        fleet.waitForHosts(1)
        let onAgents = try SilentPeers(port: fleet.agentPort, count: 3)
        let onClients = try SilentPeers(port: fleet.clientPort, count: 3)
        onAgents.waitUntilClosed(atLeast: 0, waitMs: 0)
        onClients.waitUntilClosed(atLeast: 2, waitMs: 5000)
        #expect(onAgents.open == [0, 1, 2] && onClients.open == [0], "four held, both ports together")
        for i in onClients.closed {
            #expect(String(decoding: onClients.said[i], as: UTF8.self).contains("too many connections in their handshake"))
        }
        // The registered agent and the Unix socket are served meanwhile.
        let client = try fleet.client()
        defer { client.close() }
        client.host = "alpha"
        #expect(try client.call("Ping", PingRequest(data: [5]), as: PingResponse.self).data == [5])
        client.host = nil
        #expect(try client.call(ControllerMethods.listHosts, ListHostsRequest()).hosts.count == 1)
        let metrics = String(decoding: try get("/metrics", port: try #require(fleet.controller?.metricsPort)).body, as: UTF8.self)
        #expect(metrics.contains("lmctfy_controller_connections_refused_total 2"))
    }

    /// One shared key registers one host name (max_hosts_per_key, 1 by
    /// default): a key taken from one agent registered any number of new
    /// hosts, each kept for good (a probe). Its own name again, and another
    /// key's first name, still register; a removed name frees its key.
    @Test func aKeyRegistersOneHostUnlessConfiguredOtherwise() throws {
        let fleet = try Fleet()
        try fleet.startController()
        #expect(try fleet.register(HostIdentity(hostName: "first")) == nil)
        #expect(try fleet.register(HostIdentity(hostName: "second")) == .permissionDenied)
        #expect(try fleet.register(HostIdentity(hostName: "first")) == nil)
        let client = try fleet.client()
        defer { client.close() }
        let names = try client.call(ControllerMethods.listHosts, ListHostsRequest()).hosts.compactMap { $0.identity?.hostName }
        #expect(names == ["first"], "\(names)")
        try removeOnceDisconnected(client, "first")
        #expect(try fleet.register(HostIdentity(hostName: "second")) == nil)
        // The bound is configurable, and checked (HostRegistryTests: its message).
        expectRefused(fleet, "max_hosts_per_key: 0", "max_hosts_per_key must be 1 to 1048576")
    }

    /// One key could register any number of names, each with any amount
    /// of labels, all kept for good (a probe: a thousand names with 64 KiB
    /// of labels each took the controller 140 MB, a 66 MB inventory
    /// rewritten every second, and a ListHosts no frame could carry). An
    /// identity now has bounds, and the inventory holds max_hosts.
    @Test func registrationsAreBounded() throws {
        let fleet = try Fleet()
        try fleet.startController(extra: "max_hosts: 3 max_hosts_per_key: 4")
        let big = (0..<65).map { HostLabel(key: "k\($0)", value: "v") }
        #expect(try fleet.register(HostIdentity(hostName: "many-labels", label: big)) == .invalidArgument)
        let long = [HostLabel(key: "zone", value: String(repeating: "v", count: 257))]
        #expect(try fleet.register(HostIdentity(hostName: "long-label", label: long)) == .invalidArgument)
        #expect(try fleet.register(HostIdentity(hostName: "long-id", machineId: String(repeating: "m", count: 257))) == .invalidArgument)
        let fine = (0..<64).map { HostLabel(key: "k\($0)", value: String(repeating: "v", count: 256)) }
        for name in ["h1", "h2", "h3"] { #expect(try fleet.register(HostIdentity(hostName: name, label: fine)) == nil) }
        #expect(try fleet.register(HostIdentity(hostName: "h4")) == .resourceExhausted)
        // A known name still registers at the bound; a removed one makes room.
        #expect(try fleet.register(HostIdentity(hostName: "h2")) == nil)
        let client = try fleet.client()
        defer { client.close() }
        try removeOnceDisconnected(client, "h1")
        #expect(try fleet.register(HostIdentity(hostName: "h4")) == nil)
        expectRefused(fleet, "max_hosts: 0", "max_hosts must be 1 to 1048576")
        // event_log_capacity 0 was taken, and the fleet log kept nothing.
        for capacity in [0, 1_048_577] {
            do {
                _ = try ControllerSettings.parse("state_dir: \"\(fleet.dir)/other\" agent_address: \"127.0.0.1:1\" key_file: \"\(fleet.dir)/keys\" allow_plaintext_tcp: true event_log_capacity: \(capacity)", source: "t")
                Issue.record("event_log_capacity \(capacity) was taken")
            } catch {
                #expect(error.message.contains("event_log_capacity must be 1 to 1048576"), "\(error)")
            }
        }
    }

    /// Incomplete frames over all connections have a budget (64 MiB), as
    /// at the agent: peers holding most of a 4 MiB frame each are closed,
    /// the longest-stalled first, and a client's large frame is served.
    @Test func incompleteFramesStayWithinTheirBudget() throws {
        let fleet = try Fleet()
        try fleet.startController(extra: "limits { hello_timeout_ms: 5000 } metrics { address: \"127.0.0.1:0\" }")
        let half = try HalfFrames(unixPath: fleet.dir + "/controller.sock", count: 20)
        let client = try fleet.client()
        defer { client.close() }
        let data = [UInt8](repeating: 7, count: 3 << 20)
        #expect(try client.call("Ping", PingRequest(data: data), as: PingResponse.self, deadlineMs: 10_000).data == data)
        let closed = half.closed(.goawayIdleTimeout, atLeast: 4, waitMs: 5_000)
        #expect(closed.count >= 4, "\(closed.count) of 20 stalled frames closed")
        let port = try #require(fleet.controller?.metricsPort)
        let metrics = String(decoding: try get("/metrics", port: port).body, as: UTF8.self)
        #expect(metrics.contains("lmctfy_controller_incomplete_frames_evicted_total \(closed.count)"))
    }

    /// A client that pipelines requests and reads none of the answers: the
    /// controller kept reading and answering, 2 GB in 25 s (a probe,
    /// thirty-second sitting). Now it stops reading from a peer once 4 MiB
    /// of answers wait for it, so the client's writes stall in its own
    /// socket; and serves everyone else meanwhile.
    @Test func aClientThatReadsNothingIsNotReadFrom() throws {
        let fleet = try Fleet()
        try fleet.startController()
        let link = try RawLink(fd: try RpcSocket.connectUnix(path: fleet.dir + "/controller.sock"),
                               Session(dialler: .peerCredentials, name: "no-reader", now: MonotonicClock.milliseconds()))
        _ = fcntl(link.fd, F_SETFL, fcntl(link.fd, F_GETFL) | O_NONBLOCK)
        var sent = 0
        var stream: UInt32 = 1
        var stalledSince: UInt64?
        var pending: [UInt8] = []
        while sent < 256 << 20 {
            if pending.isEmpty {
                for _ in 0..<1000 {
                    pending += FrameCodec.encode(Frame(kind: .frameRequest, streamId: stream, method: ControllerMethods.listHosts.name, payload: []))
                    stream += 2
                }
            }
            let n = pending.withUnsafeBytes { Glibc.send(link.fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n > 0 {
                sent += n
                pending.removeFirst(n)
                stalledSince = nil
                continue
            }
            guard errno == EAGAIN else { break }
            let now = MonotonicClock.milliseconds()
            if let since = stalledSince, now - since > 1000 { break }
            if stalledSince == nil { stalledSince = now }
            usleep(5_000)
        }
        #expect(sent < 64 << 20, "the controller stopped reading: \(sent) bytes of requests taken")
        // Everyone else is served meanwhile.
        let client = try fleet.client()
        defer { client.close() }
        #expect(try client.call(ControllerMethods.listHosts, ListHostsRequest()).hosts.isEmpty)
    }

    @Test func agentsRegisterAndAreListedWithTheirIdentity() throws {
        let fleet = try Fleet()
        try fleet.startController()
        try fleet.startAgent("a", host: "alpha", keyId: "host-a", labels: ["zone": "z1", "tier": "web"])
        // beta dials the controller by name ("localhost": ::1 first, where
        // nothing listens, then 127.0.0.1); a name was refused at every try.
        try fleet.startAgent("b", host: "beta", keyId: "host-b", labels: ["zone": "z2"], controllerHost: "localhost")
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
        // A key twice matched by its last value alone.
        #expect { _ = try client.call(ControllerMethods.listHosts, ListHostsRequest(selector: "zone=z2,zone=z1")) }
            throws: { ($0 as? LmctfyError)?.message.contains("gives \"zone\" twice") == true }
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
        // Destroyed here, not through the client: by the end its host is
        // another (or none) and beta is stopped.
        defer { _ = try? ContainerApi.detect().destroy(ContainerName.resolve(name, relativeTo: .root)) }
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

    /// Events of a host reach a scheduler subscribed at the controller,
    /// with the host and the agent's own numbering; the fleet log's own
    /// numbering resumes without gap or duplicate.
    @Test func aHostsEventsReachASchedulerAtTheController() throws {
        let fleet = try Fleet()
        try fleet.startController()
        let alpha = try fleet.startAgent("a", host: "alpha", keyId: "host-a")
        fleet.waitForHosts(1)
        let name = RealCgroups.uniqueName("fleet")
        let scheduler = try fleet.client()
        defer { scheduler.close() }
        let admin = try fleet.client()
        defer { admin.close() }
        admin.host = "alpha"
        defer { _ = try? ContainerApi.detect().destroy(ContainerName.resolve(name, relativeTo: .root)) }
        _ = try admin.call(AgentMethods.create, CreateRequest(name: name, spec: ContainerSpec()))
        _ = try admin.call(AgentMethods.pause, PauseRequest(name: name))
        _ = try admin.call(AgentMethods.resume, ResumeRequest(name: name))
        var got: [ContainerEvent] = []
        // Everything the fleet log keeps, with credit as lmctl grants it.
        try scheduler.stream(AgentMethods.subscribe, SubscribeRequest(name: name, afterSequence: 0, credit: 64, hosts: ["alpha"]), window: 64) { (r: SubscribeResponse) in
            if let e = r.event { got.append(e) }
            return got.count < 3
        }
        #expect(got.map(\.kind) == [.containerEventCreated, .containerEventFreezer, .containerEventFreezer])
        #expect(got.allSatisfy { $0.host == "alpha" && $0.hostBootId == alpha.dispatcher.events.bootId && $0.bootId == fleet.controller?.fleetLog.id })
        let agentSeqs = alpha.dispatcher.events.range(after: 0, upTo: .max).events.filter { $0.container == name }.compactMap(\.sequence)
        #expect(got.compactMap(\.hostSequence) == agentSeqs, "the agent's own numbering")
        let fleetSeqs = got.compactMap(\.sequence)
        #expect(fleetSeqs == fleetSeqs.sorted() && Set(fleetSeqs).count == 3)
        // Resume after the first: the other two, no gap, no duplicate.
        var resumed: [ContainerEvent] = []
        try scheduler.stream(AgentMethods.subscribe, SubscribeRequest(name: name, bootId: got[0].bootId, afterSequence: got[0].sequence)) { (r: SubscribeResponse) in
            #expect(r.gap == nil)
            if let e = r.event { resumed.append(e) }
            return r.caughtUp == nil
        }
        #expect(resumed.compactMap(\.sequence) == Array(fleetSeqs.dropFirst()))
        // Another host's filter sees none of it.
        var none = 0
        try scheduler.stream(AgentMethods.subscribe, SubscribeRequest(name: name, afterSequence: 0, hosts: ["beta"])) { (r: SubscribeResponse) in
            if r.event != nil { none += 1 }
            return r.caughtUp == nil
        }
        #expect(none == 0)
        // A controller restart: the fleet log keeps its id and numbering,
        // and the host's stream resumes from the cursor (nothing twice).
        fleet.stopController()
        try fleet.startController()
        fleet.waitForHosts(1)
        _ = try? admin.call(AgentMethods.ping, PingRequest())  // the old connection is gone
        let admin2 = try fleet.client()
        defer { admin2.close() }
        admin2.host = "alpha"
        _ = try admin2.call(AgentMethods.pause, PauseRequest(name: name))
        let scheduler2 = try fleet.client()
        defer { scheduler2.close() }
        var after: [ContainerEvent] = []
        try scheduler2.stream(AgentMethods.subscribe, SubscribeRequest(name: name, bootId: got[0].bootId, afterSequence: got[2].sequence)) { (r: SubscribeResponse) in
            #expect(r.gap == nil)
            if let e = r.event { after.append(e) }
            return after.isEmpty
        }
        #expect(after.map(\.kind) == [.containerEventFreezer] && after.first?.frozen == true)
        #expect((after.first?.sequence ?? 0) > (got[2].sequence ?? 0))
    }

    /// While the controller is away the agent keeps its containers and
    /// records events; it dials again with backoff, and the events of the
    /// outage reach the fleet log once it is back.
    @Test func theEventsOfAnOutageArriveWhenTheAgentIsBack() throws {
        let fleet = try Fleet()
        try fleet.startController()
        try fleet.startAgent("a", host: "alpha", keyId: "host-a")
        fleet.waitForHosts(1)
        let name = RealCgroups.uniqueName("outage")
        defer { _ = try? ContainerApi.detect().destroy(ContainerName.resolve(name, relativeTo: .root)) }
        fleet.stopController()
        let local = try RpcClient.connect(unixPath: fleet.dir + "/agent-a.sock")
        defer { local.close() }
        _ = try local.call(AgentMethods.create, CreateRequest(name: name, spec: ContainerSpec()))
        _ = try local.call(AgentMethods.pause, PauseRequest(name: name))
        usleep(10_000_000)  // away for 10 s: the agent retries, backing off
        #expect(try ContainerApi.detect().exists(ContainerName.resolve(name, relativeTo: .root)), "the container is kept")
        try fleet.startController()
        fleet.waitForHosts(1)
        let scheduler = try fleet.client()
        defer { scheduler.close() }
        var got: [ContainerEvent] = []
        try scheduler.stream(AgentMethods.subscribe, SubscribeRequest(name: name, afterSequence: 0), deadlineMs: 10_000) { (r: SubscribeResponse) in
            if let e = r.event { got.append(e) }
            return got.count < 2
        }
        #expect(got.map(\.kind) == [.containerEventCreated, .containerEventFreezer] && got.allSatisfy { $0.host == "alpha" })
    }

    /// A WatchHosts caller that does not read was sent every host's coming
    /// and going for as long as it kept the stream open, all of it held
    /// by the controller; its watch now ends (RESOURCE_EXHAUSTED) once
    /// 16 MiB wait for it, and watching again lists every host first.
    @Test func aWatcherThatDoesNotReadIsEnded() throws {
        let fleet = try Fleet()
        try fleet.startController(extra: "max_hosts_per_key: 1000")  // (one key registers them all)
        let watcher = try RawLink(fd: try RpcSocket.connectUnix(path: fleet.dir + "/controller.sock"),
                                  Session(dialler: .peerCredentials, name: "no-reader", now: MonotonicClock.milliseconds()))
        watcher.open(ControllerMethods.watchHosts.name, try WatchHostsRequest().serializedBytes(), deadlineMs: nil)
        // Hosts of ~20 KB each come and go: a HOST_UP and a HOST_DOWN each,
        // 16 MiB after some 400 of them.
        let labels = (0..<64).map { HostLabel(key: "k\($0)", value: String(repeating: "v", count: 256)) }
        for i in 0..<600 { #expect(try fleet.register(HostIdentity(hostName: "w\(i)", label: labels)) == nil) }
        let end = MonotonicClock.milliseconds() + 30_000
        while watcher.statuses.isEmpty && MonotonicClock.milliseconds() < end { watcher.pump(ms: 50) { !watcher.statuses.isEmpty } }
        #expect(watcher.statuses.first?.code == .resourceExhausted && watcher.statuses.first?.message.contains("WatchHosts ended") == true,
                "\(watcher.statuses)")
        // Watching again lists every host.
        let again = try fleet.client()
        defer { again.close() }
        var listed = 0
        try again.stream(ControllerMethods.watchHosts, WatchHostsRequest()) { (r: WatchHostsResponse) in
            if r.change == .hostListed { listed += 1 }
            return listed < 600
        }
        #expect(listed == 600)
    }

    /// A WatchHosts or FanOut stream that ends at the controller (an answer
    /// over the caller's frame limit: RESOURCE_EXHAUSTED), or that its
    /// caller cancels, leaves nothing behind: no watcher told of later
    /// changes, no fan-out calling more hosts; its hosts' calls are
    /// cancelled.
    @Test func watchesAndFanOutsThatEndLeaveNothingBehind() throws {
        let fleet = try Fleet()
        try fleet.startController(extra: "max_hosts_per_key: 100")  // (one key registers them all)
        let controller = try #require(fleet.controller)
        // Hosts whose HostInfo (~2.5 KB of labels) does not fit a 1 KiB frame.
        let labels = (0..<10).map { HostLabel(key: "k\($0)", value: String(repeating: "v", count: 250)) }
        let hosts = try (0..<3).map { i in
            let link = try RawLink(fd: try RpcSocket.connectTCP(host: "127.0.0.1", port: fleet.agentPort),
                                   Session(dialler: .sharedKey(keyId: "host-b", key: fleet.keys["host-b"]!), name: "e\(i)", now: MonotonicClock.milliseconds()))
            link.open(ControllerMethods.register.name, try RegisterRequest(identity: HostIdentity(hostName: "e\(i)", label: labels)).serializedBytes())
            link.pump { !link.responses.isEmpty || !link.statuses.isEmpty }
            #expect(link.responses.count == 1, "e\(i) did not register: \(link.statuses)")
            return link
        }
        // Each link's own streams (its Register stays open): a host's calls
        // are over when its count is back to this.
        let own = hosts.map(\.session.openStreamCount)
        func small() throws -> RawLink {
            try RawLink(fd: try RpcSocket.connectUnix(path: fleet.dir + "/controller.sock"),
                        Session(dialler: .peerCredentials, name: "small", limits: SessionLimits(maxFrameBytes: 1024), now: MonotonicClock.milliseconds()))
        }
        func settled(_ what: String) {
            var left = controller.streamsUnderWay
            for _ in 0..<500 where left != (0, 0) {
                usleep(10_000)
                left = controller.streamsUnderWay
            }
            #expect(left == (0, 0), "\(what): \(left.watchers) watchers and \(left.fanOuts) fan-outs left")
        }

        // The listing's first answer is over the caller's limit.
        let watcher = try small()
        watcher.open(ControllerMethods.watchHosts.name, try WatchHostsRequest().serializedBytes(), deadlineMs: nil)
        watcher.pump { !watcher.statuses.isEmpty }
        #expect(watcher.statuses.first?.code == .resourceExhausted, "\(watcher.statuses) \(watcher.responses.count) \(watcher.session.isClosed)")
        settled("a watch ended by its listing")

        // Each host's answer is over the caller's limit: the first ends the
        // fan-out, and the hosts still asked see their calls cancelled.
        let fanner = try small()
        let ping = try PingRequest(data: [UInt8](repeating: 7, count: 2000)).serializedBytes()
        fanner.open(ControllerMethods.fanOut.name, try FanOutRequest(method: AgentMethods.ping.name, payload: ping).serializedBytes())
        var asked: [(RawLink, UInt32)] = []
        for h in hosts {
            h.pump { h.requests.contains { $0.method == AgentMethods.ping.name } }
            asked += h.requests.filter { $0.method == AgentMethods.ping.name }.map { (h, $0.stream) }
            h.requests.removeAll()
        }
        #expect(asked.count == 3, "every host is asked at once (the window)")
        let (first, stream) = try #require(asked.first)
        first.send(first.session.sendFinal(streamId: stream, payload: try PingResponse(data: [UInt8](repeating: 7, count: 2000)).serializedBytes(),
                                           .ok, now: MonotonicClock.milliseconds()))
        fanner.pump { !fanner.statuses.isEmpty }
        #expect(fanner.statuses.first?.code == .resourceExhausted, "\(fanner.statuses)")
        settled("a fan-out ended by an answer")
        for (i, h) in hosts.enumerated() {
            h.pump(ms: 2000) { h.session.openStreamCount == own[i] }
            #expect(h.session.openStreamCount == own[i], "host e\(i)'s call was not cancelled")
        }

        // Cancelled by their callers.
        let normal = try fleet.client()
        defer { normal.close() }
        let caller = try RawLink(fd: try RpcSocket.connectUnix(path: fleet.dir + "/controller.sock"),
                                 Session(dialler: .peerCredentials, name: "canceller", now: MonotonicClock.milliseconds()))
        let w = caller.open(ControllerMethods.watchHosts.name, try WatchHostsRequest().serializedBytes(), deadlineMs: nil)
        let f = caller.open(ControllerMethods.fanOut.name, try FanOutRequest(method: AgentMethods.ping.name, payload: ping).serializedBytes())
        for h in hosts { h.pump { !h.requests.isEmpty } }
        #expect(controller.streamsUnderWay == (1, 1))
        caller.send(caller.session.cancel(streamId: w, now: MonotonicClock.milliseconds()))
        caller.send(caller.session.cancel(streamId: f, now: MonotonicClock.milliseconds()))
        settled("a watch and a fan-out cancelled")
        for (i, h) in hosts.enumerated() {
            h.pump(ms: 2000) { h.session.openStreamCount == own[i] }
            #expect(h.session.openStreamCount == own[i], "a cancelled fan-out's call stayed open at host e\(i)")
        }
        // The controller goes on serving.
        _ = try normal.call(AgentMethods.ping, PingRequest())
    }

    /// A fan-out calls its hosts a window at a time (~16 MiB of requests
    /// in flight), and no more while its caller holds more than 4 MiB
    /// unread: it called every host at once, and each answer landed in the
    /// caller's outbox (a reader's FanOut of a 4 MiB Ping to a thousand
    /// hosts is 4 GB held for a caller that does not read).
    @Test func aFanOutCallsItsHostsAsItsCallerReads() throws {
        let fleet = try Fleet()
        try fleet.startController(extra: "max_hosts_per_key: 100")  // (one key registers them all)
        // Twelve hosts that answer Pings by hand.
        let hosts = try (0..<12).map { i in
            let link = try RawLink(fd: try RpcSocket.connectTCP(host: "127.0.0.1", port: fleet.agentPort),
                                   Session(dialler: .sharedKey(keyId: "host-b", key: fleet.keys["host-b"]!), name: "f\(i)", now: MonotonicClock.milliseconds()))
            link.open(ControllerMethods.register.name, try RegisterRequest(identity: HostIdentity(hostName: "f\(i)")).serializedBytes())
            link.pump { !link.responses.isEmpty }
            return link
        }
        var called = Set<Int>()
        func serve(ms: UInt64) {
            let end = MonotonicClock.milliseconds() + ms
            repeat {
                for (i, h) in hosts.enumerated() {
                    h.pump(ms: 15) { false }  // a 2 MiB request is 32 reads
                    for r in h.requests where r.method == AgentMethods.ping.name {
                        called.insert(i)
                        let data = (try? PingRequest(serializedBytes: r.payload))?.data ?? []
                        h.send(h.session.sendResponse(streamId: r.stream, payload: (try? PingResponse(data: data).serializedBytes()) ?? [], now: MonotonicClock.milliseconds()))
                        h.send(h.session.sendStatus(streamId: r.stream, .ok, now: MonotonicClock.milliseconds()))
                    }
                    h.requests.removeAll()
                }
            } while MonotonicClock.milliseconds() < end
        }
        // A caller that asks, then reads nothing for a while.
        let client = try RawLink(fd: try RpcSocket.connectUnix(path: fleet.dir + "/controller.sock"),
                                 Session(dialler: .peerCredentials, name: "slow", now: MonotonicClock.milliseconds()))
        let ping = try PingRequest(data: [UInt8](repeating: 7, count: 2 << 20)).serializedBytes()
        client.open(ControllerMethods.fanOut.name, try FanOutRequest(method: AgentMethods.ping.name, payload: ping).serializedBytes())
        // The window's 8 (16 MiB of 2 MiB requests), and then a few more at
        // most: the caller holds their answers unread. (A debug build takes
        // a second or two over each 2 MiB frame.)
        let first = MonotonicClock.milliseconds() + 30_000
        while called.count < 8 && MonotonicClock.milliseconds() < first { serve(ms: 100) }
        serve(ms: 1_500)
        #expect(called.count >= 8 && called.count < 12, "\(called.count) of 12 hosts called while the caller read nothing")
        // It reads: the rest are called, and every answer comes.
        let end = MonotonicClock.milliseconds() + 60_000
        while client.statuses.isEmpty && MonotonicClock.milliseconds() < end {
            client.pump(ms: 5) { false }
            serve(ms: 5)
        }
        #expect(called.count == 12 && client.statuses.first?.code == .ok, "\(called.count) called, \(client.statuses)")
        let answers = client.responses.compactMap { try? FanOutResponse(serializedBytes: $0) }
        #expect(answers.count == 12 && answers.allSatisfy { $0.status?.code == nil || $0.status?.code == 0 }, "\(answers.map { $0.status })")
    }

    /// FanOut: one unary method on every host a selector matches, one
    /// answer per host (a host that is away answers UNAVAILABLE).
    @Test func fanOutAsksEveryMatchingHostOnce() throws {
        let fleet = try Fleet()
        try fleet.startController()
        let alpha = try fleet.startAgent("a", host: "alpha", keyId: "host-a", labels: ["tier": "web"])
        let beta = try fleet.startAgent("b", host: "beta", keyId: "host-b", labels: ["tier": "web"])
        try fleet.startAgent("c", host: "gamma", keyId: "other", labels: ["tier": "db"])
        fleet.waitForHosts(3)
        fleet.stopAgent("c")
        fleet.waitForHosts(2)
        let client = try fleet.client()
        defer { client.close() }
        func fan(_ selector: String, _ method: String) throws -> [String: FanOutResponse] {
            var out: [String: FanOutResponse] = [:]
            try client.stream(ControllerMethods.fanOut, FanOutRequest(selector: selector, method: method,
                                                                       payload: try MachineInfoRequest().serializedBytes())) { (r: FanOutResponse) in
                #expect(out[r.host ?? ""] == nil, "one answer per host")
                out[r.host ?? ""] = r
                return true
            }
            return out
        }
        let web = try fan("tier=web", AgentMethods.machineInfo.name)
        #expect(web.keys.sorted() == ["alpha", "beta"])
        #expect(try MachineInfoResponse(serializedBytes: web["alpha"]?.payload ?? []).bootId == alpha.dispatcher.events.bootId)
        #expect(try MachineInfoResponse(serializedBytes: web["beta"]?.payload ?? []).bootId == beta.dispatcher.events.bootId)
        #expect(web.values.allSatisfy { $0.status?.code == 0 })
        let all = try fan("", AgentMethods.machineInfo.name)
        #expect(all.keys.sorted() == ["alpha", "beta", "gamma"])
        #expect(all["gamma"]?.status?.code == StatusCode.unavailable.rawValue && all["gamma"]?.payload == nil)
        #expect { _ = try fan("", AgentMethods.subscribe.name) } throws: { ($0 as? LmctfyError)?.code == .invalidArgument }
        #expect { _ = try fan("", "NoSuchMethod") } throws: { ($0 as? LmctfyError)?.code == .unimplemented }
        // A reader may fan out what a reader may call, nothing else.
        let reader = try RpcClient.connect(host: "127.0.0.1", port: fleet.clientPort, keyId: "reader", key: fleet.keys["reader"]!)
        defer { reader.close() }
        #expect {
            try reader.stream(ControllerMethods.fanOut, FanOutRequest(method: AgentMethods.killAll.name)) { (_: FanOutResponse) in true }
        } throws: { ($0 as? LmctfyError)?.code == .permissionDenied }
    }

    /// Peers that are not what they claim, or send nonsense, get a clear
    /// error and change nothing.
    @Test func badPeersAndBadRequestsAreRefused() throws {
        let fleet = try Fleet()
        try fleet.startController()
        try fleet.startAgent("a", host: "alpha", keyId: "host-a")
        fleet.waitForHosts(1)
        // The agent port with a key the controller does not hold, or a wrong one.
        #expect { _ = try RpcClient.connect(host: "127.0.0.1", port: fleet.agentPort, keyId: "nobody", key: fleet.keys["host-a"]!) }
            throws: { ($0 as? LmctfyError)?.code == .unauthenticated }
        #expect { _ = try RpcClient.connect(host: "127.0.0.1", port: fleet.agentPort, keyId: "host-a", key: fleet.keys["host-b"]!) }
            throws: { ($0 as? LmctfyError)?.code == .unauthenticated }
        // An authenticated agent link: Register must name a host and decode;
        // it may call nothing else.
        let link = try RpcClient.connect(host: "127.0.0.1", port: fleet.agentPort, keyId: "host-b", key: fleet.keys["host-b"]!)
        #expect { _ = try link.call(ControllerMethods.listHosts, ListHostsRequest()) } throws: { ($0 as? LmctfyError)?.code == .unimplemented }
        #expect { _ = try link.call("Register", [0xff, 0xff, 0xff]) } throws: { ($0 as? LmctfyError)?.code == .invalidArgument }
        link.close()
        let link2 = try RpcClient.connect(host: "127.0.0.1", port: fleet.agentPort, keyId: "host-b", key: fleet.keys["host-b"]!)
        #expect { _ = try link2.call(ControllerMethods.register, RegisterRequest(identity: HostIdentity())) }
            throws: { ($0 as? LmctfyError)?.code == .invalidArgument }
        link2.close()
        // A name outside [A-Za-z0-9._-] (one with a newline forged the
        // controller's log lines; "/" and "../etc" were kept).
        for bad in ["a\nb", "../etc", "/", String(repeating: "n", count: 254)] {
            let l = try RpcClient.connect(host: "127.0.0.1", port: fleet.agentPort, keyId: "host-b", key: fleet.keys["host-b"]!)
            #expect { _ = try l.call(ControllerMethods.register, RegisterRequest(identity: HostIdentity(hostName: bad))) }
                throws: { ($0 as? LmctfyError)?.code == .invalidArgument && ($0 as? LmctfyError)?.message.contains("[A-Za-z0-9._-]") == true }
            l.close()
        }
        // A client's key (bound to the reader role) cannot register a host.
        let rogue = try RpcClient.connect(host: "127.0.0.1", port: fleet.agentPort, keyId: "reader", key: fleet.keys["reader"]!)
        #expect { _ = try rogue.call(ControllerMethods.register, RegisterRequest(identity: HostIdentity(hostName: "rogue"))) }
            throws: { ($0 as? LmctfyError)?.code == .permissionDenied }
        rogue.close()
        // One host per link: a second Register is refused and the link
        // ends, its first host down (it stayed "connected" for good).
        let twice = try RpcClient.connect(host: "127.0.0.1", port: fleet.agentPort, keyId: "host-b", key: fleet.keys["host-b"]!)
        _ = try twice.call(ControllerMethods.register, RegisterRequest(identity: HostIdentity(hostName: "first")))
        #expect { _ = try twice.call(ControllerMethods.register, RegisterRequest(identity: HostIdentity(hostName: "second"))) }
            throws: { ($0 as? LmctfyError)?.code == .failedPrecondition }
        twice.close()
        // A client cannot Register, and garbage in a known method is refused.
        let client = try fleet.client()
        defer { client.close() }
        #expect { _ = try client.call(ControllerMethods.register, RegisterRequest(identity: HostIdentity(hostName: "evil"))) }
            throws: { ($0 as? LmctfyError)?.code == .failedPrecondition && ($0 as? LmctfyError)?.message.contains("an agent's call") == true }
        #expect { _ = try client.call("ListHosts", [0xff, 0xff]) } throws: { ($0 as? LmctfyError)?.code == .invalidArgument }
        #expect { try client.stream("Subscribe", [0xff, 0xff]) { _ in true } } throws: { ($0 as? LmctfyError)?.code == .invalidArgument }
        #expect { try client.stream(AgentMethods.subscribe, SubscribeRequest(name: "relative")) { _ in true } }
            throws: { ($0 as? LmctfyError)?.code == .invalidArgument }
        // Nothing changed but "first", down and removable: alpha still serving.
        var hosts: [HostInfo] = []
        for _ in 0..<200 {
            hosts = try client.call(ControllerMethods.listHosts, ListHostsRequest()).hosts
            if hosts.first(where: { $0.identity?.hostName == "first" })?.state == .hostDisconnected { break }
            usleep(10_000)
        }
        #expect(hosts.first(where: { $0.identity?.hostName == "first" })?.state == .hostDisconnected)
        _ = try client.call(ControllerMethods.removeHost, RemoveHostRequest(hostName: "first"))
        hosts = try client.call(ControllerMethods.listHosts, ListHostsRequest()).hosts
        #expect(hosts.map { $0.identity?.hostName } == ["alpha"] && hosts.first?.state == .hostConnected)
        client.host = "alpha"
        _ = try client.call(AgentMethods.ping, PingRequest())
    }

    /// A host that does not read its link (its agent stopped, or a peer
    /// that never reads): calls for it are refused once its link holds 4
    /// MiB unwritten, not queued without end (a reader's routed 3 MB Pings
    /// took the controller from 75 to 733 MB; a probe).
    @Test func callsForAHostThatDoesNotReadAreRefusedNotQueued() throws {
        let fleet = try Fleet()
        try fleet.startController()
        // A fake agent: hello, Register, then it never reads again.
        let agent = try RawLink(fd: try RpcSocket.connectTCP(host: "127.0.0.1", port: fleet.agentPort),
                                Session(dialler: .sharedKey(keyId: "host-b", key: fleet.keys["host-b"]!), name: "stalled", now: MonotonicClock.milliseconds()))
        agent.open(ControllerMethods.register.name, try RegisterRequest(identity: HostIdentity(hostName: "stalled")).serializedBytes())
        agent.pump { !agent.responses.isEmpty }
        try #require(!agent.responses.isEmpty, "the fake agent did not register")
        // A client that sends its calls without waiting for their answers
        // (routed ones wait for a host that never reads).
        let client = try RawLink(fd: try RpcSocket.connectUnix(path: fleet.dir + "/controller.sock"),
                                 Session(dialler: .peerCredentials, name: "client", now: MonotonicClock.milliseconds()))
        let ping = try PingRequest(data: [UInt8](repeating: 7, count: 256 << 10)).serializedBytes()
        for _ in 0..<160 where !client.statuses.contains(where: { $0.code == .resourceExhausted }) {
            client.open(AgentMethods.ping.name, ping, host: "stalled")
            client.pump(ms: 5) { false }
        }
        client.pump(ms: 5000) { client.statuses.contains { $0.code == .resourceExhausted } }
        let refused = client.statuses.first { $0.code == .resourceExhausted }
        #expect(refused?.message.contains("host stalled is not taking its calls") == true, "\(client.statuses)")
        // The others are still served.
        let other = try fleet.client()
        defer { other.close() }
        _ = try other.call(AgentMethods.ping, PingRequest())
    }

    /// A call in flight when its host's link drops ends UNAVAILABLE saying
    /// so of the host (it said "connection closed", read as the caller's).
    @Test func aCallWhoseHostsLinkDropsSaysSo() throws {
        let fleet = try Fleet()
        try fleet.startController()
        var agent: RawLink? = try RawLink(fd: try RpcSocket.connectTCP(host: "127.0.0.1", port: fleet.agentPort),
                                          Session(dialler: .sharedKey(keyId: "host-b", key: fleet.keys["host-b"]!), name: "flaky", now: MonotonicClock.milliseconds()))
        agent!.open(ControllerMethods.register.name, try RegisterRequest(identity: HostIdentity(hostName: "flaky")).serializedBytes())
        agent!.pump { !agent!.responses.isEmpty }
        let client = try RawLink(fd: try RpcSocket.connectUnix(path: fleet.dir + "/controller.sock"),
                                 Session(dialler: .peerCredentials, name: "client", now: MonotonicClock.milliseconds()))
        client.open(AgentMethods.ping.name, try PingRequest().serializedBytes(), host: "flaky")
        // Time for the request to reach the fake agent, which never answers.
        agent!.pump(ms: 300) { false }
        agent = nil  // its link drops, the call unanswered
        client.pump { !client.statuses.isEmpty }
        let status = try #require(client.statuses.first)
        #expect(status.code == .unavailable && status.message.hasPrefix("host flaky's link to the controller was lost"), "\(status)")
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

/// Removes host `name` once no host is connected any more (the links of
/// `Fleet.register` close as it returns; RemoveHost refuses a connected host).
private func removeOnceDisconnected(_ client: RpcClient, _ name: String) throws {
    for _ in 0..<200 {
        let hosts = try client.call(ControllerMethods.listHosts, ListHostsRequest()).hosts
        if !hosts.contains(where: { $0.state == .hostConnected }) { break }
        usleep(10_000)
    }
    _ = try client.call(ControllerMethods.removeHost, RemoveHostRequest(hostName: name))
}

/// A controller config with `setting` is refused, saying `message`.
private func expectRefused(_ fleet: Fleet, _ setting: String, _ message: String) {
    do {
        _ = try ControllerSettings.parse("state_dir: \"\(fleet.dir)/other\" agent_address: \"127.0.0.1:1\" key_file: \"\(fleet.dir)/keys\" allow_plaintext_tcp: true \(setting)", source: "t")
        Issue.record("\(setting) was taken")
    } catch {
        #expect(error.message.contains(message), "\(error)")
    }
}
