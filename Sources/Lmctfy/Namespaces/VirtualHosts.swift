// Virtual hosts (README "Virtual hosts"): a top-level container whose init
// runs in new pid, ipc and mount namespaces (uts with a hostname, net with a
// network), inside its own root filesystem. The spec is checked here, the
// init started through the C shim (LmctfySystem/VirtualHostSpawn), and an
// existing virtual host's init found again from /proc.
import Glibc
import LmctfyImages
import LmctfyProto
import LmctfySystem

extension ContainerApi {
    /// The spec sections of a virtual host, checked before anything is made
    /// (bad input changes nothing). `filesystem` and the network belong to
    /// a virtual host; fd_limit is not enforceable (12).
    func checkVirtualHost(_ name: ContainerName?, _ spec: ContainerSpec, isUpdate: Bool) throws(LmctfyError) {
        if let fs = spec.filesystem {
            if fs.fdLimit != nil { throw .unimplemented("filesystem.fd_limit is not implemented") }
            if isUpdate { throw .unimplemented("Updating filesystem is not supported") }
            guard spec.virtualHost != nil else {
                throw .invalidArgument("filesystem (rootfs, mounts) needs virtual_host: only a virtual host has a root of its own")
            }
        }
        guard let vh = spec.virtualHost else { return }
        if isUpdate { throw .unimplemented("Updating virtual_host is not supported") }
        if let name, name.depth > 1 { throw .unimplemented("Nested Virtual Hosts are not yet supported.") }
        if let network = vh.network { _ = try NetworkPlan(network) }
        if let userns = vh.userNamespace {
            guard vh.network != nil else {
                throw .invalidArgument("virtual_host.user_namespace needs virtual_host.network (sysfs is mounted only by the owner of the network namespace)")
            }
            for (what, maps) in [("uid_map", userns.uidMap), ("gid_map", userns.gidMap)] {
                guard !maps.isEmpty, maps.count <= 340 else { throw .invalidArgument("virtual_host.user_namespace.\(what) needs 1 to 340 ranges") }
                guard maps.contains(where: { ($0.inside ?? 0) == 0 }) else {
                    throw .invalidArgument("virtual_host.user_namespace.\(what) must map inside id 0 (root of the virtual host)")
                }
                for m in maps where (m.count ?? 0) == 0 || m.inside == nil || m.outside == nil {
                    throw .invalidArgument("virtual_host.user_namespace.\(what) ranges need inside, outside and a non-zero count")
                }
            }
        }
        if let h = vh.virtualHostname {
            // What sethostname(2) and a resolver accept: 1..64 bytes, no
            // '/', nothing unprintable or blank (a newline was set verbatim).
            if h.isEmpty || h.utf8.count > 64 || h.contains("/") || h.utf8.contains(where: { $0 <= 0x20 || $0 == 0x7f }) {
                throw .invalidArgument("virtual_hostname \"\(h.clipped())\" is not a valid host name (1 to 64 bytes, no '/', spaces or control characters)")
            }
        }
        if let argv = vh.init_?.initArgv, !argv.isEmpty, argv[0].isEmpty {
            throw .invalidArgument("virtual_host.init.init_argv[0] is empty")
        }
        if let rs = vh.init_?.runSpec {
            if rs.console != nil { throw .unimplemented("virtual_host.init.run_spec.console is not implemented") }
            if rs.apparmorProfile != nil { throw .unimplemented("run_spec.apparmor_profile (AppArmor) is not implemented") }
            if rs.fdPolicy == .unknown { throw .invalidArgument("fd_policy UNKNOWN is not a valid policy") }
            if (rs.uid == nil) != (rs.gid == nil) { throw .invalidArgument("virtual_host.init.run_spec needs both uid and gid, or neither") }
            if !rs.groups.isEmpty && rs.uid == nil { throw .invalidArgument("virtual_host.init.run_spec.groups needs uid and gid") }
        }
        let rootfs = try virtualHostRoot(spec).path
        guard let st = Sys.inode(rootfs), (st.mode & S_IFMT) == S_IFDIR else {
            throw .invalidArgument("filesystem.rootfs \"\(rootfs.clipped())\" is not a directory")
        }
        for m in spec.filesystem?.mounts?.mount ?? [] {
            guard let source = m.source, source.hasPrefix("/") else {
                throw .invalidArgument("A mount needs an absolute source (got \"\((m.source ?? "").clipped())\")")
            }
            guard let target = m.target, target.hasPrefix("/") else {
                throw .invalidArgument("A mount needs an absolute target inside the rootfs (got \"\((m.target ?? "").clipped())\")")
            }
            if target.split(separator: "/").contains("..") {
                throw .invalidArgument("Mount target \"\(target.clipped())\" must not contain \"..\"")
            }
            // Over the whole root it hid the rootfs: the host started, and
            // every run failed with 5 (no /bin/sh; the probe). The rootfs
            // is filesystem.rootfs.
            if target.split(separator: "/").allSatisfy({ $0 == "." }) {
                throw .invalidArgument("Mount target \"\(target.clipped())\" is the root itself: give the root as filesystem.rootfs")
            }
            if Sys.inode(source) == nil { throw .invalidArgument("Mount source \"\(source.clipped())\" does not exist") }
        }
        if (spec.filesystem?.mounts?.mount.count ?? 0) > 64 {
            throw .invalidArgument("At most 64 mounts are supported in a virtual host")
        }
    }

