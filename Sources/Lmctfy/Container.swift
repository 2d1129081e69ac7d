// One container: update, read back, statistics, its tasks and subcontainers,
// freezing and killing.
import Glibc
import LmctfyProto
import LmctfySystem

/// A handle on one existing container: its name and the ContainerApi that
/// made it (from `ContainerApi.get` or `create`). It holds no kernel state,
/// so it stays valid to pass around; each call looks at cgroupfs afresh and
/// reports NOT_FOUND once the container is gone. Sendable, like the API.
public struct Container: Sendable {
    /// The container's absolute, validated name ("/a/b").
    public let name: ContainerName
    let api: ContainerApi

    var driver: any CgroupDriver { api.driver }
    var tasksDir: CgroupDir { driver.tasksDir(name) }

    /// The resources this container isolates itself.
    public var isolatedResources: Set<ResourceKind> {
        get throws(LmctfyError) { try driver.isolated(name) }
    }

    // MARK: Update, spec, stats

    /// Applies a spec. DIFF writes the fields given; REPLACE must name every
    /// isolated resource and resets what it leaves out (D3). Only resources
    /// the container isolates may be named. Everything is validated before
    /// the first write, and a write the kernel refuses part way puts the
    /// previous values back: a failed update leaves the previous spec.
    public func update(_ spec: ContainerSpec, policy: UpdatePolicy) throws(LmctfyError) {
        // D7: the root's limits are the machine's; lmctfy never writes them.
        guard !name.isRoot else { throw .failedPrecondition("Updating the root container \"/\" is not allowed") }
        // Serialised with create and destroy of the same tree.
        try api.locked(name) { lock throws(LmctfyError) in try updateLocked(spec, policy: policy, lock: lock) }
    }

    private func updateLocked(_ asked: ContainerSpec, policy: UpdatePolicy, lock: FileLock?) throws(LmctfyError) {
        guard try api.exists(name) else { throw .notFound("Container \"\(name)\" does not exist") }
        // A virtual host's sections as it has them (a spec read back, given
        // again) change nothing: taken out. `spec | update replace` of a
        // virtual host was refused (12, "Updating filesystem is not
        // supported"; the virtual-host probe). Any other value still is.
        var spec = asked
        if spec.virtualHost != nil || spec.filesystem != nil {
            var current = ContainerSpec()
            try readVirtualHostSpec(into: &current)
            if spec.virtualHost == current.virtualHost && spec.filesystem == current.filesystem {
                spec.virtualHost = nil
                spec.filesystem = nil
            }
        }
        // The owner it has may be named (a spec read back, given again).
        if spec.owner != nil || spec.ownerGroup != nil {
            let (owner, group) = owner()
            if (spec.owner != nil && spec.owner != owner) || (spec.ownerGroup != nil && spec.ownerGroup != group) {
                throw .invalidArgument("owner and owner_group can only be set at create")
            }
        }
        try api.checkSupported(spec, isUpdate: true)
        let (dirs, isolated) = try driver.resolved(name)
        let named = Set(ResourceKind.allCases.filter { $0.isPresent(in: spec) })
        if !named.isSubset(of: isolated) {
            let extra = named.subtracting(isolated).sorted().map(\.description).joined(separator: ", ")
            throw .invalidArgument("Must not specify an update to a resource not being isolated (\(extra))")
        }
        if policy == .replace && named != isolated {
            throw .invalidArgument("A replace update must specify all resources being isolated.")
        }
        let order = named.sorted()
        for kind in order { try api.handler(kind).validate(spec, dirs: dirs) }
        // What the kernel has now, to put back if a write is refused part
        // way (validation cannot foresee every refusal: EBUSY, ENOSPC, ...):
        // the spec as read back, and the exact text of every one-line file
        // the update writes (a read-back spec is not always exact: cpu
        // shares and weights are rounded through milliCPU).
        var before = ContainerSpec()
        var saved: [CgroupWrite] = []
        for kind in order {
            let h = try api.handler(kind)
            try h.readSpec(into: &before, dirs: dirs)
            for w in try h.plannedWrites(spec, policy: policy, dirs: dirs) where !saved.contains(where: { $0.dir == w.dir && $0.file == w.file }) {
                let text: String
                do { text = try w.dir.read(w.file).trimmingWhitespace } catch where error.errno == EINVAL {
                    continue  // a write-only control file (devices.allow): the spec restores it
                }
                if !text.isEmpty && !text.contains("\n") { saved.append(CgroupWrite(w.dir, w.file, text)) }
            }
        }
        // Journaled in the tree's lock first: an update killed part way
        // (SIGKILL) left half the new spec (the new CPU limit with the old
        // memory limit, for good; the concurrency probe, 2 of 184 kills);
        // whoever locks the tree next puts the previous values back
        // (`recover`), as a refused write does here.
        if let lock {
            do { try lock.append(ContainerApi.updateJournal(name, before: before, saved: saved)) } catch {
                throw error.cgroup(.failedPrecondition, "Failed to journal the update")
            }
        }
        do throws(LmctfyError) {
            for kind in order { try api.handler(kind).apply(spec, policy: policy, dirs: dirs) }
            // A journal left would have the next holder of the lock undo
            // this update: one that cannot be cleared fails the update,
            // which is undone now (and again by that holder, alike).
            if let lock {
                do { try lock.clear() } catch { throw error.cgroup(.failedPrecondition, "Failed to clear the lock journal after the update") }
            }
        } catch {
            let restored = api.putBack(before, kinds: order, saved: saved, dirs: dirs)
                // A write refused before any other was made (a delegated
                // owner's update of a limit it may not write) is no failed
                // restore: it said "restoring the previous spec failed
                // too" with nothing changed (the CLI probe).
                || unchanged(before, kinds: order, saved: saved, dirs: dirs)
            // Put back: nothing left for the next holder to undo (best
            // effort; a journal left undoes the same values again).
            if restored, let lock { try? lock.clear() }
            throw LmctfyError(error.code, error.message + (restored ? "" : " (and restoring the previous spec failed too)"),
                              errno: error.errno)
        }
    }

