// root_container (issue #12): an agent that serves one container's subtree
// as if it were the machine. Names in and out are relative to the root, ".."
// never leaves it, the root is refused where "/" is, and the watcher, the
// reconcile and the stats only see what is below it. Two agents on this
// machine with different roots act as two hosts. The mapping itself
// (ContainerScope) and the config are checked without root; a scoped
// dispatcher on a fake tree too; the rest on the real kernel.
import Glibc
import Lmctfy
@testable import LmctfyAgent
import LmctfyProto
import LmctfyRPC
import LmctfySystem
import LmctfyTestSupport
import Testing

/// The status code a throwing call ends with (`.ok` if it returns).
private func code(_ body: () throws -> Void) -> StatusCode? {
    do {
        try body()
        return .ok
    } catch let e as LmctfyError {
        return e.code
    } catch let s as CallStatus {
        return s.code
    } catch {
        return nil
    }
}

private func name(_ path: String) throws -> ContainerName { try ContainerName.resolve(path, relativeTo: .root) }

@Suite struct ContainerScopeTests {
    @Test func namesResolveInsideTheRootAndComeBackRelativeToIt() throws {
        let scope = ContainerScope(root: try name("/r/s"))
        #expect(!scope.isMachine && ContainerScope.machine.isMachine)
        for (raw, machine) in [("/a", "/r/s/a"), ("a", "/r/s/a"), ("a/b/../c", "/r/s/a/c"), ("/", "/r/s"), (".", "/r/s"),
                               ("..", "/r/s"), ("../../..", "/r/s"), ("/../x", "/r/s/x"), ("a/../../../x", "/r/s/x"),
                               ("//a//./b/", "/r/s/a/b")] {
            #expect(try scope.resolve(raw) == name(machine), "\(raw)")
        }
        // /batch is reserved at the machine's top only: inside a root it is a name like any.
        #expect(try scope.resolve("/batch") == name("/r/s/batch"))
        #expect(throws: LmctfyError.self) { try ContainerScope.machine.resolve("/batch") }
        // The segment checks still apply.
        #expect(throws: LmctfyError.self) { try scope.resolve("/a/tasks") }
        #expect(throws: LmctfyError.self) { try scope.resolve("/a b") }
        #expect(throws: LmctfyError.self) { try scope.resolve("") }

        #expect(scope.path(try name("/r/s")) == "/")
        #expect(scope.path(try name("/r/s/a/b")) == "/a/b")
        #expect(scope.path(try name("/r")) == nil)
        #expect(scope.path(try name("/r/sx")) == nil, "a sibling with a common prefix is outside")
        #expect(scope.path(ContainerName.root) == nil)
        #expect(try scope.contains(name("/r/s/a")) && !scope.contains(name("/q")))
        // The machine scope maps nothing.
        #expect(ContainerScope.machine.path(try name("/r/s")) == "/r/s")
        #expect(try ContainerScope.machine.resolve("/a/../b") == name("/b"))
    }

    @Test func aRelativeBaseOutsideTheFloorStartsAtTheFloor() throws {
        let root = try name("/r")
        #expect(try ContainerName.resolve("x", relativeTo: name("/r/a"), within: root) == name("/r/a/x"))
        #expect(try ContainerName.resolve("../../x", relativeTo: name("/r/a"), within: root) == name("/r/x"))
        #expect(try ContainerName.resolve("x", relativeTo: name("/q"), within: root) == name("/r/x"))
        #expect(try ContainerName.resolve("/x", relativeTo: name("/q"), within: root) == name("/r/x"))
    }

