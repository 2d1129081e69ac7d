// CpuHandler on fake v1 and v2 trees: conversions, validation, the writes of
// REPLACE and DIFF, read-back and statistics.
import Glibc
@testable import Lmctfy
import LmctfyProto
import LmctfySystem
import LmctfyTestSupport
import Testing

@Suite struct CpuConversionTests {
    @Test func sharesFromMilliCpu() {
        // max(2, limit*1024/1000), integer division.
        #expect(CpuHandler.shares(milliCpu: 0) == 2)
        #expect(CpuHandler.shares(milliCpu: 1) == 2)
        #expect(CpuHandler.shares(milliCpu: 125) == 128)
        #expect(CpuHandler.shares(milliCpu: 1000) == 1024)
        #expect(CpuHandler.shares(milliCpu: 2500) == 2560)
        #expect(CpuHandler.shares(milliCpu: 999) == 1022)
        // The kernel's ceiling, and no overflow on absurd values.
        #expect(CpuHandler.shares(milliCpu: UInt64.max) == 262_144)
    }

    @Test func milliCpuFromShares() {
        // shares<2 ? 0 : shares*1000/1024 rounded up (the original rounded down)
        #expect(CpuHandler.milliCpu(shares: 1) == 0)
        #expect(CpuHandler.milliCpu(shares: 2) == 2)
        #expect(CpuHandler.milliCpu(shares: 1024) == 1000)
        #expect(CpuHandler.milliCpu(shares: 1022) == 999)
        // Every limit written reads back as itself, so a spec read back and
        // applied again (a snapshot import, a migration) keeps it: 400 read
        // back as 399, then 398 after the next move.
        let drifting = (UInt64(2)...256_000).filter { CpuHandler.milliCpu(shares: CpuHandler.shares(milliCpu: $0)) != $0 }
        #expect(drifting.isEmpty, "\(drifting.prefix(5))")
        // v2: a weight is coarser, so the first read-back may differ from
        // the limit written, but from then on it stays.
        let v2 = { (l: UInt64) in CpuHandler.milliCpu(shares: CpuHandler.shares(weight: CpuHandler.weight(shares: CpuHandler.shares(milliCpu: l)))) }
        let driftingV2 = (UInt64(2)...256_000).filter { let once = v2($0); return v2(once) != once }
        #expect(driftingV2.isEmpty, "\(driftingV2.prefix(5))")
    }

    @Test func weightFromShares() {
        // 1 + ((shares - 2) * 9999) / 262142
        #expect(CpuHandler.weight(shares: 2) == 1)
        #expect(CpuHandler.weight(shares: 262_144) == 10_000)
        #expect(CpuHandler.weight(shares: 1024) == 39)
        #expect(CpuHandler.weight(shares: 0) == 1)
    }

    @Test func sharesFromWeightIsTheSmallestInverse() {
        for w in Int64(1)...10_000 {
            let s = CpuHandler.shares(weight: w)
            #expect(CpuHandler.weight(shares: s) == w)
            if s > 2 { #expect(CpuHandler.weight(shares: s - 1) == w - 1) }
        }
    }

    @Test func maskToCpuList() {
        #expect(CpuHandler.cpuList(mask: [0xF]) == "0-3")
        #expect(CpuHandler.cpuList(mask: [0x10F]) == "0-3,8")
        // The last word holds CPUs 0-63, the one before it 64-127.
        #expect(CpuHandler.cpuList(mask: [0x1, 0x10F]) == "0-3,8,64")
        #expect(CpuHandler.cpuList(mask: [0x3, 0, 0x5]) == "0,2,128-129")
        #expect(CpuHandler.cpuList(mask: [UInt64.max]) == "0-63")
    }

    @Test func cpuListToMask() throws {
        #expect(try CpuHandler.mask(cpuList: "0-3,8\n") == [0x10F])
        #expect(try CpuHandler.mask(cpuList: "0-3,8,64") == [0x1, 0x10F])
        #expect(try CpuHandler.mask(cpuList: "5") == [0x20])
        #expect(try CpuHandler.mask(cpuList: "\n") == [])
        for mask: [UInt64] in [[0xF], [0x1, 0x10F], [0x3, 0, 0x5], [0x8000_0000_0000_0000]] {
            #expect(try CpuHandler.mask(cpuList: CpuHandler.cpuList(mask: mask)) == mask)
        }
        #expect(lmctfyError { _ = try CpuHandler.mask(cpuList: "3-1") }?.code == .failedPrecondition)
        #expect(lmctfyError { _ = try CpuHandler.mask(cpuList: "x") }?.code == .failedPrecondition)
    }
}

@Suite struct CpuValidationTests {
    let h = CpuHandler()

