// cgroup v1: one hierarchy per controller (some co-mounted). freezer,
// memory, devices, blkio, pids, cpuset and perf_event mirror the container
// name (<mount>/a/b; cpuset and perf_event too, D8). cpu and cpuacct put a
// top-level container with latency NORMAL or BEST_EFFORT under /batch; a
// nested one goes under its parent's cpu directory. A container isolates a
// resource when it has that resource's owning directory; the freezer
// directory says it exists.
import Glibc
import LmctfyProto
import LmctfySystem

struct CgroupV1Driver: CgroupDriver {
    let mounts: CgroupMounts
    let procRoot: String
    var version: CgroupVersion { .v1 }
    /// The controllers that share their mount with an earlier one (see
    /// isCoMountedFollower), found once: asked for every directory.
    private let followers: Set<Controller>

    init(mounts: CgroupMounts, procRoot: String) {
        self.mounts = mounts
        self.procRoot = procRoot
        followers = Set(Controller.allCases.filter { c in
            guard let m = mounts.v1[c] else { return false }
            return Controller.allCases.contains { $0 < c && mounts.v1[$0] == m }
        })
    }

    private func dir(_ mount: String, _ segments: [String]) -> CgroupDir {
        CgroupDir(mount: mount, segments: segments, access: mounts.access)
    }

    func root(_ c: Controller) -> CgroupDir? { mounts.v1[c].map { dir($0, []) } }

    // MARK: Names → directories

    func tasksDir(_ name: ContainerName) -> CgroupDir { dir(mounts.v1[.freezer]!, name.components) }

    /// Whether c shares its mount with a controller that owns the directory
    /// (cpuacct co-mounted with cpu): it then never mkdirs or rmdirs.
    func isCoMountedFollower(_ c: Controller) -> Bool { followers.contains(c) }

    /// The existing directory of controller c for this container, if any.
    func existingDir(_ c: Controller, _ name: ContainerName) throws(LmctfyError) -> CgroupDir? {
        // Only a directory lmctfy made: another program's cgroup of the
        // same name is never taken for the container's (nor removed).
        for d in candidates(c, name) where try d.state().isLmctfy { return d }
        return nil
    }

    /// Where c's directory is or would be, most likely first. A nested
    /// container's cpu directory is under its parent's, so under its
    /// top-level ancestor's: below the mount or below /batch, the two
    /// places asked (the ancestors are not looked up one by one: that made
    /// each lookup quadratic in the depth, and a destroy of a 400-deep tree
    /// took 35 s).
    func candidates(_ c: Controller, _ name: ContainerName) -> [CgroupDir] {
        guard let mount = mounts.v1[c] else { return [] }
        let plain = dir(mount, name.components)
        guard c == .cpu || c == .cpuacct, !name.isRoot else { return [plain] }
        return [plain, dir(mount, ["batch"] + name.components)]
    }

    /// Where a new container's directory of controller c goes.
    private func newDir(_ c: Controller, _ name: ContainerName, spec: ContainerSpec) throws(LmctfyError) -> CgroupDir? {
        guard let mount = mounts.v1[c] else { return nil }
        guard c == .cpu || c == .cpuacct else { return dir(mount, name.components) }
        if name.depth == 1 {
            let latency = spec.cpu?.schedulingLatency
            let batch = latency == .normal || latency == .bestEffort
            if batch, try !dir(mount, ["batch"]).exists() {
                throw .failedPrecondition("The cpu /batch cgroup does not exist; run \"lmctfy init\" first")
            }
            return dir(mount, (batch ? ["batch"] : []) + name.components)
        }
        guard let parent = name.parent, let parentDir = try existingDir(c, parent) else {
            throw .notFound("Container \"\(name.parent!)\" does not isolate cpu, so \"\(name)\" cannot isolate it either")
        }
        return parentDir.child(name.basename)
    }

    func isolated(_ name: ContainerName) throws(LmctfyError) -> Set<ResourceKind> {
        var out = Set<ResourceKind>()
        for kind in ResourceKind.allCases {
            guard let owner = kind.v1Controllers.first, mounts.v1[owner] != nil else { continue }
            if name.isRoot { out.insert(kind) } else if try existingDir(owner, name) != nil { out.insert(kind) }
        }
        return out
    }

    func isolates(_ kind: ResourceKind, _ name: ContainerName) throws(LmctfyError) -> Bool {
        guard let owner = kind.v1Controllers.first, mounts.v1[owner] != nil else { return false }
        if name.isRoot { return true }
        return try existingDir(owner, name) != nil
    }

