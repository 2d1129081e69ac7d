// CL1's facade: containers named like paths, created, updated, inspected and
// destroyed on real cgroups. cgroupfs is the only state: two ContainerApi
// instances (or two processes) see the same containers.
import Glibc
import LmctfyProto
import LmctfySystem

/// Thread-safety: a ContainerApi is immutable and may be shared between
/// threads. Operations on the same container from several threads or
/// processes are not serialised (the kernel decides, as in the original).
public final class ContainerApi: Sendable {
    public let mounts: CgroupMounts
    public let version: CgroupVersion
    let layout: Layout
    let handlers: [ResourceKind: any ResourceHandler]
    let procRoot: String

    /// An API over the given hierarchies. `procRoot` is /proc, or a fake in tests.
    public init(mounts: CgroupMounts, procRoot: String = "/proc") throws(LmctfyError) {
        self.mounts = mounts
        self.layout = try Layout(mounts: mounts, procRoot: procRoot)
        self.version = layout.version
        self.procRoot = procRoot
        self.handlers = ResourceHandlers.all
    }

    /// An API over this machine's mounted hierarchies (from /proc/self/mountinfo).
    public static func detect(procRoot: String = "/proc") throws(LmctfyError) -> ContainerApi {
        try ContainerApi(mounts: try CgroupMounts.detect(procRoot: procRoot), procRoot: procRoot)
    }

    // MARK: Names

    /// Resolves a name given by a user, relative to this process's container.
    public func resolve(_ name: String) throws(LmctfyError) -> ContainerName {
        let base = name.hasPrefix("/") ? ContainerName.root : try detect(pid: 0)
        return try ContainerName.resolve(name, relativeTo: base)
    }

    /// The cgroup directories a container has now.
    public func resourceDirs(_ name: ContainerName) -> ResourceDirs {
        layout.resourceDirs(name)
    }

    public func exists(_ name: ContainerName) -> Bool {
        name.isRoot || layout.tasksDir(name).exists
    }

    /// The container with this name; NOT_FOUND if it does not exist.
    public func get(_ name: String) throws(LmctfyError) -> Container {
        try get(resolve(name))
    }

    public func get(_ name: ContainerName) throws(LmctfyError) -> Container {
        guard exists(name) else { throw .notFound("Container \"\(name)\" does not exist") }
        return Container(name: name, api: self)
    }

