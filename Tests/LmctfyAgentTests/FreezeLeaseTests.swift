// Freezes that end by themselves (PauseRequest.lease_ms) and what migration
// builds on them: the lease list on its own, then the agent binary on the
// real kernel (a lease thaws, a Resume, a Destroy or a Pause without a lease
// ends it, it outlives an agent restart), then lmctl migrating to an agent
// that stops answering (SIGSTOP) part way.
import Glibc
import Lmctfy
@testable import LmctfyAgent
import LmctfyProto
import LmctfyRPC
import LmctfySystem
import LmctfyTestSupport
import Testing

@Suite struct FreezeLeasesTests {
    @Test func leasesAreKeptForTheBootTheyWereTakenIn() throws {
        let dir = "/tmp/lmctfy-leases-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try Sys.mkdir(dir, mode: 0o700)
        defer { _ = removeTree(dir) }
        let file = dir + "/freeze-leases"
        let a = FreezeLeases(file: file, bootId: "boot-1")
        try a.hold("/r/x", name: "/x", ms: 5000, now: 1000)
        try a.hold("/r/y", name: "/y", ms: 100, now: 1000)
        try a.hold("/r/y/z", name: "/y/z", ms: 100, now: 1000)
        #expect(a.due(now: 1099).isEmpty)
        #expect(a.due(now: 1100).map(\.path) == ["/r/y", "/r/y/z"])
        #expect(a.nextDeadline == 1100)
        #expect(Set(a.held(under: "/r/y")) == ["/r/y", "/r/y/z"] && a.held(under: "/r/yy").isEmpty)

        // Another agent of the same boot (a restart) has them; of another
        // boot, none (the frozen cgroups went with the machine).
        let b = FreezeLeases(file: file, bootId: "boot-1")
        #expect(b.lease("/r/x") == FreezeLeases.Lease(name: "/x", deadline: 6000, identity: nil))
        #expect(FreezeLeases(file: file, bootId: "boot-2").lease("/r/x") == nil)

        // A released lease is not thawed, even one already found due.
        let y = try #require(b.lease("/r/y"))
        b.release(["/r/y"])
        #expect(!b.expire("/r/y", y) { Issue.record("a released lease was thawed"); return true })
        // One lease at a time: a second is ABORTED and the first stays.
        let z = try #require(b.lease("/r/y/z"))
        #expect(throws: LmctfyError.self) { try b.hold("/r/y/z", name: "/y/z", ms: 9000, now: 1000) }
        do {
            try b.hold("/r/y/z", name: "/y/z", ms: 9000, now: 1000)
        } catch {
            #expect(error.code == .aborted && error.message.contains("already frozen under another caller's lease"), "\(error)")
        }
        #expect(b.lease("/r/y/z") == z)
        // A lease ended and taken anew meanwhile (a Resume, then another
        // Pause with a lease): the old one's thaw does not run.
        b.release(["/r/y/z"])
        try b.hold("/r/y/z", name: "/y/z", ms: 9000, now: 1000)
        #expect(b.lease("/r/y/z") != z)
        #expect(!b.expire("/r/y/z", z) { Issue.record("a replaced lease was thawed"); return true })
        // A thaw that fails is tried again later; one that works ends it.
        let x = try #require(b.lease("/r/x"))
        #expect(b.expire("/r/x", x) { false })
        let retry = try #require(b.lease("/r/x"))
        #expect(retry.deadline > x.deadline || retry.deadline >= MonotonicClock.milliseconds())
        #expect(b.expire("/r/x", retry) { true })
        b.release(["/r/y/z"])
        #expect(b.lease("/r/x") == nil && b.nextDeadline == nil)
        #expect(!Sys.exists(file), "no lease left: no file")

        // A lease is of one container: another under the name is not thawed.
        let current = Mutexed<UInt64?>(7)
        let c = FreezeLeases(file: nil, bootId: "boot-1", identify: { _ in current.locked { $0 } })
        try c.hold("/r/w", name: "/w", ms: 1, now: 0)
        current.locked { $0 = 8 }
        #expect(!c.expire("/r/w", try #require(c.lease("/r/w"))) { Issue.record("another container was thawed"); return true })
        #expect(c.lease("/r/w") == nil, "the lease ended with its container")

        // A damaged file is no lease at all, not a crash.
        try Sys.createFile(file, "boot boot-1\nnot a lease\n12\t-\t\t/x\n\t-\t/r/a\t/a\n12\t/r/b\t/b\n")
        let damaged = FreezeLeases(file: file, bootId: "boot-1")
        #expect(damaged.nextDeadline == nil)
        #expect(damaged.unreadable?.contains("4 lines") == true, "\(damaged.unreadable ?? "said nothing")")
        #expect(FreezeLeases(file: file + ".none", bootId: "boot-1").unreadable == nil)
        // Nor is one that cannot be read at all (a directory in its place),
        // which is said too (it was taken for none, silently).
        try Sys.mkdir(file + ".dir", mode: 0o700)
        #expect(FreezeLeases(file: file + ".dir", bootId: "boot-1").unreadable?.contains("could not be read") == true)
    }
}

