// CL1's facade: containers named like paths, created, updated, inspected and
// destroyed on real cgroups. cgroupfs is the only state: two ContainerApi
// instances (or two processes) see the same containers. This file: the API
// and names; create, destroy and init/mount are in ContainerApi+*.swift.
import Glibc
import LmctfyProto
import LmctfySystem

/// Thread-safety: a ContainerApi is immutable and may be shared between
/// threads. create, update and destroy of containers in the same top-level
/// tree are serialised across threads and processes (ContainerLock); the
/// other operations are not (the kernel decides, as in the original).
public final class ContainerApi: Sendable {
    /// The cgroup hierarchies this API drives, and how they are reached.
    public let mounts: CgroupMounts
    /// Everything that depends on the cgroup version.
    let driver: any CgroupDriver
    let handlers: [ResourceKind: any ResourceHandler]
    let procRoot: String
    /// The image store a virtual host's non-absolute `filesystem.rootfs`
    /// names an image of (nil: ImageStore's default, $LMCTFY_IMAGE_ROOT or
    /// /var/lib/lmctfy/images; the agent passes its image_root).
    public let imageRoot: String?

    /// An API over the given hierarchies. `procRoot` is /proc, or a fake in tests.
    public init(mounts: CgroupMounts, procRoot: String = "/proc", imageRoot: String? = nil) throws(LmctfyError) {
        self.mounts = mounts
        self.imageRoot = imageRoot
        self.driver = try CgroupDrivers.make(mounts: mounts, procRoot: procRoot)
        self.procRoot = procRoot
        self.handlers = ResourceHandlers.all
    }

    /// The cgroup version this machine runs (v1 when the v1 freezer is mounted).
    public var version: CgroupVersion { driver.version }

    /// The fault plan of a test (nil on the real path): spawns go through it too.
    var faults: FaultPlan? { mounts.access.faults }

    /// An API over this machine's mounted hierarchies (from /proc/self/mountinfo).
    public static func detect(procRoot: String = "/proc", imageRoot: String? = nil) throws(LmctfyError) -> ContainerApi {
        try ContainerApi(mounts: try CgroupMounts.detect(procRoot: procRoot), procRoot: procRoot, imageRoot: imageRoot)
    }

    // MARK: Names

    /// Resolves a name given by a user, relative to this process's container.
    public func resolve(_ name: String) throws(LmctfyError) -> ContainerName {
        let base = name.hasPrefix("/") ? ContainerName.root : try detect(pid: 0)
        return try ContainerName.resolve(name, relativeTo: base)
    }

    /// The cgroup directories a container has now.
    public func resourceDirs(_ name: ContainerName) throws(LmctfyError) -> ResourceDirs {
        try driver.resourceDirs(name)
    }

    /// Whether the container exists: its tasks directory carries lmctfy's
    /// `complete` mark, the last step of create. A directory lmctfy did not
    /// make, or a create in progress (or killed), is not a container. A
    /// failure to look (EACCES) is an error.
    public func exists(_ name: ContainerName) throws(LmctfyError) -> Bool {
        if name.isRoot { return true }
        return try driver.tasksDir(name).state() == .complete
    }

    /// The container whose memory events a container's processes cause:
    /// itself if it isolates memory, else its nearest ancestor that does
    /// (the root at the latest).
    public func memoryOwner(_ name: ContainerName) throws(LmctfyError) -> ContainerName {
        for c in name.selfAndAncestors where !c.isRoot { if try driver.isolates(.memory, c) { return c } }
        return .root
    }

    /// The container with this name; NOT_FOUND if it does not exist.
    public func get(_ name: String) throws(LmctfyError) -> Container {
        try get(resolve(name))
    }

    /// The container with this (resolved) name; NOT_FOUND if it does not exist.
    public func get(_ name: ContainerName) throws(LmctfyError) -> Container {
        guard try exists(name) else { throw .notFound("Container \"\(name)\" does not exist") }
        return Container(name: name, api: self)
    }

    /// The container a task (pid or tid; 0 = this process) is in.
    public func detect(pid: pid_t) throws(LmctfyError) -> ContainerName {
        let file = procRoot + "/" + (pid == 0 ? "self" : String(pid)) + "/cgroup"
        let text: [UInt8]
        do {
            text = try Sys.readBytes(file)
        } catch {
            throw error.lmctfy(.notFound, "Could not detect the container for TID \(pid)")
        }
        // The line of the hierarchy whose path is the task's container.
        let tasksMount = driver.tasksDir(.root).mount
        // In a cgroup namespace (or over a mount of a sub-cgroup), that path
        // is relative to the namespace's root, not to the mount's: taken as
        // a container's name it named another one ("/" for the caller, and
        // a relative name's destroy removed a top-level container; a probe).
        if let root = mounts.mountRoots[tasksMount], root != "/" {
            throw .failedPrecondition("Could not detect the container for TID \(pid): \(tasksMount) shows cgroup \"\(root)\" "
                                      + "of its hierarchy (a cgroup namespace, or a mount of a sub-cgroup), so the task's cgroup path "
                                      + "does not name a container here; give absolute container names")
        }
        guard let line = mounts.taskCgroups(text).first(where: { $0.mount == tasksMount }), line.path.first == UInt8(ascii: "/") else {
            throw .notFound("Could not detect the container for TID \(pid)")
        }
        let path = String(decoding: line.path, as: UTF8.self)
        do {
            return try ContainerName.resolve(path, relativeTo: .root)
        } catch {
            throw .failedPrecondition("TID \(pid) is in cgroup \"\(ContainerName.printable(path, limit: .max))\", which is not a valid container name")
        }
    }
}