    @Test(arguments: [CgroupVersion.v1, .v2])
    func maxLimitBelowFourIsRefused(_ version: CgroupVersion) throws {
        let f = try version == .v1 ? FakeContainer.v1() : FakeContainer.v2()
        let err = lmctfyError { try h.validate(spec(cpu: CpuSpec(maxLimit: 3)), dirs: f.dirs) }
        #expect(err?.code == .invalidArgument)
        #expect(err?.message.contains("Requested max millicpu 3 is too low.") == true)
        #expect(lmctfyError { try h.validate(spec(cpu: CpuSpec(maxLimit: 4)), dirs: f.dirs) } == nil)
        // "No quota" as the original reports it (-1 in a uint64) is accepted.
        #expect(lmctfyError { try h.validate(spec(cpu: CpuSpec(maxLimit: UInt64.max)), dirs: f.dirs) } == nil)
    }

    /// Values the kernel refuses once the create has begun (14 then, and
    /// a dry run admitted them) are 3 before anything is made: a quota
    /// above the kernel's 2^44 - 1 µs, a CPU the machine does not have.
    @Test func aQuotaOrACpuTheKernelCannotTakeIsRefused() throws {
        let f = try FakeContainer.v1()
        let highest = UInt64((CpuHandler.maxQuotaUs) / (CpuHandler.cfsPeriodUs / 1000))
        #expect(highest == 70_368_744_177)
        #expect(lmctfyError { try h.checkSpec(spec(cpu: CpuSpec(maxLimit: highest))) } == nil)
        for big in [highest + 1, 100_000_000_000_000, 36_893_488_147_419_103] {
            let err = lmctfyError { try h.checkSpec(spec(cpu: CpuSpec(maxLimit: big))) }
            #expect(err?.code == .invalidArgument && err?.message.contains("too high") == true, "\(big)")
        }
        let cpus = CpuHandler.machineCpus
        var words = [UInt64](repeating: 0, count: cpus / 64 + 1)
        words[0] = UInt64(1) << UInt64(cpus % 64)  // CPU `cpus`: one past the last
        let err = lmctfyError { try h.validate(spec(cpu: CpuSpec(mask: CpuSpec.Mask(data: words))), dirs: f.dirs) }
        #expect(err?.code == .invalidArgument && err?.message.contains("names CPU \(cpus)") == true, "\(String(describing: err))")
        #expect(lmctfyError { try h.checkSpec(spec(cpu: CpuSpec(mask: CpuSpec.Mask(data: [1])))) } == nil)
    }

    @Test func emptyMaskIsRefused() throws {
        let f = try FakeContainer.v1()
        let err = lmctfyError { try h.validate(spec(cpu: CpuSpec(mask: CpuSpec.Mask(data: [0, 0]))), dirs: f.dirs) }
        #expect(err?.code == .invalidArgument)
    }

    @Test func maskWithoutCpusetIsUnimplemented() throws {
        let f = try FakeContainer.v1()
        let dirs = f.dirs(without: .cpuset)
        let err = lmctfyError { try h.validate(spec(cpu: CpuSpec(mask: CpuSpec.Mask(data: [1]))), dirs: dirs) }
        #expect(err?.code == .unimplemented)
        #expect(err?.message.contains("cpu.mask") == true)

        let g = try FakeContainer.v2()
        g.remove("unified", "cpuset.cpus")
        #expect(lmctfyError { try h.validate(spec(cpu: CpuSpec(mask: CpuSpec.Mask(data: [1]))), dirs: g.dirs) }?.code == .unimplemented)
    }

