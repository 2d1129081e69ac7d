// Swift side of the virtual-host shim (CLmctfyShims/vhost.c): builds the C
// argument block, keeps every C string alive until the child has exec'd,
// and turns the shim's (stage, errno) into a VirtualHostError.
import CLmctfyShims
import Glibc

/// A bind mount from the host into a virtual host.
public struct VirtualHostMount: Sendable, Equatable {
    /// Host path.
    public var source: String
    /// Path inside the virtual host's root (resolved after pivot_root).
    public var target: String
    public var readOnly: Bool
    /// Private propagation; otherwise the mount is a slave of its source.
    public var isPrivate: Bool

    public init(source: String, target: String, readOnly: Bool = false, isPrivate: Bool = false) {
        self.source = source
        self.target = target
        self.readOnly = readOnly
        self.isPrivate = isPrivate
    }
}

/// The network set up inside a virtual host's network namespace
/// (lm_net_apply_inside): loopback up, then the interface's mtu, up,
/// address and default route, then ip_forward.
public struct VirtualHostNetwork: Sendable, Equatable {
    /// The interface to configure inside (moved in by the parent); nil:
    /// loopback only.
    public var interface: String?
    /// The address and its prefix length; nil: none.
    public var ip: String?
    public var prefixLength: UInt32 = 0
    /// Default route via this address.
    public var gateway: String?
    /// 0: leave the MTU.
    public var mtu: UInt32 = 0
    /// net.ipv4.ip_forward; nil: leave it.
    public var ipForward: Bool?

    public init() {}
}

/// Everything the shim's child does between clone and exec, in this order:
/// join the cgroups, wait for the go, stdio, setsid, mounts, pivot_root,
/// proc/sys/devpts, /run with the machine file, hostname, network, ids,
/// no_new_privs, exec of init.
public struct VirtualHostOptions: Sendable {
    /// The init's argv (argv[0] only names it when `initPath` is set).
    public var argv: [String]
    /// The init's environment.
    public var environment: [String]
    /// The host path of an init executable opened before the clone and run
    /// by descriptor after pivot_root; nil: argv[0] is looked up inside.
    public var initPath: String?
    /// Files (cgroup.procs / tasks) the child writes "0" to first.
    public var cgroupFiles: [String] = []
    /// New uts namespace (with a hostname).
    public var hostname: String?
    /// New network namespace.
    public var newNetwork = false
    /// New user namespace; the caller writes its maps (`VirtualHostChild.writeIdMaps`) before release.
    public var newUser = false
    /// The inside network (needs newNetwork).
    public var network: VirtualHostNetwork?
    /// The new root ("/" keeps the host's).
    public var rootfs: String = "/"
    /// The root is remounted read-only once everything is mounted in it
    /// (a rootfs shared by several virtual hosts: an image's).
    public var rootfsReadOnly = false
    public var mounts: [VirtualHostMount] = []
    /// Written to /run/lmctfy/.machine.spec.
    public var machineSpec: String?
    public var stdin: StdioTarget = .devNull
    public var stdout: StdioTarget = .devNull
    public var stderr: StdioTarget = .devNull
    /// Drop to these ids; `groups` are the supplementary groups.
    public var ids: (uid: uid_t, gid: gid_t, groups: [gid_t])?
    public var noNewPrivs = false

    public init(argv: [String], environment: [String]) {
        self.argv = argv
        self.environment = environment
    }
}

/// Why a virtual host's init could not be started: the step and errno.
public struct VirtualHostError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The child's step, numbered as in lm_vhost.h.
    public enum Stage: Int32, Sendable {
        case none = 0, clone, cgroup, stdio, session, propagation, rootfs, mountSource, pivot, mountTarget,
             proc, sys, hostname, network, ids, noNewPrivs, exec, wait, openInit, userns
    }
    public let stage: Stage
    public let errno: Int32
    /// What the step worked on (a path, the mount, the init).
    public let subject: String
    /// The step's index (a mount's, or lm_net_step for the network).
    public let index: Int32

    public init(stage: Stage, errno: Int32, subject: String, index: Int32 = -1) {
        self.stage = stage
        self.errno = errno
        self.subject = subject
        self.index = index
    }

    public var description: String {
        let what: String = switch stage {
        case .none: "starting the virtual host"
        case .clone: "clone"
        case .cgroup: "joining cgroup \(subject)"
        case .stdio: "setting up stdio"
        case .session: "setsid"
        case .propagation: "making the mounts private"
        case .rootfs: "bind-mounting the rootfs \(subject)"
        case .mountSource: "opening the mount source \(subject)"
        case .pivot: "pivot_root into \(subject)"
        case .mountTarget: "mounting on \(subject)"
        case .proc: "mounting /proc"
        case .sys: "mounting /sys"
        case .hostname: "sethostname \(subject)"
        case .network: "setting up the network: \(subject)"
        case .ids: "dropping to uid/gid"
        case .noNewPrivs: "setting no_new_privs"
        case .exec: "exec of init \(subject)"
        case .wait: "waiting for the child"
        case .openInit: "opening init \(subject)"
        case .userns: "becoming root of the user namespace \(subject)"
        }
        return "\(what): \(String(cString: strerror(errno)))"
    }
}

