// cpu: a share of the machine under contention (limit), a hard cap (CFS
// bandwidth, max_limit), which CPUs may run the container (mask) and its
// latency class. v1 spreads these over the cpu, cpuacct and cpuset
// hierarchies; v2 keeps them in the container's one directory, with weights
// instead of shares.
import Glibc
import LmctfyProto
import LmctfySystem

struct CpuHandler: ResourceHandler {
    var kind: ResourceKind { .cpu }

    /// lmctfy always runs CFS bandwidth with this period, so that a quota in
    /// µs is max_limit milliCPU × 250.
    static let cfsPeriodUs: Int64 = 250_000
    /// Kernel defaults a REPLACE returns to (D3).
    static let defaultShares: Int64 = 1024
    static let defaultWeight: Int64 = 100
    /// The kernel clamps v1 shares to this range; v2 weights map onto it.
    static let minShares: Int64 = 2
    static let maxShares: Int64 = 262_144
    /// The smallest quota the kernel accepts is 1000 µs, so 4 milliCPU.
    static let minMaxLimit: UInt64 = 4
    /// The CFS quota (µs per period) for a max_limit in milliCPU.
    static func quotaUs(_ maxLimit: UInt64) -> Int64 { Int64(maxLimit) * (cfsPeriodUs / 1000) }
    /// The largest CFS quota the kernel takes, in µs (its MAX_BW, 2^44 - 1).
    static let maxQuotaUs: Int64 = (1 << 44) - 1
    /// The CPUs this machine is configured with (ids 0 to this - 1).
    static let machineCpus = Int(sysconf(Int32(_SC_NPROCESSORS_CONF)))

    /// The original reports "no quota" as max_limit -1 in a uint64; we take
    /// that value back as "no quota" so a read-back spec can be reapplied.
    static let unlimitedMaxLimit = UInt64.max

    /// The latency class is chosen at create (it decides /batch placement on
    /// v1) and cannot change. The kernel cannot tell PRIORITY from PREMIER
    /// or NORMAL from BEST_EFFORT on v1, so lmctfy records the class itself.

    // MARK: Conversions

    /// milliCPU → v1 cpu.shares: 1000 milliCPU is one CPU's worth, 1024 shares.
    static func shares(milliCpu: UInt64) -> Int64 {
        let capped = Int64(min(milliCpu, UInt64(maxShares) * 1000 / 1024 + 1))
        return min(maxShares, max(minShares, capped * 1024 / 1000))
    }

    /// cpu.shares → milliCPU, rounded up: every limit from 2 to 256,000
    /// written with `shares(milliCpu:)` reads back as itself. The original
    /// rounded down, so only multiples of 125 survived, and a spec read
    /// back and applied again (a snapshot import, each migration) lost a
    /// milliCPU every time: 400, 399, 398...
    static func milliCpu(shares: Int64) -> UInt64 {
        shares < minShares ? 0 : (UInt64(shares) * 1000 + 1023) / 1024
    }

    /// v1 shares [2, 262144] → v2 weight [1, 10000], the mapping runc and
    /// crun use, so containers moved between runtimes keep their weight.
    static func weight(shares: Int64) -> Int64 {
        let s = min(maxShares, max(minShares, shares))
        return 1 + ((s - 2) * 9999) / 262_142
    }

    /// v2 weight → shares. A weight step spans about 26 shares, so this is
    /// approximate: it picks the smallest shares that map back to the same
    /// weight, which makes reapplying a read-back spec change nothing.
    static func shares(weight: Int64) -> Int64 {
        let w = min(10_000, max(1, weight))
        return 2 + ((w - 1) * 262_142 + 9998) / 9999
    }

