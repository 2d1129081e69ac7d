// A container "/c" in a fake v1 or v2 tree, seeded with the files (and
// default values) a kernel gives a fresh cgroup, for the handler unit tests.
//
// The fake's files are regular files written like cgroupfs is (one write,
// no truncation), so a write shorter than the old content leaves its tail
// behind and only the last of several writes is visible. Tests therefore
// check what a handler *plans* to write (every write, in order) and only
// look at file contents after apply() where the file was blanked first.
// The real kernel's reaction is checked by the integration tests.
import Glibc
@testable import Lmctfy
import LmctfyProto
import LmctfySystem
import LmctfyTestSupport
import Testing

final class FakeContainer {
    let tree: FakeCgroupTree
    let name: ContainerName
    let version: CgroupVersion
    /// The segments of /c below each hierarchy's mount (v1 cpu may be under /batch).
    let segments: [String]
    let cpuSegments: [String]
    var procRoot: String { tree.root + "/proc" }

    static let v1Hierarchies = ["cpu", "cpuacct", "cpuset", "memory", "blkio", "devices", "freezer"]
    static let unlimited = "9223372036854771712"

    private init(_ version: CgroupVersion, cpuSegments: [String]) throws {
        tree = try FakeCgroupTree(version)
        self.version = version
        name = try ContainerName.resolve("/c", relativeTo: .root)
        segments = ["c"]
        self.cpuSegments = cpuSegments
        try Sys.mkdir(tree.root + "/proc")
    }

    /// A v1 container as a kernel without CFQ (like our CI hosts) makes it:
    /// no blkio.weight files, memsw present, no Google-kernel files.
    static func v1(inBatch: Bool = false) throws -> FakeContainer {
        let f = try FakeContainer(.v1, cpuSegments: inBatch ? ["batch", "c"] : ["c"])
        try f.tree.seed("cpuset", files: ["cpuset.cpus": "0-7\n", "cpuset.mems": "0\n"])
        try f.tree.seed("cpu", f.cpuSegments, files: [
            "cpu.shares": "1024\n", "cpu.cfs_period_us": "100000\n", "cpu.cfs_quota_us": "-1\n",
            "cpu.stat": "nr_periods 0\nnr_throttled 0\nthrottled_time 0\nnr_bursts 0\nburst_time 0\n",
        ])
        try f.tree.seed("cpuacct", ["c"], files: [
            "cpuacct.usage": "0\n", "cpuacct.usage_percpu": "0 0 \n", "cpuacct.stat": "user 0\nsystem 0\n",
        ])
        try f.tree.seed("cpuset", ["c"], files: ["cpuset.cpus": "0-7\n", "cpuset.mems": "0\n"])
        try f.tree.seed("memory", ["c"], files: [
            "memory.limit_in_bytes": unlimited + "\n", "memory.soft_limit_in_bytes": unlimited + "\n",
            "memory.memsw.limit_in_bytes": unlimited + "\n", "memory.usage_in_bytes": "0\n",
            "memory.max_usage_in_bytes": "0\n", "memory.failcnt": "0\n", "cgroup.procs": "",
            "memory.stat": "cache 0\nrss 0\npgpgin 0\npgpgout 0\nhierarchical_memory_limit \(unlimited)\ntotal_cache 0\ntotal_rss 0\ntotal_inactive_file 0\n",
            "memory.numa_stat": "total=0 N0=0\nfile=0 N0=0\nanon=0 N0=0\nunevictable=0 N0=0\nhierarchical_total=0 N0=0\nhierarchical_file=0 N0=0\nhierarchical_anon=0 N0=0\nhierarchical_unevictable=0 N0=0\n",
        ])
        try f.tree.seed("blkio", ["c"], files: [
            "blkio.throttle.read_bps_device": "", "blkio.throttle.write_bps_device": "",
            "blkio.throttle.read_iops_device": "", "blkio.throttle.write_iops_device": "",
            "blkio.throttle.io_service_bytes": "Total 0\n", "blkio.throttle.io_serviced": "Total 0\n",
        ])
        try f.tree.seed("devices", ["c"], files: ["devices.allow": "", "devices.deny": "", "devices.list": "a *:* rwm\n"])
        try f.tree.seed("freezer", ["c"], files: ["cgroup.procs": "", "freezer.state": "THAWED\n", "freezer.self_freezing": "0\n"])
        return f
    }