    @Test func v1LatencyMustMatchPlacement() throws {
        let top = try FakeContainer.v1()
        #expect(lmctfyError { try h.validate(spec(cpu: CpuSpec(schedulingLatency: .priority)), dirs: top.dirs) } == nil)
        #expect(lmctfyError { try h.validate(spec(cpu: CpuSpec(schedulingLatency: .normal)), dirs: top.dirs) }?.code == .invalidArgument)
        let batch = try FakeContainer.v1(inBatch: true)
        #expect(lmctfyError { try h.validate(spec(cpu: CpuSpec(schedulingLatency: .bestEffort)), dirs: batch.dirs) } == nil)
        #expect(lmctfyError { try h.validate(spec(cpu: CpuSpec(schedulingLatency: .premier)), dirs: batch.dirs) }?.code == .invalidArgument)
    }

    @Test(arguments: [CgroupVersion.v1, .v2])
    func recordedLatencyCannotChange(_ version: CgroupVersion) throws {
        let f = try version == .v1 ? FakeContainer.v1() : FakeContainer.v2()
        try h.apply(spec(cpu: CpuSpec(schedulingLatency: .priority)), policy: .replace, dirs: f.dirs)
        #expect(try f.dir(version == .v1 ? "cpu" : "unified").record(.schedulingLatency) == "PRIORITY")
        let err = lmctfyError { try h.validate(spec(cpu: CpuSpec(schedulingLatency: .premier)), dirs: f.dirs) }
        #expect(err?.code == .invalidArgument)
        #expect(err?.message.contains("cannot be changed") == true)
        #expect(lmctfyError { try h.validate(spec(cpu: CpuSpec(schedulingLatency: .priority)), dirs: f.dirs) } == nil)
    }

    @Test func v2BestEffortNeedsCpuIdle() throws {
        let f = try FakeContainer.v2()
        #expect(lmctfyError { try h.validate(spec(cpu: CpuSpec(schedulingLatency: .bestEffort)), dirs: f.dirs) } == nil)
        f.remove("unified", "cpu.idle")
        #expect(lmctfyError { try h.validate(spec(cpu: CpuSpec(schedulingLatency: .bestEffort)), dirs: f.dirs) }?.code == .unimplemented)
    }
}

@Suite struct CpuApplyTests {
    let h = CpuHandler()

    @Test func v1ReplaceResetsOmittedFields() throws {
        let f = try FakeContainer.v1()
        let writes = try h.plan(CpuSpec(), policy: .replace, dirs: f.dirs, dir: f.dir("cpu"))
        // D3: shares 1024, no quota, every CPU of the parent cpuset.
        #expect(describe(writes) == ["cpu.shares <- \"1024\"", "cpu.cfs_quota_us <- \"-1\"", "cpuset.cpus <- \"0-7\""])
        #expect(writes[2].dir == f.dir("cpuset"))
    }

    @Test func v1DiffWritesOnlyGivenFields() throws {
        let f = try FakeContainer.v1()
        #expect(describe(try h.plan(CpuSpec(limit: 500), policy: .diff, dirs: f.dirs, dir: f.dir("cpu"))) == ["cpu.shares <- \"512\""])
        #expect(try h.plan(CpuSpec(), policy: .diff, dirs: f.dirs, dir: f.dir("cpu")).isEmpty)
    }

