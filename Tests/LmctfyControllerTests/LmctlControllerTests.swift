// lmctl at a controller (issue #12), the built executable against a Fleet
// (a controller and two in-process agents, alpha in zone z1 and beta in
// zone z2): `hosts` in text and JSON, a verb run on the host `--host`
// names, `--hosts SELECTOR` reaching the matching hosts only, `events
// --host` naming its host, and the errors (unknown host, host not
// connected, a verb without a host, flags that do not go together, a
// reader that may not create).
import Foundation
import Glibc
import Lmctfy
import LmctfyAgent
import LmctfyCommands
import LmctfyController
import LmctfyProto
import LmctfyRPC
import LmctfySystem
import LmctfyTestSupport
@testable import LmctlCommands
import Testing

extension Fleet {
    /// `lmctl --controller unix://<the controller's socket> ARGS...`.
    func lmctl(_ args: [String]) throws -> ChildResult {
        try TestProcess.capture([builtTool("lmctl"), "--controller", "unix://\(dir)/controller.sock"] + args)
    }

    /// A controller with alpha connected, and `lmctl --controller ... ARGS`
    /// running in the background (stdout and stderr in a file of the
    /// fleet's directory): its pid and what it has printed so far.
    static func followingOneHost(_ args: String) throws -> (fleet: Fleet, follower: pid_t, printed: () -> String) {
        let fleet = try Fleet()
        try fleet.startController()
        try fleet.startAgent("a", host: "alpha", keyId: "host-a")
        fleet.waitForHosts(1)
        let out = fleet.dir + "/follower-\(UInt32.random(in: 0...UInt32.max)).out"
        let pid = try TestProcess.spawn(["/bin/sh", "-c",
            "exec \(builtTool("lmctl")) --controller unix://\(fleet.dir)/controller.sock \(args) > \(out) 2>&1"])
        return (fleet, pid, { (try? Sys.readFile(out)) ?? "" })
    }

    /// alpha (zone z1, tier web) and beta (zone z2), both connected.
    static func twoHosts() throws -> Fleet {
        let fleet = try Fleet()
        try fleet.startController()
        try fleet.startAgent("a", host: "alpha", keyId: "host-a", labels: ["zone": "z1", "tier": "web"])
        try fleet.startAgent("b", host: "beta", keyId: "host-b", labels: ["zone": "z2"])
        fleet.waitForHosts(2)
        return fleet
    }

    /// An agent in a process of its own (one a test can SIGSTOP) registering
    /// as `host` with key `keyId`: its pid, the caller's to end.
    func spawnAgent(host: String, keyId: String) throws -> pid_t {
        try Sys.createFile(dir + "/\(host).conf", """
            unix_socket_path: "\(dir)/\(host).sock" state_dir: "\(dir)/\(host)" log_level: LOG_ERROR
            stats_interval_ms: 0 watch_containers: false reconcile_interval_ms: 0
            key_file: "\(dir)/keys" allow_plaintext_tcp: true controller_address: "127.0.0.1:\(agentPort)"
            controller_key_id: "\(keyId)" host_name: "\(host)" reconnect_base_ms: 20 reconnect_max_ms: 200
            """)
        return try TestProcess.spawn([builtTool("lmctfy-agent"), "--config", dir + "/\(host).conf"])
    }

    /// Whether host `agent`'s event log has an event of `kind` for `name`.
    func recorded(_ agent: String, _ kind: ContainerEventKind, _ name: String) -> Bool {
        agents[agent]?.dispatcher.events.range(after: 0, upTo: .max).events.contains { $0.container == name && $0.kind == kind } ?? false
    }
}

extension ChildResult {
    var out: String { String(decoding: stdout, as: UTF8.self) }
    var err: String { String(decoding: stderr, as: UTF8.self) }
    var lines: [String] { out.split(separator: "\n").map(String.init) }
}

/// One line of JSON as an object.
private func object(_ line: String) throws -> [String: Any] {
    try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], "not a JSON object: \(line)")
}

@Suite(.enabled(if: RealCgroups.available, "\(RealCgroups.unavailableReason ?? "")"), .serialized)
struct LmctlControllerTests {
    @Test func hostsListsEveryHostInTextAndJSON() throws {
        let fleet = try Fleet.twoHosts()
        let text = try fleet.lmctl(["hosts"])
        #expect(text.status == 0, "\(text.err)")
        #expect(text.lines.count == 2)
        let alpha = try #require(text.lines.first)
        #expect(alpha.hasPrefix("name=\"alpha\" state=\"connected\" since=\""), "\(alpha)")
        #expect(alpha.contains("labels=\"tier=web,zone=z1\""), "\(alpha)")
        #expect(alpha.contains(" cgroup_version=\"") && !alpha.contains("cgroup_version=\"0\""), "\(alpha)")
        #expect(alpha.contains(" cpus=\"") && !alpha.contains("cpus=\"0\""), "\(alpha)")
        #expect(alpha.contains(" memory_bytes=\"") && !alpha.contains("memory_bytes=\"0\""), "\(alpha)")
        #expect(text.lines.last?.hasPrefix("name=\"beta\" state=\"connected\"") == true)

        // -o json (before or after the verb): one HostInfo per line.
        for args in [["hosts", "-o", "json"], ["-o", "json", "hosts"]] {
            let json = try fleet.lmctl(args)
            #expect(json.status == 0, "\(json.err)")
            let hosts = try json.lines.map(object)
            #expect(hosts.count == 2)
            let identity = try #require(hosts.first?["identity"] as? [String: Any])
            #expect(identity["hostName"] as? String == "alpha")
            #expect((identity["cpus"] as? Int ?? 0) > 0)
            #expect(hosts.first?["state"] as? String == "HOST_CONNECTED")
            #expect(hosts.first?["keyId"] as? String == "host-a")
            let labels = identity["label"] as? [[String: Any]] ?? []
            #expect(labels.contains { $0["key"] as? String == "zone" && $0["value"] as? String == "z1" })
        }

        // A selector, as an argument or with --hosts.
        for args in [["hosts", "zone=z2"], ["--hosts", "zone=z2", "hosts"]] {
            let z2 = try fleet.lmctl(args)
            #expect(z2.status == 0 && z2.lines.count == 1 && z2.lines.first?.hasPrefix("name=\"beta\"") == true, "\(z2.out)\(z2.err)")
        }
        #expect(try fleet.lmctl(["hosts", "zone=none"]).out.isEmpty)

        // A stopped host is listed as disconnected.
        fleet.stopAgent("b")
        fleet.waitForHosts(1)
        #expect(try fleet.lmctl(["hosts", "zone=z2"]).lines.first?.hasPrefix("name=\"beta\" state=\"disconnected\"") == true)

        // Over TCP with a key (the first of the key file): an admin key here.
        let opsKeys = fleet.dir + "/ops.keys"
        try Sys.createFile(opsKeys, "ops \(JSONFormat.base64Encoded(fleet.keys["ops"]!))\n", mode: 0o600)
        let tcp = try TestProcess.capture([builtTool("lmctl"), "--controller", "tcp://127.0.0.1:\(fleet.clientPort)",
                                           "--key-file", opsKeys, "hosts"])
        #expect(tcp.status == 0 && tcp.lines.count == 2, "\(tcp.err)")
        // A key file others can read is refused, as the agent and the
        // controller refuse theirs: its key is a secret.
        let sharedKeys = fleet.dir + "/shared.keys"
        try Sys.createFile(sharedKeys, "ops \(JSONFormat.base64Encoded(fleet.keys["ops"]!))\n", mode: 0o640)
        let shared = try TestProcess.capture([builtTool("lmctl"), "--controller", "tcp://127.0.0.1:\(fleet.clientPort)",
                                              "--key-file", sharedKeys, "hosts"])
        #expect(shared.status == StatusCode.failedPrecondition.rawValue && shared.err.contains("chmod 600"), "\(shared.err)")
    }