/// A root container for one agent (root_container), destroyed at the end.
private struct LeaseRoot {
    let name = RealCgroups.uniqueName("lease")
    let api: ContainerApi

    init() throws {
        api = try ContainerApi.detect()
        _ = try api.create(name, spec: ContainerSpec(cpu: CpuSpec(limit: 1000), memory: MemorySpec(limit: 1 << 30)))
    }

    var config: String { "root_container: \"\(name)\" stats_interval_ms: 0" }

    func frozen(_ path: String) throws -> Bool? {
        let full = try ContainerName.resolve(name + path, relativeTo: .root)
        guard try api.exists(full) else { return nil }
        return try api.get(full).isFrozen()
    }

    func destroy() { RealCgroups.destroy(name) }
}

private func connected(_ agent: AgentProcess) throws -> RpcClient {
    for _ in 0..<200 {
        if let c = try? RpcClient.connect(unixPath: agent.socket) { return c }
        usleep(10_000)
    }
    return try RpcClient.connect(unixPath: agent.socket)
}

/// Waits up to `ms` for `condition`; returns whether it held.
private func within(_ ms: UInt64, _ condition: () throws -> Bool) rethrows -> Bool {
    let end = MonotonicClock.milliseconds() + ms
    while MonotonicClock.milliseconds() < end {
        if try condition() { return true }
        usleep(20_000)
    }
    return try condition()
}

@Suite(.enabled(if: RealCgroups.available, "\(RealCgroups.unavailableReason ?? "")"), .serialized)
struct FreezeLeaseAgentTests {
    @Test func aLeasedFreezeThawsByItselfUnlessResumedDestroyedOrPausedAgain() throws {
        let root = try LeaseRoot()
        defer { root.destroy() }
        let agent = try AgentProcess(config: root.config)
        defer { agent.stop() }
        let client = try connected(agent)
        defer { client.close() }
        for n in ["/a", "/b", "/c", "/d"] { _ = try client.call(AgentMethods.create, CreateRequest(name: n, spec: ContainerSpec())) }

        let t0 = MonotonicClock.milliseconds()
        // (Leases long enough for a sanitized agent's answer to come first.)
        _ = try client.call(AgentMethods.pause, PauseRequest(name: "/a", leaseMs: 2000))
        #expect(try root.frozen("/a") == true)
        #expect(try within(15_000) { try root.frozen("/a") == false }, "the lease ran out and nothing thawed /a")
        #expect(MonotonicClock.milliseconds() - t0 >= 2000, "thawed before its lease ran out")

        // Resumed, then frozen without a lease: the operator's freeze stays.
        _ = try client.call(AgentMethods.pause, PauseRequest(name: "/b", leaseMs: 300))
        _ = try client.call(AgentMethods.resume, ResumeRequest(name: "/b"))
        _ = try client.call(AgentMethods.pause, PauseRequest(name: "/b"))
        // Frozen with a lease, then again without one: the lease is gone too.
        _ = try client.call(AgentMethods.pause, PauseRequest(name: "/d", leaseMs: 300))
        _ = try client.call(AgentMethods.pause, PauseRequest(name: "/d"))
        // Destroyed and made again: the old lease is not the new one's.
        _ = try client.call(AgentMethods.pause, PauseRequest(name: "/c", leaseMs: 300))
        _ = try client.call(AgentMethods.destroy, DestroyRequest(name: "/c", force: true))
        _ = try client.call(AgentMethods.create, CreateRequest(name: "/c", spec: ContainerSpec()))
        _ = try client.call(AgentMethods.pause, PauseRequest(name: "/c"))
        usleep(1_000_000)
        #expect(try root.frozen("/b") == true && root.frozen("/c") == true && root.frozen("/d") == true)

        // Destroyed and made again behind the agent's back (the CLI), then
        // frozen by the operator: the old lease does not thaw the new one.
        _ = try client.call(AgentMethods.create, CreateRequest(name: "/e", spec: ContainerSpec()))
        _ = try client.call(AgentMethods.pause, PauseRequest(name: "/e", leaseMs: 400))
        let full = root.name + "/e"
        #expect(try TestProcess.capture([builtTool("lmctfy"), "destroy", "-f", full]).status == 0)
        #expect(try TestProcess.capture([builtTool("lmctfy"), "create", full, ""]).status == 0)
        #expect(try TestProcess.capture([builtTool("lmctfy"), "pause", full]).status == 0)
        usleep(1_000_000)
        #expect(try root.frozen("/e") == true, "a lease of the destroyed /e thawed the new one")

        // Out of range: refused, nothing frozen.
        for bad: UInt32 in [0, 3_600_001] {
            #expect(throws: LmctfyError.self) { _ = try client.call(AgentMethods.pause, PauseRequest(name: "/a", leaseMs: bad)) }
            #expect(try root.frozen("/a") == false)
        }
    }

