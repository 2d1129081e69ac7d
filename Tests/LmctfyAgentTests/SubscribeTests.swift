// Subscribe against a real agent on the real kernel (PROTOCOL.md section
// 6.2): one log, each event to every matching subscriber with the same
// sequence, resume without gap or duplicate, explicit gaps, OUT_OF_RANGE for
// a resume point from the future, filters, cancel and lag.
import Foundation
import Glibc
import Lmctfy
import LmctfyAgent
import LmctfyEvents
import LmctfyProto
import LmctfyRPC
import LmctfySystem
import LmctfyTestSupport
import Testing

/// A subscriber on a thread of its own: collects responses until `until`
/// says stop (then cancels) or the deadline ends the call.
final class Subscriber: @unchecked Sendable {
    private let lock = NSLock()
    private var got: [SubscribeResponse] = []
    private var ended: LmctfyError?
    private let done = DispatchSemaphore(value: 0)

    init(_ socket: String, _ request: SubscribeRequest, deadlineMs: UInt32 = 10_000,
         until: @escaping @Sendable ([SubscribeResponse]) -> Bool) {
        let thread = Thread { [self] in
            do {
                let client = try RpcClient.connect(unixPath: socket, name: "subscriber")
                defer { client.close() }
                try client.stream(AgentMethods.subscribe, request, deadlineMs: deadlineMs) { (r: SubscribeResponse) in
                    let all: [SubscribeResponse] = lock.withLock { got.append(r); return got }
                    return !until(all)
                }
            } catch {
                lock.withLock { ended = error as? LmctfyError ?? LmctfyError(.unknown, "\(error)") }
            }
            done.signal()
        }
        thread.start()
    }

    /// Waits for the call to end; its responses and the error that ended it, if any.
    func wait() -> ([SubscribeResponse], LmctfyError?) {
        done.wait()
        return lock.withLock { (got, ended) }
    }
}

func events(_ rs: [SubscribeResponse]) -> [ContainerEvent] { rs.compactMap(\.event) }

/// Waits (up to 10 s) until the agent serves `n` subscriptions, so that
/// events made next reach them live.
func waitForSubscribers(_ agent: Agent, _ n: Int) {
    var tries = 0
    while agent.subscriberCount < n && tries < 1000 {
        usleep(10_000)
        tries += 1
    }
    #expect(agent.subscriberCount >= n, "the subscriptions were not accepted in time")
}

/// Waits (up to 10 s) until the log holds `n` events of `name`.
func waitForEvents(_ socket: String, _ name: String, _ n: Int) {
    for _ in 0..<200 {
        let replay = Subscriber(socket, SubscribeRequest(name: name, afterSequence: 0), until: { $0.last?.caughtUp != nil })
        if events(replay.wait().0).count >= n { return }
        usleep(50_000)
    }
    Issue.record("the log never held \(n) events of \(name)")
}

/// A subscriber that resumes where it was cut off when it lags (as a real
/// client does), on a thread of its own, until it has `count` events.
final class ResumingSubscriber: @unchecked Sendable {
    private let lock = NSLock()
    private var got: [ContainerEvent] = []
    private var cuts = 0
    private let done = DispatchSemaphore(value: 0)

    init(_ socket: String, _ request: SubscribeRequest, count: Int) {
        let thread = Thread { [self] in
            var r = request
            for _ in 0..<1000 {
                let have = lock.withLock { got.count }
                let part = Subscriber(socket, r, deadlineMs: 30_000, until: { events($0).count >= count - have })
                let (rs, error) = part.wait()
                let new = events(rs)
                lock.withLock { got += new }
                guard error?.code == .resourceExhausted, let last = lock.withLock({ got.last }) else { break }
                lock.withLock { cuts += 1 }
                r.bootId = last.bootId
                r.afterSequence = last.sequence
            }
            done.signal()
        }
        thread.start()
    }

    /// The events and how many times the stream was cut for lagging.
    func wait() -> ([ContainerEvent], Int) {
        done.wait()
        return lock.withLock { (got, cuts) }
    }
}

@Suite(.enabled(if: RealCgroups.available, "\(RealCgroups.unavailableReason ?? "")"), .serialized)
struct SubscribeTests {
    @Test func everySubscriberGetsEachEventOnceWithOneSequenceAndResumesWithoutGapOrDuplicate() throws {
        // No reconcile, no watcher: other tests' containers would take sequence numbers.
        try withAgent("reconcile_interval_ms: 0 watch_containers: false") { agent, socket in
            let name = RealCgroups.uniqueName("sub")
            let admin = try RpcClient.connect(unixPath: socket)
            defer {
                _ = try? admin.call(AgentMethods.destroy, DestroyRequest(name: name, force: true))
                admin.close()
            }
            let info = try admin.call(AgentMethods.machineInfo, MachineInfoRequest())
            let boot = try #require(info.bootId)
            // Two live subscribers on this container, each until destroyed.
            let filter = SubscribeRequest(name: name)
            let untilDestroyed: @Sendable ([SubscribeResponse]) -> Bool = {
                events($0).contains { $0.kind == .containerEventDestroyed }
            }
            let a = Subscriber(socket, filter, until: untilDestroyed)
            let b = Subscriber(socket, filter, until: untilDestroyed)
            // A third on every container, to see that others' events flow too.
            let all = Subscriber(socket, SubscribeRequest(), until: untilDestroyed)
            waitForSubscribers(agent, 3)
            _ = try admin.call(AgentMethods.create, CreateRequest(name: name, spec: ContainerSpec(textFormat: "memory { limit: 100000000 }")))
            _ = try admin.call(AgentMethods.pause, PauseRequest(name: name))
            _ = try admin.call(AgentMethods.resume, ResumeRequest(name: name))
            _ = try admin.call(AgentMethods.destroy, DestroyRequest(name: name, force: true))
            let (ra, ea) = a.wait(), (rb, eb) = b.wait(), (rall, eall) = all.wait()
            #expect(ea == nil && eb == nil && eall == nil, "\(String(describing: ea)) \(String(describing: eb)) \(String(describing: eall))")
            let seqA = events(ra).map(\.sequence), seqB = events(rb).map(\.sequence)
            #expect(events(ra).map(\.kind) == [.containerEventCreated, .containerEventFreezer, .containerEventFreezer, .containerEventDestroyed])
            #expect(seqA == seqB, "one event, one sequence number, for every subscriber")
            #expect(events(ra).allSatisfy { $0.bootId == boot && $0.container == name })
            let numbers = seqA.compactMap { $0 }
            #expect(numbers == Array(numbers[0]...numbers[0] + 3), "nothing else happened to this container in between")
            #expect(events(rall).map(\.sequence).suffix(4) == seqA.suffix(4))
            #expect(ra.allSatisfy { $0.gap == nil })

            // Resume after the first event: the rest, no gap, no duplicate.
            let resumed = Subscriber(socket, SubscribeRequest(name: name, bootId: boot, afterSequence: numbers[0]), until: untilDestroyed)
            let (rr, er) = resumed.wait()
            #expect(er == nil)
            #expect(events(rr).map(\.sequence) == Array(seqA.dropFirst()))
            #expect(rr.allSatisfy { $0.gap == nil })

            // Kinds filter, and a resume from the future is refused.
            let kinds = Subscriber(socket, SubscribeRequest(name: name, kinds: [.containerEventFreezer], bootId: boot, afterSequence: numbers[0] - 1),
                                   until: { events($0).count == 2 })
            #expect(events(kinds.wait().0).map(\.frozen) == [true, false])
            let future = Subscriber(socket, SubscribeRequest(bootId: boot, afterSequence: numbers[3] + 1_000), until: { _ in true })
            let (rf, ef) = future.wait()
            #expect(rf.isEmpty && ef?.code == .outOfRange, "\(String(describing: ef))")
            _ = agent
        }
    }