    @Test func hostRunsTheVerbOnThatHost() throws {
        let fleet = try Fleet.twoHosts()
        let name = RealCgroups.uniqueName("lmctl_host")
        defer { _ = try? ContainerApi.detect().destroy(ContainerName.resolve(name, relativeTo: .root)) }
        let created = try fleet.lmctl(["--host", "alpha", "create", name, "cpu:{limit:500}"])
        #expect(created.status == 0, "\(created.err)")
        #expect(try ContainerApi.detect().exists(ContainerName.resolve(name, relativeTo: .root)))
        // alpha made it; beta was not asked (both manage this machine, so
        // only their event logs tell who did the work).
        #expect(fleet.recorded("a", .containerEventCreated, name))
        #expect(!fleet.recorded("b", .containerEventCreated, name))

        let listed = try fleet.lmctl(["--host", "alpha", "list", "containers"])
        #expect(listed.status == 0 && listed.lines.contains("name=\"\(name)\""), "\(listed.out)\(listed.err)")
        let spec = try fleet.lmctl(["--host=alpha", "-o", "json", "spec", name])
        #expect(spec.status == 0 && spec.out.contains("\"limit\""), "\(spec.out)\(spec.err)")
        let info = try fleet.lmctl(["--host", "beta", "info"])
        #expect(info.lines.contains("boot_id=\"\(fleet.agents["b"]!.dispatcher.events.bootId)\""), "\(info.out)\(info.err)")

        // events: that host's, each line naming it.
        let json = try fleet.lmctl(["--host", "alpha", "events", "-o", "json", name])
        #expect(json.status == 0, "\(json.err)")
        let events = try json.lines.map(object)
        #expect(events.contains { $0["kind"] as? String == "CONTAINER_EVENT_CREATED" })
        #expect(events.allSatisfy { $0["host"] as? String == "alpha" && $0["container"] as? String == name })
        #expect(events.first?["bootId"] as? String == fleet.agents["a"]!.dispatcher.events.bootId)
        // --host among events' own words; text lines start with the host.
        let text = try fleet.lmctl(["events", "--host", "alpha", "--kind", "CREATED", name])
        #expect(text.status == 0 && text.lines.count == 1, "\(text.out)\(text.err)")
        #expect(text.lines.first?.hasPrefix("alpha \(fleet.agents["a"]!.dispatcher.events.bootId):") == true)
        #expect(text.lines.first?.hasSuffix(" CREATED \(name)") == true)

        // events without a host: the fleet log, every event once per host
        // that recorded it, numbered by the controller, each naming its host.
        var fleetEvents: [[String: Any]] = []
        for _ in 0..<100 {
            let all = try fleet.lmctl(["events", "-o", "json", "--kind", "CREATED", name])
            #expect(all.status == 0, "\(all.err)")
            fleetEvents = try all.lines.map(object)
            if !fleetEvents.isEmpty { break }
            usleep(50_000)
        }
        // Only alpha recorded it (these agents do not watch the machine).
        #expect(fleetEvents.compactMap { $0["host"] as? String } == ["alpha"], "\(fleetEvents)")
        #expect(fleetEvents.allSatisfy { $0["bootId"] as? String == fleet.controller?.fleetLog.id })
        let fleetText = try fleet.lmctl(["events", "--kind", "CREATED", name])
        #expect(fleetText.lines.contains { $0.contains(" alpha CREATED \(name) host_event=") }, "\(fleetText.out)")

        let destroyed = try fleet.lmctl(["--host", "alpha", "destroy", name])
        #expect(destroyed.status == 0, "\(destroyed.err)")
        #expect(try !ContainerApi.detect().exists(ContainerName.resolve(name, relativeTo: .root)))
        #expect(fleet.recorded("a", .containerEventDestroyed, name) && !fleet.recorded("b", .containerEventDestroyed, name))
    }

    /// `lmctl --host H run -i`: the command's stdin goes through the
    /// controller (INPUT frames on, the agent's CREDIT back), all of it.
    @Test func runWithStdinThroughTheController() throws {
        let fleet = try Fleet.twoHosts()
        let name = RealCgroups.uniqueName("lmctl_stdin")
        defer { _ = try? ContainerApi.detect().destroy(ContainerName.resolve(name, relativeTo: .root)) }
        let file = fleet.dir + "/stdin"
        var bytes = [UInt8](repeating: 0, count: 1 << 20)
        for i in bytes.indices { bytes[i] = UInt8(truncatingIfNeeded: i &* 40_503 >> 7) }
        try Sys.writeFileAtomically(file, bytes)
        let lmctl = "'\(builtTool("lmctl"))' --controller unix://\(fleet.dir)/controller.sock --host alpha"
        let r = try TestProcess.capture(["/bin/sh", "-c",
            "\(lmctl) run -i --create 'memory:{limit:67108864}' --rm \(name) /bin/cat < \(file)"])
        #expect(r.status == 0 && r.stdout == bytes, "\(r.stdout.count) bytes back of \(bytes.count): \(String(decoding: r.stderr, as: UTF8.self))")
        #expect(try !ContainerApi.detect().exists(ContainerName.resolve(name, relativeTo: .root)))
        // A client of version 3 cannot send input: the controller refuses
        // its Run with attach_input (the agent's link speaks 4, and its
        // command would wait on a stdin nobody can write; a probe).
        let old = try RawLink(fd: try RpcSocket.connectUnix(path: fleet.dir + "/controller.sock"),
                              Session(dialler: .peerCredentials, name: "t", offering: 1...3, now: MonotonicClock.milliseconds()))
        old.open("Run", try RunRequest(name: name, argv: ["/bin/cat"], create: ContainerSpec(), removeWhenDone: true,
                                       attachInput: true).serializedBytes(), host: "alpha")
        old.pump { !old.statuses.isEmpty }
        #expect(old.statuses.first?.code == .invalidArgument && old.responses.isEmpty, "\(old.statuses)")
        #expect(try !ContainerApi.detect().exists(ContainerName.resolve(name, relativeTo: .root)))
    }

