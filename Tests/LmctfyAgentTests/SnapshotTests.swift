// Snapshots and restart recovery (issue #13): the store on its own (no
// root), then the real agent binary on the real kernel: killed inside a
// snapshot write, restarted after changes made while it was down, and the
// chaos run (several clients, 1,000 operations, the agent SIGKILLed at random
// points and restarted).
import Glibc
import Lmctfy
@testable import LmctfyAgent
import LmctfyEvents
import LmctfyProto
import LmctfyRPC
import LmctfySystem
import LmctfyTestSupport
import LmctlCommands
import Testing

private func scratchDir(_ label: String) throws -> String {
    let dir = "/tmp/lmctfy-snap-\(label)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    try Sys.mkdir(dir, mode: 0o700)
    return dir
}

private func snapshot(_ name: String, limit: Int64 = 1 << 20, frozen: Bool = false) -> ContainerSnapshot {
    ContainerSnapshot(formatVersion: 1, name: name, spec: ContainerSpec(memory: MemorySpec(limit: limit)), frozen: frozen,
                      createdNs: 1, bootId: "b")
}

@Suite struct SnapshotStoreTests {
    @Test func fileNamesAreReversibleAndNeverLeaveTheDirectory() throws {
        for name in ["/a", "/a/b", "/a.b/c-d_e", "/..", "/a/../b", "/%2F", "/x y", "/ü"] {
            let file = SnapshotStore.fileName(name)
            #expect(!file.contains("/") && file != "." && file != ".." && !file.hasPrefix(".tmp-"), "\(name) -> \(file)")
            #expect(SnapshotStore.name(ofFile: file) == name, "\(name) -> \(file)")
        }
        #expect(SnapshotStore.fileName("/a/b") == "%2Fa%2Fb")
        let long = "/" + Array(repeating: String(repeating: "x", count: 60), count: 8).joined(separator: "/")
        let file = SnapshotStore.fileName(long)
        #expect(file.hasPrefix("~") && file.utf8.count == 65 && SnapshotStore.name(ofFile: file) == nil)
        #expect(SnapshotStore.name(ofFile: ".tmp-%2Fa") == nil && SnapshotStore.name(ofFile: "damaged-%2Fa") == nil)
        #expect(SnapshotStore.isFileName("%2Fa%2Fb") && SnapshotStore.isFileName(file))
        #expect(!SnapshotStore.isFileName("%2F../x") && !SnapshotStore.isFileName("..") && !SnapshotStore.isFileName("log.a"))
    }

    @Test func writeLoadRemoveAndLongNames() throws {
        let dir = try scratchDir("store")
        defer { _ = removeTree(dir) }
        let store = SnapshotStore(directory: dir + "/snapshots")
        try store.open()
        let long = "/" + Array(repeating: String(repeating: "y", count: 60), count: 8).joined(separator: "/")
        try store.write(snapshot("/a"))
        try store.write(snapshot("/a/b", frozen: true))
        try store.write(snapshot(long))
        try store.write(snapshot("/a", limit: 2 << 20))
        let (all, damaged) = store.loadAll()
        #expect(damaged.isEmpty)
        #expect(Set(all.keys) == ["/a", "/a/b", long])
        #expect(all["/a"]?.spec?.memory?.limit == 2 << 20 && all["/a/b"]?.frozen == true)
        #expect(store.load("/a/b")?.name == "/a/b")
        try store.remove("/a/b")
        try store.remove("/never")  // nothing there: fine
        #expect(Set(store.loadAll().snapshots.keys) == ["/a", long])
        #expect(!Sys.exists(dir + "/snapshots/%2Fa"), "logged, not yet written to its file")
        #expect(store.flush() == 2, "/a (twice logged, once written) and the long name written; /a/b and /never never had a file")
        #expect(Set(store.loadAll().snapshots.keys) == ["/a", long])
        #expect(!Sys.exists(dir + "/snapshots/%2Fa%2Fb"))
        #expect(SnapshotStore.decodeFile(dir + "/snapshots/%2Fa")?.spec?.memory?.limit == 2 << 20)
        var st = stat()
        #expect(stat(dir + "/snapshots/%2Fa", &st) == 0 && st.st_mode & 0o777 == 0o600)
    }

    @Test func aRemovalUnlinksOnlyAFileThereIs() throws {
        let dir = try scratchDir("removal")
        defer { _ = removeTree(dir) }
        var store = SnapshotStore(directory: dir + "/snapshots")
        try store.open()
        try store.write(snapshot("/kept"))
        try store.write(snapshot("/brief"))
        try store.remove("/brief")
        #expect(store.flush() == 1, "only /kept has a file to write")
        #expect(Sys.exists(dir + "/snapshots/%2Fkept") && !Sys.exists(dir + "/snapshots/%2Fbrief"))
        try store.remove("/brief")
        #expect(store.flush() == 0, "nothing on disk to remove")
        // A file written by an earlier agent (found by `open`'s listing) and
        // one written in this pass are both removed.
        store = SnapshotStore(directory: dir + "/snapshots")
        try store.open()
        try store.write(snapshot("/new"))
        #expect(store.flush() == 1)
        try store.remove("/kept")
        try store.remove("/new")
        #expect(store.flush() == 2)
        #expect(!Sys.exists(dir + "/snapshots/%2Fkept") && !Sys.exists(dir + "/snapshots/%2Fnew"))
        #expect(store.loadAll().snapshots.isEmpty)
    }

    @Test func whatACrashLeftIsSettledAndDamagedFilesReportedNotRead() throws {
        let dir = try scratchDir("damaged")
        defer { _ = removeTree(dir) }
        let store = SnapshotStore(directory: dir + "/snapshots")
        try store.open()
        for n in ["/good", "/flipped", "/short", "/moved", "/gone"] { try store.write(snapshot(n)) }
        store.flush()
        let d = dir + "/snapshots/"
        // What a crash leaves: a stray temp file, and a log whose last
        // records were never written to their files (a newer /good, /gone
        // removed), the very last one cut short.
        try Sys.createFile(d + ".tmp-%2Fgood", "LMSNAP01 torn")
        let other = SnapshotStore(directory: dir + "/other")
        try other.open()
        try other.write(snapshot("/good", limit: 7 << 20))
        try other.remove("/gone")
        try other.write(snapshot("/short", limit: 9 << 20))
        let log = try Sys.readBytes(dir + "/other/log.a")
        try Sys.writeFileAtomically(d + "log.b", Array(log.prefix(log.count - 10)))
        #expect(store.load("/good")?.spec?.memory?.limit == 7 << 20, "seen as open will leave it")
        #expect(store.load("/gone") == nil)
        // Damage: one byte flipped, a file cut short, garbage, a file under
        // another name.
        var bytes = try Sys.readBytes(d + "%2Fflipped")
        bytes[12] ^= 0x40
        try Sys.writeFileAtomically(d + "%2Fflipped", bytes)
        bytes = try Sys.readBytes(d + "%2Fshort")
        try Sys.writeFileAtomically(d + "%2Fshort", Array(bytes.prefix(bytes.count - 5)))
        try Sys.writeFileAtomically(d + "%2Fgarbage", Array("not a snapshot at all, no".utf8))
        #expect(rename(d + "%2Fmoved", d + "%2Fother") == 0)

        let settled = try store.open()
        #expect(settled.rolledForward == 2 && settled.removed == 1, "\(settled)")
        #expect(((try? Sys.subdirectoriesAndFiles(d)) ?? []).filter { $0.hasPrefix(".tmp-") } == [])
        #expect(SnapshotStore.decodeFile(d + "%2Fgood")?.spec?.memory?.limit == 7 << 20, "the logged change rolled forward")
        #expect(!Sys.exists(d + "%2Fgone"), "the logged removal made")
        #expect((try Sys.readBytes(d + "log.b")).isEmpty, "the logs are emptied")
        let (all, damaged) = store.loadAll()
        #expect(Set(all.keys) == ["/good"])
        #expect(Set(damaged.map(\.file)) == ["%2Fflipped", "%2Fshort", "%2Fgarbage", "%2Fother"], "\(damaged)")
        #expect(damaged.first { $0.file == "%2Fflipped" }?.why.contains("checksum") == true)
        #expect(store.load("/flipped") == nil)
        for (file, _) in damaged { store.setAside(file) }
        #expect(store.loadAll().damaged.isEmpty, "set aside, not reported again")
        #expect(Sys.exists(d + "damaged-%2Fflipped"), "kept for a human")
    }

