// Swift side of the C spawn shim (CLmctfyShims/spawn.c): builds the C
// argument block, keeps every C string alive across the call, and turns the
// shim's (stage, errno) into a SpawnError.
import CLmctfyShims
import Glibc

/// Where a standard stream of the new process goes.
public enum StdioTarget: Sendable, Equatable {
    case inherit
    case devNull
    case fd(Int32)

    var raw: Int32 {
        switch self {
        case .inherit: -2
        case .devNull: -1
        case .fd(let fd): fd
        }
    }
}

public struct SpawnOptions: Sendable {
    public var argv: [String]
    /// nil: inherit this process's environment.
    public var environment: [String]?
    /// cgroup.procs files the child joins before exec.
    public var cgroupFiles: [String] = []
    public var stdin: StdioTarget = .inherit
    public var stdout: StdioTarget = .inherit
    public var stderr: StdioTarget = .inherit
    public var newSession = false
    public var oomScoreAdj: Int32?
    public var ids: (uid: uid_t, gid: gid_t)?
    public var closeOtherFds = true
    public var detach = false

    public init(argv: [String]) {
        self.argv = argv
    }
}

/// Why a process could not be started: the step that failed and errno.
public struct SpawnError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Stage: Int32, Sendable {
        case none = 0, fork, cgroup, stdio, session, oom, ids, fds, exec
    }
    public let stage: Stage
    public let errno: Int32
    /// What the stage worked on: the command, or the cgroup file.
    public let subject: String

    public var description: String {
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
        }
        return "\(what): \(String(cString: strerror(errno)))"
    }
}

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
            ? o.cgroupFiles[Int(index)] : (o.argv.first ?? "")
        return SpawnError(stage: s, errno: err, subject: subject)
    }

    private static func withCOptions<R>(_ o: SpawnOptions, _ body: (UnsafePointer<lm_spawn_opts>) -> R) -> R {
        precondition(!o.argv.isEmpty, "spawn needs a command")
        let argv = cStrings(o.argv)
        let env = o.environment.map(cStrings)
        let files = cStrings(o.cgroupFiles)
        defer {
            free(argv)
            if let env { free(env) }
            free(files)
        }
        var c = lm_spawn_opts()
        c.argv = UnsafePointer(argv)
        c.envp = env.map { UnsafePointer($0) }
        c.cgroup_files = UnsafeRawPointer(files).assumingMemoryBound(to: UnsafePointer<CChar>?.self)
        c.n_cgroup_files = Int32(o.cgroupFiles.count)
        c.stdin_fd = o.stdin.raw
        c.stdout_fd = o.stdout.raw
        c.stderr_fd = o.stderr.raw
        c.new_session = o.newSession ? 1 : 0
        c.set_oom_score_adj = o.oomScoreAdj == nil ? 0 : 1
        c.oom_score_adj = o.oomScoreAdj ?? 0
        c.set_ids = o.ids == nil ? 0 : 1
        c.uid = o.ids?.uid ?? 0
        c.gid = o.ids?.gid ?? 0
        c.close_fds = o.closeOtherFds ? 1 : 0
        c.detach = o.detach ? 1 : 0
        return withUnsafePointer(to: &c) { body($0) }
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
