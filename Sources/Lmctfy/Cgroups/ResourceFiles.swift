// What each resource handler asks of a cgroup version: which files carry
// its settings, how values are spelled there, and how statistics are read.
// The handlers (Resources/) keep what does not depend on the version
// (validation of spec values, unit conversions, the order of decisions);
// these protocols are implemented once per version, beside its driver
// (Cgroups/V1, Cgroups/V2).
import LmctfyProto
import LmctfySystem

/// The cpu resource's files.
protocol CpuFiles: Sendable {
    /// Refuses cpu.mask when this container cannot get this one.
    func checkMask(_ mask: CpuSpec.Mask, dirs: ResourceDirs) throws(LmctfyError)
    /// Refuses a max_limit (milliCPU) the kernel would refuse for this
    /// container against its ancestors' and its subcontainers' caps.
    func checkMaxLimit(_ maxLimit: UInt64, dirs: ResourceDirs) throws(LmctfyError)
    /// Refuses a latency class the kernel state contradicts (beyond lmctfy's record).
    func checkLatency(_ latency: SchedulingLatency, dir: CgroupDir, dirs: ResourceDirs) throws(LmctfyError)
    /// The writes for a cpu slice, in order.
    func plan(_ cpu: CpuSpec, replace: Bool, dirs: ResourceDirs, dir: CgroupDir) throws(LmctfyError) -> [CgroupWrite]
    /// The class of a container that has no record: what the kernel state says.
    func currentClass(_ dir: CgroupDir) throws(LmctfyError) -> SchedulingLatency
    func readSpec(_ dir: CgroupDir, dirs: ResourceDirs) throws(LmctfyError) -> CpuSpec
    func stats(_ dir: CgroupDir, dirs: ResourceDirs, type: StatsType) throws(LmctfyError) -> CpuStats
}

/// The memory resource's files.
protocol MemoryFiles: Sendable {
    /// Hard limit, reservation, usage, peak usage, and the swap file (v1:
    /// the memory+swap total; v2: swap alone).
    var limit: String { get }
    var reservation: String { get }
    var usage: String { get }
    var maxUsage: String { get }
    var swap: String { get }
    /// How a byte limit is written (unlimited is -1 on v1, "max" on v2).
    func format(_ v: Int64) -> String
    /// The limit and swap writes, in an order the kernel accepts.
    func planLimits(_ m: MemorySpec, replace: Bool, dir: CgroupDir) throws(LmctfyError) -> [CgroupWrite]
    /// The spec's swap_limit (a memory+swap total) from the swap file's value.
    func swapLimit(swapFile: Int64?, limit: Int64?) -> Int64
    /// The version-specific memory statistics (failures, breakdowns, working set).
    func stats(_ dir: CgroupDir, stat: [String: Int64], into s: inout MemoryStats) throws(LmctfyError)
}

/// The blockio resource's files.
protocol BlockIoFiles: Sendable {
    /// The overall and per-device weight files (the same file on v2).
    var defaultWeightFile: String { get }
    var deviceWeightFile: String { get }
    /// What the overall weight value starts with ("default " on v2).
    var defaultWeightPrefix: String { get }
    /// The kernel's default weight, which a REPLACE returns to (D3).
    var defaultWeight: Int64 { get }
    /// What a per-device weight is reset with.
    var deviceWeightReset: String { get }
    /// A spec weight 1..100 on the kernel's range, and back.
    func kernelWeight(_ limit: UInt64) -> Int64
    func specWeight(_ kernel: Int64) -> UInt32
    /// Whether a line of the overall weight file holds the overall weight.
    func isDefaultWeightLine(_ fields: [Substring]) -> Bool
    /// The file a throttle is written to.
    func throttleFile(_ t: BlockIoHandler.Throttle) -> String
    /// The throttle writes: the desired rules, and with `replace` every
    /// other rule reset.
    func planThrottles(_ desired: [BlockIoHandler.Throttle: [DeviceNumber: UInt64]], replace: Bool,
                       dir: CgroupDir) throws(LmctfyError) -> [CgroupWrite]
    /// The throttles in force.
    func readThrottles(_ dir: CgroupDir) throws(LmctfyError) -> [BlockIoHandler.Throttle: [DeviceNumber: UInt64]]
    /// Bytes and operations per device.
    func deviceStats(_ dir: CgroupDir) throws(LmctfyError) -> [DeviceNumber: BlockIoStats.DeviceStats]
}

extension BlockIoStats.DeviceStats {
    init(_ dev: DeviceNumber) { self.init(major: dev.major, minor: dev.minor) }
}