    /// A snapshot file that is not a regular file, or is larger than any
    /// snapshot, is damaged without a byte read: a FIFO held the agent's
    /// start forever, a symlink to /dev/zero read until memory ran out, a
    /// sparse 1 GB file took 1 GB (a probe). So is a log that is a FIFO.
    @Test func aSnapshotFileThatIsNoRegularFileOrTooLargeIsDamaged() throws {
        let dir = try scratchDir("oddfiles")
        defer { _ = removeTree(dir) }
        let store = SnapshotStore(directory: dir + "/snapshots")
        try store.open()
        try store.write(snapshot("/good"))
        store.flush()
        let d = dir + "/snapshots/"
        #expect(mkfifo(d + "%2Ffifo", 0o600) == 0)
        #expect(symlink("/dev/zero", d + "%2Fzero") == 0)
        let fd = open(d + "%2Fhuge", O_WRONLY | O_CREAT, 0o600)
        #expect(fd >= 0 && ftruncate(fd, off_t(SnapshotStore.maxFileBytes + 1)) == 0)
        close(fd)
        unlink(d + "log.b")
        #expect(mkfifo(d + "log.b", 0o600) == 0)
        let (all, damaged) = store.loadAll()
        #expect(Set(all.keys) == ["/good"])
        #expect(Set(damaged.map(\.file)) == ["%2Ffifo", "%2Fzero", "%2Fhuge"], "\(damaged)")
        #expect(damaged.first { $0.file == "%2Ffifo" }?.why.contains("not a regular file") == true, "\(damaged)")
        #expect(damaged.first { $0.file == "%2Fhuge" }?.why.contains("larger than") == true, "\(damaged)")
        #expect(SnapshotStore.decodeFile(d + "%2Ffifo") == nil)
        // Opening the store again does not hang on the FIFO in the log's place.
        #expect(throws: (any Error).self) { try SnapshotStore(directory: dir + "/snapshots").open() }
    }