    /// `lmctl run -t` through the controller: the terminal's size at the
    /// start, its modes and its resizes reach the command on the host's
    /// agent (the controller forwards INPUT frames with their window,
    /// version 5).
    @Test func runOnATerminalThroughTheController() throws {
        let fleet = try Fleet.twoHosts()
        let name = RealCgroups.uniqueName("lmctl_tty")
        defer { _ = try? ContainerApi.detect().destroy(ContainerName.resolve(name, relativeTo: .root)) }
        let pty = try Terminal.openPseudoTerminal()
        defer { close(pty.master); close(pty.slave) }
        try Terminal.setWindow(pty.master, TerminalWindow(rows: 31, cols: 91))
        try Terminal.setModes(pty.slave, [TerminalSetting(opcode: 3, value: 8)])  // erase ^H
        let pid = try TestProcess.spawnOnTerminal([builtTool("lmctl"), "--controller", "unix://\(fleet.dir)/controller.sock", "--host", "alpha",
                                                   "run", "-t", "--create", "memory:{limit:67108864}", "--rm", name,
                                                   "/bin/sh", "-c", "stty -a; stty size; read l; stty size; exit 3"], pty.slave)
        defer { TestProcess.end(pid) }
        var shown = ""
        #expect(readTerminal(pty.master, &shown) { $0.contains("31 91") }, "\(shown.debugDescription)")
        #expect(shown.contains("erase = ^H"), "\(shown.debugDescription)")
        try Terminal.setWindow(pty.master, TerminalWindow(rows: 41, cols: 101))
        kill(pid, SIGWINCH)
        usleep(100_000)
        #expect(write(pty.master, "\r", 1) == 1)
        #expect(readTerminal(pty.master, &shown) { $0.contains("41 101") }, "\(shown.debugDescription)")
        let status = TestProcess.waitForExit(pid)
        #expect(status == .exited(3), "\(String(describing: status))")
        #expect(try !ContainerApi.detect().exists(ContainerName.resolve(name, relativeTo: .root)))
        // A client of version 4 gets no terminal: refused before anything runs.
        let old = try RawLink(fd: try RpcSocket.connectUnix(path: fleet.dir + "/controller.sock"),
                              Session(dialler: .peerCredentials, name: "t", offering: 1...4, now: MonotonicClock.milliseconds()))
        old.open("Run", try RunRequest(name: name, argv: ["/bin/true"], create: ContainerSpec(), removeWhenDone: true,
                                       attachOutput: true, tty: true).serializedBytes(), host: "alpha")
        old.pump { !old.statuses.isEmpty }
        #expect(old.statuses.first?.code == .invalidArgument && old.statuses.first?.message.contains("tty") == true, "\(old.statuses)")
        #expect(try !ContainerApi.detect().exists(ContainerName.resolve(name, relativeTo: .root)))
    }

    @Test func hostsRunsTheVerbOnEveryMatchingHost() throws {
        let fleet = try Fleet.twoHosts()
        let name = RealCgroups.uniqueName("lmctl_hosts")
        defer { _ = try? ContainerApi.detect().destroy(ContainerName.resolve(name, relativeTo: .root)) }
        // zone=z1 is alpha alone.
        let created = try fleet.lmctl(["--hosts", "zone=z1", "create", name, "cpu:{limit:500}"])
        #expect(created.status == 0, "\(created.err)")
        #expect(created.lines == ["== alpha"])
        #expect(fleet.recorded("a", .containerEventCreated, name) && !fleet.recorded("b", .containerEventCreated, name))
        // Every host ('' selects all), in text: a header per host.
        let listed = try fleet.lmctl(["--hosts", "", "list", "containers"])
        #expect(listed.status == 0, "\(listed.err)")
        let alphaAt = try #require(listed.lines.firstIndex(of: "== alpha")), betaAt = try #require(listed.lines.firstIndex(of: "== beta"))
        #expect(alphaAt == 0 && betaAt > alphaAt)
        #expect(listed.lines[1..<betaAt].contains("name=\"\(name)\"") && listed.lines[betaAt...].contains("name=\"\(name)\""))
        // In JSON: each host's document gains "host".
        let json = try fleet.lmctl(["--hosts=", "-o", "json", "list", "containers"])
        #expect(json.status == 0, "\(json.err)")
        let docs = try json.lines.map(object)
        #expect(docs.map { $0["host"] as? String } == ["alpha", "beta"])
        #expect(docs.allSatisfy { ($0["containers"] as? [String] ?? []).contains(name) })
        // events without -f: each host's kept events, lines naming it, no headers.
        let events = try fleet.lmctl(["--hosts", "zone=z1", "events", "-o", "json", name])
        #expect(events.status == 0, "\(events.err)")
        #expect(try events.lines.map(object).allSatisfy { $0["host"] as? String == "alpha" } && !events.lines.isEmpty)
        let destroyed = try fleet.lmctl(["--hosts", "zone=z1", "destroy", name])
        #expect(destroyed.status == 0 && destroyed.lines == ["== alpha"], "\(destroyed.err)")
        #expect(fleet.recorded("a", .containerEventDestroyed, name) && !fleet.recorded("b", .containerEventDestroyed, name))

        // lmctl's stdin or terminal cannot be every host's: refused on each,
        // nothing run (the first host's command read it all, the others
        // only its end).
        let fed = RealCgroups.uniqueName("lmctl_hosts_in")
        defer { _ = try? ContainerApi.detect().destroy(ContainerName.resolve(fed, relativeTo: .root)) }
        for flag in ["-i", "-t", "--stdin", "-it"] {
            let r = try fleet.lmctl(["--hosts", "", "run", flag, "--create", "memory:{limit:67108864}", "--rm", fed, "/bin/true"])
            #expect(r.status == 3 && r.err.contains("alpha: ") && r.err.contains("beta: ") && r.err.contains("--host NAME"), "\(flag): \(r.err)")
            #expect(!fleet.recorded("a", .containerEventCreated, fed) && !fleet.recorded("b", .containerEventCreated, fed), "\(flag): nothing made")
        }
        // (Flags of the command are its own.)
        let grep = try fleet.lmctl(["--hosts", "zone=z1", "run", "--create", "memory:{limit:67108864}", "--rm", fed, "/bin/grep", "-i", "-c", "x", "/dev/null"])
        #expect(grep.lines == ["== alpha", "0"], "\(grep.out)\(grep.err)")

        // No host matches: NOT_FOUND; a bad selector: the controller's INVALID_ARGUMENT.
        let none = try fleet.lmctl(["--hosts", "zone=none", "info"])
        #expect(none.status == 5 && none.err.contains("no host matches \"zone=none\""), "\(none.err)")
        let bad = try fleet.lmctl(["--hosts", "zone", "info"])
        #expect(bad.status == 3 && bad.err.contains("key=value"), "\(bad.err)")

        // One host down: the others still run, the status is the worst one,
        // and the failing host's diagnostics name it.
        fleet.stopAgent("b")
        fleet.waitForHosts(1)
        let info = try fleet.lmctl(["--hosts", "", "info"])
        #expect(info.status == 14, "\(info.out)\(info.err)")
        #expect(info.lines.first == "== alpha" && info.lines.contains("== beta"))
        #expect(info.lines.contains("boot_id=\"\(fleet.agents["a"]!.dispatcher.events.bootId)\""))
        #expect(info.err.contains("beta: Command exited with error message: 14: host beta is not connected"), "\(info.err)")
    }