    /// Whether the kernel still has what an update found before it: each
    /// one-line file it wrote, and the spec of `kinds` as read back.
    private func unchanged(_ before: ContainerSpec, kinds: [ResourceKind], saved: [CgroupWrite], dirs: ResourceDirs) -> Bool {
        guard saved.allSatisfy({ (try? $0.dir.read($0.file).trimmingWhitespace) == $0.value }) else { return false }
        var now = ContainerSpec()
        for kind in kinds {
            do { try api.handler(kind).readSpec(into: &now, dirs: dirs) } catch { return false }
        }
        return now == before
    }

    /// The spec as the kernel has it now, for the resources isolated here.
    public func spec() throws(LmctfyError) -> ContainerSpec {
        let (dirs, isolated) = try driver.resolved(name)
        return try spec(dirs: dirs, isolated: isolated)
    }

    /// `spec()` from directories already looked up.
    func spec(dirs: ResourceDirs, isolated: Set<ResourceKind>) throws(LmctfyError) -> ContainerSpec {
        var spec = ContainerSpec()
        for kind in isolated.sorted() {
            guard let h = api.handlers[kind] else { continue }
            do {
                try h.readSpec(into: &spec, dirs: dirs)
            } catch where name.isRoot && error.code == .notFound {
                // The root cgroup lacks most limit files (pids.max, memory.max
                // on v2): it has no limits to report.
            }
        }
        try readVirtualHostSpec(into: &spec)
        (spec.owner, spec.ownerGroup) = owner()
        try stillExists()
        return spec
    }

    /// NOT_FOUND once a destroy has begun (it marks the container first,
    /// then removes its directories one hierarchy at a time): what was read
    /// meanwhile lacked the sections whose directories had gone, and was
    /// answered with exit 0 (`stats` racing a destroy: `{}`, or cpu only;
    /// a probe).
    private func stillExists() throws(LmctfyError) {
        guard !name.isRoot else { return }
        guard try api.exists(name) else { throw .notFound("Container \"\(name)\" does not exist") }
    }

    /// owner / owner_group as a create set them: the tasks directory's
    /// owner and group when not root's (lmctfy runs as root; a directory a
    /// delegated owner made is that owner's). `spec` left them out, so a
    /// snapshot, a migration or `lmctfy spec | lmctfy create` lost them.
    func owner() -> (Int64?, Int64?) {
        guard !name.isRoot, let st = try? Sys.linkStatus(tasksDir.path) else { return (nil, nil) }
        return (st.st_uid == 0 ? nil : Int64(st.st_uid), st.st_gid == 0 ? nil : Int64(st.st_gid))
    }