    @Test func aResumePointNoLongerKeptOrOfAnotherBootIsAGapThenTheKeptEvents() throws {
        // A log of 3: the 4 events of a container's life push the first out.
        try withAgent("event_log_capacity: 3 reconcile_interval_ms: 0 watch_containers: false") { _, socket in
            let name = RealCgroups.uniqueName("subgap")
            let admin = try RpcClient.connect(unixPath: socket)
            defer {
                _ = try? admin.call(AgentMethods.destroy, DestroyRequest(name: name, force: true))
                admin.close()
            }
            let boot = try #require(try admin.call(AgentMethods.machineInfo, MachineInfoRequest()).bootId)
            _ = try admin.call(AgentMethods.create, CreateRequest(name: name, spec: ContainerSpec()))
            _ = try admin.call(AgentMethods.pause, PauseRequest(name: name))
            _ = try admin.call(AgentMethods.resume, ResumeRequest(name: name))
            _ = try admin.call(AgentMethods.destroy, DestroyRequest(name: name, force: true))
            // Sequences 1..4 (a fresh agent); 2, 3, 4 are kept.
            let old = Subscriber(socket, SubscribeRequest(bootId: boot, afterSequence: 0), until: { $0.last?.caughtUp != nil })
            let (r, e) = old.wait()
            #expect(e == nil)
            #expect(r.count == 5 && r.last?.caughtUp == 4, "gap, the 3 kept events, then caught up at the newest: \(r)")
            #expect(r.first?.gap?.firstSequence == 2 && r.first?.gap?.afterSequence == 0 && r.first?.gap?.bootId == boot)
            #expect(events(r).map(\.sequence) == [2, 3, 4])
            let other = Subscriber(socket, SubscribeRequest(bootId: "0123456789abcdef0123456789abcdef", afterSequence: 3),
                                   until: { events($0).count == 3 })
            let (ro, _) = other.wait()
            #expect(ro.first?.gap?.requestedBootId == "0123456789abcdef0123456789abcdef" && ro.first?.gap?.bootId == boot)
            #expect(events(ro).map(\.sequence) == [2, 3, 4], "another boot's resume point: everything kept, after the gap")
        }
    }

    @Test func badRequestsAreRefusedAndACancelledSubscriptionIsGone() throws {
        try withAgent("watch_containers: false") { agent, socket in
            let client = try RpcClient.connect(unixPath: socket)
            defer { client.close() }
            for (request, code) in [(SubscribeRequest(recursive: true), StatusCode.invalidArgument),
                                    (SubscribeRequest(name: "not a name!"), .invalidArgument),
                                    (SubscribeRequest(name: "/a/cgroup.procs"), .invalidArgument),
                                    (SubscribeRequest(name: ""), .invalidArgument)] {
                #expect(throws: LmctfyError.self) { try client.stream(AgentMethods.subscribe, request, deadlineMs: 5000) { _ in true } }
                do { try client.stream(AgentMethods.subscribe, request, deadlineMs: 5000) { _ in true } } catch {
                    #expect((error as? LmctfyError)?.code == code, "\(request): \(error)")
                }
            }
            #expect(throws: LmctfyError.self) { try client.stream("Subscribe", [0xff, 0xff], deadlineMs: 5000) { _ in true } }
            // A subscription with a deadline ends with DEADLINE_EXCEEDED
            // when nothing matches (the hub holds it only while it lasts).
            let quiet = Subscriber(socket, SubscribeRequest(name: "/nothing/here"), deadlineMs: 300, until: { _ in false })
            let (none, why) = quiet.wait()
            #expect(none.map(\.caughtUp) == [0] && why?.code == .deadlineExceeded, "\(none) \(String(describing: why))")
            // A subscriber that cancels after its first event: the agent keeps
            // serving the others (the hub drops it; this connection goes on).
            let s = Subscriber(socket, SubscribeRequest(), until: { !events($0).isEmpty })
            waitForSubscribers(agent, 1)
            let name = RealCgroups.uniqueName("subcancel")
            _ = try client.call(AgentMethods.create, CreateRequest(name: name, spec: ContainerSpec()))
            _ = try client.call(AgentMethods.destroy, DestroyRequest(name: name, force: true))
            #expect(events(s.wait().0).first?.kind == .containerEventCreated)
            #expect(try client.call(AgentMethods.ping, PingRequest(data: [1])).data == [1])
            // Cancelled, timed out and refused subscriptions hold nothing.
            #expect(agent.subscriberCount == 0)
        }
    }

    /// `lmctl stats -f` follows a container that exists, and ends with 5
    /// when it is destroyed (it waited on, printing nothing, for a name
    /// that did not exist and after a destroy; a probe).
    @Test func lmctlStatsFollowEndsWithItsContainer() throws {
        try withAgent("stats_interval_ms: 200") { _, socket in
            let name = RealCgroups.uniqueName("statsf")
            let lmctl = "\(builtTool("lmctl")) --agent unix://\(socket)"
            defer { _ = try? TestProcess.capture(["/bin/sh", "-c", "\(lmctl) destroy -f \(name)"]) }
            let missing = try TestProcess.capture(["/usr/bin/timeout", "-s", "KILL", "10", "/bin/sh", "-c", "\(lmctl) stats -f \(name)"])
            #expect(missing.status == 5, "\(missing)")
            #expect(try TestProcess.capture(["/bin/sh", "-c", "\(lmctl) create \(name) 'memory:{limit:100000000}'"]).status == 0)
            let r = try TestProcess.capture(["/usr/bin/timeout", "-s", "KILL", "20", "/bin/sh", "-c", """
                \(lmctl) stats -f \(name) > /dev/null 2> \(socket).err & pid=$!
                sleep 1; \(lmctl) destroy -f \(name)
                wait $pid; echo "rc=$?"; cat \(socket).err
                """])
            let out = String(decoding: r.stdout, as: UTF8.self)
            #expect(out.contains("rc=5") && out.contains("was destroyed"), "\(r)")
            // Without a name: every container's samples, and a container's
            // destroy does not end it (it ended at the first destroy);
            // `stats -f /` is refused (the root has no samples: it waited).
            let other = RealCgroups.uniqueName("statsf2")
            let every = try TestProcess.capture(["/usr/bin/timeout", "-s", "KILL", "20", "/bin/sh", "-c", """
                \(lmctl) create \(other) ''; \(lmctl) stats -f -o json > \(socket).out 2>&1 & pid=$!
                sleep 1; \(lmctl) destroy -f \(other); sleep 0.5
                kill -0 $pid && echo running; kill -KILL $pid; wait $pid; cat \(socket).out
                """])
            let everyOut = String(decoding: every.stdout, as: UTF8.self)
            #expect(everyOut.hasPrefix("running\n") && everyOut.contains("\"container\":\"\(other)\""), "\(every)")
            let root = try TestProcess.capture(["/bin/sh", "-c", "\(lmctl) stats -f /"])
            #expect(root.status == 3 && String(decoding: root.stderr, as: UTF8.self).contains("not its root"), "\(root)")
        }
    }

    /// `lmctl events -f` and `lmctl notify -f` whose pipe's reader has gone
    /// (SIGPIPE ignored) end with 15 within a second or so while no event
    /// comes: they noticed only at the next event, which may never come.
    @Test func lmctlFollowersNoticeAGoneReaderWithoutAnEvent() throws {
        try withAgent { _, socket in
            let name = RealCgroups.uniqueName("gonerd")
            let lmctl = "\(builtTool("lmctl")) --agent unix://\(socket)"
            defer { _ = try? TestProcess.capture(["/bin/sh", "-c", "\(lmctl) destroy -f \(name)"]) }
            #expect(try TestProcess.capture(["/bin/sh", "-c", "\(lmctl) create \(name) 'pids:{limit:100}'"]).status == 0)
            // Nothing happens in the container; the reader, `sleep 1`, reads
            // nothing and goes after the follower is watching.
            for follower in ["events -f --kind oom \(name)", "notify container empty -f \(name)"] {
                let r = try TestProcess.capture(["/usr/bin/timeout", "-s", "KILL", "20", "/bin/sh", "-c", """
                    { (trap '' PIPE; exec \(lmctl) \(follower)); echo "rc=$?" >&2; } | sleep 1
                    """])
                let err = String(decoding: r.stderr, as: UTF8.self)
                #expect(r.status == 0 && err.contains("rc=15"), "\(follower): \(r)")
            }
        }
    }