    /// A host whose agent is restarting (not connected at the controller
    /// when the call comes) is waited for, up to 2 s, and the call sent
    /// once more when it is back, as lmctl retries any UNAVAILABLE; it
    /// failed at once with "host beta is not connected" (a probe).
    @Test func aCallToAHostComingBackIsRetriedOnce() throws {
        let fleet = try Fleet.twoHosts()
        fleet.stopAgent("b")
        fleet.waitForHosts(1)
        let out = fleet.dir + "/retry.out"
        let pid = try TestProcess.spawn(["/bin/sh", "-c",
            "exec \(builtTool("lmctl")) --controller unix://\(fleet.dir)/controller.sock --host beta list containers > \(out) 2>&1"])
        usleep(300_000)
        try fleet.startAgent("b", host: "beta", keyId: "host-b", labels: ["zone": "z2"])
        let status = try Sys.waitForExit(pid)
        let printed = (try? Sys.readFile(out)) ?? ""
        #expect(status == .exited(0), "\(printed)")
        #expect(printed.contains("host beta is not connected; the host is connected again, retrying once"), "\(printed)")
    }

    @Test func errorsAreClear() throws {
        let fleet = try Fleet.twoHosts()
        // The controller's answers: no such host, a host not connected.
        let unknown = try fleet.lmctl(["--host", "gamma", "list", "containers"])
        #expect(unknown.status == 5 && unknown.err.contains("no host named gamma"), "\(unknown.err)")
        fleet.stopAgent("b")
        fleet.waitForHosts(1)
        let away = try fleet.lmctl(["--host", "beta", "list", "containers"])
        #expect(away.status == 14 && away.err.contains("host beta is not connected"), "\(away.err)")
        let awayEvents = try fleet.lmctl(["--host", "beta", "events"])
        #expect(awayEvents.status == 14 && awayEvents.err.contains("host beta is not connected"), "\(awayEvents.err)")
        // --timeout bounds the wait for the host to come back (it took its
        // 2 s whatever --timeout said; a probe): a deadline, not a speed.
        let t0 = MonotonicClock.milliseconds()
        let brief = try fleet.lmctl(["--timeout", "100ms", "--host", "beta", "list", "containers"])
        let took = MonotonicClock.milliseconds() - t0
        #expect(brief.status == 14 && brief.err.contains("host beta is not connected"), "\(brief.err)")
        #expect(took < 1900, "--timeout 100ms, yet it waited \(took) ms for the host")

        // lmctl's own: a verb without a host at a controller (`events`
        // without one is the fleet's stream), flags that do not go together,
        // `hosts` at an agent.
        for verb in [["list", "containers"], ["info"]] {
            let r = try fleet.lmctl(verb)
            #expect(r.status == 3 && r.err.contains("give --host NAME or --hosts SELECTOR"), "\(verb): \(r.err)")
        }
        let both = try fleet.lmctl(["--agent", "unix://\(fleet.dir)/agent-a.sock", "hosts"])
        #expect(both.status == 3 && both.err.contains("--agent and --controller cannot be used together"), "\(both.err)")
        let twoWays = try fleet.lmctl(["--host", "alpha", "--hosts", "zone=z1", "info"])
        #expect(twoWays.status == 3 && twoWays.err.contains("--host and --hosts cannot be used together"), "\(twoWays.err)")
        // --anywhere with --host: the conflict named (it said "give --controller").
        let hostAndAnywhere = try fleet.lmctl(["--host", "alpha", "create", "--anywhere", "/x", ""])
        #expect(hostAndAnywhere.status == 3 && hostAndAnywhere.err.contains("give --host or --anywhere, not both"), "\(hostAndAnywhere.err)")
        // A verb nobody has is unknown, as at an agent (it was told to give --host).
        let unknownVerb = try fleet.lmctl(["move", "/x"])
        #expect(unknownVerb.status == 5 && unknownVerb.err.contains("Unknown command \"move\"") && !unknownVerb.err.contains("give --host"), "\(unknownVerb.err)")
        let noController = try TestProcess.capture([builtTool("lmctl"), "--agent", "unix://\(fleet.dir)/agent-a.sock", "--host", "alpha", "info"])
        #expect(noController.status == 3 && noController.err.contains("give --controller"), "\(noController.err)")
        let atAgent = try TestProcess.capture([builtTool("lmctl"), "--agent", "unix://\(fleet.dir)/agent-a.sock", "hosts"])
        #expect(atAgent.status == 3 && atAgent.err.contains("hosts lists a controller's hosts"), "\(atAgent.err)")
        // TLS flags on a unix:// address are refused: they were ignored (a
        // reader's certificate on the socket ran as its admin; a probe).
        let tlsOnUnix = try TestProcess.capture([builtTool("lmctl"), "--agent", "unix://\(fleet.dir)/agent-a.sock", "--cert", "/no/such.pem",
                                                 "--key", "/no/such.key", "--ca", "/no/such-ca.pem", "info"])
        #expect(tlsOnUnix.status == 3 && tlsOnUnix.err.contains("are for a tcp:// address"), "\(tlsOnUnix.err)")

        // A reader at the controller (TCP, key "reader") may list and read, not create.
        let readerKeys = fleet.dir + "/reader.keys"
        try Sys.createFile(readerKeys, "reader \(JSONFormat.base64Encoded(fleet.keys["reader"]!))\n", mode: 0o600)
        let reader = [builtTool("lmctl"), "--controller", "tcp://127.0.0.1:\(fleet.clientPort)", "--key-file", readerKeys]
        #expect(try TestProcess.capture(reader + ["--host", "alpha", "list", "containers"]).status == 0)
        let name = RealCgroups.uniqueName("lmctl_reader")
        defer { _ = try? ContainerApi.detect().destroy(ContainerName.resolve(name, relativeTo: .root)) }
        let denied = try TestProcess.capture(reader + ["--host", "alpha", "create", name, "cpu:{limit:500}"])
        #expect(denied.status == 7 && denied.err.contains("admin"), "\(denied.err)")
        // An IPv6 literal in brackets is dialled, not looked up as a name
        // ("cannot resolve [::1]"): nothing listens on port 1 there.
        let v6 = try TestProcess.capture([builtTool("lmctl"), "--controller", "tcp://[::1]:1", "--key-file", readerKeys, "hosts"])
        #expect(v6.status == 14 && !v6.err.contains("resolve"), "\(v6.status): \(v6.err)")
    }

