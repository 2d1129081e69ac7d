// cgroup v2: one directory per container, <unified>/a/b, for everything. A
// child can use only the controllers its parent enables in
// cgroup.subtree_control; which resources a container isolates is recorded
// by lmctfy in an xattr (one directory cannot say it).
import Glibc
import LmctfyProto
import LmctfySystem

struct CgroupV2Driver: CgroupDriver {
    let mounts: CgroupMounts
    let procRoot: String
    var version: CgroupVersion { .v2 }

    var unifiedRoot: CgroupDir { CgroupDir(mount: mounts.unified!, segments: [], access: mounts.access) }

    // MARK: Names → directories

    func tasksDir(_ name: ContainerName) -> CgroupDir {
        CgroupDir(mount: mounts.unified!, segments: name.components, access: mounts.access)
    }

    /// The record written at create; a directory without one (made by
    /// something else) is taken to isolate whatever the machine can.
    func isolated(_ name: ContainerName) throws(LmctfyError) -> Set<ResourceKind> {
        let have = try Self.controllers(unifiedRoot, "cgroup.controllers")
        let all = Set(ResourceKind.allCases.filter { Self.available($0, have) })
        guard !name.isRoot, let record = try tasksDir(name).record(.resources) else { return all }
        return Set(record.split(separator: ",").compactMap { s in ResourceKind.allCases.first { $0.description == s } })
    }

    func available(_ kind: ResourceKind) throws(LmctfyError) -> Bool {
        Self.available(kind, try Self.controllers(unifiedRoot, "cgroup.controllers"))
    }

    /// Whether the controllers a resource needs are among `have` (device
    /// rules need eBPF on v2, which lmctfy does not build).
    static func available(_ kind: ResourceKind, _ have: Set<String>) -> Bool {
        kind != .device && kind.v2Controllers.allSatisfy { have.contains($0) }
    }

    static func controllers(_ dir: CgroupDir, _ file: String) throws(LmctfyError) -> Set<String> {
        Set(try dir.read(file).split(whereSeparator: { $0 == " " || $0 == "\n" }).map(String.init))
    }

    /// Every controller's files are in the container's one directory.
    private func allIn(_ d: CgroupDir, _ name: ContainerName) -> ResourceDirs {
        var dirs: [Controller: CgroupDir] = [:]
        for c in Controller.allCases where c != .devices { dirs[c] = d }
        return ResourceDirs(driver: self, container: name, byController: dirs, tasks: d)
    }

    func resourceDirs(_ name: ContainerName) throws(LmctfyError) -> ResourceDirs { allIn(tasksDir(name), name) }

    func nearestDir(_ c: Controller, _ name: ContainerName) throws(LmctfyError) -> CgroupDir? {
        guard let kind = ResourceKind.allCases.first(where: { $0.v1Controllers.contains(c) }) else { return tasksDir(name) }
        for candidate in name.selfAndAncestors {
            if candidate.isRoot { return tasksDir(candidate) }
            if try isolated(candidate).contains(kind) { return tasksDir(candidate) }
        }
        return unifiedRoot
    }

    // MARK: Making and removing

    func makeDirs(_ name: ContainerName, parent: ContainerName, kinds: [ResourceKind], spec: ContainerSpec,
                  made: MadeDirs) throws(LmctfyError) -> ResourceDirs {
        try enableControllers(in: tasksDir(parent), for: kinds)
        let d = tasksDir(name)
        try made.make(d)
        try d.setRecord(.resources, kinds.map(\.description).joined(separator: ","))
        return allIn(d, name)
    }

    func plannedDirs(_ name: ContainerName, kinds: [ResourceKind], spec: ContainerSpec) throws(LmctfyError) -> [CgroupDir] {
        [tasksDir(name)]
    }

    /// A child can only use controllers its parent enables for it.
    func enableControllers(in parent: CgroupDir, for kinds: [ResourceKind]) throws(LmctfyError) {
        let available = try Self.controllers(parent, "cgroup.controllers")
        let enabled = try Self.controllers(parent, "cgroup.subtree_control")
        for kind in kinds {
            for c in kind.v2Controllers where !enabled.contains(c) {
                guard available.contains(c) else {
                    throw .unimplemented("The \(c) controller is not available in \(parent.path), so \(kind) cannot be isolated")
                }
                do {
                    try parent.write("cgroup.subtree_control", "+\(c)")
                } catch {
                    let hint = error.errno == EBUSY ? " (cgroup v2 allows no processes in a container that has subcontainers)" : ""
                    throw LmctfyError(error.code == .permissionDenied ? .permissionDenied : .failedPrecondition,
                                      "Failed to enable the \(c) controller\(hint): \(error.message)", errno: error.errno)
                }
            }
        }
    }