    @Test func lmctlEventsPrintsTheLogAsLinesOrJSONAndResumes() throws {
        try withAgent { _, socket in
            let name = RealCgroups.uniqueName("subcli")
            let lmctl = [builtTool("lmctl"), "--agent", "unix://" + socket]
            func run(_ args: String...) throws -> (Int32, String, String) {
                let r = try TestProcess.capture(lmctl + args)
                return (r.status, String(decoding: r.stdout, as: UTF8.self), String(decoding: r.stderr, as: UTF8.self))
            }
            defer { _ = try? run("destroy", "-f", name) }
            #expect(try run("create", name, "memory:{limit:100000000}").0 == 0)
            #expect(try run("pause", name).0 == 0)
            #expect(try run("destroy", "-f", name).0 == 0)
            let boot = try #require(try run("info", "-o", "json").1.split(separator: "\"").drop { $0 != "bootId" }.dropFirst(2).first)

            // Without -f: what is kept, one line each, then exit.
            var (status, out, err) = try run("events", name)
            #expect(status == 0, "\(err)")
            let lines = out.split(separator: "\n")
            // (Required: the lines are indexed below, and a crash would end
            // the whole test process rather than this test.)
            try #require(lines.count == 3, "\(out)")
            #expect(lines.map { $0.split(separator: " ").dropFirst(2).first } == ["CREATED", "FREEZER", "DESTROYED"])
            #expect(lines.allSatisfy { $0.hasPrefix("\(boot):") && $0.split(separator: " ").dropFirst(3).first.map(String.init) == name })
            #expect(lines[1].hasSuffix("frozen=true"))

            // JSON: the proto3 mapping, enum names included.
            (status, out, _) = try run("events", "-o", "json", "--kind", "destroyed", name)
            #expect(status == 0)
            #expect(out.contains("\"kind\":\"CONTAINER_EVENT_DESTROYED\"") && out.contains("\"bootId\":\"\(boot)\""), "\(out)")
            #expect(out.split(separator: "\n").count == 1)

            // Resume after the first: the other two.
            let first = String(lines[0].split(separator: " ")[0])
            (status, out, _) = try run("events", "--after", first, name)
            #expect(out.split(separator: "\n").map { $0.split(separator: " ")[2] } == ["FREEZER", "DESTROYED"])

            // Bad input: a clear error and exit 3; a future resume point is 11.
            #expect(try run("events", "--after", "nonsense").0 == 3)
            #expect(try run("events", "--after", ":5").0 == 3, "a resume point names its boot")
            #expect(try run("events", "--after", "not-a-boot:5").0 == 3, "a boot id is 32 hex digits")
            #expect(try run("events", "--after", String(boot.dropLast()) + ":5").0 == 3)
            #expect(try run("events", "--after", boot + ":+5").0 == 3, "a sequence is digits, as events print it")
            #expect(try run("events", "--kind", "NOPE").0 == 3)
            (status, _, err) = try run("events", "--after", "\(boot):999999")
            #expect(status == 11, "\(err)")
        }
    }

    @Test func aProcessTheAgentRanIsAnExitEventEvenWhenItsCallerLeft() throws {
        try withAgent { _, socket in
            let name = RealCgroups.uniqueName("subrun")
            let admin = try RpcClient.connect(unixPath: socket)
            defer {
                _ = try? admin.call(AgentMethods.destroy, DestroyRequest(name: name, force: true))
                admin.close()
            }
            _ = try admin.call(AgentMethods.create, CreateRequest(name: name, spec: ContainerSpec()))
            let boot = try #require(try admin.call(AgentMethods.machineInfo, MachineInfoRequest()).bootId)
            let now = Subscriber(socket, SubscribeRequest(bootId: boot, afterSequence: 0), until: { $0.last?.caughtUp != nil })
            let base = try #require(now.wait().0.last?.caughtUp)
            try admin.stream(AgentMethods.run, RunRequest(name: name, argv: ["/bin/sh", "-c", "exit 3"])) { _ in true }
            // A caller that leaves once its command started: the agent kills
            // the command (PROTOCOL.md 6), and its exit is still an event.
            let leaver = try RpcClient.connect(unixPath: socket)
            var pid: Int32 = 0
            try leaver.stream(AgentMethods.run, RunRequest(name: name, argv: ["/bin/sleep", "30"])) { r in
                pid = r.pid ?? 0
                return false
            }
            leaver.close()
            let exits = Subscriber(socket, SubscribeRequest(name: name, kinds: [.containerEventProcessExited], bootId: boot, afterSequence: base),
                                   until: { events($0).count == 2 })
            let (r, e) = exits.wait()
            #expect(e == nil)
            let got = events(r)
            #expect(got.count == 2)
            #expect(got.first?.exitCode == 3 && got.first?.termSignal == nil)
            #expect(got.last?.termSignal == SIGKILL && got.last?.pid == pid && pid > 0)
            #expect(got.allSatisfy { $0.container == name })
        }
    }

    @Test func changesMadeWithTheCLIBehindTheAgentsBackAreEventsOnce() throws {
        try withAgent("reconcile_interval_ms: 100") { agent, socket in
            let name = RealCgroups.uniqueName("subcli2")
            let lmctfy = builtTool("lmctfy")
            func run(_ args: String...) throws -> Int32 { try TestProcess.capture([lmctfy] + args).status }
            defer { _ = try? run("destroy", "-f", name) }
            let watcher = Subscriber(socket, SubscribeRequest(name: name), until: {
                events($0).contains { $0.kind == .containerEventDestroyed }
            })
            waitForSubscribers(agent, 1)
            // Each state lasts a few reconcile rounds (a change undone within
            // one round is not seen: README).
            #expect(try run("create", name, "memory:{limit:100000000}") == 0)
            waitForEvents(socket, name, 1)
            #expect(try run("pause", name) == 0)
            waitForEvents(socket, name, 2)
            #expect(try run("resume", name) == 0)
            waitForEvents(socket, name, 3)
            #expect(try run("destroy", "-f", name) == 0)
            let (r, e) = watcher.wait()
            #expect(e == nil)
            let got = events(r)
            #expect(got.map(\.kind) == [.containerEventCreated, .containerEventFreezer, .containerEventFreezer, .containerEventDestroyed])
            #expect(got.map(\.frozen) == [nil, true, false, nil])
            // The agent's own changes are not reported a second time by the reconcile.
            let admin = try RpcClient.connect(unixPath: socket)
            defer { admin.close() }
            let boot = try #require(try admin.call(AgentMethods.machineInfo, MachineInfoRequest()).bootId)
            let base = try #require(got.last?.sequence)
            _ = try admin.call(AgentMethods.create, CreateRequest(name: name, spec: ContainerSpec()))
            _ = try admin.call(AgentMethods.pause, PauseRequest(name: name))
            usleep(400_000)  // reconcile rounds that must not report these again
            _ = try admin.call(AgentMethods.destroy, DestroyRequest(name: name, force: true))
            usleep(400_000)
            let again = Subscriber(socket, SubscribeRequest(name: name, bootId: boot, afterSequence: base), until: { $0.last?.caughtUp != nil })
            #expect(events(again.wait().0).map(\.kind) == [.containerEventCreated, .containerEventFreezer, .containerEventDestroyed])
        }
    }