    /// A flush that keeps failing (here a rename onto a directory; a probe
    /// made the file immutable) does not grow the logs: each failed pass
    /// logged every pending snapshot again. Once it can, the pass writes
    /// the newest and the logs are emptied.
    @Test func failedFlushesDoNotGrowTheLogs() throws {
        let dir = try scratchDir("failflush")
        defer { _ = removeTree(dir) }
        let d = dir + "/snapshots/"
        let store = SnapshotStore(directory: dir + "/snapshots")
        try store.open()
        try Sys.mkdir(d + "%2Fc", mode: 0o700)
        try Sys.createFile(d + "%2Fc/blocker", "")
        try store.write(snapshot("/c"))
        func logBytes() -> Int64 {
            ["log.a", "log.b"].reduce(0) { n, f in var st = stat(); return n + (stat(d + f, &st) == 0 ? Int64(st.st_size) : 0) }
        }
        #expect(throws: SystemError.self) { try store.pass() }
        let after = logBytes()
        #expect(after > 0)
        for _ in 0..<5 { #expect(throws: SystemError.self) { try store.pass() } }
        #expect(logBytes() == after, "the logs grew with every failed pass")
        try store.write(snapshot("/c", limit: 5 << 20))  // newer, during the failures
        #expect(throws: SystemError.self) { try store.pass() }
        _ = removeTree(d + "%2Fc")
        #expect(store.flush() == 1)
        #expect(logBytes() == 0)
        #expect(SnapshotStore.decodeFile(d + "%2Fc")?.spec?.memory?.limit == 5 << 20)
        #expect(SnapshotStore(directory: dir + "/snapshots").load("/c")?.spec?.memory?.limit == 5 << 20)
    }

    @Test func aSnapshotOfANewerFormatIsRefused() throws {
        let dir = try scratchDir("format")
        defer { _ = removeTree(dir) }
        let store = SnapshotStore(directory: dir)
        try store.open()
        var s = snapshot("/n")
        s.formatVersion = SnapshotStore.formatVersion + 1
        try store.write(s)
        let (all, damaged) = store.loadAll()
        #expect(all.isEmpty && damaged.first?.why.contains("newer") == true)
    }

    /// The stats sample a snapshot carries: each container's newest, until
    /// it (or a container above it) is destroyed.
    @Test func theLatestStatsSampleOfEachContainer() {
        let events = EventLog(capacity: 4)
        for (c, n) in [("/a", 1), ("/a/b", 2), ("/c", 3), ("/a", 4), ("/ab", 5)] {
            events.recordStats(container: c, ContainerStats(memory: MemoryStats(usage: Int64(n))))
        }
        #expect(events.latestStats(container: "/a")?.memory?.usage == 4)
        #expect(events.latestStats(container: "/a/b")?.memory?.usage == 2, "kept though the ring has wrapped")
        events.record(container: "/a", kind: .containerEventDestroyed)
        #expect(events.latestStats(container: "/a") == nil && events.latestStats(container: "/a/b") == nil)
        #expect(events.latestStats(container: "/c")?.memory?.usage == 3 && events.latestStats(container: "/ab")?.memory?.usage == 5)
    }

    /// The root is never listed: its snapshot (processes run in it) is
    /// re-attached, not taken for a container destroyed while the agent
    /// was down (it recorded DESTROYED of "/" and lost the processes).
    @Test func theRootsSnapshotIsReattachedNotDestroyed() throws {
        let dir = try scratchDir("rootsnap")
        defer { _ = removeTree(dir) }
        let store = SnapshotStore(directory: dir)
        try store.open()
        try store.write(snapshot("/"))
        try store.write(snapshot("/gone"))
        store.flush()
        let events = EventLog(capacity: 16)
        let keeper = SnapshotKeeper(store: store, events: events, read: { (_: String) throws(LmctfyError) -> SnapshotKeeper.Kernel? in
            (ContainerSpec(), false, nil, nil)
        })
        let found = try keeper.recover(listed: [])
        #expect(found.vanished == ["/gone"], "\(found)")
        #expect(events.since(bootId: events.bootId, after: 0) { $0.kind == .containerEventDestroyed }.0.map(\.container) == ["/gone"])
        #expect(store.load("/") != nil)
    }

    /// A create's intent records the cgroup it made: a container destroyed
    /// and made again while no agent watched, before its full snapshot was
    /// written, is told apart at the restart (DESTROYED, then adopted), as
    /// one with a full snapshot is (it was re-attached as the old one).
    @Test func anIntentTellsAContainerMadeAgainWhileTheAgentWasDown() throws {
        let dir = try scratchDir("intentid")
        defer { _ = removeTree(dir) }
        let store = SnapshotStore(directory: dir)
        try store.open()
        let id = Mutexed<UInt64>(41)
        let read: SnapshotKeeper.Read = { (_: String) throws(LmctfyError) -> SnapshotKeeper.Kernel? in (ContainerSpec(), false, nil, id.locked { $0 }) }
        let first = SnapshotKeeper(store: store, events: EventLog(capacity: 16), read: read, cgroupId: { _ in id.locked { $0 } })
        _ = try first.recover(listed: [])
        first.created("/c")
        store.flush()
        #expect(SnapshotStore(directory: dir).load("/c")?.cgroupId == 41)
        id.locked { $0 = 42 }  // destroyed and made again
        let events = EventLog(capacity: 16)
        let again = SnapshotStore(directory: dir)
        let second = SnapshotKeeper(store: again, events: events, read: read, cgroupId: { _ in id.locked { $0 } })
        let found = try second.recover(listed: ["/c"])
        #expect(found.vanished == ["/c"] && found.adopted == ["/c"], "\(found)")
    }

    /// A destroy removes the snapshots at and below its container, found
    /// by the records' tree index (it scanned every record), and no other:
    /// not a sibling whose name starts the same, not another tree's.
    @Test func aDestroyRemovesItsTreesSnapshotsOnly() throws {
        let dir = try scratchDir("rmtree")
        defer { _ = removeTree(dir) }
        let store = SnapshotStore(directory: dir)
        try store.open()
        let keeper = SnapshotKeeper(store: store, events: EventLog(capacity: 16), read: { (_: String) throws(LmctfyError) -> SnapshotKeeper.Kernel? in
            (ContainerSpec(), false, nil, nil)
        })
        _ = try keeper.recover(listed: [])
        let all = ["/a", "/a/b", "/a/b/c", "/a/bc", "/ab", "/ab/a", "/b", "/b/a"]
        for name in all { try keeper.sync(name) }
        store.flush()
        keeper.removeTree("/a/b")
        #expect(Set(keeper.names) == ["/a", "/a/bc", "/ab", "/ab/a", "/b", "/b/a"])
        keeper.removeTree("/a")
        store.flush()
        #expect(Set(keeper.names) == ["/ab", "/ab/a", "/b", "/b/a"])
        #expect(all.filter { store.load($0) != nil } == ["/ab", "/ab/a", "/b", "/b/a"])
        keeper.removeTree("/nothing")
        #expect(keeper.names.count == 4)
    }

    /// Concurrent writes of one name coalesce: requests made while a write
    /// runs share the next one, and every writer returns only after a write
    /// that started after its request.
    @Test func concurrentWritesOfOneNameShareTheNextWrite() throws {
        let dir = try scratchDir("coalesce")
        defer { _ = removeTree(dir) }
        let events = EventLog(capacity: 16)
        let store = SnapshotStore(directory: dir)
        try store.open()
        let version = Mutexed<Int64>(1)
        let reads = Mutexed(0)
        let keeper = SnapshotKeeper(store: store, events: events, read: { (_: String) throws(LmctfyError) -> SnapshotKeeper.Kernel? in
            reads.locked { $0 += 1 }
            usleep(20_000)  // a slow kernel read: others pile up meanwhile
            return (ContainerSpec(memory: MemorySpec(limit: version.locked { $0 })), false, nil, nil)
        })
        _ = try keeper.recover(listed: [])
        let done = Latch(16)
        for i in 0..<16 {
            Threads.detach {
                version.locked { $0 = max($0, Int64(i + 2)) }
                try? keeper.sync("/c")
                done.signal()
            }
        }
        #expect(done.wait(seconds: 30))
        let newest = version.locked { $0 }
        #expect(store.load("/c")?.spec?.memory?.limit == newest, "the last write has every change")
        let n = reads.locked { $0 }
        print("16 concurrent syncs of one container: \(n) kernel reads, \(keeper.costs.writes) writes")
        #expect(n < 16)
    }
}

// MARK: - The real agent

/// A root container made with CL1 for an agent to serve (root_container), so
/// the agent sees only the test's containers; destroyed with everything
/// below it at the end.
private struct TestRoot {
    let name: String
    let api: ContainerApi

    init(_ label: String) throws {
        api = try ContainerApi.detect()
        name = RealCgroups.uniqueName(label)
        _ = try api.create(name, spec: ContainerSpec(memory: MemorySpec(limit: 1 << 30)))
    }

    func destroy() {
        RealCgroups.destroy(name)
    }

    func machine(_ path: String) throws -> ContainerName { try ContainerName.resolve(name + path, relativeTo: .root) }

    /// Every container below the root, by the agent's names.
    func containers() throws -> [String] {
        try api.get(try ContainerName.resolve(name, relativeTo: .root)).subcontainers(recursive: true)
            .map { String($0.description.dropFirst(name.count)) }
    }

