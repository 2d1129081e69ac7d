// blockio (D11: the original had this code but never registered it):
// proportional I/O weights, overall and per device, and per-device
// throttles on bytes or operations per second, read and write apart.
// Weights need an I/O scheduler that implements them (v1 blkio.weight is
// CFQ's; v2 io.weight needs BFQ or io.cost); without one the field is
// refused, never dropped. Throttles work on every block device.
import Glibc
import LmctfyProto
import LmctfySystem

struct BlockIoHandler: ResourceHandler {
    var kind: ResourceKind { .blockio }

    /// A spec weight is 1..100; each version scales it onto its kernel's range.
    static let weightRange: ClosedRange<UInt64> = 1...100

    /// One throttle: an operation and a unit (each version names its file
    /// or key).
    enum Throttle: CaseIterable {
        case readBps, readIops, writeBps, writeIops

        init(_ op: BlockIoSpec.OpType, _ type: BlockIoSpec.LimitType) {
            switch (op, type) {
            case (.read, .bytesPerSecond): self = .readBps
            case (.read, .ioPerSecond): self = .readIops
            case (.write, .bytesPerSecond): self = .writeBps
            case (.write, .ioPerSecond): self = .writeIops
            }
        }

        var op: BlockIoSpec.OpType { self == .readBps || self == .readIops ? .read : .write }
        var limitType: BlockIoSpec.LimitType { self == .readBps || self == .writeBps ? .bytesPerSecond : .ioPerSecond }

    }

    // MARK: Validate

    func validate(_ spec: ContainerSpec, dirs: ResourceDirs) throws(LmctfyError) {
        guard let b = spec.blockio else { return }
        try checkSpec(spec)
        let dir = dirs.dir(.blkio)
        let has = { (file: String) throws(LmctfyError) -> Bool in try dir?.has(file) == true }
        if let set = b.deviceLimitSet {
            let files = dirs.driver.blockio
            let needed = Set((set.defaultLimit != nil ? [files.defaultWeightFile] : [])
                + (set.deviceLimits.isEmpty ? [] : [files.deviceWeightFile]))
            for file in needed.sorted() where try !has(file) {
                throw .unimplemented("blockio.device_limit_set (I/O weights) is not supported here: \(file) is missing (the block devices' I/O scheduler implements no cgroup weights)")
            }
        }
        for ml in b.maxDeviceLimitSet?.maxLimits ?? [] {
            guard let op = ml.opType, let type = ml.limitType else { continue }  // refused by checkSpec
            let file = dirs.driver.blockio.throttleFile(Throttle(op, type))
            if !ml.limits.isEmpty, try !has(file) {
                throw .unimplemented("blockio.max_device_limit_set is not supported here: \(file) is missing")
            }
        }
    }

    func checkSpec(_ spec: ContainerSpec) throws(LmctfyError) {
        guard let b = spec.blockio else { return }
        if let set = b.deviceLimitSet {
            if let d = set.defaultLimit, !Self.weightRange.contains(UInt64(d)) {
                throw .invalidArgument("blockio.device_limit_set.default_limit must be within 1..100, not \(d)")
            }
            // A device given twice had its last value written, silently
            // (the CLI probe): which one was meant cannot be told.
            var seen = Set<DeviceNumber>()
            for dl in set.deviceLimits {
                let d = try Self.device(dl, field: "blockio.device_limit_set.device_limits")
                guard let l = dl.limit, Self.weightRange.contains(l) else {
                    throw .invalidArgument("blockio.device_limit_set.device_limits: every limit must be within 1..100")
                }
                guard seen.insert(d).inserted else {
                    throw .invalidArgument("blockio.device_limit_set.device_limits: device \(d) is given twice")
                }
            }
        }
        var seen: [Throttle: Set<DeviceNumber>] = [:]
        for ml in b.maxDeviceLimitSet?.maxLimits ?? [] {
            guard let op = ml.opType, let type = ml.limitType else {
                throw .invalidArgument("blockio.max_device_limit_set: every max_limits entry needs op_type and limit_type")
            }
            for dl in ml.limits {
                let d = try Self.device(dl, field: "blockio.max_device_limit_set.max_limits.limits")
                if dl.limit == nil {
                    throw .invalidArgument("blockio.max_device_limit_set.max_limits.limits: every entry needs a limit")
                }
                guard seen[Throttle(op, type), default: []].insert(d).inserted else {
                    throw .invalidArgument("blockio.max_device_limit_set: device \(d) has two limits of the same op_type and limit_type")
                }
            }
        }
    }

    static func device(_ dl: BlockIoSpec.DeviceLimit, field: String) throws(LmctfyError) -> DeviceNumber {
        guard let d = dl.device, let major = d.major, let minor = d.minor else {
            throw .invalidArgument("\(field): every entry needs a device with major and minor numbers")
        }
        // The kernel reads each as an unsigned 32-bit number: 4294967550
        // wrapped to 254, another device (a probe).
        let range = Int64(0)...Int64(UInt32.max)
        guard range.contains(major), range.contains(minor) else {
            throw .invalidArgument("\(field): device \(major):\(minor) is out of range (major and minor are 0 to \(UInt32.max))")
        }
        return DeviceNumber(major: major, minor: minor)
    }

    // MARK: Apply

    func apply(_ spec: ContainerSpec, policy: UpdatePolicy, dirs: ResourceDirs) throws(LmctfyError) {
        guard let dir = dirs.dir(.blkio) else { throw .notFound("Container \"\(dirs.container)\" has no blkio cgroup") }
        try plan(spec.blockio ?? BlockIoSpec(), policy: policy, dirs: dirs, dir: dir).perform()
    }