    /// A container the agent made is watched only some milliseconds later
    /// (a short-lived one never is): what is done to it behind the agent's
    /// back in between (paused, given a subcontainer, here a few
    /// microseconds after the create answered) is still reported, once.
    @Test func changesBehindTheAgentsBackJustAfterItsCreateAreEvents() throws {
        try withAgent("reconcile_interval_ms: 0") { agent, socket in
            let name = RealCgroups.uniqueName("subearly")
            let api = try ContainerApi.detect()
            let admin = try RpcClient.connect(unixPath: socket)
            defer {
                _ = try? admin.call(AgentMethods.destroy, DestroyRequest(name: name, force: true))
                admin.close()
            }
            let watcher = Subscriber(socket, SubscribeRequest(name: name, recursive: true), until: {
                events($0).contains { $0.kind == .containerEventDestroyed && $0.container == name }
            })
            waitForSubscribers(agent, 1)
            _ = try admin.call(AgentMethods.create, CreateRequest(name: name, spec: ContainerSpec(memory: MemorySpec(limit: 64 << 20))))
            _ = try api.create(try api.resolve(name + "/sub"), spec: ContainerSpec())
            try api.get(name).setFrozen(true)
            var seen: [ContainerEvent] = []
            for _ in 0..<300 {
                let replay = Subscriber(socket, SubscribeRequest(name: name, recursive: true, afterSequence: 0), until: { $0.last?.caughtUp != nil })
                seen = events(replay.wait().0)
                if seen.contains(where: { $0.kind == .containerEventFreezer }) && seen.contains(where: { $0.container == name + "/sub" }) { break }
                usleep(10_000)
            }
            _ = try admin.call(AgentMethods.destroy, DestroyRequest(name: name, force: true))
            let (r, e) = watcher.wait()
            #expect(e == nil)
            let got = events(r).map { "\($0.kind!.protoName) \($0.container == name ? "." : $0.container ?? "?")\($0.frozen == true ? " frozen" : "")" }
            #expect(got.first == "CONTAINER_EVENT_CREATED .")
            #expect(got.filter { $0 == "CONTAINER_EVENT_FREEZER . frozen" }.count == 1, "\(got)")
            #expect(got.filter { $0.hasPrefix("CONTAINER_EVENT_CREATED \(name)/sub") }.count == 1, "\(got)")
            #expect(got.last == "CONTAINER_EVENT_DESTROYED .", "\(got)")
        }
    }

    /// A subscriber that stops reading: once its connection holds more than
    /// the limit the agent ends its stream with RESOURCE_EXHAUSTED naming
    /// where to resume, and drops it; the others go on.
    @Test func aSubscriberThatDoesNotReadIsEndedWithWhereToResume() throws {
        try withAgent("limits { max_connection_buffered_bytes: 4096 } reconcile_interval_ms: 0 watch_containers: false") { agent, socket in
            let name = RealCgroups.uniqueName("sublag")
            let admin = try RpcClient.connect(unixPath: socket)
            defer {
                _ = try? admin.call(AgentMethods.destroy, DestroyRequest(name: name, force: true))
                admin.close()
            }
            _ = try admin.call(AgentMethods.create, CreateRequest(name: name, spec: ContainerSpec()))
            // The slow one: a hand-driven session that subscribes, then reads nothing.
            let slow = try RawLink(fd: try RpcSocket.connectUnix(path: socket),
                                   Session(dialler: .peerCredentials, name: "slow", now: MonotonicClock.milliseconds()))
            slow.open("Subscribe", try SubscribeRequest(name: name).serializedBytes(), deadlineMs: nil)
            let keeper = ResumingSubscriber(socket, SubscribeRequest(name: name), count: 2000)
            waitForSubscribers(agent, 2)
            // ~230 KB of events: more than the socket buffers hold.
            for _ in 0..<1000 {
                _ = try admin.call(AgentMethods.pause, PauseRequest(name: name))
                _ = try admin.call(AgentMethods.resume, ResumeRequest(name: name))
            }
            let (kept, _) = keeper.wait()
            let keptSeq = kept.compactMap(\.sequence)
            #expect(keptSeq.count == 2000 && Set(keptSeq).count == 2000 && keptSeq == keptSeq.sorted(),
                    "the reading subscriber got every event once, in order (resuming if it lagged itself)")
            #expect(agent.subscriberCount == 0, "the one that did not read was dropped (and the other finished)")
            // Now read what the slow one was sent: events, then the status.
            slow.pump(ms: 10_000) { !slow.statuses.isEmpty }
            let status = try #require(slow.statuses.first)
            #expect(status.code == .resourceExhausted)
            #expect(status.message.hasPrefix("lagged, resume after "), "\(status.message)")

            // A replay is bounded too, but it waits for the connection: it
            // comes whole on one stream, a part at a time. (It stopped at the
            // limit, saying where to resume; the loop below resumed there.)
            let boot = try #require(try admin.call(AgentMethods.machineInfo, MachineInfoRequest()).bootId)
            var after: UInt64 = 0
            var seen: [UInt64] = []
            var parts = 0
            for _ in 0..<200 {
                parts += 1
                let part = Subscriber(socket, SubscribeRequest(name: name, bootId: boot, afterSequence: after), until: { $0.last?.caughtUp != nil })
                let (rs, err) = part.wait()
                seen += events(rs).compactMap(\.sequence)
                guard let err else { break }
                #expect(err.code == .resourceExhausted)
                let number = try #require(UInt64(err.message.dropFirst("lagged, resume after ".count).prefix { $0.isNumber }))
                #expect(number == seen.last, "resume after the last event sent")
                after = number
            }
            #expect(seen.count == 2001, "create, then 2000 pause/resume events, each once")
            #expect(parts == 1, "a 4 KiB limit does not cut a 2001-event replay (\(parts) parts)")
            #expect(seen == seen.sorted() && Set(seen).count == seen.count)
        }
    }

    /// The journal in state_dir/events: after a restart a subscriber of the
    /// old boot gets what survived of it, then the boot change as a gap
    /// saying through which sequence the old boot's events survived, then
    /// the new boot's.
    @Test func afterARestartASubscriberOfTheOldBootGetsWhatSurvivedThenTheBootChange() throws {
        let dir = "/tmp/lmctfy-agent-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try Sys.mkdir(dir, mode: 0o755)
        defer { _ = removeTree(dir) }
        let socket = dir + "/agent.sock"
        func start() throws -> Agent {
            let settings = try AgentSettings.parse(
                "unix_socket_path: \"\(socket)\" unix_socket_mode: 0666 log_level: LOG_WARNING state_dir: \"\(dir)/state\" reconcile_interval_ms: 0 stats_interval_ms: 0 watch_containers: false",
                source: "test")
            let agent = Agent(settings: settings, api: try ContainerApi.detect())
            try agent.start(handleSignals: false)
            return agent
        }
        let name = RealCgroups.uniqueName("subboot")
        defer { _ = try? ContainerApi.detect().destroy(ContainerName.resolve(name, relativeTo: .root)) }
        let first = try start()
        var client = try RpcClient.connect(unixPath: socket)
        let oldBoot = try #require(try client.call(AgentMethods.machineInfo, MachineInfoRequest()).bootId)
        _ = try client.call(AgentMethods.create, CreateRequest(name: name, spec: ContainerSpec()))
        _ = try client.call(AgentMethods.pause, PauseRequest(name: name))
        client.close()
        #expect(first.stop(graceMs: 2000) == 0)

        let second = try start()
        defer { #expect(second.stop(graceMs: 2000) == 0) }
        client = try RpcClient.connect(unixPath: socket)
        defer { client.close() }
        let newBoot = try #require(try client.call(AgentMethods.machineInfo, MachineInfoRequest()).bootId)
        #expect(newBoot != oldBoot)
        _ = try client.call(AgentMethods.resume, ResumeRequest(name: name))
        let sub = Subscriber(socket, SubscribeRequest(name: name, bootId: oldBoot, afterSequence: 1), until: { $0.last?.caughtUp != nil })
        let (r, e) = sub.wait()
        #expect(e == nil)
        #expect(r.count == 4, "\(r)")
        #expect(r.first?.event?.bootId == oldBoot && r.first?.event?.sequence == 2 && r.first?.event?.frozen == true,
                "the old boot's pause, from the journal")
        let gap = try #require(r.dropFirst().first?.gap)
        #expect(gap.requestedBootId == oldBoot && gap.afterSequence == 2 && gap.bootId == newBoot && gap.firstSequence == 1,
                "the old boot's events survived through 2; the new boot starts at 1")
        #expect(r.dropFirst(2).first?.event?.bootId == newBoot && r.dropFirst(2).first?.event?.frozen == false)
        // Caught up through the newest event of the log when it subscribed:
        // at least the resume. (The agent watches the whole machine: other
        // suites' containers made and gone while it was down are recorded
        // as destroyed by the new boot too, before or after the resume.)
        let resumed = try #require(r.dropFirst(2).first?.event?.sequence)
        #expect((r.last?.caughtUp ?? 0) >= resumed)
        // A subscriber that had seen everything of the old boot: only the gap.
        let caught = Subscriber(socket, SubscribeRequest(name: name, bootId: oldBoot, afterSequence: 2), until: { $0.last?.caughtUp != nil })
        let (rc, _) = caught.wait()
        #expect(rc.first?.gap?.afterSequence == 2 && events(rc).map(\.bootId) == [newBoot])
    }

    /// Two Notify calls on one container share one kernel watch: the event
    /// is recorded once and both see it with the same sequence number.
    @Test func twoNotifyListenersShareOneWatchAndOneSequence() throws {
        try withAgent("reconcile_interval_ms: 0 watch_containers: false") { agent, socket in
            let (admin, name, boot, base) = try sleepingContainer(socket, "subnotify")
            defer {
                _ = try? admin.call(AgentMethods.destroy, DestroyRequest(name: name, force: true))
                admin.close()
            }
            let seen = Mutexed<[[ContainerEvent]]>([[], []])
            let done = [DispatchSemaphore(value: 0), DispatchSemaphore(value: 0)]
            for i in 0..<2 {
                Thread {
                    if let client = try? RpcClient.connect(unixPath: socket) {
                        // Until the deadline: neither leaves before the other has its event.
                        try? client.stream(AgentMethods.notify, NotifyRequest(
                            name: name, spec: EventSpec(containerEmpty: .init()), bootId: boot, afterSequence: base),
                                           deadlineMs: 5000) { (r: NotifyResponse) in
                            if let e = r.event { seen.locked { $0[i].append(e) } }
                            return true
                        }
                        client.close()
                    }
                    done[i].signal()
                }.start()
            }
            usleep(500_000)
            for _ in 0..<500 where agent.notifyWatchCount == 0 { usleep(20_000) }
            #expect(agent.notifyWatchCount == 1, "one watch for two listeners")
            _ = try admin.call(AgentMethods.killAll, KillAllRequest(name: name))
            done.forEach { $0.wait() }
            let got = seen.locked { $0 }
            #expect(got[0].count == 1 && got[1].count == 1, "\(got)")
            #expect(got[0].first?.sequence == got[1].first?.sequence, "one event, one sequence number")
            let log = Subscriber(socket, SubscribeRequest(name: name, kinds: [.containerEventEmpty], bootId: boot, afterSequence: base),
                                 until: { $0.last?.caughtUp != nil })
            #expect(events(log.wait().0).count == 1, "recorded once")
            // Both gone: the watch goes too (at the watcher's next check).
            var tries = 0
            while agent.notifyWatchCount > 0 && tries < 100 { usleep(20_000); tries += 1 }
            #expect(agent.notifyWatchCount == 0)
        }
    }
}