    @Test func rootContainerIsAnAbsoluteContainerNameOrAConfigError() throws {
        #expect(try AgentSettings.parse("", source: "test").rootContainer == .root)
        #expect(try AgentSettings.parse("root_container: \"/\"", source: "test").rootContainer == .root)
        #expect(try AgentSettings.parse("root_container: \"/t1/../t2/\"", source: "test").rootContainer == name("/t2"))
        for bad in ["t1", "", "/t 1", "/t1/tasks", "/batch", "/t1/" + String(repeating: "a", count: 256), "/-x"] {
            do {
                _ = try AgentSettings.parse("root_container: \"\(bad)\"", source: "conf.txt")
                Issue.record("root_container \"\(bad)\" was accepted")
            } catch {
                #expect(error.code == .invalidArgument, "\(bad)")
                #expect(error.message.hasPrefix("conf.txt: root_container"), "\(error.message)")
            }
        }
    }
}

/// The dispatcher over a backend scoped to /agent on a fake tree: every
/// name relative to /agent, whatever the call.
@Suite struct ScopedDispatcherFakeTreeTests {
    func machine() throws -> FakeAgentMachine {
        let m = try FakeAgentMachine(scope: ContainerScope(root: try name("/agent")))
        try m.tree.seed("proc", ["999"], files: ["cgroup": "7:freezer:/elsewhere\n"])
        return m
    }

    /// With a request id (lmctl sends one with every change) a refusal is
    /// the journaled outcome, and it named the machine path ("/agent/web").
    @Test func aJournaledRefusalNamesTheContainerAsTheCallerDoes() throws {
        let dir = "/tmp/lmctfy-rootjournal-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try Sys.mkdir(dir, mode: 0o700)
        defer { _ = removeTree(dir) }
        let journal = RequestJournal(directory: dir + "/requests", bootId: "b")
        _ = try journal.open()
        let m = try FakeAgentMachine(journal: journal, scope: ContainerScope(root: try name("/agent")))
        #expect(try m.call(AgentMethods.create, CreateRequest(name: "/web", requestId: "first")).0 == .ok)
        let refused = CallStatus(.alreadyExists, "Can't create existing container \"/web\"")
        #expect(try m.call(AgentMethods.create, CreateRequest(name: "/web", requestId: "second")).0 == refused)
        #expect(try m.call(AgentMethods.create, CreateRequest(name: "/web", requestId: "second")).0 == refused, "its replay")
    }

