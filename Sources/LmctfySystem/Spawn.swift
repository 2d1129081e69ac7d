// Swift side of the C spawn shim (CLmctfyShims/spawn.c): builds the C
// argument block, keeps every C string alive across the call, and turns the
// shim's (stage, errno) into a SpawnError.
import CLmctfyShims
import Glibc

/// Where a standard stream of the new process goes.
public enum StdioTarget: Sendable, Equatable {
    /// The caller's stream, as it is.
    case inherit
    /// /dev/null (opened read-write in the child).
    case devNull
    /// This descriptor of the caller, duplicated onto the stream; the caller
    /// keeps it and closes it after the spawn.
    case fd(Int32)

    var raw: Int32 {
        switch self {
        case .inherit: -2
        case .devNull: -1
        case .fd(let fd): fd
        }
    }
}

/// Everything the C shim does between fork and exec, in this order: join
/// the cgroups, set up stdio, new session, oom_score_adj, drop ids, close
/// descriptors, exec.
public struct SpawnOptions: Sendable {
    /// The command and its arguments; argv[0] without "/" is looked up in PATH.
    public var argv: [String]
    /// nil: inherit this process's environment.
    public var environment: [String]?
    /// cgroup.procs files the child joins before exec.
    public var cgroupFiles: [String] = []
    /// pids cgroup directories whose limit the child counts against once it
    /// has joined: it fails (EAGAIN, stage `pids`) rather than run while
    /// one's pids.current is above its pids.max, as a fork inside would.
    public var pidsLimitDirs: [String] = []
    /// Where the child's stdin comes from.
    public var stdin: StdioTarget = .inherit
    /// Where the child's stdout goes.
    public var stdout: StdioTarget = .inherit
    /// Where the child's stderr goes.
    public var stderr: StdioTarget = .inherit
    /// Whether the child calls setsid(2): its own session and process group,
    /// no controlling terminal.
    public var newSession = false
    /// With `newSession`: the child's stdin (a terminal) becomes the new
    /// session's controlling terminal.
    public var controllingTerminal = false
    /// Written to the child's /proc/self/oom_score_adj (-1000...1000); nil: inherited.
    public var oomScoreAdj: Int32?
    /// The uid and gid the child drops to (supplementary groups cleared) before
    /// exec; nil: the caller's.
    public var ids: (uid: uid_t, gid: gid_t)?
    /// Whether every descriptor above stdio is closed at exec, so nothing of
    /// the caller leaks into the command.
    public var closeOtherFds = true
    /// Whether the child is started through an intermediate that exits at once
    /// (a double fork): the command is then not the caller's child and nobody
    /// has to reap it.
    public var detach = false
    /// Namespaces to enter (descriptors of /proc/<pid>/ns/<kind>, user
    /// first, mnt last), for a command inside a virtual host. The caller
    /// owns and closes them.
    public var namespaceFds: [Int32] = []
    /// The pid namespace the command is born in, and the caller's own (both
    /// descriptors, owned by the caller); nil: ours.
    public var pidNamespace: (target: Int32, own: Int32)?
    /// namespaceFds[0] is a user namespace: become root inside after entering.
    public var enterUserAsRoot = false
    /// Signals the child leaves ignored (every other disposition goes back
    /// to its default): those its caller was started with ignored.
    public var ignoredSignals: [Int32] = []

    /// Options to run `argv`: stdio inherited, no cgroups joined, descriptors
    /// above stdio closed, not detached.
    public init(argv: [String]) {
        self.argv = argv
    }
}

/// Why a process could not be started: the step that failed and errno.
public struct SpawnError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The step of the child's set-up that failed, numbered as in the C shim.
    public enum Stage: Int32, Sendable {
        /// Unknown (`none`), fork, joining a cgroup, stdio, setsid, oom_score_adj,
        /// dropping ids, closing descriptors, exec, entering a namespace,
        /// a pids limit reached.
        case none = 0, fork, cgroup, stdio, session, oom, ids, fds, exec, namespace, pids
    }
    /// The step that failed.
    public let stage: Stage
    /// The errno that step failed with.
    public let errno: Int32
    /// What the stage worked on: the command, or the cgroup file.
    public let subject: String

    public var description: String {
        if stage == .pids && errno == EAGAIN {
            return "the pids limit of \(subject) is reached (pids.current would exceed pids.max)"
        }
        let what: String = switch stage {
        case .none: "spawn"
        case .fork: "fork"
        case .cgroup: "joining cgroup \(subject)"
        case .stdio: "setting up stdio"
        case .session: "setsid"
        case .oom: "setting oom_score_adj"
        case .ids: "dropping to uid/gid"
        case .fds: "closing descriptors"
        case .exec: "exec \(subject)"
        case .namespace: "entering the virtual host's namespaces for \(subject)"
        case .pids: "checking the pids limit of \(subject)"
        }
        return "\(what): \(String(cString: strerror(errno)))"
    }
}