    /// The container's statistics (`type`: SUMMARY or FULL), gathered by each
    /// resource it isolates, in resource order. The root reports what its fewer
    /// files allow; NOT_FOUND when the container no longer exists.
    public func stats(_ type: StatsType) throws(LmctfyError) -> ContainerStats {
        var stats = ContainerStats()
        let (dirs, isolated) = try driver.resolved(name)
        for kind in isolated.sorted() {
            guard let h = api.handlers[kind] else { continue }
            do {
                try h.stats(into: &stats, type: type, dirs: dirs)
            } catch where name.isRoot && error.code == .notFound {
                // As in spec(): the root has fewer files.
            }
        }
        try stillExists()
        return stats
    }

    // MARK: Tree and tasks

    /// Direct (or, recursively, all) subcontainers, sorted by name.
    public func subcontainers(recursive: Bool) throws(LmctfyError) -> [ContainerName] {
        var out: [ContainerName] = []
        try collect(name, recursive: recursive, into: &out)
        return out.sorted()
    }

    private func collect(_ name: ContainerName, recursive: Bool, into out: inout [ContainerName]) throws(LmctfyError) {
        let dir = driver.tasksDir(name)
        let children: [String]
        do {
            children = try dir.subdirectories()
        } catch {
            // A subcontainer destroyed while we walk is simply gone; the
            // container asked about must exist.
            if error.code == .notFound && name != self.name { return }
            throw LmctfyError(error.code, "Failed to list subcontainers of \"\(name)\": \(error.message)", errno: error.errno)
        }
        for child in children {
            // Only lmctfy's complete containers are listed: a directory
            // lmctfy did not make, or one a create is still making (or was
            // killed making), is not a container.
            do {
                guard try dir.child(child).state() == .complete else { continue }
            } catch where error.code == .notFound {
                continue  // destroyed while we walk
            }
            let sub: ContainerName
            do {
                sub = try ContainerName.resolve(child, relativeTo: name)
            } catch {
                throw .failedPrecondition("Subcontainer directory \"\(ContainerName.printable(dir.path + "/" + child, limit: .max))\" is not a valid container name")
            }
            out.append(sub)
            if recursive { try collect(sub, recursive: true, into: &out) }
        }
    }

    /// PIDs (cgroup.procs), sorted; recursive adds every subcontainer's.
    public func processes(recursive: Bool) throws(LmctfyError) -> [pid_t] {
        try listTasks("cgroup.procs", recursive: recursive)
    }

    /// TIDs (v1 tasks, v2 cgroup.threads), sorted; recursive adds every subcontainer's.
    public func threads(recursive: Bool) throws(LmctfyError) -> [pid_t] {
        try listTasks(driver.threadsFile, recursive: recursive)
    }

    private func listTasks(_ file: String, recursive: Bool) throws(LmctfyError) -> [pid_t] {
        guard try api.exists(name) else { throw .notFound("Container \"\(name)\" does not exist") }
        var all = Set(try tasksDir.readPids(file))
        if recursive {
            for sub in try subcontainers(recursive: true) {
                do {
                    all.formUnion(try driver.tasksDir(sub).readPids(file))
                } catch where error.code == .notFound {
                    // Destroyed while we listed: it has no tasks to report.
                }
            }
        }
        return all.sorted()
    }

    // MARK: Freezer and kill

    /// Whether the container is frozen (paused).
    /// The kernel's identity of this container's cgroup directory (its
    /// inode number, which cgroupfs does not give again while the machine
    /// runs), nil if it is gone: tells a container from one destroyed and
    /// made again under its name.
    public func directoryIdentity() -> UInt64? {
        (try? Sys.linkStatus(tasksDir.path)).map { UInt64($0.st_ino) }
    }

    public func isFrozen() throws(LmctfyError) -> Bool {
        try driver.isFrozen(name)
    }