/// A virtual host's init between clone and release: it has joined its
/// cgroups and waits. Release it once what lives outside is set up, or
/// abort it. Not Sendable: one thread clones, sets up and releases.
public final class VirtualHostChild {
    /// In the caller's pid namespace.
    public let pid: pid_t
    private var child: lm_vh_child
    private var storage: CArgs?
    private let options: VirtualHostOptions

    init(child: lm_vh_child, storage: CArgs, options: VirtualHostOptions) {
        self.child = child
        self.pid = child.pid
        self.storage = storage
        self.options = options
    }

    deinit {
        if storage != nil { lm_vh_abort(&child) }
        storage?.free()
    }

    /// Lets the child go on; returns once init runs, or throws the step that
    /// failed (the child is reaped).
    public func release() throws(VirtualHostError) {
        var err: Int32 = 0, stage: Int32 = 0, index: Int32 = -1
        let rc = lm_vh_release(&child, &err, &stage, &index)
        storage?.free()
        storage = nil
        if rc != 0 { throw VirtualHost.failure(options, err, stage, index) }
    }

    /// Writes the child's uid_map and gid_map ("inside outside count" lines),
    /// before `release`.
    public func writeIdMaps(uid: String, gid: String) throws(SystemError) {
        try Sys.writeFile("/proc/\(pid)/uid_map", uid)
        try Sys.writeFile("/proc/\(pid)/gid_map", gid)
    }

    /// Kills and reaps the child.
    public func abort() {
        lm_vh_abort(&child)
        storage?.free()
        storage = nil
    }
}

/// The C argument block and every string it points to.
final class CArgs {
    var opts = lm_vh_opts()
    var allocations: [UnsafeMutableRawPointer] = []
    var initFd: Int32 = -1
    var freed = false

    func string(_ s: String) -> UnsafePointer<CChar> {
        let p = strdup(s)!
        allocations.append(UnsafeMutableRawPointer(p))
        return UnsafePointer(p)
    }

    func strings(_ list: [String]) -> UnsafeMutablePointer<UnsafeMutablePointer<CChar>?> {
        let array = UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>.allocate(capacity: list.count + 1)
        for (i, s) in list.enumerated() { array[i] = UnsafeMutablePointer(mutating: string(s)) }
        array[list.count] = nil
        allocations.append(UnsafeMutableRawPointer(array))
        return array
    }

    func free() {
        guard !freed else { return }
        freed = true
        for p in allocations { Glibc.free(p) }
        allocations = []
        if initFd >= 0 { Glibc.close(initFd) }
    }

    deinit { free() }
}