extension SubscribeTests {
    /// One emptying is one EMPTY in the log, with a `notify container
    /// empty` registered and the reconcile on too: each recorded it (the
    /// notify's kernel watch, then the reconcile's listing). Without the
    /// watch, the reconcile records it.
    @Test func oneEmptyingIsOneEmptyEventWithANotifyRegistered() throws {
        try withAgent("reconcile_interval_ms: 100") { agent, socket in
            let (admin, name, boot, base) = try sleepingContainer(socket, "subempty")
            defer {
                _ = try? admin.call(AgentMethods.destroy, DestroyRequest(name: name, force: true))
                admin.close()
            }
            func empties() -> Int {
                let log = Subscriber(socket, SubscribeRequest(name: name, kinds: [.containerEventEmpty], bootId: boot, afterSequence: base),
                                     until: { $0.last?.caughtUp != nil })
                return events(log.wait().0).count
            }
            usleep(1_000_000)  // the reconcile has seen it with its process
            let heard = Mutexed(0)
            let done = DispatchSemaphore(value: 0)
            Thread {
                if let client = try? RpcClient.connect(unixPath: socket) {
                    try? client.stream(AgentMethods.notify, NotifyRequest(
                        name: name, spec: EventSpec(containerEmpty: .init()), bootId: boot, afterSequence: base),
                                       deadlineMs: 5000) { (r: NotifyResponse) in
                        if r.event != nil { heard.locked { $0 += 1 } }
                        return true
                    }
                    client.close()
                }
                done.signal()
            }.start()
            var tries = 0
            while agent.notifyWatchCount == 0 && tries < 500 { usleep(20_000); tries += 1 }
            usleep(300_000)
            _ = try admin.call(AgentMethods.killAll, KillAllRequest(name: name))
            done.wait()
            usleep(600_000)  // reconcile rounds, during the watch and after it
            #expect(heard.locked { $0 } == 1)
            #expect(empties() == 1, "one emptying, one EMPTY")

            // Emptied again with no notify: the reconcile records it.
            tries = 0
            while agent.notifyWatchCount > 0 && tries < 100 { usleep(20_000); tries += 1 }
            try admin.stream(AgentMethods.run, RunRequest(name: name, argv: ["/bin/sleep", "300"], detached: true)) { _ in true }
            usleep(1_000_000)  // reconcile rounds: seen with its process
            _ = try admin.call(AgentMethods.killAll, KillAllRequest(name: name))
            tries = 0
            while empties() < 2 && tries < 50 { usleep(100_000); tries += 1 }
            usleep(400_000)
            #expect(empties() == 2)
        }
    }
}

/// A container made through the agent at `socket` with a process sleeping
/// in it, an admin connection, the agent's boot id and the newest sequence
/// of its log (events after it are the test's). The caller destroys it.
private func sleepingContainer(_ socket: String, _ label: String, spec: ContainerSpec = ContainerSpec(),
                               sleeping: Bool = true) throws -> (RpcClient, String, String, UInt64) {
    let name = RealCgroups.uniqueName(label)
    let admin = try RpcClient.connect(unixPath: socket)
    do {
        _ = try admin.call(AgentMethods.create, CreateRequest(name: name, spec: spec))
        if sleeping {
            try admin.stream(AgentMethods.run, RunRequest(name: name, argv: ["/bin/sleep", "300"], detached: true)) { _ in true }
        }
        let boot = try #require(try admin.call(AgentMethods.machineInfo, MachineInfoRequest()).bootId)
        let base = try #require(Subscriber(socket, SubscribeRequest(bootId: boot, afterSequence: 0), until: { $0.last?.caughtUp != nil })
            .wait().0.last?.caughtUp)
        return (admin, name, boot, base)
    } catch {
        _ = try? admin.call(AgentMethods.destroy, DestroyRequest(name: name, force: true))
        admin.close()
        throw error
    }
}