    func available(_ kind: ResourceKind) -> Bool {
        kind.v1Controllers.first.map { mounts.v1[$0] != nil } ?? false
    }

    func resourceDirs(_ name: ContainerName) throws(LmctfyError) -> ResourceDirs {
        var dirs: [Controller: CgroupDir] = [:]
        for c in Controller.allCases {
            // The root's are the hierarchies' own roots, which lmctfy did
            // not make (existingDir takes only lmctfy's): without them `spec
            // /` and `stats summary /` printed nothing.
            if let d = try name.isRoot ? root(c) : existingDir(c, name) { dirs[c] = d }
        }
        return ResourceDirs(driver: self, container: name, byController: dirs, tasks: dirs[.freezer])
    }

    /// One lookup per hierarchy: a resource is isolated when its owning
    /// controller's directory was found (what `isolated` asks again).
    func resolved(_ name: ContainerName) throws(LmctfyError) -> (dirs: ResourceDirs, isolated: Set<ResourceKind>) {
        let dirs = try resourceDirs(name)
        guard !name.isRoot else { return (dirs, try isolated(name)) }
        var out = Set<ResourceKind>()
        for kind in ResourceKind.allCases {
            guard let owner = kind.v1Controllers.first, mounts.v1[owner] != nil else { continue }
            if dirs.byController[owner] != nil { out.insert(kind) }
        }
        return (dirs, out)
    }

    func nearestDir(_ c: Controller, _ name: ContainerName) throws(LmctfyError) -> CgroupDir? {
        for candidate in name.selfAndAncestors {
            if let d = try candidate.isRoot ? root(c) : existingDir(c, candidate) { return d }
        }
        return nil
    }

    // MARK: Making and removing

    func makeDirs(_ name: ContainerName, parent: ContainerName, kinds: [ResourceKind], spec: ContainerSpec,
                  made: MadeDirs) throws(LmctfyError) -> ResourceDirs {
        let tasks = tasksDir(name)
        let cpuset = isCoMountedFollower(.cpuset) ? nil : mounts.v1[.cpuset]
        for d in try plannedDirs(name, kinds: kinds, spec: spec) {
            try made.make(d)
            if d.mount == cpuset { try inheritCpusetMems(d) }
        }
        // The directories just made are the container's: no need to look
        // for them again (co-mounted followers share their owner's).
        var byMount: [String: CgroupDir] = [:]
        for d in made.dirs { byMount[d.mount] = d }
        var dirs: [Controller: CgroupDir] = [:]
        for (c, mount) in mounts.v1 {
            if let d = byMount[mount] { dirs[c] = d }
        }
        return ResourceDirs(driver: self, container: name, byController: dirs, tasks: tasks)
    }

    func plannedDirs(_ name: ContainerName, kinds: [ResourceKind], spec: ContainerSpec) throws(LmctfyError) -> [CgroupDir] {
        var dirs = [tasksDir(name)]
        for kind in kinds {
            for c in kind.v1Controllers where !isCoMountedFollower(c) {
                if let d = try newDir(c, name, spec: spec) { dirs.append(d) }
            }
        }
        return dirs
    }

    /// A new cpuset starts with no cpus and mems; copy the parent's mems
    /// (D8), so tasks can join it. Its cpus are written by the cpu handler
    /// (the mask, or the parent's cpus), which runs next in the same create;
    /// a cpuset.cpus write is one of the dearest cgroup writes.
    private func inheritCpusetMems(_ d: CgroupDir) throws(LmctfyError) {
        guard let parent = d.parent else { return }
        let value = try parent.read("cpuset.mems").trimmingWhitespace
        try d.write("cpuset.mems", value.isEmpty ? "\n" : value)
    }

    func releaseControllers(_ parent: ContainerName) throws(LmctfyError) {}

    func removalGroups(_ name: ContainerName) throws(LmctfyError) -> [[CgroupDir]] {
        var groups: [[CgroupDir]] = []
        for c in Controller.allCases.reversed() where c != .freezer && !isCoMountedFollower(c) {
            groups.append(candidates(c, name))
        }
        return groups + [[tasksDir(name)]]
    }

    func delegated(_ name: ContainerName) throws(LmctfyError) -> (dirs: [CgroupDir], files: [String]) {
        var dirs: [CgroupDir] = []
        for c in Controller.allCases where !isCoMountedFollower(c) {
            if let d = try existingDir(c, name) { dirs.append(d) }
        }
        return (dirs, ["tasks", "cgroup.procs"])
    }