    /// `events -f` at a controller (the fleet's stream) that loses the
    /// controller before printing any event resumes from its `caught_up`
    /// point when the controller is back. It resumed "from now", missing
    /// what happened meanwhile: it asked MachineInfo for that point's boot,
    /// which a controller does not answer for its fleet log.
    @Test func fleetEventsFollowResumesAcrossAControllerRestart() throws {
        let (fleet, follower, printed) = try Fleet.followingOneHost("events -f")
        defer { TestProcess.end(follower) }
        let name = RealCgroups.uniqueName("fleetf")
        defer { RealCgroups.destroy(name) }
        usleep(500_000)
        fleet.stopController()
        try fleet.startController()
        fleet.waitForHosts(1)
        let client = try RpcClient.connect(unixPath: fleet.dir + "/agent-a.sock")
        defer { client.close() }
        _ = try client.call(AgentMethods.create, CreateRequest(name: name, spec: ContainerSpec()))
        for _ in 0..<1000 where !printed().contains("CREATED \(name)") { usleep(10_000) }
        let lines = printed().split(separator: "\n")
        #expect(lines.filter { $0.contains("CREATED \(name)") }.count == 1, "\(lines)")
        #expect(lines.contains { $0.hasPrefix("lmctl: events:") && $0.contains("following again after") }, "\(lines)")
        #expect(TestProcess.reapIfExited(follower) == nil, "it still follows")
    }