    @Test func aLeaseOutlivesAnAgentKilledAndRestarted() throws {
        let root = try LeaseRoot()
        defer { root.destroy() }
        let first = try AgentProcess(config: root.config)
        var firstAlive = true
        defer { if firstAlive { first.stop() } }
        let client = try connected(first)
        _ = try client.call(AgentMethods.create, CreateRequest(name: "/a", spec: ContainerSpec()))
        // Long enough for a restart of a sanitized agent to come first.
        _ = try client.call(AgentMethods.pause, PauseRequest(name: "/a", leaseMs: 8000))
        client.close()
        first.crash()
        firstAlive = false
        #expect(Sys.exists(first.dir + "/state/freeze-leases"))
        let second = try AgentProcess(reusing: first.dir)
        defer { second.stop() }
        #expect(try root.frozen("/a") == true, "thawed before its lease ran out")
        #expect(try within(20_000) { try root.frozen("/a") == false }, "the restarted agent did not thaw /a at the lease's end")
        #expect(within(2000) { !Sys.exists(first.dir + "/state/freeze-leases") })
    }

    /// A change whose caller hung up while the agent was stopped is not
    /// made: the request and the connection's end are read together when it
    /// runs again, and the call started on a pool thread before the loop
    /// saw the end (3 of 3 made in a probe; PROTOCOL.md section 4).
    @Test func aChangeWhoseCallerHungUpWhileTheAgentWasStoppedIsNotMade() throws {
        let root = try LeaseRoot()
        defer { root.destroy() }
        let a = try AgentProcess(config: root.config)
        var stopped = false
        defer {
            if stopped { kill(a.pid, SIGCONT) }
            a.stop()
        }
        for i in 0..<3 {
            let client = try connected(a)
            // The last round holds a second copy of the caller's descriptor,
            // as a child that another thread of a (test) process is spawning
            // does until its exec: the caller's end must reach the agent all
            // the same (RpcClient.drop shuts the socket down).
            let copy = i == 2 ? try #require(client.descriptorCopy()) : -1
            defer { if copy >= 0 { close(copy) } }
            kill(a.pid, SIGSTOP)
            stopped = true
            #expect(within(5_000) { allStopped(a.pid) }, "the agent did not stop")
            client.sendOnly(AgentMethods.create.name, try CreateRequest(name: "/gone\(i)", spec: ContainerSpec()).serializedBytes())
            client.drop()
            kill(a.pid, SIGCONT)
            stopped = false
            usleep(300_000)
            _ = try connected(a).call(AgentMethods.ping, PingRequest())
            #expect(try root.frozen("/gone\(i)") == nil, "made though its caller had hung up (round \(i))")
        }
        // A caller still there is served as ever.
        _ = try connected(a).call(AgentMethods.create, CreateRequest(name: "/kept", spec: ContainerSpec()))
        #expect(try root.frozen("/kept") == false)
    }