    func removalGroups(_ name: ContainerName) throws(LmctfyError) -> [[CgroupDir]] { [[tasksDir(name)]] }

    func releaseControllers(_ parent: ContainerName) throws(LmctfyError) {
        guard !parent.isRoot else { return }
        let dir = tasksDir(parent)
        guard !dir.mayHaveSubdirectories(), try dir.state().isLmctfy else { return }
        let enabled = try Self.controllers(dir, "cgroup.subtree_control")
        guard !enabled.isEmpty else { return }
        // One write for all: the kernel then sorts out the order of
        // controllers that depend on each other.
        do {
            try dir.write("cgroup.subtree_control", enabled.sorted().map { "-" + $0 }.joined(separator: " "))
        } catch {
            throw LmctfyError(error.code, "Failed to turn off the controllers of \"\(parent)\" for its subcontainers, "
                              + "with its last one gone: \(error.message)", errno: error.errno)
        }
    }

    func delegated(_ name: ContainerName) throws(LmctfyError) -> (dirs: [CgroupDir], files: [String]) {
        ([tasksDir(name)], ["cgroup.procs", "cgroup.threads", "cgroup.subtree_control"])
    }

    /// Every available controller enabled at the root.
    func prepareMachine() throws(LmctfyError) {
        let have = try Self.controllers(unifiedRoot, "cgroup.controllers")
        try enableControllers(in: unifiedRoot, for: ResourceKind.allCases.filter { Self.available($0, have) })
    }

    // MARK: Tasks

    var threadsFile: String { "cgroup.threads" }
    var enterFile: String { "cgroup.procs" }

    func joinDirs(_ name: ContainerName) throws(LmctfyError) -> [CgroupDir] { [tasksDir(name)] }

    // MARK: Freezer

    func isFrozen(_ name: ContainerName) throws(LmctfyError) -> Bool {
        try tasksDir(name).readKeyValues("cgroup.events")["frozen"] == 1
    }

    func isThawed(_ name: ContainerName) throws(LmctfyError) -> Bool {
        let dir = tasksDir(name)
        guard try dir.readKeyValues("cgroup.events")["frozen"] == 0 else { return false }
        return try dir.read("cgroup.freeze").trimmingWhitespace == "0"
    }

    func requestFrozen(_ name: ContainerName, _ frozen: Bool) throws(LmctfyError) {
        try tasksDir(name).write("cgroup.freeze", frozen ? "1" : "0")
    }

    func isPausedItself(_ name: ContainerName) throws(LmctfyError) -> Bool {
        try tasksDir(name).read("cgroup.freeze").trimmingWhitespace == "1"
    }

    func nudgeFreezer(_ name: ContainerName, _ frozen: Bool) throws(LmctfyError) {}

    // MARK: Events

    func eventSource(_ kind: Watch.Kind, dir: CgroupDir, container: Container) throws(LmctfyError) -> any EventSource {
        switch kind {
        case .oom: try OomKillSource(dir)
        case .memoryThreshold(let usage): try PolledThresholdSource(dir, usage)
        // Reclaim forced by memory.high or at memory.max (the limit): the
        // counters memory.events keeps for both (no PSI trigger needed).
        case .memoryPressure: try OomKillSource(dir, keys: ["high", "max"])
        case .containerEmpty: try PopulatedSource(dir)
        }
    }

    /// cpu.stat (usage_usec, always there), memory.current and memory.stat,
    /// pids.current, where the controllers are enabled.
    func sampleFiles(_ name: ContainerName) throws(LmctfyError) -> SampleFiles {
        let d = tasksDir(name)
        var f = SampleFiles()
        f.cpuUsage = d.file("cpu.stat")
        f.cpuUsageKey = "usage_usec"
        f.cpuUsageScale = 1000
        if try d.has("memory.current") {
            f.memoryUsage = d.file("memory.current")
            f.memoryStat = d.file("memory.stat")
            f.inactiveFileKey = "inactive_file"
            f.memoryFailcnt = d.file("memory.events")
            f.memoryFailcntKey = "max"
        }
        f.cpuStat = d.file("cpu.stat")
        f.throttledTimeKey = "throttled_usec"
        f.throttledTimeScale = 1000
        if try d.has("pids.current") { f.pids = d.file("pids.current") }
        return f
    }