    func kernel(_ path: String) throws -> (spec: ContainerSpec, frozen: Bool) {
        let c = try api.get(try machine(path))
        return (try c.spec(), try c.isFrozen())
    }
}

/// A client of `agent`: AgentProcess returns once the socket file exists,
/// which is a moment before the agent listens on it (refused meanwhile).
private func connect(_ agent: AgentProcess) throws -> RpcClient {
    for _ in 0..<200 {
        if let c = try? RpcClient.connect(unixPath: agent.socket) { return c }
        usleep(10_000)
    }
    return try RpcClient.connect(unixPath: agent.socket)
}

private func agentConfig(_ root: TestRoot) -> String { "root_container: \"\(root.name)\" stats_interval_ms: 0" }

private func snapshots(_ agent: AgentProcess) -> SnapshotStore { SnapshotStore(directory: agent.dir + "/state/snapshots") }

/// Every snapshot equals what the kernel has (spec read back, freezer
/// state), and there is one per container; returns what differs.
/// `stopped`: the agent is not running, so no temp file may be left (a
/// running agent's flusher has one for a moment during each pass).
private func compare(_ store: SnapshotStore, _ root: TestRoot, stopped: Bool = false) throws -> [String] {
    var problems: [String] = []
    let (all, damaged) = store.loadAll()
    if !damaged.isEmpty { problems.append("damaged: \(damaged)") }
    let names = Set(try root.containers())
    if Set(all.keys) != names {
        problems.append("snapshots \(all.keys.sorted()) but containers \(names.sorted())")
    }
    for (name, s) in all where names.contains(name) {
        let k = try root.kernel(name)
        if try s.spec?.serializedBytes() != k.spec.serializedBytes() { problems.append("\(name): spec \(String(describing: s.spec)) vs kernel \(k.spec)") }
        if s.frozen != k.frozen { problems.append("\(name): frozen \(String(describing: s.frozen)) vs kernel \(k.frozen)") }
        let pids = Set(try root.api.get(try root.machine(name)).processes(recursive: false))
        for p in s.process where SnapshotKeeper.isAlive(p) && !pids.contains(p.pid ?? 0) {
            problems.append("\(name): recorded process \(p.pid ?? 0) is alive but not in it")
        }
    }
    let temps = ((try? Sys.subdirectoriesAndFiles(store.directory)) ?? []).filter { $0.hasPrefix(".tmp-") }
    if stopped && !temps.isEmpty { problems.append("temp files left: \(temps)") }
    return problems
}

/// `agent`'s exit status once it has exited (a crash point), nil when it
/// still runs after 5 s.
private func reapWithin5s(_ agent: AgentProcess) -> LmctfySystem.ExitStatus? {
    var status: LmctfySystem.ExitStatus?
    for _ in 0..<500 where status == nil {
        status = TestProcess.reapIfExited(agent.pid)
        if status == nil { usleep(10_000) }
    }
    return status
}

/// Every event the agent at `socket` keeps (its boot).
private func allEvents(_ socket: String) -> [ContainerEvent] {
    events(Subscriber(socket, SubscribeRequest(afterSequence: 0), until: { $0.last?.caughtUp != nil }).wait().0)
}

@Suite(.enabled(if: RealCgroups.available, "\(RealCgroups.unavailableReason ?? "")"), .serialized)
struct SnapshotAgentTests {
    /// The agent is killed (_exit) at each step of a snapshot write: logged
    /// (before the call answers), the temp file fsynced (before the
    /// rename), renamed (before the directory's fsync). The snapshot file
    /// is the old one or the new one, whole, never torn; where it is the
    /// old one the new one is in the log, and the restarted agent rolls it
    /// forward: its snapshot equals the kernel.
    @Test(arguments: ["written", "temp", "rename"])
    func aCrashInsideASnapshotWriteLeavesTheOldOrTheNew(step: String) throws {
        let root = try TestRoot("snapcrash")
        defer { root.destroy() }
        // Write 1 (flush pass 1): the create's full snapshot (its intent,
        // logged before the answer, is not counted); write 2 (pass 2), the
        // update, dies at `step`.
        let first = try AgentProcess(config: agentConfig(root), environment: ["LMCTFY_AGENT_TEST_SNAPSHOT_CRASH=\(step):2"])
        defer { _ = removeTree(first.dir) }  // also when a check fails before the restart
        var firstAlive = true
        defer { if firstAlive { first.stop() } }
        let client = try connect(first)
        _ = try client.call(AgentMethods.create, CreateRequest(name: "/c", spec: ContainerSpec(memory: MemorySpec(limit: 100 << 20))))
        // The create's full snapshot is in its file (so the update's pass is
        // the second counted).
        for _ in 0..<500 where SnapshotStore.decodeFile(first.dir + "/state/snapshots/%2Fc")?.spec == nil { usleep(10_000) }
        // Answered or not (the later steps run after the answer).
        _ = try? client.call(AgentMethods.update, UpdateRequest(name: "/c", spec: ContainerSpec(memory: MemorySpec(limit: 200 << 20)),
                                                               policy: .updateDiff), deadlineMs: 10_000)
        client.close()
        let status = reapWithin5s(first)
        firstAlive = status == nil
        try #require(status == .exited(86), "the agent died at \(step)")
        let store = snapshots(first)
        let file = try #require(SnapshotStore.decodeFile(store.directory + "/%2Fc"), "a whole snapshot file is there")
        if step == "rename" {
            #expect(file.spec?.memory?.limit == 200 << 20, "the new snapshot")
        } else {
            #expect(file.spec?.memory?.limit == 100 << 20, "the old snapshot, the new one in the log")
        }
        #expect(store.load("/c")?.spec?.memory?.limit == 200 << 20, "what a start will make of it")
        #expect(try root.kernel("/c").spec.memory?.limit == 200 << 20, "the update itself was done")

        let second = try AgentProcess(reusing: first.dir)
        defer { second.stop() }
        #expect(((try? Sys.subdirectoriesAndFiles(store.directory)) ?? []).filter { $0.hasPrefix(".tmp-") } == [],
                "settled at start")
        #expect(SnapshotStore.decodeFile(store.directory + "/%2Fc")?.spec?.memory?.limit == 200 << 20)
        #expect(try compare(store, root) == [])
    }

    /// A create logs only its intent before it answers (the name, when, made
    /// by the agent); the keeper reads the full snapshot from the kernel once
    /// the container is SnapshotKeeper.deferMs old. The agent killed right after the intent: the restarted agent
    /// completes the snapshot from the kernel as its own (not adopted), with
    /// the intent's creation time; one the keeper completed in time has the
    /// spec without a restart. Checked to fail when the recovery takes the
    /// intent for an adopted container (or the intent is not logged).
    @Test func aCreatesIntentIsCompletedFromTheKernel() throws {
        let root = try TestRoot("snapintent")
        defer { root.destroy() }
        // Intent 1: /early, completed by the keeper; intent 2: /late, dies.
        let first = try AgentProcess(config: agentConfig(root), environment: ["LMCTFY_AGENT_TEST_SNAPSHOT_CRASH=intent:2"])
        defer { _ = removeTree(first.dir) }
        var firstAlive = true
        defer { if firstAlive { first.stop() } }
        let client = try connect(first)
        let memory = ContainerSpec(memory: MemorySpec(limit: 48 << 20))
        _ = try client.call(AgentMethods.create, CreateRequest(name: "/early", spec: memory))
        for _ in 0..<200 where snapshots(first).load("/early")?.spec == nil { usleep(10_000) }
        let early = try #require(snapshots(first).load("/early"))
        #expect(early.spec?.memory?.limit == 48 << 20 && early.adopted == false && early.createdNs != nil,
                "the keeper wrote the full snapshot: \(early)")
        // Dies once /late's intent is logged, before the create answers.
        _ = try? client.call(AgentMethods.create, CreateRequest(name: "/late", spec: memory), deadlineMs: 10_000)
        client.close()
        let status = reapWithin5s(first)
        firstAlive = status == nil
        try #require(status == .exited(86), "the agent died after the intent")
        let intent = try #require(snapshots(first).load("/late"), "the intent is logged")
        #expect(intent.spec == nil && intent.adopted == false && intent.createdNs != nil)
        #expect(try root.kernel("/late").spec.memory?.limit == 48 << 20, "the create itself was done")

