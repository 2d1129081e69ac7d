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

    /// Past `maxKept` a container's files are opened for each sample and
    /// closed after it: none of them stays open in this process.
    @Test func containersPastMaxKeptAreSampledWithoutKeepingFiles() throws {
        let api = try ContainerApi.detect()
        let sampler = StatsSampler(api: api, maxKept: 1)
        try withTestContainer(api, label: "sampler-kept") { kept in
            try withTestContainer(api, label: "sampler-passing") { passing in
                let spec = try ContainerSpec(textFormat: "memory { limit: 100000000 }")
                _ = try api.create(kept, spec: spec)
                _ = try api.create(passing, spec: spec)
                #expect(sampler.sample(kept)?.memory != nil)
                for _ in 0..<3 { #expect(sampler.sample(passing)?.memory != nil) }
                #expect(sampler.count == 1)
                // The descriptors of this process that name a file of each.
                func openFiles(_ name: ContainerName) -> Int {
                    let leaf = "/" + (name.path.split(separator: "/").last.map(String.init) ?? "") + "/"
                    return ((try? Sys.subdirectoriesAndFiles("/proc/self/fd")) ?? []).filter { fd in
                        var buf = [UInt8](repeating: 0, count: 4096)
                        let n = buf.withUnsafeMutableBytes { readlink("/proc/self/fd/" + fd, $0.baseAddress!.assumingMemoryBound(to: CChar.self), $0.count) }
                        return n > 0 && String(decoding: buf[0..<n], as: UTF8.self).contains(leaf)
                    }.count
                }
                #expect(openFiles(kept) > 0, "the first container's files are kept")
                #expect(openFiles(passing) == 0, "the second's were closed after each sample")
                try api.destroy(passing)
                #expect(sampler.sample(passing) == nil)
            }
        }
    }

    /// memory.failcnt and cpu.stat's CFS figures (issue #16's
    /// container_memory_failcnt and container_cpu_cfs_*): a container that
    /// hits its memory limit and one that hits its CPU quota, each sampled
    /// once its processes are gone, have the kernel's numbers exactly.
    ///
    /// Two containers: an OOM in a container held to 1 % of a CPU ran up a
    /// CFS bandwidth debt (the allocator spun in the kernel's reclaim and
    /// OOM path, unthrottled, for over a second when other suites' OOMs held
    /// the OOM lock, and then repaid 2.5 ms a period): minutes, in the full
    /// suite.
    @Test(.enabled(if: (try? CgroupMounts.detect())?.version == .v1, "compares with v1's memory.failcnt and cpu/cpu.stat (v2 reads memory.events and cpu.stat's throttled_usec)"))
    func failcntAndThrottlingAreTheKernels() async throws {
        let api = try ContainerApi.detect()
        let mounts = try CgroupMounts.detect()
        let sampler = StatsSampler(api: api)
        // withTestContainer's async form: the waits sleep with Task.sleep,
        // which gives the test's thread back to the other suites (a usleep
        // held one of a 2-CPU machine's two for the whole wait).
        try await withTestContainer(api, label: "sampler-memory") { memoryName in
            try await withTestContainer(api, label: "sampler-cpu") { cpuName in
                // The allocator runs into the 16 MB limit (the OOM killer ends it,
                // as in the notification tests); the loop into a 1% quota (1%: even
                // a machine busy with other suites gives it more than that in some
                // periods, so it is throttled; at 10% a loaded machine's share could
                // stay below the quota). 10,000 rounds: ~10-30 ms of CPU, several
                // times one period's quota.
                let m = try api.create(memoryName, spec: try ContainerSpec(textFormat: "memory { limit: 16000000 }"))
                let c = try api.create(cpuName, spec: try ContainerSpec(textFormat: "cpu { limit: 1000 max_limit: 10 }"))
                _ = try m.run([testHelperPath, "alloc", "64"])
                _ = try c.run(["/bin/sh", "-c", "i=0; while [ $i -lt 10000 ]; do i=$((i+1)); done"])
                #expect(sampler.sample(memoryName) != nil && sampler.sample(cpuName) != nil)
                // (Up to two minutes: at 1 % of a CPU the loop takes seconds alone.)
                var waits = 0
                while try !(m.processes(recursive: true).isEmpty && c.processes(recursive: true).isEmpty) && waits < 2400 {
                    try await Task.sleep(nanoseconds: 50_000_000)
                    waits += 1
                }
                #expect(try m.processes(recursive: true).isEmpty && c.processes(recursive: true).isEmpty, "the workloads should have ended")
                let ms = try #require(sampler.sample(memoryName))
                let cs = try #require(sampler.sample(cpuName))
                let failcnt = Int64(try Sys.readFile(try #require(mounts.v1[.memory]) + memoryName.description + "/memory.failcnt").trimmingWhitespace)
                #expect(ms.memory?.failCount == failcnt)
                #expect((failcnt ?? 0) > 0, "the 16 MB limit was hit")
                var stat: [String: Int64] = [:]
                for line in try Sys.readFile(try #require(mounts.v1[.cpu]) + cpuName.description + "/cpu.stat").split(separator: "\n") {
                    let kv = line.split(separator: " ")
                    if kv.count == 2 { stat[String(kv[0])] = Int64(kv[1]) }
                }
                let t = try #require(cs.cpu?.throttlingData)
                #expect(t.periods == stat["nr_periods"] && t.throttledPeriods == stat["nr_throttled"] && t.throttledTime == stat["throttled_time"])
                #expect((t.throttledPeriods ?? 0) > 0, "the 1% quota throttled the loop")
            }
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