/// Starting a virtual host's init through the C shim.
public enum VirtualHost {
    /// Clones the init in its new namespaces; it joins its cgroups and waits
    /// for `release`. The pid namespace, mount and ipc are always new.
    public static func clone(_ o: VirtualHostOptions) throws(VirtualHostError) -> VirtualHostChild {
        precondition(!o.argv.isEmpty, "a virtual host needs an init")
        let a = CArgs()
        if let path = o.initPath {
            let fd = lm_open_exec_path(path)
            if fd < 0 {
                let e = Glibc.errno
                a.free()
                throw VirtualHostError(stage: .openInit, errno: e, subject: path)
            }
            a.initFd = fd
        }
        a.opts.new_uts = o.hostname != nil ? 1 : 0
        a.opts.new_net = o.newNetwork ? 1 : 0
        a.opts.new_user = o.newUser ? 1 : 0
        let files = a.strings(o.cgroupFiles)
        a.opts.cgroup_files = UnsafeRawPointer(files).assumingMemoryBound(to: UnsafePointer<CChar>?.self)
        a.opts.n_cgroup_files = Int32(o.cgroupFiles.count)
        a.opts.rootfs = a.string(o.rootfs)
        a.opts.rootfs_read_only = o.rootfsReadOnly ? 1 : 0
        if !o.mounts.isEmpty {
            let m = UnsafeMutablePointer<lm_vh_mount>.allocate(capacity: o.mounts.count)
            a.allocations.append(UnsafeMutableRawPointer(m))
            for (i, x) in o.mounts.enumerated() {
                m[i] = lm_vh_mount(source: a.string(x.source), target: a.string(x.target),
                                   read_only: x.readOnly ? 1 : 0, private_: x.isPrivate ? 1 : 0)
            }
            a.opts.mounts = UnsafePointer(m)
            a.opts.n_mounts = Int32(o.mounts.count)
        }
        a.opts.machine_spec = o.machineSpec.map { a.string($0) }
        a.opts.hostname = o.hostname.map { a.string($0) }
        if let n = o.network {
            let p = UnsafeMutablePointer<lm_net_inside>.allocate(capacity: 1)
            a.allocations.append(UnsafeMutableRawPointer(p))
            var inside = lm_net_inside()
            inside.ifname = n.interface.map { a.string($0) }
            inside.ip = n.ip.map { a.string($0) }
            inside.prefixlen = n.prefixLength
            inside.gateway = n.gateway.map { a.string($0) }
            inside.mtu = n.mtu
            inside.ip_forward = n.ipForward.map { $0 ? 1 : 0 } ?? -1
            p.pointee = inside
            a.opts.net = UnsafePointer(p)
        }
        a.opts.stdin_fd = o.stdin.raw
        a.opts.stdout_fd = o.stdout.raw
        a.opts.stderr_fd = o.stderr.raw
        if let ids = o.ids {
            a.opts.set_ids = 1
            a.opts.uid = ids.uid
            a.opts.gid = ids.gid
            if !ids.groups.isEmpty {
                let g = UnsafeMutablePointer<gid_t>.allocate(capacity: ids.groups.count)
                a.allocations.append(UnsafeMutableRawPointer(g))
                for (i, x) in ids.groups.enumerated() { g[i] = x }
                a.opts.groups = UnsafePointer(g)
                a.opts.n_groups = Int32(ids.groups.count)
            }
        }
        a.opts.no_new_privs = o.noNewPrivs ? 1 : 0
        a.opts.init_fd = a.initFd
        a.opts.argv = UnsafePointer(a.strings(o.argv))
        a.opts.envp = UnsafePointer(a.strings(o.environment))
        var child = lm_vh_child()
        var err: Int32 = 0, stage: Int32 = 0, index: Int32 = -1
        let rc = withUnsafePointer(to: &a.opts) { lm_vh_clone($0, &child, &err, &stage, &index) }
        if rc != 0 {
            a.free()
            throw failure(o, err, stage, index)
        }
        return VirtualHostChild(child: child, storage: a, options: o)
    }

    static func failure(_ o: VirtualHostOptions, _ err: Int32, _ stage: Int32, _ index: Int32) -> VirtualHostError {
        let s = VirtualHostError.Stage(rawValue: stage) ?? .none
        let i = Int(index)
        let subject: String = switch s {
        case .cgroup where i >= 0 && i < o.cgroupFiles.count: o.cgroupFiles[i]
        case .mountSource where i >= 0 && i < o.mounts.count: o.mounts[i].source
        case .mountTarget where i >= 0 && i < o.mounts.count: o.mounts[i].target
        case .rootfs, .pivot: o.rootfs
        case .hostname: o.hostname ?? ""
        case .network: "step \(index)"
        case .exec: o.initPath ?? o.argv[0]
        default: ""
        }
        return VirtualHostError(stage: s, errno: err, subject: subject, index: index)
    }
}

extension Sys {
    /// readlink(2); throws with the path on failure.
    public static func readLink(_ path: String) throws(SystemError) -> String {
        var buf = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = readlink(path, &buf, buf.count - 1)
        if n < 0 { throw SystemError("readlink", path, Glibc.errno) }
        return String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// stat(2)'s inode number and file type bits, nil when the path cannot
    /// be stat'ed (following symlinks, as /proc/<pid>/ns/<kind> needs).
    public static func inode(_ path: String) -> (ino: UInt64, mode: mode_t)? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        return (UInt64(st.st_ino), st.st_mode)
    }
}
