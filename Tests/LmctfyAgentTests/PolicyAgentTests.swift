// CL2 in a real agent (README "Policy"): an agent whose root container has
// a 256 MiB memory limit admits two prod containers of 100 MiB, refuses a
// third with RESOURCE_EXHAUSTED and the arithmetic (nothing made), admits a
// best-effort one only thanks to overcommit, polices updates, answers
// CheckAdmission and `lmctl create --dry-run` without making anything, and a
// restarted agent counts what exists (its own containers and the CLI's).
import Glibc
import Lmctfy
@testable import LmctfyAgent
import LmctfyPolicy
import LmctfyProto
import LmctfyRPC
import LmctfySystem
import LmctfyTestSupport
import Testing

private func name(_ path: String) throws -> ContainerName { try ContainerName.resolve(path, relativeTo: .root) }

/// A container made with CL1 to be an agent's root, with `spec`; destroyed
/// with everything below it at the end.
func withPolicyRoot<T>(_ label: String, spec: String, _ body: (ContainerName) throws -> T) throws -> T {
    let api = try ContainerApi.detect()
    let root = try name(RealCgroups.uniqueName(label))
    try api.create(root, spec: try ContainerSpec(textFormat: spec))
    defer { _ = try? api.destroy(root) }
    return try body(root)
}

/// The status a call ends with.
private func status(_ body: () throws -> Void) -> (StatusCode, String) {
    do {
        try body()
        return (.ok, "")
    } catch let e as LmctfyError {
        return (e.code, e.message)
    } catch {
        return (.unknown, "\(error)")
    }
}

private let mib: Int64 = 1 << 20