        let second = try AgentProcess(reusing: first.dir)
        defer { second.stop() }
        let store = snapshots(second)
        #expect(try compare(store, root) == [])
        let late = try #require(store.load("/late"))
        #expect(late.adopted == false, "made by the agent, not adopted")
        #expect(late.createdNs == intent.createdNs, "its creation time is the intent's")
        #expect(late.spec?.memory?.limit == 48 << 20)
        #expect(store.load("/early")?.createdNs == early.createdNs)
    }

    /// An agent stopped (SIGTERM) right after a create leaves the full
    /// snapshot on disk, not the intent: the keeper completes intents before
    /// it stops and the flusher writes them. Checked to fail when the stop
    /// leaves the intents to the next start.
    @Test func aStopRightAfterACreateLeavesItsFullSnapshot() throws {
        let root = try TestRoot("snapstop")
        defer { root.destroy() }
        let agent = try AgentProcess(config: agentConfig(root))
        defer { _ = removeTree(agent.dir) }
        var running = true
        defer { if running { agent.stop() } }
        let client = try connect(agent)
        _ = try client.call(AgentMethods.create, CreateRequest(name: "/s", spec: ContainerSpec(memory: MemorySpec(limit: 40 << 20))))
        client.close()
        kill(agent.pid, SIGTERM)  // stop() would remove its directory
        let status = reapWithin5s(agent)
        running = status == nil
        try #require(status == .exited(0), "stopped: \(String(describing: status))")
        let file = try #require(SnapshotStore.decodeFile(agent.dir + "/state/snapshots/%2Fs"), "a snapshot file")
        #expect(file.spec?.memory?.limit == 40 << 20 && file.adopted == false, "\(file)")
    }

    /// A detached run is recorded in its container's snapshot; it is not
    /// the agent's child, so its exit comes through its pidfd: an event
    /// without a status, and it leaves the snapshot.
    @Test func aDetachedRunsExitIsAnEventWithoutAStatus() throws {
        let root = try TestRoot("snapdetached")
        defer { root.destroy() }
        let agent = try AgentProcess(config: agentConfig(root))
        defer { agent.stop() }
        let client = try connect(agent)
        defer { client.close() }
        _ = try client.call(AgentMethods.create, CreateRequest(name: "/d", spec: ContainerSpec(memory: MemorySpec(limit: 64 << 20))))
        var pid: Int32 = 0
        // Long enough to be read back before it exits on a loaded machine.
        try client.stream(AgentMethods.run, RunRequest(name: "/d", argv: ["sleep", "1.5"], detached: true)) { (r: RunResponse) in
            pid = r.pid ?? pid
            return true
        }
        #expect(snapshots(agent).load("/d")?.process.map(\.pid) == [pid], "recorded before RUN_STARTED")
        var seen = false
        for _ in 0..<400 where !seen {
            seen = allEvents(agent.socket).contains { $0.container == "/d" && $0.kind == .containerEventProcessExited && $0.pid == pid
                && $0.exitCode == nil && $0.termSignal == nil && $0.reason == "exited; its status is unknown (detached)" }
            if !seen { usleep(20_000) }
        }
        #expect(seen)
        for _ in 0..<100 where snapshots(agent).load("/d")?.process.isEmpty != true { usleep(20_000) }
        #expect(snapshots(agent).load("/d")?.process.isEmpty == true)
    }

    /// Restart recovery: while the agent is down a container with a snapshot
    /// is destroyed, one is made with the CLI, a recorded process dies and a
    /// paused container is resumed. The new agent (a new boot id) reports the
    /// destroyed one and the dead process, adopts the new one, re-attaches
    /// the rest with snapshots equal to the kernel, and still watches them.
    @Test func theRestartedAgentReconcilesSnapshotsWithTheKernel() throws {
        let root = try TestRoot("recover")
        defer { root.destroy() }
        let first = try AgentProcess(config: agentConfig(root))
        defer { _ = removeTree(first.dir) }  // also when a check fails before the restart
        var firstAlive = true
        defer { if firstAlive { first.stop() } }
        var client = try connect(first)
        let memory = ContainerSpec(memory: MemorySpec(limit: 64 << 20))
        for n in ["/a", "/b", "/p", "/a/sub", "/r"] { _ = try client.call(AgentMethods.create, CreateRequest(name: n, spec: memory)) }
        var pids: [Int32] = []
        for _ in 0..<2 {
            try client.stream(AgentMethods.run, RunRequest(name: "/a", argv: ["sleep", "1000"], detached: true,
                                                           restartPolicy: .restartOnFailure)) { (r: RunResponse) in
                if let pid = r.pid { pids.append(pid) }
                return true
            }
        }
        // A foreground run is recorded while it runs and leaves the
        // snapshot when it has exited (its exit went to its caller).
        var exited = false
        try client.stream(AgentMethods.run, RunRequest(name: "/a", argv: ["true"])) { (r: RunResponse) in
            if r.kind == .runExited { exited = r.exitCode == 0 }
            return true
        }
        #expect(exited)
        _ = try client.call(AgentMethods.pause, PauseRequest(name: "/p"))
        let firstBoot = try client.call(AgentMethods.machineInfo, MachineInfoRequest()).bootId
        client.close()
        // A create's full snapshot follows its intent once the container is
        // SnapshotKeeper.deferMs old (the runs' records went with the intent).
        var before = try compare(snapshots(first), root)
        for _ in 0..<100 where !before.isEmpty {
            usleep(20_000)
            before = try compare(snapshots(first), root)
        }
        #expect(before == [], "\(before)")
        for _ in 0..<100 where snapshots(first).load("/r")?.cgroupId == nil { usleep(20_000) }
        let rWas = snapshots(first).load("/r")?.cgroupId
        #expect(rWas != nil, "the snapshot keeps which cgroup it is of")
        let a = try #require(snapshots(first).load("/a"))
        #expect(a.process.count == 2 && a.process.allSatisfy { $0.restartPolicy == .restartOnFailure && $0.detached == true
            && $0.argv == ["sleep", "1000"] && $0.startTime != nil && $0.uid == 0 && !$0.env.isEmpty && $0.cwd != nil })
        #expect(snapshots(first).load("/p")?.frozen == true)
        // What the keeper adds to the bytes it compares (the boot id, the
        // time of the write) is in what it wrote, whole.
        #expect(a.bootId == firstBoot && a.writtenNs != nil && a.name == "/a" && a.spec?.memory?.limit == 64 << 20)

        first.crash()
        firstAlive = false
        // While it is down.
        let lmctfy = builtTool("lmctfy")
        #expect(try TestProcess.capture([lmctfy, "destroy", "-f", root.name + "/b"]).status == 0)
        #expect(try TestProcess.capture([lmctfy, "create", root.name + "/cli", "memory:{limit:33554432}"]).status == 0)
        #expect(try TestProcess.capture([lmctfy, "resume", root.name + "/p"]).status == 0)
        #expect(try TestProcess.capture([lmctfy, "update", "diff", root.name + "/a", "memory:{limit:50331648}"]).status == 0)
        // Destroyed and made again: another container of the same name.
        #expect(try TestProcess.capture([lmctfy, "destroy", "-f", root.name + "/r"]).status == 0)
        #expect(try TestProcess.capture([lmctfy, "create", root.name + "/r", "memory:{limit:33554432}"]).status == 0)
        let killed = SnapshotProcess(pid: pids[0], startTime: SnapshotKeeper.startTime(pids[0]))
        kill(pids[0], SIGKILL)
        for _ in 0..<200 where SnapshotKeeper.isAlive(killed) { usleep(10_000) }

        let second = try AgentProcess(reusing: first.dir)
        defer { second.stop() }
        client = try connect(second)
        defer { client.close() }
        let boot = try client.call(AgentMethods.machineInfo, MachineInfoRequest()).bootId
        #expect(boot != nil && boot != firstBoot)
        let store = snapshots(second)
        #expect(try compare(store, root) == [])
        #expect(store.load("/b") == nil)
        #expect(store.load("/cli")?.adopted == true)
        // The new /r is not the old one: adopted, with a cgroup of its own
        // (it was taken for the agent's own, "0 destroyed, 0 adopted").
        #expect(store.load("/r")?.adopted == true)
        #expect(store.load("/r")?.cgroupId != nil && store.load("/r")?.cgroupId != rWas)
        #expect(store.load("/a")?.adopted == false)
        #expect(store.load("/p")?.frozen == false)
        #expect(store.load("/a")?.process.map(\.pid) == [pids[1]], "the dead process left the snapshot")
        let es = allEvents(second.socket)
        #expect(es.allSatisfy { $0.bootId == boot })
        #expect(es.contains { $0.container == "/b" && $0.kind == .containerEventDestroyed && $0.reason == "destroyed while the agent was down" },
                "\(es)")
        #expect(es.contains { $0.container == "/r" && $0.kind == .containerEventDestroyed && $0.reason == "destroyed while the agent was down" },
                "\(es)")
        #expect(es.contains { $0.container == "/a" && $0.kind == .containerEventProcessExited && $0.pid == pids[0]
            && $0.reason == "exited while the agent was down" })
        // A container made while the agent was down is news (it was not:
        // subscribers heard of a destroy meanwhile, never of a create);
        // re-attached ones are not.
        #expect(es.filter { $0.kind == .containerEventCreated }.map { "\($0.container ?? "") \($0.reason ?? "")" }
                == ["/cli made while the agent was down", "/r made while the agent was down"], "\(es)")
        // So is a change of spec or freezer state (a subscriber following
        // the freezer state from events had /p frozen); the containers
        // that only lost a process, or did not change, have none.
        #expect(es.filter { $0.kind == .containerEventUpdated }.map { "\($0.container ?? "") \($0.reason ?? "")" }
                == ["/a changed while the agent was down"], "\(es)")
        #expect(es.filter { $0.kind == .containerEventFreezer }.map { "\($0.container ?? "") \($0.frozen ?? true) \($0.reason ?? "")" }
                == ["/p false changed while the agent was down"], "\(es)")
        // The old boot's events are still served, after the restart.
        let old = Subscriber(second.socket, SubscribeRequest(bootId: firstBoot, afterSequence: 0), until: { $0.last?.caughtUp != nil }).wait().0
        #expect(events(old).contains { $0.bootId == firstBoot && $0.container == "/b" && $0.kind == .containerEventCreated })

        // The surviving process of the old agent is watched (pidfd): its
        // exit is an event, without a status, and it leaves the snapshot.
        kill(pids[1], SIGKILL)
        var exitSeen = false
        for _ in 0..<100 where !exitSeen {
            exitSeen = allEvents(second.socket).contains { $0.container == "/a" && $0.kind == .containerEventProcessExited
                && $0.pid == pids[1] && $0.exitCode == nil && $0.termSignal == nil
                && $0.reason == "exited; its status is unknown (started by an earlier agent)" }
            if !exitSeen { usleep(50_000) }
        }
        #expect(exitSeen)
        for _ in 0..<100 where store.load("/a")?.process.isEmpty != true { usleep(20_000) }
        #expect(store.load("/a")?.process.isEmpty == true)

        // Still watched: a CLI update and destroy behind the new agent's back
        // reach the snapshots.
        #expect(try TestProcess.capture([lmctfy, "update", "diff", root.name + "/cli", "memory:{limit:67108864}"]).status == 0)
        #expect(try TestProcess.capture([lmctfy, "destroy", "-f", root.name + "/a"]).status == 0)
        var problems: [String] = []
        for _ in 0..<100 {
            problems = try compare(store, root)
            if problems.isEmpty { break }
            usleep(50_000)
        }
        #expect(problems == [], "\(allEvents(second.socket).filter { $0.kind != .containerEventStats })")
        #expect(store.load("/cli")?.spec?.memory?.limit == 64 << 20)
        // A container made with the CLI while the agent runs is adopted.
        #expect(try TestProcess.capture([lmctfy, "create", root.name + "/cli2", "memory:{limit:33554432}"]).status == 0)
        for _ in 0..<100 where store.load("/cli2") == nil { usleep(20_000) }
        #expect(store.load("/cli2")?.adopted == true)
        #expect(try compare(store, root) == [])
    }
}

