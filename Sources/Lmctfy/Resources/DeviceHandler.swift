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

    /// The writes that take the container from the rules it has to those
    /// `d` asks for. REPLACE starts from nothing rather than from what the
    /// parent allowed (D3); DIFF from what it has.
    ///
    /// When both what it has and what it is to have are lists of allowed
    /// devices (the usual: a container's devices.list without "a"), only
    /// the difference is written, each rule's access taken away (deny)
    /// then each new one given (allow): no device it keeps is denied for
    /// a moment (a REPLACE denied everything first, so a process opening
    /// /dev/null in the container failed while an update that changed
    /// nothing ran), and the v1 kernel, which refuses "a" (every device)
    /// in a cgroup with children with EINVAL, is not asked for it (every
    /// REPLACE of a parent failed, and a failed update of one could not
    /// put its rules back; a probe).
    ///
    /// Otherwise (it allows every device, or is to): one write per rule in
    /// the spec's order, REPLACE denying everything first. A write of "a"
    /// to a container with children is refused before anything is written.
    func plan(_ d: DeviceSpec, policy: UpdatePolicy, dir: CgroupDir) throws(LmctfyError) -> [CgroupWrite] {
        let rules = d.restrictionsSet?.restrictions ?? []
        var lines: [(allow: Bool, line: String)] = []
        for r in rules { lines.append((r.permission != .deny, try Self.line(r))) }
        if let has = try? Allowed(listed: dir.readFields("devices.list")),
           let wanted = try Allowed.after(lines, from: policy == .replace ? Allowed() : has) {
            return has.changes(to: wanted).map { CgroupWrite(dir, $0.allow ? "devices.allow" : "devices.deny", $0.line) }
        }
        // The lines after the last deny of every device (a REPLACE starts
        // with one) make a list of allowed devices from nothing: a deny
        // among them that the kernel would not apply is refused as above.
        if let start = policy == .replace ? 0 : lines.lastIndex(where: { !$0.allow && $0.line.hasPrefix("a ") }).map({ $0 + 1 }) {
            _ = try Allowed.after(Array(lines[start...]), from: Allowed())
        }
        var w: [CgroupWrite] = policy == .replace ? [CgroupWrite(dir, "devices.deny", "a")] : []
        for (allow, line) in lines {
            w.append(CgroupWrite(dir, allow ? "devices.allow" : "devices.deny", line))
        }
        if w.contains(where: { $0.value.hasPrefix("a") }), dir.mayHaveSubdirectories(), !(try dir.subdirectories()).isEmpty {
            throw .failedPrecondition("Cannot allow or deny every device (\"a\") in \(dir.path) while it has subcontainers "
                                      + "(the kernel refuses it): name the devices, or change the rules before making subcontainers")
        }
        return w
    }

    /// A devices.list that allows only what it lists (no "a" line): each
    /// "type major:minor" with its access letters.
    struct Allowed: Equatable {
        private(set) var access: [String: Set<Character>] = [:]

        init() {}

        /// nil when the list allows every device ("a *:* rwm": what it
        /// denies then is not shown).
        init?(listed: [[Substring]]) {
            for fields in listed {
                guard fields.count == 3, fields[0] != "a" else { return nil }
                access["\(fields[0]) \(fields[1])", default: []].formUnion(fields[2])
            }
        }

        /// The list after `lines` are written to `from`, as the kernel
        /// keeps it: an allow adds its access to the rule of the same type
        /// and numbers (or makes it), a deny takes its access away from
        /// that rule only, "a" denied empties the list. nil when a line
        /// allows every device (no longer a list of allowed devices).
        ///
        /// A deny whose devices overlap an allowed rule of other numbers
        /// ("c 1:3 w" with "c 1:* rw" allowed, or "c 1:* w" with "c 1:3 w")
        /// and shares some of its access is refused: the kernel would keep
        /// that rule whole, so the deny would change nothing the spec
        /// says it does (it reported success, /dev/null still writable; a
        /// probe).
        static func after(_ lines: [(allow: Bool, line: String)], from: Allowed) throws(LmctfyError) -> Allowed? {
            var list = from
            for (allow, line) in lines {
                let parts = line.split(separator: " ")
                guard parts.count == 3 else { return nil }
                if parts[0] == "a" {
                    guard !allow else { return nil }
                    list.access = [:]
                    continue
                }
                let key = "\(parts[0]) \(parts[1])"
                if !allow, let (wider, has) = list.overlapping(type: parts[0], numbers: parts[1], access: Set(parts[2])) {
                    throw .invalidArgument("Cannot deny \"\(line)\" while \"\(wider) \(has)\" is allowed: the v1 devices controller "
                                           + "takes a deny away only from a rule of the same numbers, so it would change nothing "
                                           + "(deny \"\(wider) \(has)\" and allow again what is to stay)")
                }
                if allow {
                    list.access[key, default: []].formUnion(parts[2])
                } else if var had = list.access[key] {
                    had.subtract(parts[2])
                    list.access[key] = had.isEmpty ? nil : had
                }
            }
            return list
        }

        /// An allowed rule of the same type and other numbers that covers
        /// some of the devices "major:minor" names, or is covered by them,
        /// with some of `access`: its "type major:minor" and its letters.
        func overlapping(type: Substring, numbers: Substring, access: Set<Character>) -> (String, String)? {
            let deny = numbers.split(separator: ":", omittingEmptySubsequences: false)
            for key in self.access.keys.sorted() {
                let parts = key.split(separator: " ")
                guard parts.count == 2, parts[0] == type, parts[1] != numbers else { continue }
                let rule = parts[1].split(separator: ":", omittingEmptySubsequences: false)
                guard rule.count == 2, deny.count == 2 else { continue }
                let meets = zip(rule, deny).allSatisfy { $0 == $1 || $0 == "*" || $1 == "*" }
                let letters = self.access[key]!
                if meets, !letters.isDisjoint(with: access) { return (key, String("rwm".filter(letters.contains))) }
            }
            return nil
        }

        /// The lines that take this list to `wanted`: the access each rule
        /// loses (denies) first, then what each gains (allows); sorted.
        func changes(to wanted: Allowed) -> [(allow: Bool, line: String)] {
            func letters(_ set: Set<Character>) -> String { String("rwm".filter(set.contains)) }
            var out: [(allow: Bool, line: String)] = []
            for key in access.keys.sorted() {
                let lost = access[key]!.subtracting(wanted.access[key] ?? [])
                if !lost.isEmpty { out.append((false, "\(key) \(letters(lost))")) }
            }
            for key in wanted.access.keys.sorted() {
                let gained = wanted.access[key]!.subtracting(access[key] ?? [])
                if !gained.isEmpty { out.append((true, "\(key) \(letters(gained))")) }
            }
            return out
        }
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
