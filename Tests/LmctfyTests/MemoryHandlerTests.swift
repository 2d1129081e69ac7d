// MemoryHandler on fake v1 and v2 trees: validation, write order of limit
// and swap, REPLACE defaults, eviction priority (D12), read-back, stats.
import Glibc
@testable import Lmctfy
import LmctfyProto
import LmctfySystem
import LmctfyTestSupport
import Testing

@Suite struct MemoryValidationTests {
    let h = MemoryHandler()

    @Test func evictionPriorityMapping() {
        #expect(MemoryHandler.oomScoreAdj(priority: 0) == 1000)
        #expect(MemoryHandler.oomScoreAdj(priority: 10_000) == -999)
        #expect(MemoryHandler.oomScoreAdj(priority: 5000) == 0)
        // Monotonic: a higher priority is never evicted earlier.
        for p in Int32(1)...10_000 {
            #expect(MemoryHandler.oomScoreAdj(priority: p) <= MemoryHandler.oomScoreAdj(priority: p - 1))
        }
    }

    @Test(arguments: [Int32(-1), 10_001])
    func evictionPriorityOutOfRange(_ p: Int32) throws {
        let f = try FakeContainer.v1()
        #expect(lmctfyError { try h.validate(spec(memory: MemorySpec(evictionPriority: p)), dirs: f.dirs) }?.code == .invalidArgument)
    }

    @Test(arguments: [CgroupVersion.v1, .v2])
    func fieldsThisKernelCannotEnforce(_ version: CgroupVersion) throws {
        let f = try version == .v1 ? FakeContainer.v1() : FakeContainer.v2()
        let refused: [(MemorySpec, String)] = [
            (MemorySpec(maxLimit: 1 << 30), "max_limit"),
            (MemorySpec(hugetlbfsPath: "/hugetlb"), "hugetlbfs_path"),
            (MemorySpec(tmpfs: MemorySpec.TmpfsSpec(path: ["/tmp"])), "tmpfs"),
            (MemorySpec(compressionSamplingRatio: 5), "compression_sampling_ratio"),
            (MemorySpec(stalePageAge: 2), "stale_page_age"),
            (MemorySpec(dirty: MemorySpec.Dirty(ratio: 20)), "dirty.ratio"),
            (MemorySpec(dirty: MemorySpec.Dirty(backgroundLimit: 4096)), "dirty.background_limit"),
            (MemorySpec(kmemChargeUsage: true), "kmem_charge_usage"),
        ]
        for (m, field) in refused {
            let err = lmctfyError { try h.validate(spec(memory: m), dirs: f.dirs) }
            #expect(err?.code == .unimplemented, "\(field)")
            #expect(err?.message.contains(field) == true, "\(field): \(err?.message ?? "")")
        }
    }

    @Test func patchedKernelFieldsAreAcceptedWhenTheFileExists() throws {
        let f = try FakeContainer.v1()
        try f.seed("memory", ["memory.stale_page_age": "1\n", "memory.dirty_ratio": "75\n"])
        #expect(lmctfyError { try h.validate(spec(memory: MemorySpec(stalePageAge: 3, dirty: MemorySpec.Dirty(ratio: 20))), dirs: f.dirs) } == nil)
    }

    @Test func dirtyRatioAndLimitTogether() throws {
        let f = try FakeContainer.v1()
        let err = lmctfyError { try h.validate(spec(memory: MemorySpec(dirty: MemorySpec.Dirty(ratio: 10, limit: 4096))), dirs: f.dirs) }
        #expect(err == LmctfyError(.invalidArgument, "Cannot set both dirty ratio and limit"))
    }

    @Test(arguments: [CgroupVersion.v1, .v2])
    func swapLimitNeedsSwapAccounting(_ version: CgroupVersion) throws {
        let f = try version == .v1 ? FakeContainer.v1() : FakeContainer.v2()
        f.remove(version == .v1 ? "memory" : "unified", version == .v1 ? "memory.memsw.limit_in_bytes" : "memory.swap.max")
        #expect(lmctfyError { try h.validate(spec(memory: MemorySpec(swapLimit: 1 << 30)), dirs: f.dirs) }?.code == .notFound)
    }

