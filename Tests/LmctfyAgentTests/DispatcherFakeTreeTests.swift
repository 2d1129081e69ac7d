// The agent's dispatcher and method table without root: a Dispatcher over a
// LocalBackend on a fake v1 cgroup tree (freezer only) and a fake /proc, in
// which the agent is in /agent. Every method's decoding, role refusal,
// unknown methods, malformed payloads, status codes of the lifecycle calls
// and the events they record. The real kernel is AgentIntegrationTests'.
//
// What a fake tree cannot show: a destroy that removes the directory (rmdir
// of a directory holding regular files fails, where cgroupfs allows it), OOM
// and threshold events (no kernel behind the eventfd), limits enforced.
import Glibc
import Lmctfy
@testable import LmctfyAgent
@testable import LmctfyEvents
import LmctlCommands
import LmctfyProto
import LmctfyRPC
import LmctfySystem
import LmctfyTestSupport
import Testing

/// A fake machine and a dispatcher onto it.
final class FakeAgentMachine: @unchecked Sendable {
    let tree: FakeCgroupTree
    let dispatcher: Dispatcher
    /// What Init was asked to do, in order.
    let initSpecs = Mutexed<[InitSpec]>([])
    /// The pid whose container is the agent's (nil names, Detect without pid).
    static let agentPid: pid_t = 4242

    /// `scope`: the part of the tree the backend serves (root_container).
    init(journal: RequestJournal? = nil, scope: ContainerScope = .machine) throws {
        tree = try FakeCgroupTree(.v1, controllers: [.freezer])
        try Sys.mkdir(tree.root + "/proc")
        try tree.seed("proc", ["self"], files: ["cgroup": "7:freezer:/agent\n"])
        try tree.seed("proc", ["\(Self.agentPid)"], files: ["cgroup": "7:freezer:/agent\n"])
        try tree.seed("proc", ["777"], files: ["cgroup": "7:freezer:/agent/busy\n"])
        // Acting as cgroupfs where the kernel acts by itself (a freeze shows
        // in freezer.self_freezing, as a resume looks at).
        let kernel = try FakeCgroupKernel(tree)
        let api = try ContainerApi(mounts: tree.mounts(faults: FaultPlan(failAt: 0, errno: 0, filesystem: kernel)), procRoot: tree.root + "/proc")
        let specs = initSpecs
        let backend = LocalBackend(api: api, callerPid: Self.agentPid, scope: scope,
                                   foreground: LocalBackend.spawnAndWait(stdio: .devNull),
                                   initMachine: { spec throws(LmctfyError) in specs.locked { $0.append(spec) } })
        dispatcher = Dispatcher(backend: backend, cgroupVersion: 1, events: EventLog(bootId: "fakeboot"), agentVersion: "test",
                                journal: journal)
        try container(["agent"])
        try container(["agent", "busy"], procs: "777\n", tasks: "777\n778\n")
        try container(["agent", "busy", "sub"])
    }

    /// A container directory with the files cgroupfs would have.
    func container(_ segments: [String], procs: String = "", tasks: String = "") throws {
        try tree.seed("freezer", segments, files: ["cgroup.procs": procs, "tasks": tasks, "freezer.state": "THAWED\n", "freezer.self_freezing": "0\n"])
        try tree.dir("freezer", segments).markAsLmctfys(complete: true)
    }

    func exists(_ segments: String...) -> Bool { Sys.isDirectory(tree.root + "/freezer/" + segments.joined(separator: "/")) }

    /// One call by name with raw bytes: its status and every response.
    func raw(_ method: String, _ payload: [UInt8], role: AgentRole = .agentRoleAdmin,
             cancelled: Bool = false) -> (CallStatus, [[UInt8]]) {
        let out = Mutexed<[[UInt8]]>([])
        let context = CallContext { bytes in out.locked { $0.append(bytes) } }
        if cancelled { context.cancel() }
        let status = dispatcher.handle(method: method, payload: payload, role: role, context: context)
        // Those kept for the status (`emitLast`) go last, as the agent sends them.
        return (status, out.locked { $0 } + context.takeResponses())
    }

