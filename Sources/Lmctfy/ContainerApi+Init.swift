// Preparing a machine (`lmctfy init`): mounting the hierarchies an InitSpec
// names, refusing conflicts, then what the cgroup version needs.
import Glibc
import LmctfyProto
import LmctfySystem

extension ContainerApi {
    /// Mounts the hierarchies an InitSpec asks for (refusing conflicts), then
    /// prepares the machine: /batch for latency classes (v1), controllers
    /// enabled at the root (v2). Idempotent.
    /// `access` is the real kernel's unless a test works on a fake tree.
    public static func initMachine(_ spec: InitSpec, procRoot: String = "/proc",
                                   access: CgroupAccess = .kernel) throws(LmctfyError) -> ContainerApi {
        var mounts = try CgroupMounts.detect(procRoot: procRoot, access: access)
        // The whole spec is checked before anything is made or mounted: a
        // relative mount_path made its directories at / and mounted below
        // the current directory, and a hierarchy named twice was found
        // only after the first mount (a probe).
        var asked: [(path: String, wanted: [Controller])] = []
        var named: Set<Controller> = []
        for m in spec.cgroupMount {
            guard var path = m.mountPath, !path.isEmpty else { throw .invalidArgument("cgroup_mount needs a mount_path") }
            let parts = path.split(separator: "/")
            guard path.hasPrefix("/"), !parts.contains("."), !parts.contains("..") else {
                throw .invalidArgument("cgroup_mount's mount_path must be an absolute path without . or .. segments, not \"\(path)\"")
            }
            while path.count > 1 && path.hasSuffix("/") { path.removeLast() }
            var wanted: [Controller] = []
            for h in m.hierarchy {
                guard let c = Controller(hierarchy: h) else {
                    throw .invalidArgument("Unknown or unsupported cgroup hierarchy \(h.protoName)")
                }
                guard named.insert(c).inserted else { throw .invalidArgument("Hierarchy \(h.protoName) is named by two cgroup_mounts") }
                wanted.append(c)
            }
            guard !wanted.isEmpty else { throw .invalidArgument("cgroup_mount at \(path) names no hierarchy") }
            asked.append((path, wanted))
        }
        // Every conflict with what is mounted, and between the spec's own
        // mounts, before the first is made.
        var planned: [(path: String, wanted: [Controller])] = []
        for (path, wanted) in asked {
            let here = Set(mounts.v1.filter { $0.value == path }.keys)
            if !here.isEmpty {
                guard here == Set(wanted) else {
                    throw .invalidArgument("Non-specified hierarchies are already mounted at \(path)")
                }
                continue
            }
            guard !planned.contains(where: { $0.path == path }) else {
                throw .invalidArgument("Two cgroup_mounts name \(path): its hierarchies are given in one")
            }
            for c in wanted where mounts.v1[c] != nil {
                throw .invalidArgument("Hierarchy \(c.rawValue) is already mounted at \(mounts.v1[c]!), not \(path)")
            }
            planned.append((path, wanted))
        }
        // A mount that fails undoes the ones made before it, and the
        // directories made for them: init leaves the machine as it found
        // it, not half mounted.
        var made: [(path: String, dirs: [String])] = []
        for (path, wanted) in planned {
            var dirs: [String] = []
            do {
                if !Sys.isDirectory(path) { try makeDirs(path, made: &dirs) }
                try mountHierarchies(wanted, at: path, access: access)
            } catch {
                for d in dirs.reversed() { _ = try? Sys.rmdir(d) }
                for m in made.reversed() {
                    unmount(m.path, access: access)
                    for d in m.dirs.reversed() { _ = try? Sys.rmdir(d) }
                }
                let undone = made.isEmpty ? "" : " (\(made.map(\.path).joined(separator: ", ")), mounted before it, unmounted again)"
                throw error.lmctfy(.failedPrecondition, "Failed to mount cgroup hierarchies at \(path)\(undone)")
            }
            made.append((path, dirs))
            for c in wanted { mounts.v1[c] = path }
        }
        let api = try ContainerApi(mounts: mounts, procRoot: procRoot)
        try api.prepareMachine()
        return api
    }

    /// mkdir -p, adding each directory it made to `made`.
    private static func makeDirs(_ path: String, made: inout [String]) throws(SystemError) {
        var current = ""
        for part in path.split(separator: "/") {
            current += "/" + part
            if !Sys.isDirectory(current) {
                try Sys.mkdir(current)
                made.append(current)
            }
        }
    }

    /// mount(2) of a v1 hierarchy; on a fake tree only the fault plan sees it.
    private static func mountHierarchies(_ wanted: [Controller], at path: String, access: CgroupAccess) throws(SystemError) {
        if let e = access.faults?.check(.mount, path) { throw SystemError("mount", path, e) }
        guard access.verifiesFilesystem else { return }
        try Sys.mount(source: "cgroup", target: path, type: "cgroup", data: wanted.map(\.rawValue).joined(separator: ","))
    }

    /// Undoes `mountHierarchies` (best effort: the failure being reported
    /// is the mount's).
    private static func unmount(_ path: String, access: CgroupAccess) {
        if access.faults?.check(.umount, path) != nil { return }
        if access.verifiesFilesystem { umount2(path, 0) }
    }

    /// /batch for latency classes (v1), controllers enabled at the root (v2).
    func prepareMachine() throws(LmctfyError) {
        try driver.prepareMachine()
    }
}

extension Controller {
    init?(hierarchy: CgroupHierarchy) {
        switch hierarchy {
        case .cgroupCpu: self = .cpu
        case .cgroupCpuacct: self = .cpuacct
        case .cgroupCpuset: self = .cpuset
        case .cgroupFreezer: self = .freezer
        case .cgroupMemory: self = .memory
        case .cgroupDevice: self = .devices
        case .cgroupBlockio: self = .blkio
        case .cgroupPerfEvent: self = .perfEvent
        case .cgroupPids: self = .pids
        default: return nil
        }
    }
}
