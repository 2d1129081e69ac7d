// The request journal (PROTOCOL.md section 6.1) without root: its files,
// replay, redo after a crash, expiry, bounds, a reused id, a retry racing
// its first call; and the dispatcher replaying a Create and a Destroy on a
// fake tree instead of doing them twice.
import Glibc
@testable import LmctfyAgent
import LmctfyProto
import LmctfyRPC
import LmctfySystem
import LmctfyTestSupport
import Testing

/// A wall clock the test moves.
final class FakeWallClock: Sendable {
    let ns = Mutexed<UInt64>(1_700_000_000_000_000_000)
    func advance(seconds: UInt64) { ns.locked { $0 += seconds * 1_000_000_000 } }
    var now: @Sendable () -> UInt64 { { [ns] in ns.locked { $0 } } }
}

/// A scratch state directory, removed by `remove`.
struct JournalDir {
    let state: String
    var requests: String { state + "/requests" }
    init() throws {
        state = "/tmp/lmctfy-journal-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try Sys.mkdir(state, mode: 0o700)
    }
    func journal(boot: String = "boot1", clock: FakeWallClock = FakeWallClock(),
                 limits: RequestJournal.Limits = .init()) throws -> RequestJournal {
        let j = RequestJournal(directory: requests, bootId: boot, limits: limits, now: clock.now)
        try j.open()
        return j
    }
    func entry(_ id: String) throws -> RequestJournalEntry {
        try RequestJournalEntry(serializedBytes: try Sys.readBytes(requests + "/" + id))
    }
    func files() -> [String] { ((try? Sys.subdirectoriesAndFiles(requests)) ?? []).sorted() }
    func remove() { _ = removeTree(state) }
}

@Suite struct RequestJournalTests {
    let payload: [UInt8] = Array("create /a".utf8)

    @Test func entriesAreWrittenWholeAndPrivate() throws {
        let dir = try JournalDir()
        defer { dir.remove() }
        let j = try dir.journal()
        var st = stat()
        #expect(stat(dir.requests, &st) == 0 && st.st_mode & 0o777 == 0o700)
        #expect(try j.begin(id: "id-1", method: "Create", payload: payload) == .fresh)
        // Started: on disk before the work, with what identifies the request.
        var e = try dir.entry("id-1")
        #expect(e.method == "Create" && e.finished != true && e.bootId == "boot1")
        #expect(e.requestSha256 == Crypto.sha256(payload))
        #expect(stat(dir.requests + "/id-1", &st) == 0 && st.st_mode & 0o777 == 0o600)
        #expect(j.finish(id: "id-1", method: "Create", payload: payload, status: .ok, response: [1, 2]) == nil)
        e = try dir.entry("id-1")
        #expect(e.finished == true && e.code == 0 && e.response == [1, 2])
        #expect(dir.files() == ["id-1"], "no temp file is left behind")
        // A temp file a crash left is removed at open.
        try Sys.createFile(dir.requests + "/.tmp-id-2", "torn")
        _ = try dir.journal()
        #expect(dir.files() == ["id-1"])
    }

    @Test func aFinishedCallIsReplayedWithItsStatusAndResponse() throws {
        let dir = try JournalDir()
        defer { dir.remove() }
        let j = try dir.journal()
        _ = try j.begin(id: "ok", method: "Create", payload: payload)
        j.finish(id: "ok", method: "Create", payload: payload, status: .ok, response: [7])
        #expect(try j.begin(id: "ok", method: "Create", payload: payload) == .replay(.ok, [7]))
        _ = try j.begin(id: "bad", method: "Create", payload: payload)
        j.finish(id: "bad", method: "Create", payload: payload, status: CallStatus(.alreadyExists, "exists"), response: [])
        #expect(try j.begin(id: "bad", method: "Create", payload: payload) == .replay(CallStatus(.alreadyExists, "exists"), []))
        // And by the next agent, from the files.
        let next = try dir.journal(boot: "boot2")
        #expect(try next.begin(id: "ok", method: "Create", payload: payload) == .replay(.ok, [7]))
    }

