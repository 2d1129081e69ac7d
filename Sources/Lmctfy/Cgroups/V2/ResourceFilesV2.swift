// The resources' files on cgroup v2: cpu.weight (mapped from shares),
// cpu.max, cpuset.cpus and cpu.idle in the container's one directory;
// memory.max/low/swap.max with swap kept apart from memory; io.max and
// io.weight with one line per device.
import Glibc
import LmctfyProto
import LmctfySystem

struct CpuFilesV2: CpuFiles {
    /// v2 takes any cpu.max: a container runs under the smallest cap on
    /// its way up.
    func checkMaxLimit(_ maxLimit: UInt64, dirs: ResourceDirs) throws(LmctfyError) {}

    /// (v2 takes any CPUs: what the container may use is those its
    /// ancestors allow too, cpuset.cpus.effective.)
    func checkMask(_ mask: CpuSpec.Mask, dirs: ResourceDirs) throws(LmctfyError) {
        guard let dir = dirs.dir(.cpuset), try dir.has("cpuset.cpus") else {
            throw .unimplemented("cpu.mask needs the cpuset controller, which is not enabled for this container")
        }
    }

    func checkLatency(_ latency: SchedulingLatency, dir: CgroupDir, dirs: ResourceDirs) throws(LmctfyError) {
        if latency == .bestEffort, try !dir.has("cpu.idle") {
            throw .unimplemented("cpu.scheduling_latency BEST_EFFORT needs cpu.idle (Linux 5.15 or later) on cgroup v2")
        }
    }

    func plan(_ cpu: CpuSpec, replace: Bool, dirs: ResourceDirs, dir: CgroupDir) throws(LmctfyError) -> [CgroupWrite] {
        var w: [CgroupWrite] = []
        if let limit = cpu.limit {
            w.append(CgroupWrite(dir, "cpu.weight", String(CpuHandler.weight(shares: CpuHandler.shares(milliCpu: limit)))))
        } else if replace {
            w.append(CgroupWrite(dir, "cpu.weight", String(CpuHandler.defaultWeight)))
        }
        if let maxLimit = cpu.maxLimit, maxLimit != CpuHandler.unlimitedMaxLimit {
            w.append(CgroupWrite(dir, "cpu.max", "\(CpuHandler.quotaUs(maxLimit)) \(CpuHandler.cfsPeriodUs)"))
        } else if cpu.maxLimit != nil {
            w.append(CgroupWrite(dir, "cpu.max", "max \(CpuHandler.cfsPeriodUs)"))
        } else if replace {
            w.append(CgroupWrite(dir, "cpu.max", "max"))
        }
        if let mask = cpu.mask {
            w.append(CgroupWrite(dir, "cpuset.cpus", CpuHandler.cpuList(mask: mask.data)))
        } else if replace, try dir.has("cpuset.cpus") {
            // An empty cpuset.cpus on v2 means "whatever the parent has".
            w.append(CgroupWrite(dir, "cpuset.cpus", "\n"))
        }
        if cpu.schedulingLatency == .bestEffort {
            w.append(CgroupWrite(dir, "cpu.idle", "1"))
        }
        return w
    }

    func currentClass(_ dir: CgroupDir) throws(LmctfyError) -> SchedulingLatency {
        guard try dir.has("cpu.idle") else { return .priority }
        return try dir.readInt("cpu.idle") == 1 ? .bestEffort : .priority
    }

    func readSpec(_ dir: CgroupDir, dirs: ResourceDirs) throws(LmctfyError) -> CpuSpec {
        var cpu = CpuSpec()
        if try dir.has("cpu.weight") {
            let weight = try dir.readInt("cpu.weight")
            cpu.limit = CpuHandler.milliCpu(shares: CpuHandler.shares(weight: weight ?? CpuHandler.defaultWeight))
        }
        if try dir.has("cpu.max") {
            let fields = try dir.read("cpu.max").trimmingWhitespace.split(separator: " ")
            if fields.first == "max" {
                // No quota: reported as the original did (-1 in a uint64).
                cpu.maxLimit = CpuHandler.unlimitedMaxLimit
            } else if fields.count == 2, let quota = Int64(fields[0]), let period = Int64(fields[1]), period > 0 {
                cpu.maxLimit = UInt64(quota * 1000 / period)
            }
        }
        // An empty list means "inherited from the parent", which is no mask.
        if try dir.has("cpuset.cpus") {
            let words = try CpuHandler.mask(cpuList: try dir.read("cpuset.cpus"))
            if !words.isEmpty { cpu.mask = CpuSpec.Mask(data: words) }
        }
        // The one class v2 can show: the original never reports latency,
        // but an idle cgroup is plainly BEST_EFFORT.
        if try dir.has("cpu.idle"), try dir.readInt("cpu.idle") == 1 { cpu.schedulingLatency = .bestEffort }
        return cpu
    }