    /// Where a virtual host's root is: `filesystem.rootfs` when absolute
    /// ("/" when absent); any other value names an image of the store
    /// (`lmctfy image import`), whose rootfs the virtual host then sees
    /// read-only (shared by every host made from it; its writable places
    /// are its mounts and /run). NOT_FOUND (5) for an image not there,
    /// INVALID_ARGUMENT (3) for a name no image can have.
    /// An absolute path into the store (an image's directory by its path)
    /// is an image too: it was not remounted read-only, and a host made so
    /// wrote into the shared image (the virtual-host probe).
    func virtualHostRoot(_ spec: ContainerSpec) throws(LmctfyError) -> (path: String, image: Bool) {
        let rootfs = spec.filesystem?.rootfs ?? "/"
        if rootfs.isEmpty {
            throw .invalidArgument("filesystem.rootfs is empty: give an absolute directory or the name of an image "
                                   + "(without it, the host's root)")
        }
        if rootfs.hasPrefix("/") { return (rootfs, isInImageStore(rootfs)) }
        return (try ImageStore(root: imageRoot).rootfsPath(forImage: rootfs), true)
    }

    /// Whether `path` (symlinks resolved) is the image store or inside it:
    /// a virtual host sees it read-only, as its rootfs or as the source
    /// of a mount (one of an image's directories mounted writable let a
    /// host write into the shared image; a probe).
    func isInImageStore(_ path: String) -> Bool {
        guard let (real, store) = resolvedBesideImageStore(path) else { return false }
        return real == store || real.hasPrefix(store + "/")
    }

    /// Whether `path` (symlinks resolved) is the image store, inside it, or
    /// holds it: a mount of one of these is read-only. A directory holding
    /// the store (its parent, say) was mounted writable, and the images in
    /// it could be written through it (the virtual host probe).
    func overlapsImageStore(_ path: String) -> Bool {
        guard let (real, store) = resolvedBesideImageStore(path) else { return false }
        return real == store || real.hasPrefix(store + "/") || real == "/" || store.hasPrefix(real + "/")
    }

    /// `path` and the image store, symlinks resolved; nil when either does
    /// not resolve, or the store is `/` (no store to keep apart).
    private func resolvedBesideImageStore(_ path: String) -> (real: String, store: String)? {
        guard let real = try? Sys.realPath(path), let store = try? Sys.realPath(ImageStore(root: imageRoot).root), store != "/" else {
            return nil
        }
        return (real, store)
    }

