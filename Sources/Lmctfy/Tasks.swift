// Processes in containers: run (spawn), exec (replace the caller), enter
// (move existing tasks). A task joins, in every hierarchy, the directory of
// the nearest container (itself or an ancestor) that isolates that resource,
// as the original's ancestor fallback does.
import Glibc
import LmctfyProto
import LmctfySystem

/// How a command is started by `Container.run`.
public struct RunOptions: Sendable {
    /// DETACHED (the CLI's `run -n`): new session, stdio on /dev/null, no
    /// other descriptor inherited, not the caller's child (D6). INHERIT:
    /// the caller's stdio, still no other descriptors.
    public var fdPolicy: RunSpec.FdPolicy = .detached
    /// The command's environment (`KEY=value` entries); nil: the caller's.
    public var environment: [String]?
    /// Overrides the policy's stdin (nil: as the policy says).
    public var stdin: StdioTarget?
    /// Overrides the policy's stdout (nil: as the policy says).
    public var stdout: StdioTarget?
    /// Overrides the policy's stderr (nil: as the policy says).
    public var stderr: StdioTarget?
    /// Drop to this uid/gid before exec.
    public var ids: (uid: uid_t, gid: gid_t)?
    /// The caller has just found the container to exist (LocalBackend's
    /// `get`): `run` does not look again.
    var existenceChecked = false
    /// Its own session (and process group, whose id is its pid) though its
    /// stdio is inherited: a foreground command of a caller with no
    /// terminal (the agent's Run), whose whole job (a shell's children
    /// too) is killed with `kill(-pid)` when its caller goes.
    public var ownSession = false
    /// With `ownSession`: its stdin (a terminal) is the session's
    /// controlling terminal (a command on a pseudo-terminal, `lmctl run -t`).
    public var controllingTerminal = false
    /// Signals the command starts with ignored (every other one at its
    /// default): those lmctfy itself was started with ignored, for a
    /// command it runs in its stead.
    public var ignoredSignals: [Int32] = []

    /// Options with the given fd policy (DETACHED unless told), the caller's
    /// environment and ids, stdio as the policy says.
    public init(fdPolicy: RunSpec.FdPolicy = .detached) {
        self.fdPolicy = fdPolicy
    }
}

extension Container {
    /// The files a new task writes itself into: cgroup.procs of the nearest
    /// directory per hierarchy, deduplicated (co-mounts), tasks dir first.
    public func joinFiles() throws(LmctfyError) -> [String] {
        // The spawned child writes "0" (itself) to its driver's enter file:
        // on v1 `tasks`, which moves the writer alone (it is the whole
        // process: one thread between fork and exec) without taking the
        // kernel's threadgroup lock, whose write side waits for an RCU grace
        // period (10-13 ms per spawn here; cgroup.procs always takes it).
        let file = driver.enterFile
        return try joinDirs(for: "thread-self").map { $0.file(file) }
    }

    /// The directories a task joins, less those it is in already: joining
    /// one of those changes nothing, and the owner of a delegated
    /// container may not write the files of the cgroups it does not own
    /// (the root `devices` cgroup when the container does not isolate
    /// devices). `task` is a pid or tid, or "thread-self" for a child this
    /// thread spawns (it starts where this thread is).
    func joinDirs(for task: String) throws(LmctfyError) -> [CgroupDir] {
        let dirs = try driver.joinDirs(name)
        guard let text = try? Sys.readBytes(api.procRoot + "/" + task + "/cgroup") else { return dirs }
        let current = api.mounts.taskCgroups(text)
        return dirs.filter { d in current.first { $0.mount == d.mount }.map { !d.isAt($0.path) } ?? true }
    }