    /// The target stops answering (SIGSTOP) once the source is frozen:
    /// lmctl gives up at its --timeout and thaws the source, and the target,
    /// when it runs again, drops the import it was sent (the caller's
    /// CANCEL is behind it) instead of making a copy beside the source.
    @Test func aMigrationToATargetThatStopsAnsweringGivesUpAndLeavesOneCopy() throws {
        let source = try LeaseRoot(), target = try LeaseRoot()
        defer { source.destroy(); target.destroy() }
        let a = try AgentProcess(config: source.config)
        defer { a.stop() }
        let b = try AgentProcess(config: target.config)
        var stopped = false
        defer {
            if stopped { kill(b.pid, SIGCONT) }
            b.stop()
        }
        let lmctl = [builtTool("lmctl"), "--agent", "unix://\(a.socket)"]
        #expect(try TestProcess.capture(lmctl + ["create", "/web", "cpu:{limit:100}"]).status == 0)
        let run = try TestProcess.capture(lmctl + ["run", "-n", "/web", "sleep 600"])
        let pid = try #require(Int32(run.out.filter(\.isNumber)), "run printed \(run.out) \(run.err)")

        for bad in ["0", "3601", "1.5", "x"] {
            let r = try TestProcess.capture(lmctl + ["migrate", "/web", "--to", "unix://\(b.socket)", "--timeout", bad])
            #expect(r.status == StatusCode.invalidArgument.rawValue && r.err.contains("--timeout"), "\(bad): \(r.err)")
        }
        let keyless = try TestProcess.capture(lmctl + ["migrate", "/web", "--to", "tcp://127.0.0.1:1"])
        #expect(keyless.status == StatusCode.invalidArgument.rawValue && keyless.err.contains("needs --to-key-file"), "\(keyless.err)")
        // Stopped before anything is touched: refused at the Ping.
        kill(b.pid, SIGSTOP)
        stopped = true
        #expect(within(5_000) { allStopped(b.pid) }, "the target did not stop")
        let early = try TestProcess.capture(lmctl + ["migrate", "/web", "--to", "unix://\(b.socket)", "--timeout", "2"])
        #expect(early.status == StatusCode.deadlineExceeded.rawValue, "\(early.err)")
        #expect(early.err.contains("does not answer") && early.err.contains("nothing was touched"), "\(early.err)")
        #expect(try source.frozen("/web") == false)
        kill(b.pid, SIGCONT)
        stopped = false

        // Stopped after the source is frozen and its snapshot taken.
        let marker = a.dir + "/hold"
        let result = Mutexed<ChildResult?>(nil)
        let done = Latch()
        let argv = ["/usr/bin/env", "LMCTL_TEST_MIGRATE_HOLD_AFTER=export:\(marker)"] + lmctl
            + ["migrate", "/web", "--to", "unix://\(b.socket)", "--timeout", "3"]
        let started = MonotonicClock.milliseconds()
        Threads.detach {
            let r = try? TestProcess.capture(argv)
            result.locked { $0 = r }
            done.signal()
        }
        #expect(within(10_000) { Sys.exists(marker) }, "lmctl never reached the import")
        #expect(try source.frozen("/web") == true)
        kill(b.pid, SIGSTOP)
        stopped = true
        #expect(within(5_000) { allStopped(b.pid) }, "the target did not stop")
        try Sys.unlink(marker)
        #expect(done.wait(seconds: 30), "lmctl did not give up")
        let r = try #require(result.locked { $0 })
        let took = MonotonicClock.milliseconds() - started
        #expect(r.status == StatusCode.deadlineExceeded.rawValue, "\(r.err)")
        #expect(r.err.contains("did not answer the import"), "\(r.err)")
        #expect(took < 15_000, "gave up after \(took) ms")
        #expect(try source.frozen("/web") == false, "the source was left frozen")
        kill(b.pid, SIGCONT)
        stopped = false
        // The target reads the import and the CANCEL behind it: no copy.
        let list = [builtTool("lmctl"), "--agent", "unix://\(b.socket)", "list", "containers", "-r"]
        usleep(1_000_000)
        #expect(try TestProcess.capture(list).status == 0)
        #expect(try target.frozen("/web") == nil, "the stopped target made a copy after the migration gave up")
        #expect(try source.frozen("/web") == false)
        let procs = try source.api.get(try ContainerName.resolve(source.name + "/web", relativeTo: .root)).processes(recursive: true)
        #expect(procs.contains(pid), "the source's process is gone")

        // And the same migration with a target that answers completes.
        let ok = try TestProcess.capture(lmctl + ["migrate", "/web", "--to", "unix://\(b.socket)"])
        #expect(ok.status == 0, "\(ok.err)")
        #expect(try source.frozen("/web") == nil && target.frozen("/web") == false)
    }
}

/// Whether every thread of `pid` runs none of its own code (`isHeld`).
/// Stricter than `isHeld` for a thread that is running or sleeping with
/// the SIGSTOP still pending: it may finish the syscall it is in (a read of
/// the caller's socket that returns the first request alone) before it
/// stops, so the tests that send requests to a stopped agent waited for too
/// little and saw that request made (seen under the suite's load). Only a
/// thread in D, which stops before it next returns to user space, counts
/// with the signal pending.
private func allStopped(_ pid: Int32) -> Bool {
    guard let tids = try? Sys.directoryEntries("/proc/\(pid)/task"), !tids.isEmpty else { return false }
    return tids.allSatisfy { tid in
        let dir = "/proc/\(pid)/task/\(tid)"
        switch processState(dir) {
        case "T"?: return true
        case "D"?: return isHeld(dir)
        default: return false
        }
    }
}