    @Test func aCallAnEarlierAgentDiedUnderIsRedone() throws {
        let dir = try JournalDir()
        defer { dir.remove() }
        let first = try dir.journal(boot: "boot1")
        #expect(try first.begin(id: "x", method: "Destroy", payload: payload) == .fresh)
        // The agent dies: no finish. The next one redoes it, then replays.
        let next = try dir.journal(boot: "boot2")
        guard case .redo(let started) = try next.begin(id: "x", method: "Destroy", payload: payload) else {
            Issue.record("not a redo")
            return
        }
        #expect(started > 0)
        #expect(try dir.entry("x").bootId == "boot2")
        next.finish(id: "x", method: "Destroy", payload: payload, status: .ok, response: [])
        #expect(try next.begin(id: "x", method: "Destroy", payload: payload) == .replay(.ok, []))
    }

    @Test func aReusedIdWithAnotherRequestOrABadIdIsInvalidArgument() throws {
        let dir = try JournalDir()
        defer { dir.remove() }
        let j = try dir.journal()
        _ = try j.begin(id: "x", method: "Create", payload: payload)
        j.finish(id: "x", method: "Create", payload: payload, status: .ok, response: [])
        func code(_ body: () throws -> Void) -> StatusCode? {
            do { try body(); return nil } catch let e as LmctfyError { return e.code } catch { return .unknown }
        }
        #expect(code { _ = try j.begin(id: "x", method: "Create", payload: Array("create /b".utf8)) } == .invalidArgument)
        #expect(code { _ = try j.begin(id: "x", method: "Destroy", payload: payload) } == .invalidArgument)
        for bad in ["", "../etc", "a/b", ".tmp", String(repeating: "a", count: 65)] {
            #expect(code { _ = try j.begin(id: bad, method: "Create", payload: payload) } == .invalidArgument, "\(bad)")
        }
        #expect(dir.files() == ["x"])
    }

    @Test func entriesExpireAfterTheRetention() throws {
        let dir = try JournalDir()
        defer { dir.remove() }
        let clock = FakeWallClock()
        let j = try dir.journal(clock: clock, limits: .init(retentionNs: 600 * 1_000_000_000))
        _ = try j.begin(id: "old", method: "Pause", payload: payload)
        j.finish(id: "old", method: "Pause", payload: payload, status: .ok, response: [])
        clock.advance(seconds: 300)
        _ = try j.begin(id: "new", method: "Pause", payload: payload)
        j.finish(id: "new", method: "Pause", payload: payload, status: .ok, response: [])
        #expect(j.sweep() == 0)
        clock.advance(seconds: 301)
        #expect(j.sweep() == 1)
        #expect(dir.files() == ["new"])
        // Forgotten: the id is new again.
        #expect(try j.begin(id: "old", method: "Pause", payload: payload) == .fresh)
        // A restarted agent sweeps at open.
        clock.advance(seconds: 1200)
        _ = try dir.journal(clock: clock)
        #expect(dir.files().isEmpty)
    }

    @Test func theOldestEntriesGoPastTheBound() throws {
        let dir = try JournalDir()
        defer { dir.remove() }
        let clock = FakeWallClock()
        let j = try dir.journal(clock: clock, limits: .init(maxEntries: 3))
        for i in 1...5 {
            _ = try j.begin(id: "r\(i)", method: "Resume", payload: payload)
            j.finish(id: "r\(i)", method: "Resume", payload: payload, status: .ok, response: [])
            clock.advance(seconds: 1)
        }
        #expect(j.count == 3)
        #expect(dir.files() == ["r3", "r4", "r5"])
    }