    /// /batch in the cpu (and a separate cpuacct) hierarchy, for the
    /// NORMAL and BEST_EFFORT latency classes, with the smallest shares.
    func prepareMachine() throws(LmctfyError) {
        for c in [Controller.cpu, .cpuacct] where !isCoMountedFollower(c) {
            guard let root = root(c) else { continue }
            let batch = root.child("batch")
            if try !batch.exists() {
                do { try batch.make() } catch where error.code == .alreadyExists {}
            }
            if c == .cpu { try batch.write("cpu.shares", "2") }
        }
    }

    // MARK: Tasks

    var threadsFile: String { "tasks" }
    var enterFile: String { "tasks" }

    func joinDirs(_ name: ContainerName) throws(LmctfyError) -> [CgroupDir] {
        var out = [tasksDir(name)]
        for c in Controller.allCases where c != .freezer && mounts.v1[c] != nil {
            // Co-mounted controllers share a mount point, and so a directory.
            if let d = try nearestDir(c, name), !out.contains(where: { $0.mount == d.mount }) { out.append(d) }
        }
        return out
    }

    // MARK: Freezer

    func isFrozen(_ name: ContainerName) throws(LmctfyError) -> Bool {
        try tasksDir(name).read("freezer.state").trimmingWhitespace == "FROZEN"
    }

    func isThawed(_ name: ContainerName) throws(LmctfyError) -> Bool {
        try tasksDir(name).read("freezer.state").trimmingWhitespace == "THAWED"
    }

    func requestFrozen(_ name: ContainerName, _ frozen: Bool) throws(LmctfyError) {
        try tasksDir(name).write("freezer.state", frozen ? "FROZEN" : "THAWED")
    }

    func isPausedItself(_ name: ContainerName) throws(LmctfyError) -> Bool {
        try tasksDir(name).read("freezer.self_freezing").trimmingWhitespace == "1"
    }

    func nudgeFreezer(_ name: ContainerName, _ frozen: Bool) throws(LmctfyError) {
        if frozen { try tasksDir(name).write("freezer.state", "FROZEN") }
    }

    // MARK: Events

    func eventSource(_ kind: Watch.Kind, dir: CgroupDir, container: Container) throws(LmctfyError) -> any EventSource {
        switch kind {
        case .oom: try OomControlSource.make(dir)
        case .memoryThreshold(let usage): try EventfdSource(dir, target: "memory.usage_in_bytes", args: " \(usage)")
        case .memoryPressure: try EventfdSource(dir, target: "memory.pressure_level", args: " medium")
        case .containerEmpty: try PolledEmptySource(container)
        }
    }

    /// cpuacct.usage, memory.usage_in_bytes and memory.stat, pids.current,
    /// each from the container's own directory.
    func sampleFiles(_ name: ContainerName) throws(LmctfyError) -> SampleFiles {
        var f = SampleFiles()
        if let d = try existingDir(.cpuacct, name) { f.cpuUsage = d.file("cpuacct.usage") }
        if let d = try existingDir(.memory, name) {
            f.memoryUsage = d.file("memory.usage_in_bytes")
            f.memoryStat = d.file("memory.stat")
            f.memoryFailcnt = d.file("memory.failcnt")
        }
        if let d = try existingDir(.pids, name) { f.pids = d.file("pids.current") }
        if let d = try existingDir(.cpu, name) { f.cpuStat = d.file("cpu.stat") }
        return f
    }

    /// OOM and memory pressure (level `medium`) through eventfds on the
    /// container's own memory directory; the freezer's state file. Nothing
    /// tells of a container going empty (the agent's reconcile does).
    func monitorPlan(_ name: ContainerName) throws(LmctfyError) -> MonitorPlan {
        var plan = MonitorPlan()
        if !name.isRoot, let memory = try existingDir(.memory, name) {
            // (OOM in kills, as v2's memory.events gives them.)
            plan.eventfds = [(.oom, { () throws(LmctfyError) in try OomControlSource.make(memory) }),
                             (.pressure, { () throws(LmctfyError) in
                                 try EventfdSource(memory, target: "memory.pressure_level", args: " medium") })]
            plan.oomCounter = (memory, "memory.oom_control", "oom_kill")
        }
        plan.stateFiles = ["freezer.state": .freezer]
        plan.notSpec = ["tasks", "cgroup.procs", "cgroup.event_control", "freezer.state", "memory.force_empty",
                        "notify_on_release", "cgroup.clone_children", "memory.max_usage_in_bytes", "memory.failcnt"]
        return plan
    }