    /// The kernel's count of OOM kills in the container (v2 memory.events
    /// oom_kill, v1 memory.oom_control oom_kill); nil when it isolates no
    /// memory or the count cannot be read.
    /// The inode number of the container's tasks cgroup directory: which
    /// container of this name it is (cgroupfs numbers its directories
    /// afresh; one made again after a destroy has another). nil when it
    /// cannot be read.
    public func cgroupId() -> UInt64? {
        Sys.inode(tasksDir.path)?.ino
    }

    /// The token its creator gave (`ContainerApi.create`'s `origin`); nil:
    /// none, or it cannot be read.
    public func origin() -> String? {
        (try? tasksDir.record(.origin)) ?? nil
    }

    public func oomKills() -> Int64? {
        guard let counter = try? driver.monitorPlan(name).oomCounter else { return nil }
        return (try? counter.dir.readKeyValues(counter.file))?[counter.key]
    }

    /// The ancestors (the root excepted, which cannot be paused) that are
    /// paused themselves, outermost first. While one is, this container's
    /// tasks stay frozen whatever its own state: it cannot be resumed, and
    /// on cgroup v1 its processes cannot die.
    public func pausedAncestors() throws(LmctfyError) -> [ContainerName] {
        var out: [ContainerName] = []
        var at = name.parent
        while let a = at, !a.isRoot {
            do {
                if try driver.isPausedItself(a) { out.append(a) }
            } catch where error.code == .notFound {
                // Destroyed meanwhile: not paused.
            }
            at = a.parent
        }
        return out.reversed()
    }

    /// FAILED_PRECONDITION naming the paused ancestors when there are any
    /// (`paused`: as `pausedAncestors` just read them): what `action` (e.g.
    /// "resumed") cannot be done below them.
    func refuseUnderPausedAncestors(_ action: String, _ known: [ContainerName]? = nil) throws(LmctfyError) {
        let paused: [ContainerName]
        if let known { paused = known } else { paused = try pausedAncestors() }
        guard let top = paused.first else { return }
        let names = paused.map { "\"\($0)\"" }.joined(separator: ", ")
        throw .failedPrecondition("Container \"\(name)\" cannot be \(action) while \(paused.count == 1 ? "its ancestor" : "its ancestors") "
                                  + "\(names) \(paused.count == 1 ? "is" : "are") paused: resume \"\(top)\" first")
    }

    /// Freezes (true) or thaws (false) and waits, bounded, until the kernel
    /// reports the new state. Thawing below a paused ancestor is refused
    /// (FAILED_PRECONDITION, nothing changed): the kernel would keep the
    /// container frozen.
    /// A pause or resume: a kill's freeze it replaces is no longer the
    /// kill's to undo.
    /// A pause that does not finish within `timeoutMs` (UNAVAILABLE: a
    /// process the kernel cannot freeze, one waiting uninterruptibly on a
    /// filesystem or a device) is undone before the error: the container
    /// runs as before, not half frozen with the freeze still asked. A
    /// freeze that was asked before the call (not by it) is left asked.
    /// Under the tree's lock, as a run's start is (see `run`).
    /// Returns whether its state changed: false for a pause of a container
    /// paused (itself, and frozen) already, or a resume of one not paused.
    @discardableResult
    public func setFrozen(_ frozen: Bool, timeoutMs: Int = 5000) throws(LmctfyError) -> Bool {
        try api.locked(name) { _ throws(LmctfyError) -> Bool in
            if frozen { try refuseIfCallerInside("paused") }
            guard !name.isRoot else { throw .failedPrecondition("The root container \"/\" cannot be \(frozen ? "paused" : "resumed")") }
            let pausedItself = try driver.isPausedItself(name)
            var already = !pausedItself
            if frozen { already = try pausedItself ? isFrozen() : false }
            try freeze(frozen, timeoutMs: timeoutMs, pausedItself: pausedItself, undoOnTimeout: true)
            if try tasksDir.record(.killing)?.isEmpty == false { try tasksDir.setRecord(.killing, "") }
            return !already
        }
    }