/// The one-letter state of the task at `dir` (R, S, T, Z...), nil if it is gone.
private func processState(_ dir: String) -> String? {
    guard let stat = try? Sys.readFile(dir + "/stat"), let close = stat.lastIndex(of: ")") else { return nil }
    return stat[stat.index(after: close)...].split(separator: " ").first.map(String.init)
}

/// Whether the task at `dir` (/proc/PID or /proc/PID/task/TID) runs none
/// of its own code: it is stopped (T), or a SIGSTOP is pending for it. A
/// task the stop found in the kernel (D: reading its program from a busy
/// disk, or a vfork parent waiting on its child) keeps the signal pending
/// and stops before it next returns to user space; under load that can
/// take seconds.
private func isHeld(_ dir: String) -> Bool {
    if processState(dir) == "T" { return true }
    guard let status = try? Sys.readFile(dir + "/status") else { return false }
    let sigstop: UInt64 = 1 << (UInt64(SIGSTOP) - 1)
    for line in status.split(separator: "\n") where line.hasPrefix("SigPnd:") || line.hasPrefix("ShdPnd:") {
        let hex = line.split(separator: "\t").last.map(String.init) ?? ""
        if let mask = UInt64(hex, radix: 16), mask & sigstop != 0 { return true }
    }
    return false
}

private func isHeld(_ pid: Int32) -> Bool { isHeld("/proc/\(pid)") }

/// Each process's state, and whether a SIGSTOP is pending, for a failure message.
private func holdStates(_ pids: [Int32]) -> [String] {
    pids.map { pid in
        let state = processState("/proc/\(pid)") ?? "-"
        return state != "T" && isHeld(pid) ? state + " (SIGSTOP pending)" : state
    }
}

extension FreezeLeaseAgentTests {
    /// A migration's copy is held from the moment each of its processes
    /// starts: a target agent killed after starting them and before
    /// freezing them left them running beside the source lmctl then thawed.
    @Test func aMigrationsCopyNeverRunsBesideItsSource() throws {
        let source = try LeaseRoot(), target = try LeaseRoot()
        defer { source.destroy(); target.destroy() }
        let a = try AgentProcess(config: source.config)
        defer { a.stop() }
        let b = try AgentProcess(config: target.config, environment: ["LMCTFY_AGENT_TEST_HOLD_AFTER=ImportSnapshot.started"])
        var bAlive = true
        defer { if bAlive { b.stop() } else { _ = removeTree(b.dir) } }
        let lmctl = [builtTool("lmctl"), "--agent", "unix://\(a.socket)"]
        #expect(try TestProcess.capture(lmctl + ["create", "/web", "cpu:{limit:100}"]).status == 0)
        for _ in 0..<3 { #expect(try TestProcess.capture(lmctl + ["run", "-n", "/web", "sleep 600"]).status == 0) }
        let result = Mutexed<ChildResult?>(nil)
        let done = Latch()
        let argv = lmctl + ["migrate", "/web", "--to", "unix://\(b.socket)", "--timeout", "20"]
        Threads.detach {
            let r = try? TestProcess.capture(argv)
            result.locked { $0 = r }
            done.signal()
        }
        #expect(within(15_000) { Sys.exists(b.dir + "/state/test-hold") }, "the target never started the copy's processes")
        let copy = try target.api.get(try ContainerName.resolve(target.name + "/web", relativeTo: .root)).processes(recursive: true)
        #expect(copy.count >= 3, "\(copy)")  // (a shell may have forked its sleep before the stop)
        // (A task asleep when its SIGSTOP came shows T once it is next
        // scheduled, which under load takes a moment; it runs no code of
        // its own before. One in D keeps the signal pending until it
        // leaves the kernel: CI saw ["T", "T", "D", "T", "T", "T"] for 6 s.)
        #expect(within(3_000) { copy.allSatisfy(isHeld) },
                "the copy runs before its freeze: \(holdStates(copy))")
        b.crash()
        bAlive = false
        #expect(done.wait(seconds: 30), "lmctl did not give up")
        let r = try #require(result.locked { $0 })
        #expect(r.status != 0, "\(r.err)")
        #expect(try source.frozen("/web") == false, "the source was left frozen")
        // The source runs; the copy's processes are still held.
        #expect(within(3_000) { copy.allSatisfy(isHeld) }, "\(holdStates(copy))")
        // The target's next start destroys the half-made copy (it was left
        // thawed, its processes stopped, beside the running source; a
        // probe), before it serves anything.
        let again = try AgentProcess(reusing: b.dir)
        defer { again.stop(keepingState: true) }
        #expect(try !target.api.exists(try ContainerName.resolve(target.name + "/web", relativeTo: .root)), "the copy was left")
        #expect(within(3_000) { copy.allSatisfy { kill($0, 0) != 0 || processState("/proc/\($0)") == "Z" } }, "\(holdStates(copy))")
        let marks = (try? Sys.subdirectoriesAndFiles(b.dir + "/state/imports")) ?? []
        #expect(marks.isEmpty, "\(marks)")
    }
}