    /// A cgroup file's path in an error is the one a process in a cgroup
    /// namespace rooted at the root would see: the host's layout above the
    /// root is not named (a probe).
    @Test func aCgroupPathInAnErrorIsGivenBelowTheRoot() throws {
        let m = try machine()
        let mount = m.tree.root + "/freezer"
        let said = m.dispatcher.backend.callerMessage(
            "Failed to read cgroup file: openat2(\(mount)/agent/busy/cgroup.procs): No such file or directory; \(mount)/agent: gone; \(mount)/agentx/y; \(mount)/agent")
        #expect(said == "Failed to read cgroup file: openat2(\(mount)/busy/cgroup.procs): No such file or directory; \(mount): gone; \(mount)/agentx/y; \(mount)",
                "\(said)")
    }

    @Test func namesGoInAndComeOutRelativeToTheRoot() throws {
        let m = try machine()
        #expect(try m.call(AgentMethods.create, CreateRequest(name: "/web")).0 == .ok)
        #expect(try m.call(AgentMethods.create, CreateRequest(name: "web2")).0 == .ok)
        #expect(try m.call(AgentMethods.create, CreateRequest(name: "../../web3")).0 == .ok)
        #expect(m.exists("agent", "web") && m.exists("agent", "web2") && m.exists("agent", "web3"))
        #expect(!m.exists("web") && !m.exists("web3"))
        #expect(m.events.map(\.container) == ["/web", "/web2", "/web3"])
        // A refusal names the container as the caller does (it said
        // "/agent/web": the root_container's path leaked).
        #expect(try m.call(AgentMethods.create, CreateRequest(name: "/web")).0
            == CallStatus(.alreadyExists, "Can't create existing container \"/web\""))

        let all = try m.call(AgentMethods.listContainers, ListContainersRequest(name: "/", recursive: true)).1.first?.names
        #expect(all == ["/busy", "/busy/sub", "/web", "/web2", "/web3"])
        #expect(try m.call(AgentMethods.listContainers, ListContainersRequest(recursive: true)).1.first?.names == all,
                "no name: the root, which plays the agent's own container's part")
        #expect(try m.call(AgentMethods.listContainers, ListContainersRequest(name: "..")).1.first?.names
            == ["/busy", "/web", "/web2", "/web3"])
        #expect(try m.call(AgentMethods.listContainers, ListContainersRequest(name: "busy")).1.first?.names == ["/busy/sub"])

        #expect(try m.call(AgentMethods.detect, DetectRequest(pid: 777)).1.first?.name == "/busy")
        #expect(try m.call(AgentMethods.detect, DetectRequest(pid: FakeAgentMachine.agentPid)).1.first?.name == "/")
        #expect(try m.call(AgentMethods.detect, DetectRequest()).1.first?.name == "/")
        let outside = try m.call(AgentMethods.detect, DetectRequest(pid: 999)).0
        #expect(outside.code == .notFound)
        #expect(outside.message.contains("outside the root container"), "\(outside.message)")
        #expect(!outside.message.contains("elsewhere"), "the container outside is not named")
        // Nor may it enter one of the agent's containers (any task on the
        // machine was moved in, PID 1 too, then killall killed it; the
        // fleet probe); one inside the root may.
        let pulled = try m.call(AgentMethods.enter, EnterRequest(name: "/web", tids: [999])).0
        #expect(pulled.code == .permissionDenied && pulled.message.contains("outside the root container"), "\(pulled)")
        #expect(!pulled.message.contains("elsewhere"))
        #expect(try m.call(AgentMethods.enter, EnterRequest(name: "/web", tids: [777, 999])).0.code == .permissionDenied,
                "none moves when one is outside")
        #expect(try m.call(AgentMethods.detect, DetectRequest(pid: 777)).1.first?.name == "/busy")
        #expect(try m.call(AgentMethods.enter, EnterRequest(name: "/web", tids: [777])).0 == .ok)

        let missing = try m.call(AgentMethods.spec, SpecRequest(name: "/missing")).0
        #expect(missing == CallStatus(.notFound, "Container \"/missing\" does not exist"))
        #expect(try m.call(AgentMethods.destroy, DestroyRequest(name: "busy")).0
            == CallStatus(.failedPrecondition, "Subcontainers found in \"/busy\"; use -f to destroy them too"))
        #expect(try m.call(AgentMethods.pause, PauseRequest(name: "/busy")).0 == .ok)
        #expect(try m.tree.contents("freezer", ["agent", "busy"], "freezer.state").hasPrefix("FROZEN"))
        #expect(m.events.last?.container == "/busy" && m.events.last?.kind == .containerEventFreezer)
    }

    @Test func theRootIsRefusedWhereSlashIs() throws {
        let m = try machine()
        for root in ["/", "..", "/web/../..", "."] {
            #expect(try m.call(AgentMethods.destroy, DestroyRequest(name: root, force: true)).0
                == CallStatus(.failedPrecondition, "Destroying the root container \"/\" is not allowed"), "\(root)")
            #expect(try m.code(AgentMethods.update, UpdateRequest(name: root, policy: .updateDiff)) == .failedPrecondition)
            #expect(try m.code(AgentMethods.killAll, KillAllRequest(name: root, recursive: true)) == .failedPrecondition)
            #expect(try m.code(AgentMethods.pause, PauseRequest(name: root)) == .failedPrecondition)
            #expect(try m.code(AgentMethods.resume, ResumeRequest(name: root)) == .failedPrecondition)
            #expect(try m.code(AgentMethods.create, CreateRequest(name: root)) == .alreadyExists)
        }
        #expect(m.exists("agent", "busy", "sub"), "nothing below the root was touched")
        #expect(m.events.isEmpty)
    }
}