    /// Everything through the one directory's inotify: cgroup.events
    /// (populated, frozen) and memory.events (oom_kill, high).
    func monitorPlan(_ name: ContainerName) throws(LmctfyError) -> MonitorPlan {
        var plan = MonitorPlan()
        plan.stateFiles = ["cgroup.events": .cgroupEvents, "memory.events": .memoryEvents]
        if !name.isRoot { plan.oomCounter = (tasksDir(name), "memory.events", "oom_kill") }
        plan.notSpec = ["cgroup.procs", "cgroup.threads", "cgroup.freeze", "cgroup.kill", "cgroup.events",
                        "memory.events", "memory.events.local", "cgroup.subtree_control", "cgroup.type",
                        "memory.reclaim", "memory.peak"]
        return plan
    }

    // MARK: Resources

    var cpu: any CpuFiles { CpuFilesV2() }
    var memory: any MemoryFiles { MemoryFilesV2() }
    var blockio: any BlockIoFiles { BlockIoFilesV2() }
}

// MARK: - v2 event sources

/// OOM: inotify on memory.events; an event is oom_kill growing. With key
/// "high": memory pressure (the count of reclaims forced by memory.high,
/// the v2 counterpart of v1's pressure_level the machine watcher uses too).
final class OomKillSource: EventSource {
    let fd: Int32
    private let dir: CgroupDir
    /// The memory.events counters whose sum is watched.
    private let keys: [String]
    private var lastCount: Int64
    var pendingImmediately: Bool { false }

    init(_ dir: CgroupDir, keys: [String] = ["oom_kill"]) throws(LmctfyError) {
        self.dir = dir
        self.keys = keys
        fd = try dir.inotify("memory.events")
        lastCount = (try? Self.sum(dir, keys)) ?? 0
    }

    private static func sum(_ dir: CgroupDir, _ keys: [String]) throws(LmctfyError) -> Int64 {
        let values = try dir.readKeyValues("memory.events")
        return keys.reduce(0) { $0 + (values[$1] ?? 0) }
    }

    deinit { close(fd) }

    func collect() throws(LmctfyError) -> Int {
        let (_, isGone) = EventFds.drainInotify(fd)
        if isGone { throw Watch.gone(dir) }
        if try !dir.exists() { throw Watch.gone(dir) }
        let count = (try? Self.sum(dir, keys)) ?? lastCount
        defer { lastCount = count }
        return Int(max(0, count - lastCount))
    }
}

/// Container empty: inotify on cgroup.events; an event is populated
/// becoming 0 (already empty when watched is the first event).
final class PopulatedSource: EventSource {
    let fd: Int32
    private let dir: CgroupDir
    private var wasEmpty: Bool
    private(set) var pendingImmediately: Bool

    init(_ dir: CgroupDir) throws(LmctfyError) {
        self.dir = dir
        fd = try dir.inotify("cgroup.events")
        wasEmpty = (try? dir.readKeyValues("cgroup.events")["populated"]) == 0
        pendingImmediately = wasEmpty
    }

    deinit { close(fd) }

    func collect() throws(LmctfyError) -> Int {
        if pendingImmediately {
            pendingImmediately = false
            return 1
        }
        let (_, isGone) = EventFds.drainInotify(fd)
        if isGone { throw Watch.gone(dir) }
        if try !dir.exists() { throw Watch.gone(dir) }
        let empty = (try? dir.readKeyValues("cgroup.events")["populated"]) == 0
        defer { wasEmpty = empty }
        return empty && !wasEmpty ? 1 : 0
    }
}

/// v2 has no threshold notification: memory.current polled every 50 ms;
/// an event is crossing the threshold either way.
final class PolledThresholdSource: EventSource {
    let fd: Int32
    private let dir: CgroupDir
    private let threshold: Int64
    private var wasAbove: Bool
    var pendingImmediately: Bool { false }

    init(_ dir: CgroupDir, _ threshold: Int64) throws(LmctfyError) {
        self.dir = dir
        self.threshold = threshold
        fd = try Watch.timerFd(50)
        wasAbove = ((try? dir.readInt("memory.current")) ?? nil ?? 0) >= threshold
    }

    deinit { close(fd) }

    func collect() throws(LmctfyError) -> Int {
        _ = try? EventFds.readCounter(fd)
        guard try dir.exists() else { throw Watch.gone(dir) }
        let usage = (try? dir.readInt("memory.current")) ?? nil ?? 0
        let above = usage >= threshold
        defer { wasAbove = above }
        return above != wasAbove ? 1 : 0
    }
}