    @Test func swapBelowLimitIsRefused() throws {
        let f = try FakeContainer.v1()
        let err = lmctfyError { try h.validate(spec(memory: MemorySpec(limit: 200_000_000, swapLimit: 100_000_000)), dirs: f.dirs) }
        #expect(err?.code == .invalidArgument)
        #expect(lmctfyError { try h.validate(spec(memory: MemorySpec(limit: -2)), dirs: f.dirs) }?.code == .invalidArgument)
    }

    /// A limit below one page is 0 to the kernel: a container in which
    /// every command is OOM-killed. Refused; one page and -1 are taken.
    @Test(arguments: [CgroupVersion.v1, .v2])
    func aLimitBelowOnePageIsRefused(_ version: CgroupVersion) throws {
        let f = try version == .v1 ? FakeContainer.v1() : FakeContainer.v2()
        for limit in [Int64(0), 1, MemoryHandler.pageSize - 1] {
            let err = lmctfyError { try h.validate(spec(memory: MemorySpec(limit: limit)), dirs: f.dirs) }
            #expect(err?.code == .invalidArgument && err?.message.contains("below one page") == true, "\(limit): \(String(describing: err))")
        }
        for limit in [MemoryHandler.pageSize, -1] {
            #expect(lmctfyError { try h.validate(spec(memory: MemorySpec(limit: limit)), dirs: f.dirs) } == nil, "\(limit)")
        }
    }
}

@Suite struct MemoryApplyTests {
    let h = MemoryHandler()