    /// Two controllers cannot share a state_dir: the second is refused
    /// (9, naming the first's pid) before it reads or writes anything in
    /// it; it started and rewrote the fleet's sequence (a probe). Once the
    /// first has stopped, the dir is free again.
    @Test func twoControllersCannotShareAStateDir() throws {
        let fleet = try Fleet()
        try fleet.startController()
        let sequence = fleet.dir + "/controller/fleet-sequence"
        let before = try? Sys.readFile(sequence)
        func second() throws(LmctfyError) -> LmctfyController.Controller {
            try LmctfyController.Controller(settings: try ControllerSettings.parse("""
                unix_socket_path: "\(fleet.dir)/second.sock" agent_address: "127.0.0.1:0"
                key_file: "\(fleet.dir)/keys" allow_plaintext_tcp: true state_dir: "\(fleet.dir)/controller" log_level: LOG_WARNING
                """, source: "test"))
        }
        #expect { _ = try second() } throws: { error in
            let e = error as? LmctfyError
            return e?.code == .failedPrecondition && e?.message.contains("is in use by another controller (pid \(getpid()))") == true
        }
        #expect((try? Sys.readFile(sequence)) == before)
        fleet.stopController()
        let next = try second()
        _ = next
    }

    /// One host that does not answer (SIGSTOPped: connected, silent) does
    /// not keep `hosts` from printing the fleet, nor `create --anywhere`
    /// from placing on another host: each host has 2 s. Both waited for it
    /// for ever (until the controller dropped its link; a probe).
    @Test func aHungHostDoesNotHoldTheInventoryOrAPlacement() throws {
        let fleet = try Fleet()
        try fleet.startController()
        try fleet.startAgent("a", host: "alpha", keyId: "host-a")
        let beta = try fleet.spawnAgent(host: "beta", keyId: "host-b")
        defer {
            kill(beta, SIGCONT)
            TestProcess.end(beta)
        }
        fleet.waitForHosts(2)
        kill(beta, SIGSTOP)
        let name = RealCgroups.uniqueName("anyw")
        defer { RealCgroups.destroy(name) }
        let hosts = try fleet.lmctl(["hosts"])
        #expect(hosts.status == 0, "\(hosts.err)")
        #expect(hosts.out.contains("name=\"alpha\"") && hosts.out.contains("capacity_memory="), "\(hosts.out)")
        let betaLine = hosts.out.split(separator: "\n").first { $0.contains("name=\"beta\"") }
        #expect(betaLine?.contains("policy=\"unknown:") == true, "\(hosts.out)")
        let placed = try fleet.lmctl(["create", "--anywhere", name, ""])
        #expect(placed.status == 0 && placed.out.contains("alpha"), "\(placed.out) \(placed.err)")
    }

    /// `--hosts` runs a verb on the hosts at once: with alpha (first in
    /// order) stopped, beta's create is made while alpha's still waits;
    /// one at a time, beta waited for alpha's deadline. The output is still
    /// in the hosts' order.
    @Test func hostsRunsTheVerbOnTheHostsAtOnce() throws {
        let fleet = try Fleet()
        try fleet.startController()
        let alpha = try fleet.spawnAgent(host: "alpha", keyId: "host-a")
        defer {
            kill(alpha, SIGCONT)
            TestProcess.end(alpha)
        }
        try fleet.startAgent("b", host: "beta", keyId: "host-b")
        fleet.waitForHosts(2)
        let name = RealCgroups.uniqueName("together")
        defer { RealCgroups.destroy(name) }
        kill(alpha, SIGSTOP)
        let out = fleet.dir + "/together.out"
        let lmctl = try TestProcess.spawn(["/bin/sh", "-c",
            "exec \(builtTool("lmctl")) --controller unix://\(fleet.dir)/controller.sock --timeout 60 --hosts '' create \(name) '' > \(out) 2>&1"])
        for _ in 0..<3000 where !fleet.recorded("b", .containerEventCreated, name) { usleep(10_000) }
        #expect(fleet.recorded("b", .containerEventCreated, name), "beta's create waited for alpha")
        #expect(TestProcess.reapIfExited(lmctl) == nil, "lmctl waits for alpha")
        kill(alpha, SIGCONT)
        var status: LmctfySystem.ExitStatus?
        for _ in 0..<3000 where status == nil {
            status = TestProcess.reapIfExited(lmctl)
            if status == nil { usleep(10_000) }
        }
        #expect(status != nil, "lmctl ends once alpha answers")
        if status == nil { TestProcess.end(lmctl) }
        // Both agents share this machine's cgroups: alpha, answering last,
        // finds the container beta made. Its lines still come first.
        let printed = (try? Sys.readFile(out)) ?? ""
        let lines = printed.split(separator: "\n").map(String.init)
        #expect(lines.filter { $0.hasPrefix("== ") } == ["== alpha", "== beta"], "\(printed)")
        #expect(lines.contains { $0.hasPrefix("alpha: ") && $0.contains("existing container") }, "\(printed)")
    }

    /// `--hosts= events -f` follows a host that registers after it
    /// started too (the controller's list, asked again every 5 s), from
    /// the first event of its agent's boot: it followed the hosts of its
    /// start only, and a container made on a later one was never printed
    /// (a probe).
    @Test func aFleetFollowerFollowsAHostThatJoinsLater() throws {
        let (fleet, follower, printed) = try Fleet.followingOneHost("--hosts= events -f --kind CREATED")
        defer { TestProcess.end(follower) }
        let name = RealCgroups.uniqueName("late")
        defer { RealCgroups.destroy(name) }
        usleep(500_000)
        try fleet.startAgent("b", host: "beta", keyId: "host-b")
        fleet.waitForHosts(2)
        let client = try RpcClient.connect(unixPath: fleet.dir + "/agent-b.sock")
        defer { client.close() }
        _ = try client.call(AgentMethods.create, CreateRequest(name: name, spec: ContainerSpec()))
        for _ in 0..<1500 where !printed().contains("CREATED \(name)") { usleep(10_000) }
        let lines = printed().split(separator: "\n").filter { $0.contains("CREATED \(name)") }
        #expect(lines.count == 1 && lines.first?.contains("beta") == true, "\(printed().suffix(2000))")
        #expect(TestProcess.reapIfExited(follower) == nil, "it still follows")
    }

    /// A host removed (its follower ends, "no host named beta") that comes
    /// back is followed again once connected: it never was, and its
    /// containers were never printed again (the fleet probe).
    @Test func aFleetFollowerFollowsAHostRemovedAndBackAgain() throws {
        let (fleet, follower, printed) = try Fleet.followingOneHost("--hosts= events -f --kind CREATED")
        defer { TestProcess.end(follower) }
        let first = RealCgroups.uniqueName("before"), again = RealCgroups.uniqueName("after")
        defer {
            RealCgroups.destroy(first)
            RealCgroups.destroy(again)
        }
        func create(_ name: String) throws {
            let client = try RpcClient.connect(unixPath: fleet.dir + "/agent-b.sock")
            defer { client.close() }
            _ = try client.call(AgentMethods.create, CreateRequest(name: name, spec: ContainerSpec()))
        }
        try fleet.startAgent("b", host: "beta", keyId: "host-b")
        fleet.waitForHosts(2)
        try create(first)
        for _ in 0..<1500 where !printed().contains("CREATED \(first)") { usleep(10_000) }
        try #require(printed().contains("CREATED \(first)"), "beta was never followed: \(printed().suffix(2000))")
        fleet.stopAgent("b")
        fleet.waitForHosts(1)
        let removed = try TestProcess.capture([builtTool("lmctl"), "--controller", "unix://\(fleet.dir)/controller.sock", "hosts", "--remove", "beta"])
        #expect(removed.status == 0, "\(String(decoding: removed.stderr, as: UTF8.self))")
        for _ in 0..<1000 where !printed().contains("no host named beta") { usleep(10_000) }
        #expect(printed().contains("no host named beta"), "\(printed().suffix(2000))")
        try fleet.startAgent("b", host: "beta", keyId: "host-b")
        fleet.waitForHosts(2)
        try create(again)
        for _ in 0..<1500 where !printed().contains("CREATED \(again)") { usleep(10_000) }
        #expect(printed().contains("CREATED \(again)"), "beta was not followed again: \(printed().suffix(2000))")
        #expect(TestProcess.reapIfExited(follower) == nil, "it still follows")
    }

    /// One peer's connections are capped (limits.max_connections_per_peer):
    /// one more is sent away saying why, and one closed makes room. A peer
    /// opening 20,000 reached the controller's descriptor limit and shut
    /// everyone out, agents redialling too (a probe).
    @Test func onePeersConnectionsAreCapped() throws {
        let fleet = try Fleet()
        try fleet.startController(extra: "limits { max_connections_per_peer: 3 }")
        let socket = fleet.dir + "/controller.sock"
        func listed(_ c: RpcClient) throws -> Int { try c.call(ControllerMethods.listHosts, ListHostsRequest()).hosts.count }
        var held = try (0..<3).map { _ in try RpcClient.connect(unixPath: socket) }
        for c in held { #expect(try listed(c) == 0) }
        do {
            let c = try RpcClient.connect(unixPath: socket)
            defer { c.close() }
            _ = try listed(c)
            Issue.record("a fourth connection of uid 0 was served")
        } catch let e as LmctfyError {
            #expect(e.message.contains("too many connections of uid 0 (limits.max_connections_per_peer 3)"), "\(e)")
        }
        held.removeFirst().close()
        var again: RpcClient?
        for _ in 0..<100 where again == nil {
            again = try? RpcClient.connect(unixPath: socket)
            if let c = again, (try? listed(c)) == nil { c.close(); again = nil; usleep(20_000) }
        }
        #expect(again != nil, "a connection closed made room")
        again?.close()
        for c in held { c.close() }
        // An agent takes it too, for its TCP peers (AgentPeerCapTests).
        #expect(try AgentSettings.parse("limits { max_connections_per_peer: 3 }", source: "t").maxConnectionsPerPeer == 3)
    }

    /// `--host NAME events -f` while that host is not connected at its
    /// controller (which takes the dial and refuses the call): asked for
    /// again after a pause that doubles to 2 s, one line said, and the
    /// host's events printed once it is back. It was asked for again at
    /// once, ~2,500 times a second, each a line on stderr (a probe).
    @Test func aHostFollowerWaitsForItsHostWithoutSpinning() throws {
        let (fleet, follower, printed) = try Fleet.followingOneHost("--host alpha events -f")
        defer { TestProcess.end(follower) }
        let name = RealCgroups.uniqueName("hostf")
        defer { RealCgroups.destroy(name) }
        usleep(500_000)
        fleet.stopAgent("a")
        usleep(3_000_000)
        let whileDown = printed().split(separator: "\n").filter { $0.hasPrefix("lmctl: events:") }
        #expect(!whileDown.isEmpty && whileDown.count <= 3, "\(whileDown.count) lines: \(whileDown.prefix(3))")
        try fleet.startAgent("a", host: "alpha", keyId: "host-a")
        fleet.waitForHosts(1)
        let client = try RpcClient.connect(unixPath: fleet.dir + "/agent-a.sock")
        defer { client.close() }
        _ = try client.call(AgentMethods.create, CreateRequest(name: name, spec: ContainerSpec()))
        for _ in 0..<1000 where !printed().contains("CREATED \(name)") { usleep(10_000) }
        #expect(printed().split(separator: "\n").filter { $0.contains("CREATED \(name)") }.count == 1, "\(printed().suffix(2000))")
        #expect(TestProcess.reapIfExited(follower) == nil, "it still follows")
    }
}