    /// CPUs as a cpuset range list ("0-3,8"). The mask's last word holds CPUs
    /// 0–63, the one before it 64–127, and so on.
    static func cpuList(mask: [UInt64]) -> String {
        let cpus = Self.cpus(mask: mask)
        var ranges: [String] = []
        var i = 0
        while i < cpus.count {
            var j = i
            while j + 1 < cpus.count && cpus[j + 1] == cpus[j] + 1 { j += 1 }
            ranges.append(i == j ? "\(cpus[i])" : "\(cpus[i])-\(cpus[j])")
            i = j + 1
        }
        return ranges.joined(separator: ",")
    }

    /// The CPUs a mask selects, ascending.
    static func cpus(mask: [UInt64]) -> [Int] {
        var cpus: [Int] = []
        for (word, bits) in mask.reversed().enumerated() {
            for bit in 0..<64 where bits & (UInt64(1) << UInt64(bit)) != 0 { cpus.append(word * 64 + bit) }
        }
        return cpus
    }

    /// A cpuset range list → the mask representation (no leading zero words).
    static func mask(cpuList text: String) throws(LmctfyError) -> [UInt64] {
        mask(cpus: try cpus(cpuList: text))
    }

    /// The CPUs a cpuset range list names.
    static func cpus(cpuList text: String) throws(LmctfyError) -> [Int] {
        var cpus: [Int] = []
        for part in text.trimmingWhitespace.split(separator: ",") {
            let bounds = part.split(separator: "-", omittingEmptySubsequences: false)
            guard (1...2).contains(bounds.count), let lo = Int(bounds[0]), let hi = Int(bounds[bounds.count - 1]),
                  lo >= 0, lo <= hi, hi < 1 << 20 else {
                throw .failedPrecondition("Failed to parse \"\(text.trimmingWhitespace)\" as a cpuset list")
            }
            cpus += Array(lo...hi)
        }
        return cpus
    }

    /// CPUs → the mask representation (no leading zero words).
    static func mask(cpus: [Int]) -> [UInt64] {
        guard let highest = cpus.max() else { return [] }
        var words = [UInt64](repeating: 0, count: highest / 64 + 1)
        for cpu in cpus { words[words.count - 1 - cpu / 64] |= UInt64(1) << UInt64(cpu % 64) }
        return words
    }

    // MARK: Handler

    func validate(_ spec: ContainerSpec, dirs: ResourceDirs) throws(LmctfyError) {
        guard let cpu = spec.cpu else { return }
        try checkSpec(spec)
        if let mask = cpu.mask { try dirs.driver.cpu.checkMask(mask, dirs: dirs) }
        if let maxLimit = cpu.maxLimit { try dirs.driver.cpu.checkMaxLimit(maxLimit, dirs: dirs) }
        if let latency = cpu.schedulingLatency {
            try checkLatency(latency, dirs: dirs)
        }
    }

    func checkSpec(_ spec: ContainerSpec) throws(LmctfyError) {
        guard let cpu = spec.cpu else { return }
        if let maxLimit = cpu.maxLimit, maxLimit != Self.unlimitedMaxLimit {
            if maxLimit < Self.minMaxLimit {
                throw .invalidArgument("Requested max millicpu \(maxLimit) is too low. The minimum is \(Self.minMaxLimit).")
            }
            // The kernel's bound on a CFS quota (2^44 - 1 µs, its MAX_BW):
            // above it the write failed with 14 once the create had begun.
            if maxLimit > UInt64(Self.maxQuotaUs / (Self.cfsPeriodUs / 1000)) {
                throw .invalidArgument("Requested max millicpu \(maxLimit) is too high.")
            }
        }
        if let mask = cpu.mask {
            guard mask.data.contains(where: { $0 != 0 }) else {
                throw .invalidArgument("cpu.mask selects no CPU")
            }
            // A CPU the machine does not have: cpuset.cpus refused it (ERANGE,
            // 14) once the create had begun, and a dry run admitted it.
            // The first word with a bit set holds the highest CPU (the last
            // word holds CPUs 0-63).
            if let i = mask.data.firstIndex(where: { $0 != 0 }),
               case let highest = (mask.data.count - 1 - i) * 64 + 63 - mask.data[i].leadingZeroBitCount,
               highest >= Self.machineCpus {
                throw .invalidArgument("cpu.mask names CPU \(highest), and this machine has CPUs 0-\(Self.machineCpus - 1)")
            }
        }
    }

