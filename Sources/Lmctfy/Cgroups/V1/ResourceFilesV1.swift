// The resources' files on cgroup v1: cpu spread over the cpu, cpuacct and
// cpuset hierarchies (shares, CFS period and quota), memory's *_in_bytes
// files with memsw as the memory+swap total, blkio's per-throttle files.
import Glibc
import LmctfyProto
import LmctfySystem

struct CpuFilesV1: CpuFiles {
    /// A v1 cpuset's CPUs are a subset of its parent's and a superset of
    /// each child's: the kernel refused a write that broke either with
    /// EACCES (reported as PERMISSION_DENIED, to root) or EBUSY (UNAVAILABLE)
    /// once the create or update had begun. Checked first, naming the CPUs.
    func checkMask(_ mask: CpuSpec.Mask, dirs: ResourceDirs) throws(LmctfyError) {
        guard let cpuset = dirs.dir(.cpuset) else {
            throw .unimplemented("cpu.mask needs the cpuset hierarchy, which is not mounted or not isolated here")
        }
        let wanted = Set(CpuHandler.cpus(mask: mask.data))
        if let parent = cpuset.parent, try parent.exists() {
            let allowed = Set(try CpuHandler.cpus(cpuList: try parent.read("cpuset.cpus")))
            let outside = wanted.subtracting(allowed).sorted()
            if !outside.isEmpty {
                let above = dirs.container.parent.map { "\"\($0)\"" } ?? "its parent"
                throw .invalidArgument("cpu.mask names \(Self.cpuWords(outside)), which \(above) may not use (its CPUs: \(Self.listOrNone(allowed))); on cgroup v1 a container's CPUs are a subset of its parent's")
            }
        }
        guard !dirs.isNew, try cpuset.exists() else { return }
        for child in try cpuset.subdirectories() {
            let used = Set(try CpuHandler.cpus(cpuList: try cpuset.child(child).read("cpuset.cpus")))
            let left = used.subtracting(wanted).sorted()
            if !left.isEmpty {
                let sub = dirs.container.isRoot ? "/\(child)" : "\(dirs.container)/\(child)"
                throw .failedPrecondition("cpu.mask leaves out \(Self.cpuWords(left)), which the subcontainer \"\(sub)\" uses; on cgroup v1 a container's CPUs include its subcontainers': narrow \"\(sub)\" first")
            }
        }
    }

    /// A v1 CFS quota is within the nearest capped ancestor's (as a share
    /// of its period) and above each nearest capped descendant's: the
    /// kernel refused a write that broke either with EINVAL, which came
    /// out as 14 ("Invalid argument") once the create or update had begun
    /// (a probe). Checked first, naming the container in the way.
    func checkMaxLimit(_ maxLimit: UInt64, dirs: ResourceDirs) throws(LmctfyError) {
        guard maxLimit != CpuHandler.unlimitedMaxLimit, let dir = dirs.dir(.cpu) else { return }
        let wanted = Self.bandwidth(quotaUs: CpuHandler.quotaUs(maxLimit), periodUs: CpuHandler.cfsPeriodUs)
        // Up: the first ancestor with a quota bounds this one.
        var above = dir.parent, name = dirs.container.parent
        while let d = above, !d.isRoot {
            if let cap = try Self.cap(d) {
                guard cap.bandwidth >= wanted else {
                    let who = name.map { $0.isRoot ? "the cgroup \(d.path)" : "\"\($0)\"" } ?? "the cgroup \(d.path)"
                    throw .invalidArgument("cpu.max_limit \(maxLimit) is above the max_limit \(cap.milliCpu) of \(who); on cgroup v1 a container's CPU cap is within its parent's")
                }
                break
            }
            above = d.parent
            name = name?.parent
        }
        // Down: each subcontainer with a quota (those without one are held
        // to this one's, as are theirs below).
        guard !dirs.isNew, try dir.exists() else { return }
        var stack: [(CgroupDir, [String])] = [(dir, [])]
        while let (d, path) = stack.popLast() {
            for child in try d.subdirectories() {
                let sub = d.child(child)
                if let cap = try Self.cap(sub) {
                    if cap.bandwidth > wanted {
                        let full = ([dirs.container.isRoot ? "" : dirs.container.description] + path + [child]).joined(separator: "/")
                        throw .failedPrecondition("cpu.max_limit \(maxLimit) is below the max_limit \(cap.milliCpu) of the subcontainer \"\(full)\"; on cgroup v1 a container's CPU cap is at least its subcontainers': lower \"\(full)\" first")
                    }
                } else {
                    stack.append((sub, path + [child]))
                }
            }
        }
    }

