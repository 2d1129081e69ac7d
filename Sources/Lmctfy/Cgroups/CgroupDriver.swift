// Everything that differs between cgroup v1 and v2, behind one protocol:
// where a container's directories are, making and removing them, enabling
// controllers, the freezer, the task and join files, event registration,
// lmctfy's own records, and each resource's files. CgroupV1Driver and
// CgroupV2Driver are the only code that knows which version runs;
// `CgroupDrivers.make` is the only place one is chosen. Resource handlers,
// Container, ContainerApi and Watch ask the driver and never switch.
import Glibc
import LmctfyProto
import LmctfySystem

/// What a cgroup version does for lmctfy. Implementations are immutable and
/// thread-safe.
protocol CgroupDriver: Sendable {
    var version: CgroupVersion { get }
    var mounts: CgroupMounts { get }
    var procRoot: String { get }

    // MARK: Names → directories

    /// The directory that says a container exists and holds its processes
    /// (v1 freezer, v2 the one unified directory).
    func tasksDir(_ name: ContainerName) -> CgroupDir
    /// Which resources a container isolates.
    func isolated(_ name: ContainerName) throws(LmctfyError) -> Set<ResourceKind>
    /// Whether a container isolates one resource (v1 probes one hierarchy
    /// instead of every one).
    func isolates(_ kind: ResourceKind, _ name: ContainerName) throws(LmctfyError) -> Bool
    /// Whether this machine can isolate the resource at all.
    func available(_ kind: ResourceKind) throws(LmctfyError) -> Bool
    /// The directories a handler works on for an existing container.
    func resourceDirs(_ name: ContainerName) throws(LmctfyError) -> ResourceDirs
    /// `resourceDirs` and `isolated` together, each directory looked for
    /// once (a spec or stats read needs both).
    func resolved(_ name: ContainerName) throws(LmctfyError) -> (dirs: ResourceDirs, isolated: Set<ResourceKind>)
    /// The directory holding a controller's files for the container or, if
    /// it does not isolate that resource, for its nearest ancestor that does
    /// (the hierarchy's root at the latest).
    func nearestDir(_ c: Controller, _ name: ContainerName) throws(LmctfyError) -> CgroupDir?

    // MARK: Making and removing

    /// Makes the directories of a new container isolating `kinds`, each
    /// through `made` (journaled, marked lmctfy's, kept for the caller's
    /// rollback), and returns the directories its handlers then fill.
    func makeDirs(_ name: ContainerName, parent: ContainerName, kinds: [ResourceKind], spec: ContainerSpec,
                  made: MadeDirs) throws(LmctfyError) -> ResourceDirs
    /// The directories `makeDirs` would make, the tasks directory first
    /// (a dry run checks that none is taken).
    func plannedDirs(_ name: ContainerName, kinds: [ResourceKind], spec: ContainerSpec) throws(LmctfyError) -> [CgroupDir]
    /// The places the container may have a directory, in the order they go:
    /// each group is the candidates of one hierarchy, most likely first (a
    /// group stops at the first directory removed); the tasks directory last.
    func removalGroups(_ name: ContainerName) throws(LmctfyError) -> [[CgroupDir]]
    /// After `parent`'s last subcontainer went (destroyed, or a failed
    /// create undone): v2 turns off the controllers its subcontainers had
    /// enabled in its cgroup.subtree_control, or the kernel would refuse
    /// it processes (no process in a cgroup that enables controllers for
    /// children: a run in it was EBUSY after a child came and went). Not
    /// for the root, nor for a cgroup lmctfy did not make, nor while it has
    /// any subdirectory. v1: nothing to do.
    func releaseControllers(_ parent: ContainerName) throws(LmctfyError)
    /// The container's directories and the task files in each that
    /// delegation (owner, owner_group) hands over.
    func delegated(_ name: ContainerName) throws(LmctfyError) -> (dirs: [CgroupDir], files: [String])
    /// Prepares the machine after the hierarchies are mounted (idempotent).
    func prepareMachine() throws(LmctfyError)

    // MARK: Tasks

    /// The file listing a container's threads (v1 `tasks`, v2 `cgroup.threads`).
    var threadsFile: String { get }
    /// The file a thread is written to to move it (v1 moves the thread
    /// alone: `tasks`; v2 moves the whole process: `cgroup.procs`).
    var enterFile: String { get }
    /// The directories a new task of the container joins: the tasks
    /// directory first, then the nearest directory of every other hierarchy.
    func joinDirs(_ name: ContainerName) throws(LmctfyError) -> [CgroupDir]