    @Test func v1ReplaceDefaults() throws {
        let f = try FakeContainer.v1()
        try f.seed("memory", ["memory.limit_in_bytes": "99999744\n", "memory.memsw.limit_in_bytes": "199999488\n"])
        let writes = try h.plan(MemorySpec(), policy: .replace, dirs: f.dirs, dir: f.dir("memory"))
        // Raising the limit past the current memsw needs memsw raised first.
        #expect(describe(writes) == [
            "memory.memsw.limit_in_bytes <- \"-1\"", "memory.limit_in_bytes <- \"-1\"", "memory.soft_limit_in_bytes <- \"0\"",
        ])
    }

    @Test func v1ReplaceWithoutMemswIgnoresSwap() throws {
        let f = try FakeContainer.v1()
        f.remove("memory", "memory.memsw.limit_in_bytes")
        #expect(describe(try h.plan(MemorySpec(), policy: .replace, dirs: f.dirs, dir: f.dir("memory"))) == [
            "memory.limit_in_bytes <- \"-1\"", "memory.soft_limit_in_bytes <- \"0\"",
        ])
    }

    @Test func v1LoweringWritesLimitFirst() throws {
        let f = try FakeContainer.v1()
        try f.seed("memory", ["memory.limit_in_bytes": "199999488\n", "memory.memsw.limit_in_bytes": "299999232\n"])
        let m = MemorySpec(limit: 100_000_000, swapLimit: 150_000_000)
        #expect(describe(try h.plan(m, policy: .diff, dirs: f.dirs, dir: f.dir("memory"))) == [
            "memory.limit_in_bytes <- \"100000000\"", "memory.memsw.limit_in_bytes <- \"150000000\"",
        ])
    }

    @Test func v1RaisingWritesMemswFirst() throws {
        let f = try FakeContainer.v1()
        try f.seed("memory", ["memory.limit_in_bytes": "99999744\n", "memory.memsw.limit_in_bytes": "149999616\n"])
        let m = MemorySpec(limit: 400_000_000, swapLimit: 500_000_000)
        #expect(describe(try h.plan(m, policy: .diff, dirs: f.dirs, dir: f.dir("memory"))) == [
            "memory.memsw.limit_in_bytes <- \"500000000\"", "memory.limit_in_bytes <- \"400000000\"",
        ])
    }

    @Test func v1DiffLimitAboveCurrentSwapIsRefused() throws {
        let f = try FakeContainer.v1()
        try f.seed("memory", ["memory.limit_in_bytes": "99999744\n", "memory.memsw.limit_in_bytes": "149999616\n"])
        let err = lmctfyError { _ = try h.plan(MemorySpec(limit: 200_000_000), policy: .diff, dirs: f.dirs, dir: f.dir("memory")) }
        #expect(err?.code == .invalidArgument)
        // REPLACE with only a swap limit means an unlimited memory limit above it.
        #expect(lmctfyError { _ = try h.plan(MemorySpec(swapLimit: 1 << 30), policy: .replace, dirs: f.dirs, dir: f.dir("memory")) }?.code == .invalidArgument)
    }

    @Test func v1UnlimitedSpellings() throws {
        let f = try FakeContainer.v1()
        // The value an unlimited limit reads back as means unlimited again.
        // An unlimited total goes first: then no order of values can break
        // memsw >= limit, and nothing has to be read.
        let m = MemorySpec(limit: 9_223_372_036_854_771_712, reservation: -1, swapLimit: Int64.max)
        #expect(describe(try h.plan(m, policy: .diff, dirs: f.dirs, dir: f.dir("memory"))) == [
            "memory.memsw.limit_in_bytes <- \"-1\"", "memory.limit_in_bytes <- \"-1\"", "memory.soft_limit_in_bytes <- \"-1\"",
        ])
    }

    @Test func v1ApplyWritesFiles() throws {
        let f = try FakeContainer.v1()
        try f.blank("memory", ["memory.soft_limit_in_bytes"])
        try f.seed("memory", ["memory.limit_in_bytes": "-1\n", "memory.memsw.limit_in_bytes": "-1\n"])
        try h.apply(spec(memory: MemorySpec(limit: 100_000_000, reservation: 50_000_000, swapLimit: 200_000_000)), policy: .replace, dirs: f.dirs)
        #expect(try f.value("memory", "memory.limit_in_bytes") == "100000000")
        #expect(try f.value("memory", "memory.memsw.limit_in_bytes") == "200000000")
        #expect(try f.value("memory", "memory.soft_limit_in_bytes") == "50000000")
        // REPLACE's default eviction priority is recorded (no badness file).
        #expect(try f.dir("memory").record(.evictionPriority) == "5000")
    }

    @Test func v2SplitsTheTotal() throws {
        let f = try FakeContainer.v2()
        let m = MemorySpec(limit: 100_000_000, reservation: 10_000_000, swapLimit: 150_000_000)
        #expect(describe(try h.plan(m, policy: .diff, dirs: f.dirs, dir: f.dir("unified"))) == [
            "memory.max <- \"100000000\"", "memory.swap.max <- \"50000000\"", "memory.low <- \"10000000\"",
        ])
        #expect(describe(try h.plan(MemorySpec(), policy: .replace, dirs: f.dirs, dir: f.dir("unified"))) == [
            "memory.max <- \"max\"", "memory.swap.max <- \"max\"", "memory.low <- \"0\"",
        ])
        // A finite total needs a finite limit on v2.
        #expect(lmctfyError { _ = try h.plan(MemorySpec(swapLimit: 1 << 30), policy: .diff, dirs: f.dirs, dir: f.dir("unified")) }?.code == .invalidArgument)
    }

    @Test func v2DiffOfTheLimitKeepsTheTotal() throws {
        let f = try FakeContainer.v2()
        try f.seed("unified", ["memory.max": "100000000\n", "memory.swap.max": "50000000\n"])
        #expect(describe(try h.plan(MemorySpec(limit: 120_000_000), policy: .diff, dirs: f.dirs, dir: f.dir("unified"))) == [
            "memory.max <- \"120000000\"", "memory.swap.max <- \"30000000\"",
        ])
        #expect(lmctfyError { _ = try h.plan(MemorySpec(limit: 200_000_000), policy: .diff, dirs: f.dirs, dir: f.dir("unified")) }?.code == .invalidArgument)
    }

    @Test func patchedKernelDefaults() throws {
        let f = try FakeContainer.v1()
        f.remove("memory", "memory.memsw.limit_in_bytes")
        try f.seed("memory", ["memory.dirty_ratio": "0\n", "memory.dirty_background_ratio": "0\n",
                              "memory.dirty_limit_in_bytes": "0\n", "memory.dirty_background_limit_in_bytes": "0\n",
                              "memory.stale_page_age": "0\n"])
        #expect(describe(try h.plan(MemorySpec(), policy: .replace, dirs: f.dirs, dir: f.dir("memory"))) == [
            "memory.limit_in_bytes <- \"-1\"", "memory.soft_limit_in_bytes <- \"0\"", "memory.stale_page_age <- \"1\"",
            "memory.dirty_ratio <- \"75\"", "memory.dirty_background_ratio <- \"10\"",
        ])
        #expect(describe(try h.plan(MemorySpec(dirty: MemorySpec.Dirty(limit: 4096)), policy: .replace, dirs: f.dirs, dir: f.dir("memory"))) == [
            "memory.limit_in_bytes <- \"-1\"", "memory.soft_limit_in_bytes <- \"0\"", "memory.stale_page_age <- \"1\"",
            "memory.dirty_limit_in_bytes <- \"4096\"", "memory.dirty_background_limit_in_bytes <- \"0\"",
        ])
    }

    @Test(arguments: [CgroupVersion.v1, .v2])
    func evictionPrioritySetsOomScoreAdj(_ version: CgroupVersion) throws {
        let f = try version == .v1 ? FakeContainer.v1() : FakeContainer.v2()
        try f.addProcess(111)
        try f.addProcess(222)
        try f.listProcesses([333])  // exited since: no /proc entry, skipped
        try h.apply(spec(memory: MemorySpec(evictionPriority: 10_000)), policy: .diff, dirs: f.dirs)
        #expect(try f.oomScoreAdj(111) == "-999")
        #expect(try f.oomScoreAdj(222) == "-999")
        let memDir = f.dir(version == .v1 ? "memory" : "unified")
        #expect(try memDir.record(.evictionPriority) == "10000")

        var s = ContainerSpec()
        try h.readSpec(into: &s, dirs: f.dirs)
        #expect(s.memory?.evictionPriority == 10_000)
    }

    @Test func badnessFileIsUsedWhenPresent() throws {
        let f = try FakeContainer.v1()
        try f.seed("memory", ["memory.oom_score_badness": ""])
        try f.addProcess(111)
        try h.apply(spec(memory: MemorySpec(evictionPriority: 7000)), policy: .diff, dirs: f.dirs)
        #expect(try f.value("memory", "memory.oom_score_badness") == "7000")
        #expect(try f.oomScoreAdj(111) == "0")
        #expect(try f.dir("memory").record(.evictionPriority) == nil)
    }
}