    /// The container a task (pid or tid; 0 = this process) is in.
    public func detect(pid: pid_t) throws(LmctfyError) -> ContainerName {
        let file = procRoot + "/" + (pid == 0 ? "self" : String(pid)) + "/cgroup"
        let text: String
        do {
            text = try Sys.readFile(file)
        } catch {
            throw error.lmctfy(.notFound, "Could not detect the container for TID \(pid)")
        }
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            guard parts.count == 3 else { continue }
            let matches = switch version {
            case .v1: parts[1].split(separator: ",").contains("freezer")
            case .v2: parts[0] == "0" && parts[1].isEmpty
            }
            guard matches else { continue }
            let path = String(parts[2])
            guard path.hasPrefix("/") else { break }
            do {
                return try ContainerName.resolve(path, relativeTo: .root)
            } catch {
                throw .failedPrecondition("TID \(pid) is in cgroup \"\(path)\", which is not a valid container name")
            }
        }
        throw .notFound("Could not detect the container for TID \(pid)")
    }

    // MARK: Create

    /// Creates a container isolating the resources its spec names. All or
    /// nothing (D4): on any failure every directory made is removed again.
    @discardableResult
    public func create(_ name: String, spec: ContainerSpec) throws(LmctfyError) -> Container {
        try create(try resolve(name), spec: spec)
    }

    @discardableResult
    public func create(_ name: ContainerName, spec: ContainerSpec) throws(LmctfyError) -> Container {
        if name.isRoot || exists(name) { throw .alreadyExists("Can't create existing container \"\(name)\"") }
        guard let parent = name.parent, exists(parent) else {
            throw .notFound("Can't create \"\(name)\": its parent \"\(name.parent!)\" does not exist")
        }
        try checkSupported(spec, isUpdate: false)
        let kinds = ResourceKind.allCases.filter { $0.isPresent(in: spec) }
        // A nested container can only isolate what its parent isolates (v1
        // nests directories; v2 enables controllers parent by parent).
        let parentIsolates = layout.isolated(parent)
        for kind in kinds where !parentIsolates.contains(kind) {
            let message = "Container \"\(parent)\" does not isolate \(kind), so \"\(name)\" cannot"
            throw kind == .cpu ? .notFound(message) : .failedPrecondition(message)
        }

        var made: [CgroupDir] = []
        do throws(LmctfyError) {
            switch version {
            case .v1:
                try makeDir(layout.tasksDir(name), &made)
                for kind in kinds {
                    for c in kind.v1Controllers where !layout.isCoMountedFollower(c) {
                        guard let dir = try layout.newV1Dir(c, name, spec: spec) else { continue }
                        try makeDir(dir, &made)
                        if c == .cpuset { try inheritCpuset(dir) }
                    }
                }
            case .v2:
                try enableControllers(in: layout.tasksDir(parent), for: kinds)
                try makeDir(layout.tasksDir(name), &made)
                let record = kinds.map(\.description).joined(separator: ",")
                do {
                    try Sys.setxattr(layout.tasksDir(name).path, Layout.isolatedXattr, record)
                } catch {
                    throw error.lmctfy(.failedPrecondition, "Failed to record the isolated resources of \"\(name)\"")
                }
            }
            // The directories just made are the container's: no need to
            // look for them again.
            var dirs = version == .v2 ? layout.resourceDirs(name) : v1Dirs(made, name)
            dirs.isNew = true
            for kind in kinds {
                let h = try handler(kind)
                try h.validate(spec, dirs: dirs)
                try h.prepare(dirs: dirs)
                try h.apply(spec, policy: .replace, dirs: dirs)
            }
            if spec.owner != nil || spec.ownerGroup != nil {
                try chownContainer(name, spec: spec)
            }
        } catch {
            for dir in made.reversed() { try? Sys.rmdir(dir.path) }
            throw error
        }
        return Container(name: name, api: self)
    }

    /// ResourceDirs for directories known to exist (co-mounted followers
    /// share their owner's directory).
    private func v1Dirs(_ made: [CgroupDir], _ name: ContainerName) -> ResourceDirs {
        var byMount: [String: CgroupDir] = [:]
        for d in made { byMount[d.mount] = d }
        var dirs: [Controller: CgroupDir] = [:]
        for (c, mount) in mounts.v1 {
            if let d = byMount[mount] { dirs[c] = d }
        }
        return ResourceDirs(version: .v1, container: name, v1: dirs, procRoot: procRoot)
    }

    private func makeDir(_ dir: CgroupDir, _ made: inout [CgroupDir]) throws(LmctfyError) {
        do {
            try Sys.mkdir(dir.path)
        } catch {
            if error.errno == EEXIST { throw error.lmctfy(.alreadyExists, "Failed to create cgroup") }
            throw error.lmctfy(.failedPrecondition, "Failed to create cgroup")
        }
        made.append(dir)
    }

    /// A new v1 cpuset starts with no cpus and mems; copy the parent's mems
    /// (D8), so tasks can join it. Its cpus are written by the cpu handler
    /// (the mask, or the parent's cpus), which runs next in the same create;
    /// a cpuset.cpus write is one of the dearest cgroup writes.
    private func inheritCpuset(_ dir: CgroupDir) throws(LmctfyError) {
        guard let parent = dir.parent else { return }
        for file in ["cpuset.mems"] {
            let value = try parent.read(file).trimmingWhitespace
            try dir.write(file, value.isEmpty ? "\n" : value)
        }
    }

    /// v2: a child can only use controllers its parent enables for it.
    func enableControllers(in parent: CgroupDir, for kinds: [ResourceKind]) throws(LmctfyError) {
        let available = Set(try parent.read("cgroup.controllers").split(whereSeparator: { $0 == " " || $0 == "\n" }).map(String.init))
        let enabled = Set(try parent.read("cgroup.subtree_control").split(whereSeparator: { $0 == " " || $0 == "\n" }).map(String.init))
        for kind in kinds {
            for c in kind.v2Controllers where !enabled.contains(c) {
                guard available.contains(c) else {
                    throw .unimplemented("The \(c) controller is not available in \(parent.path), so \(kind) cannot be isolated")
                }
                do {
                    try Sys.writeFile(parent.file("cgroup.subtree_control"), "+\(c)")
                } catch {
                    let hint = error.errno == EBUSY ? " (cgroup v2 allows no processes in a container that has subcontainers)" : ""
                    throw error.lmctfy(.failedPrecondition, "Failed to enable the \(c) controller\(hint)")
                }
            }
        }
    }

    /// owner / owner_group: hand the container's directories and task files
    /// to a user and group (delegation). An unset id stays as it is.
    func chownContainer(_ name: ContainerName, spec: ContainerSpec) throws(LmctfyError) {
        let uid = spec.owner.map { uid_t(truncatingIfNeeded: $0) } ?? uid_t.max
        let gid = spec.ownerGroup.map { gid_t(truncatingIfNeeded: $0) } ?? gid_t.max
        var dirs: [CgroupDir] = []
        switch version {
        case .v1:
            for c in Controller.allCases where !layout.isCoMountedFollower(c) {
                if let d = layout.existingV1Dir(c, name) { dirs.append(d) }
            }
        case .v2:
            dirs = [layout.tasksDir(name)]
        }
        let files = version == .v1 ? ["tasks", "cgroup.procs"] : ["cgroup.procs", "cgroup.threads", "cgroup.subtree_control"]
        do {
            for d in dirs {
                try Sys.chown(d.path, uid: uid, gid: gid)
                for f in files where d.has(f) { try Sys.chown(d.file(f), uid: uid, gid: gid) }
            }
        } catch {
            throw error.lmctfy(.failedPrecondition, "Failed to chown container \"\(name)\"")
        }
    }

    /// Sections lmctfy cannot enforce are refused, never dropped (D11).
    func checkSupported(_ spec: ContainerSpec, isUpdate: Bool) throws(LmctfyError) {
        if spec.childrenLimit != nil {
            throw .unimplemented("children_limit is not supported by this kernel (it needs cgroup.children_limit)")
        }
        if spec.network != nil { throw .unimplemented("network isolation is not implemented yet") }
        if spec.filesystem != nil { throw .unimplemented("filesystem (fd_limit, rootfs, mounts) is not implemented yet") }
        if spec.virtualHost != nil {
            throw .unimplemented(isUpdate ? "Updating virtual_host is not supported" : "virtual_host is not implemented yet")
        }
        if spec.securitySpec != nil { throw .unimplemented("security_spec (AppArmor) is not implemented") }
        for kind in ResourceKind.allCases where kind.isPresent(in: spec) {
            if !layout.available(kind) {
                throw .unimplemented("\(kind) cannot be isolated on this machine (its cgroup controller is not available)")
            }
        }
    }

    func handler(_ kind: ResourceKind) throws(LmctfyError) -> any ResourceHandler {
        guard let h = handlers[kind] else { throw .unimplemented("\(kind) is not implemented") }
        return h
    }

    // MARK: Destroy

    /// Destroys a container and everything below it, children first, killing
    /// their processes. Stops at the first failure; what was destroyed stays
    /// destroyed. The root cannot be destroyed (D7).
    public func destroy(_ name: ContainerName) throws(LmctfyError) {
        guard !name.isRoot else { throw .failedPrecondition("Destroying the root container \"/\" is not allowed") }
        let container = try get(name)
        for sub in try container.subcontainers(recursive: true).reversed() {
            try destroyOne(sub)
        }
        try destroyOne(name)
    }

    private func destroyOne(_ name: ContainerName) throws(LmctfyError) {
        do {
            try Container(name: name, api: self).killAll()
        } catch where error.code == .notFound {
            return  // already gone
        }
        // rmdir every place the container may have a directory and take
        // ENOENT as "it has none there": one syscall each instead of a stat
        // and an rmdir; a controller's later candidates (cpu's /batch) are
        // not tried once one went. The tasks directory goes last.
        var groups: [[CgroupDir]] = []
        if version == .v1 {
            for c in Controller.allCases.reversed() where c != .freezer && !layout.isCoMountedFollower(c) {
                groups.append(layout.candidates(c, name))
            }
        }
        groups.append([layout.tasksDir(name)])
        for candidates in groups {
            for d in candidates {
                do {
                    try Sys.rmdir(d.path)
                    break
                } catch {
                    if error.errno == ENOENT { continue }
                    throw error.lmctfy(.failedPrecondition, "Unable to delete directory of container \"\(name)\"")
                }
            }
        }
    }

    // MARK: Init

    /// Mounts the hierarchies an InitSpec asks for (refusing conflicts), then
    /// prepares the machine: /batch for latency classes (v1), controllers
    /// enabled at the root (v2). Idempotent.
    public static func initMachine(_ spec: InitSpec, procRoot: String = "/proc") throws(LmctfyError) -> ContainerApi {
        var mounts = try CgroupMounts.detect(procRoot: procRoot)
        for m in spec.cgroupMount {
            guard let path = m.mountPath, !path.isEmpty else { throw .invalidArgument("cgroup_mount needs a mount_path") }
            var wanted: [Controller] = []
            for h in m.hierarchy {
                guard let c = Controller(hierarchy: h) else {
                    throw .invalidArgument("Unknown or unsupported cgroup hierarchy \(h.protoName)")
                }
                wanted.append(c)
            }
            guard !wanted.isEmpty else { throw .invalidArgument("cgroup_mount at \(path) names no hierarchy") }
            let here = Set(mounts.v1.filter { $0.value == path }.keys)
            if !here.isEmpty {
                guard here == Set(wanted) else {
                    throw .invalidArgument("Non-specified hierarchies are already mounted at \(path)")
                }
                continue
            }
            for c in wanted where mounts.v1[c] != nil {
                throw .invalidArgument("Hierarchy \(c.rawValue) is already mounted at \(mounts.v1[c]!), not \(path)")
            }
            do {
                if !Sys.isDirectory(path) { try makeDirs(path) }
                try Sys.mount(source: "cgroup", target: path, type: "cgroup",
                              data: wanted.map(\.rawValue).joined(separator: ","))
            } catch {
                throw error.lmctfy(.failedPrecondition, "Failed to mount cgroup hierarchies")
            }
            for c in wanted { mounts.v1[c] = path }
        }
        let api = try ContainerApi(mounts: mounts, procRoot: procRoot)
        try api.prepareMachine()
        return api
    }

    private static func makeDirs(_ path: String) throws(SystemError) {
        var current = ""
        for part in path.split(separator: "/") {
            current += "/" + part
            if !Sys.isDirectory(current) { try Sys.mkdir(current) }
        }
    }

    func prepareMachine() throws(LmctfyError) {
        switch version {
        case .v1:
            for c in [Controller.cpu, .cpuacct] where !layout.isCoMountedFollower(c) {
                guard let root = layout.root(c) else { continue }
                let batch = root.child("batch")
                if !batch.exists {
                    do { try Sys.mkdir(batch.path) } catch {
                        if error.errno != EEXIST { throw error.lmctfy(.failedPrecondition, "Failed to create /batch") }
                    }
                }
                if c == .cpu { try batch.write("cpu.shares", "2") }
            }
        case .v2:
            let root = layout.unifiedRoot!
            try enableControllers(in: root, for: ResourceKind.allCases.filter { layout.available($0) })
        }
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