    // MARK: Freezer

    /// Whether the kernel reports the container frozen.
    func isFrozen(_ name: ContainerName) throws(LmctfyError) -> Bool
    /// Whether nothing freezes the container, not even part way (v1
    /// FREEZING, itself or under an ancestor; v2 a freeze asked and not
    /// yet done): a task that joins it runs.
    func isThawed(_ name: ContainerName) throws(LmctfyError) -> Bool
    /// Asks the kernel to freeze or thaw.
    func requestFrozen(_ name: ContainerName, _ frozen: Bool) throws(LmctfyError)
    /// Whether the container itself was asked to freeze (paused), not only
    /// frozen because an ancestor was: v1 `freezer.self_freezing`, v2
    /// `cgroup.freeze`.
    func isPausedItself(_ name: ContainerName) throws(LmctfyError) -> Bool
    /// Called while waiting for the state to settle (v1 only moves FREEZING
    /// on to FROZEN when asked again).
    func nudgeFreezer(_ name: ContainerName, _ frozen: Bool) throws(LmctfyError)

    // MARK: Events

    /// The kernel side of a watch on `dir` (the container's, or for memory
    /// events its nearest memory-isolating container's).
    func eventSource(_ kind: Watch.Kind, dir: CgroupDir, container: Container) throws(LmctfyError) -> any EventSource
    /// How a ContainerMonitor learns of a container's kernel events: its
    /// eventfd registrations and what a write to each of its files means.
    func monitorPlan(_ name: ContainerName) throws(LmctfyError) -> MonitorPlan
    /// The files a StatsSampler reads for the container (its own
    /// directories only: a resource it does not isolate is not sampled).
    func sampleFiles(_ name: ContainerName) throws(LmctfyError) -> SampleFiles

    // MARK: Resources

    var cpu: any CpuFiles { get }
    var memory: any MemoryFiles { get }
    var blockio: any BlockIoFiles { get }
}

extension CgroupDriver {
    func resolved(_ name: ContainerName) throws(LmctfyError) -> (dirs: ResourceDirs, isolated: Set<ResourceKind>) {
        (try resourceDirs(name), try isolated(name))
    }

    func isolates(_ kind: ResourceKind, _ name: ContainerName) throws(LmctfyError) -> Bool {
        try isolated(name).contains(kind)
    }

    /// The directory holding memory files for memory events: the nearest
    /// memory-isolating container's (or the root's).
    func memoryEventDir(_ name: ContainerName) throws(LmctfyError) -> CgroupDir? {
        for c in name.selfAndAncestors where try isolated(c).contains(.memory) {
            return try nearestDir(.memory, c)
        }
        return try nearestDir(.memory, .root)
    }
}

/// Chooses the driver for a machine's mounts: the one place that decides
/// the cgroup version.
enum CgroupDrivers {
    static func make(mounts: CgroupMounts, procRoot: String) throws(LmctfyError) -> any CgroupDriver {
        switch mounts.version {
        case .v1: CgroupV1Driver(mounts: mounts, procRoot: procRoot)
        case .v2: CgroupV2Driver(mounts: mounts, procRoot: procRoot)
        case nil:
            throw .notFound("lmctfy requires a canonical tasks cgroup hierarchy (cgroup v1 freezer or cgroup2), none were found")
        }
    }
}

/// One registration's kernel side (see Watch): a pollable descriptor and
/// how to count what happened when it is readable. Not thread-safe.
protocol EventSource: AnyObject {
    var fd: Int32 { get }
    /// Whether an event is due before the descriptor says anything (a
    /// container already empty when watched).
    var pendingImmediately: Bool { get }
    /// After `fd` was readable: how many events happened (0: none yet).
    /// Throws NOT_FOUND once the watched directory is gone (D5).
    func collect() throws(LmctfyError) -> Int
}