    /// The pids directories of this container and its ancestors that
    /// isolate pids: a new task counts against each one's limit. The kernel
    /// charges a task that joins without checking pids.max (only a fork
    /// inside is refused), so the spawned child checks them once it has
    /// joined (`run -n` five times into a container of limit 1 ran five).
    ///
    /// A container isolates only what its parent isolates (create refuses
    /// the rest), so they are the nearest pids directory and every one
    /// above it below the hierarchy's root: one lookup, not two per level.
    func pidsLimitDirs() throws(LmctfyError) -> [String] {
        guard let nearest = try driver.nearestDir(.pids, name), let root = try driver.nearestDir(.pids, .root) else { return [] }
        var out: [String] = []
        var path = nearest.path
        while path.hasPrefix(root.path + "/") {
            out.append(path)
            path = String(path[..<path.lastIndex(of: "/")!])
        }
        return out
    }

    /// The eviction priority in force here (D12): the nearest memory-isolating
    /// container's record, mapped onto oom_score_adj; nil when none was set
    /// (or the kernel's memory.oom_score_badness does the job itself).
    func oomScoreAdj() throws(LmctfyError) -> Int32? {
        for candidate in name.selfAndAncestors where !candidate.isRoot {
            guard try driver.isolates(.memory, candidate) else { continue }
            guard let dir = try driver.nearestDir(.memory, candidate) else { continue }
            if try dir.has(MemoryHandler.evictionBadnessFile) { return nil }
            guard let text = try dir.record(.evictionPriority),
                  let priority = Int32(text.trimmingWhitespace) else { return nil }
            return Int32(MemoryHandler.oomScoreAdj(priority: priority))
        }
        return nil
    }

    /// A process that joins a frozen container freezes there before it
    /// starts: before exec, holding the caller's descriptors, its start
    /// never reported (a Run through the agent hung until its deadline,
    /// the CLI's own `run` froze itself). Refused with the reason instead.
    /// FREEZING counts: the task would freeze all the same. A freeze left
    /// by a kill that was itself killed is undone first.
    private func refuseIfPaused(_ doing: String) throws(LmctfyError) {
        guard !name.isRoot, try !driver.isThawed(name) else { return }
        try thawInterruptedKill()
        if try !driver.isThawed(name) {
            throw .failedPrecondition("Container \"\(name)\" is paused: resume it before \(doing)")
        }
    }

    private func spawnOptions(_ argv: [String], _ options: RunOptions) throws(LmctfyError) -> SpawnOptions {
        guard !argv.isEmpty, !argv[0].isEmpty else { throw .invalidArgument("No command to run") }
        if !options.existenceChecked, try !api.exists(name) { throw .notFound("Container \"\(name)\" does not exist") }
        try refuseIfPaused("running a command in it")
        var o = SpawnOptions(argv: argv)
        o.environment = options.environment
        o.cgroupFiles = try joinFiles()
        o.pidsLimitDirs = try pidsLimitDirs()
        o.oomScoreAdj = try oomScoreAdj()
        // Said before a fork, as an enter does: the child failed its write
        // ("oom_score_adj: Permission denied", no word of the capability).
        if let adj = o.oomScoreAdj { try MemoryHandler.refuseWithoutCapability(forAdj: adj, "Running in \"\(name)\"") }
        o.ids = options.ids
        o.closeOtherFds = true
        switch options.fdPolicy {
        case .detached:
            o.stdin = .devNull; o.stdout = .devNull; o.stderr = .devNull
            o.newSession = true
            o.detach = true
        case .inherit:
            break
        case .unknown:
            throw .invalidArgument("fd_policy UNKNOWN is not a valid policy")
        }
        if options.ownSession { o.newSession = true }
        o.controllingTerminal = options.ownSession && options.controllingTerminal
        o.ignoredSignals = options.ignoredSignals
        if let s = options.stdin { o.stdin = s }
        if let s = options.stdout { o.stdout = s }
        if let s = options.stderr { o.stderr = s }
        return o
    }