    /// A directory's CFS quota as the kernel compares it (its share of the
    /// period, shifted by 20 bits as its to_ratio does) and in milliCPU;
    /// nil without a quota.
    private static func cap(_ d: CgroupDir) throws(LmctfyError) -> (bandwidth: UInt64, milliCpu: Int64)? {
        guard let quota = try d.readInt("cpu.cfs_quota_us"), quota > 0,
              let period = try d.readInt("cpu.cfs_period_us"), period > 0 else { return nil }
        return (bandwidth(quotaUs: quota, periodUs: period), quota * 1000 / period)
    }

    static func bandwidth(quotaUs: Int64, periodUs: Int64) -> UInt64 {
        let (high, low) = UInt64(quotaUs).multipliedFullWidth(by: 1 << 20)
        return UInt64(periodUs).dividingFullWidth((high, low)).quotient
    }

    private static func cpuWords(_ cpus: [Int]) -> String {
        (cpus.count == 1 ? "CPU " : "CPUs ") + CpuHandler.cpuList(mask: CpuHandler.mask(cpus: cpus))
    }

    private static func listOrNone(_ cpus: Set<Int>) -> String {
        cpus.isEmpty ? "none" : CpuHandler.cpuList(mask: CpuHandler.mask(cpus: cpus.sorted()))
    }

    /// The placement (/batch or not) tells the class apart; a nested
    /// container sits wherever its top-level container does.
    func checkLatency(_ latency: SchedulingLatency, dir: CgroupDir, dirs: ResourceDirs) throws(LmctfyError) {
        let wantsBatch = latency == .normal || latency == .bestEffort
        let inBatch = dir.segments.first == "batch"
        if wantsBatch != inBatch {
            throw .invalidArgument("cpu.scheduling_latency \(latency.protoName) does not match where \"\(dirs.container)\" runs (\(inBatch ? "the /batch" : "the top-level") cpu cgroup); a nested container has its top-level container's class and it cannot be changed")
        }
    }

    func plan(_ cpu: CpuSpec, replace: Bool, dirs: ResourceDirs, dir: CgroupDir) throws(LmctfyError) -> [CgroupWrite] {
        var w: [CgroupWrite] = []
        if let limit = cpu.limit {
            w.append(CgroupWrite(dir, "cpu.shares", String(CpuHandler.shares(milliCpu: limit))))
        } else if replace {
            w.append(CgroupWrite(dir, "cpu.shares", String(CpuHandler.defaultShares)))
        }
        if let maxLimit = cpu.maxLimit, maxLimit != CpuHandler.unlimitedMaxLimit {
            // The period first: the quota is only meaningful against it.
            w.append(CgroupWrite(dir, "cpu.cfs_period_us", String(CpuHandler.cfsPeriodUs)))
            w.append(CgroupWrite(dir, "cpu.cfs_quota_us", String(CpuHandler.quotaUs(maxLimit))))
        } else if cpu.maxLimit != nil || replace {
            w.append(CgroupWrite(dir, "cpu.cfs_quota_us", "-1"))
        }
        if let mask = cpu.mask, let cpuset = dirs.dir(.cpuset) {
            w.append(CgroupWrite(cpuset, "cpuset.cpus", CpuHandler.cpuList(mask: mask.data)))
        } else if replace, let cpuset = dirs.dir(.cpuset), let parent = cpuset.parent {
            // No mask means every CPU the parent may use (new v1 cpusets
            // start empty, so "inherit" must be written out).
            w.append(CgroupWrite(cpuset, "cpuset.cpus", try parent.read("cpuset.cpus").trimmingWhitespace))
        }
        return w
    }

    func currentClass(_ dir: CgroupDir) throws(LmctfyError) -> SchedulingLatency {
        dir.segments.first == "batch" ? .normal : .priority
    }

