// pids: the number of tasks a container may hold (an lmctfy-swift addition,
// field 14 of ContainerSpec). v1 and v2 share the file names.
import LmctfyProto
import LmctfySystem

struct PidsHandler: ResourceHandler {
    var kind: ResourceKind { .pids }

    /// The kernel's PID_MAX_LIMIT (4M on 64-bit): pids.max refuses more.
    static let maxLimit: Int64 = 4 * 1024 * 1024

    func validate(_ spec: ContainerSpec, dirs: ResourceDirs) throws(LmctfyError) { try checkSpec(spec) }

    func checkSpec(_ spec: ContainerSpec) throws(LmctfyError) {
        if let limit = spec.pids?.limit, limit < -1 || limit == 0 || limit > Self.maxLimit {
            throw .invalidArgument("pids.limit must be -1 (unlimited) or 1 to \(Self.maxLimit) (the kernel's PID_MAX_LIMIT), not \(limit)")
        }
    }

    func apply(_ spec: ContainerSpec, policy: UpdatePolicy, dirs: ResourceDirs) throws(LmctfyError) {
        guard dirs.dir(.pids) != nil else { throw .notFound("Container \"\(dirs.container)\" has no pids cgroup") }
        try plannedWrites(spec, policy: policy, dirs: dirs).perform()
    }

    func plannedWrites(_ spec: ContainerSpec, policy: UpdatePolicy, dirs: ResourceDirs) throws(LmctfyError) -> [CgroupWrite] {
        guard let dir = dirs.dir(.pids), let limit = spec.pids?.limit ?? (policy == .replace ? -1 : nil) else { return [] }
        return [CgroupWrite(dir, "pids.max", limit < 0 ? "max" : String(limit))]
    }

    func readSpec(into spec: inout ContainerSpec, dirs: ResourceDirs) throws(LmctfyError) {
        guard let dir = dirs.dir(.pids) else { return }
        spec.pids = PidsSpec(limit: try dir.readInt("pids.max") ?? -1)
    }

    func stats(into stats: inout ContainerStats, type: StatsType, dirs: ResourceDirs) throws(LmctfyError) {
        guard let dir = dirs.dir(.pids) else { return }
        var s = PidsStats()
        s.current = try dir.readInt("pids.current")
        s.limit = try dir.readInt("pids.max") ?? -1
        if try dir.has("pids.events") { s.failCount = try dir.readKeyValues("pids.events")["max"] }
        stats.pids = s
    }
}