    /// Starts `argv` in the container; the process is in the container from
    /// its first instruction. Returns its pid. "Command not found" and every
    /// other failure before exec is an error here, not a silent exit 127.
    ///
    /// Under the tree's lock, as a pause is: the check that the container
    /// is not paused and the new process's join and exec are one step. A
    /// pause between them froze the process before its exec, and the
    /// agent's thread that vforked it with it (forever: a Resume waited
    /// behind it, and the frozen process held every descriptor the agent
    /// had open then, another call's lock among them, and the agent's
    /// state_dir lock past a restart; a probe racing Run, Pause and Destroy).
    public func run(_ argv: [String], options: RunOptions = RunOptions()) throws(LmctfyError) -> pid_t {
        try api.locked(name) { _ throws(LmctfyError) -> pid_t in
            var o = try spawnOptions(argv, options)
            let entry = try VirtualHostEntry(self)
            defer { entry?.close() }
            entry?.apply(to: &o)
            do throws(SpawnError) {
                return try Spawn.spawn(o, faults: api.faults)
            } catch {
                throw Self.spawnError(error, name)
            }
        }
    }

    /// Replaces the calling process with `argv`, inside the container, with
    /// the caller's stdio and every other descriptor the caller gave it, as
    /// an exec does (the CLI's foreground `run`; lmctfy-behaviour.md §5
    /// Exec). Returns only by throwing.
    public func exec(_ argv: [String], environment: [String]? = nil) throws(LmctfyError) -> Never {
        // The tree's lock, as `run` takes it, is held until the exec closes
        // its descriptor (close-on-exec): a pause waits for the command to
        // be running.
        try api.locked(name) { _ throws(LmctfyError) -> Never in try execLocked(argv, environment: environment) }
    }

    private func execLocked(_ argv: [String], environment: [String]?) throws(LmctfyError) -> Never {
        var options = RunOptions(fdPolicy: .inherit)
        options.environment = environment
        var o = try spawnOptions(argv, options)  // INHERIT: not detached
        // Descriptors lmctfy opened are close-on-exec, and stay open until
        // the exec; those it inherited pass on to the command (`run c cmd
        // 7<file` gives cmd its fd 7), so none is closed here.
        o.closeOtherFds = false
        let entry = try VirtualHostEntry(self)
        entry?.apply(to: &o)
        let error = Spawn.exec(o)
        entry?.close()
        throw Self.spawnError(error, name)
    }

    static func spawnError(_ e: SpawnError, _ name: ContainerName) -> LmctfyError {
        let code: StatusCode = switch e.stage {
        // A command that is missing or not executable is NOT_FOUND, as in
        // the original; EACCES anywhere else is PERMISSION_DENIED.
        case .exec: e.errno == ENOENT || e.errno == EACCES ? .notFound : .failedPrecondition
        case .pids where e.errno == EAGAIN: .resourceExhausted
        case _ where e.errno == EACCES || e.errno == EPERM: .permissionDenied
        // Its directory went as the command joined: destroyed meanwhile.
        case .cgroup where e.errno == ENOENT || e.errno == ENODEV: .notFound
        case .cgroup: .unavailable
        default: .failedPrecondition
        }
        return LmctfyError(code, "Failed to run in container \"\(name)\": \(e)\(v2Hint(e.errno))", errno: e.errno)
    }

    /// cgroup v2's "no internal processes" rule explains EBUSY / EOPNOTSUPP
    /// on joining; say so instead of leaving the user with the bare errno.
    static func v2Hint(_ errno: Int32) -> String {
        errno == EBUSY || errno == EOPNOTSUPP
            ? " (on cgroup v2 a container cannot hold processes while its parent has processes and subcontainers that isolate resources; run processes in leaf containers)"
            : ""
    }

