// Run with `create` (and `remove_when_done`): the container made for the
// command in the same call, and gone when the command ends: in the
// foreground before RUN_EXITED, for a detached command when the agent sees
// it exit, and across an agent that was killed meanwhile. Nothing is left
// by a Run that fails, and nothing that was there before is touched.
import Foundation
import Glibc
import Lmctfy
import LmctfyAgent
import LmctfyProto
import LmctfyRPC
import LmctfySystem
import LmctfyTestSupport
import Testing

/// Whether `name` exists on the machine.
private func exists(_ name: String) -> Bool {
    (try? ContainerApi.detect().get(try ContainerName.resolve(name, relativeTo: .root))) != nil
}

/// Waits up to `seconds` for `condition`.
private func within(_ seconds: Int, _ condition: () -> Bool) -> Bool {
    for _ in 0..<(seconds * 50) {
        if condition() { return true }
        usleep(20_000)
    }
    return condition()
}

/// The kinds of the events of `container` the agent at `socket` keeps, in order.
private func kinds(_ socket: String, _ container: String) -> [String] {
    events(Subscriber(socket, SubscribeRequest(afterSequence: 0), until: { $0.last?.caughtUp != nil }).wait().0)
        .filter { $0.container == container }
        .map { e in
            let kind = e.kind?.protoName ?? "?"
            guard e.kind == .containerEventProcessExited else { return kind }
            return kind + (e.exitCode.map { " \($0)" } ?? e.termSignal.map { " signal \($0)" } ?? " unknown")
        }
}

/// The reasons of the PROCESS_EXITED events of `container` the agent at
/// `socket` keeps, in order.
private func exitReasons(_ socket: String, _ container: String) -> [String] {
    events(Subscriber(socket, SubscribeRequest(afterSequence: 0), until: { $0.last?.caughtUp != nil }).wait().0)
        .filter { $0.container == container && $0.kind == .containerEventProcessExited }
        .map { $0.reason ?? "" }
}

private let memory = ContainerSpec(memory: MemorySpec(limit: 64 << 20))

/// An agent, a client of it and a unique container name (destroyed at the end).
private func withClient(_ label: String, _ body: (String, String, RpcClient) throws -> Void) throws {
    try withAgent { _, socket in
        let name = RealCgroups.uniqueName(label)
        defer { RealCgroups.destroy(name) }
        let client = try RpcClient.connect(unixPath: socket)
        defer { client.close() }
        try body(socket, name, client)
    }
}

@Suite(.enabled(if: RealCgroups.available, "\(RealCgroups.unavailableReason ?? "")"))
struct OneShotRunTests {
    @Test func aForegroundOneShotRunsInItsNewContainerAndLeavesNothing() throws {
        try withClient("oneshot") { socket, name, client in
            let out = "/tmp/\(name.dropFirst())-cgroup"
            defer { _ = unlink(out) }
            var got: [RunResponse] = []
            try client.stream(AgentMethods.run, RunRequest(
                name: name, argv: ["/bin/sh", "-c", "cat /proc/self/cgroup > \(out); exit 3"],
                create: memory, removeWhenDone: true)) { (r: RunResponse) in
                got.append(r)
                return true
            }
            #expect(got.map(\.kind) == [.runStarted, .runExited])
            #expect(got.last?.exitCode == 3, "the command's exit status comes back")
            // It ran in the container made for it (its memory cgroup).
            let cgroups = (try? Sys.readFile(out)) ?? ""
            #expect(cgroups.split(separator: "\n").contains { ($0.contains(":memory:") || $0.hasPrefix("0::")) && $0.hasSuffix(":" + name) },
                    "\(cgroups)")
            // Gone when RUN_EXITED came; its events in order.
            #expect(!exists(name))
            #expect(kinds(socket, name) == ["CONTAINER_EVENT_CREATED", "CONTAINER_EVENT_PROCESS_EXITED 3", "CONTAINER_EVENT_DESTROYED"])
            // Without remove_when_done the container stays, made and run in one call.
            got = []
            try client.stream(AgentMethods.run, RunRequest(name: name, argv: ["/bin/true"], create: memory)) { (r: RunResponse) in
                got.append(r)
                return true
            }
            #expect(got.last?.exitCode == 0)
            #expect(try client.call(AgentMethods.spec, SpecRequest(name: name)).spec?.memory?.limit == 64 << 20)
        }
    }

    @Test func badOneShotsAreRefusedAndChangeNothing() throws {
        try withClient("oneshotbad") { socket, name, client in
            func run(_ r: RunRequest) -> LmctfyError? {
                do {
                    try client.stream(AgentMethods.run, r) { (_: RunResponse) in true }
                    return nil
                } catch {
                    return error
                }
            }
            // remove_when_done or tier without create: refused, nothing made.
            var e = run(RunRequest(name: name, argv: ["/bin/true"], removeWhenDone: true))
            #expect(e?.code == .invalidArgument && e?.message.contains("needs create") == true, "\(String(describing: e))")
            e = run(RunRequest(name: name, argv: ["/bin/true"], tier: "batch"))
            #expect(e?.code == .invalidArgument, "\(String(describing: e))")
            #expect(!exists(name))
            // Hostile names: refused before anything is made.
            for bad in ["", name + "/cgroup.procs", name + "/.hidden", name + "/bad\nname"] {
                e = run(RunRequest(name: bad, argv: ["/bin/true"], create: memory, removeWhenDone: true))
                #expect(e?.code == .invalidArgument, "\(bad): \(String(describing: e))")
            }
            // A command that cannot start: the container made for it goes again.
            e = run(RunRequest(name: name, argv: ["/nonexistent/command"], create: memory, removeWhenDone: false))
            #expect(e != nil && e?.code != .ok)
            #expect(!exists(name), "a failed Run leaves nothing")
            #expect(kinds(socket, name) == ["CONTAINER_EVENT_CREATED", "CONTAINER_EVENT_DESTROYED"])
            // A create that fails (the name is taken) runs nothing and leaves
            // the container that was there as it was.
            _ = try client.call(AgentMethods.create, CreateRequest(name: name, spec: ContainerSpec(memory: MemorySpec(limit: 32 << 20))))
            let marker = "/tmp/\(name.dropFirst())-ran"
            defer { _ = unlink(marker) }
            e = run(RunRequest(name: name, argv: ["/bin/touch", marker], create: memory, removeWhenDone: true))
            #expect(e?.code == .alreadyExists, "\(String(describing: e))")
            #expect(!Sys.exists(marker), "nothing ran")
            #expect(try client.call(AgentMethods.spec, SpecRequest(name: name)).spec?.memory?.limit == 32 << 20)
        }
    }

    @Test func aCancelledOneShotKillsItsCommandAndRemovesItsContainer() throws {
        try withClient("oneshotcancel") { socket, name, client in
            var pid: Int32 = 0
            // The caller stops reading at RUN_STARTED: the call is cancelled.
            try client.stream(AgentMethods.run, RunRequest(name: name, argv: ["sleep", "1000"], create: memory, removeWhenDone: true)) {
                (r: RunResponse) in
                pid = r.pid ?? 0
                return false
            }
            #expect(pid > 0)
            #expect(within(30) { !exists(name) }, "the container goes with its cancelled command")
            #expect(within(30) { kill(pid, 0) != 0 }, "the command was killed")
        }
    }

    /// Paused while it runs, then cancelled: the killed job can die (the
    /// container is thawed) and the container goes (it stayed frozen for
    /// good; a probe).
    @Test func aCancelledOneShotThatWasPausedIsRemovedToo() throws {
        try withClient("oneshotpaused") { socket, name, client in
            let other = try RpcClient.connect(unixPath: socket)
            defer { other.close() }
            try client.stream(AgentMethods.run, RunRequest(name: name, argv: ["sleep", "1000"], create: memory, removeWhenDone: true)) {
                (r: RunResponse) in
                _ = try? other.call(AgentMethods.pause, PauseRequest(name: name))
                return false
            }
            #expect(within(30) { !exists(name) }, "the paused one-shot goes with its cancelled command")
        }
    }

    /// Its container destroyed while the command ran (the command moved
    /// out first) and another made under its name: the one-shot's end
    /// leaves that one alone (it was destroyed with its processes; a probe).
    @Test func aOneShotLeavesAContainerMadeAgainUnderItsName() throws {
        try withClient("oneshotagain") { socket, name, client in
            let refuge = name + "-refuge"
            defer { RealCgroups.destroy(refuge) }
            _ = try client.call(AgentMethods.create, CreateRequest(name: refuge, spec: memory))
            let lmctl = try spawnWithEnvironment([builtTool("lmctl"), "--agent", "unix://" + socket, "run", "--create",
                                                  "memory:{limit:67108864}", "--rm", name, "sleep", "3"], [])
            defer {
                kill(lmctl, SIGKILL)
                _ = TestProcess.reapIfExited(lmctl)
            }
            var pid: Int32?
            #expect(within(30) {
                pid = (try? client.call(AgentMethods.listPids, ListPidsRequest(name: name)))?.pids.first
                return pid != nil
            })
            _ = try client.call(AgentMethods.enter, EnterRequest(name: refuge, tids: [try #require(pid)]))
            _ = try client.call(AgentMethods.destroy, DestroyRequest(name: name))
            _ = try client.call(AgentMethods.create, CreateRequest(name: name, spec: ContainerSpec(memory: MemorySpec(limit: 32 << 20))))
            var status: LmctfySystem.ExitStatus?
            #expect(within(30) {
                status = status ?? TestProcess.reapIfExited(lmctl)
                return status != nil
            }, "the one-shot ended")
            #expect(exists(name), "the container made again stays")
            #expect(try client.call(AgentMethods.spec, SpecRequest(name: name)).spec?.memory?.limit == 32 << 20)
        }
    }

    @Test func aDetachedOneShotsContainerGoesWhenItsCommandExits() throws {
        try withClient("oneshotdet") { socket, name, client in
            var pid: Int32 = 0
            try client.stream(AgentMethods.run, RunRequest(name: name, argv: ["sleep", "1"], detached: true,
                                                           create: memory, removeWhenDone: true)) { (r: RunResponse) in
                pid = r.pid ?? pid
                return true
            }
            #expect(pid > 0)
            #expect(exists(name), "it stays while its command runs")
            #expect(within(30) { !exists(name) }, "gone once its command exited")
            #expect(within(30) { kinds(socket, name).last == "CONTAINER_EVENT_DESTROYED" })
            #expect(kinds(socket, name) == ["CONTAINER_EVENT_CREATED", "CONTAINER_EVENT_PROCESS_EXITED unknown", "CONTAINER_EVENT_DESTROYED"])
        }
    }
}