    /// Starts the init of the virtual host `name` (made already; the caller
    /// holds its lock and removes it if this throws). Returns init's pid.
    func startVirtualHost(_ name: ContainerName, spec: ContainerSpec, stdio: VirtualHostStdio?) throws(LmctfyError) -> pid_t {
        guard let vh = spec.virtualHost else { throw .internalError("not a virtual host") }
        let container = Container(name: name, api: self)
        let argv = vh.init_?.initArgv ?? []
        var o: VirtualHostOptions
        if argv.isEmpty {
            let path = try Self.initBinary()
            o = VirtualHostOptions(argv: ["lmctfy-init"], environment: Self.initEnvironment)
            o.initPath = path
        } else {
            o = VirtualHostOptions(argv: argv, environment: Self.initEnvironment)
        }
        o.cgroupFiles = try container.joinFiles()
        let root = try virtualHostRoot(spec)
        o.rootfs = root.path
        o.rootfsReadOnly = root.image
        o.mounts = (spec.filesystem?.mounts?.mount ?? []).map {
            VirtualHostMount(source: $0.source ?? "", target: $0.target ?? "",
                             readOnly: ($0.readOnly ?? false) || overlapsImageStore($0.source ?? ""),
                             isPrivate: $0.private ?? false)
        }
        o.hostname = vh.virtualHostname
        o.machineSpec = TextFormat.print(try machineSpec(name).dynamic)
        if let rs = vh.init_?.runSpec {
            if let uid = rs.uid, let gid = rs.gid { o.ids = (uid, gid, rs.groups) }
            o.noNewPrivs = rs.noNewPrivs ?? false
            if rs.fdPolicy == .inherit { o.stdin = .inherit; o.stdout = .inherit; o.stderr = .inherit }
        }
        if let stdio {
            o.stdin = stdio.stdin; o.stdout = stdio.stdout; o.stderr = stdio.stderr
        }
        let plan = try vh.network.map { (n: Network) throws(LmctfyError) in try NetworkPlan(n) }
        if let plan {
            o.newNetwork = true
            var inside = VirtualHostNetwork()
            inside.interface = plan.insideInterface
            inside.ip = plan.address?.ip
            inside.prefixLength = UInt32(plan.address?.prefixLength ?? 0)
            inside.gateway = plan.gateway
            inside.mtu = plan.mtu ?? 0
            inside.ipForward = plan.ipForward
            o.network = inside
        }
        let failed = { (error: VirtualHostError) -> LmctfyError in
            // 13 as in the original (nscon's failure), with the step and errno.
            var text = error.description
            if error.stage == .network, let plan {
                text = "setting up the network: \(plan.describeInsideStep(error.index)): \(String(cString: strerror(error.errno)))"
            }
            if error.errno == EACCES && root.image && vh.userNamespace != nil {
                // The store is root's alone (0700): the mapped root cannot reach it.
                text += " (the image store is root's alone, and a user namespace's root is not the host's: give "
                    + "filesystem.rootfs as a directory its mapped root can read, e.g. an image exported and unpacked there)"
            }
            return LmctfyError(.internal, "Failed to start the init of virtual host \"\(name)\": \(text)", errno: error.errno)
        }
        // The record marks a virtual host and keeps what `spec` reads back.
        try driver.tasksDir(name).setRecord(.virtualHost, ContainerSpec(filesystem: spec.filesystem, virtualHost: vh).textFormatString)
        o.newUser = vh.userNamespace != nil
        let child: VirtualHostChild
        do throws(VirtualHostError) { child = try VirtualHost.clone(o) } catch { throw failed(error) }
        if let userns = vh.userNamespace {
            func lines(_ maps: [VirtualHostSpec.IdMap]) -> String {
                maps.map { "\($0.inside ?? 0) \($0.outside ?? 0) \($0.count ?? 0)\n" }.joined()
            }
            do throws(SystemError) { try child.writeIdMaps(uid: lines(userns.uidMap), gid: lines(userns.gidMap)) } catch {
                child.abort()
                throw error.lmctfy(.invalidArgument, "Failed to write the id maps of virtual host \"\(name)\"")
            }
        }
        // The outside of the network, while the child waits in its new
        // namespace: the veth pair (peer moved in), the bridge port.
        // The veth this create made, once made: the only link its failure
        // may delete. A failed create deleted whatever had the outside
        // name (its veth create refused with EEXIST: another virtual
        // host's veth, a bridge; the probe).
        var made: (name: String, index: Int32?)?
        func undoVeth() {
            guard let made else { return }
            if let index = made.index, (try? Net.link(made.name))??.index != index { return }
            try? Net.deleteLink(made.name)
        }
        if let plan {
            do throws(LmctfyError) {
                try plan.applyOutside(childPid: child.pid)
                if case .veth(let outside, _, _) = plan.outside {
                    made = (outside, nil)
                    // With its index: destroy deletes this link, not a later one of the same name.
                    let index: Int32
                    do throws(SystemError) {
                        guard let link = try Net.link(outside) else { throw SystemError("rtnetlink(getlink)", outside, ENODEV) }
                        index = link.index
                    } catch {
                        throw error.lmctfy(.internal, "Failed to read back the veth \"\(outside)\" of virtual host \"\(name)\"")
                    }
                    made = (outside, index)
                    try driver.tasksDir(name).setRecord(.vethOutside, "\(outside) \(index)")
                }
            } catch {
                child.abort()
                undoVeth()
                throw error
            }
        }
        let pid = child.pid
        do throws(VirtualHostError) { try child.release() } catch {
            undoVeth()
            throw failed(error)
        }
        return pid
    }