/// Containers made with CL1 to be agents' roots, destroyed (with
/// everything below them) at the end.
private func withRoots<T>(_ labels: [String], _ body: ([ContainerName]) throws -> T) throws -> T {
    let api = try ContainerApi.detect()
    var roots: [ContainerName] = []
    defer { for r in roots { _ = try? api.destroy(r) } }
    for label in labels {
        let n = try name(RealCgroups.uniqueName(label))
        roots.append(n)
        try api.create(n, spec: ContainerSpec(textFormat: "memory { limit: 200000000 }"))
    }
    return try body(roots)
}

/// Waits (up to 10 s) until `socket`'s agent has recorded an event matching `what`.
private func waitForEvent(_ socket: String, _ what: @escaping @Sendable (ContainerEvent) -> Bool) -> Bool {
    for _ in 0..<200 {
        let replay = Subscriber(socket, SubscribeRequest(afterSequence: 0), until: { $0.last?.caughtUp != nil })
        if events(replay.wait().0).contains(where: what) { return true }
        usleep(50_000)
    }
    return false
}

@Suite(.enabled(if: RealCgroups.available, "\(RealCgroups.unavailableReason ?? "")"))
struct RootContainerTests {
    @Test func twoAgentsWithDifferentRootsAreTwoHosts() throws {
        try withRoots(["rootA", "rootB"]) { roots in
            let (rootA, rootB) = (roots[0], roots[1])
            let api = try ContainerApi.detect()
            try withAgent("root_container: \"\(rootA)\" stats_interval_ms: 200") { agentA, socketA in
                try withAgent("root_container: \"\(rootB)\"") { _, socketB in
                    let a = try RpcClient.connect(unixPath: socketA)
                    defer { a.close() }
                    let b = try RpcClient.connect(unixPath: socketB)
                    defer { b.close() }
                    let memory = try ContainerSpec(textFormat: "memory { limit: 100000000 }")

                    // A's subscribers: everything, and "web" (a relative name)
                    // until its CREATED, PAUSE and a STATS sample.
                    let everything = Subscriber(socketA, SubscribeRequest(), until: { rs in
                        let es = events(rs)
                        return es.contains { $0.container == "/web" && $0.kind == .containerEventCreated }
                            && es.contains { $0.container == "/cli" && $0.kind == .containerEventCreated }
                            && es.contains { $0.container == "/web" && $0.kind == .containerEventStats }
                    })
                    let web = Subscriber(socketA, SubscribeRequest(name: "web"), until: { rs in
                        events(rs).contains { $0.kind == .containerEventFreezer }
                    })
                    waitForSubscribers(agentA, 2)

                    _ = try a.call(AgentMethods.create, CreateRequest(name: "/web", spec: memory))
                    #expect(try api.exists(name(rootA.path + "/web")))
                    #expect(try api.get(rootB).subcontainers(recursive: true).isEmpty, "nothing under B's root")
                    _ = try a.call(AgentMethods.pause, PauseRequest(name: "/web"))
                    _ = try a.call(AgentMethods.resume, ResumeRequest(name: "web"))
                    // Behind the agents' backs, with CL1: each watcher reports
                    // only what is below its own root, by its relative name.
                    try api.create(name(rootA.path + "/cli"), spec: ContainerSpec())
                    try api.create(name(rootB.path + "/bee"), spec: ContainerSpec())

                    let (all, allError) = everything.wait()
                    #expect(allError == nil, "\(String(describing: allError))")
                    #expect(events(all).allSatisfy { $0.container == "/web" || $0.container == "/cli" },
                            "\(Set(events(all).compactMap(\.container)))")
                    let (webEvents, webError) = web.wait()
                    #expect(webError == nil, "\(String(describing: webError))")
                    #expect(events(webEvents).map(\.kind) == [.containerEventCreated, .containerEventFreezer])
                    #expect(events(webEvents).allSatisfy { $0.container == "/web" })

                    // Listings: each agent its own, relative names.
                    let listA = try a.call(AgentMethods.listContainers, ListContainersRequest(name: "/", recursive: true)).names
                    #expect(listA == ["/cli", "/web"])
                    #expect(try a.call(AgentMethods.listContainers, ListContainersRequest(recursive: true)).names == listA)
                    #expect(try b.call(AgentMethods.listContainers, ListContainersRequest(name: "/", recursive: true)).names == ["/bee"])
                    #expect(code { _ = try b.call(AgentMethods.spec, SpecRequest(name: "/web")) } == .notFound)

                    // B's log has B's container and nothing of A's; A's nothing of B's.
                    #expect(waitForEvent(socketB) { $0.container == "/bee" && $0.kind == .containerEventCreated })
                    let replayB = Subscriber(socketB, SubscribeRequest(afterSequence: 0), until: { $0.last?.caughtUp != nil })
                    #expect(events(replayB.wait().0).allSatisfy { $0.container == "/bee" })
                    let replayA = Subscriber(socketA, SubscribeRequest(afterSequence: 0), until: { $0.last?.caughtUp != nil })
                    let namesA = Set(events(replayA.wait().0).compactMap(\.container))
                    #expect(namesA == ["/web", "/cli"], "\(namesA)")

                    // Detect: a task in A's /web is "/web" to A, outside B's
                    // root for B; this test process is outside both.
                    var pid: Int32 = 0
                    try a.stream(AgentMethods.run, RunRequest(name: "/web", argv: ["/bin/sleep", "300"], detached: true)) { (r: RunResponse) in
                        pid = r.pid ?? 0
                        return true
                    }
                    #expect(pid > 0)
                    #expect(try a.call(AgentMethods.detect, DetectRequest(pid: pid)).name == "/web")
                    #expect(code { _ = try b.call(AgentMethods.detect, DetectRequest(pid: pid)) } == .notFound)
                    #expect(code { _ = try a.call(AgentMethods.detect, DetectRequest(pid: getpid())) } == .notFound)
                    #expect(try a.call(AgentMethods.detect, DetectRequest()).name == "/")
                    // Enter: B may not take A's task, nor A a task outside both.
                    let outsider = try TestProcess.spawn(["/bin/sleep", "300"])
                    defer { TestProcess.end(outsider) }
                    #expect(code { _ = try b.call(AgentMethods.enter, EnterRequest(name: "/bee", tids: [pid])) } == .permissionDenied)
                    #expect(code { _ = try a.call(AgentMethods.enter, EnterRequest(name: "/cli", tids: [outsider])) } == .permissionDenied)
                    #expect(try api.detect(pid: outsider) == .root && a.call(AgentMethods.detect, DetectRequest(pid: pid)).name == "/web",
                            "nothing moved")
                    _ = try a.call(AgentMethods.enter, EnterRequest(name: "/cli", tids: [pid]))
                    #expect(try a.call(AgentMethods.detect, DetectRequest(pid: pid)).name == "/cli")
                }
            }
        }
    }

    @Test func dotDotNeverLeavesTheRootAndTheRootIsNotDestroyed() throws {
        try withRoots(["rootdots"]) { roots in
            let root = roots[0]
            let api = try ContainerApi.detect()
            try withAgent("root_container: \"\(root)\" reconcile_interval_ms: 0") { _, socket in
                let client = try RpcClient.connect(unixPath: socket)
                defer { client.close() }
                // A top-level name of the machine, asked for from inside the root.
                let top = RealCgroups.uniqueName("escape")
                _ = try client.call(AgentMethods.create, CreateRequest(name: "../../.." + top, spec: ContainerSpec()))
                #expect(try api.exists(name(root.path + top)))
                #expect(try !api.exists(name(top)), "nothing made at the machine's top")
                #expect(try client.call(AgentMethods.listContainers, ListContainersRequest(name: "/..")).names == [top])
                #expect(try client.call(AgentMethods.spec, SpecRequest(name: "..")).spec == api.get(root).spec(),
                        "\"..\" from the root is the root")
                for r in ["/", "..", top + "/../.."] {
                    #expect(code { _ = try client.call(AgentMethods.destroy, DestroyRequest(name: r, force: true)) } == .failedPrecondition)
                }
                #expect(try api.exists(root), "the root is still there")
                #expect(try api.exists(name(root.path + top)), "and so is what is below it")
                _ = try client.call(AgentMethods.destroy, DestroyRequest(name: top, force: true))
                #expect(try !api.exists(name(root.path + top)))
            }
        }
    }

    /// The watcher's OOM (a v1 eventfd, v2 memory.events) is recorded under
    /// the relative name, and Notify for OOM finds the memory owner inside
    /// the root.
    @Test func anOOMBelowTheRootIsReportedByItsRelativeName() throws {
        try withRoots(["rootoom"]) { roots in
            let root = roots[0]
            let api = try ContainerApi.detect()
            try withAgent("root_container: \"\(root)\" reconcile_interval_ms: 0") { agent, socket in
                _ = try api.create(name(root.path + "/hog"), spec: try ContainerSpec(textFormat: "memory { limit: 33554432 }"))
                let inner = try api.create(name(root.path + "/hog/inner"), spec: ContainerSpec())
                #expect(waitForEvent(socket) { $0.container == "/hog/inner" && $0.kind == .containerEventCreated })
                let subscribed = Subscriber(socket, SubscribeRequest(kinds: [.containerEventOom]), until: { !events($0).isEmpty })
                let got = Mutexed<[NotifyResponse]>([])
                let ended = Mutexed<LmctfyError?>(nil)
                let done = Latch()
                Threads.detach {
                    do {
                        let client = try RpcClient.connect(unixPath: socket)
                        defer { client.close() }
                        try client.stream(AgentMethods.notify, NotifyRequest(name: "hog/inner", spec: EventSpec(oom: EventSpec.Oom())),
                                          deadlineMs: 30_000) { (r: NotifyResponse) in
                            got.locked { $0.append(r) }
                            return true
                        }
                    } catch {
                        ended.locked { $0 = error as? LmctfyError }
                    }
                    done.signal()
                }
                waitForSubscribers(agent, 1)
                for _ in 0..<200 where agent.activeCalls == 0 { usleep(10_000) }
                usleep(100_000)
                let pid = try inner.run([testHelperPath, "alloc", "200"])
                for _ in 0..<10_000 where kill(pid, 0) == 0 { usleep(1000) }  // killed by the OOM killer
                let (r, e) = subscribed.wait()
                #expect(e == nil, "\(String(describing: e))")
                #expect(events(r).first?.container == "/hog", "the OOM, by the name below the root")
                for _ in 0..<500 where got.locked({ $0.isEmpty }) { usleep(10_000) }
                let first = got.locked { $0.first?.event }
                #expect(first?.kind == .containerEventOom && first?.container == "/hog", "Notify: the memory owner's OOM")
                let client = try RpcClient.connect(unixPath: socket)
                defer { client.close() }
                _ = try client.call(AgentMethods.destroy, DestroyRequest(name: "/hog", force: true))
                done.wait()
                #expect(ended.locked { $0?.code } == .notFound, "\(String(describing: ended.locked { $0 }))")
            }
        }
    }

    @Test func aMissingRootRefusesToStart() throws {
        let dir = "/tmp/lmctfy-agent-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try Sys.mkdir(dir, mode: 0o755)
        defer { _ = removeTree(dir) }
        let missing = RealCgroups.uniqueName("missing")
        let settings = try AgentSettings.parse(
            "unix_socket_path: \"\(dir)/agent.sock\" log_level: LOG_WARNING state_dir: \"\(dir)/state\" root_container: \"\(missing)\"",
            source: "test")
        let agent = Agent(settings: settings, api: try ContainerApi.detect())
        do {
            try agent.start(handleSignals: false)
            Issue.record("the agent started without its root container")
            _ = agent.stop(graceMs: 1000)
        } catch {
            #expect(error == LmctfyError(.failedPrecondition, "root_container \(missing) does not exist"))
        }
        #expect(!Sys.isDirectory(dir + "/state"), "refused before anything was made")
        #expect(try !ContainerApi.detect().exists(name(missing)), "and the root was not made either")
    }
}