    @Test func aRetryRacingItsFirstCallWaitsAndReplays() throws {
        let dir = try JournalDir()
        defer { dir.remove() }
        let j = try dir.journal()
        #expect(try j.begin(id: "race", method: "Create", payload: payload) == .fresh)
        let result = Mutexed<RequestJournal.Begin?>(nil)
        let done = Latch()
        let p = payload
        Threads.detach {
            result.locked { $0 = try? j.begin(id: "race", method: "Create", payload: p) }
            done.signal()
        }
        #expect(!done.wait(seconds: 1), "the retry waits while the first call runs")
        j.finish(id: "race", method: "Create", payload: payload, status: .ok, response: [9])
        #expect(done.wait(seconds: 10))
        #expect(result.locked { $0 } == .replay(.ok, [9]))
    }

    @Test func containsComparesWhatTheRequestSet() {
        let asked = ContainerSpec(pids: PidsSpec(limit: 50))
        #expect(Dispatcher.contains(ContainerSpec(owner: 3, pids: PidsSpec(limit: 50)).dynamic, asked.dynamic))
        #expect(!Dispatcher.contains(ContainerSpec(pids: PidsSpec(limit: 49)).dynamic, asked.dynamic))
        #expect(!Dispatcher.contains(ContainerSpec().dynamic, asked.dynamic))
        #expect(Dispatcher.contains(ContainerSpec(owner: 3).dynamic, ContainerSpec().dynamic))
    }
}

/// The dispatcher with a journal on the fake tree: a Create or Destroy sent
/// again with its id is answered as before, not done again.
@Suite struct DispatcherJournalTests {
    @Test func aRetriedCreateAndDestroyAreReplayedNotRedone() throws {
        let dir = try JournalDir()
        defer { dir.remove() }
        let machine = try FakeAgentMachine(journal: try dir.journal())
        let create = CreateRequest(name: "web", requestId: "c1")
        #expect(try machine.code(AgentMethods.create, create) == .ok)
        #expect(try machine.code(AgentMethods.create, create) == .ok, "replayed, not ALREADY_EXISTS")
        #expect(try machine.code(AgentMethods.create, CreateRequest(name: "web", requestId: "c2")) == .alreadyExists)
        #expect(try machine.code(AgentMethods.create, CreateRequest(name: "db", requestId: "c1")) == .invalidArgument)
        #expect(machine.events.filter { $0.kind == .containerEventCreated }.count == 1, "created once")
        // Without an id nothing is journaled: as before.
        #expect(try machine.code(AgentMethods.create, CreateRequest(name: "web")) == .alreadyExists)
        #expect(dir.files() == ["c1", "c2"])
    }

    @Test func aCreateOrDestroyAnEarlierAgentDiedUnderIsRedoneToOK() throws {
        let dir = try JournalDir()
        defer { dir.remove() }
        // The earlier agent journaled both starts, did the work, and died.
        let create = CreateRequest(name: "web", requestId: "c1")
        let destroy = DestroyRequest(name: "busy", requestId: "d1")
        let earlier = try dir.journal(boot: "boot1")
        _ = try earlier.begin(id: "c1", method: "Create", payload: try create.serializedBytes())
        _ = try earlier.begin(id: "d1", method: "Destroy", payload: try destroy.serializedBytes())
        let machine = try FakeAgentMachine(journal: try dir.journal(boot: "boot2"))
        try machine.container(["agent", "web"])
        #expect(try machine.code(AgentMethods.create, create) == .ok)
        #expect(try machine.code(AgentMethods.destroy, DestroyRequest(name: "gone", requestId: "d2")) == .notFound,
                "a fresh id gets NOT_FOUND as usual")
        let gone = try DestroyRequest(name: "nothing-here", requestId: "d1").serializedBytes()
        #expect(machine.raw("Destroy", gone).0.code == .invalidArgument, "d1 belongs to another request")
        _ = try earlier.begin(id: "d3", method: "Destroy", payload: try DestroyRequest(name: "gone", requestId: "d3").serializedBytes())
        let redo = try FakeAgentMachine(journal: try dir.journal(boot: "boot3"))
        #expect(try redo.code(AgentMethods.destroy, DestroyRequest(name: "gone", requestId: "d3")) == .ok)
        #expect(try dir.entry("c1").finished == true)
    }
}