/// The chaos run of issue #13: several clients, 1,000 create / update / run
/// / pause / resume / destroy operations between them, while the agent is
/// SIGKILLed at random points and restarted. A client whose call dies with
/// the agent sends it again, with the same request_id, until it has a
/// definitive answer (what lmctl does once); a Run is not idempotent and is
/// not sent again. Afterwards: no container lost, no cgroup directory
/// leaked, every snapshot equal to what the kernel reports, every
/// operation a client saw succeed reflected.
@Suite(.enabled(if: RealCgroups.available, "\(RealCgroups.unavailableReason ?? "")"), .serialized)
struct SnapshotChaosTests {
    struct Model: Equatable {
        var limit: Int64
        var frozen: Bool
    }

    /// The agent currently running (replaced by each restart).
    final class Current: @unchecked Sendable {
        let lock = Lock()
        var agent: AgentProcess
        init(_ agent: AgentProcess) { self.agent = agent }
        var socket: String { lock.locked { agent.socket } }
    }

    /// Sends `request` until the answer is definitive: OK, or a status that
    /// is not "the agent went away" (returned).
    static func perform<Req: ProtoMessage, Resp: ProtoMessage>(
        _ client: inout RpcClient?, _ current: Current, _ m: AgentMethod<Req, Resp>, _ request: Req, retries: inout Int
    ) -> LmctfyError? {
        let t0 = MonotonicClock.milliseconds()
        while MonotonicClock.milliseconds() - t0 < 60_000 {
            do throws(LmctfyError) {
                if client == nil { client = try RpcClient.connect(unixPath: current.socket) }
                _ = try client!.call(m, request, deadlineMs: 15_000)
                return nil
            } catch where [.unavailable, .deadlineExceeded, .cancelled, .aborted].contains(error.code) {
                client?.close()
                client = nil
                retries += 1
                usleep(20_000)
            } catch {
                return error
            }
        }
        return LmctfyError(.deadlineExceeded, "no definitive answer to \(m.name) in 60 s")
    }