extension SubscribeTests {
    /// `lmctl events` shows what the agent keeps from the oldest: the boot
    /// before an agent restart too, as its journal kept it, then this
    /// boot's (it showed this boot's only: a restart hid what came before).
    /// Two restarts: every boot the journal kept is served, each boot
    /// change a gap line (only the boot just before this one was: a resume
    /// across two restarts got the gap alone, and a follower lost whole
    /// boots the journal kept; a probe).
    @Test func everyBootTheJournalKeptIsServedAcrossTwoRestarts() throws {
        let name = RealCgroups.uniqueName("boots")
        defer { RealCgroups.destroy(name) }
        let (first, second) = try madeThenRestarted(name)
        #expect(try lmctl(second.socket, "update", "diff", name, "cpu:{limit:200}").status == 0)
        second.crash()
        let third = try AgentProcess(reusing: first.dir)
        defer { third.stop() }
        #expect(try lmctl(third.socket, "destroy", name).status == 0)
        func kinds(_ out: String) -> [String] {
            out.split(separator: "\n").compactMap { line -> String? in
                if line.hasPrefix("gap:") { return "gap" }
                let parts = line.split(separator: " ")
                guard parts.count >= 4, parts[3] == name else { return nil }
                return "\(parts[0].split(separator: ":")[0].prefix(8)) \(parts[2])"
            }
        }
        let all = try lmctl(third.socket, "events", name)
        let lines = kinds(String(decoding: all.stdout, as: UTF8.self))
        let events = lines.filter { $0 != "gap" }
        #expect(events.map { $0.split(separator: " ")[1] } == ["CREATED", "UPDATED", "DESTROYED"], "\(lines)")
        #expect(Set(events.map { $0.split(separator: " ")[0] }).count == 3, "three boots: \(lines)")
        #expect(lines.filter { $0 == "gap" }.count == 2, "a gap line per boot change: \(lines)")
        // A resume from the first boot, across both restarts.
        let boot = try #require(String(decoding: all.stdout, as: UTF8.self).split(separator: "\n")
            .first { $0.contains(" CREATED \(name)") }?.split(separator: " ").first)
        let parts = boot.split(separator: ":")
        let resumed = try lmctl(third.socket, "events", "--after", "\(parts[0]):\(UInt64(parts[1])! - 1)", name)
        #expect(kinds(String(decoding: resumed.stdout, as: UTF8.self)).filter { $0 != "gap" }.map { $0.split(separator: " ")[1] }
                == ["CREATED", "UPDATED", "DESTROYED"], "\(String(decoding: resumed.stdout, as: UTF8.self))")
        // From a boot the journal no longer has: a gap to the oldest boot
        // kept, then every boot's events (it went straight to this boot:
        // the kept events of the boots between were skipped; a probe).
        let lost = try lmctl(third.socket, "events", "--after", "0123456789abcdef0123456789abcdef:3", name)
        let lostOut = String(decoding: lost.stdout, as: UTF8.self)
        #expect(lost.status == 0, "\(String(decoding: lost.stderr, as: UTF8.self))")
        #expect(kinds(lostOut).filter { $0 != "gap" }.map { $0.split(separator: " ")[1] } == ["CREATED", "UPDATED", "DESTROYED"], "\(lostOut)")
        let firstGap = lostOut.split(separator: "\n").first { $0.hasPrefix("gap:") }
        #expect(firstGap?.contains("after 0123456789abcdef0123456789abcdef:3 ") == true && firstGap?.contains("continuing from \(parts[0]):") == true,
                "\(lostOut)")
    }

    /// A clean stop (SIGTERM) marks the boot ended: across the restart the
    /// boot change says nothing was lost (EventGap.boot_ended, a
    /// "restart:" line), where a crash's still says events may be missing
    /// ("gap:"). (Every restart was a gap, and a controller recorded a
    /// HOST_GAP for each; a soak probe.)
    @Test func aCleanStopSaysTheBootChangeLostNothing() throws {
        let name = RealCgroups.uniqueName("ended")
        defer { RealCgroups.destroy(name) }
        let first = try AgentProcess(config: "watch_containers: false reconcile_interval_ms: 0 stats_interval_ms: 0")
        #expect(try lmctl(first.socket, "create", name, "cpu:{limit:100}").status == 0)
        first.stop(keepingState: true)
        let second = try AgentProcess(reusing: first.dir)
        #expect(try lmctl(second.socket, "update", "diff", name, "cpu:{limit:200}").status == 0)
        second.crash()
        let third = try AgentProcess(reusing: first.dir)
        defer { third.stop() }
        #expect(try lmctl(third.socket, "destroy", name).status == 0)
        let all = try lmctl(third.socket, "events", name)
        let out = String(decoding: all.stdout, as: UTF8.self)
        let marks = out.split(separator: "\n").compactMap { line -> String? in
            line.hasPrefix("gap:") ? "gap" : line.hasPrefix("restart:") ? "restart" : line.contains(" \(name)") ? "event" : nil
        }
        #expect(marks == ["event", "restart", "event", "gap", "event"], "\(out)")
        let restart = out.split(separator: "\n").first { $0.hasPrefix("restart:") }
        #expect(restart?.contains("nothing lost") == true, "\(out)")
        // In JSON the gap carries it.
        let json = try lmctl(third.socket, "events", "-o", "json", name)
        let jsonOut = String(decoding: json.stdout, as: UTF8.self)
        #expect(jsonOut.split(separator: "\n").filter { $0.contains("\"bootEnded\":true") }.count == 1, "\(jsonOut)")
    }

    @Test func eventsWithoutAfterShowTheBootBeforeARestartToo() throws {
        let name = RealCgroups.uniqueName("oldest")
        defer { RealCgroups.destroy(name) }
        let (_, second) = try madeThenRestarted(name)
        defer { second.stop() }
        #expect(try lmctl(second.socket, "destroy", name).status == 0)
        let r = try lmctl(second.socket, "events", name)
        let out = String(decoding: r.stdout, as: UTF8.self)
        let lines = out.split(separator: "\n").map(String.init)
        let created = lines.first { $0.contains(" CREATED \(name)") }
        let destroyed = lines.first { $0.contains(" DESTROYED \(name)") }
        #expect(r.status == 0 && created != nil && destroyed != nil, "\(out)\(String(decoding: r.stderr, as: UTF8.self))")
        let boots = [created, destroyed].map { $0?.split(separator: ":").first.map(String.init) }
        #expect(boots[0] != nil && boots[0] != boots[1], "the create is the first boot's, the destroy the second's: \(out)")
        // With -f and no --after: from now on, as before. (SIGKILL: a
        // child of the test runner inherits its blocked SIGTERM.)
        let follow = try TestProcess.capture(["/usr/bin/timeout", "-s", "KILL", "1", builtTool("lmctl"), "--agent", "unix://\(second.socket)",
                                              "events", "-f", name])
        #expect(!String(decoding: follow.stdout, as: UTF8.self).contains("CREATED"))
    }
}

/// lmctl against the agent at `socket`.
private func lmctl(_ socket: String, _ args: String...) throws -> ChildResult {
    try TestProcess.capture([builtTool("lmctl"), "--agent", "unix://\(socket)"] + args)
}

/// `name` created through an agent that is then killed (SIGKILL) and
/// started again on its state directory: the two agents, the first dead.
private func madeThenRestarted(_ name: String) throws -> (first: AgentProcess, second: AgentProcess) {
    let first = try AgentProcess(config: "watch_containers: false reconcile_interval_ms: 0 stats_interval_ms: 0")
    #expect(try lmctl(first.socket, "create", name, "cpu:{limit:100}").status == 0)
    first.crash()
    return (first, try AgentProcess(reusing: first.dir))
}