@Suite(.enabled(if: RealCgroups.available, "\(RealCgroups.unavailableReason ?? "")"), .serialized)
struct OneShotRestartTests {
    /// The agent is killed while two one-shot commands run: one ends while
    /// no agent runs, one after the next agent has started. The next agent
    /// removes the first's container at its start, the second's when its
    /// command ends; a container made by a plain Run stays.
    @Test func oneShotContainersGoAfterAnAgentThatWasKilled() throws {
        let root = try ContainerApi.detect()
        let top = RealCgroups.uniqueName("oneshotrestart")
        _ = try root.create(top, spec: ContainerSpec(memory: MemorySpec(limit: 1 << 30)))
        defer { RealCgroups.destroy(top) }
        let first = try AgentProcess(config: "root_container: \"\(top)\" stats_interval_ms: 0")
        defer { _ = removeTree(first.dir) }
        var client = try RpcClient.connect(unixPath: first.socket)
        for (n, seconds, removes) in [("/early", "1", true), ("/late", "20", true), ("/kept", "1", false)] {
            try client.stream(AgentMethods.run, RunRequest(name: n, argv: ["sleep", seconds], detached: true,
                                                           create: memory, removeWhenDone: removes ? true : nil)) { (_: RunResponse) in true }
        }
        client.close()
        first.crash()
        _ = TestProcess.reapIfExited(first.pid)
        // /early's command ends while no agent runs.
        usleep(2_000_000)
        #expect(exists(top + "/early") && exists(top + "/late") && exists(top + "/kept"))
        let second = try AgentProcess(reusing: first.dir)
        defer { second.stop(keepingState: true) }
        #expect(within(30) { !exists(top + "/early") }, "removed at the start")
        #expect(exists(top + "/late"), "its command still runs")
        #expect(within(60) { !exists(top + "/late") }, "removed when its command ended")
        #expect(exists(top + "/kept"), "a container of a plain Run stays")
        client = try RpcClient.connect(unixPath: second.socket)
        client.close()
        #expect(within(30) { kinds(second.socket, "/late").suffix(2) == ["CONTAINER_EVENT_PROCESS_EXITED unknown", "CONTAINER_EVENT_DESTROYED"] },
                "\(kinds(second.socket, "/late"))")
    }

    /// The agent is killed while two foreground commands run (lmctl in the
    /// foreground: a one-shot, and a plain Run in a container made before).
    /// Their caller's connections went with it, so the next agent kills
    /// both jobs at its start, as a cancelled call's, and removes the
    /// one-shot's container at once; the other container stays. (They ran
    /// on to their end before, and the one-shot's container stayed until
    /// then.)
    @Test func foregroundJobsOfAKilledAgentAreKilledAtTheNextStart() throws {
        let root = try ContainerApi.detect()
        let top = RealCgroups.uniqueName("oneshotfg")
        _ = try root.create(top, spec: ContainerSpec(memory: MemorySpec(limit: 1 << 30)))
        defer { RealCgroups.destroy(top) }
        let first = try AgentProcess(config: "root_container: \"\(top)\" stats_interval_ms: 0")
        defer { _ = removeTree(first.dir) }
        let client = try RpcClient.connect(unixPath: first.socket)
        _ = try client.call(AgentMethods.create, CreateRequest(name: "/plain", spec: memory))
        client.close()
        let lmctl = [builtTool("lmctl"), "--agent", "unix://" + first.socket, "run"]
        var callers: [pid_t] = []
        defer {
            for c in callers {
                kill(c, SIGKILL)
                _ = TestProcess.reapIfExited(c)
            }
        }
        callers.append(try spawnWithEnvironment(lmctl + ["--create", "memory:{limit:67108864}", "--rm", "/fg", "sleep", "300"], []))
        callers.append(try spawnWithEnvironment(lmctl + ["/plain", "sleep", "300"], []))
        func pids(_ name: String) -> [String] {
            guard let r = try? TestProcess.capture([builtTool("lmctfy"), "list", "pids", top + name]), r.status == 0 else { return [] }
            return String(decoding: r.stdout, as: UTF8.self).split(whereSeparator: { !$0.isNumber }).map(String.init)
        }
        #expect(within(30) { pids("/fg").count == 1 && pids("/plain").count == 1 }, "both commands run")
        let jobs = (pids("/fg") + pids("/plain")).compactMap { pid_t($0) }
        first.crash()
        _ = TestProcess.reapIfExited(first.pid)
        usleep(300_000)
        #expect(jobs.allSatisfy { kill($0, 0) == 0 }, "the jobs outlive the agent")
        let second = try AgentProcess(reusing: first.dir)
        defer { second.stop(keepingState: true) }
        #expect(within(30) { !exists(top + "/fg") }, "the one-shot's container removed at the start")
        #expect(within(30) { jobs.allSatisfy { kill($0, 0) != 0 } }, "both jobs killed")
        #expect(exists(top + "/plain"), "a container made by Create stays")
        #expect(within(30) { kinds(second.socket, "/plain").contains("CONTAINER_EVENT_PROCESS_EXITED unknown") }, "\(kinds(second.socket, "/plain"))")
        #expect(within(30) { kinds(second.socket, "/fg").suffix(2) == ["CONTAINER_EVENT_PROCESS_EXITED unknown", "CONTAINER_EVENT_DESTROYED"] },
                "\(kinds(second.socket, "/fg"))")
        // Killed, and said so (a job dead before the watch began was said
        // to have "exited while the agent was down"; a probe).
        let killed = "killed: run in the foreground by an earlier agent, its caller gone with it"
        #expect(exitReasons(second.socket, "/plain").last == killed, "\(exitReasons(second.socket, "/plain"))")
        #expect(exitReasons(second.socket, "/fg").last == killed, "\(exitReasons(second.socket, "/fg"))")
    }

    /// The agent killed between a one-shot's create and its command's start
    /// (a test hold there): the container, empty, is removed by the next
    /// agent at its start (it was left for good; a probe: 44 of 150).
    @Test func aOneShotWhoseAgentDiedBeforeItsCommandStartedIsRemoved() throws {
        let root = try ContainerApi.detect()
        let top = RealCgroups.uniqueName("oneshotheld")
        _ = try root.create(top, spec: ContainerSpec(memory: MemorySpec(limit: 1 << 30)))
        defer { RealCgroups.destroy(top) }
        let first = try AgentProcess(config: "root_container: \"\(top)\" stats_interval_ms: 0",
                                     environment: ["LMCTFY_AGENT_TEST_HOLD_AFTER=Run.created"])
        defer { _ = removeTree(first.dir) }
        let lmctl = try spawnWithEnvironment([builtTool("lmctl"), "--agent", "unix://" + first.socket, "run", "--create",
                                              "memory:{limit:67108864}", "--rm", "/held", "/bin/true"], [])
        defer {
            kill(lmctl, SIGKILL)
            _ = TestProcess.reapIfExited(lmctl)
        }
        for _ in 0..<3000 where !Sys.exists(first.dir + "/state/test-hold") { usleep(10_000) }
        #expect(Sys.exists(first.dir + "/state/test-hold"), "held after the create")
        #expect(exists(top + "/held"))
        first.crash()
        _ = TestProcess.reapIfExited(first.pid)
        _ = unlink(first.dir + "/state/test-hold")
        let second = try AgentProcess(reusing: first.dir)
        defer { second.stop(keepingState: true) }
        #expect(within(30) { !exists(top + "/held") }, "removed at the next start")
    }

    /// A create cut short by a death (here the journal such a create leaves
    /// in its tree's lock file, and the directory it had made): the next
    /// agent's start removes the half-made directory and empties the
    /// journal. It stayed (invisible to list and detect) until the tree's
    /// next create or destroy (the agent probe). A tree outside the agent's
    /// root_container is not the agent's to finish.
    @Test func aCreateCutShortIsUndoneAtTheAgentsStart() throws {
        let root = try ContainerApi.detect()
        let mine = RealCgroups.uniqueName("halfmade")
        let other = RealCgroups.uniqueName("halfmadeother")
        for top in [mine, other] { _ = try root.create(top, spec: ContainerSpec(memory: MemorySpec(limit: 1 << 30))) }
        defer { for top in [mine, other] { RealCgroups.destroy(top) } }
        let mount = try #require(root.mounts.v1[.memory] ?? root.mounts.unified)
        let boot = ((try? Sys.readFile("/proc/sys/kernel/random/boot_id")) ?? "").split(separator: "\n").first.map(String.init) ?? ""
        func cutShort(_ top: String) throws -> (dir: String, lock: String) {
            let dir = mount + top + "/half"
            let lockFile = CgroupAccess.kernelLockRoot + top
            let lock = try FileLock.acquire(lockFile)
            defer { lock.release() }  // (the create's process dies: its lock goes)
            try lock.append("boot \(boot)\ncreate \(top)/half\nmkdir \(mount)\t\(top.dropFirst())/half")
            try Sys.mkdir(dir)
            return (dir, lockFile)
        }
        let (dir, lockFile) = try cutShort(mine)
        let (otherDir, otherLock) = try cutShort(other)
        defer { _ = rmdir(otherDir) }
        let agent = try AgentProcess(config: "root_container: \"\(mine)\" stats_interval_ms: 0")
        defer { agent.stop() }
        #expect(!Sys.exists(dir), "the half-made directory was left")
        #expect(((try? Sys.readFile(lockFile)) ?? "x").isEmpty, "the journal was left")
        #expect(Sys.exists(otherDir), "a tree outside the root_container was touched")
        #expect(!((try? Sys.readFile(otherLock)) ?? "").isEmpty)
        #expect(exists(mine), "the root_container went")
    }

    /// Killed between the create and any record of it (a test hold right
    /// after the create): a one-shot's container and an import's copy were
    /// kept for good as containers made while the agent was down (the agent
    /// probe: 5 of 14 imports, runs at ~10 ms). The create records its
    /// mark's token on the container, and the next start destroys the
    /// container that has it; one made by someone else since the agent
    /// died (no token) is left alone.
    @Test func aContainerMadeJustBeforeTheAgentDiedIsKnownByItsToken() throws {
        let root = try ContainerApi.detect()
        let top = RealCgroups.uniqueName("createheld")
        _ = try root.create(top, spec: ContainerSpec(memory: MemorySpec(limit: 1 << 30)))
        defer { RealCgroups.destroy(top) }
        let config = "root_container: \"\(top)\" stats_interval_ms: 0"
        for kind in ["run", "import", "replaced"] {
            let first = try AgentProcess(config: config, environment: ["LMCTFY_AGENT_TEST_HOLD_AFTER=Create.made"])
            defer {
                first.crash()  // (ended already, unless the test failed before)
                _ = removeTree(first.dir)
            }
            let name = "/held-" + kind
            let argv: [String]
            if kind == "run" {
                argv = ["run", "--create", "memory:{limit:67108864}", "--rm", name, "/bin/true"]
            } else {
                let file = first.dir + "/snap.pb"
                let snapshot = ContainerSnapshot(formatVersion: SnapshotStore.formatVersion, name: name,
                                                 spec: ContainerSpec(memory: MemorySpec(limit: 64 << 20)))
                try Sys.createFile(file, snapshot.textFormatString)
                argv = ["snapshot", "import", file, "--name", name]
            }
            let lmctl = try spawnWithEnvironment([builtTool("lmctl"), "--agent", "unix://" + first.socket] + argv, [])
            defer {
                kill(lmctl, SIGKILL)
                _ = TestProcess.reapIfExited(lmctl)
            }
            for _ in 0..<3000 where !Sys.exists(first.dir + "/state/test-hold") { usleep(10_000) }
            try #require(Sys.exists(first.dir + "/state/test-hold"), "\(kind): held after the create")
            #expect(exists(top + name))
            first.crash()
            _ = TestProcess.reapIfExited(first.pid)
            _ = unlink(first.dir + "/state/test-hold")
            if kind == "replaced" {
                // Destroyed and made again by someone else while the agent was down.
                _ = try root.destroy(try ContainerName.resolve(top + name, relativeTo: .root))
                _ = try root.create(top + name, spec: ContainerSpec())
            }
            let second = try AgentProcess(reusing: first.dir)
            defer { second.stop(keepingState: true) }
            if kind == "replaced" {
                usleep(500_000)
                #expect(exists(top + name), "another's container of the name was destroyed")
            } else {
                #expect(within(30) { !exists(top + name) }, "\(kind): removed at the next start")
            }
            #expect(((try? Sys.directoryEntries(first.dir + "/state/imports")) ?? []).isEmpty, "\(kind): marks or temporaries left")
        }
    }
}