/// Starting processes through the C shim: `spawn` (a child or a detached
/// process) and `exec` (replacing the caller).
public enum Spawn {
    /// Starts a process; returns its pid (with `detach`, the pid of a process
    /// that is not our child).
    /// A `faults` plan may fail the spawn as a whole (`SysCall.spawn`, as a
    /// failed fork); an injected EINTR is retried like a real one.
    public static func spawn(_ options: SpawnOptions, faults: FaultPlan? = nil) throws(SpawnError) -> pid_t {
        while let faults, let e = faults.check(.spawn, options.argv.first ?? "") {
            if e != EINTR { throw SpawnError(stage: .fork, errno: e, subject: options.argv.first ?? "") }
        }
        var pid: pid_t = 0
        let (rc, err, stage, index) = withCOptions(options) { o -> (Int32, Int32, Int32, Int32) in
            var err: Int32 = 0, stage: Int32 = 0, index: Int32 = -1
            let rc = lm_spawn(o, &pid, &err, &stage, &index)
            return (rc, err, stage, index)
        }
        if rc != 0 { throw failure(options, err, stage, index) }
        return pid
    }

    /// Replaces this process with the command; returns only on failure.
    public static func exec(_ options: SpawnOptions) -> SpawnError {
        let (err, stage, index) = withCOptions(options) { o -> (Int32, Int32, Int32) in
            var err: Int32 = 0, stage: Int32 = 0, index: Int32 = -1
            _ = lm_exec(o, &err, &stage, &index)
            return (err, stage, index)
        }
        return failure(options, err, stage, index)
    }

    static func failure(_ o: SpawnOptions, _ err: Int32, _ stage: Int32, _ index: Int32) -> SpawnError {
        let s = SpawnError.Stage(rawValue: stage) ?? .none
        let subject = s == .cgroup && index >= 0 && Int(index) < o.cgroupFiles.count
            ? o.cgroupFiles[Int(index)]
            : s == .pids && index >= 0 && Int(index) < o.pidsLimitDirs.count ? o.pidsLimitDirs[Int(index)] : (o.argv.first ?? "")
        return SpawnError(stage: s, errno: err, subject: subject)
    }

    private static func withCOptions<R>(_ o: SpawnOptions, _ body: (UnsafePointer<lm_spawn_opts>) -> R) -> R {
        precondition(!o.argv.isEmpty, "spawn needs a command")
        let argv = cStrings(o.argv)
        let env = o.environment.map(cStrings)
        let files = cStrings(o.cgroupFiles)
        let limits = cStrings(o.pidsLimitDirs.flatMap { [$0 + "/pids.max", $0 + "/pids.current"] })
        defer {
            free(argv)
            if let env { free(env) }
            free(files)
            free(limits)
        }
        var c = lm_spawn_opts()
        c.argv = UnsafePointer(argv)
        c.envp = env.map { UnsafePointer($0) }
        c.cgroup_files = UnsafeRawPointer(files).assumingMemoryBound(to: UnsafePointer<CChar>?.self)
        c.n_cgroup_files = Int32(o.cgroupFiles.count)
        c.pids_limit_files = UnsafeRawPointer(limits).assumingMemoryBound(to: UnsafePointer<CChar>?.self)
        c.n_pids_limits = Int32(o.pidsLimitDirs.count)
        c.stdin_fd = o.stdin.raw
        c.stdout_fd = o.stdout.raw
        c.stderr_fd = o.stderr.raw
        c.new_session = o.newSession ? 1 : 0
        c.controlling_tty = o.controllingTerminal ? 1 : 0
        c.set_oom_score_adj = o.oomScoreAdj == nil ? 0 : 1
        c.oom_score_adj = o.oomScoreAdj ?? 0
        c.set_ids = o.ids == nil ? 0 : 1
        c.uid = o.ids?.uid ?? 0
        c.gid = o.ids?.gid ?? 0
        c.close_fds = o.closeOtherFds ? 1 : 0
        c.detach = o.detach ? 1 : 0
        c.pidns_fd = o.pidNamespace?.target ?? -1
        c.self_pidns_fd = o.pidNamespace?.own ?? -1
        c.n_ns_fds = Int32(o.namespaceFds.count)
        c.enter_user_root = o.enterUserAsRoot ? 1 : 0
        c.keep_ignored = o.ignoredSignals.reduce(0) { m, s in s > 0 && s < 64 ? m | (1 << UInt64(s)) : m }
        return o.namespaceFds.withUnsafeBufferPointer { fds in
            c.ns_fds = fds.baseAddress
            return withUnsafePointer(to: &c) { body($0) }
        }
    }

    /// A NULL-terminated malloc'd array of strdup'd strings, freed by free()
    /// of the array after each element (see freeCStrings).
    private static func cStrings(_ strings: [String]) -> UnsafeMutablePointer<UnsafeMutablePointer<CChar>?> {
        let array = UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>.allocate(capacity: strings.count + 1)
        for (i, s) in strings.enumerated() { array[i] = strdup(s) }
        array[strings.count] = nil
        return array
    }

    private static func free(_ array: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) {
        var i = 0
        while let p = array[i] {
            Glibc.free(p)
            i += 1
        }
        array.deallocate()
    }
}