    @Test func v1AllFields() throws {
        let f = try FakeContainer.v1()
        let cpu = CpuSpec(limit: 2000, maxLimit: 1500, mask: CpuSpec.Mask(data: [0x10F]))
        #expect(describe(try h.plan(cpu, policy: .replace, dirs: f.dirs, dir: f.dir("cpu"))) == [
            "cpu.shares <- \"2048\"", "cpu.cfs_period_us <- \"250000\"", "cpu.cfs_quota_us <- \"375000\"",
            "cpuset.cpus <- \"0-3,8\"",
        ])
        #expect(describe(try h.plan(CpuSpec(maxLimit: UInt64.max), policy: .diff, dirs: f.dirs, dir: f.dir("cpu"))) == ["cpu.cfs_quota_us <- \"-1\""])
    }

    @Test func v1ApplyWritesFilesAndRecordsLatency() throws {
        let f = try FakeContainer.v1()
        try f.blank("cpu", ["cpu.shares", "cpu.cfs_period_us", "cpu.cfs_quota_us"])
        try f.blank("cpuset", ["cpuset.cpus"])
        try h.apply(spec(cpu: CpuSpec(limit: 250, maxLimit: 500, mask: CpuSpec.Mask(data: [0x3]))), policy: .replace, dirs: f.dirs)
        #expect(try f.value("cpu", "cpu.shares") == "256")
        #expect(try f.value("cpu", "cpu.cfs_period_us") == "250000")
        #expect(try f.value("cpu", "cpu.cfs_quota_us") == "125000")
        #expect(try f.value("cpuset", "cpuset.cpus") == "0-1")
        #expect(try f.dir("cpu").record(.schedulingLatency) == "PRIORITY")
    }

    @Test func v2ReplaceResetsOmittedFields() throws {
        let f = try FakeContainer.v2()
        #expect(describe(try h.plan(CpuSpec(), policy: .replace, dirs: f.dirs, dir: f.dir("unified"))) == [
            "cpu.weight <- \"100\"", "cpu.max <- \"max\"", "cpuset.cpus <- \"\n\"",
        ])
    }

    @Test func v2AllFields() throws {
        let f = try FakeContainer.v2()
        let cpu = CpuSpec(schedulingLatency: .bestEffort, limit: 1000, maxLimit: 1500, mask: CpuSpec.Mask(data: [0x10F]))
        // 1000 milliCPU = 1024 shares = weight 1 + (1022*9999)/262142 = 39.
        #expect(describe(try h.plan(cpu, policy: .diff, dirs: f.dirs, dir: f.dir("unified"))) == [
            "cpu.weight <- \"39\"", "cpu.max <- \"375000 250000\"", "cpuset.cpus <- \"0-3,8\"", "cpu.idle <- \"1\"",
        ])
        #expect(describe(try h.plan(CpuSpec(maxLimit: UInt64.max), policy: .diff, dirs: f.dirs, dir: f.dir("unified"))) == ["cpu.max <- \"max 250000\""])
    }

    @Test func v2BestEffortApply() throws {
        let f = try FakeContainer.v2()
        try f.blank("unified", ["cpu.idle"])
        try h.apply(spec(cpu: CpuSpec(schedulingLatency: .bestEffort)), policy: .diff, dirs: f.dirs)
        #expect(try f.value("unified", "cpu.idle") == "1")
        #expect(try f.dir("unified").record(.schedulingLatency) == "BEST_EFFORT")
    }
}

@Suite struct CpuReadTests {
    let h = CpuHandler()

    @Test func v1Defaults() throws {
        let f = try FakeContainer.v1()
        var s = ContainerSpec()
        try h.readSpec(into: &s, dirs: f.dirs)
        // A fresh cgroup: 1024 shares, no quota (max_limit -1 in a uint64, as
        // the original reports it), the parent's CPUs 0-7.
        #expect(s.cpu == CpuSpec(limit: 1000, maxLimit: UInt64.max, mask: CpuSpec.Mask(data: [0xFF])))
    }