@Suite(.enabled(if: RealCgroups.available, "\(RealCgroups.unavailableReason ?? "")"))
struct OneShotCommandLineTests {  // (an agent: host only, not the v2 guest's CLITests)
    /// `lmctfy run --create SPEC --rm` (in this process's machine) and
    /// `lmctl run --create SPEC --rm` (one call to the agent): the command's
    /// exit status, the container there while it runs and gone after;
    /// mistakes refused with nothing made.
    @Test func runCreateRmThroughLmctfyAndLmctl() throws {
        try withAgent { _, socket in
            for tool in [[builtTool("lmctfy")], [builtTool("lmctl"), "--agent", "unix://" + socket]] {
                let name = RealCgroups.uniqueName("oneshotcli")
                let seen = "/tmp/\(name.dropFirst())-seen"
                defer {
                    RealCgroups.destroy(name)
                    _ = unlink(seen)
                }
                func run(_ args: [String]) throws -> ChildResult { try TestProcess.capture(tool + args) }
                func err(_ r: ChildResult) -> String { String(decoding: r.stderr, as: UTF8.self) }
                // The command runs in the container made for it (v1: its
                // memory hierarchy's line; v2: the one line).
                var r = try run(["run", "--create", "memory:{limit:67108864}", "--rm", name, "/bin/sh", "-c",
                                 "cat /proc/self/cgroup > \(seen); exit 5"])
                #expect(r.status == 5, "\(tool[0]): \(err(r))")
                let cgroups = (try? Sys.readFile(seen)) ?? ""
                #expect(cgroups.split(separator: "\n").contains { ($0.contains(":memory:") || $0.hasPrefix("0::")) && $0.hasSuffix(":" + name) },
                        "\(tool[0]): \(cgroups)")
                #expect(!exists(name), "\(tool[0]): removed when the command ended")
                // --rm without --create, --create with another verb, a bad
                // spec: refused, nothing made.
                r = try run(["run", "--rm", name, "/bin/true"])
                #expect(r.status == 3 && err(r).contains("--create"), "\(tool[0]): \(err(r))")
                r = try run(["create", "--create", "memory:{limit:1}", name, "memory:{limit:67108864}"])
                #expect(r.status == 3, "\(tool[0]): \(err(r))")
                r = try run(["run", "--create", "memory:{limit:", "--rm", name, "/bin/true"])
                #expect(r.status == 3, "\(tool[0]): \(err(r))")
                // A command that cannot start: the container goes again.
                r = try run(["run", "--create", "memory:{limit:67108864}", name, "/nonexistent/command"])
                #expect(r.status != 0, "\(tool[0])")
                #expect(!exists(name), "\(tool[0]): nothing left by a run that failed")
            }
        }
    }
}

