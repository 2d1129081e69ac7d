// device: which device nodes the container may read, write or create,
// through the v1 devices controller's allow/deny lists. cgroup v2 has no
// such files (it takes an eBPF program), which lmctfy does not build yet.
import Glibc
import LmctfyProto
import LmctfySystem

struct DeviceHandler: ResourceHandler {
    var kind: ResourceKind { .device }

    typealias Rule = DeviceSpec.DeviceRestrictions

    /// Without the devices controller's files (cgroup v2 takes an eBPF
    /// program instead) there is nothing to write the rules to.
    static let v2Refusal = "device rules need eBPF on cgroup v2, not implemented"

    /// A rule as the kernel takes it: "<a|c|b> <major|*>:<minor|*> <rwm>".
    /// Access letters always come in r, w, m order. An absent major or
    /// minor (or -1) is "any"; any other negative number is refused, not
    /// widened to "any" (a typo must not grant every device of a minor).
    static func line(_ r: Rule) throws(LmctfyError) -> String {
        guard r.permission != nil, let type = r.type, (1...3).contains(r.access.count),
              Set(r.access).count == r.access.count else {
            throw .invalidArgument("Invalid device restriction specification.")
        }
        for (field, value) in [("major", r.major), ("minor", r.minor)] {
            if let v = value, v < -1 || v > Int64(UInt32.max) {
                throw .invalidArgument("Invalid device restriction specification: \(field) \(v) (a device number, or -1 or absent for any)")
            }
        }
        // The kernel reads "a" as every device with every access, whatever
        // follows it: a narrower DEVICE_ALL rule granted everything.
        if type == .deviceAll, Set(r.access).count < 3 || (r.major ?? -1) >= 0 || (r.minor ?? -1) >= 0 {
            throw .invalidArgument("Invalid device restriction specification: a DEVICE_ALL rule covers every device "
                                   + "with READ, WRITE and MKNOD (name a type, major and minor for less)")
        }
        let typeChar = switch type {
        case .deviceAll: "a"
        case .deviceChar: "c"
        case .deviceBlock: "b"
        }
        let access = Set(r.access)
        let letters = [(DeviceSpec.DeviceAccess.read, "r"), (.write, "w"), (.mknod, "m")]
            .filter { access.contains($0.0) }.map(\.1).joined()
        let number = { (v: Int64?) in v.map { $0 < 0 ? "*" : String($0) } ?? "*" }
        return "\(typeChar) \(number(r.major)):\(number(r.minor)) \(letters)"
    }

    func validate(_ spec: ContainerSpec, dirs: ResourceDirs) throws(LmctfyError) {
        guard spec.device != nil else { return }
        if dirs.dir(.devices) == nil { throw .unimplemented(Self.v2Refusal) }
        try checkSpec(spec)
    }

    func checkSpec(_ spec: ContainerSpec) throws(LmctfyError) {
        // Every rule is checked before any is written.
        for r in spec.device?.restrictionsSet?.restrictions ?? [] { _ = try Self.line(r) }
    }

    func apply(_ spec: ContainerSpec, policy: UpdatePolicy, dirs: ResourceDirs) throws(LmctfyError) {
        guard let dir = dirs.dir(.devices) else { throw .unimplemented(Self.v2Refusal) }
        try plan(spec.device ?? DeviceSpec(), policy: policy, dir: dir).perform()
    }

    func plannedWrites(_ spec: ContainerSpec, policy: UpdatePolicy, dirs: ResourceDirs) throws(LmctfyError) -> [CgroupWrite] {
        guard let dir = dirs.dir(.devices) else { return [] }
        return try plan(spec.device ?? DeviceSpec(), policy: policy, dir: dir)
    }

    /// One write per rule, in the spec's order. REPLACE starts from nothing
    /// rather than from what the parent allowed (D3): deny everything first.
    func plan(_ d: DeviceSpec, policy: UpdatePolicy, dir: CgroupDir) throws(LmctfyError) -> [CgroupWrite] {
        var w: [CgroupWrite] = policy == .replace ? [CgroupWrite(dir, "devices.deny", "a")] : []
        for r in d.restrictionsSet?.restrictions ?? [] {
            w.append(CgroupWrite(dir, r.permission == .deny ? "devices.deny" : "devices.allow", try Self.line(r)))
        }
        return w
    }

    /// devices.list holds only what is allowed, so every line is an ALLOW
    /// rule; an empty list means everything is denied.
    func readSpec(into spec: inout ContainerSpec, dirs: ResourceDirs) throws(LmctfyError) {
        guard let dir = dirs.dir(.devices) else { return }
        var rules: [Rule] = []
        for fields in try dir.readFields("devices.list") {
            guard fields.count == 3 else {
                throw .failedPrecondition("Failed to parse devices.list line \"\(fields.joined(separator: " "))\" of \(dir.path)")
            }
            let type: DeviceSpec.DeviceType
            switch fields[0] {
            case "a": type = .deviceAll
            case "c": type = .deviceChar
            case "b": type = .deviceBlock
            default: throw .failedPrecondition("Unknown device type \"\(fields[0])\" in devices.list of \(dir.path)")
            }
            let numbers = fields[1].split(separator: ":", omittingEmptySubsequences: false)
            guard numbers.count == 2 else {
                throw .failedPrecondition("Failed to parse device numbers \"\(fields[1])\" in devices.list of \(dir.path)")
            }
            var access: [DeviceSpec.DeviceAccess] = []
            if fields[2].contains("m") { access.append(.mknod) }
            if fields[2].contains("r") { access.append(.read) }
            if fields[2].contains("w") { access.append(.write) }
            rules.append(Rule(permission: .allow, type: type, access: access,
                              major: Int64(numbers[0]), minor: Int64(numbers[1])))
        }
        if rules.isEmpty {
            rules = [Rule(permission: .deny, type: .deviceAll, access: [.read, .write, .mknod])]
        }
        spec.device = DeviceSpec(restrictionsSet: DeviceSpec.DeviceRestrictionsSet(restrictions: rules))
    }

    func stats(into stats: inout ContainerStats, type: StatsType, dirs: ResourceDirs) throws(LmctfyError) {}
}
