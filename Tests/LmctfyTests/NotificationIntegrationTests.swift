// Notifications on the real kernel: a real OOM kill, a threshold crossing,
// the last task leaving, and the container destroyed under a waiter (D5).
import Glibc
import Lmctfy
import LmctfyProto
import LmctfySystem
import LmctfyTestSupport
import Testing

@Suite(.enabled(if: RealCgroups.available, "\(RealCgroups.unavailableReason ?? "")"))
struct NotificationIntegrationTests {
    let api: ContainerApi

    init() throws {
        api = try ContainerApi.detect()
    }

    @Test func containerEmptyFiresWhenTheLastTaskExits() throws {
        try withTestContainer(api) { name in
            try api.create(name, spec: ContainerSpec())
            let sub = try ContainerName.resolve("inner", relativeTo: name)
            try api.create(sub, spec: ContainerSpec())
            let c = try api.get(name)
            // One task here, one in the subcontainer: empty only when both
            // are gone. They sleep long and are ended by pid (they cannot
            // exit on their own meanwhile, so the pids are still theirs).
            let a = try c.run(["/bin/sleep", "300"])
            let b = try api.get(sub).run(["/bin/sleep", "300"])
            let watch = try c.watch(EventSpec(containerEmpty: EventSpec.ContainerEmpty()))
            #expect(try watch.wait(timeoutMs: 200) == 0)
            kill(a, SIGKILL)
            #expect(try watch.wait(timeoutMs: 300) == 0)  // b is still there
            kill(b, SIGKILL)
            #expect(try watch.wait(timeoutMs: 10_000) == 1)
            #expect(try c.processes(recursive: true).isEmpty)
        }
    }