@Suite(.enabled(if: RealCgroups.available, "\(RealCgroups.unavailableReason ?? "")"))
struct AttachedOutputTests {
    /// A foreground `lmctl run` prints the command's stdout and stderr as
    /// they come (Run with attach_output), all of it, and returns its exit
    /// status; a process the command left behind holding its output does
    /// not hold the call; a reader that goes away stops the command.
    @Test func lmctlRunPrintsTheCommandsOutput() throws {
        try withClient("attached") { socket, name, client in
            let lmctl = [builtTool("lmctl"), "--agent", "unix://" + socket]
            _ = try client.call(AgentMethods.create, CreateRequest(name: name, spec: memory))
            var r = try TestProcess.capture(lmctl + ["run", name, "/bin/sh", "-c", "echo out; echo err >&2; exit 3"])
            #expect(r.status == 3)
            #expect(String(decoding: r.stdout, as: UTF8.self) == "out\n")
            #expect(String(decoding: r.stderr, as: UTF8.self) == "err\n")
            r = try TestProcess.capture(lmctl + ["run", name, "/bin/sh", "-c", "head -c 1048576 /dev/zero | tr '\\000' x"])
            #expect(r.status == 0 && r.stdout.count == 1 << 20 && r.stdout.allSatisfy { $0 == UInt8(ascii: "x") }, "\(r.stdout.count) bytes")
            // Left behind with the pipes open: the call ends with the command.
            let t0 = MonotonicClock.milliseconds()
            r = try TestProcess.capture(lmctl + ["run", "--create", "memory:{limit:67108864}", "--rm", name + "/left", "/bin/sh", "-c",
                                                 "sleep 60 & echo done"])
            #expect(r.status == 0 && String(decoding: r.stdout, as: UTF8.self) == "done\n", "\(r)")
            #expect(MonotonicClock.milliseconds() - t0 < 30_000, "not held by what it left running")
            #expect(!exists(name + "/left"), "removed, what was left in it killed")
            // A reader that goes away: the command is stopped.
            r = try TestProcess.capture(["/bin/sh", "-c", (lmctl + ["run", name, "yes"]).map { "'\($0)'" }.joined(separator: " ") + " | head -c 10"])
            #expect(String(decoding: r.stdout, as: UTF8.self) == "y\ny\ny\ny\ny\n")
            #expect(within(30) { (try? client.call(AgentMethods.listPids, ListPidsRequest(name: name, recursive: true)).pids.isEmpty) == true },
                    "yes was stopped")
            // Detached output is not attached.
            var refused: LmctfyError?
            do {
                try client.stream(AgentMethods.run, RunRequest(name: name, argv: ["/bin/true"], detached: true, attachOutput: true)) { (_: RunResponse) in true }
            } catch { refused = error as? LmctfyError }
            #expect(refused?.code == .invalidArgument, "\(String(describing: refused))")
        }
    }
}

