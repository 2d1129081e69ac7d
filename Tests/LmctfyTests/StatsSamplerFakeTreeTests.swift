// StatsSampler's parsing on fake v1 and v2 trees (no root): each figure
// from its file, including issue #16's memory failures (v1 memory.failcnt,
// v2 memory.events' max) and CFS throttling (cpu.stat; v2 in microseconds).
import Glibc
@testable import Lmctfy
import LmctfyProto
import LmctfySystem
import LmctfyTestSupport
import Testing

@Suite struct StatsSamplerFakeTreeTests {
    @Test func v1FiguresComeFromTheirFiles() throws {
        let tree = try FakeCgroupTree(.v1)
        defer { _ = removeTree(tree.root) }
        try tree.seed("freezer", ["a"], files: [:])
        try tree.seed("cpuacct", ["a"], files: ["cpuacct.usage": "123456789\n"])
        try tree.seed("cpu", ["a"], files: ["cpu.stat": "nr_periods 40\nnr_throttled 7\nthrottled_time 900000\n"])
        try tree.seed("memory", ["a"], files: ["memory.usage_in_bytes": "5000000\n", "memory.failcnt": "3\n",
                                               "memory.stat": "cache 10\ntotal_inactive_file 1000000\n"])
        try tree.seed("pids", ["a"], files: ["pids.current": "4\n"])
        for h in ["freezer", "cpuacct", "cpu", "memory", "pids"] { try tree.dir(h, ["a"]).setState(.complete) }
        let sampler = StatsSampler(api: try ContainerApi(mounts: tree.mounts))
        let s = try #require(sampler.sample(try ContainerName.resolve("/a", relativeTo: .root)))
        #expect(s.cpu?.usage?.total == 123_456_789)
        #expect(s.cpu?.throttlingData == ThrottlingData(periods: 40, throttledPeriods: 7, throttledTime: 900_000))
        #expect(s.memory?.usage == 5_000_000 && s.memory?.workingSet == 4_000_000 && s.memory?.failCount == 3)
        #expect(s.pids?.current == 4)
    }

    @Test func v2FiguresComeFromTheirFiles() throws {
        let tree = try FakeCgroupTree(.v2)
        defer { _ = removeTree(tree.root) }
        try tree.seed("unified", ["a"], files: [
            "cpu.stat": "usage_usec 5000\nuser_usec 3000\nsystem_usec 2000\nnr_periods 10\nnr_throttled 3\nthrottled_usec 2500\n",
            "memory.current": "8000\n", "memory.stat": "anon 1\ninactive_file 3000\n",
            "memory.events": "low 0\nhigh 0\nmax 7\noom 1\noom_kill 1\n", "pids.current": "2\n",
        ])
        try tree.dir("unified", ["a"]).setState(.complete)
        let sampler = StatsSampler(api: try ContainerApi(mounts: tree.mounts))
        let s = try #require(sampler.sample(try ContainerName.resolve("/a", relativeTo: .root)))
        #expect(s.cpu?.usage?.total == 5_000_000)
        #expect(s.cpu?.throttlingData == ThrottlingData(periods: 10, throttledPeriods: 3, throttledTime: 2_500_000))
        #expect(s.memory?.usage == 8000 && s.memory?.workingSet == 5000 && s.memory?.failCount == 7)
        #expect(s.pids?.current == 2)
    }

    @Test func v2WithoutTheCpuControllerHasNoThrottling() throws {
        let tree = try FakeCgroupTree(.v2)
        defer { _ = removeTree(tree.root) }
        // cpu.stat without the cpu controller: usage only.
        try tree.seed("unified", ["a"], files: ["cpu.stat": "usage_usec 70\nuser_usec 50\nsystem_usec 20\n"])
        try tree.dir("unified", ["a"]).setState(.complete)
        let sampler = StatsSampler(api: try ContainerApi(mounts: tree.mounts))
        let s = try #require(sampler.sample(try ContainerName.resolve("/a", relativeTo: .root)))
        #expect(s.cpu?.usage?.total == 70_000)
        #expect(s.cpu?.throttlingData == nil)
        #expect(s.memory == nil)
    }
}