/// lmctl's own flags and output rewriting, without a controller (no root).
struct LmctlOptionsTests {
    @Test func flagsBeforeTheVerbAndHostAmongEventsWords() throws {
        var o = try LmctlCLI.parseOptions(["--controller", "unix:///c.sock", "--host=alpha", "-o", "json", "spec", "/x"])
        #expect(o.controller == "unix:///c.sock" && o.host == "alpha" && o.words == ["-o", "json", "spec", "/x"])
        // lmctfy's flags before lmctl's: kept for the verb, in order (lmctl
        // stopped at `-o`, and `--controller` went to the verb; a probe).
        o = try LmctlCLI.parseOptions(["-o", "json", "-r", "--controller", "unix:///c.sock", "--lmctfy_output_style=json",
                                       "--host", "alpha", "-c", "/etc/x", "list", "containers", "--host", "b"])
        #expect(o.controller == "unix:///c.sock" && o.host == "alpha", "\(o)")
        #expect(o.words == ["-o", "json", "-r", "--lmctfy_output_style=json", "-c", "/etc/x", "list", "containers", "--host", "b"], "\(o.words)")
        // Something that is not a flag of either ends lmctl's (the verb says why).
        o = try LmctlCLI.parseOptions(["-Z", "--agent", "unix:///a", "list"])
        #expect(o.agent == nil && o.words == ["-Z", "--agent", "unix:///a", "list"])
        o = try LmctlCLI.parseOptions(["--controller=tcp://h:1", "--key-file", "k", "--hosts=", "info"])
        #expect(o.hosts == "" && o.keyFile == "k" && o.words == ["info"])
        // After the verb, --host is an argument (run's command), except for events.
        o = try LmctlCLI.parseOptions(["--controller", "unix:///c", "--host", "a", "run", "/x", "cmd", "--host", "b"])
        #expect(o.host == "a" && o.words == ["run", "/x", "cmd", "--host", "b"])
        o = try LmctlCLI.parseOptions(["--controller", "unix:///c", "events", "-f", "--host", "beta", "/x"])
        #expect(o.host == "beta" && o.words == ["events", "-f", "/x"])
        o = try LmctlCLI.parseOptions(["--controller", "unix:///c", "-o", "json", "events", "--hosts=zone=z1"])
        #expect(o.hosts == "zone=z1" && LmctlCLI.eventsWords(o.words) == ["-o", "json"])
        #expect(LmctlCLI.eventsWords(["stats", "-f", "/x"]) == ["-f", "--kind", "STATS", EventsCommand.statsFollowWord, "/x"])
        #expect(LmctlCLI.commandWord(["-o", "json", "-r", "list", "containers"]) == "list")
        #expect(LmctlCLI.wantsJSON(["-o", "json", "list"]) && LmctlCLI.wantsJSON(["--lmctfy_output_style=json"]) && !LmctlCLI.wantsJSON(["list", "json"]))

        for (args, message) in [
            (["--agent", "unix:///a", "--controller", "unix:///c", "hosts"], "--agent and --controller cannot be used together"),
            (["--controller", "unix:///c", "--host", "a", "--hosts", "z=1", "info"], "--host and --hosts cannot be used together"),
            (["--host", "a", "info"], "give --controller"),
            (["--controller", "unix:///c", "--host"], "--host needs a value"),
            (["--controller", "unix:///c", "--host", "", "info"], "--host needs a host name"),
        ] {
            #expect(throws: LmctfyError.self, "\(args)") { _ = try LmctlCLI.parseOptions(args) }
            let (out, err) = (BufferSink(), BufferSink())
            #expect(LmctlCLI.run(args, stdout: out, stderr: err) == 3)
            #expect(err.text.contains(message) && out.bytes.isEmpty, "\(args): \(err.text)")
        }
        // A verb at a controller needs a host before anything is dialled.
        let err = BufferSink()
        #expect(LmctlCLI.run(["--controller", "unix:///nonexistent.sock", "list", "containers"], stdout: BufferSink(), stderr: err) == 3)
        #expect(err.text.contains("list at a controller runs on a host: give --host NAME or --hosts SELECTOR"))
    }