@Suite(.enabled(if: RealCgroups.available, "\(RealCgroups.unavailableReason ?? "")"))
struct AttachedInputTests {
    /// `lmctl run -i`: the command reads lmctl's stdin (Run with
    /// attach_input, INPUT frames within the agent's credit) to its end,
    /// several windows of it; a command that stops reading, or closes its
    /// stdin, is not held by the input left; without -i stdin is /dev/null;
    /// -i with -n is refused.
    @Test func lmctlRunFeedsItsStdinToTheCommand() throws {
        try withClient("stdin") { socket, name, client in
            let lmctl = "'\(builtTool("lmctl"))' --agent unix://\(socket)"
            _ = try client.call(AgentMethods.create, CreateRequest(name: name, spec: memory))
            let file = "/tmp/\(name.dropFirst())-in"
            defer { _ = unlink(file) }
            // 3 MiB: 48 INPUT frames of 64 KiB, the agent granting 4 at a time.
            var bytes = [UInt8](repeating: 0, count: 3 << 20)
            for i in bytes.indices { bytes[i] = UInt8(truncatingIfNeeded: i &* 2_654_435_761 >> 13) }
            try Sys.writeFileAtomically(file, bytes)
            func sh(_ script: String) throws -> ChildResult { try TestProcess.capture(["/bin/sh", "-c", script]) }
            var r = try sh("\(lmctl) run -i \(name) /bin/cat < \(file)")
            #expect(r.status == 0 && r.stdout == bytes, "\(r.stdout.count) bytes back of \(bytes.count): \(String(decoding: r.stderr, as: UTF8.self))")
            // Its end is the command's end of file.
            r = try sh("printf 'a\\nb\\n' | \(lmctl) run -i \(name) wc -l")
            #expect(r.status == 0 && String(decoding: r.stdout, as: UTF8.self).trimmingCharacters(in: .whitespaces) == "2\n", "\(r)")
            r = try sh("\(lmctl) run --stdin \(name) wc -c < /dev/null")
            #expect(r.status == 0 && String(decoding: r.stdout, as: UTF8.self).trimmingCharacters(in: .whitespaces) == "0\n", "\(r)")
            // A command that reads a little and exits: the call ends with it
            // (the endless input is dropped; `yes` then gets SIGPIPE).
            let t0 = MonotonicClock.milliseconds()
            r = try sh("yes | \(lmctl) run -i \(name) head -c 6")
            #expect(r.status == 0 && String(decoding: r.stdout, as: UTF8.self) == "y\ny\ny\n", "\(r)")
            // One that closes its stdin and goes on: the input is dropped, the
            // caller is not held.
            r = try sh("yes | \(lmctl) run -i \(name) /bin/sh -c 'exec 0<&-; sleep 0.3; echo ok'")
            #expect(r.status == 0 && String(decoding: r.stdout, as: UTF8.self) == "ok\n", "\(r)")
            #expect(MonotonicClock.milliseconds() - t0 < 30_000)
            // Without -i the command's stdin is /dev/null, as before.
            r = try sh("echo hi | \(lmctl) run \(name) cat")
            #expect(r.status == 0 && r.stdout.isEmpty, "\(r)")
            // -i is for a foreground command; and it is run's.
            r = try sh("echo hi | \(lmctl) run -i -n \(name) cat")
            #expect(r.status == 3 && String(decoding: r.stderr, as: UTF8.self).contains("-n"), "\(r)")
            r = try sh("\(lmctl) list containers -i")
            #expect(r.status == 3, "\(r)")
            // A stdin that cannot be read is said, not passed off as empty.
            r = try sh("\(lmctl) run -i \(name) wc -c < /tmp")
            #expect(r.status == StatusCode.dataLoss.rawValue && String(decoding: r.stderr, as: UTF8.self).contains("stdin could not be read"), "\(r)")
            // lmctl started with its stdio closed: its socket is not put
            // there (a probe: the command's output went into the socket as
            // frames of an admin connection, and a closed stdin read the
            // socket as input).
            let frames = "/tmp/\(name.dropFirst())-frames"
            defer { _ = unlink(frames) }
            let injected = name + "_injected"
            defer { _ = try? client.call(AgentMethods.destroy, DestroyRequest(name: injected, force: true)) }
            try Sys.writeFileAtomically(frames, FrameCodec.encode(Frame(kind: .frameRequest, streamId: 3, method: "Create",
                payload: try CreateRequest(name: injected, spec: memory).serializedBytes())))
            // (Its output cannot be written, as to any closed descriptor.)
            r = try sh("\(lmctl) run \(name) cat \(frames) >&-")
            #expect(r.status == StatusCode.dataLoss.rawValue, "\(r)")
            #expect(!exists(injected), "the command's output made a call")
            r = try sh("\(lmctl) run -i \(name) wc -c <&-")
            #expect(r.status == StatusCode.dataLoss.rawValue && String(decoding: r.stderr, as: UTF8.self).contains("stdin could not be read"), "\(r)")
            #expect(try client.call(AgentMethods.listPids, ListPidsRequest(name: name, recursive: true)).pids.isEmpty)
        }
    }

    /// Input goes as it comes, not at its end: the command answers a line
    /// before the next is written (an interactive command), and a caller
    /// that never ends its input but cancels kills the command. A detached
    /// Run with attach_input is refused.
    @Test func inputIsStreamedAndTheCallerKeepsItsOwnPace() throws {
        try withClient("stdin_rpc") { socket, name, client in
            _ = try client.call(AgentMethods.create, CreateRequest(name: name, spec: memory))
            let pipe = try Sys.pipe()
            var writeEnd = pipe.1
            // (writeEnd, not pipe.1: closed twice, the second close took
            // whatever a parallel test had opened under that number since.)
            defer { close(pipe.0); if writeEnd >= 0 { close(writeEnd) } }
            #expect(write(writeEnd, "one\n", 4) == 4)
            var seen = ""
            var exited: RunResponse?
            try client.stream(AgentMethods.run, RunRequest(name: name, argv: ["/bin/sh", "-c", "while read l; do echo got $l; done; echo end"],
                                                           attachOutput: true, attachInput: true), input: pipe.0) { (r: RunResponse) in
                if let out = r.stdout { seen += String(decoding: out, as: UTF8.self) }
                // The second line only once the first was answered.
                if seen == "got one\n" && writeEnd >= 0 {
                    #expect(write(writeEnd, "two\n", 4) == 4)
                } else if seen == "got one\ngot two\n" && writeEnd >= 0 {
                    close(writeEnd)
                    writeEnd = -1
                }
                if r.kind == .runExited { exited = r }
                return true
            }
            #expect(seen == "got one\ngot two\nend\n")
            #expect(exited?.exitCode == 0)
            // An input that never ends and a caller that gives up: the
            // command is killed with its call.
            let open = try Sys.pipe()
            defer { close(open.0); close(open.1) }
            var pid: Int32 = 0
            try client.stream(AgentMethods.run, RunRequest(name: name, argv: ["/bin/cat"], attachInput: true), input: open.0) { (r: RunResponse) in
                pid = r.pid ?? 0
                return false  // cancel after RUN_STARTED
            }
            #expect(pid > 0)
            #expect(within(30) { kill(pid, 0) != 0 }, "cat was killed with its call")
            var refused: LmctfyError?
            do {
                try client.stream(AgentMethods.run, RunRequest(name: name, argv: ["/bin/true"], detached: true, attachInput: true)) { (_: RunResponse) in true }
            } catch { refused = error as? LmctfyError }
            #expect(refused?.code == .invalidArgument, "\(String(describing: refused))")
            // A version 3 connection cannot send input: refused, nothing run.
            let old = try RawLink(fd: try RpcSocket.connectUnix(path: socket),
                                  Session(dialler: .peerCredentials, name: "t", offering: 1...3, now: MonotonicClock.milliseconds()))
            #expect(old.session.peer?.version == 3)
            old.open("Run", try RunRequest(name: name, argv: ["/bin/cat"], attachInput: true).serializedBytes())
            old.pump { !old.statuses.isEmpty }
            #expect(old.statuses.first?.code == .invalidArgument && old.responses.isEmpty, "\(old.statuses)")
        }
    }
}