    @Test func aThousandOperationsWhileTheAgentIsKilledAndRestarted() throws {
        let root = try TestRoot("chaos")
        defer { root.destroy() }
        let started = MonotonicClock.milliseconds()
        let current = Current(try AgentProcess(config: agentConfig(root)))
        let ended = Mutexed(false)
        defer { if !ended.locked({ $0 }) { current.lock.locked { current.agent.stop() } } }
        // LMCTFY_CHAOS_OPS: another total, for a quick look.
        let clients = 4, opsPerClient = (getenv("LMCTFY_CHAOS_OPS").flatMap { Int(String(cString: $0)) } ?? 1000) / 4
        let done = Latch(clients)
        let stop = Mutexed(false)
        let models = Mutexed<[Int: [String: Model]]>([:])
        let failures = Mutexed<[String]>([])
        let counts = Mutexed<[String: Int]>([:])
        let retried = Mutexed(0)
        for k in 0..<clients {
            Threads.detach {
                var rng = SplitMix64(seed: UInt64(k) &* 0x9e37_79b9 &+ 7)
                var model: [String: Model] = [:]
                var client: RpcClient?
                var retries = 0
                var next = 0
                for _ in 0..<opsPerClient {
                    let t0 = MonotonicClock.milliseconds()
                    defer {
                        let ms = MonotonicClock.milliseconds() - t0
                        if ms > 3000 { print("chaos: client \(k): an operation took \(ms) ms") }
                    }
                    let roll = Int(rng.next() % 100)
                    let names = model.keys.sorted()
                    var op = "Create"
                    var error: LmctfyError?
                    if names.isEmpty || (names.count < 4 && roll < 25) {
                        let name = "/k\(k)_\(next)"
                        next += 1
                        let limit = Int64(16 + rng.next() % 48) << 20
                        error = Self.perform(&client, current, AgentMethods.create, CreateRequest(
                            name: name, spec: ContainerSpec(memory: MemorySpec(limit: limit)), requestId: RemoteBackend.newRequestId()), retries: &retries)
                        if error == nil { model[name] = Model(limit: limit, frozen: false) }
                    } else {
                        let name = names[Int(rng.next() % UInt64(names.count))]
                        if roll < 55 {
                            op = "Update"
                            let limit = Int64(16 + rng.next() % 48) << 20
                            error = Self.perform(&client, current, AgentMethods.update, UpdateRequest(
                                name: name, spec: ContainerSpec(memory: MemorySpec(limit: limit)), policy: .updateDiff,
                                requestId: RemoteBackend.newRequestId()), retries: &retries)
                            if error == nil { model[name]?.limit = limit }
                        } else if roll < 75 {
                            let frozen = !(model[name]!.frozen)
                            op = frozen ? "Pause" : "Resume"
                            error = frozen
                                ? Self.perform(&client, current, AgentMethods.pause, PauseRequest(name: name, requestId: RemoteBackend.newRequestId()), retries: &retries)
                                : Self.perform(&client, current, AgentMethods.resume, ResumeRequest(name: name, requestId: RemoteBackend.newRequestId()), retries: &retries)
                            if error == nil { model[name]?.frozen = frozen }
                        } else if roll < 87 && !(model[name]!.frozen) {
                            // (Not into a paused container: the command
                            // would wait, frozen before its exec, until a
                            // resume.)
                            op = "Run"
                            // Not idempotent: sent once; if the agent died
                            // under it, whether it ran is unknown (and fine).
                            do throws(LmctfyError) {
                                if client == nil { client = try RpcClient.connect(unixPath: current.socket) }
                                try client!.stream(AgentMethods.run, RunRequest(name: name, argv: ["sleep", "1000"], detached: true),
                                                   deadlineMs: 15_000) { (_: RunResponse) in true }
                            } catch {
                                client?.close()
                                client = nil
                                op = "Run (lost)"
                            }
                        } else if roll < 87 {
                            op = "Resume"
                            error = Self.perform(&client, current, AgentMethods.resume, ResumeRequest(name: name, requestId: RemoteBackend.newRequestId()), retries: &retries)
                            if error == nil { model[name]?.frozen = false }
                        } else {
                            op = "Destroy"
                            error = Self.perform(&client, current, AgentMethods.destroy, DestroyRequest(
                                name: name, force: true, requestId: RemoteBackend.newRequestId()), retries: &retries)
                            if error == nil { model[name] = nil }
                        }
                    }
                    if let error {
                        print("chaos: client \(k) \(op) \(names.first ?? ""): \(error)")
                        failures.locked { $0.append("client \(k) \(op): \(error)") }
                    }
                    counts.locked { $0[op, default: 0] += 1 }
                }
                client?.close()
                models.locked { $0[k] = model }
                retried.locked { $0 += retries }
                done.signal()
            }
        }
        // The killer: SIGKILL at a random point 5-100 ms after each start;
        // one restart in four is itself killed 0-30 ms after its exec,
        // during its start-up (the snapshots' replay and recovery).
        let kills = Mutexed((serving: 0, starting: 0))
        let killer = Latch()
        Threads.detach {
            var rng = SplitMix64(seed: 1313)
            while !stop.locked({ $0 }) {
                usleep(UInt32(5_000 + rng.next() % 95_000))
                if stop.locked({ $0 }) { break }
                current.lock.locked {
                    current.agent.crash()
                    let dir = current.agent.dir
                    if rng.next() % 4 == 0, let pid = try? spawnWithEnvironment(
                        [builtTool("lmctfy-agent"), "--config", dir + "/agent.conf"], []) {
                        usleep(UInt32(rng.next() % 30_000))
                        TestProcess.end(pid)
                        kills.locked { $0.starting += 1 }
                    }
                    while true {
                        if let next = try? AgentProcess(reusing: dir) {
                            current.agent = next
                            break
                        }
                    }
                }
                kills.locked { $0.serving += 1 }
            }
            killer.signal()
        }
        let finished = done.wait(seconds: 600)
        stop.locked { $0 = true }
        killer.wait()
        try #require(finished, "the clients did not finish in 10 minutes")
        let opsMs = MonotonicClock.milliseconds() - started

        // The last agent was started after the last kill: stop it cleanly
        // (SIGTERM) so nothing is being written while the files are read.
        let store = snapshots(current.agent)
        let dir = current.agent.dir
        kill(current.agent.pid, SIGTERM)
        var status: LmctfySystem.ExitStatus?
        for _ in 0..<500 where status == nil {
            status = TestProcess.reapIfExited(current.agent.pid)
            if status == nil { usleep(10_000) }
        }
        TestProcess.end(current.agent.pid)
        ended.locked { $0 = true }
        defer { _ = removeTree(dir) }
        #expect(status == .exited(0), "the last agent stopped cleanly")

        let f = failures.locked { $0 }
        #expect(f.isEmpty, "\(f.prefix(10))")
        // Every operation a client saw succeed is reflected, no container lost.
        let expected = models.locked { m in m.values.reduce(into: [String: Model]()) { $0.merge($1) { a, _ in a } } }
        let kernel = Set(try root.containers())
        #expect(kernel == Set(expected.keys), "kernel \(kernel.sorted()) vs clients \(expected.keys.sorted())")
        for (name, want) in expected where kernel.contains(name) {
            let k = try root.kernel(name)
            #expect(Model(limit: k.spec.memory?.limit ?? -1, frozen: k.frozen) == want, "\(name)")
        }
        // No cgroup directory leaked, in any hierarchy.
        let mounts = try CgroupMounts.detect()
        var leaked: [String] = []
        for h in Set(mounts.v1.values).union(mounts.unified.map { [$0] } ?? []).sorted() {
            let top = h + root.name
            guard Sys.isDirectory(top) else { continue }
            var queue = [""]
            while let rel = queue.popLast() {
                for d in (try? Sys.subdirectories(top + rel)) ?? [] {
                    let path = rel + "/" + d
                    if !kernel.contains(path) { leaked.append(top + path) }
                    queue.append(path)
                }
            }
        }
        #expect(leaked.isEmpty, "\(leaked)")
        // Every snapshot equal to what the kernel reports.
        #expect(try compare(store, root, stopped: true) == [])
        let c = counts.locked { $0 }
        print("chaos: \(c.values.reduce(0, +)) operations (\(c.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))) by \(clients) clients in \(opsMs) ms; agent killed and restarted \(kills.locked { $0.serving }) times (and \(kills.locked { $0.starting }) times more during its start-up); \(retried.locked { $0 }) calls sent again; \(kernel.count) containers at the end")
    }
}