    /// Moves existing tasks into the container: each tid joins the nearest
    /// directory of every hierarchy. v1 moves just that thread (tasks file);
    /// v2 moves its whole process (cgroup v2 keeps a process's threads
    /// together in domain cgroups). Not atomic: on failure earlier tids stay moved.
    ///
    /// Under the tree's lock, as `run` is: a destroy is before or after it,
    /// never half way (a destroy racing it removed the directories under
    /// the moves: UNAVAILABLE, "No such file or directory" or ENODEV, with
    /// the task moved into some hierarchies; a probe). A directory gone
    /// all the same (a destroy that took no lock) is NOT_FOUND.
    ///
    /// Journaled in the tree's lock: an enter killed between two of a
    /// task's writes left it in the container's first hierarchy (freezer on
    /// v1, where `detect` and `list pids` look) and outside its memory and
    /// pids limits, for good (the CLI probe: Ctrl-C or SIGKILL tore it 3 to
    /// 7 tries in); whoever locks the tree next completes the move
    /// (`completeEnter`).
    public func enter(_ tids: [pid_t]) throws(LmctfyError) {
        try api.locked(name) { lock throws(LmctfyError) in
            // (One write a task on v2: nothing to tear.)
            if let lock, try driver.joinDirs(name).count > 1 {
                let lines = tids.compactMap { tid in Self.processStart(tid).map { "\nenter \(name) \(tid) \($0)" } }
                do throws(SystemError) { try lock.append("boot \(ContainerLock.bootId)" + lines.joined()) } catch {
                    throw error.cgroup(.failedPrecondition, "Failed to journal the enter")
                }
            }
            // A refused move says so and is not completed later: the
            // journal goes however the moves end (a killed enter keeps it).
            defer { if let lock { try? lock.clear() } }
            try enterLocked(tids)
        }
    }

    /// Completes the move of `tid` (started at `start`) that a killed
    /// enter began: only while it is the same task, in the tasks directory
    /// (the first an enter writes) and not yet in all the others (moved
    /// elsewhere since, it stays there). Best effort.
    func completeEnter(_ tid: pid_t, start: Substring) {
        guard Self.processStart(tid) == start, let missing = try? joinDirs(for: String(tid)),
              !missing.isEmpty, !missing.contains(tasksDir) else { return }
        for dir in missing { try? dir.write(driver.enterFile, String(tid)) }
    }

    /// Refuses (RESOURCE_EXHAUSTED, before any task moves) an enter that
    /// would take this container or an ancestor over its pids limit: the
    /// kernel charges a task that joins without checking pids.max (only a
    /// fork inside is refused), so `enter` let any number of tasks into a
    /// container limited to one (a probe), where `run` refuses (its child
    /// checks the limits once joined). A task counts where it is not
    /// counted yet: one thread on v1 (the tasks file), its whole process on
    /// v2 (cgroup.procs). As any check of a count that forks move, it holds
    /// at the time of the check.
    private func refuseOverPidsLimits(_ tids: [pid_t]) throws(LmctfyError) {
        let limits = try pidsLimitDirs()
        guard !limits.isEmpty, let mount = try driver.nearestDir(.pids, .root)?.path else { return }
        let wholeProcess = driver.version == .v2
        var tasks: [(path: String, count: Int)] = []
        for tid in Set(tids) {
            guard let text = try? Sys.readBytes(api.procRoot + "/\(tid)/cgroup"),
                  let at = api.mounts.taskCgroups(text).first(where: { $0.mount == mount }) else { continue }
            tasks.append((mount + String(decoding: at.path, as: UTF8.self), wholeProcess ? Self.threadCount(api.procRoot, tid) : 1))
        }
        for dir in limits {
            guard let max = (try? Sys.readFile(dir + "/pids.max")).flatMap({ Int($0.trimmingWhitespace) }),
                  let current = (try? Sys.readFile(dir + "/pids.current")).flatMap({ Int($0.trimmingWhitespace) }) else { continue }
            let adding = tasks.filter { $0.path != dir && !$0.path.hasPrefix(dir + "/") }.reduce(0) { $0 + $1.count }
            if adding > 0 && current + adding > max {
                throw LmctfyError(.resourceExhausted, "Entering into \"\(name)\" would take \(dir) over its pids limit: "
                                  + "\(current) of \(max) taken, \(adding) more asked; nothing was moved")
            }
        }
    }

    /// The threads of process `pid` (/proc/PID/status), at least 1.
    static func threadCount(_ procRoot: String, _ pid: pid_t) -> Int {
        guard let n = Sys.procStatusField(procRoot + "/\(pid)/status", "Threads").flatMap({ Int($0) }) else { return 1 }
        return max(n, 1)
    }