/// A test's stand-in for lmctl's terminal: `resize(to:)` makes its
/// descriptor readable, `changed` then gives the size.
private final class FakeTerminal: TerminalWatch {
    let pipe: (Int32, Int32)
    var next: TerminalWindow?
    init() throws { pipe = try Sys.pipe() }
    deinit { close(pipe.0); close(pipe.1) }
    var fd: Int32 { pipe.0 }
    func resize(to window: TerminalWindow) {
        next = window
        _ = write(pipe.1, "w", 1)
    }
    func changed() -> TerminalWindow? {
        var b: UInt8 = 0
        _ = read(pipe.0, &b, 1)
        defer { next = nil }
        return next
    }
}

@Suite(.enabled(if: RealCgroups.available, "\(RealCgroups.unavailableReason ?? "")"),
       .enabled(if: pseudoTerminalsWork, "no pseudo-terminal opens here (devpts not mounted, as in the v2 guest): the terminal tests cannot run"))
struct TerminalRunTests {
    /// Run with `tty` (protocol version 5): the command's stdio is a
    /// pseudo-terminal of the size asked for, its controlling terminal;
    /// an INPUT frame's window resizes it, keys typed reach it, the input's
    /// end is its end of file, and ^C typed interrupts it.
    @Test func aRunOnATerminalSeesItsSizeItsKeysAndItsResizes() throws {
        try withClient("tty") { _, name, client in
            _ = try client.call(AgentMethods.create, CreateRequest(name: name, spec: memory))
            let keys = try Sys.pipe()
            defer { close(keys.0); close(keys.1) }
            let terminal = try FakeTerminal()
            var seen = ""
            var exited: RunResponse?
            var sent = false
            let script = "[ -t 0 ] && [ -t 1 ] && [ -t 2 ] && echo all-terminals; echo term:$TERM; tty; stty size; read l; stty size; echo got:$l; exit 4"
            try client.stream(AgentMethods.run, RunRequest(name: name, argv: ["/bin/sh", "-c", script], attachOutput: true, attachInput: true,
                                                           tty: true, window: TerminalSize(rows: 30, cols: 100), term: "vt100"),
                              input: keys.0, terminal: terminal) { (r: RunResponse) in
                #expect(r.stderr == nil, "a terminal has one output")
                if let out = r.stdout { seen += String(decoding: out, as: UTF8.self) }
                if seen.contains("30 100") && !sent {
                    sent = true
                    terminal.resize(to: TerminalWindow(rows: 40, cols: 120))
                    #expect(write(keys.1, "hi\n", 3) == 3)
                }
                if r.kind == .runExited { exited = r }
                return true
            }
            #expect(seen.contains("all-terminals") && seen.contains("/dev/pts/") && seen.contains("term:vt100\r\n"), "\(seen)")
            #expect(seen.contains("30 100\r\n") && seen.contains("40 120\r\n") && seen.contains("got:hi\r\n"), "\(seen)")
            #expect(exited?.exitCode == 4)
            // The input's end is the end of file, after a partial line too.
            for (typed, echoed, script) in [("abc\n", "abc\r\nabc\r\n", "cat"), ("xyz", "xyzxyz", "cat")] {
                let more = try Sys.pipe()
                defer { close(more.0) }
                #expect(write(more.1, typed, typed.utf8.count) == typed.utf8.count)
                close(more.1)
                var out = ""
                var status: Int32?
                try client.stream(AgentMethods.run, RunRequest(name: name, argv: ["/bin/sh", "-c", script], attachOutput: true, attachInput: true,
                                                               tty: true), input: more.0) { (r: RunResponse) in
                    if let o = r.stdout { out += String(decoding: o, as: UTF8.self) }
                    if r.kind == .runExited { status = r.exitCode }
                    return true
                }
                #expect(status == 0 && out == echoed, "\(script): \(typed.debugDescription): \(out.debugDescription)")
            }
            // Without a window or a type: 24x80, an xterm.
            var plain = ""
            try client.stream(AgentMethods.run, RunRequest(name: name, argv: ["/bin/sh", "-c", "stty size; echo $TERM"], attachOutput: true, tty: true)) {
                (r: RunResponse) in
                if let o = r.stdout { plain += String(decoding: o, as: UTF8.self) }
                return true
            }
            #expect(plain == "24 80\r\nxterm\r\n", "\(plain.debugDescription)")
            // Its end-of-file character as the command set it (typed once
            // it has: a ^D would be a character like any other then).
            let late = try Sys.pipe()
            var lateEnd = late.1
            defer { close(late.0); if lateEnd >= 0 { close(lateEnd) } }
            var endOut = ""
            var endStatus: Int32?
            // (Bounded: a ^D typed regardless would leave cat waiting.)
            try? client.stream(AgentMethods.run, RunRequest(name: name, argv: ["/bin/sh", "-c", "stty eof ^A; echo ready; cat; echo done"],
                                                            attachOutput: true, attachInput: true, tty: true),
                               deadlineMs: 30_000, input: late.0) { (r: RunResponse) in
                if let o = r.stdout { endOut += String(decoding: o, as: UTF8.self) }
                if endOut.contains("ready") && lateEnd >= 0 {
                    #expect(write(lateEnd, "abc\n", 4) == 4)
                    close(lateEnd)
                    lateEnd = -1
                }
                if r.kind == .runExited { endStatus = r.exitCode }
                return true
            }
            #expect(endStatus == 0 && endOut.hasSuffix("abc\r\ndone\r\n"), "\(endOut.debugDescription)")
            // ^C typed: the command (its terminal's foreground) gets SIGINT.
            let ctrlC = try Sys.pipe()
            defer { close(ctrlC.0); close(ctrlC.1) }
            var signal: Int32?
            try client.stream(AgentMethods.run, RunRequest(name: name, argv: ["/bin/sleep", "100"], attachOutput: true, attachInput: true, tty: true),
                              input: ctrlC.0) { (r: RunResponse) in
                if r.kind == .runStarted { #expect(write(ctrlC.1, "\u{3}", 1) == 1) }
                if r.kind == .runExited { signal = r.termSignal }
                return true
            }
            #expect(signal == SIGINT)
        }
    }

    /// The caller's terminal's modes are the command's terminal's before it
    /// starts; without them it has the kernel's defaults.
    @Test func aRunOnATerminalHasTheModesItsCallerGives() throws {
        try withClient("tty_modes") { _, name, client in
            _ = try client.call(AgentMethods.create, CreateRequest(name: name, spec: memory))
            func stty(_ modes: [TerminalMode]) throws -> String {
                var out = ""
                try client.stream(AgentMethods.run, RunRequest(name: name, argv: ["/bin/stty", "-a"], attachOutput: true, tty: true, modes: modes)) {
                    (r: RunResponse) in
                    if let o = r.stdout { out += String(decoding: o, as: UTF8.self) }
                    return true
                }
                return out
            }
            // erase ^H, interrupt disabled, iutf8, no echo; CS7 (a
            // pseudo-terminal keeps its size) and VSTATUS (not Linux's)
            // let be.
            let set = try stty([TerminalMode(opcode: 3, value: 8), TerminalMode(opcode: 1, value: 255), TerminalMode(opcode: 42, value: 1),
                                TerminalMode(opcode: 53, value: 0), TerminalMode(opcode: 90, value: 1), TerminalMode(opcode: 17, value: 20)])
            let words = set.split(whereSeparator: { " ;\r\n".contains($0) })
            #expect(set.contains("erase = ^H") && set.contains("intr = <undef>") && words.contains("iutf8") && words.contains("-echo")
                    && words.contains("cs8"), "\(set)")
            let plain = try stty([])
            let plainWords = plain.split(whereSeparator: { " ;\r\n".contains($0) })
            #expect(plain.contains("erase = ^?") && plain.contains("intr = ^C") && plainWords.contains("-iutf8") && plainWords.contains("echo"),
                    "\(plain)")
        }
    }

    /// `lmctl run -t` on a terminal: the command sees lmctl's terminal's
    /// size, lmctl's terminal passes keys through untouched while it runs
    /// and is put back after (also when lmctl is killed with SIGTERM, the
    /// command then stopped), and its resizes (SIGWINCH) reach the command.
    /// With a pipe for stdin the command still gets a terminal.
    @Test func lmctlRunTPassesItsTerminalThrough() throws {
        try withClient("lmctl_tty") { socket, name, client in
            _ = try client.call(AgentMethods.create, CreateRequest(name: name, spec: memory))
            let lmctl = [builtTool("lmctl"), "--agent", "unix://" + socket]
            // Its stdin piped: a terminal all the same, the pipe's end its EOF.
            let r = try TestProcess.capture(["/bin/sh", "-c", (lmctl + ["run", "-t", name, "/bin/sh", "-c", "tty; read l; echo got:$l; cat; echo end"])
                .map { "'\($0)'" }.joined(separator: " ") + " <<EOF\nhi\nEOF"])
            let out = String(decoding: r.stdout, as: UTF8.self)
            #expect(r.status == 0 && out.contains("/dev/pts/") && out.contains("got:hi\r\n") && out.contains("end\r\n"), "\(r)")
            // Its terminal's modes are the command's (erase ^H, iutf8);
            // with its stdin piped, a new terminal's.
            do {
                let pty = try Terminal.openPseudoTerminal()
                defer { close(pty.master); close(pty.slave) }
                var t = termios()
                #expect(tcgetattr(pty.slave, &t) == 0)
                withUnsafeMutableBytes(of: &t.c_cc) { $0[Int(VERASE)] = 8 }
                t.c_iflag |= tcflag_t(IUTF8)
                #expect(tcsetattr(pty.slave, TCSANOW, &t) == 0)
                let pid = try TestProcess.spawnOnTerminal(lmctl + ["run", "-t", name, "/bin/sh", "-c", "stty -a; echo stty-done"], pty.slave)
                defer { TestProcess.end(pid) }
                var shown = ""
                #expect(readTerminal(pty.master, &shown) { $0.contains("stty-done") }, "\(shown.debugDescription)")
                #expect(TestProcess.waitForExit(pid) == .exited(0))
                let words = shown.split(whereSeparator: { " ;\r\n".contains($0) })
                #expect(shown.contains("erase = ^H") && words.contains("iutf8"), "\(shown)")
                let piped = try TestProcess.capture(["/bin/sh", "-c", (lmctl + ["run", "-t", name, "/bin/stty", "-a"]).map { "'\($0)'" }.joined(separator: " ") + " </dev/null"])
                let pipedOut = String(decoding: piped.stdout, as: UTF8.self)
                #expect(piped.status == 0 && pipedOut.contains("erase = ^?") && pipedOut.split(whereSeparator: { " ;\r\n".contains($0) }).contains("-iutf8"),
                        "\(piped)")
            }
            for ending in ["exit", "SIGTERM"] {
                // Killed, a job-control shell's background job goes too
                // (a process group of its own in the command's session).
                let job = ending == "SIGTERM" ? "set -m; sleep 101 & " : ""
                let pty = try Terminal.openPseudoTerminal()
                defer { close(pty.master); close(pty.slave) }
                try Terminal.setWindow(pty.master, TerminalWindow(rows: 33, cols: 77))
                var before = termios()
                #expect(tcgetattr(pty.slave, &before) == 0)
                let pid = try TestProcess.spawnOnTerminal(["/usr/bin/env", "TERM=screen"] + lmctl
                                                          + ["run", "-it", name, "/bin/sh", "-c", job + "echo term:$TERM; stty size; read l; stty size; echo got:$l; sleep 100"],
                                                          pty.slave)
                defer { TestProcess.end(pid) }
                var shown = ""
                #expect(readTerminal(pty.master, &shown) { $0.contains("33 77") }, "\(shown.debugDescription)")
                var during = termios()
                #expect(tcgetattr(pty.slave, &during) == 0 && during.c_lflag & tcflag_t(ICANON | ECHO | ISIG) == 0,
                        "lmctl's terminal passes keys through")
                if ending == "exit" {
                    // Stopped from outside: its terminal put back meanwhile,
                    // passing keys through again when it continues.
                    func raw() -> Bool {
                        var t = termios()
                        return tcgetattr(pty.slave, &t) == 0 && t.c_lflag & tcflag_t(ICANON) == 0
                    }
                    kill(pid, SIGTSTP)
                    #expect(within(30) { Sys.procStatFields("/proc/\(pid)/stat")?.first == "T" }, "lmctl stopped")
                    #expect(!raw(), "its terminal put back while it is stopped")
                    kill(pid, SIGCONT)
                    #expect(within(30) { raw() }, "passing keys through again")
                }
                try Terminal.setWindow(pty.master, TerminalWindow(rows: 44, cols: 88))
                kill(pid, SIGWINCH)  // (lmctl is not the terminal's foreground here)
                usleep(100_000)
                #expect(write(pty.master, "hi\r", 3) == 3)
                #expect(readTerminal(pty.master, &shown) { $0.contains("got:hi") }, "\(shown.debugDescription)")
                #expect(shown.contains("44 88") && shown.contains("term:screen"), "\(shown.debugDescription)")
                let status: LmctfySystem.ExitStatus?
                if ending == "exit" {
                    // Once the sleep runs: a ^C typed between the echo and
                    // its fork reached the shell alone, which (dash, `sh
                    // -c`) catches SIGINT and went on to sleep 100 s (1 run
                    // in 10; the CI's ASan run failed on it).
                    #expect(within(30) {
                        let pids = (try? client.call(AgentMethods.listPids, ListPidsRequest(name: name, recursive: true)).pids) ?? []
                        return pids.contains { ((try? Sys.readFile("/proc/\($0)/comm")) ?? "").hasPrefix("sleep") }
                    }, "the command's sleep started")
                    #expect(write(pty.master, "\u{3}", 1) == 1)  // ^C: the sleep's, not lmctl's
                    status = TestProcess.waitForExit(pid)
                    #expect(status == .exited(128 + SIGINT), "\(String(describing: status))")
                } else {
                    kill(pid, SIGTERM)
                    status = TestProcess.waitForExit(pid)
                    #expect(status == .signaled(SIGTERM), "\(String(describing: status))")
                }
                var after = termios()
                #expect(tcgetattr(pty.slave, &after) == 0 && after.c_lflag == before.c_lflag && after.c_iflag == before.c_iflag
                        && after.c_oflag == before.c_oflag, "\(ending): lmctl's terminal put back")
                #expect(within(30) { (try? client.call(AgentMethods.listPids, ListPidsRequest(name: name, recursive: true)).pids.isEmpty) == true },
                        "\(ending): the command stopped")
            }
            // Its output on a terminal, its input ended at once (/dev/null):
            // a SIGTERM still ends lmctl (the signals it watches on the
            // terminal's behalf were left blocked once no input could go).
            let pty = try Terminal.openPseudoTerminal()
            defer { close(pty.master); close(pty.slave) }
            let devNull = open("/dev/null", O_RDONLY | O_CLOEXEC)
            defer { close(devNull) }
            let pid = try TestProcess.spawnOnTerminal(lmctl + ["run", "-t", name, "/bin/sh", "-c", "echo started; sleep 100"], pty.slave, stdin: devNull)
            defer { TestProcess.end(pid) }
            var shown = ""
            #expect(readTerminal(pty.master, &shown) { $0.contains("started") }, "\(shown.debugDescription)")
            usleep(100_000)
            kill(pid, SIGTERM)
            let status = TestProcess.waitForExit(pid)
            #expect(status == .signaled(SIGTERM), "\(String(describing: status))")
            #expect(within(30) { (try? client.call(AgentMethods.listPids, ListPidsRequest(name: name, recursive: true)).pids.isEmpty) == true },
                    "the command stopped")
        }
    }

    /// A terminal is for a foreground Run with its output attached, on a
    /// version 5 connection, of a size within range: anything else is
    /// refused before anything runs.
    @Test func aTerminalIsRefusedWhereItCannotWork() throws {
        try withClient("tty_refused") { socket, name, client in
            _ = try client.call(AgentMethods.create, CreateRequest(name: name, spec: memory))
            let marker = "/tmp/\(name.dropFirst())-ran"
            defer { _ = unlink(marker) }
            let argv = ["/bin/sh", "-c", "touch \(marker)"]
            for (request, why) in [
                (RunRequest(name: name, argv: argv, detached: true, tty: true), "foreground"),
                (RunRequest(name: name, argv: argv, tty: true), "attach_output"),
                (RunRequest(name: name, argv: argv, attachOutput: true, window: TerminalSize(rows: 24, cols: 80)), "give tty"),
                (RunRequest(name: name, argv: argv, attachOutput: true, tty: true, window: TerminalSize(rows: 0, cols: 80)), "65535"),
                (RunRequest(name: name, argv: argv, attachOutput: true, tty: true, term: "xterm; rm -rf /"), "letters"),
                (RunRequest(name: name, argv: argv, attachOutput: true, tty: true, term: ""), "letters"),
                (RunRequest(name: name, argv: argv, attachOutput: true, term: "xterm"), "give tty"),
                (RunRequest(name: name, argv: argv, attachOutput: true, modes: [TerminalMode(opcode: 42, value: 1)]), "give tty"),
                (RunRequest(name: name, argv: argv, attachOutput: true, tty: true, modes: [TerminalMode(opcode: 160, value: 1)]), "1 to 159"),
                (RunRequest(name: name, argv: argv, attachOutput: true, tty: true, modes: [TerminalMode(value: 1)]), "1 to 159"),
                (RunRequest(name: name, argv: argv, attachOutput: true, tty: true, modes: [TerminalMode(opcode: 42, value: 2)]), "0 or 1"),
                (RunRequest(name: name, argv: argv, attachOutput: true, tty: true, modes: [TerminalMode(opcode: 3, value: 256)]), "0 to 255"),
                (RunRequest(name: name, argv: argv, attachOutput: true, tty: true,
                            modes: Array(repeating: TerminalMode(opcode: 42, value: 1), count: 65)), "at most 64"),
            ] {
                var refused: LmctfyError?
                do {
                    try client.stream(AgentMethods.run, request) { (_: RunResponse) in true }
                } catch { refused = error as? LmctfyError }
                #expect(refused?.code == .invalidArgument && refused?.message.contains(why) == true, "\(String(describing: refused))")
            }
            let old = try RawLink(fd: try RpcSocket.connectUnix(path: socket),
                                  Session(dialler: .peerCredentials, name: "t", offering: 1...4, now: MonotonicClock.milliseconds()))
            #expect(old.session.peer?.version == 4)
            old.open("Run", try RunRequest(name: name, argv: argv, attachOutput: true, tty: true).serializedBytes())
            old.pump { !old.statuses.isEmpty }
            #expect(old.statuses.first?.code == .invalidArgument && old.responses.isEmpty, "\(old.statuses)")
            #expect(access(marker, F_OK) != 0, "nothing ran")
        }
    }
}

