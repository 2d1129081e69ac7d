// `init` on fake trees with a fake /proc/self/mountinfo: which mounts are
// accepted, which conflicts are refused, and the machine preparation. Real
// mounting is not exercised here: it would change the host outside the
// test's own cgroups.
import Glibc
@testable import Lmctfy
import LmctfyProto
import LmctfySystem
import LmctfyTestSupport
import Testing

@Suite struct InitTests {
    /// A fake v1 tree plus a /proc whose mountinfo lists its hierarchies.
    func fakeMachine() throws -> (FakeCgroupTree, String) {
        let tree = try FakeCgroupTree(.v1, controllers: [.cpu, .cpuacct, .freezer, .memory])
        let proc = tree.root + "/proc"
        try Sys.mkdir(proc)
        try Sys.mkdir(proc + "/self")
        var lines: [String] = []
        for (i, c) in ["cpu", "cpuacct", "freezer", "memory"].enumerated() {
            lines.append("\(30 + i) 20 0:\(40 + i) / \(tree.root)/\(c) rw,relatime - cgroup cgroup rw,\(c)")
        }
        try Sys.createFile(proc + "/self/mountinfo", lines.joined(separator: "\n") + "\n")
        try tree.seed("cpu", [], files: ["cpu.shares": "1024\n"])
        try tree.seed("cpu", ["batch"], files: ["cpu.shares": ""])  // a plain file: a write does not truncate
        return (tree, proc)
    }

    @Test func emptySpecPreparesTheBatchCgroups() throws {
        let (tree, proc) = try fakeMachine()
        let api = try ContainerApi.initMachine(InitSpec(), procRoot: proc, access: .fake())
        #expect(api.version == .v1)
        #expect(Sys.isDirectory(tree.root + "/cpuacct/batch"))
        #expect(try tree.contents("cpu", ["batch"], "cpu.shares") == "2")
        // Idempotent.
        _ = try ContainerApi.initMachine(InitSpec(), procRoot: proc, access: .fake())
    }

    @Test func alreadyMountedAsAskedIsANoOp() throws {
        let (tree, proc) = try fakeMachine()
        let spec = try InitSpec(textFormat: "cgroup_mount:{mount_path:'\(tree.root)/memory' hierarchy:CGROUP_MEMORY}")
        _ = try ContainerApi.initMachine(spec, procRoot: proc, access: .fake())
    }