/// An agent whose state (snapshots, journal) lives in `dir`, which outlives
/// it: a second one on the same `dir` is the first one restarted.
private func withAgent<T>(state dir: String, _ extra: String, _ body: (Agent, String) throws -> T) throws -> T {
    let socket = dir + "/agent.sock"
    let settings = try AgentSettings.parse("unix_socket_path: \"\(socket)\" unix_socket_mode: 0666 log_level: LOG_WARNING state_dir: \"\(dir)/state\" stats_interval_ms: 0 \(extra)", source: "test")
    let agent = Agent(settings: settings, api: try ContainerApi.detect())
    try agent.start(handleSignals: false)
    defer { #expect(agent.stop(graceMs: 2000) == 0, "uv_loop_close must return 0") }
    return try body(agent, socket)
}

/// `withAgent` on a fresh state directory, rooted at a new policy root
/// container of 256 MiB.
private func withPolicyAgent<T>(_ label: String, _ extra: String = "", _ body: (ContainerName, Agent, String) throws -> T) throws -> T {
    try withPolicyRoot(label, spec: "memory { limit: 268435456 }") { root in
        let dir = "/tmp/lmctfy-agent-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try Sys.mkdir(dir, mode: 0o755)
        defer { _ = removeTree(dir) }
        return try withAgent(state: dir, "root_container: \"\(root)\" \(extra)") { agent, socket in try body(root, agent, socket) }
    }
}

@Suite(.enabled(if: RealCgroups.available, "\(RealCgroups.unavailableReason ?? "")"))
struct PolicyAgentTests {
    /// A Create of a name whose create is under way (another caller's)
    /// waits for it and is answered as if it came after it: ALREADY_EXISTS
    /// once that one made it. The loser of two creates at once was ABORTED
    /// (the concurrency probe: 11 of 120 lmctl creates).
    @Test func aCreateOfANameBeingCreatedWaitsForItAndGetsAlreadyExists() throws {
        try withPolicyRoot("policysame", spec: "memory { limit: 268435456 }") { root in
            let api = try ContainerApi.detect()
            let dir = "/tmp/lmctfy-agent-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
            try Sys.mkdir(dir, mode: 0o755)
            defer { _ = removeTree(dir) }
            try withAgent(state: dir, "root_container: \"\(root)\" policy { overcommit_percent: 0 }") { agent, socket in
                let keeper = try #require(agent.dispatcher.policy)
                let spec = try ContainerSpec(textFormat: "memory { limit: 10485760 }")
                let path = try agent.dispatcher.backend.resolve("/same")
                let (tier, applied) = try keeper.planCreate(path: path, spec: spec, tier: nil)
                let inside = Mutexed(false)
                let firstDone = Mutexed<UInt64?>(nil)
                let backend = agent.dispatcher.backend
                Threads.detach {
                    _ = try? keeper.admitCreate(path: path, tier: tier, spec: applied) {
                        inside.locked { $0 = true }
                        usleep(300_000)
                        try backend.create("/same", spec: applied)
                        firstDone.locked { $0 = MonotonicClock.milliseconds() }
                    }
                }
                for _ in 0..<500 where !inside.locked({ $0 }) { usleep(10_000) }
                try #require(inside.locked { $0 }, "the first create never started")
                let client = try RpcClient.connect(unixPath: socket)
                defer { client.close() }
                let (code, message) = status { _ = try client.call(AgentMethods.create, CreateRequest(name: "/same", spec: spec)) }
                let answered = MonotonicClock.milliseconds()
                #expect(code == .alreadyExists, "\(code): \(message)")
                #expect(firstDone.locked { $0 }.map { $0 <= answered } == true, "answered before the first create ended")
                #expect(try api.exists(name(root.path + "/same")))
            }
        }
    }

    /// A create that waited for another create of its name (which failed)
    /// finds a third caller's create of it begun in between: it waits for
    /// that one too and gets ALREADY_EXISTS once it made the container. It
    /// was ABORTED ("still under way") at once (the one-shot probe: 1 of
    /// 240 same-name runs; the window is made here with the keeper's
    /// `afterWait` seam).
    @Test func aCreateThatFindsAnotherBegunAfterItsWaitWaitsForItToo() throws {
        try withPolicyAgent("policyturn", "policy { overcommit_percent: 0 }") { _, agent, _ in
            let keeper = try #require(agent.dispatcher.policy)
            let backend = agent.dispatcher.backend
            let spec = try ContainerSpec(textFormat: "memory { limit: 10485760 }")
            let path = try backend.resolve("/turn")
            let (tier, applied) = try keeper.planCreate(path: path, spec: spec, tier: nil)
            let firstInside = Latch(), thirdInside = Latch(), thirdDone = Latch()
            let third = Mutexed<String?>(nil)
            Threads.detach {
                _ = try? keeper.admitCreate(path: path, tier: tier, spec: applied) {
                    firstInside.signal()
                    usleep(200_000)
                    throw LmctfyError(.internal, "the first create fails")
                }
            }
            firstInside.wait()
            // The waiting create, past its wait: the third one begins and
            // is admitted before it looks.
            let hooked = Mutexed(false)
            keeper.afterWait.locked { $0 = { _ in
                guard !hooked.locked({ h in defer { h = true }; return h }) else { return }
                Threads.detach {
                    do {
                        _ = try keeper.admitCreate(path: path, tier: tier, spec: applied) {
                            thirdInside.signal()
                            usleep(100_000)
                            try backend.create("/turn", spec: applied)
                        }
                        third.locked { $0 = "made" }
                    } catch {
                        third.locked { $0 = "\(error)" }
                    }
                    thirdDone.signal()
                }
                thirdInside.wait()
            } }
            defer { keeper.afterWait.locked { $0 = nil } }
            let (code, message) = status {
                _ = try keeper.admitCreate(path: path, tier: tier, spec: applied) { try backend.create("/turn", spec: applied) }
            }
            thirdDone.wait()
            #expect(hooked.locked { $0 }, "the window was reached")
            #expect(third.locked { $0 } == "made")
            #expect(code == .alreadyExists, "\(code): \(message)")
            _ = try? backend.destroy("/turn", force: true)
        }
    }

    /// A create of a name whose ledger entry is stale (its container
    /// destroyed meanwhile: a destroy racing the create, through the agent
    /// or behind its back, the watcher not yet heard) is admitted as any
    /// other: it ran unchecked, taken for one that fails ALREADY_EXISTS,
    /// and a 1 GiB prod container got in on 256 MiB (the policy probe: 9 of
    /// 40 creates racing a destroy). And a destroy forgets only the entry
    /// it began with, not one a create admitted since.
    @Test func aCreateWhoseNameHasAStaleEntryIsAdmittedAsAnyOther() throws {
        try withPolicyAgent("policystale", "policy { overcommit_percent: 0 }") { root, agent, socket in
            do {
                let api = try ContainerApi.detect()
                let keeper = try #require(agent.dispatcher.policy)
                let path = try agent.dispatcher.backend.resolve("/ghost")
                let client = try RpcClient.connect(unixPath: socket)
                defer { client.close() }
                // A first create lists the root; the next ones take the
                // ledger as it is while the watcher saw nothing change.
                let tiny = try ContainerSpec(textFormat: "memory { limit: 4194304 }")
                _ = try client.call(AgentMethods.create, CreateRequest(name: "/first", spec: tiny, tier: "prod"))
                defer { _ = try? client.call(AgentMethods.destroy, DestroyRequest(name: "/first")) }
                keeper.admitter.record(path, tier: "prod", amount: Amount(memory: 10 << 20), newest: true)
                let huge = try ContainerSpec(textFormat: "memory { limit: 1073741824 }")
                let (code, message) = status { _ = try client.call(AgentMethods.create, CreateRequest(name: "/ghost", spec: huge, tier: "prod")) }
                #expect(code == .resourceExhausted, "\(code): \(message)")
                #expect(try !api.exists(name(root.path + "/ghost")), "a refused create made its container")
                let small = try ContainerSpec(textFormat: "memory { limit: 20971520 }")
                _ = try client.call(AgentMethods.create, CreateRequest(name: "/ghost", spec: small, tier: "prod"))
                let made = try #require(keeper.admitter.commitment(path))
                #expect(made.amount.memory == 20 << 20 && !made.pending)
                // The entry a destroy began with goes; a newer one stays.
                keeper.destroyed(path, was: Commitment(tier: "prod", amount: made.amount, order: made.order &- 1))
                #expect(keeper.admitter.commitment(path) == made)
                keeper.destroyed(path, was: made)
                #expect(keeper.admitter.commitment(path) == nil)
                _ = try client.call(AgentMethods.destroy, DestroyRequest(name: "/ghost"))
            }
        }
    }

    @Test func admissionOnA256MiBRootWithTiersOvercommitUpdatesAndARestart() throws {
        try withPolicyRoot("policy", spec: "memory { limit: 268435456 }") { root in
            let api = try ContainerApi.detect()
            let config = "root_container: \"\(root)\" policy { overcommit_percent: 25 }"
            let hundred = try ContainerSpec(textFormat: "memory { limit: 104857600 }")
            let dir = "/tmp/lmctfy-agent-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
            try Sys.mkdir(dir, mode: 0o755)
            defer { _ = removeTree(dir) }
            try withAgent(state: dir, config) { _, socket in
                let client = try RpcClient.connect(unixPath: socket)
                defer { client.close() }
                for n in ["/p1", "/p2"] {
                    let r = try client.call(AgentMethods.create, CreateRequest(name: n, spec: hundred, tier: "prod"))
                    #expect(r.tier == "prod")
                }
                // The tier's mapping onto CL1, read back from the kernel.
                let p1 = try api.get(name(root.path + "/p1")).spec()
                #expect(p1.memory?.evictionPriority == 5003 && p1.memory?.reservation == 100 * mib, "\(p1.textFormatString)")

                // Would a third fit? No, and nothing is made by asking.
                let check = try client.call(AgentMethods.checkAdmission, CheckAdmissionRequest(name: "/p3", spec: hundred, tier: "prod"))
                #expect(check.admitted == false && check.tier == "prod")
                #expect(check.policy?.capacityMemory == 256 * mib)
                #expect(check.policy?.tier.first?.memory == 200 * mib && check.policy?.tier.first?.containers == 2)
                let (code, message) = status { _ = try client.call(AgentMethods.create, CreateRequest(name: "/p3", spec: hundred, tier: "prod")) }
                #expect(code == .resourceExhausted, "\(message)")
                #expect(code.rawValue == 8)
                for part in ["asked 104857600 B (100.0 MiB)", "guaranteed tiers would commit 314572800 B (300.0 MiB) of 268435456 B (256.0 MiB)",
                             "prod 209715200 B (200.0 MiB) 0 milliCPU (2)", "free (capacity minus guaranteed) 58720256 B (56.0 MiB)"] {
                    #expect(message.contains(part), "\(part) in \(message)")
                }
                #expect(check.message.map { message.hasSuffix($0) } == true, "CheckAdmission gives the same arithmetic")
                #expect(try !api.exists(name(root.path + "/p3")), "a refused create makes nothing")
                // prod told by its priority alone, without a memory limit: 3,
                // as with --tier prod (it was counted in prod committing nothing).
                let byPriority = try ContainerSpec(textFormat: "memory { eviction_priority: 5003 }")
                let (prioCode, prioMessage) = status { _ = try client.call(AgentMethods.create, CreateRequest(name: "/p4", spec: byPriority)) }
                #expect(prioCode == .invalidArgument && prioMessage.contains("Tier prod guarantees memory"), "\(prioMessage)")
                #expect(try !api.exists(name(root.path + "/p4")))
                // Nor with a limit of 2^60 B or more, which counts as none
                // (it was taken, committing nothing, prod full; the policy
                // probe), by a create or by an import of its snapshot.
                for limit in ["2305843009213693952", "9223372036854775807"] {
                    let unbounded = try ContainerSpec(textFormat: "memory { limit: \(limit) eviction_priority: 5003 }")
                    let (code, message) = status { _ = try client.call(AgentMethods.create, CreateRequest(name: "/p4", spec: unbounded)) }
                    #expect(code == .invalidArgument && message.contains("below 2^60 B"), "\(limit): \(message)")
                    let snapshot = ContainerSnapshot(formatVersion: 1, name: "/p4", spec: unbounded, createdNs: 1, bootId: "b")
                    let (importCode, importMessage) = status {
                        _ = try client.call(AgentMethods.importSnapshot, ImportSnapshotRequest(snapshot: snapshot, name: "/p4"))
                    }
                    #expect(importCode != .ok && importMessage.contains("below 2^60 B"), "\(limit): \(importCode) \(importMessage)")
                    #expect(try !api.exists(name(root.path + "/p4")))
                }

                // best-effort reserving 100 MiB: 300 of 256 MiB only with overcommit (25%: 320 MiB).
                let beSpec = try ContainerSpec(textFormat: "memory { limit: 104857600 reservation: 104857600 }")
                #expect(try client.call(AgentMethods.create, CreateRequest(name: "/be1", spec: beSpec, tier: "best-effort")).tier == "best-effort")
                let be1 = try api.get(name(root.path + "/be1")).spec()
                #expect(be1.memory?.evictionPriority == 0 && be1.cpu == nil, "\(be1.textFormatString)")
                let (beCode, beMessage) = status { _ = try client.call(AgentMethods.create, CreateRequest(name: "/be2", spec: beSpec, tier: "best-effort")) }
                #expect(beCode == .resourceExhausted && beMessage.contains("above 125% of 268435456 B"), "\(beMessage)")

                // Updates: growing p1 past the room is refused and changes nothing; shrinking passes.
                let grow = try ContainerSpec(textFormat: "memory { limit: 167772160 }")  // 160 + 100 > 256
                let (upCode, upMessage) = status {
                    _ = try client.call(AgentMethods.update, UpdateRequest(name: "/p1", spec: grow, policy: .updateDiff))
                }
                #expect(upCode == .resourceExhausted && upMessage.contains("(now 104857600 B (100.0 MiB)"), "\(upMessage)")
                #expect(try api.get(name(root.path + "/p1")).spec().memory?.limit == 100 * mib, "unchanged")
                let shrink = try ContainerSpec(textFormat: "memory { limit: 52428800 }")
                _ = try client.call(AgentMethods.update, UpdateRequest(name: "/p1", spec: shrink, policy: .updateDiff))
                // 50 + 100 + 100 = 250 MiB of 256: the third prod fits now.
                #expect(try client.call(AgentMethods.checkAdmission, CheckAdmissionRequest(name: "/p3", spec: hundred, tier: "prod")).admitted == true)
                _ = try client.call(AgentMethods.create, CreateRequest(name: "/p3", spec: hundred, tier: "prod"))

                // A tier that does not exist, and a prod without a limit: INVALID_ARGUMENT, nothing made.
                #expect(status { _ = try client.call(AgentMethods.create, CreateRequest(name: "/x", spec: hundred, tier: "gold")) }.0 == .invalidArgument)
                #expect(status { _ = try client.call(AgentMethods.create, CreateRequest(name: "/y", spec: ContainerSpec(), tier: "prod")) }.0 == .invalidArgument)
                #expect(try !api.exists(name(root.path + "/x")) && !api.exists(name(root.path + "/y")))

                // A nested container is inside its parent's commitment: not policed.
                _ = try client.call(AgentMethods.create, CreateRequest(name: "/p3/inner", spec: hundred))

                // MachineInfo reports it all.
                let info = try client.call(AgentMethods.machineInfo, MachineInfoRequest())
                #expect(info.policy?.tier.map(\.tier) == ["prod", "batch", "best-effort"])
                #expect(info.policy?.tier.map { $0.memory ?? -1 } == [250 * mib, 0, 100 * mib])
                #expect(info.policy?.freeMemory == 6 * mib && info.policy?.overcommitPercent == 25)
                // Destroying gives the room back.
                _ = try client.call(AgentMethods.destroy, DestroyRequest(name: "/p3", force: true))
                #expect(try client.call(AgentMethods.machineInfo, MachineInfoRequest()).policy?.tier.first?.memory == 150 * mib)
            }
            // Behind the agents' backs: a batch container reserving 50 MiB, made with CL1.
            try api.create(name(root.path + "/cli"), spec: try ContainerSpec(textFormat: "memory { reservation: 52428800 }"))
            // A new agent on the same root recomputes every commitment from what exists.
            try withAgent(state: dir, config) { agent, socket in
                // The eviction order (newest first) survives too: the snapshots'
                // creation times; /cli, made while no agent ran, is adopted now (newest).
                let ledger = try #require(agent.dispatcher.policy).admitter.snapshot()
                #expect(ledger.entries.sorted { $0.value.order < $1.value.order }.map(\.key) == ["/p1", "/p2", "/be1", "/cli"])
                let client = try RpcClient.connect(unixPath: socket)
                defer { client.close() }
                let report = try client.call(AgentMethods.machineInfo, MachineInfoRequest()).policy
                #expect(report?.tier.map { $0.memory ?? -1 } == [150 * mib, 50 * mib, 100 * mib], "\(String(describing: report))")
                #expect(report?.tier.map { $0.containers ?? 0 } == [2, 1, 1])
                let big = try ContainerSpec(textFormat: "memory { limit: 115343360 }")  // 110 MiB: 260 > 256
                let (code, message) = status { _ = try client.call(AgentMethods.create, CreateRequest(name: "/p4", spec: big, tier: "prod")) }
                #expect(code == .resourceExhausted && message.contains("prod 157286400 B (150.0 MiB) 0 milliCPU (2)"), "\(message)")
                _ = try client.call(AgentMethods.create, CreateRequest(name: "/p4", spec: hundred, tier: "prod"))
            }
        }
    }

    /// A running agent lists its root again before a create only when its
    /// watcher saw something appear or go behind its back: a container made
    /// with CL1 meanwhile is counted by the next admission, and one
    /// destroyed with CL1 gives its room back.
    @Test func aContainerMadeBehindARunningAgentsBackIsCounted() throws {
        try withPolicyAgent("policyw") { root, agent, socket in
            let api = try ContainerApi.detect()
            let client = try RpcClient.connect(unixPath: socket)
            defer { client.close() }
            let batch = try ContainerSpec(textFormat: "memory { reservation: 104857600 }")
            // One create through the agent first: its ledger is in line.
            _ = try client.call(AgentMethods.create, CreateRequest(name: "/a1", spec: batch, tier: "batch"))
            _ = try client.call(AgentMethods.destroy, DestroyRequest(name: "/a1", force: true))
            // 200 MiB reserved behind its back (a batch container, 5000).
            try api.create(name(root.path + "/cli"), spec: try ContainerSpec(textFormat: "memory { reservation: 209715200 }"))
            let seen = { (present: Bool) -> Bool in
                for _ in 0..<500 {
                    if agent.dispatcher.inventory.knows("/cli") == present { return true }
                    usleep(10_000)
                }
                return false
            }
            try #require(seen(true), "the watcher did not see /cli")
            let (code, message) = status { _ = try client.call(AgentMethods.create, CreateRequest(name: "/a2", spec: batch, tier: "batch")) }
            #expect(code == .resourceExhausted && message.contains("314572800"), "\(message)")
            // Shrunk behind its back to 50 MiB: the ledger follows the
            // watcher's UPDATED (it kept the 200 MiB it had read).
            try api.get(name(root.path + "/cli")).update(try ContainerSpec(textFormat: "memory { reservation: 52428800 }"), policy: .diff)
            var admitted = false
            for _ in 0..<100 where !admitted {
                admitted = (try? client.call(AgentMethods.create, CreateRequest(name: "/a2", spec: batch, tier: "batch"))) != nil
                if !admitted { usleep(50_000) }
            }
            #expect(admitted, "the ledger kept /cli's old reservation")
            try api.destroy(name(root.path + "/cli"))
            try #require(seen(false), "the watcher did not see /cli go")
            _ = try client.call(AgentMethods.create, CreateRequest(name: "/a3", spec: batch, tier: "batch"))
        }
    }

    /// A container shrunk behind the agent's back: CheckAdmission (`lmctl
    /// create --dry-run`) and MachineInfo's report follow it as a create
    /// does. Only a create applied such an update to the ledger, so the dry
    /// run refused what the create then admitted (a probe).
    @Test func aDryRunAndTheReportFollowAnUpdateBehindTheAgentsBack() throws {
        try withPolicyAgent("policyu") { root, agent, socket in
            let api = try ContainerApi.detect()
            let client = try RpcClient.connect(unixPath: socket)
            defer { client.close() }
            let batch = try ContainerSpec(textFormat: "memory { reservation: 104857600 }")
            try api.create(name(root.path + "/cli"), spec: try ContainerSpec(textFormat: "memory { reservation: 209715200 }"))
            for _ in 0..<500 where !agent.dispatcher.inventory.knows("/cli") { usleep(10_000) }
            try #require(agent.dispatcher.inventory.knows("/cli"), "the watcher did not see /cli")
            let dryRun = { try client.call(AgentMethods.checkAdmission, CheckAdmissionRequest(name: "/a", spec: batch, tier: "batch")) }
            let refused = try dryRun()
            #expect(refused.admitted == false && refused.message?.contains("314572800") == true, "\(refused)")
            try api.get(name(root.path + "/cli")).update(try ContainerSpec(textFormat: "memory { reservation: 52428800 }"), policy: .diff)
            var admitted = false
            for _ in 0..<100 where !admitted {
                admitted = try dryRun().admitted == true
                if !admitted { usleep(50_000) }
            }
            #expect(admitted, "the dry run kept /cli's old reservation")
            let report = try client.call(AgentMethods.machineInfo, MachineInfoRequest()).policy
            let batchTier = report?.tier.first { $0.tier == "batch" }
            #expect(batchTier?.memory == 52428800 && batchTier?.containers == 1, "\(String(describing: report))")
            _ = try client.call(AgentMethods.create, CreateRequest(name: "/a", spec: batch, tier: "batch"))
            _ = try client.call(AgentMethods.destroy, DestroyRequest(name: "/a", force: true))
            try api.destroy(name(root.path + "/cli"))
        }
    }

    /// A reservation of 0.8 EiB (a create, or a CLI-made container the
    /// agent counts): the refusal's arithmetic trapped and killed the agent
    /// (SIGILL), for every create while such a container existed (a probe).
    @Test func aHugeReservationIsRefusedAndTheAgentLives() throws {
        try withPolicyAgent("policyh") { root, agent, socket in
            let api = try ContainerApi.detect()
            let huge = try ContainerSpec(textFormat: "memory { reservation: 950000000000000000 }")
            let client = try RpcClient.connect(unixPath: socket)
            defer { client.close() }
            var (code, message) = status { _ = try client.call(AgentMethods.create, CreateRequest(name: "/h", spec: huge, tier: "batch")) }
            #expect(code == .resourceExhausted && message.contains("asked 950000000000000000 B (905990600585.9 MiB)"), "\(message)")
            #expect(try !api.exists(name(root.path + "/h")))
            // Made behind its back: counted, and the next create is
            // refused with the arithmetic, the agent alive.
            try api.create(name(root.path + "/cli"), spec: huge)
            for _ in 0..<500 where !agent.dispatcher.inventory.knows("/cli") { usleep(10_000) }
            try #require(agent.dispatcher.inventory.knows("/cli"), "the watcher did not see /cli")
            let small = try ContainerSpec(textFormat: "memory { reservation: 4096 }")
            (code, message) = status { _ = try client.call(AgentMethods.create, CreateRequest(name: "/s", spec: small, tier: "batch")) }
            #expect(code == .resourceExhausted && message.contains("950000000000004096 B"), "\(message)")
            try api.destroy(name(root.path + "/cli"))
        }
    }

    /// Admission and create are one step: eight clients racing to create a
    /// prod container of 100 MiB in a 256 MiB root get exactly two in.
    @Test func concurrentCreatesRaceForTheLastRoom() throws {
        try withPolicyRoot("policyrace", spec: "memory { limit: 268435456 }") { root in
            let api = try ContainerApi.detect()
            try withAgent("root_container: \"\(root)\"") { _, socket in
                let codes = Mutexed<[StatusCode]>([])
                let done = Latch()
                let hundred = try ContainerSpec(textFormat: "memory { limit: 104857600 }")
                let go = Latch()
                for i in 0..<8 {
                    Threads.detach {
                        var code = StatusCode.unknown
                        do {
                            let client = try RpcClient.connect(unixPath: socket)
                            defer { client.close() }
                            go.wait()
                            _ = try client.call(AgentMethods.create, CreateRequest(name: "/r\(i)", spec: hundred, tier: "prod"))
                            code = .ok
                        } catch let e as LmctfyError {
                            code = e.code
                        } catch {}
                        let n = codes.locked { $0.append(code); return $0.count }
                        if n == 8 { done.signal() }
                    }
                }
                usleep(100_000)
                go.signal()
                done.wait()
                let got = codes.locked { $0 }
                #expect(got.filter { $0 == .ok }.count == 2, "\(got)")
                #expect(got.filter { $0 == .resourceExhausted }.count == 6, "\(got)")
                #expect(try api.get(root).subcontainers(recursive: false).count == 2)
            }
        }
    }

    /// An imported snapshot (a migration's target) is admitted as a create
    /// in the tier its spec says.
    @Test func anImportIsAdmittedLikeACreate() throws {
        try withPolicyRoot("policyimport", spec: "memory { limit: 268435456 }") { root in
            let api = try ContainerApi.detect()
            try withAgent("root_container: \"\(root)\"") { _, socket in
                let client = try RpcClient.connect(unixPath: socket)
                defer { client.close() }
                _ = try client.call(AgentMethods.create, CreateRequest(
                    name: "/p1", spec: try ContainerSpec(textFormat: "memory { limit: 167772160 }"), tier: "prod"))
                let snapshot = try client.call(AgentMethods.exportSnapshot, ExportSnapshotRequest(name: "/p1")).snapshot
                let (code, message) = status { _ = try client.call(AgentMethods.importSnapshot, ImportSnapshotRequest(snapshot: snapshot, name: "/copy")) }
                #expect(code == .resourceExhausted && message.contains("ImportSnapshot: refused \"/copy\" in tier prod"), "\(message)")
                #expect(try !api.exists(name(root.path + "/copy")))
                _ = try client.call(AgentMethods.update, UpdateRequest(
                    name: "/p1", spec: try ContainerSpec(textFormat: "memory { limit: 104857600 }"), policy: .updateDiff))
                // 100 + 160 > 256 still; 100 + 100 fits: import a copy of the smaller one.
                let smaller = try client.call(AgentMethods.exportSnapshot, ExportSnapshotRequest(name: "/p1")).snapshot
                _ = try client.call(AgentMethods.importSnapshot, ImportSnapshotRequest(snapshot: smaller, name: "/copy"))
                #expect(try api.get(name(root.path + "/copy")).spec().memory?.evictionPriority == 5003)
            }
        }
    }

    /// A guaranteed container must commit its memory: an update that
    /// moves a container without a limit into prod (its eviction
    /// priority), or a create with a limit that reads back as none, is
    /// refused (they were admitted, committing 0 B, never evicted); and a
    /// diff raising cpu.max_limit is counted at its new value (it was
    /// counted at the old one). The policy probe.
    @Test func aGuaranteedContainerCommitsWhatItIsGuaranteedAndADiffIsCountedWhole() throws {
        try withPolicyRoot("policyguar", spec: "memory { limit: 268435456 } cpu { limit: 1000 }") { root in
            let api = try ContainerApi.detect()
            try withAgent("root_container: \"\(root)\"") { _, socket in
                let client = try RpcClient.connect(unixPath: socket)
                defer { client.close() }
                _ = try client.call(AgentMethods.create, CreateRequest(name: "/nolim", spec: ContainerSpec(), tier: "batch"))
                for policy in [SpecUpdatePolicy.updateDiff, .updateReplace] {
                    let (code, message) = status {
                        _ = try client.call(AgentMethods.update, UpdateRequest(
                            name: "/nolim", spec: try ContainerSpec(textFormat: "memory { eviction_priority: 5003 }"), policy: policy))
                    }
                    #expect(code == .invalidArgument && message.contains("Tier prod guarantees memory"), "\(policy): \(message)")
                    let check = status {
                        _ = try client.call(AgentMethods.checkAdmission, CheckAdmissionRequest(
                            name: "/nolim", spec: try ContainerSpec(textFormat: "memory { eviction_priority: 5003 }"), update: policy))
                    }
                    #expect(check.0 == .invalidArgument, "CheckAdmission of the same update: \(check)")
                }
                #expect(try api.get(name(root.path + "/nolim")).spec().memory?.evictionPriority == 2500, "unchanged")
                let (code, message) = status {
                    _ = try client.call(AgentMethods.create, CreateRequest(
                        name: "/huge", spec: try ContainerSpec(textFormat: "memory { limit: 1152921504606846976 }"), tier: "prod"))
                }
                #expect(code == .invalidArgument && message.contains("counts as none"), "\(message)")
                #expect(try !api.exists(name(root.path + "/huge")))

                // CPU: 2000 milliCPU here (the host's; the root sets no cap).
                let cap = try #require(try client.call(AgentMethods.machineInfo, MachineInfoRequest()).policy?.capacityMilliCpu)
                _ = try client.call(AgentMethods.create, CreateRequest(
                    name: "/c1", spec: try ContainerSpec(textFormat: "cpu { max_limit: \(cap - 500) }"), tier: "batch"))
                _ = try client.call(AgentMethods.create, CreateRequest(
                    name: "/c2", spec: try ContainerSpec(textFormat: "cpu { max_limit: 400 }"), tier: "batch"))
                let (cpuCode, cpuMessage) = status {
                    _ = try client.call(AgentMethods.update, UpdateRequest(
                        name: "/c2", spec: try ContainerSpec(textFormat: "cpu { max_limit: 1000 }"), policy: .updateDiff))
                }
                #expect(cpuCode == .resourceExhausted, "\(cpuMessage)")
                #expect(try api.get(name(root.path + "/c2")).spec().cpu?.maxLimit == 400, "unchanged")
            }
        }
    }

    /// A reservation of the root container's whole memory or CPU is a
    /// config error (3), as one of the machine's is: the capacity is the
    /// root's, and the agent started with none (the policy probe).
    @Test func aReservationOfTheRootsWholeCapacityIsAConfigError() throws {
        try withPolicyRoot("policyres", spec: "memory { limit: 67108864 } cpu { max_limit: 1000 }") { root in
            let dir = "/tmp/lmctfy-check-config-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
            try Sys.mkdir(dir, mode: 0o700)
            defer { _ = removeTree(dir) }
            func check(_ policy: String) throws -> (Int32, String) {
                try Sys.createFile(dir + "/a.conf", "unix_socket_path: \"\(dir)/s\" state_dir: \"\(dir)/state\" root_container: \"\(root)\" policy { \(policy) }")
                let r = try TestProcess.capture([builtTool("lmctfy-agent"), "--check-config", "--config", dir + "/a.conf"])
                return (r.status, String(decoding: r.stderr, as: UTF8.self))
            }
            var r = try check("reserved_memory_bytes: 1048576 reserved_milli_cpu: 100")
            #expect(r.0 == 0, "\(r)")
            r = try check("reserved_memory_bytes: 104857600")
            #expect(r.0 == 3 && r.1.contains("not below the root container \(root)'s memory limit (67108864 bytes)"), "\(r)")
            r = try check("reserved_memory_bytes: 67108864")
            #expect(r.0 == 3, "\(r)")
            r = try check("reserved_milli_cpu: 1000")
            #expect(r.0 == 3 && r.1.contains("not below the root container \(root)'s CPU (1000 milli-CPU)"), "\(r)")
        }
    }

    /// A write behind the agent's back just after its own create (lmctfy
    /// update within milliseconds: the watcher's first read after the
    /// create takes the spec as it is, no UPDATED) is counted by the
    /// ledger all the same: it kept what the create asked, for good, and
    /// admitted prod past capacity (the policy probe: 6 of 6).
    @Test func aWriteJustAfterTheAgentsCreateIsCounted() throws {
        try withPolicyAgent("policyjust") { root, agent, socket in
            let api = try ContainerApi.detect()
            let client = try RpcClient.connect(unixPath: socket)
            defer { client.close() }
            for round in 0..<3 {
                let n = "/t\(round)"
                _ = try client.call(AgentMethods.create, CreateRequest(name: n, spec: try ContainerSpec(textFormat: "memory { limit: 10485760 }"), tier: "prod"))
                try api.get(name(root.path + n)).update(try ContainerSpec(textFormat: "memory { limit: 52428800 }"), policy: .diff)
                var committed: Int64 = 0
                for _ in 0..<500 {
                    committed = try client.call(AgentMethods.machineInfo, MachineInfoRequest()).policy?.tier.first?.memory ?? 0
                    if committed == Int64(round + 1) * 50 * mib { break }
                    usleep(10_000)
                }
                #expect(committed == Int64(round + 1) * 50 * mib, "round \(round): the ledger has \(committed)")
            }
            _ = agent
        }
    }

    @Test func lmctlCreateWithATierAndADryRun() throws {
        try withPolicyRoot("policylmctl", spec: "memory { limit: 268435456 }") { root in
            let api = try ContainerApi.detect()
            try withAgent("root_container: \"\(root)\"") { _, socket in
                let lmctl = [builtTool("lmctl"), "--agent", "unix://" + socket]
                func run(_ args: String...) throws -> (Int32, String, String) {
                    let r = try TestProcess.capture(lmctl + args)
                    return (r.status, String(decoding: r.stdout, as: UTF8.self), String(decoding: r.stderr, as: UTF8.self))
                }
                var r = try run("create", "--tier", "prod", "--dry-run", "/a", "memory { limit: 209715200 }")
                #expect(r.0 == 0 && r.1.hasPrefix("admitted=\"true\" tier=\"prod\" message=\"admitted"), "\(r)")
                #expect(try !api.exists(name(root.path + "/a")), "a dry run makes nothing")
                // A limit that is not whole pages commits what the kernel keeps
                // (rounded down), as a restarted agent reads it back.
                r = try run("create", "--tier=prod", "/a", "memory { limit: 209715201 }")
                #expect(r.0 == 0, "\(r)")
                #expect(try api.get(name(root.path + "/a")).spec().memory?.evictionPriority == 5003)
                #expect(try api.get(name(root.path + "/a")).spec().memory?.limit == 209715200)
                r = try run("create", "--tier", "prod", "--dry-run", "/b", "memory { limit: 104857600 }")
                #expect(r.0 == 8 && r.1.hasPrefix("admitted=\"false\" tier=\"prod\" message=\"refused"), "\(r)")
                // What the create itself would refuse, the dry run refuses.
                r = try run("create", "--tier", "batch", "--dry-run", "/a", "memory { limit: 1048576 }")
                #expect(r.0 == 6 && r.2.contains("Can't create existing container \"/a\""), "\(r)")
                r = try run("create", "--tier", "batch", "--dry-run", "/none/b", "memory { limit: 1048576 }")
                #expect(r.0 == 9 && r.2.contains("its parent \"/none\" does not exist"), "\(r)")
                // And the specs it refuses: the same code and message as the
                // create's, nothing made by either (a dry run said
                // "admitted" to each of these).
                for (spec, code, says) in [
                    ("memory { limit: -5 }", Int32(3), "must be -1 (unlimited) or a byte count"),
                    ("memory { limit: 1048576 swap_limit: 4096 }", 3, "swap"),
                    ("memory { max_limit: 1 }", 12, "memory.max_limit is not implemented"),
                    ("cpu { max_limit: 1 }", 5, "does not isolate cpu"),
                    ("pids { limit: 0 }", 9, "does not isolate pids"),
                    ("virtual_host { }", 12, "Nested Virtual Hosts are not yet supported: a virtual host is a top-level container of the machine, and every container here is inside the root container \(root.path)"),
                    ("network { }", 12, "network isolation is not implemented"),
                    ("owner: -2", 3, "owner -2 is out of range"),
                ] {
                    let dry = try run("create", "--tier", "batch", "--dry-run", "/d", spec)
                    let real = try run("create", "--tier", "batch", "/d", spec)
                    #expect(dry.0 == code && dry.2.contains(says), "\(spec): \(dry)")
                    #expect(real.0 == code && real.2.contains(says), "\(spec): \(real)")
                    #expect(try !api.exists(name(root.path + "/d")), "\(spec)")
                }
                r = try run("create", "--tier", "prod", "/b", "memory { limit: 104857600 }")
                #expect(r.0 == 8 && r.2.contains("8: Create: refused \"/b\" in tier prod"), "\(r)")
                #expect(try !api.exists(name(root.path + "/b")))
                r = try run("create", "--tier", "prod", "--bogus", "/b", "memory { limit: 104857600 }")
                #expect(r.0 == 3 && r.2.contains("Unknown flag \"--bogus\""), "\(r)")
                // The output flags every verb takes (they were unknown flags here).
                r = try run("-o", "json", "create", "--tier", "prod", "--dry-run", "/b", "memory { limit: 104857600 }")
                #expect(r.0 == 8 && r.1.hasPrefix("{") && r.1.contains("\"admitted\":false") && r.1.contains("\"capacityMemory\""), "\(r)")
                r = try run("create", "-v", "--tier", "prod", "--dry-run", "/b", "memory { limit: 1048576 }")
                #expect(r.0 == 0 && r.1.hasPrefix("true\nprod\nadmitted"), "\(r)")
                r = try run("--lmctfy_output_style=json", "create", "--tier", "batch", "/j", "memory { limit: 1048576 }")
                #expect(r.0 == 0 && r.1 == "{}\n", "\(r)")
                r = try run("create", "-o", "yaml", "--tier", "batch", "/y", "memory { limit: 1048576 }")
                #expect(r.0 == 3 && r.2.contains("Unknown output style \"yaml\""), "\(r)")
                r = try run("create", "--tier", "prod", "--tier", "batch", "/y", "memory { limit: 1048576 }")
                #expect(r.0 == 3 && r.2.contains("--tier given twice"), "\(r)")
                #expect(try !api.exists(name(root.path + "/y")))
                r = try run("info")
                #expect(r.0 == 0 && r.1.contains("capacity_memory=\"268435456\"") && r.1.contains("committed_prod=\"209715200 bytes"), "\(r)")
                // Without a policy flag, create is lmctfy's own verb, as before (a batch container).
                r = try run("create", "/c", "memory { limit: 104857600 }")
                #expect(r.0 == 0, "\(r)")
                #expect(try api.get(name(root.path + "/c")).spec().memory?.evictionPriority == 5000)
            }
        }
    }
}

@Suite(.enabled(if: RealCgroups.available, "\(RealCgroups.unavailableReason ?? "")"))
struct PolicyOneShotTests {
    /// `lmctl run --create SPEC --tier T [--rm]`: the container the command
    /// runs in is admitted in the tier (its eviction priority, its room);
    /// one the policy refuses runs nothing and makes nothing; lmctfy
    /// (no policy) refuses --tier before anything is made.
    @Test func aOneShotIsAdmittedInItsTier() throws {
        try withPolicyRoot("policyoneshot", spec: "memory { limit: 268435456 }") { root in
            let api = try ContainerApi.detect()
            try withAgent("root_container: \"\(root)\"") { _, socket in
                let lmctl = [builtTool("lmctl"), "--agent", "unix://" + socket]
                let marker = "/tmp/\(root.path.dropFirst())-ran"
                defer { _ = unlink(marker) }
                func run(_ args: String...) throws -> (Int32, String) {
                    let r = try TestProcess.capture(lmctl + args)
                    return (r.status, String(decoding: r.stderr, as: UTF8.self))
                }
                var r = try run("run", "--create", "memory { limit: 104857600 }", "--tier", "prod", "/kept", "/bin/true")
                #expect(r.0 == 0, "\(r)")
                #expect(try api.get(name(root.path + "/kept")).spec().memory?.evictionPriority == 5003, "prod's priority")
                r = try run("run", "--create", "memory { limit: 209715200 }", "--tier", "prod", "--rm", "/big", "/bin/touch", marker)
                #expect(r.0 == 8 && r.1.contains("refused"), "\(r)")
                #expect(!Sys.exists(marker), "nothing ran")
                #expect(try !api.exists(name(root.path + "/big")), "nothing made")
                r = try run("run", "--create", "memory { limit: 10485760 }", "--tier", "nosuchtier", "--rm", "/t", "/bin/true")
                #expect(r.0 != 0 && r.1.contains("nosuchtier"), "\(r)")
                #expect(try !api.exists(name(root.path + "/t")))
                r = try run("run", "--tier", "prod", "/kept", "/bin/true")
                #expect(r.0 == 3 && r.1.contains("--create"), "\(r)")
            }
            let local = try TestProcess.capture([builtTool("lmctfy"), "run", "--create", "memory { limit: 10485760 }", "--tier", "prod",
                                                 root.path + "/local", "/bin/true"])
            #expect(local.status == 9 && String(decoding: local.stderr, as: UTF8.self).contains("--tier"), "\(local)")
            #expect(try !api.exists(name(root.path + "/local")))
        }
    }
}

/// Eviction on real memory pressure: processes allocating inside a root
/// container of 256 MiB push its usage past the policy's high mark; the
/// agent evicts best-effort first (newest first), then batch, never prod,
/// each with an EVICTED event, and stops once below the low mark.
@Suite(.enabled(if: RealCgroups.available, "\(RealCgroups.unavailableReason ?? "")"))
struct PolicyEvictionTests {
    @Test func realPressureEvictsBestEffortThenBatchNeverProd() throws {
        // High mark 60% of 256 MiB (153.6 MiB), low mark 20% (51.2 MiB).
        try withPolicyRoot("policyevict", spec: "memory { limit: 268435456 }") { root in
            let api = try ContainerApi.detect()
            let config = "root_container: \"\(root)\" policy { overcommit_percent: 100 evict_above_percent: 60 evict_until_percent: 20 }"
            try withAgent(config) { agent, socket in
                let client = try RpcClient.connect(unixPath: socket)
                defer { client.close() }
                let evicted = Subscriber(socket, SubscribeRequest(kinds: [.containerEventEvicted]), deadlineMs: 60_000, until: { rs in
                    events(rs).count >= 3
                })
                waitForSubscribers(agent, 1)
                func usage() throws -> Int64 { try client.call(AgentMethods.stats, StatsRequest(name: "/")).stats?.memory?.usage ?? 0 }
                /// Starts `mb` MiB of allocation in `name` and waits until the root's usage shows it.
                func load(_ name: String, tier: String, mb: Int64) throws -> Int32 {
                    let limit = (mb + 30) * mib
                    _ = try client.call(AgentMethods.create, CreateRequest(
                        name: name, spec: try ContainerSpec(textFormat: "memory { limit: \(limit) }"), tier: tier))
                    let before = try usage()
                    var pid: Int32 = 0
                    try client.stream(AgentMethods.run, RunRequest(name: name, argv: [testHelperPath, "alloc", "\(mb)"], detached: true)) {
                        (r: RunResponse) in
                        pid = r.pid ?? 0
                        return true
                    }
                    for _ in 0..<300 where try usage() < before + (mb - 5) * mib { usleep(10_000) }
                    return pid
                }
                let prod = try load("/p", tier: "prod", mb: 40)
                let batch = try load("/b", tier: "batch", mb: 50)
                _ = try load("/e", tier: "best-effort", mb: 50)
                usleep(600_000)
                let calm = try usage()
                #expect(agent.evictor?.evictions.locked({ $0 }) == 0, "below the high mark (usage \(calm)): nothing evicted")
                // The last 50 MiB crosses 153.6 MiB.
                _ = try load("/e2", tier: "best-effort", mb: 50)
                let (got, error) = evicted.wait()
                #expect(error == nil, "\(String(describing: error))")
                let es = events(got)
                #expect(es.map { $0.container ?? "" } == ["/e2", "/e", "/b"], "\(es.map(\.reason))")
                #expect(es.prefix(2).allSatisfy { $0.reason?.contains("tier best-effort: destroyed it") == true && $0.reason?.contains("(woken by: ") == true })
                #expect(es.last?.reason?.contains("tier batch: killed its processes") == true, "\(String(describing: es.last?.reason))")
                let high = 268_435_456 * 60 / 100
                #expect(es.allSatisfy { $0.memoryThreshold == Int64(high) && ($0.memoryUsage ?? 0) > 51 * mib })
                #expect((es.first?.memoryUsage ?? 0) > Int64(high), "the first eviction happened above the high mark")
                // Bounded: below the low mark, no more evictions; prod untouched.
                usleep(1_000_000)
                #expect(agent.evictor?.evictions.locked({ $0 }) == 3)
                #expect(kill(prod, 0) == 0, "the prod process lives")
                // Killed; gone once the agent (its parent) has reaped it,
                // which a loaded machine delayed past the second above.
                for _ in 0..<1000 where kill(batch, 0) == 0 { usleep(10_000) }
                #expect(kill(batch, 0) != 0, "the batch process was killed")
                #expect(try api.exists(name(root.path + "/b")), "a killed batch container stays")
                #expect(try !api.exists(name(root.path + "/e")) && !api.exists(name(root.path + "/e2")))
                let left = try usage()
                #expect(left < 51 * mib, "about the prod container's 40 MiB left: \(left)")
            }
        }
    }

    /// EVICT_FREEZE frees no memory: what the containers it froze hold is
    /// left out of the usage the marks are compared with, so it freezes
    /// what brings the rest under the low mark and no more (it froze every
    /// container of the tier, one after another), and it thaws them once
    /// the root's whole usage is below the low mark (they stayed frozen;
    /// the policy probe).
    @Test func aFreezeEvictionFreezesWhatIsNeededAndThawsAfter() throws {
        // High mark 60% of 256 MiB (153.6 MiB), low mark 40% (102.4 MiB).
        try withPolicyRoot("policyfreeze", spec: "memory { limit: 268435456 }") { root in
            let api = try ContainerApi.detect()
            let config = """
                root_container: "\(root)" policy { overcommit_percent: 100 evict_above_percent: 60 evict_until_percent: 40
                  tier { name: "prod" guaranteed: true scheduling_latency: PRIORITY eviction_priority: 5003 eviction: EVICT_NEVER }
                  tier { name: "batch" overcommit: true scheduling_latency: NORMAL eviction_priority: 2500 eviction: EVICT_FREEZE } }
                """
            try withAgent(config) { agent, socket in
                let client = try RpcClient.connect(unixPath: socket)
                defer { client.close() }
                func usage() throws -> Int64 { try client.call(AgentMethods.stats, StatsRequest(name: "/")).stats?.memory?.usage ?? 0 }
                func load(_ name: String, tier: String, mb: Int64) throws {
                    _ = try client.call(AgentMethods.create, CreateRequest(
                        name: name, spec: try ContainerSpec(textFormat: "memory { limit: \((mb + 30) * mib) }"), tier: tier))
                    let before = try usage()
                    try client.stream(AgentMethods.run, RunRequest(name: name, argv: [testHelperPath, "alloc", "\(mb)"], detached: true)) {
                        (_: RunResponse) in true
                    }
                    for _ in 0..<300 where try usage() < before + (mb - 5) * mib { usleep(10_000) }
                }
                func frozen(_ name: String) throws -> Bool { try api.get(ContainerApi.detect().resolve(root.path + name)).isFrozen() }
                try load("/p", tier: "prod", mb: 40)
                try load("/b1", tier: "batch", mb: 50)
                usleep(400_000)
                #expect(agent.evictor?.evictions.locked({ $0 }) == 0)
                // 70 MiB more crosses the high mark; freezing /b2 leaves
                // 90 MiB, under the low mark: /b1 runs on.
                try load("/b2", tier: "batch", mb: 70)
                for _ in 0..<500 where agent.evictor?.evictions.locked({ $0 }) == 0 { usleep(10_000) }
                usleep(1_000_000)
                #expect(agent.evictor?.evictions.locked({ $0 }) == 1)
                #expect(try frozen("/b2") && !frozen("/b1"))
                #expect(agent.evictor?.frozenNames == ["/b2"])
                // Room again (prod and /b1 gone: /b2's 70 MiB is below the
                // low mark): /b2 is thawed.
                for n in ["/p", "/b1"] { _ = try client.call(AgentMethods.destroy, DestroyRequest(name: n, force: true)) }
                for _ in 0..<500 where try frozen("/b2") { usleep(10_000) }
                #expect(try !frozen("/b2"), "thawed once below the low mark")
                #expect(agent.evictor?.frozenNames == [])
                _ = try client.call(AgentMethods.destroy, DestroyRequest(name: "/b2", force: true))
            }
        }
    }

    /// Page cache is not memory in use: a file written once (clean cache
    /// charged to the root, which the kernel reclaims first) kept the
    /// root's usage past the mark, and every container that could be
    /// evicted was, for nothing; and a container without processes is
    /// never chosen (its destroy frees nothing): empty best-effort
    /// containers were destroyed one after another (a probe). Needs /var/tmp
    /// on a disk filesystem (page cache); skipped with the reason otherwise.
    @Test func pageCacheAndEmptyContainersAreNotEvicted() throws {
        let dir = "/var/tmp/lmctfy-evict-cache-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try Sys.mkdir(dir, mode: 0o700)
        defer { _ = removeTree(dir) }
        guard try Sys.filesystemType(dir) != 0x0102_1994 else {
            print("PolicyEvictionTests: SKIPPED pageCacheAndEmptyContainersAreNotEvicted: /var/tmp is a tmpfs (its pages are not reclaimable page cache)")
            return
        }
        // High mark 50% of 256 MiB (128 MiB), low mark 20%.
        try withPolicyRoot("policycache", spec: "memory { limit: 268435456 }") { root in
            let api = try ContainerApi.detect()
            let config = "root_container: \"\(root)\" policy { overcommit_percent: 100 evict_above_percent: 50 evict_until_percent: 20 }"
            try withAgent(config) { agent, socket in
                let client = try RpcClient.connect(unixPath: socket)
                defer { client.close() }
                func memory() throws -> MemoryStats? { try client.call(AgentMethods.stats, StatsRequest(name: "/")).stats?.memory }
                func start(_ name: String, _ argv: [String]) throws -> Int32 {
                    var pid: Int32 = 0
                    try client.stream(AgentMethods.run, RunRequest(name: name, argv: argv, detached: true)) { (r: RunResponse) in
                        pid = r.pid ?? 0
                        return true
                    }
                    return pid
                }
                let limit = try ContainerSpec(textFormat: "memory { limit: 209715200 }")
                _ = try client.call(AgentMethods.create, CreateRequest(name: "/early", spec: ContainerSpec(), tier: "best-effort"))
                _ = try client.call(AgentMethods.create, CreateRequest(name: "/sleeper", spec: limit, tier: "best-effort"))
                let sleeper = try start("/sleeper", ["/bin/sleep", "600"])
                _ = try client.call(AgentMethods.create, CreateRequest(name: "/writer", spec: limit, tier: "batch"))
                // 160 MiB of clean page cache, charged to /writer (below the root).
                let dd = try start("/writer", ["/bin/dd", "if=/dev/zero", "of=\(dir)/file", "bs=1M", "count=160", "conv=fsync"])
                for _ in 0..<3000 where kill(dd, 0) == 0 { usleep(10_000) }
                try #require(kill(dd, 0) != 0, "dd did not finish in 30 s")
                let cached = try #require(try memory())
                guard (cached.usage ?? 0) > 128 * mib else {
                    print("PolicyEvictionTests: SKIPPED pageCacheAndEmptyContainersAreNotEvicted: the written file's cache did not stay charged (usage \(cached.usage ?? 0))")
                    return
                }
                #expect((cached.workingSet ?? .max) < 128 * mib, "\(cached)")
                // Six of the evictor's 250 ms rechecks with usage past the mark.
                usleep(1_500_000)
                let now = try memory()
                #expect(agent.evictor?.evictions.locked({ $0 }) == 0, "clean page cache evicted: \(String(describing: now))")
                #expect(try api.exists(name(root.path + "/early")), "an empty container was evicted for page cache")
                #expect(try kill(sleeper, 0) == 0 && api.exists(name(root.path + "/sleeper")), "a container was evicted for page cache")

                // Memory in use past the mark: the container with processes
                // goes, not the newer empty one.
                _ = try client.call(AgentMethods.create, CreateRequest(name: "/alloc", spec: limit, tier: "best-effort"))
                _ = try client.call(AgentMethods.create, CreateRequest(name: "/empty", spec: ContainerSpec(), tier: "best-effort"))
                let evicted = Subscriber(socket, SubscribeRequest(kinds: [.containerEventEvicted]), deadlineMs: 30_000, until: { rs in
                    events(rs).count >= 1
                })
                waitForSubscribers(agent, 1)
                _ = try start("/alloc", [testHelperPath, "alloc", "150"])
                let (got, error) = evicted.wait()
                #expect(error == nil, "\(String(describing: error))")
                #expect(events(got).map { $0.container ?? "" } == ["/alloc"], "\(events(got).map(\.reason))")
                #expect(events(got).first?.reason?.contains("memory in use (usage less inactive page cache)") == true)
                usleep(1_000_000)
                #expect(agent.evictor?.evictions.locked({ $0 }) == 1)
                #expect(try api.exists(name(root.path + "/empty")) && api.exists(name(root.path + "/early")), "an empty container was evicted")
            }
        }
    }
}