    @Test func aHostIsAddedToEveryJSONObjectLine() {
        func tagged(_ s: String) -> String { String(decoding: LmctlCLI.withHost(Array(s.utf8), "al\"pha"), as: UTF8.self) }
        #expect(tagged("{\"a\":1}\n") == "{\"host\":\"al\\\"pha\",\"a\":1}\n")
        #expect(tagged("{}") == "{\"host\":\"al\\\"pha\"}")
        #expect(tagged("name=\"x\"\n") == "name=\"x\"\n")
        // Lines are rewritten whole, however they are written.
        let out = BufferSink()
        let sink = LmctlCLI.LinePrefixSink(out) { Array("h: ".utf8) + $0 }
        sink.write(Array("one\ntw".utf8))
        sink.write(Array("o\nthree".utf8))
        #expect(out.text == "h: one\nh: two\n")
        sink.flush()
        #expect(out.text == "h: one\nh: two\nh: three")
    }

    @Test func aHostLineHasItsStateCapacityAndLabels() {
        let h = HostInfo(identity: HostIdentity(hostName: "alpha", cgroupVersion: 2, cpus: 4, memoryBytes: 1 << 30,
                                                label: [HostLabel(key: "zone", value: "z1"), HostLabel(key: "tier", value: "web")]),
                         state: .hostDisconnected, stateSinceNs: 1_796_002_346_757_290_745)
        #expect(HostsCommand.line(h) == "name=\"alpha\" state=\"disconnected\" since=\"2026-11-30T01:32:26.757Z\" "
            + "cgroup_version=\"2\" cpus=\"4\" memory_bytes=\"1073741824\" labels=\"zone=z1,tier=web\"")
    }
}

extension LmctlControllerTests {
    /// A host gone for good leaves the inventory with `hosts --remove`, its
    /// name's key binding with it (the name could never be used again with
    /// another key), across a restart; a connected host, an unknown name
    /// and a reader are refused; WatchHosts says HOST_REMOVED.
    @Test func aDisconnectedHostIsRemovedWithItsBinding() throws {
        let fleet = try Fleet.twoHosts()
        let connected = try fleet.lmctl(["hosts", "--remove", "beta"])
        #expect(connected.status == StatusCode.failedPrecondition.rawValue && connected.err.contains("is connected"), "\(connected.err)")
        let readerKeys = fleet.dir + "/reader-only.keys"
        try Sys.createFile(readerKeys, "reader \(JSONFormat.base64Encoded(fleet.keys["reader"]!))\n", mode: 0o600)
        fleet.stopAgent("b")
        fleet.waitForHosts(1)
        let reader = try TestProcess.capture([builtTool("lmctl"), "--controller", "tcp://127.0.0.1:\(fleet.clientPort)",
                                              "--key-file", readerKeys, "hosts", "--remove", "beta"])
        #expect(reader.status == StatusCode.permissionDenied.rawValue, "\(reader.err)")
        // A watcher hears of it.
        let heard = Mutexed<[HostChange]>([])
        let watching = Latch()
        let controllerSocket = fleet.dir + "/controller.sock"
        let watcher = Threads.start {
            guard let client = try? RpcClient.connect(unixPath: controllerSocket) else { return }
            defer { client.close() }
            try? client.stream(ControllerMethods.watchHosts, WatchHostsRequest(), deadlineMs: 5_000) { (r: WatchHostsResponse) in
                if r.change == .hostListed { watching.signal() }
                if r.host?.identity?.hostName == "beta", let c = r.change { heard.locked { $0.append(c) } }
                return r.change != .hostRemoved
            }
        }
        #expect(watching.wait(seconds: 5))
        let removed = try fleet.lmctl(["hosts", "--remove", "beta"])
        #expect(removed.status == 0 && removed.out.hasPrefix("name=\"beta\" state=\"disconnected\""), "\(removed.out)\(removed.err)")
        pthread_join(watcher, nil)
        #expect(heard.locked { $0 } == [.hostListed, .hostRemoved])
        #expect(!(try fleet.lmctl(["hosts"]).out.contains("beta")))
        #expect(try fleet.lmctl(["hosts", "--remove", "beta"]).status == StatusCode.notFound.rawValue)
        // Gone after a restart too; and the name is free for another key.
        fleet.stopController()
        try fleet.startController()
        fleet.waitForHosts(1)
        #expect(!(try fleet.lmctl(["hosts"]).out.contains("beta")))
        try fleet.startAgent("c", host: "beta", keyId: "other")
        fleet.waitForHosts(2)
        let hosts = try fleet.lmctl(["hosts"])
        #expect(hosts.lines.contains { $0.hasPrefix("name=\"beta\" state=\"connected\"") }, "\(hosts.out)")
    }

    /// ListHosts in pages that fit the caller's frames: one answer with
    /// every host stopped fitting a frame at some ten thousand hosts (the
    /// controller holds up to max_hosts, 65,536 by default), and lmctl got
    /// RESOURCE_EXHAUSTED for `hosts`, `top --fleet`, `fan-out` and policy.
    @Test func listHostsComesInPagesThatFitAFrame() throws {
        let fleet = try Fleet()
        try fleet.startController(extra: "max_hosts_per_key: 100")  // (one key registers them all)
        // About 4.5 KB a host: 40 of them do not fit a 64 KiB frame.
        let labels = (0..<16).map { HostLabel(key: "k\($0)", value: String(repeating: "v", count: 256)) }
        for i in 0..<40 { #expect(try fleet.register(HostIdentity(hostName: "h\(i)", label: labels)) == nil) }
        let client = try RpcClient.connect(unixPath: fleet.dir + "/controller.sock", limits: SessionLimits(maxFrameBytes: 64 << 10))
        defer { client.close() }
        #expect { _ = try client.call(ControllerMethods.listHosts, ListHostsRequest()) }
            throws: { ($0 as? LmctfyError)?.code == .resourceExhausted && ($0 as? LmctfyError)?.message.contains("page_size") == true }
        let first = try client.call(ControllerMethods.listHosts, ListHostsRequest(pageSize: 1000))
        #expect(first.hosts.count > 0 && first.hosts.count < 40 && first.nextPageToken == first.hosts.last?.identity?.hostName)
        let three = try client.call(ControllerMethods.listHosts, ListHostsRequest(pageSize: 3, pageToken: "h1"))
        #expect(three.hosts.compactMap { $0.identity?.hostName } == ["h10", "h11", "h12"] && three.nextPageToken == "h12")
        let all = try allHosts(client, selector: nil)
        #expect(all.compactMap { $0.identity?.hostName } == (0..<40).map { "h\($0)" }.sorted())
        #expect(try allHosts(client, selector: "k3=\(String(repeating: "v", count: 256))").count == 40)
        #expect(try allHosts(client, selector: "k3=other").isEmpty)
    }
}