extension SubscribeTests {
    /// A Notify caller that does not read: the handler's thread waits for
    /// room instead of the agent keeping the stream's responses (it kept
    /// every one: a caller that never read held as much of the agent's
    /// memory as its replay and live events came to, for as long as it
    /// kept the stream open; a probe). Once the caller reads, every event
    /// comes, in order. The 20,000 events are recorded straight into the
    /// agent's log (a real container's; as many real emptyings would take
    /// minutes): the socket, the replay and the flow are the agent's own.
    @Test func aNotifyCallerThatDoesNotReadHoldsItsThreadNotTheAgentsMemory() throws {
        try withAgent("limits { max_connection_buffered_bytes: 4096 } event_log_capacity: 30000 reconcile_interval_ms: 0 watch_containers: false") { agent, socket in
            let (admin, name, boot, base) = try sleepingContainer(socket, "notifyslow")
            defer {
                _ = try? admin.call(AgentMethods.destroy, DestroyRequest(name: name, force: true))
                admin.close()
            }
            let count = 20_000
            for i in 0..<count { agent.dispatcher.events.record(container: name, kind: .containerEventEmpty, pid: Int32(i + 1)) }
            let (slow, stream) = try unreadNotify(socket, name, boot, base)
            // ~2.5 MB of replay for a caller that reads nothing for a second.
            var most = 0
            for _ in 0..<40 {
                most = max(most, agent.heldBytes)
                usleep(25_000)
            }
            #expect(most > 0, "the agent did start sending")
            #expect(most < 64 << 10, "the agent held at most about its 4 KiB limit and a response, not the replay (\(most) bytes)")
            // Now read: all of it, in order, while the stream stays open.
            var got: [UInt64] = []
            var read = 0
            slow.pump(ms: 60_000) {
                for r in slow.responses[read...] {
                    if let e = try? NotifyResponse(serializedBytes: r).event, let s = e.sequence { got.append(s) }
                }
                read = slow.responses.count
                return got.count >= count || !slow.statuses.isEmpty
            }
            #expect(slow.statuses.isEmpty, "the stream is still open: \(slow.statuses)")
            #expect(got.count == count && got == Array((base + 1)...(base + UInt64(count))),
                    "every event once, in order: \(got.count) of \(count)")
            slow.send(slow.session.cancel(streamId: stream, now: MonotonicClock.milliseconds()))
            var tries = 0
            while agent.notifyWatchCount > 0 && tries < 250 { usleep(20_000); tries += 1 }
            #expect(agent.notifyWatchCount == 0, "the cancelled call left its watch")
            // A caller that goes without reading frees the waiting thread.
            withExtendedLifetime(try unreadNotify(socket, name, boot, base).0) {
                tries = 0
                while agent.notifyWatchCount == 0 && tries < 250 { usleep(20_000); tries += 1 }
                usleep(200_000)
                #expect(agent.notifyWatchCount == 1 && agent.heldBytes < 64 << 10, "waiting for room (\(agent.heldBytes) bytes held)")
            }
            // (Its link is closed here.)
            tries = 0
            while agent.notifyWatchCount > 0 && tries < 250 { usleep(20_000); tries += 1 }
            #expect(agent.notifyWatchCount == 0, "the call of a caller that left ended while it waited for room")
        }
    }
}

extension SubscribeTests {
    /// A Notify replay reads the log a part at a time (a caller that does
    /// not read keeps its thread waiting with one part, not everything it
    /// missed): events the log lets go meanwhile are a gap, said where they
    /// were, and the replay goes on from the oldest kept.
    @Test func eventsTheLogLetsGoWhileANotifyCallerDoesNotReadAreAGap() throws {
        try withAgent("limits { max_connection_buffered_bytes: 4096 } event_log_capacity: 30000 reconcile_interval_ms: 0 watch_containers: false") { agent, socket in
            let (admin, name, boot, base) = try sleepingContainer(socket, "notifygap")
            defer {
                _ = try? admin.call(AgentMethods.destroy, DestroyRequest(name: name, force: true))
                admin.close()
            }
            let count: UInt64 = 20_000
            for i in 0..<count { agent.dispatcher.events.record(container: name, kind: .containerEventEmpty, pid: Int32(i + 1)) }
            let (slow, _) = try unreadNotify(socket, name, boot, base)
            var tries = 0
            while agent.heldBytes == 0 && tries < 250 { usleep(20_000); tries += 1 }
            usleep(300_000)
            // 25,000 events of another container: the log (30,000) lets go
            // of most of those the replay has not reached.
            for _ in 0..<25_000 { agent.dispatcher.events.record(container: name + "-other", kind: .containerEventEmpty) }
            var got: [UInt64] = []
            var gaps: [EventGap] = []
            var read = 0
            slow.pump(ms: 60_000) {
                for r in slow.responses[read...] {
                    guard let n = try? NotifyResponse(serializedBytes: r) else { continue }
                    if let s = n.event?.sequence { got.append(s) }
                    if let g = n.gap { gaps.append(g) }
                }
                read = slow.responses.count
                return got.last == base + count || !slow.statuses.isEmpty
            }
            #expect(slow.statuses.isEmpty, "the stream is still open: \(slow.statuses)")
            let gap = try #require(gaps.first, "events let go are a gap")
            #expect(gaps.count == 1)
            let first = try #require(gap.firstSequence)
            let before = got.filter { $0 <= gap.afterSequence ?? 0 }
            #expect(!before.isEmpty && before == Array((base + 1)...(base + UInt64(before.count))), "what was sent before the gap, in order")
            #expect(got.dropFirst(before.count).elementsEqual(first...(base + count)), "then every event from the oldest kept, in order")
            #expect(first > base + UInt64(before.count) + 1 && first <= base + count, "\(gap)")
        }
    }
}

extension SubscribeTests {
    /// 20,000 EMPTY events of `name` (pids 1...20,000) in the agent's log,
    /// and a raw link to it that reads only when told to.
    func replayLink(_ agent: Agent, _ socket: String, _ name: String, peer: String) throws -> RawLink {
        for i in 0..<20_000 { agent.dispatcher.events.record(container: name, kind: .containerEventEmpty, pid: Int32(i + 1)) }
        return try RawLink(fd: try RpcSocket.connectUnix(path: socket),
                           Session(dialler: .peerCredentials, name: peer, now: MonotonicClock.milliseconds()))
    }

    /// Flow-controlled subscriptions that grant no credit: what the agent
    /// holds for them stays within max_connection_buffered_bytes for the
    /// connection, however many streams replay the log (each held its
    /// whole replay: 20 of ~1.6 MB; a probe), and each holds a part of its
    /// replay at a time (it held up to the limit).
    @Test func replaysWaitingForCreditStayWithinTheConnectionsLimit() throws {
        try withAgent("event_log_capacity: 30000 reconcile_interval_ms: 0 watch_containers: false") { agent, socket in
            let name = RealCgroups.uniqueName("subcredit")
            let link = try replayLink(agent, socket, name, peer: "creditless")
            for _ in 0..<20 {
                link.open("Subscribe", try SubscribeRequest(afterSequence: 0, credit: 0).serializedBytes(), deadlineMs: nil)
            }
            var tries = 0
            while agent.subscriberCount < 20 && tries < 500 { usleep(10_000); tries += 1 }
            #expect(agent.subscriberCount == 20)
            let held = agent.subscriberHeldBytes
            #expect(held > 0 && held <= (4 << 20) + 20 * 200, "within the connection's 4 MiB: \(held) bytes")
            #expect(held <= 20 * EventHub.partEvents * 200, "a part each: \(held) bytes")
        }
    }
}

extension SubscribeTests {
    /// `lmctl events` takes a replay longer than the agent holds for its
    /// connection whole: it comes a part at a time (each ended "lagged,
    /// resume after N" at the limit, and lmctl went on from what it
    /// printed), every event printed once.
    @Test func lmctlEventsPrintsAReplayLongerThanTheConnectionsLimitWhole() throws {
        try withAgent("limits { max_connection_buffered_bytes: 16384 } event_log_capacity: 5000 reconcile_interval_ms: 0 watch_containers: false") { agent, socket in
            let name = RealCgroups.uniqueName("sublong")
            for i in 0..<3000 { agent.dispatcher.events.record(container: name, kind: .containerEventEmpty, pid: Int32(i + 1)) }
            let r = try TestProcess.capture([builtTool("lmctl"), "--agent", "unix://" + socket, "events", name])
            #expect(r.status == 0, "\(String(decoding: r.stderr, as: UTF8.self))")
            let pids = String(decoding: r.stdout, as: UTF8.self).split(separator: "\n").compactMap { $0.split(separator: " ").last }
            #expect(pids == (1...3000).map { Substring("pid=\($0)") }, "every event once, in order (\(pids.count))")
        }
    }
}