    // MARK: Resources

    var cpu: any CpuFiles { CpuFilesV1() }
    var memory: any MemoryFiles { MemoryFilesV1() }
    var blockio: any BlockIoFiles { BlockIoFilesV1() }
}

// MARK: - v1 event sources

/// OOM and memory threshold: an eventfd registered through
/// cgroup.event_control against the memory file.
final class EventfdSource: EventSource {
    let fd: Int32
    private let dir: CgroupDir
    /// The directory's inode before the registration: removing a cgroup
    /// signals its eventfds, and one made again under its path at once
    /// was taken for it (a false OOM or threshold, for the container
    /// gone and for the machine watcher's record of the new one).
    private let identity: UInt64?
    var pendingImmediately: Bool { false }

    /// "<eventfd> <target fd> <args>" into cgroup.event_control.
    init(_ dir: CgroupDir, target: String, args: String) throws(LmctfyError) {
        self.dir = dir
        // Taken first: were the directory replaced before the
        // registration, this one's first signal says the container is gone.
        identity = dir.identity
        let efd: Int32
        do { efd = try EventFds.eventfd() } catch { throw error.lmctfy(.internal, "Failed to register listener for the event") }
        do {
            let tfd = try dir.open(target, O_RDONLY, failing: .internal, "Failed to register listener for the event")
            defer { close(tfd) }
            try dir.write("cgroup.event_control", "\(efd) \(tfd)\(args)")
        } catch {
            close(efd)
            throw LmctfyError(error.code == .permissionDenied ? .permissionDenied : .internal,
                              "Failed to register listener for the event: \(error.message)", errno: error.errno)
        }
        fd = efd
    }

    deinit { close(fd) }

    func collect() throws(LmctfyError) -> Int {
        let n: UInt64
        do { n = try EventFds.readCounter(fd) } catch { throw error.lmctfy(.cancelled, "Reading the notification failed") }
        // Removing the cgroup also signals the eventfd; its successor
        // under the same path is another container.
        if try !dir.exists() || dir.identity != identity { throw Watch.gone(dir) }
        return Int(n)
    }
}

/// OOM counted in kills, as v2's memory.events oom_kill is. The eventfd
/// on memory.oom_control says an OOM began: every task that meets the
/// limit signals it, before the kill, so one OOM of several tasks was
/// reported 3 to 12 times. Each signal here only starts a look at
/// memory.oom_control's oom_kill, again 1 ms later, then every 25 ms while
/// signals come and for 500 ms after the last: each kill is one event,
/// when it has landed.
/// A burst of signals that killed nothing here is one event when the
/// container is still under OOM at its end (oom_kill_disable: the tasks
/// wait) or a kill landed below it meanwhile (its OOM, a victim in a
/// subcontainer, which v1 counts there only; v2's memory.events counts it
/// here too). The kernel signals every container below the one at its
/// limit: a burst with neither was another's OOM (every memory-isolating
/// subcontainer of a container that hit its limit had an OOM event; a
/// probe). The kills below are counted from the end of the last burst
/// (the signal is read after its kill lands): a subcontainer's own OOM
/// since then, which signals nothing here, makes the next burst killing
/// nothing here (an OOM above, its victim elsewhere) an event. A kernel without oom_kill (before 4.13) gets the eventfd's
/// count, as before.
final class OomControlSource: EventSource {
    private let signals: EventfdSource
    private let dir: CgroupDir
    private let epoll: Epoll
    private let timer: Int32
    private var kills: Int64
    /// Signals came without a counted kill before them: whether a kill
    /// was counted since (nil: no such signals).
    private var burstKilled: Bool?
    /// The kills below the container when the last burst ended (or the
    /// source was made): a kill lands within microseconds of its signal,
    /// before the signal is read, so a count taken when the burst begins
    /// has it already.
    private var killsBelowSeen: Int64
    private var lookUntil: UInt64 = 0
    var fd: Int32 { epoll.fd }
    var pendingImmediately: Bool { false }
    static let settleMs: UInt64 = 500
    static let lookEveryMs = 25

