// CL1's StatsSampler on the real kernel (v1 here, v2 in the guest): the
// numbers a STATS event carries, read through files kept open between
// samples, and what happens once the container is gone.
import Glibc
import Lmctfy
import LmctfyProto
import LmctfySystem
import LmctfyTestSupport
import Testing

@Suite(.enabled(if: RealCgroups.available, "\(RealCgroups.unavailableReason ?? "")"))
struct StatsSamplerIntegrationTests {
    @Test func samplesAContainerAgainAndAgainThenForgetsItWhenItGoes() throws {
        let api = try ContainerApi.detect()
        let sampler = StatsSampler(api: api)
        try withTestContainer(api, label: "sampler") { name in
            let c = try api.create(name, spec: try ContainerSpec(textFormat: "cpu { limit: 1000 } memory { limit: 100000000 } pids { limit: 10 }"))
            // A process that uses some CPU and memory, then sleeps.
            _ = try c.run(["/bin/sh", "-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; exec sleep 30"])
            usleep(300_000)
            let first = try #require(sampler.sample(name))
            #expect(sampler.count == 1)
            let full = try c.stats(.summary)
            #expect((first.memory?.usage ?? 0) > 0)
            #expect((first.memory?.workingSet ?? -1) >= 0 && (first.memory?.workingSet ?? 0) <= (first.memory?.usage ?? 0))
            #expect(first.pids?.current == 1)
            #expect((first.cpu?.usage?.total ?? 0) > 0)
            // The same numbers as the full stats call reads (CPU time only grows).
            #expect((first.cpu?.usage?.total ?? 0) <= (full.cpu?.usage?.total ?? 0) + 1_000_000)
            #expect(full.pids?.current == first.pids?.current)
            let second = try #require(sampler.sample(name))
            #expect(sampler.count == 1, "the files opened once are read again")
            #expect((second.cpu?.usage?.total ?? 0) >= (first.cpu?.usage?.total ?? 0))
            try api.destroy(name)
            #expect(sampler.sample(name) == nil, "gone: no sample")
            #expect(sampler.count == 0, "and its files are closed")
        }
    }

    /// memory.failcnt and cpu.stat's CFS figures (issue #16's
    /// container_memory_failcnt and container_cpu_cfs_*): a container that
    /// hits its memory limit and its CPU quota, sampled once its processes
    /// are gone, has the kernel's numbers exactly.
    @Test(.enabled(if: (try? CgroupMounts.detect())?.version == .v1, "compares with v1's memory.failcnt and cpu/cpu.stat (v2 reads memory.events and cpu.stat's throttled_usec)"))
    func failcntAndThrottlingAreTheKernels() throws {
        let api = try ContainerApi.detect()
        let mounts = try CgroupMounts.detect()
        let sampler = StatsSampler(api: api)
        try withTestContainer(api, label: "sampler-limits") { name in
            let c = try api.create(name, spec: try ContainerSpec(textFormat: "cpu { limit: 1000 max_limit: 10 } memory { limit: 16000000 }"))
            // The allocator runs into the 16 MB limit (the OOM killer ends
            // it, as in the notification tests); the loop into the 1% quota
            // (1%: even a machine busy with other suites gives it more than
            // that in some periods, so it is throttled; at 10% a loaded
            // machine's share could stay below the quota).
            _ = try c.run([testHelperPath, "alloc", "64"])
            _ = try c.run(["/bin/sh", "-c", "i=0; while [ $i -lt 30000 ]; do i=$((i+1)); done"])
            var s = try #require(sampler.sample(name))
            var waits = 0
            // (Up to a minute: at 1 % of a CPU the loop takes seconds.)
            while try !c.processes(recursive: true).isEmpty && waits < 1200 {
                usleep(50_000)
                waits += 1
            }
            #expect(try c.processes(recursive: true).isEmpty, "the workloads should have ended")
            s = try #require(sampler.sample(name))
            let memory = try #require(mounts.v1[.memory]) + name.description
            let cpu = try #require(mounts.v1[.cpu]) + name.description
            let failcnt = Int64(try Sys.readFile(memory + "/memory.failcnt").trimmingWhitespace)
            #expect(s.memory?.failCount == failcnt)
            #expect((failcnt ?? 0) > 0, "the 16 MB limit was hit")
            var stat: [String: Int64] = [:]
            for line in try Sys.readFile(cpu + "/cpu.stat").split(separator: "\n") {
                let kv = line.split(separator: " ")
                if kv.count == 2 { stat[String(kv[0])] = Int64(kv[1]) }
            }
            let t = try #require(s.cpu?.throttlingData)
            #expect(t.periods == stat["nr_periods"] && t.throttledPeriods == stat["nr_throttled"] && t.throttledTime == stat["throttled_time"])
            #expect((t.throttledPeriods ?? 0) > 0, "the 1% quota throttled the loop")
        }
    }

    @Test func aContainerThatIsolatesNothingSampledHasOnlyWhatItIsolates() throws {
        let api = try ContainerApi.detect()
        let sampler = StatsSampler(api: api)
        try withTestContainer(api, label: "sampler-bare") { name in
            _ = try api.create(name, spec: try ContainerSpec(textFormat: "pids { limit: 10 }"))
            let s = try #require(sampler.sample(name))
            #expect(s.pids?.current == 0)
            sampler.keep(only: [])
            #expect(sampler.count == 0)
        }
    }
}