/// A hand-driven connection asking for `name`'s emptyings after `base` of
/// `boot`, which reads nothing until the test pumps it; and its stream.
private func unreadNotify(_ socket: String, _ name: String, _ boot: String, _ base: UInt64) throws -> (RawLink, UInt32) {
    let link = try RawLink(fd: try RpcSocket.connectUnix(path: socket),
                           Session(dialler: .peerCredentials, name: "unread", now: MonotonicClock.milliseconds()))
    let stream = link.open("Notify", try NotifyRequest(name: name, spec: EventSpec(containerEmpty: .init()),
                                                       bootId: boot, afterSequence: base).serializedBytes(), deadlineMs: nil)
    return (link, stream)
}

extension SubscribeTests {
    /// A Subscribe without credit whose replay is longer than its
    /// connection may hold, from a caller that does not read for a while:
    /// the replay waits for the connection and then comes whole, the agent
    /// holding no more than the limit meanwhile (it ended "lagged" at the
    /// limit; and built whole, it held the loop thread while every event
    /// was decoded).
    @Test func aReplayWithoutCreditWaitsForItsConnection() throws {
        try withAgent("limits { max_connection_buffered_bytes: 16384 } event_log_capacity: 30000 reconcile_interval_ms: 0 watch_containers: false") { agent, socket in
            let name = RealCgroups.uniqueName("subwait")
            let count = 20_000
            let link = try replayLink(agent, socket, name, peer: "slow")
            link.open("Subscribe", try SubscribeRequest(afterSequence: 0).serializedBytes(), deadlineMs: nil)
            // Not reading: the socket fills, then the agent holds its limit at most.
            var most = 0
            for _ in 0..<20 {
                usleep(25_000)
                most = max(most, agent.heldBytes)
            }
            #expect(most <= 16384 + 4096, "held for the caller: \(most) bytes")
            #expect(agent.subscriberCount == 1, "still subscribed")
            let (pids, caughtUp) = link.readReplayPids()
            #expect(link.statuses.isEmpty, "not ended: \(link.statuses)")
            #expect(caughtUp && pids == (1...Int32(count)).map { $0 }, "every event once, in order (\(pids.count))")
        }
    }

    /// A replay leaves half its connection's limit to the connection's
    /// other streams: a live event for another subscriber on it is sent,
    /// not ended "lagged" (the replay kept the connection at its limit
    /// while it lasted, and every live stream beside it lagged).
    @Test func aReplayLeavesRoomForLiveEventsOnItsConnection() throws {
        try withAgent("limits { max_connection_buffered_bytes: 16384 } event_log_capacity: 30000 reconcile_interval_ms: 0 watch_containers: false") { agent, socket in
            let name = RealCgroups.uniqueName("subroom")
            let link = try replayLink(agent, socket, name, peer: "slow")
            link.open("Subscribe", try SubscribeRequest(name: name).serializedBytes(), deadlineMs: nil)  // live
            link.open("Subscribe", try SubscribeRequest(afterSequence: 0).serializedBytes(), deadlineMs: nil)
            usleep(500_000)  // not reading: the replay fills what the connection takes
            agent.dispatcher.events.record(container: name, kind: .containerEventEmpty, pid: 99_999)
            var live = 0
            var read = 0
            link.pump(ms: 30_000) {
                for r in link.responses[read...] where (try? SubscribeResponse(serializedBytes: r))?.event?.pid == 99_999 { live += 1 }
                read = link.responses.count
                return live == 2 || !link.statuses.isEmpty
            }
            #expect(link.statuses.isEmpty, "no stream ended: \(link.statuses)")
            #expect(live == 2, "the live event, to both subscribers")
        }
    }
}

extension SubscribeTests {
    /// `notify container empty` on a container already empty, asked again
    /// right after a first one got its event: the second joined the first's
    /// kernel watch (still running until its next check), which had fired
    /// its one EMPTY already, and waited for ever (a probe). Each call gets
    /// the EMPTY; the log keeps one.
    @Test func aSecondEmptyNotifyOnAnEmptyContainerIsAnsweredToo() throws {
        try withAgent { agent, socket in
            let (admin, name, boot, base) = try sleepingContainer(socket, "empty2", sleeping: false)
            defer {
                _ = try? admin.call(AgentMethods.destroy, DestroyRequest(name: name, force: true))
                admin.close()
            }
            func notifyOnce() throws -> ContainerEvent? {
                let got = Mutexed<ContainerEvent?>(nil)
                do throws(LmctfyError) {
                    try admin.stream(AgentMethods.notify, NotifyRequest(name: name, spec: EventSpec(containerEmpty: .init())),
                                     deadlineMs: 3000) { (r: NotifyResponse) throws(LmctfyError) -> Bool in
                        got.locked { $0 = r.event }
                        return r.event == nil
                    }
                } catch {
                    if error.code != .deadlineExceeded { throw error }
                }
                return got.locked { $0 }
            }
            var heard: Set<UInt64> = []
            for round in 0..<3 {
                let e = try notifyOnce()
                #expect(e?.kind == .containerEventEmpty && e?.container == name, "round \(round): \(String(describing: e))")
                if let seq = e?.sequence { heard.insert(seq) }
            }
            #expect(agent.notifyWatchCount <= 1)
            // Asked again once the watch has gone (a new watch each time,
            // firing at once): the EMPTY on record answers, none is added
            // (each call recorded one, which any reader could use to fill
            // the shared log; a probe).
            for round in 3..<5 {
                for _ in 0..<100 where agent.notifyWatchCount > 0 { usleep(20_000) }
                let e = try notifyOnce()
                #expect(e?.kind == .containerEventEmpty && e?.container == name, "round \(round): \(String(describing: e))")
                if let seq = e?.sequence { heard.insert(seq) }
            }
            #expect(heard.count == 1, "\(heard)")
            let log = Subscriber(socket, SubscribeRequest(name: name, kinds: [.containerEventEmpty], bootId: boot, afterSequence: base),
                                 until: { $0.last?.caughtUp != nil })
            #expect(Set(events(log.wait().0).compactMap(\.sequence)) == heard,
                    "the one emptying on record answers every call; none more")
        }
    }
}

extension SubscribeTests {
    /// A pause of a paused container, a resume of a running one and an
    /// update that leaves the spec as it was change nothing and record
    /// nothing: 20 callers pausing at once left 20 FREEZER events (a probe).
    @Test func callsThatChangeNothingRecordNoEvent() throws {
        try withAgent { _, socket in
            let (admin, name, boot, base) = try sleepingContainer(socket, "noop", spec: try ContainerSpec(textFormat: "memory { limit: 100000000 }"))
            defer {
                _ = try? admin.call(AgentMethods.destroy, DestroyRequest(name: name, force: true))
                admin.close()
            }
            let failures = Mutexed(0)
            let done = DispatchGroup()
            for _ in 0..<20 {
                done.enter()
                Threads.detach {
                    defer { done.leave() }
                    do {
                        let c = try RpcClient.connect(unixPath: socket)
                        defer { c.close() }
                        _ = try c.call(AgentMethods.pause, PauseRequest(name: name))
                    } catch {
                        failures.locked { $0 += 1 }
                    }
                }
            }
            done.wait()
            #expect(failures.locked { $0 } == 0)
            for _ in 0..<3 { _ = try admin.call(AgentMethods.resume, ResumeRequest(name: name)) }
            // The limit it has (and one the kernel rounds to it), then another.
            for limit in ["100000000", "99999744", "100000000", "200000000"] {
                _ = try admin.call(AgentMethods.update, UpdateRequest(
                    name: name, spec: try ContainerSpec(textFormat: "memory { limit: \(limit) }"), policy: .updateDiff))
            }
            let log = Subscriber(socket, SubscribeRequest(name: name, bootId: boot, afterSequence: base), until: { $0.last?.caughtUp != nil })
            let seen = events(log.wait().0).map { e in
                e.kind == .containerEventFreezer ? (e.frozen == true ? "paused" : "resumed") : "\(e.kind.map { "\($0)" } ?? "?")"
            }
            #expect(seen == ["paused", "resumed", "containerEventUpdated"], "\(seen)")
        }
    }
}