extension FreezeLeaseAgentTests {
    /// A migration cut short (lmctl killed after the freeze) leaves the
    /// source frozen under its lease: a second migration is refused until
    /// the lease ends or the source is resumed. It took the leased freeze
    /// for one the user made, imported the copy frozen, destroyed the
    /// source, and left the only copy frozen for good.
    @Test func aContainerFrozenUnderALeaseIsNotMigratedAgain() throws {
        let source = try LeaseRoot(), target = try LeaseRoot()
        defer { source.destroy(); target.destroy() }
        let a = try AgentProcess(config: source.config)
        defer { a.stop() }
        let b = try AgentProcess(config: target.config)
        defer { b.stop() }
        let lmctl = [builtTool("lmctl"), "--agent", "unix://\(a.socket)"]
        #expect(try TestProcess.capture(lmctl + ["create", "/web", "cpu:{limit:100}"]).status == 0)
        #expect(try TestProcess.capture(lmctl + ["run", "-n", "/web", "sleep 600"]).status == 0)
        let marker = a.dir + "/hold"
        let first = try TestProcess.spawn(["/usr/bin/env", "LMCTL_TEST_MIGRATE_HOLD_AFTER=pause:\(marker)"] + lmctl
                                          + ["migrate", "/web", "--to", "unix://\(b.socket)"])
        #expect(within(10_000) { Sys.exists(marker) }, "lmctl never froze the source")
        TestProcess.end(first)  // SIGKILL, reaped
        try? Sys.unlink(marker)
        #expect(try source.frozen("/web") == true)

        let again = try TestProcess.capture(lmctl + ["migrate", "/web", "--to", "unix://\(b.socket)"])
        #expect(again.status == StatusCode.aborted.rawValue, "\(again.err)")
        #expect(again.err.contains("frozen under a lease") && again.err.contains("nothing was touched"), "\(again.err)")
        #expect(try source.frozen("/web") == true && target.frozen("/web") == nil)
        // Nor can another caller take the freeze over with a lease of its own.
        let client = try connected(a)
        defer { client.close() }
        #expect(throws: LmctfyError.self) { _ = try client.call(AgentMethods.pause, PauseRequest(name: "/web", leaseMs: 60_000)) }

        // Resumed by the operator: it moves, and runs there.
        #expect(try TestProcess.capture(lmctl + ["resume", "/web"]).status == 0)
        let moved = try TestProcess.capture(lmctl + ["migrate", "/web", "--to", "unix://\(b.socket)"])
        #expect(moved.status == 0, "\(moved.err)")
        #expect(try source.frozen("/web") == nil && target.frozen("/web") == false)
    }

    /// A change whose caller gave up while the agent was stopped (its
    /// request and CANCEL read together) is not made, even when a pool
    /// thread takes it up before the loop reads the CANCEL.
    @Test func aChangeCancelledWhileTheAgentWasStoppedIsNotMade() throws {
        let root = try LeaseRoot()
        defer { root.destroy() }
        let agent = try AgentProcess(config: root.config)
        var stopped = false
        defer {
            if stopped { kill(agent.pid, SIGCONT) }
            agent.stop()
        }
        let client = try connected(agent)
        defer { client.close() }
        for n in 0..<5 { _ = try client.call(AgentMethods.create, CreateRequest(name: "/c\(n)", spec: ContainerSpec())) }
        kill(agent.pid, SIGSTOP)
        stopped = true
        // Stopped for real: every thread (a thread running on the other CPU
        // stops a moment after kill returns, and could read the first request).
        #expect(within(5_000) { allStopped(agent.pid) }, "the agent did not stop")
        for n in 0..<5 {
            #expect(throws: LmctfyError.self) {
                _ = try client.call(AgentMethods.destroy, DestroyRequest(name: "/c\(n)", force: true), deadlineMs: 100)
            }
        }
        kill(agent.pid, SIGCONT)
        stopped = false
        _ = try client.call(AgentMethods.ping, PingRequest())
        usleep(300_000)
        for n in 0..<5 { #expect(try root.frozen("/c\(n)") != nil, "/c\(n) was destroyed after its caller gave up") }
    }
}