    @Test func v1Values() throws {
        let f = try FakeContainer.v1()
        try f.seed("cpu", ["cpu.shares": "512\n", "cpu.cfs_period_us": "250000\n", "cpu.cfs_quota_us": "375000\n"])
        try f.seed("cpuset", ["cpuset.cpus": "0-3,8\n"])
        var s = ContainerSpec()
        try h.readSpec(into: &s, dirs: f.dirs)
        #expect(s.cpu == CpuSpec(limit: 500, maxLimit: 1500, mask: CpuSpec.Mask(data: [0x10F])))
        // A quota set against another period still reads as milliCPU.
        try f.seed("cpu", ["cpu.cfs_period_us": "100000\n", "cpu.cfs_quota_us": "50000\n"])
        try h.readSpec(into: &s, dirs: f.dirs)
        #expect(s.cpu?.maxLimit == 500)
    }

    @Test func v2Values() throws {
        let f = try FakeContainer.v2()
        var s = ContainerSpec()
        try h.readSpec(into: &s, dirs: f.dirs)
        // weight 100 → shares 2 + ceil(99*262142/9999) = 2598 → 2538 milliCPU (rounded up);
        // an empty cpuset.cpus (inherited) is no mask; "max" is no quota,
        // reported as the original's -1.
        #expect(s.cpu == CpuSpec(limit: 2538, maxLimit: UInt64.max))
        try f.seed("unified", ["cpu.weight": "39\n", "cpu.max": "375000 250000\n", "cpuset.cpus": "0-3,8\n", "cpu.idle": "1\n"])
        try h.readSpec(into: &s, dirs: f.dirs)
        // weight 39 → shares 999 → 976 milliCPU (weights are coarser than shares).
        #expect(s.cpu == CpuSpec(schedulingLatency: .bestEffort, limit: 976, maxLimit: 1500, mask: CpuSpec.Mask(data: [0x10F])))
        // What is read back and applied again stays: the weight it writes
        // reads back as the same limit (no loss with every move).
        let limit = try #require(s.cpu?.limit)
        let weight = CpuHandler.weight(shares: CpuHandler.shares(milliCpu: limit))
        #expect(CpuHandler.milliCpu(shares: CpuHandler.shares(weight: weight)) == limit)
    }

    @Test func v1Stats() throws {
        let f = try FakeContainer.v1()
        try f.seed("cpuacct", ["cpuacct.usage": "123456789\n", "cpuacct.usage_percpu": "100000000 23456789 \n",
                               "cpuacct.stat": "user 5\nsystem 7\n"])
        try f.seed("cpu", ["cpu.stat": "nr_periods 10\nnr_throttled 3\nthrottled_time 5000\nnr_bursts 0\nburst_time 0\n"])
        let nsPerTick = Int64(1_000_000_000) / Int64(sysconf(Int32(_SC_CLK_TCK)))
        var summary = ContainerStats()
        try h.stats(into: &summary, type: .summary, dirs: f.dirs)
        #expect(summary.cpu?.usage == CpuStats.Usage(total: 123_456_789, perCpu: [100_000_000, 23_456_789],
                                                      user: 5 * nsPerTick, system: 7 * nsPerTick))
        #expect(summary.cpu?.throttlingData == nil)
        #expect(summary.cpu?.load == nil)
        var full = ContainerStats()
        try f.seed("cpu", ["cpu.nr_running": "4\n"])
        try h.stats(into: &full, type: .full, dirs: f.dirs)
        #expect(full.cpu?.throttlingData == ThrottlingData(periods: 10, throttledPeriods: 3, throttledTime: 5000))
        #expect(full.cpu?.load == 4)
    }

    @Test func v2Stats() throws {
        let f = try FakeContainer.v2()
        try f.seed("unified", ["cpu.stat": "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 8\nnr_throttled 2\nthrottled_usec 70\n"])
        var full = ContainerStats()
        try h.stats(into: &full, type: .full, dirs: f.dirs)
        #expect(full.cpu?.usage == CpuStats.Usage(total: 1_500_000, user: 1_000_000, system: 500_000))
        #expect(full.cpu?.throttlingData == ThrottlingData(periods: 8, throttledPeriods: 2, throttledTime: 70_000))
    }
}