    /// `undoOnTimeout`: a freeze this call asked for and the kernel did not
    /// finish is taken back (a kill keeps it: it kills what it can while
    /// the freeze holds what it could stop, and thaws afterwards).
    /// `pausedItself`: whether it was, if the caller looked already.
    private func freeze(_ frozen: Bool, timeoutMs: Int = 5000, pausedItself: Bool? = nil, undoOnTimeout: Bool = false) throws(LmctfyError) {
        guard !name.isRoot else { throw .failedPrecondition("The root container \"/\" cannot be \(frozen ? "paused" : "resumed")") }
        if !frozen { try refuseUnderPausedAncestors("resumed") }
        var undo = false
        if undoOnTimeout && frozen {
            if let pausedItself { undo = !pausedItself } else { undo = try !driver.isPausedItself(name) }
        }
        try driver.requestFrozen(name, frozen)
        // A deadline, not a count of 1 ms sleeps: each round's read and
        // nudge take time too, and under load the 500 ms bound of a kill's
        // freeze was seconds (a kill of an unfreezable task took 73 s in
        // the v2 guest instead of ~17).
        let deadline = MonotonicClock.milliseconds() + UInt64(max(0, timeoutMs))
        while try isFrozen() != frozen {
            if MonotonicClock.milliseconds() >= deadline {
                let what = "Container \"\(name)\" did not become \(frozen ? "frozen" : "thawed") within \(timeoutMs) ms"
                guard undo else { throw .unavailable(what) }
                do {
                    try driver.requestFrozen(name, false)
                } catch {
                    throw .unavailable(what + "; taking the pause back failed too (\(error.message)): it may stay freezing until resumed")
                }
                throw .unavailable(what + " (one of its processes cannot be frozen: waiting uninterruptibly, on a filesystem or a device); "
                                   + "the pause was taken back and it runs as before")
            }
            try driver.nudgeFreezer(name, frozen)
            usleep(1000)
        }
    }

    /// Kills every process of this container, not its subcontainers (D9):
    /// freeze so nothing can fork, SIGKILL every task, thaw so the kills land,
    /// repeat until empty. Works on a paused container (it stays thawed
    /// afterwards, with nothing left in it); below a paused ancestor it is
    /// refused before anything is signalled (FAILED_PRECONDITION: the kills
    /// could not land until the ancestor resumes). Never signals anything
    /// outside.
    public func killAll(rounds: Int = 10) throws(LmctfyError) {
        guard !name.isRoot else { throw .failedPrecondition("Killing every process of the root container \"/\" is not allowed") }
        guard try api.exists(name) else { throw .notFound("Container \"\(name)\" does not exist") }
        try killTasks(rounds: rounds)
    }

    /// killAll on the tasks directory, visible or not (destroy empties what
    /// an interrupted create or destroy left too).
    func killTasks(rounds: Int = 10) throws(LmctfyError) {
        if try tasksDir.readPids("cgroup.procs").isEmpty { return }
        try refuseIfCallerInside("emptied")
        try thawInterruptedKill()
        try refuseUnderPausedAncestors("emptied")
        // Who holds the freeze below, for as long as it does: a kill that
        // dies part way (SIGKILL of `lmctfy killall`) leaves it frozen,
        // and the next run or kill undoes that (`thawInterruptedKill`).
        // Written again every round: each round ends thawed with it
        // cleared, and a kill that died in a later round's freeze left the
        // container frozen with no record to undo it.
        for round in 0..<rounds {
            try tasksDir.setRecord(.killing, Self.killerIdentity)
            // Frozen, nothing forks while the kills go out. A task the
            // freezer cannot stop in time (uninterruptible, in reclaim at a
            // memory limit) is killed all the same, and the container is
            // thawed below either way: a kill that does not finish never
            // leaves it frozen (or half-way, FREEZING) behind.
            do {
                try freeze(true, timeoutMs: Self.killFreezeBoundMs)
            } catch where error.code == .unavailable {
                // Not frozen within the bound: kill what is there now.
            }
            let pids = try tasksDir.readPids("cgroup.procs")
            Progress.report("\(name): killing \(pids.count) process\(pids.count == 1 ? "" : "es")\(round > 0 ? " (round \(round + 1))" : "")")
            for pid in pids {
                do {
                    try Sys.kill(pid, SIGKILL, faults: api.faults)
                } catch where error.errno == EPERM {
                    // Another user's process (in a delegated container):
                    // not "unkillable", forbidden. Thaw before saying so.
                    if (try? driver.requestFrozen(name, false)) != nil { try? tasksDir.setRecord(.killing, "") }
                    throw error.lmctfy(.permissionDenied, "Not allowed to kill process \(pid) of container \"\(name)\" (\(tasksDir.path))")
                } catch {
                    // ESRCH: it exited since the listing.
                }
            }
            try freeze(false)
            try tasksDir.setRecord(.killing, "")
            // Wait for the killed tasks to leave the cgroup: up to a second
            // by the clock (2,000 sleeps of 500 us took 2.5 s a round in
            // the v2 guest, whose reads are slower).
            let leaveBy = MonotonicClock.milliseconds() + 1000
            while try !tasksDir.readPids("cgroup.procs").isEmpty && MonotonicClock.milliseconds() < leaveBy {
                usleep(500)
            }
            let procs = try tasksDir.readPids("cgroup.procs")
            let threads = try tasksDir.readPids(driver.threadsFile)
            if procs.isEmpty && threads.isEmpty { return }
        }
        let left = try tasksDir.readPids("cgroup.procs")
        // Which, and where each waits: a task in an uninterruptible wait (a
        // FUSE or NFS server that does not answer, a device) dies only
        // when that wait ends.
        let named = left.prefix(5).map { pid -> String in
            let wchan = ((try? Sys.readFile("/proc/\(pid)/wchan")) ?? "").trimmingWhitespace
            return wchan.isEmpty || wchan == "0" ? "\(pid)" : "\(pid) (waiting in \(wchan))"
        }.joined(separator: ", ") + (left.count > 5 ? ", ..." : "")
        throw .failedPrecondition("Expected container \"\(name)\" to have no processes, has \(left.count): \(named). Some may be unkillable "
                                  + "(in an uninterruptible wait, on a filesystem or a device, they die when it ends: they were sent SIGKILL)")
    }