@Suite struct MemoryReadTests {
    let h = MemoryHandler()

    @Test func v1Spec() throws {
        let f = try FakeContainer.v1()
        var s = ContainerSpec()
        try h.readSpec(into: &s, dirs: f.dirs)
        // Unlimited reads back as the kernel's page-rounded maximum; no
        // eviction priority was ever set.
        let max: Int64 = 9_223_372_036_854_771_712
        #expect(s.memory == MemorySpec(limit: max, reservation: max, swapLimit: max))
        try f.seed("memory", ["memory.limit_in_bytes": "99999744\n", "memory.soft_limit_in_bytes": "0\n",
                              "memory.memsw.limit_in_bytes": "199999488\n"])
        try f.dir("memory").setRecord(.evictionPriority, "5000")
        try h.readSpec(into: &s, dirs: f.dirs)
        #expect(s.memory == MemorySpec(evictionPriority: 5000, limit: 99_999_744, reservation: 0, swapLimit: 199_999_488))
    }

    @Test func v2Spec() throws {
        let f = try FakeContainer.v2()
        var s = ContainerSpec()
        try h.readSpec(into: &s, dirs: f.dirs)
        #expect(s.memory == MemorySpec(limit: -1, reservation: 0, swapLimit: -1))
        try f.seed("unified", ["memory.max": "99999744\n", "memory.low": "4096\n", "memory.swap.max": "50003968\n"])
        try h.readSpec(into: &s, dirs: f.dirs)
        #expect(s.memory == MemorySpec(limit: 99_999_744, reservation: 4096, swapLimit: 150_003_712))
    }