    private func enterLocked(_ tids: [pid_t]) throws(LmctfyError) {
        guard try api.exists(name) else { throw .notFound("Container \"\(name)\" does not exist") }
        // A task entering a frozen container freezes there: the CLI's
        // caller (its shell, by default) stopped in D until a resume from
        // elsewhere, beyond even SIGKILL (a probe). As for a run.
        try refuseIfPaused("entering tasks into it")
        try refuseOverPidsLimits(tids)
        // As the original: a task may only enter a container of its own
        // virtual host (its pid namespace is that of the container's init,
        // which is ours for an ordinary container). A tid whose namespace
        // cannot be read (gone, another user's) is left to the cgroup write
        // below, which says why (5, 7) instead of the original's 13.
        let initPid = try virtualHostInit()
        let initNs = Namespaces.inode(api.procRoot, initPid.map { String($0) } ?? "self", "pid")
        for tid in tids {
            guard let ns = Namespaces.inode(api.procRoot, String(tid), "pid") else { continue }
            if ns != initNs { throw .failedPrecondition("Container in a different Virtual Host can't be entered.") }
        }
        // The oom_score_adj each task is to get: below 0 needs
        // CAP_SYS_RESOURCE, refused before any task is moved.
        let adj = try oomScoreAdj()
        if let adj { try MemoryHandler.refuseWithoutCapability(forAdj: adj, "Entering \"\(name)\"") }
        for (i, tid) in tids.enumerated() {
            // Where this container sets no priority, a task leaving one that
            // did goes back to the default (0) unless something changed its
            // oom_score_adj since: it kept "kill me first" (1000, priority
            // 0) moved to / (a probe).
            let leaving = adj != nil ? nil : try? Container(name: api.detect(pid: tid), api: api).oomScoreAdj()
            for dir in try joinDirs(for: String(tid)) {
                do {
                    try dir.write(driver.enterFile, String(tid))
                } catch {
                    let note = i > 0 ? " (some TIDs were tracked before this error)" : ""
                    // ESRCH: no such task; ENOENT, ENODEV: the directory went.
                    let gone = [ESRCH, ENOENT, ENODEV].contains(error.errno ?? 0)
                    // EINVAL: a task the kernel never moves (a kernel
                    // thread such as kthreadd); it was UNAVAILABLE, as if
                    // trying again could help (a probe).
                    let fixed = error.errno == EINVAL
                    let code: StatusCode = gone ? .notFound : error.code == .permissionDenied ? .permissionDenied : fixed ? .invalidArgument : .unavailable
                    let why = fixed ? " (the kernel does not move this task: a kernel thread stays where it is)" : Self.v2Hint(error.errno ?? 0)
                    throw LmctfyError(code, "Failed to enter TID \(tid) into \"\(name)\"\(note): \(error.message)\(why)",
                                      errno: error.errno)
                }
            }
            if let adj {
                do {
                    try Sys.writeFile(api.procRoot + "/\(tid)/oom_score_adj", String(adj))
                } catch where error.errno != ESRCH && error.errno != ENOENT {
                    // Entered, but without the priority its container's
                    // processes get (a `try?` said nothing; a probe).
                    throw error.lmctfy(.permissionDenied, "TID \(tid) entered \"\(name)\" but its oom_score_adj could not be set to \(adj)"
                                       + " (the container's eviction priority)")
                } catch {}
            } else if let had = leaving, had != 0,
                      let now = try? Sys.readFile(api.procRoot + "/\(tid)/oom_score_adj"), Int32(now.trimmingWhitespace) == had {
                do {
                    try Sys.writeFile(api.procRoot + "/\(tid)/oom_score_adj", "0")
                } catch where error.errno != ESRCH && error.errno != ENOENT {
                    throw error.lmctfy(.permissionDenied, "TID \(tid) entered \"\(name)\" but its oom_score_adj could not be put back to 0"
                                       + " from \(had) (the eviction priority of the container it left)")
                } catch {}
            }
        }
    }
}
