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