    func stats(_ dir: CgroupDir, dirs: ResourceDirs, type: StatsType) throws(LmctfyError) -> CpuStats {
        var s = CpuStats()
        var usage = CpuStats.Usage()
        let cpuStat = try dir.readKeyValues("cpu.stat")
        usage.total = cpuStat["usage_usec"].map { UInt64(max(0, $0)) * 1000 }
        usage.user = cpuStat["user_usec"].map { $0 * 1000 }
        usage.system = cpuStat["system_usec"].map { $0 * 1000 }
        if type == .full, let periods = cpuStat["nr_periods"], let throttled = cpuStat["nr_throttled"],
           let time = cpuStat["throttled_usec"] {
            s.throttlingData = ThrottlingData(periods: periods, throttledPeriods: throttled, throttledTime: time * 1000)
        }
        s.usage = usage
        return s
    }
}

struct MemoryFilesV2: MemoryFiles {
    var limit: String { "memory.max" }
    var reservation: String { "memory.low" }
    var usage: String { "memory.current" }
    var maxUsage: String { "memory.peak" }
    var swap: String { "memory.swap.max" }

    func format(_ v: Int64) -> String { Unlimited.isUnlimited(v) ? "max" : String(v) }

    /// v2 keeps swap apart from memory, so the total the spec asks for is
    /// split: memory.swap.max = swap_limit - limit. A DIFF that changes only
    /// the limit keeps the total, as it stays on v1.
    func planLimits(_ m: MemorySpec, replace: Bool, dir: CgroupDir) throws(LmctfyError) -> [CgroupWrite] {
        let hasSwap = try dir.has(swap)
        let newLimit = m.limit ?? (replace ? -1 : nil)
        let curLimit = try dir.readInt(limit) ?? -1
        let finalLimit = newLimit ?? curLimit
        var writes: [CgroupWrite] = []
        if let newLimit { writes.append(CgroupWrite(dir, limit, format(newLimit))) }

        var swapValue: Int64?
        if let total = m.swapLimit ?? (replace && hasSwap ? -1 : nil) {
            try MemoryHandler.checkTotal(total: total, limit: finalLimit)
            swapValue = Unlimited.isUnlimited(total) ? -1 : total - finalLimit
        } else if let newLimit, hasSwap, !Unlimited.isUnlimited(curLimit),
                  let curSwap = try dir.readInt(swap) {
            let total = curLimit + curSwap
            try MemoryHandler.checkTotal(total: total, limit: newLimit)
            swapValue = total - newLimit
        }
        if let swapValue { writes.append(CgroupWrite(dir, swap, format(swapValue))) }
        return writes
    }

    func swapLimit(swapFile: Int64?, limit: Int64?) -> Int64 {
        if let swapFile, let limit, limit >= 0 { return swapFile + limit }
        return -1
    }

    func stats(_ dir: CgroupDir, stat: [String: Int64], into s: inout MemoryStats) throws(LmctfyError) {
        s.hierarchicalMemoryLimit = try Self.hierarchicalLimit(dir)
        if try dir.has("memory.events") { s.failCount = try dir.readKeyValues("memory.events")["max"] }
        // v2 counters already include every descendant.
        s.containerData = Self.memoryData(stat)
        s.hierarchicalData = s.containerData
        s.workingSet = s.usage.map { max(0, $0 - (stat["inactive_file"] ?? 0)) }
    }

    /// memory.stat under v1's names. v2 has no pgpgin/pgpgout.
    static func memoryData(_ stat: [String: Int64]) -> MemoryStats.MemoryData {
        var d = MemoryStats.MemoryData()
        d.cache = stat["file"]; d.rss = stat["anon"]; d.rssHuge = stat["anon_thp"]; d.mappedFile = stat["file_mapped"]
        d.pgfault = stat["pgfault"]; d.pgmajfault = stat["pgmajfault"]
        d.dirty = stat["file_dirty"]; d.writeback = stat["file_writeback"]
        d.inactiveAnon = stat["inactive_anon"]; d.activeAnon = stat["active_anon"]
        d.inactiveFile = stat["inactive_file"]; d.activeFile = stat["active_file"]
        d.unevictable = stat["unevictable"]
        return d
    }