extension SnapshotAgentTests {
    /// An OOM kill while no agent runs is reported by the next one, once,
    /// "while the agent was down": the snapshot keeps the kernel's count of
    /// a container's kills, and the watcher counts from it (they left no
    /// trace). One the running agent recorded is not reported again after
    /// a restart: the count is written again after each.
    @Test func anOOMKillWhileTheAgentIsDownIsReportedByTheNextOnce() throws {
        let root = try TestRoot("oomdown")
        defer { root.destroy() }
        let first = try AgentProcess(config: agentConfig(root))
        defer { _ = removeTree(first.dir) }
        var firstAlive = true
        defer { if firstAlive { first.stop() } }
        var client = try connect(first)
        _ = try client.call(AgentMethods.create, CreateRequest(name: "/m", spec: ContainerSpec(memory: MemorySpec(limit: 32 << 20))))
        client.close()
        let hog = try root.api.get(try root.machine("/m"))
        func oom() throws {
            let pid = try hog.run([testHelperPath, "alloc", "200"])
            for _ in 0..<10_000 where kill(pid, 0) == 0 { usleep(1000) }  // killed by the OOM killer
        }
        func ooms(_ socket: String) -> [String] {
            allEvents(socket).filter { $0.container == "/m" && $0.kind == .containerEventOom }.map { "\($0.bootId ?? "") \($0.reason ?? "")" }
        }
        func snapshotCount(_ agent: AgentProcess, becomes n: Int64) -> Bool {
            for _ in 0..<250 where snapshots(agent).load("/m")?.oomKills != n { usleep(20_000) }
            return snapshots(agent).load("/m")?.oomKills == n
        }
        #expect(snapshotCount(first, becomes: 0), "\(String(describing: snapshots(first).load("/m")))")
        // One while it runs: recorded live, and its count written.
        try oom()
        for _ in 0..<250 where ooms(first.socket).isEmpty { usleep(20_000) }
        #expect(ooms(first.socket).count == 1 && ooms(first.socket).first?.hasSuffix(" ") == true, "\(ooms(first.socket))")
        #expect(snapshotCount(first, becomes: 1))
        first.crash()
        firstAlive = false
        // Two while it is down.
        try oom()
        try oom()
        #expect(hog.oomKills() == 3)
        let second = try AgentProcess(reusing: first.dir)
        var secondAlive = true
        defer { if secondAlive { second.stop(keepingState: true) } }
        client = try connect(second)
        let boot = try #require(try client.call(AgentMethods.machineInfo, MachineInfoRequest()).bootId)
        client.close()
        var seen: [String] = []
        for _ in 0..<250 where seen.count < 2 {
            seen = ooms(second.socket)
            usleep(20_000)
        }
        usleep(300_000)
        // This boot's events: the two, not the one the first recorded.
        #expect(ooms(second.socket) == Array(repeating: "\(boot) while the agent was down", count: 2), "\(seen)")
        #expect(snapshotCount(second, becomes: 3))
        // A clean restart: nothing new, nothing reported again.
        second.stop(keepingState: true)
        secondAlive = false
        let third = try AgentProcess(reusing: first.dir)
        defer { third.stop(keepingState: true) }
        client = try connect(third)
        _ = try client.call(AgentMethods.machineInfo, MachineInfoRequest())
        client.close()
        usleep(500_000)
        #expect(ooms(third.socket).isEmpty, "\(ooms(third.socket))")
    }
}

extension SnapshotAgentTests {
    /// A snapshot damaged while the agent was stopped: its container was
    /// known all along (its CREATED is in the log), so it is adopted with
    /// no CREATED; one was recorded, "made while the agent was down",
    /// unpaired (a probe).
    @Test func aDamagedSnapshotsContainerIsAdoptedWithoutACreated() throws {
        let root = try TestRoot("damaged")
        defer { root.destroy() }
        let first = try AgentProcess(config: agentConfig(root))
        defer { _ = removeTree(first.dir) }
        var client = try connect(first)
        _ = try client.call(AgentMethods.create, CreateRequest(name: "/dmg", spec: ContainerSpec(memory: MemorySpec(limit: 64 << 20))))
        client.close()
        first.stop(keepingState: true)
        let file = first.dir + "/state/snapshots/" + SnapshotStore.fileName("/dmg")
        #expect(Sys.exists(file), "no snapshot file of /dmg after a clean stop")
        try Sys.writeFileAtomically(file, Array("not a snapshot".utf8))
        let second = try AgentProcess(reusing: first.dir)
        defer { second.stop() }
        client = try connect(second)
        defer { client.close() }
        let created = allEvents(second.socket).filter { $0.kind == .containerEventCreated }
        #expect(created.isEmpty, "\(created)")
        #expect(snapshots(second).load("/dmg") != nil, "adopted: a snapshot written anew")
    }
}