/// Whether a pseudo-terminal opens on this machine.
private let pseudoTerminalsWork: Bool = {
    guard let pty = try? Terminal.openPseudoTerminal() else { return false }
    close(pty.master)
    close(pty.slave)
    return true
}()

/// Where the machine has no pseudo-terminals (the v2 guest: /dev/ptmx
/// without devpts mounted), a Run on a terminal is refused saying so, before the
/// command starts; on a machine that has them this cannot be shown.
@Suite(.enabled(if: RealCgroups.available, "\(RealCgroups.unavailableReason ?? "")"),
       .enabled(if: !pseudoTerminalsWork, "pseudo-terminals work here: their absence cannot be shown (it is in the v2 guest, without devpts)"))
struct NoPseudoTerminalIntegrationTests {
    @Test func aTerminalWithoutDevptsIsAFailedPreconditionAndNothingRuns() throws {
        try withClient("notty") { _, name, client in
            _ = try client.call(AgentMethods.create, CreateRequest(name: name, spec: memory))
            let marker = "/tmp/\(name.dropFirst())-ran"
            defer { _ = unlink(marker) }
            var refused: LmctfyError?
            var responses = 0
            do {
                try client.stream(AgentMethods.run, RunRequest(name: name, argv: ["/bin/sh", "-c", "touch \(marker)"], attachOutput: true, tty: true)) {
                    (_: RunResponse) in
                    responses += 1
                    return true
                }
            } catch { refused = error as? LmctfyError }
            #expect(refused?.code == .failedPrecondition && refused?.message.contains("no pseudo-terminals") == true, "\(String(describing: refused))")
            #expect(responses == 0 && access(marker, F_OK) != 0, "nothing ran")
        }
    }
}
