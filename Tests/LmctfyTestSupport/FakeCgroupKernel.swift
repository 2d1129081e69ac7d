// Makes a FakeCgroupTree act like cgroupfs where the kernel acts by itself:
// a new directory gets the control files of its hierarchy (with the
// kernel's defaults), a removed one loses them, and freezing a v2 cgroup
// shows in cgroup.events. Handed to a FaultPlan, so the fault-injection
// tests can run create, update, destroy, run and pause end to end on a temp
// directory and fail any call on the way.
import Glibc
import Lmctfy
import LmctfySystem

public final class FakeCgroupKernel: FakeFilesystem, @unchecked Sendable {
    public let tree: FakeCgroupTree
    static let unlimited = "9223372036854771712"

    public init(_ tree: FakeCgroupTree) throws {
        self.tree = tree
        switch tree.version {
        case .v1:
            for h in (try Sys.subdirectories(tree.root)) { try tree.seed(h, files: ["cgroup.procs": "", "tasks": ""]) }
            // Those of a tree's hierarchies (a freezer-only one has none).
            if Sys.isDirectory(tree.root + "/cpuset") { try tree.seed("cpuset", files: ["cpuset.cpus": "0-7\n", "cpuset.mems": "0\n"]) }
            if Sys.isDirectory(tree.root + "/cpu") { try tree.seed("cpu", files: ["cpu.shares": "1024\n"]) }
        case .v2:
            try tree.seed("unified", files: ["cgroup.procs": "", "memory.current": "0\n", "cpuset.cpus.effective": "0-7\n"])
        }
    }

    /// The files (and default contents) a new cgroup of `hierarchy` has.
    static func files(_ hierarchy: String) -> [String: String] {
        let procs = ["cgroup.procs": "", "tasks": ""]
        switch hierarchy {
        case "cpu":
            return procs.merging(["cpu.shares": "1024\n", "cpu.cfs_period_us": "100000\n", "cpu.cfs_quota_us": "-1\n",
                                  "cpu.stat": "nr_periods 0\nnr_throttled 0\nthrottled_time 0\n"]) { a, _ in a }
        case "cpuacct":
            return procs.merging(["cpuacct.usage": "0\n", "cpuacct.usage_percpu": "0 0 \n",
                                  "cpuacct.stat": "user 0\nsystem 0\n"]) { a, _ in a }
        case "cpuset":
            return procs.merging(["cpuset.cpus": "\n", "cpuset.mems": "\n"]) { a, _ in a }
        case "memory":
            return procs.merging([
                "memory.limit_in_bytes": unlimited + "\n", "memory.soft_limit_in_bytes": unlimited + "\n",
                "memory.memsw.limit_in_bytes": unlimited + "\n", "memory.usage_in_bytes": "0\n",
                "memory.max_usage_in_bytes": "0\n", "memory.failcnt": "0\n", "cgroup.event_control": "",
                "memory.stat": "cache 0\nrss 0\nhierarchical_memory_limit \(unlimited)\ntotal_inactive_file 0\n",
            ]) { a, _ in a }
        case "pids":
            return procs.merging(["pids.max": "max\n", "pids.current": "0\n"]) { a, _ in a }
        case "freezer":
            return procs.merging(["freezer.state": "THAWED\n", "freezer.self_freezing": "0\n"]) { a, _ in a }
        case "unified":
            return [
                "cgroup.procs": "", "cgroup.threads": "", "cgroup.events": "populated 0\nfrozen 0\n", "cgroup.freeze": "0\n",
                "cgroup.controllers": "cpuset cpu io memory pids\n", "cgroup.subtree_control": "",
                "cpu.weight": "100\n", "cpu.max": "max 100000\n", "cpu.idle": "0\n", "cpu.stat": "usage_usec 0\n",
                "cpuset.cpus": "\n", "memory.max": "max\n", "memory.low": "0\n", "memory.swap.max": "max\n",
                "memory.current": "0\n", "memory.events": "oom 0\noom_kill 0\n", "memory.stat": "anon 0\nfile 0\n",
                "pids.max": "max\n", "pids.current": "0\n",
            ]
        default:
            return procs
        }
    }

    /// The hierarchy a path is in ("cpu", "memory", ..., "unified").
    private func hierarchy(_ path: String) -> String? {
        guard path.hasPrefix(tree.root + "/") else { return nil }
        return path.dropFirst(tree.root.count + 1).split(separator: "/").first.map(String.init)
    }

    public func made(directory path: String) {
        guard let h = hierarchy(path) else { return }
        for (name, value) in Self.files(h) { try? Sys.createFile(path + "/" + name, value) }
    }

    public func removing(directory path: String) {
        guard hierarchy(path) != nil else { return }
        for name in (try? Sys.subdirectoriesAndFiles(path)) ?? [] where !Sys.isDirectory(path + "/" + name) {
            unlink(path + "/" + name)
        }
    }

    public func wrote(file path: String, _ value: String) {
        // v1: freezer.self_freezing says whether the cgroup itself was asked
        // to freeze, as the kernel keeps it.
        if path.hasSuffix("/freezer.state") {
            let dir = String(path.dropLast("/freezer.state".count))
            try? Sys.createFile(dir + "/freezer.self_freezing", value.hasPrefix("FROZEN") ? "1\n" : "0\n")
            return
        }
        guard path.hasSuffix("/cgroup.freeze") else { return }
        let dir = String(path.dropLast("/cgroup.freeze".count))
        try? Sys.createFile(dir + "/cgroup.events", "populated 0\nfrozen \(value.hasPrefix("1") ? 1 : 0)\n")
    }
}