    // An OOM watch, because destroying kills the tasks first, which is a
    // true "container empty" event before the container goes away.
    @Test func destroyingAWatchedContainerDeliversNotFound() throws {
        try withTestContainer(api) { name in
            try api.create(name, spec: ContainerSpec(memory: MemorySpec(limit: 64 << 20)))
            let c = try api.get(name)
            _ = try c.run(["/bin/sleep", "300"])
            let watch = try c.watch(EventSpec(oom: EventSpec.Oom()))
            let destroyer = Threads.start {
                usleep(200_000)
                _ = try? api.destroy(name)
            }
            #expect { _ = try watch.wait(timeoutMs: 10_000) } throws: { error in
                let e = error as? LmctfyError
                return e?.code == .notFound && e?.message.contains("destroyed") == true
            }
            pthread_join(destroyer, nil)
        }
    }

    /// A container that does not isolate memory has its memory events from
    /// its nearest ancestor's directory, which its destroy does not touch:
    /// a waiter (the CLI's `notify`) and a center's callback waited on,
    /// deaf, after the destroy. Both end with NOT_FOUND now.
    @Test func aDestroyEndsAWatchWhoseEventsComeFromAnAncestor() throws {
        try withTestContainer(api) { name in
            try api.create(name, spec: ContainerSpec(memory: MemorySpec(limit: 64 << 20)))
            let child = try ContainerName.resolve("nomemory", relativeTo: name)
            try api.create(child, spec: ContainerSpec())
            let c = try api.get(child)
            let watches = [try c.watch(EventSpec(oom: EventSpec.Oom())),
                           try c.watch(EventSpec(memoryThreshold: EventSpec.MemoryThreshold(usage: 1 << 40)))]
            let center = try NotificationCenter()
            defer { center.shutdown() }
            let heard = Mutexed<LmctfyError?>(nil)
            _ = try center.register(c, EventSpec(oom: EventSpec.Oom())) { result in
                if case .failure(let e) = result { heard.locked { $0 = e } }
            }
            _ = try api.destroy(child)
            for watch in watches {
                #expect { _ = try watch.wait(timeoutMs: 5_000) } throws: { error in
                    let e = error as? LmctfyError
                    return e?.code == .notFound && e?.message.contains("destroyed") == true
                }
            }
            var waited = 0
            while heard.locked({ $0 }) == nil && waited < 50 {
                usleep(100_000)
                waited += 1
            }
            #expect(heard.locked { $0 }?.code == .notFound, "the center's callback heard nothing")
        }
    }

    /// Destroyed and made again at once under the same name: the watch
    /// (OOM, threshold, empty) is of the container that went. Removing a
    /// cgroup signals its eventfds, and the check that it was gone found
    /// the new one: a false OOM or threshold, then a deaf watch.
    @Test(arguments: [EventSpec(oom: EventSpec.Oom()), EventSpec(memoryThreshold: EventSpec.MemoryThreshold(usage: 16 << 20)),
                      EventSpec(containerEmpty: EventSpec.ContainerEmpty())])
    func aContainerMadeAgainUnderTheNameIsNotTheWatchedOne(spec: EventSpec) throws {
        try withTestContainer(api) { name in
            let memory = ContainerSpec(memory: MemorySpec(limit: 64 << 20))
            try api.create(name, spec: memory)
            _ = try api.get(name).run(["/bin/sleep", "300"])
            let watch = try api.get(name).watch(spec)
            _ = try api.destroy(name)
            try api.create(name, spec: memory)
            _ = try api.get(name).run(["/bin/sleep", "300"])
            #expect { _ = try watch.wait(timeoutMs: 5_000) } throws: { error in
                let e = error as? LmctfyError
                return e?.code == .notFound && e?.message.contains("destroyed") == true
            }
        }
    }

    @Test func oomKillIsDelivered() throws {
        try withTestContainer(api) { name in
            try api.create(name, spec: ContainerSpec(memory: MemorySpec(limit: 32 << 20)))
            let c = try api.get(name)
            let watch = try c.watch(EventSpec(oom: EventSpec.Oom()))
            let pid = try c.run([testHelperPath, "alloc", "200"])
            #expect(try watch.wait(timeoutMs: 30_000) >= 1)
            // The allocator was the victim.
            for _ in 0..<5000 where kill(pid, 0) == 0 { usleep(1000) }
            #expect(kill(pid, 0) != 0)
        }
    }

    /// An OOM of several tasks is as many events as the kernel's OOM killer
    /// killed (memory.oom_control's oom_kill on v1, memory.events' on v2):
    /// every task that met the limit signalled the v1 eventfd, before the
    /// kill, and each signal was an event (3 to 12 per kill, a probe saw).
    @Test func anOomOfSeveralTasksIsOneEventPerKill() throws {
        try withTestContainer(api) { name in
            try api.create(name, spec: ContainerSpec(memory: MemorySpec(limit: 32 << 20)))
            let c = try api.get(name)
            let watch = try c.watch(EventSpec(oom: EventSpec.Oom()))
            for _ in 0..<6 { _ = try c.run([testHelperPath, "alloc", "24", "30"]) }
            var events = try watch.wait(timeoutMs: 30_000)
            #expect(events >= 1)
            // Until nothing more for 1.5 s (the last kill is counted within
            // half a second of the last signal).
            while true {
                let more = try watch.wait(timeoutMs: 1_500)
                if more == 0 { break }
                events += more
            }
            // A task still allocating (slowed by reclaim) can be killed
            // after the quiet 1.5 s: while the count runs ahead of the
            // events, wait for the events it promises (an over-count is
            // never made up, an under-count fails after 5 s).
            var kills = try #require(oomKills(name), "no oom_kill counter for \(name)")
            for _ in 0..<10 where events < kills {
                events += try watch.wait(timeoutMs: 500)
                kills = try #require(oomKills(name))
            }
            #expect(kills >= 1)
            #expect(events == kills, "\(events) events for \(kills) kills")
        }
    }

    /// The kernel signals (v1) every memory-isolating container below the
    /// one at its limit: an OOM is an event of the container it killed in
    /// and of those above it up to the one at its limit, not of the others
    /// below (every subcontainer of a container at its limit had an OOM
    /// event; a probe).
    @Test func anOomIsNotAnEventOfTheSubcontainersItKilledNothingIn() throws {
        try withTestContainer(api) { name in
            try api.create(name, spec: ContainerSpec(memory: MemorySpec(limit: 32 << 20)))
            let a = try ContainerName.resolve("a", relativeTo: name)
            let b = try ContainerName.resolve("b", relativeTo: name)
            // (Processes in a leaf: v2 keeps none in a container with
            // subcontainers.)
            let c = try ContainerName.resolve("c", relativeTo: name)
            for sub in [a, b, c] { try api.create(sub, spec: ContainerSpec(memory: MemorySpec(limit: 256 << 20))) }
            let oom = EventSpec(oom: EventSpec.Oom())
            let watches = try [name, a, b, c].map { try api.get($0).watch(oom) }
            /// Each watch's events, the first waited for (it was killed
            /// in), then until a round of 1 s waits on each brings none
            /// (the burst that kills nothing is counted, or not, 500 ms
            /// after its last signal).
            func events(firstOf i: Int) throws -> [Int] {
                var counts = [0, 0, 0, 0]
                counts[i] = try watches[i].wait(timeoutMs: 30_000)
                var quiet = false
                while !quiet {
                    quiet = true
                    for (j, w) in watches.enumerated() {
                        let n = try w.wait(timeoutMs: 1_000)
                        if n > 0 { quiet = false }
                        counts[j] += n
                    }
                }
                return counts
            }
            // A kill in c, at the parent's limit: c's and the parent's.
            _ = try api.get(c).run([testHelperPath, "alloc", "200"])
            let first = try events(firstOf: 3)
            #expect(first[3] >= 1 && first[1] == 0 && first[2] == 0, "\(first)")
            #expect(first[0] >= 1, "no event of the container at its limit: \(first)")
            // A kill in a (at the parent's limit): a's, and the parent's.
            _ = try api.get(a).run([testHelperPath, "alloc", "200"])
            let second = try events(firstOf: 1)
            #expect(second[1] >= 1 && second[2] == 0 && second[3] == 0, "\(second)")
            #expect(second[0] >= 1, "no event of the container at its limit: \(second)")
        }
    }

    @Test func thresholdCrossingIsDelivered() throws {
        try withTestContainer(api) { name in
            try api.create(name, spec: ContainerSpec(memory: MemorySpec(limit: 512 << 20)))
            let c = try api.get(name)
            // A threshold that usage can never cross is refused, clearly.
            for usage: Int64 in [0, -4096] {
                #expect { _ = try c.watch(EventSpec(memoryThreshold: EventSpec.MemoryThreshold(usage: usage))) } throws: { error in
                    let e = error as? LmctfyError
                    return e?.code == .invalidArgument && e?.message.contains("never be crossed") == true
                }
            }
            let watch = try c.watch(EventSpec(memoryThreshold: EventSpec.MemoryThreshold(usage: 16 << 20)))
            #expect(try watch.wait(timeoutMs: 100) == 0)
            _ = try c.run([testHelperPath, "alloc", "64", "30"])  // ended by the teardown
            #expect(try watch.wait(timeoutMs: 30_000) >= 1)
        }
    }

    /// What CL2's eviction wakes on besides its usage threshold: memory
    /// pressure on the container's memory (v1 pressure_level "medium").
    @Test func memoryPressureIsDelivered() throws {
        try withTestContainer(api) { name in
            try api.create(name, spec: ContainerSpec(memory: MemorySpec(limit: 32 << 20)))
            let c = try api.get(name)
            let watch = try c.watchMemoryPressure()
            #expect(watch.kind == .memoryPressure)
            #expect(try watch.wait(timeoutMs: 100) == 0, "no pressure while idle")
            // 64 MiB in 32: reclaim (pressure) before the OOM killer ends it.
            _ = try c.run([testHelperPath, "alloc", "64", "30"])
            #expect(try watch.wait(timeoutMs: 30_000) >= 1)
        }
    }

    @Test func callbacksFireThroughTheCenterUntilUnregistered() throws {
        try withTestContainer(api) { name in
            try api.create(name, spec: ContainerSpec())
            let c = try api.get(name)
            let center = try NotificationCenter()
            defer { center.shutdown() }
            let fired = Mutexed(0)
            _ = try c.run(["/bin/sleep", "0.2"])
            let id = try center.register(c, EventSpec(containerEmpty: EventSpec.ContainerEmpty())) { result in
                if case .success = result { fired.locked { $0 += 1 } }
            }
            #expect(id == 1)
            for _ in 0..<5000 where fired.locked({ $0 }) == 0 { usleep(1000) }
            #expect(fired.locked { $0 } == 1)
            try center.unregister(id)
            #expect { try center.unregister(id) } throws: { ($0 as? LmctfyError)?.code == .invalidArgument }
            #expect { _ = try center.register(c, EventSpec()) { _ in } } throws: { ($0 as? LmctfyError)?.code == .invalidArgument }
        }
    }
}