    /// Destroy's part for a virtual host: the outside veth end it made
    /// (its peer went with the namespace, or goes with it now). Missing,
    /// or no longer a veth: nothing to do.
    /// The record holds the name and the interface index it had when made
    /// ("NAME INDEX"; older records the name alone): a veth of that name
    /// made since (after the virtual host's namespace went, taking its
    /// pair) is someone else's and is left alone. Deleting by name alone
    /// cut the network of the next virtual host given that name.
    func removeVirtualHostLinks(_ name: ContainerName) throws(LmctfyError) {
        guard name.depth == 1, let record = try driver.tasksDir(name).record(.vethOutside) else { return }
        let parts = record.split(separator: " ")
        guard let outside = parts.first.map(String.init) else { return }
        let index = parts.count > 1 ? Int32(parts[1]) : nil
        guard let link = try? Net.link(outside), link.kind == "veth" else { return }
        if let index, link.index != index { return }
        try? Net.deleteLink(outside)
    }

    /// The init's environment (nothing of the caller's leaks in).
    static let initEnvironment = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/", "container=lmctfy"]

    /// Where lmctfy-init is: $LMCTFY_INIT, beside this executable (the
    /// build directory, an installed bin/), or lib/lmctfy beside it.
    static func initBinary() throws(LmctfyError) -> String {
        var candidates: [String] = []
        if let env = getenv("LMCTFY_INIT") { candidates.append(String(cString: env)) }
        if let exe = try? Sys.readLink("/proc/self/exe") {
            let dir = exe.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
            candidates.append(dir + "/lmctfy-init")
            candidates.append(dir + "/../lib/lmctfy/lmctfy-init")
        }
        candidates.append("/usr/lib/lmctfy/lmctfy-init")
        for c in candidates where access(c, X_OK) == 0 { return c }
        throw .notFound("lmctfy-init (the default init of a virtual host) was not found; looked at \(candidates.joined(separator: ", ")) (set LMCTFY_INIT or give virtual_host.init.init_argv)")
    }

    /// What a virtual host is told of its cgroups (/run/lmctfy/.machine.spec):
    /// per v1 hierarchy its mount point and the container's directory there.
    func machineSpec(_ name: ContainerName) throws(LmctfyError) -> MachineSpec {
        var spec = MachineSpec()
        var roots: [MachineSpec.VirtualRoot.CgroupVirtualRoot] = []
        let dirs = try driver.joinDirs(name)
        var byMount: [String: [Controller]] = [:]
        for (controller, mount) in mounts.v1 { byMount[mount, default: []].append(controller) }
        for (mount, controllers) in byMount.sorted(by: { $0.key < $1.key }) {
            let hierarchies = controllers.sorted().compactMap(Self.hierarchy)
            guard !hierarchies.isEmpty else { continue }
            spec.cgroupMount.append(CgroupMount(mountPath: mount, hierarchy: hierarchies))
            let root = dirs.first { $0.mount == mount }.map { "/" + $0.segments.joined(separator: "/") } ?? "/"
            for h in hierarchies { roots.append(.init(hierarchy: h, root: root)) }
        }
        spec.virtualRoot = MachineSpec.VirtualRoot(cgroupVirtualRoot: roots)
        return spec
    }