private extension ChildResult {
    var out: String { String(decoding: stdout, as: UTF8.self) }
    var err: String { String(decoding: stderr, as: UTF8.self) }
}

extension FreezeLeaseAgentTests {
    /// `lmctl migrate` with `LMCTL_TEST_MIGRATE_HOLD_AFTER=step`, in the
    /// background; `release` lets it go on and returns its result.
    private struct HeldMigration {
        let marker: String
        let result = Mutexed<ChildResult?>(nil)
        let done = Latch()

        init(_ lmctl: [String], _ name: String, to socket: String, holdAfter step: String, marker: String) {
            self.marker = marker
            let argv = ["/usr/bin/env", "LMCTL_TEST_MIGRATE_HOLD_AFTER=\(step):\(marker)"] + lmctl
                + ["migrate", name, "--to", "unix://\(socket)", "--timeout", "30"]
            let result = self.result, done = self.done
            Threads.detach {
                let r = try? TestProcess.capture(argv)
                result.locked { $0 = r }
                done.signal()
            }
        }

        var holding: Bool { within(15_000) { Sys.exists(marker) } }

        func release() throws -> ChildResult {
            try? Sys.unlink(marker)
            #expect(done.wait(seconds: 60), "lmctl did not end")
            return try #require(result.locked { $0 })
        }
    }

    /// A migration acts only on the containers it froze and made: one made
    /// again under the source's name by another caller meanwhile is never
    /// destroyed (it was, its processes killed, and lmctl said
    /// "migrated"), a copy destroyed on the target meanwhile stops the
    /// migration before the source goes (both were gone), and an update of
    /// the source while it is copied is refused (it was acknowledged and
    /// lost with the source; the snapshot probe).
    @Test func aMigrationActsOnlyOnTheContainersItFroze() throws {
        let source = try LeaseRoot(), target = try LeaseRoot()
        defer { source.destroy(); target.destroy() }
        let a = try AgentProcess(config: source.config)
        defer { a.stop() }
        let b = try AgentProcess(config: target.config)
        defer { b.stop() }
        let lmctl = [builtTool("lmctl"), "--agent", "unix://\(a.socket)"]
        let lmctlB = [builtTool("lmctl"), "--agent", "unix://\(b.socket)"]
        func pids(_ root: LeaseRoot) throws -> [Int32] {
            try root.api.get(try ContainerName.resolve(root.name + "/web", relativeTo: .root)).processes(recursive: true)
        }
        #expect(try TestProcess.capture(lmctl + ["create", "/web", "cpu:{limit:100}"]).status == 0)
        #expect(try TestProcess.capture(lmctl + ["run", "-n", "/web", "sleep 600"]).status == 0)

        // Replaced on the source after the import: the new one is left as
        // it is, running; the copy goes again.
        var held = HeldMigration(lmctl, "/web", to: b.socket, holdAfter: "import", marker: a.dir + "/hold")
        #expect(held.holding, "lmctl never imported")
        #expect(try TestProcess.capture(lmctl + ["destroy", "-f", "/web"]).status == 0)
        #expect(try TestProcess.capture(lmctl + ["create", "/web", "cpu:{limit:200}"]).status == 0)
        #expect(try TestProcess.capture(lmctl + ["run", "-n", "/web", "sleep 555"]).status == 0)
        let newPids = try pids(source)
        var r = try held.release()
        #expect(r.status == StatusCode.aborted.rawValue, "\(r.err)")
        #expect(r.err.contains("made again by another caller meanwhile: that new container was left alone"), "\(r.err)")
        #expect(try source.frozen("/web") == false && pids(source) == newPids, "the new /web was touched")
        #expect(newPids.allSatisfy { kill($0, 0) == 0 })
        #expect(try target.frozen("/web") == nil, "the copy was left")

        // Its copy destroyed on the target after the import: the source
        // stays, running.
        held = HeldMigration(lmctl, "/web", to: b.socket, holdAfter: "import", marker: a.dir + "/hold")
        #expect(held.holding, "lmctl never imported")
        #expect(try TestProcess.capture(lmctlB + ["destroy", "-f", "/web"]).status == 0)
        r = try held.release()
        #expect(r.status == StatusCode.notFound.rawValue, "\(r.err)")
        #expect(r.err.contains("its copy on") && r.err.contains("after the import"), "\(r.err)")
        #expect(try source.frozen("/web") == false && pids(source) == newPids, "the source was not kept")
        #expect(try target.frozen("/web") == nil)

        // An update while it is copied: refused, and the move goes on.
        held = HeldMigration(lmctl, "/web", to: b.socket, holdAfter: "export", marker: a.dir + "/hold")
        #expect(held.holding, "lmctl never exported")
        let update = try TestProcess.capture(lmctl + ["update", "replace", "/web", "cpu:{limit:300}"])
        #expect(update.status == StatusCode.aborted.rawValue && update.err.contains("frozen under a lease"), "\(update.err)")
        r = try held.release()
        #expect(r.status == 0, "\(r.err)")
        #expect(try source.frozen("/web") == nil && target.frozen("/web") == false)
        let spec = try TestProcess.capture(lmctlB + ["spec", "/web"])
        #expect(spec.out.contains("limit: 200"), "\(spec.out)")
    }