    func plannedWrites(_ spec: ContainerSpec, policy: UpdatePolicy, dirs: ResourceDirs) throws(LmctfyError) -> [CgroupWrite] {
        guard let dir = dirs.dir(.blkio) else { return [] }
        return try plan(spec.blockio ?? BlockIoSpec(), policy: policy, dirs: dirs, dir: dir)
    }

    /// The writes for a blockio slice, in order: weights, then throttles.
    func plan(_ b: BlockIoSpec, policy: UpdatePolicy, dirs: ResourceDirs, dir: CgroupDir) throws(LmctfyError) -> [CgroupWrite] {
        let replace = policy == .replace
        let files = dirs.driver.blockio
        return try planWeights(b.deviceLimitSet, replace: replace, dir: dir, files: files)
            + files.planThrottles(Self.desiredThrottles(b.maxDeviceLimitSet), replace: replace, dir: dir)
    }

    private func planWeights(_ set: BlockIoSpec.DeviceLimitSet?, replace: Bool, dir: CgroupDir,
                             files: any BlockIoFiles) throws(LmctfyError) -> [CgroupWrite] {
        var w: [CgroupWrite] = []
        var desired: [DeviceNumber: Int64] = [:]
        for dl in set?.deviceLimits ?? [] {
            desired[try Self.device(dl, field: "blockio.device_limit_set.device_limits")] = files.kernelWeight(dl.limit!)
        }
        let (defaultFile, deviceFile) = (files.defaultWeightFile, files.deviceWeightFile)
        if let d = set?.defaultLimit {
            w.append(CgroupWrite(dir, defaultFile, files.defaultWeightPrefix + String(files.kernelWeight(UInt64(d)))))
        } else if replace, try dir.has(defaultFile) {
            w.append(CgroupWrite(dir, defaultFile, files.defaultWeightPrefix + String(files.defaultWeight)))
        }
        if replace {
            // Per-device weights not in the spec go back to the default.
            for fields in try dir.readFields(deviceFile) {
                guard let dev = DeviceNumber(fields[0]), desired[dev] == nil else { continue }
                w.append(CgroupWrite(dir, deviceFile, "\(dev) \(files.deviceWeightReset)"))
            }
        }
        for (dev, weight) in desired.sorted(by: { $0.key < $1.key }) {
            w.append(CgroupWrite(dir, deviceFile, "\(dev) \(weight)"))
        }
        return w
    }

    /// The throttles a spec asks for; a later entry for the same device and
    /// throttle wins. A limit of 0 means "no limit" on both versions.
    static func desiredThrottles(_ set: BlockIoSpec.MaxLimitSet?) throws(LmctfyError) -> [Throttle: [DeviceNumber: UInt64]] {
        var out: [Throttle: [DeviceNumber: UInt64]] = [:]
        for ml in set?.maxLimits ?? [] {
            guard let op = ml.opType, let type = ml.limitType else { continue }
            for dl in ml.limits {
                out[Throttle(op, type), default: [:]][try device(dl, field: "blockio.max_device_limit_set")] = dl.limit ?? 0
            }
        }
        return out
    }

    // MARK: Spec

    func readSpec(into spec: inout ContainerSpec, dirs: ResourceDirs) throws(LmctfyError) {
        guard let dir = dirs.dir(.blkio) else { return }
        let files = dirs.driver.blockio
        var b = BlockIoSpec()

        if try dir.has(files.defaultWeightFile) {
            var set = BlockIoSpec.DeviceLimitSet()
            for fields in try dir.readFields(files.defaultWeightFile) where files.isDefaultWeightLine(fields) {
                if let w = Int64(fields[fields.count - 1]) { set.defaultLimit = files.specWeight(w) }
            }
            for fields in try dir.readFields(files.deviceWeightFile) {
                guard fields.count == 2, let dev = DeviceNumber(fields[0]), let w = Int64(fields[1]) else { continue }
                set.deviceLimits.append(BlockIoSpec.DeviceLimit(
                    device: BlockIoSpec.Device(major: dev.major, minor: dev.minor),
                    limit: UInt64(files.specWeight(w))))
            }
            b.deviceLimitSet = set
        }

        let rules = try files.readThrottles(dir)
        let maxLimits = Throttle.allCases.compactMap { t -> BlockIoSpec.MaxLimit? in
            guard let devs = rules[t], !devs.isEmpty else { return nil }
            let limits = devs.sorted(by: { $0.key < $1.key }).map {
                BlockIoSpec.DeviceLimit(device: BlockIoSpec.Device(major: $0.key.major, minor: $0.key.minor), limit: $0.value)
            }
            return BlockIoSpec.MaxLimit(limits: limits, opType: t.op, limitType: t.limitType)
        }
        if !maxLimits.isEmpty { b.maxDeviceLimitSet = BlockIoSpec.MaxLimitSet(maxLimits: maxLimits) }
        spec.blockio = b
    }

    // MARK: Stats

    func stats(into stats: inout ContainerStats, type: StatsType, dirs: ResourceDirs) throws(LmctfyError) {
        guard let dir = dirs.dir(.blkio) else { return }
        let byDevice = try dirs.driver.blockio.deviceStats(dir)
        stats.blockio = BlockIoStats(deviceStats: byDevice.sorted(by: { $0.key < $1.key }).map(\.value))
    }
}