    @Test func v1Stats() throws {
        let f = try FakeContainer.v1()
        try f.seed("memory", [
            "memory.usage_in_bytes": "10000000\n", "memory.max_usage_in_bytes": "12000000\n", "memory.failcnt": "3\n",
            "memory.limit_in_bytes": "99999744\n", "memory.soft_limit_in_bytes": "0\n",
            "memory.stat": """
            cache 4096
            rss 8192
            rss_huge 0
            mapped_file 1
            dirty 2
            writeback 3
            pgpgin 11
            pgpgout 12
            pgfault 13
            pgmajfault 14
            inactive_anon 15
            active_anon 16
            inactive_file 17
            active_file 18
            unevictable 19
            hierarchical_memory_limit 99999744
            total_cache 40960
            total_rss 81920
            total_pgpgin 110
            total_pgpgout 120
            total_inactive_file 2000000

            """,
            "memory.numa_stat": "total=5 N0=3 N1=2\nfile=1 N0=1 N1=0\nanon=4 N0=2 N1=2\nunevictable=0 N0=0 N1=0\nhierarchical_total=9 N0=5 N1=4\n",
        ])
        var st = ContainerStats()
        try h.stats(into: &st, type: .summary, dirs: f.dirs)
        let m = try #require(st.memory)
        #expect(m.usage == 10_000_000)
        #expect(m.maxUsage == 12_000_000)
        #expect(m.failCount == 3)
        #expect(m.limit == 99_999_744)
        #expect(m.reservation == 0)
        #expect(m.effectiveLimit == 99_999_744)
        #expect(m.hierarchicalMemoryLimit == 99_999_744)
        // usage - total_inactive_file
        #expect(m.workingSet == 8_000_000)
        #expect(m.containerData == MemoryStats.MemoryData(
            cache: 4096, rss: 8192, rssHuge: 0, mappedFile: 1, pgpgin: 11, pgpgout: 12, pgfault: 13, pgmajfault: 14,
            dirty: 2, writeback: 3, inactiveAnon: 15, activeAnon: 16, inactiveFile: 17, activeFile: 18, unevictable: 19))
        #expect(m.hierarchicalData?.pgpgout == 120)
        #expect(m.hierarchicalData?.cache == 40960)
        typealias Stat = MemoryStats.NumaStats.NumaData.Stat
        #expect(m.numa?.containerData?.total == Stat(node: [.init(level: 0, pageCount: 3), .init(level: 1, pageCount: 2)], totalPageCount: 5))
        #expect(m.numa?.containerData?.anon?.totalPageCount == 4)
        #expect(m.numa?.hierarchicalData?.total?.totalPageCount == 9)
    }

    @Test func v1StatsWithoutNumaAndNeverNegativeWorkingSet() throws {
        let f = try FakeContainer.v1()
        f.remove("memory", "memory.numa_stat")
        try f.seed("memory", ["memory.usage_in_bytes": "100\n", "memory.stat": "total_inactive_file 4096\n"])
        var st = ContainerStats()
        try h.stats(into: &st, type: .full, dirs: f.dirs)
        #expect(st.memory?.numa == nil)
        #expect(st.memory?.workingSet == 0)
    }

    @Test func v2Stats() throws {
        let f = try FakeContainer.v2()
        try f.tree.seed("unified", ["p"], files: ["memory.max": "1000000000\n"])
        try f.tree.seed("unified", ["p", "c"], files: [
            "memory.current": "5000000\n", "memory.peak": "6000000\n", "memory.max": "2000000000\n", "memory.low": "0\n",
            "memory.events": "low 0\nhigh 0\nmax 7\noom 1\noom_kill 1\n",
            "memory.stat": "anon 100\nfile 200\nfile_mapped 3\nfile_dirty 4\nfile_writeback 5\nanon_thp 6\ninactive_anon 7\nactive_anon 8\ninactive_file 1000000\nactive_file 10\nunevictable 11\npgfault 12\npgmajfault 13\n",
        ])
        let d = f.tree.dir("unified", ["p", "c"])
        let dirs = ResourceDirs(driver: f.driver, container: try ContainerName.resolve("/p/c", relativeTo: .root),
                                byController: [.memory: d], tasks: d)
        var st = ContainerStats()
        try h.stats(into: &st, type: .summary, dirs: dirs)
        let m = try #require(st.memory)
        #expect(m.usage == 5_000_000)
        #expect(m.maxUsage == 6_000_000)
        #expect(m.failCount == 7)
        #expect(m.limit == 2_000_000_000)
        // The parent's memory.max is tighter.
        #expect(m.hierarchicalMemoryLimit == 1_000_000_000)
        #expect(m.effectiveLimit == 1_000_000_000)
        #expect(m.workingSet == 4_000_000)
        #expect(m.containerData == MemoryStats.MemoryData(
            cache: 200, rss: 100, rssHuge: 6, mappedFile: 3, pgfault: 12, pgmajfault: 13, dirty: 4, writeback: 5,
            inactiveAnon: 7, activeAnon: 8, inactiveFile: 1_000_000, activeFile: 10, unevictable: 11))
        #expect(m.hierarchicalData == m.containerData)
    }
}
