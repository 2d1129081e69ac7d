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

    /// The kernel's default weights, which a REPLACE returns to (D3).
    static let v1DefaultWeight: Int64 = 500
    static let v2DefaultWeight: Int64 = 100
    /// A spec weight 1..100 is scaled onto the kernel's range: v1 10..1000,
    /// v2 100..10000.
    static let weightRange: ClosedRange<UInt64> = 1...100
    static func kernelWeight(_ limit: UInt64, _ version: CgroupVersion) -> Int64 {
        Int64(limit) * (version == .v1 ? 10 : 100)
    }
    static func specWeight(_ kernel: Int64, _ version: CgroupVersion) -> UInt32 {
        UInt32(max(1, min(100, kernel / (version == .v1 ? 10 : 100))))
    }

    /// One throttle: an operation and a unit, with its v1 file and v2 key.
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

        var v1File: String {
            switch self {
            case .readBps: "blkio.throttle.read_bps_device"
            case .readIops: "blkio.throttle.read_iops_device"
            case .writeBps: "blkio.throttle.write_bps_device"
            case .writeIops: "blkio.throttle.write_iops_device"
            }
        }

        var v2Key: String {
            switch self {
            case .readBps: "rbps"
            case .readIops: "riops"
            case .writeBps: "wbps"
            case .writeIops: "wiops"
            }
        }
    }

    // MARK: Validate

    func validate(_ spec: ContainerSpec, dirs: ResourceDirs) throws(LmctfyError) {
        guard let b = spec.blockio else { return }
        let dir = dirs.dir(.blkio)
        let has = { (file: String) in dir?.has(file) == true }
        if let set = b.deviceLimitSet {
            if let d = set.defaultLimit, !Self.weightRange.contains(UInt64(d)) {
                throw .invalidArgument("blockio.device_limit_set.default_limit must be within 1..100, not \(d)")
            }
            for dl in set.deviceLimits {
                _ = try Self.device(dl, field: "blockio.device_limit_set.device_limits")
                guard let l = dl.limit, Self.weightRange.contains(l) else {
                    throw .invalidArgument("blockio.device_limit_set.device_limits: every limit must be within 1..100")
                }
            }
            let needed: [String] = switch dirs.version {
            case .v1: (set.defaultLimit != nil ? ["blkio.weight"] : []) + (set.deviceLimits.isEmpty ? [] : ["blkio.weight_device"])
            case .v2: set.defaultLimit != nil || !set.deviceLimits.isEmpty ? ["io.weight"] : []
            }
            for file in needed where !has(file) {
                throw .unimplemented("blockio.device_limit_set (I/O weights) is not supported here: \(file) is missing (the block devices' I/O scheduler implements no cgroup weights)")
            }
        }
        if let set = b.maxDeviceLimitSet {
            for ml in set.maxLimits {
                guard let op = ml.opType, let type = ml.limitType else {
                    throw .invalidArgument("blockio.max_device_limit_set: every max_limits entry needs op_type and limit_type")
                }
                for dl in ml.limits {
                    _ = try Self.device(dl, field: "blockio.max_device_limit_set.max_limits.limits")
                    if dl.limit == nil {
                        throw .invalidArgument("blockio.max_device_limit_set.max_limits.limits: every entry needs a limit")
                    }
                }
                let file = dirs.version == .v1 ? Throttle(op, type).v1File : "io.max"
                if !ml.limits.isEmpty && !has(file) {
                    throw .unimplemented("blockio.max_device_limit_set is not supported here: \(file) is missing")
                }
            }
        }
    }

    static func device(_ dl: BlockIoSpec.DeviceLimit, field: String) throws(LmctfyError) -> DeviceNumber {
        guard let d = dl.device, let major = d.major, let minor = d.minor, major >= 0, minor >= 0 else {
            throw .invalidArgument("\(field): every entry needs a device with major and minor numbers")
        }
        return DeviceNumber(major: major, minor: minor)
    }

    // MARK: Apply

    func apply(_ spec: ContainerSpec, policy: UpdatePolicy, dirs: ResourceDirs) throws(LmctfyError) {
        guard let dir = dirs.dir(.blkio) else { throw .notFound("Container \"\(dirs.container)\" has no blkio cgroup") }
        try plan(spec.blockio ?? BlockIoSpec(), policy: policy, dir: dir, version: dirs.version).perform()
    }

    /// The writes for a blockio slice, in order: weights, then throttles.
    func plan(_ b: BlockIoSpec, policy: UpdatePolicy, dir: CgroupDir, version: CgroupVersion) throws(LmctfyError) -> [CgroupWrite] {
        let replace = policy == .replace
        return try planWeights(b.deviceLimitSet, replace: replace, dir: dir, version: version)
            + planThrottles(b.maxDeviceLimitSet, replace: replace, dir: dir, version: version)
    }

    private func planWeights(_ set: BlockIoSpec.DeviceLimitSet?, replace: Bool, dir: CgroupDir,
                             version: CgroupVersion) throws(LmctfyError) -> [CgroupWrite] {
        var w: [CgroupWrite] = []
        var desired: [DeviceNumber: Int64] = [:]
        for dl in set?.deviceLimits ?? [] {
            desired[try Self.device(dl, field: "blockio.device_limit_set.device_limits")] = Self.kernelWeight(dl.limit!, version)
        }
        let (defaultFile, deviceFile) = version == .v1 ? ("blkio.weight", "blkio.weight_device") : ("io.weight", "io.weight")
        let prefix = version == .v1 ? "" : "default "
        if let d = set?.defaultLimit {
            w.append(CgroupWrite(dir, defaultFile, prefix + String(Self.kernelWeight(UInt64(d), version))))
        } else if replace && dir.has(defaultFile) {
            w.append(CgroupWrite(dir, defaultFile, prefix + String(version == .v1 ? Self.v1DefaultWeight : Self.v2DefaultWeight)))
        }
        if replace {
            // Per-device weights not in the spec go back to the default:
            // weight 0 removes the rule on v1, "default" on v2.
            for fields in try dir.readFields(deviceFile) {
                guard let dev = DeviceNumber(fields[0]), desired[dev] == nil else { continue }
                w.append(CgroupWrite(dir, deviceFile, "\(dev) \(version == .v1 ? "0" : "default")"))
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

    private func planThrottles(_ set: BlockIoSpec.MaxLimitSet?, replace: Bool, dir: CgroupDir,
                               version: CgroupVersion) throws(LmctfyError) -> [CgroupWrite] {
        var w: [CgroupWrite] = []
        let desired = try Self.desiredThrottles(set)
        switch version {
        case .v1:
            for t in Throttle.allCases {
                let wanted = desired[t] ?? [:]
                if replace {
                    for fields in try dir.readFields(t.v1File) {
                        guard let dev = DeviceNumber(fields[0]), wanted[dev] == nil else { continue }
                        w.append(CgroupWrite(dir, t.v1File, "\(dev) 0"))
                    }
                }
                for (dev, v) in wanted.sorted(by: { $0.key < $1.key }) {
                    w.append(CgroupWrite(dir, t.v1File, "\(dev) \(v)"))
                }
            }
        case .v2:
            var devices = Set(desired.values.flatMap(\.keys))
            if replace { devices.formUnion(try Self.readIoMax(dir).keys) }
            for dev in devices.sorted() {
                // REPLACE spells out all four keys (unlisted ones as "max"),
                // DIFF only the ones given.
                let parts: [String] = Throttle.allCases.compactMap { t in
                    let v = desired[t]?[dev]
                    if v == nil && !replace { return nil }
                    return "\(t.v2Key)=\(v.map { $0 == 0 ? "max" : String($0) } ?? "max")"
                }
                w.append(CgroupWrite(dir, "io.max", "\(dev) \(parts.joined(separator: " "))"))
            }
        }
        return w
    }

    /// v2 io.max: "maj:min rbps=N wbps=max riops=max wiops=max" per limited device.
    static func readIoMax(_ dir: CgroupDir) throws(LmctfyError) -> [DeviceNumber: [Throttle: UInt64]] {
        var out: [DeviceNumber: [Throttle: UInt64]] = [:]
        for fields in try dir.readFields("io.max") {
            guard let dev = DeviceNumber(fields[0]) else { continue }
            var limits: [Throttle: UInt64] = [:]
            for kv in fields.dropFirst() {
                let parts = kv.split(separator: "=")
                guard parts.count == 2, let t = Throttle.allCases.first(where: { $0.v2Key == parts[0] }),
                      let v = UInt64(parts[1]) else { continue }
                limits[t] = v
            }
            out[dev] = limits
        }
        return out
    }

    // MARK: Spec

    func readSpec(into spec: inout ContainerSpec, dirs: ResourceDirs) throws(LmctfyError) {
        guard let dir = dirs.dir(.blkio) else { return }
        let version = dirs.version
        var b = BlockIoSpec()

        let (defaultFile, deviceFile) = version == .v1 ? ("blkio.weight", "blkio.weight_device") : ("io.weight", "io.weight")
        if dir.has(defaultFile) {
            var set = BlockIoSpec.DeviceLimitSet()
            for fields in try dir.readFields(defaultFile) where version == .v1 || fields[0] == "default" {
                if let w = Int64(fields[fields.count - 1]) { set.defaultLimit = Self.specWeight(w, version) }
            }
            for fields in try dir.readFields(deviceFile) {
                guard fields.count == 2, let dev = DeviceNumber(fields[0]), let w = Int64(fields[1]) else { continue }
                set.deviceLimits.append(BlockIoSpec.DeviceLimit(
                    device: BlockIoSpec.Device(major: dev.major, minor: dev.minor),
                    limit: UInt64(Self.specWeight(w, version))))
            }
            b.deviceLimitSet = set
        }

        var rules: [Throttle: [DeviceNumber: UInt64]] = [:]
        switch version {
        case .v1:
            for t in Throttle.allCases {
                for fields in try dir.readFields(t.v1File) {
                    guard fields.count == 2, let dev = DeviceNumber(fields[0]), let v = UInt64(fields[1]) else { continue }
                    rules[t, default: [:]][dev] = v
                }
            }
        case .v2:
            for (dev, limits) in try Self.readIoMax(dir) {
                for (t, v) in limits { rules[t, default: [:]][dev] = v }
            }
        }
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
        var byDevice: [DeviceNumber: BlockIoStats.DeviceStats] = [:]
        func entry(_ dev: DeviceNumber) -> BlockIoStats.DeviceStats {
            byDevice[dev] ?? BlockIoStats.DeviceStats(major: dev.major, minor: dev.minor)
        }
        switch dirs.version {
        case .v1:
            // "maj:min Read N" / "maj:min Write N" lines (plus Sync, Async,
            // Discard, Total and a final "Total N", which are not kept).
            for (file, isBytes) in [("blkio.throttle.io_service_bytes", true), ("blkio.throttle.io_serviced", false)] {
                for fields in try dir.readFields(file) {
                    guard fields.count == 3, let dev = DeviceNumber(fields[0]), let v = UInt64(fields[2]) else { continue }
                    var e = entry(dev)
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
        case .v2:
            for fields in try dir.readFields("io.stat") {
                guard let dev = DeviceNumber(fields[0]) else { continue }
                var e = entry(dev)
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
        }
        stats.blockio = BlockIoStats(deviceStats: byDevice.sorted(by: { $0.key < $1.key }).map(\.value))
    }
}