    /// How long a kill waits for its freeze (which only keeps the tasks
    /// from forking while they are killed) before killing anyway: a task
    /// that does not freeze by then waits where no freezer reaches it (nor
    /// can it fork from there). Ten rounds took over a minute at 5 s each.
    static let killFreezeBoundMs = 500

    /// FAILED_PRECONDITION when this process is in the container or below
    /// it: its freeze would stop the caller itself, for good (an `lmctfy
    /// destroy -f` or `pause` run from a shell inside the container froze
    /// itself, and the container with it, until someone resumed it from
    /// outside; an agent inside a tree it was asked to pause, the same).
    /// Where this process is cannot be read (a fake tree): not refused.
    func refuseIfCallerInside(_ action: String) throws(LmctfyError) {
        guard let here = try? api.detect(pid: 0), here == name || name.isAncestor(of: here) else { return }
        throw .failedPrecondition("Container \"\(name)\" cannot be \(action) from inside it: this process (pid \(getpid())) is in \"\(here)\", "
                                  + "and the freeze would stop it for good; run it from outside the container")
    }

    /// This process as a `killing` record names it: pid and start time
    /// (/proc/self/stat field 22), so that a pid used again is not taken
    /// for the killer.
    static let killerIdentity: String = "\(getpid()) \(processStart(getpid()) ?? "?")"

    /// Field 22 of /proc/PID/stat, the start time; nil if it is gone,
    /// or dead and not yet reaped (state Z or X: a killer killed part way
    /// whose parent has not reaped it was taken for a kill still running,
    /// and its freeze was kept until then; a probe).
    static func processStart(_ pid: pid_t) -> Substring? {
        guard let fields = Sys.procStatFields("/proc/\(pid)/stat"), fields.count > 19,
              fields[0] != "Z", fields[0] != "X" else { return nil }
        return fields[19]
    }

    /// Undoes a freeze that a kill of this container's processes left when
    /// it was itself killed part way (its `killing` record names a process
    /// that is gone): thawed as the kill would have left it. A kill still
    /// running, a pause (which clears the record) or a freeze under a
    /// paused ancestor is left as it is.
    func thawInterruptedKill() throws(LmctfyError) {
        guard let killer = try tasksDir.record(.killing), !killer.isEmpty else { return }
        let parts = killer.split(separator: " ")
        if parts.count == 2, let pid = pid_t(parts[0]), pid > 0, Self.processStart(pid) == parts[1] { return }
        if try !pausedAncestors().isEmpty { return }
        try freeze(false)
        try tasksDir.setRecord(.killing, "")
    }
}