    /// A v2 container with cpu, cpuset, memory and io enabled, io.weight
    /// present (an I/O scheduler with weights), swap accounting on.
    static func v2() throws -> FakeContainer {
        let f = try FakeContainer(.v2, cpuSegments: ["c"])
        try f.tree.seed("unified", ["c"], files: [
            "cgroup.procs": "", "cgroup.events": "populated 0\nfrozen 0\n",
            "cpu.weight": "100\n", "cpu.max": "max 100000\n", "cpu.idle": "0\n",
            "cpu.stat": "usage_usec 0\nuser_usec 0\nsystem_usec 0\nnr_periods 0\nnr_throttled 0\nthrottled_usec 0\n",
            "cpuset.cpus": "\n", "cpuset.cpus.effective": "0-7\n",
            "memory.max": "max\n", "memory.low": "0\n", "memory.swap.max": "max\n", "memory.current": "0\n",
            "memory.peak": "0\n", "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n",
            "memory.stat": "anon 0\nfile 0\ninactive_file 0\n",
            "io.max": "", "io.stat": "", "io.weight": "default 100\n",
        ])
        return f
    }

    /// The driver of the fake tree's cgroup version.
    var driver: any CgroupDriver { try! CgroupDrivers.make(mounts: tree.mounts, procRoot: procRoot) }

    /// The directories handlers get, as the driver would build them.
    var dirs: ResourceDirs { dirs(without: nil) }

    /// The directories with one controller's left out (not isolated).
    func dirs(without missing: Controller?) -> ResourceDirs {
        var byController: [Controller: CgroupDir] = [:]
        let tasks: CgroupDir
        switch version {
        case .v1:
            for h in Self.v1Hierarchies {
                byController[Controller(rawValue: h)!] = tree.dir(h, h == "cpu" ? cpuSegments : segments)
            }
            tasks = byController[.freezer]!
        case .v2:
            tasks = tree.dir("unified", segments)
            for c in Controller.allCases where c != .devices { byController[c] = tasks }
        }
        if let missing { byController[missing] = nil }
        return ResourceDirs(driver: driver, container: name, byController: byController, tasks: tasks)
    }

    /// The container's directory in a hierarchy ("unified" on v2).
    func dir(_ hierarchy: String) -> CgroupDir {
        tree.dir(hierarchy, hierarchy == "cpu" ? cpuSegments : segments)
    }

    func seed(_ hierarchy: String, _ files: [String: String]) throws {
        try tree.seed(hierarchy, hierarchy == "cpu" ? cpuSegments : segments, files: files)
    }

    /// Empties files so that what apply() writes can be read back exactly.
    func blank(_ hierarchy: String, _ files: [String]) throws {
        try seed(hierarchy, Dictionary(uniqueKeysWithValues: files.map { ($0, "") }))
    }

    func remove(_ hierarchy: String, _ file: String) {
        unlink(dir(hierarchy).file(file))
    }

    /// A file's content without the trailing newline.
    func value(_ hierarchy: String, _ file: String) throws -> String {
        try Sys.readFile(dir(hierarchy).file(file)).trimmingWhitespace
    }

    /// A fake /proc/<pid>/oom_score_adj holding the kernel's default.
    func addProcess(_ pid: pid_t, listed: Bool = true) throws {
        try Sys.mkdir(procRoot + "/\(pid)")
        try Sys.createFile(procRoot + "/\(pid)/oom_score_adj", "0\n")
        if listed { try listProcesses([pid]) }
    }

    /// Lists processes in the container, as the kernel does in each of its
    /// directories (v1: the tasks hierarchy's and memory's, where the
    /// eviction priority finds them).
    func listProcesses(_ pids: [pid_t]) throws {
        for procs in version == .v1 ? ["freezer", "memory"] : ["unified"] {
            let current = (try? Sys.readFile(dir(procs).file("cgroup.procs"))) ?? ""
            try seed(procs, ["cgroup.procs": current + pids.map { "\($0)\n" }.joined()])
        }
    }

    func oomScoreAdj(_ pid: pid_t) throws -> String {
        try Sys.readFile(procRoot + "/\(pid)/oom_score_adj").trimmingWhitespace
    }
}

/// Runs a throwing body and returns the error it threw (nil if none); any
/// other error than an LmctfyError is reported as UNKNOWN.
func lmctfyError(_ body: () throws -> Void) -> LmctfyError? {
    do {
        try body()
        return nil
    } catch let error as LmctfyError {
        return error
    } catch {
        return LmctfyError(.unknown, "not an LmctfyError: \(error)")
    }
}

/// The writes as "file <- value" strings, for readable expectations.
func describe(_ writes: [CgroupWrite]) -> [String] { writes.map(\.description) }

func spec(cpu: CpuSpec) -> ContainerSpec { var s = ContainerSpec(); s.cpu = cpu; return s }
func spec(memory: MemorySpec) -> ContainerSpec { var s = ContainerSpec(); s.memory = memory; return s }
func spec(blockio: BlockIoSpec) -> ContainerSpec { var s = ContainerSpec(); s.blockio = blockio; return s }
func spec(device: DeviceSpec) -> ContainerSpec { var s = ContainerSpec(); s.device = device; return s }
