// Where a container lives in each hierarchy. This is the only code that maps
// names onto cgroup directories:
//  v1: freezer, memory, devices, blkio, pids, cpuset, perf_event mirror the
//      name (<mount>/a/b; cpuset and perf_event too, D8). cpu and cpuacct put a
//      top-level container with latency NORMAL or BEST_EFFORT under /batch;
//      a nested one goes under its parent's cpu directory.
//  v2: one directory, <unified>/a/b, for everything.
import Glibc
import LmctfyProto
import LmctfySystem

struct Layout: Sendable {
    let mounts: CgroupMounts
    let version: CgroupVersion
    let procRoot: String

    /// xattr recording, on v2, which resources a container isolates (v2 has
    /// one directory for all of them; v1 knows from which directories exist).
    static let isolatedXattr = "trusted.lmctfy.resources"

    init(mounts: CgroupMounts, procRoot: String) throws(LmctfyError) {
        guard let version = mounts.version else {
            throw .notFound("lmctfy requires a canonical tasks cgroup hierarchy (cgroup v1 freezer or cgroup2), none were found")
        }
        self.mounts = mounts
        self.version = version
        self.procRoot = procRoot
    }

    func root(_ c: Controller) -> CgroupDir? {
        mounts.v1[c].map { CgroupDir(mount: $0, segments: [], version: .v1) }
    }

    var unifiedRoot: CgroupDir? {
        mounts.unified.map { CgroupDir(mount: $0, segments: [], version: .v2) }
    }

    /// The directory that says a container exists: v1 freezer, v2 unified.
    func tasksDir(_ name: ContainerName) -> CgroupDir {
        switch version {
        case .v1: CgroupDir(mount: mounts.v1[.freezer]!, segments: name.components, version: .v1)
        case .v2: CgroupDir(mount: mounts.unified!, segments: name.components, version: .v2)
        }
    }

    /// Whether c shares its mount with a controller that owns the directory
    /// (cpuacct co-mounted with cpu): it then never mkdirs or rmdirs.
    func isCoMountedFollower(_ c: Controller) -> Bool {
        guard let m = mounts.v1[c] else { return false }
        return Controller.allCases.contains { $0 < c && mounts.v1[$0] == m }
    }

    /// The existing v1 directory of controller c for this container, if any.
    func existingV1Dir(_ c: Controller, _ name: ContainerName) -> CgroupDir? {
        candidates(c, name).first { $0.exists }
    }

    /// Where c's directory is or would be, most likely first.
    func candidates(_ c: Controller, _ name: ContainerName) -> [CgroupDir] {
        guard let mount = mounts.v1[c] else { return [] }
        let plain = CgroupDir(mount: mount, segments: name.components, version: .v1)
        guard c == .cpu || c == .cpuacct, !name.isRoot else { return [plain] }
        if name.depth == 1 { return [plain, CgroupDir(mount: mount, segments: ["batch"] + name.components, version: .v1)] }
        guard let parent = name.parent, let parentDir = existingV1Dir(c, parent) else { return [plain] }
        return [parentDir.child(name.basename)]
    }

    /// Where a new container's directory of controller c goes.
    func newV1Dir(_ c: Controller, _ name: ContainerName, spec: ContainerSpec) throws(LmctfyError) -> CgroupDir? {
        guard let mount = mounts.v1[c] else { return nil }
        guard c == .cpu || c == .cpuacct else {
            return CgroupDir(mount: mount, segments: name.components, version: .v1)
        }
        if name.depth == 1 {
            let latency = spec.cpu?.schedulingLatency
            let batch = latency == .normal || latency == .bestEffort
            if batch && !CgroupDir(mount: mount, segments: ["batch"], version: .v1).exists {
                throw .failedPrecondition("The cpu /batch cgroup does not exist; run \"lmctfy init\" first")
            }
            return CgroupDir(mount: mount, segments: (batch ? ["batch"] : []) + name.components, version: .v1)
        }
        guard let parent = name.parent, let parentDir = existingV1Dir(c, parent) else {
            throw .notFound("Container \(name.parent!) does not isolate cpu, so \(name) cannot")
        }
        return parentDir.child(name.basename)
    }

    /// Which resources a container isolates.
    func isolated(_ name: ContainerName) -> Set<ResourceKind> {
        if name.isRoot { return Set(ResourceKind.allCases.filter { available($0) }) }
        switch version {
        case .v1:
            return Set(ResourceKind.allCases.filter { kind in
                guard let owner = kind.v1Controllers.first, mounts.v1[owner] != nil else { return false }
                return existingV1Dir(owner, name) != nil
            })
        case .v2:
            let dir = tasksDir(name)
            guard let record = try? Sys.getxattr(dir.path, Self.isolatedXattr) else {
                return Set(ResourceKind.allCases.filter { available($0) })
            }
            return Set(record.split(separator: ",").compactMap { s in ResourceKind.allCases.first { $0.description == s } })
        }
    }

    /// Whether this machine can isolate the resource at all.
    func available(_ kind: ResourceKind) -> Bool {
        switch version {
        case .v1:
            return kind.v1Controllers.first.map { mounts.v1[$0] != nil } ?? false
        case .v2:
            if kind == .device { return false }
            let controllers = (try? unifiedRoot?.read("cgroup.controllers")) ?? ""
            let have = Set(controllers.split(whereSeparator: { $0 == " " || $0 == "\n" }).map(String.init))
            return kind.v2Controllers.allSatisfy { have.contains($0) }
        }
    }

    /// The directories a handler works on for a container: its own where it
    /// isolates the resource (v1), or the one unified directory (v2).
    func resourceDirs(_ name: ContainerName) -> ResourceDirs {
        switch version {
        case .v1:
            var dirs: [Controller: CgroupDir] = [:]
            for c in Controller.allCases {
                if let d = existingV1Dir(c, name) { dirs[c] = d }
            }
            return ResourceDirs(version: .v1, container: name, v1: dirs, procRoot: procRoot)
        case .v2:
            return ResourceDirs(version: .v2, container: name, unified: tasksDir(name), procRoot: procRoot)
        }
    }
}