    /// v2 has no hierarchical_memory_limit: the tightest memory.max of the
    /// container and its ancestors (the root has none). -1 when none limits.
    static func hierarchicalLimit(_ dir: CgroupDir) throws(LmctfyError) -> Int64 {
        var tightest: Int64?
        var current: CgroupDir? = dir
        while let d = current, try d.has("memory.max") {
            if let v = try d.readInt("memory.max") { tightest = min(tightest ?? v, v) }
            current = d.parent
        }
        return tightest ?? -1
    }
}

struct BlockIoFilesV2: BlockIoFiles {
    var defaultWeightFile: String { "io.weight" }
    var deviceWeightFile: String { "io.weight" }
    var defaultWeightPrefix: String { "default " }
    var defaultWeight: Int64 { 100 }
    var deviceWeightReset: String { "default" }

    /// 1..100 onto the kernel's 100..10000.
    func kernelWeight(_ limit: UInt64) -> Int64 { Int64(limit) * 100 }
    func specWeight(_ kernel: Int64) -> UInt32 { UInt32(max(1, min(100, kernel / 100))) }
    func isDefaultWeightLine(_ fields: [Substring]) -> Bool { fields[0] == "default" }

    func throttleFile(_ t: BlockIoHandler.Throttle) -> String { "io.max" }

    /// The key of a throttle in io.max.
    static func key(_ t: BlockIoHandler.Throttle) -> String {
        switch t {
        case .readBps: "rbps"
        case .readIops: "riops"
        case .writeBps: "wbps"
        case .writeIops: "wiops"
        }
    }

    /// One io.max line per device. REPLACE spells out all four keys
    /// (unlisted ones as "max"), DIFF only the ones given.
    func planThrottles(_ desired: [BlockIoHandler.Throttle: [DeviceNumber: UInt64]], replace: Bool,
                       dir: CgroupDir) throws(LmctfyError) -> [CgroupWrite] {
        var devices = Set(desired.values.flatMap(\.keys))
        if replace { devices.formUnion(try Self.readIoMax(dir).keys) }
        return devices.sorted().map { dev in
            let parts: [String] = BlockIoHandler.Throttle.allCases.compactMap { t in
                let v = desired[t]?[dev]
                if v == nil && !replace { return nil }
                return "\(Self.key(t))=\(v.map { $0 == 0 ? "max" : String($0) } ?? "max")"
            }
            return CgroupWrite(dir, "io.max", "\(dev) \(parts.joined(separator: " "))")
        }
    }

    /// io.max: "maj:min rbps=N wbps=max riops=max wiops=max" per limited device.
    static func readIoMax(_ dir: CgroupDir) throws(LmctfyError) -> [DeviceNumber: [BlockIoHandler.Throttle: UInt64]] {
        var out: [DeviceNumber: [BlockIoHandler.Throttle: UInt64]] = [:]
        for fields in try dir.readFields("io.max") {
            guard let dev = DeviceNumber(fields[0]) else { continue }
            var limits: [BlockIoHandler.Throttle: UInt64] = [:]
            for kv in fields.dropFirst() {
                let parts = kv.split(separator: "=")
                guard parts.count == 2, let t = BlockIoHandler.Throttle.allCases.first(where: { key($0) == parts[0] }),
                      let v = UInt64(parts[1]) else { continue }
                limits[t] = v
            }
            out[dev] = limits
        }
        return out
    }

    func readThrottles(_ dir: CgroupDir) throws(LmctfyError) -> [BlockIoHandler.Throttle: [DeviceNumber: UInt64]] {
        var rules: [BlockIoHandler.Throttle: [DeviceNumber: UInt64]] = [:]
        for (dev, limits) in try Self.readIoMax(dir) {
            for (t, v) in limits { rules[t, default: [:]][dev] = v }
        }
        return rules
    }

    /// io.stat: "maj:min rbytes=N wbytes=N rios=N wios=N ..." per device.
    func deviceStats(_ dir: CgroupDir) throws(LmctfyError) -> [DeviceNumber: BlockIoStats.DeviceStats] {
        var byDevice: [DeviceNumber: BlockIoStats.DeviceStats] = [:]
        for fields in try dir.readFields("io.stat") {
            guard let dev = DeviceNumber(fields[0]) else { continue }
            var e = byDevice[dev] ?? BlockIoStats.DeviceStats(dev)
            for kv in fields.dropFirst() {
                let parts = kv.split(separator: "=")
                guard parts.count == 2, let v = UInt64(parts[1]) else { continue }
                switch parts[0] {
                case "rbytes": e.readBytes = v
                case "wbytes": e.writeBytes = v
                case "rios": e.readIos = v
                case "wios": e.writeIos = v
                default: continue
                }
            }
            byDevice[dev] = e
        }
        return byDevice
    }
}