    func readSpec(_ dir: CgroupDir, dirs: ResourceDirs) throws(LmctfyError) -> CpuSpec {
        var cpu = CpuSpec()
        let shares = try dir.readInt("cpu.shares")
        cpu.limit = CpuHandler.milliCpu(shares: shares ?? CpuHandler.defaultShares)
        if let quota = try dir.readInt("cpu.cfs_quota_us") {
            if quota < 0 {
                // No quota: the original reports -1, which the uint64 field
                // shows as 18446744073709551615 (and we read back as "none").
                cpu.maxLimit = CpuHandler.unlimitedMaxLimit
            } else if let period = try dir.readInt("cpu.cfs_period_us"), period > 0 {
                cpu.maxLimit = UInt64(quota * 1000 / period)
            }
        }
        if let cpuset = dirs.dir(.cpuset) {
            let words = try CpuHandler.mask(cpuList: try cpuset.read("cpuset.cpus"))
            if !words.isEmpty { cpu.mask = CpuSpec.Mask(data: words) }
        }
        return cpu
    }

    func stats(_ dir: CgroupDir, dirs: ResourceDirs, type: StatsType) throws(LmctfyError) -> CpuStats {
        var s = CpuStats()
        var usage = CpuStats.Usage()
        if let acct = dirs.dir(.cpuacct) {
            if let total = try acct.readInt("cpuacct.usage") { usage.total = UInt64(max(0, total)) }
            if try acct.has("cpuacct.usage_percpu") {
                usage.perCpu = try acct.read("cpuacct.usage_percpu").split(whereSeparator: { $0 == " " || $0 == "\n" }).compactMap { Int64($0) }
            }
            // cpuacct.stat counts USER_HZ ticks; the original reports ns.
            let nsPerTick = Int64(1_000_000_000) / Int64(max(1, sysconf(Int32(_SC_CLK_TCK))))
            let ticks = try acct.readKeyValues("cpuacct.stat")
            usage.user = ticks["user"].map { $0 * nsPerTick }
            usage.system = ticks["system"].map { $0 * nsPerTick }
        }
        let cpuStat = try dir.has("cpu.stat") ? try dir.readKeyValues("cpu.stat") : [:]
        if type == .full, let periods = cpuStat["nr_periods"], let throttled = cpuStat["nr_throttled"],
           let time = cpuStat["throttled_time"] {
            s.throttlingData = ThrottlingData(periods: periods, throttledPeriods: throttled, throttledTime: time)
        }
        s.usage = usage
        return s
    }
}

struct MemoryFilesV1: MemoryFiles {
    var limit: String { "memory.limit_in_bytes" }
    var reservation: String { "memory.soft_limit_in_bytes" }
    var usage: String { "memory.usage_in_bytes" }
    var maxUsage: String { "memory.max_usage_in_bytes" }
    var swap: String { "memory.memsw.limit_in_bytes" }

    func format(_ v: Int64) -> String { Unlimited.isUnlimited(v) ? "-1" : String(v) }

    /// The kernel keeps memsw >= limit after every single write, so a limit
    /// that rises above the current memsw needs memsw raised first, and
    /// otherwise the limit goes first (so a memsw lowered below the old
    /// limit follows it).
    func planLimits(_ m: MemorySpec, replace: Bool, dir: CgroupDir) throws(LmctfyError) -> [CgroupWrite] {
        let hasSwap = try dir.has(swap)
        let newLimit = m.limit ?? (replace ? -1 : nil)
        let newTotal = m.swapLimit ?? (replace && hasSwap ? -1 : nil)
        let limitWrite = newLimit.map { CgroupWrite(dir, limit, format($0)) }
        let totalWrite = newTotal.map { CgroupWrite(dir, swap, format($0)) }
        // No memsw, or an unlimited new total written first: every single
        // write keeps memsw >= limit whatever the current values are, so
        // there is nothing to read (the common create path).
        if !hasSwap { return [limitWrite].compactMap { $0 } }
        if let newTotal, Unlimited.isUnlimited(newTotal) { return [totalWrite, limitWrite].compactMap { $0 } }
        let curLimit = try dir.readInt(limit) ?? -1
        let curTotal = try dir.readInt(swap) ?? -1
        try MemoryHandler.checkTotal(total: newTotal ?? curTotal, limit: newLimit ?? curLimit)
        let level = { (v: Int64) in Unlimited.isUnlimited(v) ? Int64.max : v }
        if let newLimit, level(newLimit) > level(curTotal) {
            return [totalWrite, limitWrite].compactMap { $0 }
        }
        return [limitWrite, totalWrite].compactMap { $0 }
    }

    func swapLimit(swapFile: Int64?, limit: Int64?) -> Int64 { swapFile ?? -1 }