    /// One typed call of the table.
    func call<Req, Resp>(_ m: AgentMethod<Req, Resp>, _ request: Req, role: AgentRole = .agentRoleAdmin,
                         cancelled: Bool = false) throws -> (CallStatus, [Resp]) {
        let (status, replies) = raw(m.name, try request.serializedBytes(), role: role, cancelled: cancelled)
        return (status, try replies.map { try Resp(serializedBytes: $0) })
    }

    /// The status code of one typed call.
    func code<Req, Resp>(_ m: AgentMethod<Req, Resp>, _ request: Req, role: AgentRole = .agentRoleAdmin) throws -> StatusCode {
        try call(m, request, role: role).0.code
    }

    /// Everything the event log holds (bootId is ours: no gap).
    var events: [ContainerEvent] { dispatcher.events.since(bootId: "fakeboot", after: 0) { _ in true }.0 }
}

@Suite struct DispatcherFakeTreeTests {
    // MARK: The table

    /// An empty file decodes as an empty snapshot, and text format parses
    /// "" too: without a format_version it is refused (3), where it made a
    /// container with an empty spec. A snapshot an agent wrote has one.
    @Test func aSnapshotWithoutItsFormatIsRefused() throws {
        #expect { _ = try Dispatcher.fit(ContainerSnapshot(), name: "/x") } throws: {
            ($0 as? LmctfyError)?.code == .invalidArgument && ($0 as? LmctfyError)?.message.contains("no format_version") == true
        }
        #expect { _ = try Dispatcher.fit(ContainerSnapshot(formatVersion: 0, name: "/x"), name: nil) } throws: {
            ($0 as? LmctfyError)?.code == .invalidArgument
        }
        let (name, _) = try Dispatcher.fit(ContainerSnapshot(formatVersion: SnapshotStore.formatVersion, name: "/a", spec: ContainerSpec()), name: nil)
        #expect(name == "/a")
    }

    @Test func everyMethodOfTheTableHasAHandlerAndNothingElseHasOne() {
        #expect(Dispatcher.handledMethods == Set(AgentMethods.all.map(\.name)))
    }

    @Test func schedulingComesFromTheTable() {
        for m in AgentMethods.all { #expect(Agent.scheduling(of: Dispatcher.route(m.name)) == m.scheduling, "\(m.name)") }
        #expect(Agent.scheduling(of: Dispatcher.route(AgentMethods.ping.name)) == .loop)
        #expect(Agent.scheduling(of: Dispatcher.route(AgentMethods.run.name)) == .ownThread)
        #expect(Agent.scheduling(of: Dispatcher.route(AgentMethods.notify.name)) == .ownThread)
        #expect(Agent.scheduling(of: Dispatcher.route("NoSuchMethod")) == .pool)
    }

    @Test func rolesComeFromTheTable() throws {
        let machine = try FakeAgentMachine()
        for m in AgentMethods.all {
            // A malformed payload: reaching decoding (3) means the role passed.
            let asReader = machine.raw(m.name, [0xFF], role: .agentRoleReader).0
            if m.role == .admin {
                #expect(asReader == CallStatus(.permissionDenied, "Method \(m.name) needs the admin role"))
            } else {
                #expect(asReader.code == .invalidArgument, "\(m.name): \(asReader)")
            }
            #expect(machine.raw(m.name, [0xFF], role: .agentRoleUnspecified).0.code == .permissionDenied, "\(m.name)")
            #expect(machine.raw(m.name, [0xFF], role: .agentRoleAdmin).0.code == .invalidArgument, "\(m.name)")
        }
        #expect(machine.events.isEmpty)
    }

    @Test func unknownMethodsAreUnimplementedWhateverTheRole() throws {
        let machine = try FakeAgentMachine()
        for role in AgentRole.allCases {
            for method in ["Frobnicate", "create", "", "Ping "] {
                let (status, replies) = machine.raw(method, [], role: role)
                #expect(status == CallStatus(.unimplemented, "Unknown method \"\(method)\""))
                #expect(replies.isEmpty)
            }
        }
    }

    @Test func malformedPayloadsAreInvalidArgumentNamingTheMethod() throws {
        let machine = try FakeAgentMachine()
        // A truncated varint, and a length-delimited field longer than the payload.
        for payload: [UInt8] in [[0xFF], [0x0A, 0x05, 0x41]] {
            for m in AgentMethods.all {
                let (status, replies) = machine.raw(m.name, payload)
                #expect(status.code == .invalidArgument, "\(m.name): \(status)")
                #expect(status.message.hasPrefix("Malformed \(m.name) request"), "\(status.message)")
                #expect(replies.isEmpty)
            }
        }
        #expect(machine.events.isEmpty)
    }

    @Test func requestsWithoutAContainerNameAreInvalidArgument() throws {
        let machine = try FakeAgentMachine()
        let refusal = CallStatus(.invalidArgument, "The request names no container")
        #expect(try machine.call(AgentMethods.create, CreateRequest()).0 == refusal)
        #expect(try machine.call(AgentMethods.destroy, DestroyRequest()).0 == refusal)
        #expect(try machine.call(AgentMethods.update, UpdateRequest(policy: .updateDiff)).0 == refusal)
        #expect(try machine.call(AgentMethods.run, RunRequest(argv: ["/bin/true"])).0 == refusal)
        #expect(try machine.call(AgentMethods.enter, EnterRequest(tids: [1])).0 == refusal)
        #expect(try machine.call(AgentMethods.killAll, KillAllRequest()).0 == refusal)
        #expect(try machine.call(AgentMethods.pause, PauseRequest()).0 == refusal)
        #expect(try machine.call(AgentMethods.resume, ResumeRequest()).0 == refusal)
        #expect(try machine.call(AgentMethods.notify, NotifyRequest(spec: EventSpec(containerEmpty: .init()))).0 == refusal)
        #expect(machine.events.isEmpty)
    }

    // MARK: Lifecycle and events

    @Test func createResolvesAgainstTheAgentsContainerAndRecordsTheAbsoluteName() throws {
        let machine = try FakeAgentMachine()
        let (status, replies) = try machine.call(AgentMethods.create, CreateRequest(name: "web"))
        #expect(status == .ok)
        #expect(replies == [CreateResponse()])
        #expect(machine.exists("agent", "web"))
        #expect(machine.events.map(\.container) == ["/agent/web"])
        #expect(machine.events.map(\.kind) == [.containerEventCreated])
        #expect(machine.events.map(\.sequence) == [1])
        #expect(machine.events.map(\.bootId) == ["fakeboot"])

        #expect(try machine.code(AgentMethods.create, CreateRequest(name: "/agent/web")) == .alreadyExists)
        #expect(try machine.code(AgentMethods.create, CreateRequest(name: "/no/such")) == .failedPrecondition)  // as the original
        #expect(try machine.code(AgentMethods.create, CreateRequest(name: "/x", spec: ContainerSpec(childrenLimit: 3))) == .unimplemented)
        #expect(try machine.code(AgentMethods.create, CreateRequest(name: "/" + String(repeating: "a", count: 256))) == .invalidArgument)
        #expect(machine.events.count == 1, "failed calls record nothing")
    }

    @Test func destroyStatusCodesAndItsEvent() throws {
        let machine = try FakeAgentMachine()
        #expect(try machine.code(AgentMethods.destroy, DestroyRequest(name: "/")) == .failedPrecondition)     // D7
        #expect(try machine.code(AgentMethods.destroy, DestroyRequest(name: "/", force: true)) == .failedPrecondition)
        #expect(try machine.code(AgentMethods.destroy, DestroyRequest(name: "/missing")) == .notFound)
        let busy = try machine.call(AgentMethods.destroy, DestroyRequest(name: "busy")).0
        #expect(busy == CallStatus(.failedPrecondition, "Subcontainers found in \"/agent/busy\"; use -f to destroy them too"))
        let procs = try machine.call(AgentMethods.destroy, DestroyRequest(name: "busy/sub")).0
        #expect(procs.code == .ok || procs.code == .failedPrecondition)
        #expect(machine.events.allSatisfy { $0.kind == .containerEventDestroyed && $0.container == "/agent/busy/sub" })
        // A container whose task files are gone counts as already destroyed
        // (destroy -f of one the kernel removed under us): OK, and recorded
        // under the name the backend resolved.
        try Sys.mkdir(machine.tree.root + "/freezer/agent/gone")
        try machine.tree.dir("freezer", ["agent", "gone"]).markAsLmctfys(complete: true)
        let (status, replies) = try machine.call(AgentMethods.destroy, DestroyRequest(name: "gone", force: true))
        #expect(status == .ok)
        #expect(replies == [DestroyResponse()])
        #expect(machine.events.last?.container == "/agent/gone")
        #expect(machine.events.last?.kind == .containerEventDestroyed)
    }

    /// With the inventory following the machine (a listing applied, as the
    /// watcher's first is), the agent's own create and destroy record what
    /// another lmctfy did since the watcher last looked: a create of a name
    /// still known was destroyed behind its back (DESTROYED first, for what
    /// was below it too); a destroy that takes a container never seen
    /// records its CREATED first. A subscriber heard CREATED twice, or
    /// DESTROYED of a container never CREATED (the concurrency probe:
    /// lmctl and lmctfy on one tree). Without a watcher nothing changes.
    @Test func theAgentsChangesRecordWhatAnotherLmctfyDidSinceTheWatcherLooked() throws {
        let machine = try FakeAgentMachine()
        let inventory = machine.dispatcher.inventory
        let since = inventory.listingStarts()
        inventory.reconcile(["/agent": false, "/agent/busy": false, "/agent/busy/sub": false,
                             "/agent/stale": false, "/agent/stale/kid": false], since: since)
        func tail(_ n: Int) -> [String] {
            machine.events.suffix(n).map { "\($0.kind == .containerEventCreated ? "CREATED" : $0.kind == .containerEventDestroyed ? "DESTROYED" : "?") \($0.container ?? "")" }
        }
        // Known, but gone from the tree (another lmctfy's destroy).
        #expect(try machine.code(AgentMethods.create, CreateRequest(name: "stale")) == .ok)
        #expect(tail(3) == ["DESTROYED /agent/stale/kid", "DESTROYED /agent/stale", "CREATED /agent/stale"], "\(tail(3))")
        #expect(inventory.knows("/agent/stale") && !inventory.knows("/agent/stale/kid"))
        // Made by another lmctfy, never seen by the watcher; and one the
        // watcher saw that another lmctfy destroyed since.
        try machine.container(["agent", "stale", "new"])
        let since2 = inventory.listingStarts()
        inventory.reconcile(["/agent": false, "/agent/busy": false, "/agent/busy/sub": false,
                             "/agent/stale": false, "/agent/stale/old": false], since: since2)
        #expect(tail(1) == ["CREATED /agent/stale/old"])
        #expect(try machine.code(AgentMethods.destroy, DestroyRequest(name: "stale", force: true)) == .ok)
        #expect(tail(4) == ["DESTROYED /agent/stale/old", "CREATED /agent/stale/new", "DESTROYED /agent/stale/new", "DESTROYED /agent/stale"],
                "\(tail(4))")
        // Paused (or resumed) through the agent before the watcher saw it:
        // CREATED first, then known (its DESTROYED then follows a CREATED).
        try machine.container(["agent", "unseen"])
        #expect(try machine.code(AgentMethods.pause, PauseRequest(name: "unseen")) == .ok)
        #expect(tail(2) == ["CREATED /agent/unseen", "? /agent/unseen"], "\(tail(2))")
        #expect(machine.events.last?.kind == .containerEventFreezer)
        #expect(try machine.code(AgentMethods.resume, ResumeRequest(name: "unseen")) == .ok)
        #expect(machine.events.filter { $0.container == "/agent/unseen" && $0.kind == .containerEventCreated }.count == 1)
        // A plain create and destroy record their own event only.
        let before = machine.events.count
        #expect(try machine.code(AgentMethods.create, CreateRequest(name: "plain")) == .ok)
        #expect(try machine.code(AgentMethods.destroy, DestroyRequest(name: "plain")) == .ok)
        #expect(machine.events.count == before + 2)
        #expect(tail(2) == ["CREATED /agent/plain", "DESTROYED /agent/plain"], "\(tail(2))")
    }

    @Test func destroyRefusesProcessesAndTouristThreads() throws {
        let machine = try FakeAgentMachine()
        try machine.container(["agent", "procs"], procs: "777\n", tasks: "777\n")
        try machine.container(["agent", "threads"], tasks: "778\n")
        #expect(try machine.call(AgentMethods.destroy, DestroyRequest(name: "procs")).0
            == CallStatus(.failedPrecondition, "Processes found in \"/agent/procs\"; use -f to kill them"))
        #expect(try machine.call(AgentMethods.destroy, DestroyRequest(name: "threads")).0
            == CallStatus(.failedPrecondition, "Tourist threads found in \"/agent/threads\"; use -f to kill them"))
        #expect(machine.events.isEmpty)
    }

    /// A freezer-only container's spec has nothing an update can change:
    /// the updates succeed and record no UPDATED (a real one records its
    /// absolute name: SubscribeTests.callsThatChangeNothingRecordNoEvent).
    @Test func updateNeedsAPolicyAndOneThatChangesNothingRecordsNothing() throws {
        let machine = try FakeAgentMachine()
        #expect(try machine.call(AgentMethods.update, UpdateRequest(name: "busy")).0
            == CallStatus(.invalidArgument, "Update needs a policy (UPDATE_DIFF or UPDATE_REPLACE)"))
        #expect(try machine.code(AgentMethods.update, UpdateRequest(name: "/missing", policy: .updateDiff)) == .notFound)
        let (status, replies) = try machine.call(AgentMethods.update, UpdateRequest(name: "busy", spec: ContainerSpec(), policy: .updateDiff))
        #expect(status == .ok)
        #expect(replies == [UpdateResponse()])
        #expect(try machine.code(AgentMethods.update, UpdateRequest(name: "/agent/busy", policy: .updateReplace)) == .ok)
        #expect(machine.events.isEmpty)
    }

    @Test func pauseAndResumeRecordTheFreezerState() throws {
        let machine = try FakeAgentMachine()
        var (status, _) = try machine.call(AgentMethods.pause, PauseRequest(name: "busy"))
        #expect(status == .ok)
        #expect(try machine.tree.contents("freezer", ["agent", "busy"], "freezer.state").hasPrefix("FROZEN"))
        let (resumed, replies) = try machine.call(AgentMethods.resume, ResumeRequest(name: "/agent/busy"))
        #expect(resumed == .ok)
        #expect(replies == [ResumeResponse()])
        #expect(try machine.tree.contents("freezer", ["agent", "busy"], "freezer.state").hasPrefix("THAWED"))
        #expect(machine.events.map(\.container) == ["/agent/busy", "/agent/busy"])
        #expect(machine.events.map(\.kind) == [.containerEventFreezer, .containerEventFreezer])
        #expect(machine.events.map(\.frozen) == [true, false])
        (status, _) = try machine.call(AgentMethods.pause, PauseRequest(name: "/"))
        #expect(status.code == .failedPrecondition)                                             // D7
        #expect(try machine.code(AgentMethods.pause, PauseRequest(name: "/missing")) == .notFound)
        #expect(try machine.code(AgentMethods.resume, ResumeRequest(name: "/missing")) == .notFound)
        #expect(machine.events.count == 2)
    }

    // MARK: Reading

    /// ListContainers' pages: sorted names after the token (which need
    /// not be a name still there), at most the size and 1 MiB of names; no
    /// token and no size: everything, as before paging.
    @Test func listContainersPages() {
        let names = ["/a", "/a/b", "/b", "/c", "/d"]
        #expect(Dispatcher.page(names, after: nil, size: nil) == (names, nil))
        #expect(Dispatcher.page(names, after: nil, size: 2) == (["/a", "/a/b"], "/a/b"))
        #expect(Dispatcher.page(names, after: "/a/b", size: 2) == (["/b", "/c"], "/c"))
        #expect(Dispatcher.page(names, after: "/c", size: 2) == (["/d"], nil))
        #expect(Dispatcher.page(names, after: "/bb", size: 0) == (["/c", "/d"], nil), "a token no longer there")
        #expect(Dispatcher.page(names, after: "/d", size: 0) == ([], nil))
        #expect(Dispatcher.page([], after: nil, size: 0) == ([], nil))
        // 1 MiB of names a page at most (one name at least).
        let long = (0..<1000).map { "/" + ($0 < 10 ? "00" : $0 < 100 ? "0" : "") + String($0) + String(repeating: "x", count: 2000) }
        var token: String?
        var listed: [String] = []
        var pages = 0
        repeat {
            let (page, next) = Dispatcher.page(long, after: token, size: 0)
            #expect(page.reduce(0) { $0 + $1.utf8.count } <= Dispatcher.pageBytes)
            listed += page
            token = next
            pages += 1
        } while token != nil && pages < 100
        #expect(listed == long && pages == 2, "\(pages) pages")
    }

    @Test func specListsAndDetectAnswerFromTheTree() throws {
        let machine = try FakeAgentMachine()
        var (status, specs) = try machine.call(AgentMethods.spec, SpecRequest(name: "busy"))
        #expect(status == .ok && specs.count == 1)
        #expect(try machine.code(AgentMethods.spec, SpecRequest(name: "/missing")) == .notFound)
        (status, specs) = try machine.call(AgentMethods.spec, SpecRequest(), role: .agentRoleReader)
        #expect(status == .ok && specs.count == 1, "no name: the agent's own container")

        let (listed, lists) = try machine.call(AgentMethods.listContainers, ListContainersRequest(name: "/", recursive: true),
                                               role: .agentRoleReader)
        #expect(listed == .ok)
        #expect(lists.first?.names == ["/agent", "/agent/busy", "/agent/busy/sub"])
        #expect(try machine.call(AgentMethods.listContainers, ListContainersRequest()).1.first?.names == ["/agent/busy"])
        #expect(try machine.code(AgentMethods.listContainers, ListContainersRequest(name: "/missing")) == .notFound)
        // A page at a time, as lmctl asks: the same names, in order.
        var pages: [[String]] = []
        let all = try RemoteBackend.listAll(ListContainersRequest(name: "/", recursive: true)) { (r: ListContainersRequest) throws(LmctfyError) in
            var asked = r
            asked.pageSize = 1
            let page: ListContainersResponse
            do { page = try machine.call(AgentMethods.listContainers, asked).1.first ?? ListContainersResponse() } catch {
                throw LmctfyError.internalError("\(error)")
            }
            pages.append(page.names)
            #expect(page.total == 3)
            return page
        }
        #expect(all.names == ["/agent", "/agent/busy", "/agent/busy/sub"] && pages.count == 3, "\(pages)")

        #expect(try machine.call(AgentMethods.listPids, ListPidsRequest(name: "busy")).1.first?.pids == [777])
        #expect(try machine.call(AgentMethods.listTids, ListTidsRequest(name: "busy")).1.first?.tids == [777, 778])
        #expect(try machine.call(AgentMethods.listPids, ListPidsRequest(name: "/agent", recursive: true)).1.first?.pids == [777])

        #expect(try machine.call(AgentMethods.detect, DetectRequest(pid: 777)).1.first?.name == "/agent/busy")
        #expect(try machine.call(AgentMethods.detect, DetectRequest()).1.first?.name == "/agent")
        #expect(try machine.code(AgentMethods.detect, DetectRequest(pid: 999_999)) != .ok)
        #expect(machine.events.isEmpty, "reading records nothing")
    }

    @Test func statsOfAMissingContainerIsNotFound() throws {
        let machine = try FakeAgentMachine()
        #expect(try machine.code(AgentMethods.stats, StatsRequest(name: "/missing", kind: .statsFull)) == .notFound)
        #expect(try machine.code(AgentMethods.stats, StatsRequest(name: "/missing")) == .notFound)
    }

    @Test func machineInfoPingAndInit() throws {
        let machine = try FakeAgentMachine()
        let info = try #require(try machine.call(AgentMethods.machineInfo, MachineInfoRequest(), role: .agentRoleReader).1.first)
        #expect(info.cgroupVersion == 1)
        #expect(info.agentVersion == "test")
        #expect(info.bootId == "fakeboot")
        #expect(try machine.call(AgentMethods.ping, PingRequest(data: [1, 2, 3]), role: .agentRoleReader).1 == [PingResponse(data: [1, 2, 3])])
        #expect(try machine.call(AgentMethods.ping, PingRequest()).1 == [PingResponse(data: [])])
        let spec = InitSpec(cgroupMount: [CgroupMount(mountPath: "/x", hierarchy: [.cgroupCpu])])
        let (status, replies) = try machine.call(AgentMethods.initMachine, InitRequest(spec: spec))
        #expect(status == .ok)
        #expect(replies == [InitResponse()])
        #expect(machine.initSpecs.locked { $0 } == [spec])
    }

    @Test func enterAndKillAllStatusCodes() throws {
        let machine = try FakeAgentMachine()
        #expect(try machine.call(AgentMethods.enter, EnterRequest(name: "busy")).0
            == CallStatus(.invalidArgument, "Enter needs the TIDs to move"))
        #expect(try machine.code(AgentMethods.enter, EnterRequest(name: "/missing", tids: [1])) == .notFound)
        #expect(try machine.code(AgentMethods.killAll, KillAllRequest(name: "/missing")) == .notFound)
        #expect(try machine.code(AgentMethods.killAll, KillAllRequest(name: "/")) == .failedPrecondition)
        let (status, replies) = try machine.call(AgentMethods.killAll, KillAllRequest(name: "busy/sub", recursive: true))
        #expect(status == .ok, "an empty container: nothing to kill")
        #expect(replies == [KillAllResponse()])
    }

    // MARK: Run and Notify

    @Test func runChecksItsRequest() throws {
        let machine = try FakeAgentMachine()
        #expect(try machine.call(AgentMethods.run, RunRequest(name: "busy")).0 == CallStatus(.invalidArgument, "Run needs a command"))
        #expect(try machine.code(AgentMethods.run, RunRequest(name: "/missing", argv: ["/bin/true"])) == .notFound)
        #expect(try machine.code(AgentMethods.run, RunRequest(name: "busy", argv: ["/bin/true"]), role: .agentRoleReader) == .permissionDenied)
    }

    @Test func attachedRunReportsStartedThenHowItEnded() throws {
        let machine = try FakeAgentMachine()
        try machine.container(["agent", "job"])
        var (status, replies) = try machine.call(AgentMethods.run, RunRequest(name: "job", argv: ["/bin/sh", "-c", "echo hidden; exit 3"], detached: false))
        #expect(status == .ok)
        #expect(replies.map(\.kind) == [.runStarted, .runExited])
        let pid = try #require(replies.first?.pid)
        #expect(pid > 0 && replies.last?.pid == pid)
        #expect(replies.last?.exitCode == 3 && replies.last?.termSignal == nil)
        // The shim joined the (fake, v1) container before exec ("0": the
        // writer itself, through `tasks`).
        #expect(try machine.tree.contents("freezer", ["agent", "job"], "tasks").hasPrefix("0"))
        (status, replies) = try machine.call(AgentMethods.run, RunRequest(name: "job", argv: ["/bin/sh", "-c", "kill -9 $$"], detached: false))
        #expect(status == .ok)
        #expect(replies.last?.termSignal == 9 && replies.last?.exitCode == nil)
    }

    @Test func detachedRunReportsOnlyThatItStarted() throws {
        let machine = try FakeAgentMachine()
        try machine.container(["agent", "bg"])
        let (status, replies) = try machine.call(AgentMethods.run, RunRequest(name: "bg", argv: ["/bin/true"], detached: true))
        #expect(status == .ok)
        #expect(replies.map(\.kind) == [.runStarted])
        #expect((replies.first?.pid ?? 0) > 0)
    }

    @Test func notifyChecksItsRequest() throws {
        let machine = try FakeAgentMachine()
        #expect(try machine.call(AgentMethods.notify, NotifyRequest(name: "busy")).0 == CallStatus(.invalidArgument, "Notify needs an EventSpec"))
        #expect(try machine.code(AgentMethods.notify, NotifyRequest(name: "/missing", spec: EventSpec(containerEmpty: .init()))) == .notFound)
    }

    /// A change whose caller gave up before a thread took it (a request
    /// read by an agent that was stopped, with the CANCEL behind it) is not
    /// carried out; a read still is.
    @Test func aChangeCancelledBeforeItStartsDoesNothing() throws {
        let machine = try FakeAgentMachine()
        let (status, _) = try machine.call(AgentMethods.create, CreateRequest(name: "late", spec: ContainerSpec()), cancelled: true)
        #expect(status.code == .cancelled && status.message.contains("nothing was done"), "\(status)")
        #expect(!machine.exists("agent", "late"))
        #expect(try machine.code(AgentMethods.create, CreateRequest(name: "late", spec: ContainerSpec())) == .ok)
        #expect(machine.exists("agent", "late"))
        let (read, replies) = try machine.call(AgentMethods.listContainers, ListContainersRequest(name: "/"), cancelled: true)
        #expect(read == .ok && !replies.isEmpty)
    }

    @Test func aCancelledNotifyReplaysWhatWasMissedThenEnds() throws {
        let machine = try FakeAgentMachine()
        #expect(try machine.code(AgentMethods.pause, PauseRequest(name: "busy")) == .ok)
        // Another boot: a gap first, then what the log holds for this container and kind.
        var (status, replies) = try machine.call(
            AgentMethods.notify, NotifyRequest(name: "busy", spec: EventSpec(containerEmpty: .init()), bootId: "otherboot", afterSequence: 0),
            cancelled: true)
        #expect(status == .ok)
        #expect(replies.count == 1)
        #expect(replies.first?.gap?.bootId == "fakeboot")
        #expect(replies.first?.gap?.requestedBootId == "otherboot")
        // This boot and nothing missed: nothing to replay.
        (status, replies) = try machine.call(
            AgentMethods.notify, NotifyRequest(name: "busy", spec: EventSpec(containerEmpty: .init()), bootId: "fakeboot", afterSequence: 1),
            cancelled: true)
        #expect(status == .ok)
        #expect(replies.isEmpty)
        // Beyond the newest event of this boot (2^64-1 stopped the agent):
        // OUT_OF_RANGE, as for Subscribe, with or without the boot id.
        for boot in ["fakeboot", nil] as [String?] {
            (status, replies) = try machine.call(
                AgentMethods.notify, NotifyRequest(name: "busy", spec: EventSpec(containerEmpty: .init()), bootId: boot, afterSequence: .max),
                cancelled: true)
            #expect(status.code == .outOfRange && status.message.contains("beyond the newest event"), "\(status)")
            #expect(replies.isEmpty)
        }
    }

    @Test func notifyStreamsAnEmptyContainerUntilCancelled() throws {
        let machine = try FakeAgentMachine()
        try machine.container(["agent", "emptying"], procs: "777\n", tasks: "777\n")
        let replies = Mutexed<[NotifyResponse]>([])
        let context = CallContext { bytes in
            if let r = try? NotifyResponse(serializedBytes: bytes) { replies.locked { $0.append(r) } }
        }
        let request = try NotifyRequest(name: "emptying", spec: EventSpec(containerEmpty: .init())).serializedBytes()
        let status = Mutexed<CallStatus?>(nil)
        let dispatcher = machine.dispatcher
        let thread = Threads.start {
            let s = dispatcher.handle(method: AgentMethods.notify.name, payload: request, role: .agentRoleReader, context: context)
            status.locked { $0 = s }
        }
        usleep(150_000)
        try Sys.createFile(machine.tree.root + "/freezer/agent/emptying/cgroup.procs", "")
        for _ in 0..<500 where replies.locked({ $0.isEmpty }) { usleep(10_000) }
        context.cancel()
        pthread_join(thread, nil)
        #expect(status.locked { $0 } == .ok, "cancelled: the stream ends OK")
        let events = replies.locked { $0 }.compactMap(\.event)
        #expect(events.count == 1)
        #expect(events.first?.container == "/agent/emptying")
        #expect(events.first?.kind == .containerEventEmpty)
        #expect(machine.events.map(\.kind) == [.containerEventEmpty], "recorded once, in the agent's log")
    }
}