    static func hierarchy(_ c: Controller) -> CgroupHierarchy? {
        switch c {
        case .cpu: .cgroupCpu
        case .cpuacct: .cgroupCpuacct
        case .cpuset: .cgroupCpuset
        case .freezer: .cgroupFreezer
        case .memory: .cgroupMemory
        case .devices: .cgroupDevice
        case .blkio: .cgroupBlockio
        case .pids: .cgroupPids
        case .perfEvent: .cgroupPerfEvent
        }
    }
}

/// Where a virtual host's init's stdio goes (tests, embedding); by default
/// /dev/null, or the caller's with run_spec fd_policy INHERIT.
public struct VirtualHostStdio: Sendable {
    public var stdin: StdioTarget
    public var stdout: StdioTarget
    public var stderr: StdioTarget

    public init(stdin: StdioTarget = .devNull, stdout: StdioTarget = .devNull, stderr: StdioTarget = .devNull) {
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
    }
}

/// The namespaces a task of a virtual host is in, as /proc shows them.
enum Namespaces {
    /// Entered in this order (user first, as the original; mnt last, since
    /// the /proc paths are the host's).
    static let kinds = ["user", "ipc", "uts", "net", "cgroup", "mnt"]

    /// The inode of /proc/<pid>/ns/<kind> (nil when unreadable).
    static func inode(_ procRoot: String, _ pid: String, _ kind: String) -> UInt64? {
        Sys.inode(procRoot + "/" + pid + "/ns/" + kind)?.ino
    }

    /// The pids of a task in each nested pid namespace, outermost first
    /// (/proc/<pid>/status NSpid); nil when unreadable.
    static func nsPids(_ procRoot: String, _ pid: pid_t) -> [pid_t]? {
        guard let text = try? Sys.readFile(procRoot + "/\(pid)/status") else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("NSpid:") {
            return line.dropFirst(6).split(whereSeparator: { $0 == " " || $0 == "\t" }).compactMap { pid_t($0) }
        }
        return nil
    }
}

extension Container {
    /// A virtual host's `virtual_host` and `filesystem`, as created (its
    /// record), into `spec`; nothing for any other container.
    func readVirtualHostSpec(into spec: inout ContainerSpec) throws(LmctfyError) {
        guard name.depth == 1, let text = try tasksDir.record(.virtualHost) else { return }
        let kept: ContainerSpec
        do { kept = try ContainerSpec(textFormat: text) } catch {
            throw LmctfyError(.dataLoss, "The virtual host record of \"\(name)\" does not parse: \(error)")
        }
        spec.virtualHost = kept.virtualHost
        spec.filesystem = kept.filesystem
    }

    /// The init of the virtual host this container belongs to (its
    /// top-level ancestor's), as the caller's pid namespace sees it; 1 when
    /// it is no virtual host (GetInitPid). Found exactly, from NSpid: the
    /// task of the tree that is pid 1 one pid namespace below ours (the
    /// original walked PPid chains and retried).
    public func initPid() throws(LmctfyError) -> pid_t {
        guard try api.exists(name) else { throw .notFound("Container \"\(name)\" does not exist") }
        return try virtualHostInit() ?? 1
    }

    /// Whether this container is (in) a virtual host, its init alive or not.
    public func isVirtualHost() throws(LmctfyError) -> Bool { try virtualHostTop() != nil }

    /// The top-level container of the virtual host this container is (in),
    /// nil for any other container: one getxattr of its top-level
    /// ancestor's record, no /proc scan.
    private func virtualHostTop() throws(LmctfyError) -> ContainerName? {
        guard let top = name.selfAndAncestors.first(where: { $0.depth == 1 }),
              try driver.tasksDir(top).record(.virtualHost) != nil else { return nil }
        return top
    }