    @Test(arguments: [
        // A path holding other hierarchies than the ones asked for.
        "cgroup_mount:{mount_path:'ROOT/memory' hierarchy:CGROUP_MEMORY hierarchy:CGROUP_CPU}",
        // A hierarchy that is mounted elsewhere.
        "cgroup_mount:{mount_path:'ROOT/elsewhere' hierarchy:CGROUP_FREEZER}",
        // No hierarchy, no path, an unknown one.
        "cgroup_mount:{mount_path:'ROOT/x'}",
        "cgroup_mount:{hierarchy:CGROUP_CPUSET}",
        "cgroup_mount:{mount_path:'ROOT/job' hierarchy:CGROUP_JOB}",
        // Relative (made at / and mounted below the current directory), with
        // "..", and a hierarchy named twice: refused before anything is made.
        "cgroup_mount:{mount_path:'lmctfy-init-test-relative/x' hierarchy:CGROUP_CPUSET}",
        "cgroup_mount:{mount_path:'ROOT/elsewhere/../x' hierarchy:CGROUP_CPUSET}",
        "cgroup_mount:{mount_path:'ROOT/elsewhere' hierarchy:CGROUP_CPUSET} cgroup_mount:{mount_path:'ROOT/x' hierarchy:CGROUP_CPUSET}",
    ])
    func conflictsAreRefusedWithThree(_ text: String) throws {
        let (tree, proc) = try fakeMachine()
        let spec = try InitSpec(textFormat: text.replacingOccurrences("ROOT", tree.root))
        #expect { _ = try ContainerApi.initMachine(spec, procRoot: proc, access: .fake()) } throws: {
            ($0 as? LmctfyError)?.code == .invalidArgument
        }
        #expect(!Sys.exists(tree.root + "/elsewhere"))
        #expect(!Sys.exists("/lmctfy-init-test-relative"))
    }

    /// A mount that fails undoes the ones this init made before it, and
    /// the directories it made for them: the machine is left as it was
    /// found (the first stayed mounted; a probe). On the fake tree nothing
    /// is mounted: the fault plan sees the mounts and unmounts.
    @Test func aFailedMountUndoesTheMountsBeforeIt() throws {
        let (tree, proc) = try fakeMachine()
        let spec = try InitSpec(textFormat: "cgroup_mount:{mount_path:'\(tree.root)/new/pids' hierarchy:CGROUP_PIDS} "
                                + "cgroup_mount:{mount_path:'\(tree.root)/new/blkio' hierarchy:CGROUP_BLOCKIO}")
        let plan = FaultPlan(failAt: 2, errno: EBUSY, calls: [.mount, .umount])
        #expect { _ = try ContainerApi.initMachine(spec, procRoot: proc, access: .fake(faults: plan)) } throws: { error in
            let e = error as? LmctfyError
            return e?.code == .failedPrecondition && e?.message.contains("at \(tree.root)/new/blkio") == true
                && e?.message.contains("\(tree.root)/new/pids, mounted before it, unmounted again") == true
        }
        #expect(plan.seen.map(\.description) == ["mount(\(tree.root)/new/pids)", "mount(\(tree.root)/new/blkio) FAILED",
                                                 "umount(\(tree.root)/new/pids)"])
        #expect(!Sys.exists(tree.root + "/new"), "the directories made for the mounts were left")
        // The same spec with nothing failing mounts both (seen, not made).
        let clean = FaultPlan(calls: [.mount, .umount])
        let api = try ContainerApi.initMachine(spec, procRoot: proc, access: .fake(faults: clean))
        #expect(clean.seen.map(\.description) == ["mount(\(tree.root)/new/pids)", "mount(\(tree.root)/new/blkio)"])
        #expect(api.mounts.v1[.pids] == tree.root + "/new/pids" && api.mounts.v1[.blkio] == tree.root + "/new/blkio")
    }

    /// Two cgroup_mounts at one path are refused before anything is made.
    @Test func twoMountsAtOnePathAreRefused() throws {
        let (tree, proc) = try fakeMachine()
        let spec = try InitSpec(textFormat: "cgroup_mount:{mount_path:'\(tree.root)/new/x' hierarchy:CGROUP_PIDS} "
                                + "cgroup_mount:{mount_path:'\(tree.root)/new/x' hierarchy:CGROUP_BLOCKIO}")
        let plan = FaultPlan(calls: [.mount, .umount])
        #expect { _ = try ContainerApi.initMachine(spec, procRoot: proc, access: .fake(faults: plan)) } throws: {
            ($0 as? LmctfyError)?.code == .invalidArgument
        }
        #expect(plan.seen.isEmpty && !Sys.exists(tree.root + "/new"))
    }

    @Test func latencyClassesGoUnderBatch() throws {
        let (tree, proc) = try fakeMachine()
        let api = try ContainerApi(mounts: CgroupMounts.detect(procRoot: proc, access: .fake()), procRoot: proc)
        let name = try ContainerName.resolve("/web", relativeTo: .root)
        // The fake cpu directory has no cpu.shares, so create fails after
        // placing the directory; what matters is where it tried and that it
        // cleaned up.
        let spec = ContainerSpec(cpu: CpuSpec(schedulingLatency: .bestEffort, limit: 100))
        #expect(throws: LmctfyError.self) { try api.create(name, spec: spec) }
        #expect(!Sys.exists(tree.root + "/cpu/batch/web"))
        #expect(!Sys.exists(tree.root + "/cpu/web"))
        // An existing container under /batch is found there.
        try tree.seed("freezer", ["old"], files: [:])
        try tree.seed("cpu", ["batch", "old"], files: [:])
        try tree.dir("freezer", ["old"]).setState(.complete)
        try tree.dir("cpu", ["batch", "old"]).setState(.creating)
        let dirs = try api.resourceDirs(try ContainerName.resolve("/old", relativeTo: .root))
        #expect(dirs.dir(.cpu)?.path == tree.root + "/cpu/batch/old")
    }

    @Test func noTasksHierarchyIsNotFound() throws {
        let tree = try FakeCgroupTree(.v1, controllers: [.memory])
        #expect { _ = try ContainerApi(mounts: tree.mounts) } throws: { ($0 as? LmctfyError)?.code == .notFound }
    }
}

extension String {
    func replacingOccurrences(_ target: String, _ replacement: String) -> String {
        var out = ""
        var rest = Substring(self)
        while let r = rest.firstRange(of: target) {
            out += rest[..<r.lowerBound] + replacement
            rest = rest[r.upperBound...]
        }
        return out + rest
    }
}