    /// The kill-counting source, or the plain eventfd where the kernel
    /// has no oom_kill.
    static func make(_ dir: CgroupDir) throws(LmctfyError) -> any EventSource {
        let signals = try EventfdSource(dir, target: "memory.oom_control", args: "")
        guard let kills = Self.kills(dir) else { return signals }
        return try OomControlSource(signals, dir: dir, kills: kills)
    }

    private init(_ signals: EventfdSource, dir: CgroupDir, kills: Int64) throws(LmctfyError) {
        self.signals = signals
        self.dir = dir
        self.kills = kills
        killsBelowSeen = Self.killsBelow(dir)
        do throws(SystemError) {
            epoll = try Epoll()
            let t = try EventFds.timer(periodMs: Self.lookEveryMs)
            timer = t
            try epoll.add(signals.fd, key: 0)
            do { try epoll.add(t, key: 1) } catch {
                close(t)
                throw error
            }
        } catch {
            throw error.lmctfy(.internal, "Failed to register listener for the event")
        }
        arm(false)
    }

    deinit { close(timer) }

    private static func kills(_ dir: CgroupDir) -> Int64? {
        (try? dir.readKeyValues("memory.oom_control"))?["oom_kill"]
    }

    /// Whether tasks wait in an OOM of the container (or above it).
    private static func isUnderOom(_ dir: CgroupDir) -> Bool {
        ((try? dir.readKeyValues("memory.oom_control"))?["under_oom"] ?? 0) != 0
    }

    /// The OOM kills of every cgroup below `dir` (one gone meanwhile takes
    /// its kills with it).
    static func killsBelow(_ dir: CgroupDir) -> Int64 {
        dir.sumBelow("memory.oom_control", key: "oom_kill", byPath: killsBelowByPath) ?? killsBelowByPath(dir)
    }

    /// killsBelow by paths from the mount point (a fake tree; no openat2).
    static func killsBelowByPath(_ dir: CgroupDir) -> Int64 {
        var sum: Int64 = 0
        var stack = [dir]
        while let d = stack.popLast() {
            guard d.mayHaveSubdirectories() else { continue }
            for name in (try? d.subdirectories()) ?? [] {
                let sub = d.child(name)
                sum += kills(sub) ?? 0
                stack.append(sub)
            }
        }
        return sum
    }

    /// Starts (or stops) the periodic look. The first is 1 ms after a
    /// signal: the kill usually lands within microseconds of it (often
    /// before the signal is read), and an OOM event is wanted at once.
    private func arm(_ on: Bool) { EventFds.setTimer(timer, periodMs: on ? Self.lookEveryMs : 0, firstMs: 1) }

    func collect() throws(LmctfyError) -> Int {
        // The look's timer first: one left armed and unread when the
        // directory has gone kept the descriptor readable, and its poll
        // woke the loop over and over until the container was let go.
        _ = try? EventFds.readCounter(timer)
        // Throws NOT_FOUND once the directory is gone (its removal signals).
        let signalled: Int
        do { signalled = try signals.collect() } catch {
            arm(false)
            throw error
        }
        let now = MonotonicClock.milliseconds()
        if signalled > 0 {
            if burstKilled == nil { burstKilled = false }
            lookUntil = now + Self.settleMs
            arm(true)
        }
        var found = 0
        if let k = Self.kills(dir), k > kills {
            found += Int(k - kills)
            kills = k
            if burstKilled != nil { burstKilled = true }
        }
        if let killed = burstKilled, now >= lookUntil {
            let below = Self.killsBelow(dir)
            if !killed && (Self.isUnderOom(dir) || below > killsBelowSeen) { found += 1 }
            killsBelowSeen = below
            burstKilled = nil
            arm(false)
        }
        return found
    }
}

/// v1 has no "populated" notification for a whole subtree: cgroup.procs
/// of the container and its subcontainers, polled every 50 ms (D10).
final class PolledEmptySource: EventSource {
    let fd: Int32
    private let container: Container
    private var wasEmpty = false
    var pendingImmediately: Bool { false }

    init(_ container: Container) throws(LmctfyError) {
        self.container = container
        fd = try Watch.timerFd(50)
    }

    deinit { close(fd) }

    func collect() throws(LmctfyError) -> Int {
        _ = try? EventFds.readCounter(fd)
        guard try container.api.exists(container.name) else { throw Watch.gone(container.tasksDir) }
        let empty = (try? container.processes(recursive: true).isEmpty) ?? false
        defer { wasEmpty = empty }
        return empty && !wasEmpty ? 1 : 0
    }
}