    /// The virtual host's init, nil for any other container. A virtual
    /// host whose init is gone (killed, exited) is FAILED_PRECONDITION:
    /// what would start in it or enter it has no namespaces to join, and
    /// ran in the host's, as real root on the host's filesystem.
    func virtualHostInit() throws(LmctfyError) -> pid_t? {
        guard let top = try virtualHostTop() else { return nil }
        if let pid = try Container(name: top, api: api).runningInit() { return pid }
        throw .failedPrecondition("The init of virtual host \"\(top)\" is gone (killed, or exited): nothing can run in "
                                  + "it or enter it; destroy it and create it again")
    }

    /// The init of this top-level virtual host if it is running: the task
    /// that is pid 1 one pid namespace below ours.
    func runningInit() throws(LmctfyError) -> pid_t? {
        let ourDepth = Namespaces.nsPids(api.procRoot, getpid())?.count ?? 1
        // The init is started in the top container and never leaves it.
        for pid in try tasksDir.readPids("cgroup.procs") {
            guard let ns = Namespaces.nsPids(api.procRoot, pid) else { continue }
            if ns.count == ourDepth + 1 && ns.last == 1 { return pid }
        }
        return nil
    }

    /// The namespace files a task started in this container must enter:
    /// those of the virtual host's init that differ from ours, plus its pid
    /// namespace. Empty (nil) for an ordinary container.
    func namespaceTargets() throws(LmctfyError) -> (pid: pid_t, kinds: [String])? {
        guard let initPid = try virtualHostInit() else { return nil }
        var kinds: [String] = []
        for kind in Namespaces.kinds {
            guard let theirs = Namespaces.inode(api.procRoot, String(initPid), kind) else {
                throw .unavailable("Cannot read the \(kind) namespace of init \(initPid) of \"\(name)\"")
            }
            if theirs != Namespaces.inode(api.procRoot, "self", kind) { kinds.append(kind) }
        }
        return (initPid, kinds)
    }
}

/// The namespaces of a virtual host's init, opened for a command started
/// inside it (run, exec): descriptors of /proc/<init>/ns/<kind>, closed by
/// `close`.
final class VirtualHostEntry {
    private var fds: [Int32] = []
    private var pidFds: (target: Int32, own: Int32)?
    private var entersUser = false

    /// nil for an ordinary container (nothing to enter).
    init?(_ container: Container) throws(LmctfyError) {
        guard let target = try container.namespaceTargets() else { return nil }
        let proc = container.api.procRoot
        entersUser = target.kinds.first == "user"
        do throws(SystemError) {
            for kind in target.kinds {
                fds.append(try Sys.open(proc + "/\(target.pid)/ns/\(kind)", O_RDONLY | O_CLOEXEC))
            }
            let pidTarget = try Sys.open(proc + "/\(target.pid)/ns/pid", O_RDONLY | O_CLOEXEC)
            let own: Int32
            do { own = try Sys.open(proc + "/self/ns/pid", O_RDONLY | O_CLOEXEC) } catch {
                Glibc.close(pidTarget)
                throw error
            }
            pidFds = (pidTarget, own)
        } catch {
            close()
            throw error.lmctfy(.unavailable, "Failed to open the namespaces of init \(target.pid) of virtual host \"\(container.name)\"")
        }
        // The init may have died and its pid been reused between the lookup
        // and the opens: the pid namespace must still be the one whose init
        // it is.
        guard (try? container.virtualHostInit()) == target.pid else {
            close()
            throw .failedPrecondition("The init of virtual host \"\(container.name)\" is gone")
        }
    }

    func apply(to o: inout SpawnOptions) {
        o.namespaceFds = fds
        o.pidNamespace = pidFds
        o.enterUserAsRoot = entersUser
    }

    func close() {
        for fd in fds { Glibc.close(fd) }
        fds = []
        if let p = pidFds {
            Glibc.close(p.target)
            Glibc.close(p.own)
        }
        pidFds = nil
    }
}