    func stats(_ dir: CgroupDir, stat: [String: Int64], into s: inout MemoryStats) throws(LmctfyError) {
        s.hierarchicalMemoryLimit = stat["hierarchical_memory_limit"]
        s.failCount = try dir.readInt("memory.failcnt")
        s.containerData = MemoryHandler.memoryData(stat, prefix: "")
        s.hierarchicalData = MemoryHandler.memoryData(stat, prefix: "total_")
        s.workingSet = s.usage.map { max(0, $0 - (stat["total_inactive_file"] ?? 0)) }
        if try dir.has("memory.numa_stat") {
            s.numa = try MemoryHandler.numaStats(try dir.read("memory.numa_stat"))
        }
    }
}

struct BlockIoFilesV1: BlockIoFiles {
    var defaultWeightFile: String { "blkio.weight" }
    var deviceWeightFile: String { "blkio.weight_device" }
    var defaultWeightPrefix: String { "" }
    var defaultWeight: Int64 { 500 }
    /// Weight 0 removes a per-device rule.
    var deviceWeightReset: String { "0" }

    /// 1..100 onto the kernel's 10..1000.
    func kernelWeight(_ limit: UInt64) -> Int64 { Int64(limit) * 10 }
    func specWeight(_ kernel: Int64) -> UInt32 { UInt32(max(1, min(100, kernel / 10))) }
    func isDefaultWeightLine(_ fields: [Substring]) -> Bool { true }

    func throttleFile(_ t: BlockIoHandler.Throttle) -> String {
        switch t {
        case .readBps: "blkio.throttle.read_bps_device"
        case .readIops: "blkio.throttle.read_iops_device"
        case .writeBps: "blkio.throttle.write_bps_device"
        case .writeIops: "blkio.throttle.write_iops_device"
        }
    }

    /// One file per throttle; a rule of 0 removes it.
    func planThrottles(_ desired: [BlockIoHandler.Throttle: [DeviceNumber: UInt64]], replace: Bool,
                       dir: CgroupDir) throws(LmctfyError) -> [CgroupWrite] {
        var w: [CgroupWrite] = []
        for t in BlockIoHandler.Throttle.allCases {
            let file = throttleFile(t)
            let wanted = desired[t] ?? [:]
            if replace {
                for fields in try dir.readFields(file) {
                    guard let dev = DeviceNumber(fields[0]), wanted[dev] == nil else { continue }
                    w.append(CgroupWrite(dir, file, "\(dev) 0"))
                }
            }
            for (dev, v) in wanted.sorted(by: { $0.key < $1.key }) {
                w.append(CgroupWrite(dir, file, "\(dev) \(v)"))
            }
        }
        return w
    }

    func readThrottles(_ dir: CgroupDir) throws(LmctfyError) -> [BlockIoHandler.Throttle: [DeviceNumber: UInt64]] {
        var rules: [BlockIoHandler.Throttle: [DeviceNumber: UInt64]] = [:]
        for t in BlockIoHandler.Throttle.allCases {
            for fields in try dir.readFields(throttleFile(t)) {
                guard fields.count == 2, let dev = DeviceNumber(fields[0]), let v = UInt64(fields[1]) else { continue }
                rules[t, default: [:]][dev] = v
            }
        }
        return rules
    }

    /// "maj:min Read N" / "maj:min Write N" lines (plus Sync, Async,
    /// Discard, Total and a final "Total N", which are not kept).
    func deviceStats(_ dir: CgroupDir) throws(LmctfyError) -> [DeviceNumber: BlockIoStats.DeviceStats] {
        var byDevice: [DeviceNumber: BlockIoStats.DeviceStats] = [:]
        for (file, isBytes) in [("blkio.throttle.io_service_bytes", true), ("blkio.throttle.io_serviced", false)] {
            for fields in try dir.readFields(file) {
                guard fields.count == 3, let dev = DeviceNumber(fields[0]), let v = UInt64(fields[2]) else { continue }
                var e = byDevice[dev] ?? BlockIoStats.DeviceStats(dev)
                switch (fields[1], isBytes) {
                case ("Read", true): e.readBytes = v
                case ("Write", true): e.writeBytes = v
                case ("Read", false): e.readIos = v
                case ("Write", false): e.writeIos = v
                default: continue
                }
                byDevice[dev] = e
            }
        }
        return byDevice
    }
}