    /// A latency may only be the one the container was created with (and
    /// one the kernel state agrees with: v1's /batch placement, v2's cpu.idle).
    private func checkLatency(_ latency: SchedulingLatency, dirs: ResourceDirs) throws(LmctfyError) {
        guard let dir = ownerDir(dirs) else { return }
        if let recorded = try recordedLatency(dir), recorded != latency {
            throw .invalidArgument("cpu.scheduling_latency cannot be changed: \"\(dirs.container)\" is \(recorded.protoName), not \(latency.protoName)")
        }
        try dirs.driver.cpu.checkLatency(latency, dir: dir, dirs: dirs)
    }

    /// The directory with the cpu controller's files.
    private func ownerDir(_ dirs: ResourceDirs) -> CgroupDir? { dirs.dir(.cpu) }

    private func recordedLatency(_ dir: CgroupDir) throws(LmctfyError) -> SchedulingLatency? {
        guard let text = try dir.record(.schedulingLatency) else { return nil }
        return SchedulingLatency.allCases.first { $0.protoName == text }
    }

    func apply(_ spec: ContainerSpec, policy: UpdatePolicy, dirs: ResourceDirs) throws(LmctfyError) {
        guard let dir = ownerDir(dirs) else { throw .notFound("Container \"\(dirs.container)\" has no cpu cgroup") }
        let cpu = spec.cpu ?? CpuSpec()
        try plan(cpu, policy: policy, dirs: dirs, dir: dir).perform()
        // A directory the create just made has no record yet: no need to read.
        let unrecorded = dirs.isNew ? true : try recordedLatency(dir) == nil
        if unrecorded {
            let latency: SchedulingLatency
            if let given = cpu.schedulingLatency { latency = given } else { latency = try dirs.driver.cpu.currentClass(dir) }
            try dir.setRecord(.schedulingLatency, latency.protoName)
        }
    }

    func plannedWrites(_ spec: ContainerSpec, policy: UpdatePolicy, dirs: ResourceDirs) throws(LmctfyError) -> [CgroupWrite] {
        guard let dir = ownerDir(dirs) else { return [] }
        return try plan(spec.cpu ?? CpuSpec(), policy: policy, dirs: dirs, dir: dir)
    }

    /// The writes for a cpu slice, in order.
    func plan(_ cpu: CpuSpec, policy: UpdatePolicy, dirs: ResourceDirs, dir: CgroupDir) throws(LmctfyError) -> [CgroupWrite] {
        try dirs.driver.cpu.plan(cpu, replace: policy == .replace, dirs: dirs, dir: dir)
    }

    /// The latency class is the one recorded at create (v1 shows it only as
    /// the /batch placement, v2 only BEST_EFFORT as cpu.idle): a spec read
    /// back and given to a create (a copy, a migration's import) made a
    /// NORMAL container PRIORITY on v1. The original never reported it.
    func readSpec(into spec: inout ContainerSpec, dirs: ResourceDirs) throws(LmctfyError) {
        guard let dir = ownerDir(dirs) else { return }
        var cpu = try dirs.driver.cpu.readSpec(dir, dirs: dirs)
        if let recorded = try recordedLatency(dir) { cpu.schedulingLatency = recorded }
        spec.cpu = cpu
    }

    func stats(into stats: inout ContainerStats, type: StatsType, dirs: ResourceDirs) throws(LmctfyError) {
        guard let dir = ownerDir(dirs) else { return }
        var s = try dirs.driver.cpu.stats(dir, dirs: dirs, type: type)
        if try dir.has("cpu.nr_running"), let running = try dir.readInt("cpu.nr_running") {
            s.load = Int32(clamping: running)
        }
        stats.cpu = s
    }
}