/// The files of a stats sample (see StatsSampler); nil: not sampled.
struct SampleFiles {
    /// CPU time used: v1 cpuacct.usage (ns), v2 cpu.stat's usage_usec.
    var cpuUsage: String?
    var cpuUsageKey: String?
    var cpuUsageScale: Int64 = 1
    /// Memory in use: v1 memory.usage_in_bytes, v2 memory.current.
    var memoryUsage: String?
    /// memory.stat, for the working set (usage minus inactive file pages).
    var memoryStat: String?
    var inactiveFileKey = "total_inactive_file"
    /// pids.current.
    var pids: String?
    /// Times the memory limit was hit: v1 memory.failcnt, v2 memory.events'
    /// `max` (what cAdvisor reports as container_memory_failcnt).
    var memoryFailcnt: String?
    var memoryFailcntKey: String?
    /// CFS throttling: cpu.stat's nr_periods, nr_throttled and the time
    /// throttled (v1 throttled_time in ns, v2 throttled_usec).
    var cpuStat: String?
    var throttledTimeKey = "throttled_time"
    var throttledTimeScale: Int64 = 1
}

/// What the monitor watches on one container (see ContainerMonitor).
struct MonitorPlan {
    /// eventfd registrations through cgroup.event_control: what each
    /// reports, and how to open its source (the driver chooses it, as its
    /// `eventSource` does for a notification).
    var eventfds: [(kind: ContainerMonitor.Pressure, open: () throws(LmctfyError) -> any EventSource)] = []
    /// Files whose change (IN_MODIFY on their directory) is a state the
    /// monitor reads again.
    var stateFiles: [String: ContainerMonitor.StateFile] = [:]
    /// Files written by tasks and lmctfy's bookkeeping: a write to them is
    /// not a spec change. Any other file written is.
    var notSpec: Set<String> = []
    /// Where the kernel counts the container's OOM kills (a file of the
    /// container's own memory directory and its key): read when the watch
    /// begins, so that kills before it are not lost.
    var oomCounter: (dir: CgroupDir, file: String, key: String)?
}

/// The directories of one container that a handler may touch, and where the
/// container's processes are listed.
public struct ResourceDirs: Sendable {
    /// The container these directories belong to.
    public let container: ContainerName
    /// Each controller's directory (on v2 every controller's files are in
    /// the one directory).
    let byController: [Controller: CgroupDir]
    /// Where the container's processes are listed.
    public let tasks: CgroupDir?
    /// Where /proc is (injected for tests).
    public let procRoot: String
    /// The directories were made by the create in progress: no process is
    /// in them yet and no record was left on them, so handlers need not look.
    public var isNew = false
    /// The cgroup version's files for each resource.
    let driver: any CgroupDriver

    init(driver: any CgroupDriver, container: ContainerName, byController: [Controller: CgroupDir], tasks: CgroupDir?) {
        self.driver = driver
        self.container = container
        self.byController = byController
        self.tasks = tasks
        self.procRoot = driver.procRoot
    }

    /// The directory holding a controller's files, if the container has one.
    public func dir(_ c: Controller) -> CgroupDir? { byController[c] }

    /// Every distinct directory of the container (co-mounted hierarchies
    /// once), the tasks directory first.
    public var allDirs: [CgroupDir] {
        var seen = Set<String>()
        var out: [CgroupDir] = []
        for d in [tasks].compactMap({ $0 }) + Controller.allCases.compactMap({ byController[$0] })
        where seen.insert(d.path).inserted {
            out.append(d)
        }
        return out
    }

    /// The processes of the container (its own, not its subcontainers').
    public func processes() throws(LmctfyError) -> [pid_t] {
        guard let d = tasks else { return [] }
        return try d.readPids("cgroup.procs")
    }

    /// The processes whose eviction priority is this container's (D12):
    /// its own and those of the subcontainers that share its memory (do not
    /// isolate memory themselves). On v1 its memory directory holds them
    /// all; on v2 they are in their own directories below, walked down to
    /// those that isolate memory. (An update reached only the container's
    /// own processes, while a run in such a subcontainer got the
    /// container's priority: a probe.)
    func processesSharingMemory() throws(LmctfyError) -> [pid_t] {
        guard let memory = byController[.memory] else { return try processes() }
        if memory != tasks { return try memory.readPids("cgroup.procs") }
        var out = try memory.readPids("cgroup.procs")
        var below = [(container, memory)]
        while let (name, d) = below.popLast() {
            let children: [String]
            do { children = try d.subdirectories() } catch where error.code == .notFound { continue }
            for child in children {
                guard let sub = try? ContainerName.resolve(child, relativeTo: name) else { continue }
                let c = d.child(child)
                guard try c.state().isLmctfy, try !driver.isolates(.memory, sub) else { continue }
                do { out += try c.readPids("cgroup.procs") } catch where error.code == .notFound { continue }
                below.append((sub, c))
            }
        }
        return out
    }
}