    /// A leased freeze thawed behind the agent's back (`lmctfy resume`)
    /// loses its lease: the operator's freeze after it is never undone at
    /// the lease's end (it was thawed; a probe).
    @Test func aLeasedFreezeThawedWithTheCliLosesItsLease() throws {
        let root = try LeaseRoot()
        defer { root.destroy() }
        let agent = try AgentProcess(config: root.config)
        defer { agent.stop() }
        let client = try connected(agent)
        defer { client.close() }
        _ = try client.call(AgentMethods.create, CreateRequest(name: "/f", spec: ContainerSpec()))
        _ = try client.call(AgentMethods.pause, PauseRequest(name: "/f", leaseMs: 2000))
        let full = root.name + "/f"
        #expect(try TestProcess.capture([builtTool("lmctfy"), "resume", full]).status == 0)
        // Once the agent has seen the thaw (its event), the operator freezes it.
        #expect(within(10_000) {
            ((try? client.call(AgentMethods.exportSnapshot, ExportSnapshotRequest(name: "/f")))?.freezeLeaseMs) == nil
        }, "the lease outlived a thaw made with the CLI")
        #expect(try TestProcess.capture([builtTool("lmctfy"), "pause", full]).status == 0)
        usleep(3_000_000)
        #expect(try root.frozen("/f") == true, "the lease thawed the operator's freeze")
    }
}

extension FreezeLeaseAgentTests {
    /// Destroy, Pause and Resume with a `cgroup_id` act only on that
    /// container: another under its name is ABORTED, untouched.
    @Test func callsWithACgroupIdActOnlyOnThatContainer() throws {
        let root = try LeaseRoot()
        defer { root.destroy() }
        let agent = try AgentProcess(config: root.config)
        defer { agent.stop() }
        let client = try connected(agent)
        defer { client.close() }
        _ = try client.call(AgentMethods.create, CreateRequest(name: "/g", spec: ContainerSpec()))
        let id = try #require(try client.call(AgentMethods.exportSnapshot, ExportSnapshotRequest(name: "/g")).snapshot?.cgroupId)
        func refused(_ call: () throws -> Void) -> LmctfyError? {
            do { try call() } catch { return error as? LmctfyError }
            return nil
        }
        for call in [
            { _ = try client.call(AgentMethods.pause, PauseRequest(name: "/g", cgroupId: id + 1)) },
            { _ = try client.call(AgentMethods.pause, PauseRequest(name: "/g", leaseMs: 60_000, cgroupId: id + 1)) },
            { _ = try client.call(AgentMethods.destroy, DestroyRequest(name: "/g", force: true, cgroupId: id + 1)) },
        ] as [() throws -> Void] {
            let e = refused(call)
            #expect(e?.code == .aborted && e?.message.contains("another container now") == true, "\(String(describing: e))")
            #expect(try root.frozen("/g") == false)
        }
        _ = try client.call(AgentMethods.pause, PauseRequest(name: "/g", cgroupId: id))
        let e = refused { _ = try client.call(AgentMethods.resume, ResumeRequest(name: "/g", cgroupId: id + 1)) }
        #expect(e?.code == .aborted, "\(String(describing: e))")
        #expect(try root.frozen("/g") == true)
        _ = try client.call(AgentMethods.resume, ResumeRequest(name: "/g", cgroupId: id))
        _ = try client.call(AgentMethods.destroy, DestroyRequest(name: "/g", force: true, cgroupId: id))
        #expect(try root.frozen("/g") == nil)
    }
}
