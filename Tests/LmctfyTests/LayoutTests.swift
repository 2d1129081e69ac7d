// Mapping and rollback on fake v1 and v2 trees (no root needed).
import Glibc
@testable import Lmctfy
import LmctfyProto
import LmctfySystem
import LmctfyTestSupport
import Testing

@Suite struct LayoutTests {
    @Test func v1CreateFailureRemovesEveryDirectoryItMade() throws {
        // A fake tree has no pids.max in new directories: the handler's write
        // fails after the directories exist, and create must undo them (D4).
        let tree = try FakeCgroupTree(.v1)
        let api = try ContainerApi(mounts: tree.mounts)
        #expect {
            try api.create(ContainerName.resolve("/web", relativeTo: .root), spec: ContainerSpec(pids: PidsSpec(limit: 10)))
        } throws: { ($0 as? LmctfyError)?.code == .notFound }
        for c in Controller.allCases {
            #expect(!Sys.exists(tree.root + "/" + c.rawValue + "/web"), "left \(c.rawValue)/web behind")
        }
        // And the name is free again.
        try api.create(ContainerName.resolve("/web", relativeTo: .root), spec: ContainerSpec())
        #expect(Sys.isDirectory(tree.root + "/freezer/web"))
    }

    @Test func v1EmptySpecMakesOnlyTheFreezerDirectory() throws {
        let tree = try FakeCgroupTree(.v1)
        let api = try ContainerApi(mounts: tree.mounts)
        let name = try ContainerName.resolve("/a", relativeTo: .root)
        try api.create(name, spec: ContainerSpec())
        #expect(try api.exists(name))
        let made = Controller.allCases.filter { Sys.exists(tree.root + "/" + $0.rawValue + "/a") }
        #expect(made == [.freezer])
        #expect(try api.get(name).isolatedResources.isEmpty)
        #expect(throws: LmctfyError.self) { try api.create(name, spec: ContainerSpec()) }
    }

    @Test func v1IsolationIsReadFromWhichDirectoriesExist() throws {
        let tree = try FakeCgroupTree(.v1)
        try tree.seed("freezer", ["a"], files: [:])
        try tree.seed("memory", ["a"], files: [:])
        try tree.seed("cpu", ["batch", "a"], files: [:])
        try tree.seed("pids", ["a"], files: [:])  // not lmctfy's: not isolated
        try tree.dir("freezer", ["a"]).setState(.complete)
        try tree.dir("memory", ["a"]).setState(.creating)
        try tree.dir("cpu", ["batch", "a"]).setState(.creating)
        let api = try ContainerApi(mounts: tree.mounts)
        let c = try api.get("/a")
        #expect(try c.isolatedResources == [.memory, .cpu])
    }

    /// A nested container's cpu directory is under its top-level
    /// ancestor's, below the mount or below /batch: found at every depth
    /// without asking each ancestor (which made a lookup quadratic in the
    /// depth), and only where lmctfy made it.
    @Test func v1NestedCpuDirectoriesAreFoundBelowBatch() throws {
        let tree = try FakeCgroupTree(.v1)
        let kernel = try FakeCgroupKernel(tree)
        try Sys.mkdir(tree.root + "/proc")
        for h in ["cpu", "cpuacct"] where Sys.isDirectory(tree.root + "/" + h) {
            try tree.seed(h, ["batch"], files: ["cgroup.procs": "", "tasks": "", "cpu.shares": "2\n"])
        }
        let plan = FaultPlan(failAt: 0, errno: 0, filesystem: kernel)
        let api = try ContainerApi(mounts: tree.mounts(faults: plan), procRoot: tree.root + "/proc")
        let chain = [["a"], ["a", "b"], ["a", "b", "c"]]
        for path in chain {
            let name = try ContainerName.resolve("/" + path.joined(separator: "/"), relativeTo: .root)
            try api.create(name, spec: ContainerSpec(cpu: CpuSpec(schedulingLatency: path.count == 1 ? .normal : nil, limit: 100)))
        }
        // Another program's directory where a PRIORITY one's would be.
        try tree.seed("cpu", ["a", "b", "c"], files: [:])
        for path in chain {
            let name = try ContainerName.resolve("/" + path.joined(separator: "/"), relativeTo: .root)
            let cpu = try #require(try api.resourceDirs(name).dir(.cpu), "\(name) isolates cpu")
            #expect(cpu.segments == ["batch"] + path)
            #expect(try api.get(name).isolatedResources.contains(.cpu))
        }
        try api.destroy(ContainerName.resolve("/a", relativeTo: .root))
        #expect(!Sys.exists(tree.root + "/cpu/batch/a"))
        #expect(!Sys.exists(tree.root + "/freezer/a"))
        #expect(Sys.exists(tree.root + "/cpu/a/b/c"), "another program's directory was removed")
    }

    @Test func v1SubcontainersAreSortedAndRecursive() throws {
        let tree = try FakeCgroupTree(.v1)
        for path in [["b"], ["a"], ["a", "z"], ["a", "c"], ["a", "c", "d"]] {
            try tree.seed("freezer", path, files: [:])
            try tree.dir("freezer", path).setState(.complete)
        }
        // Not containers: another program's directory, a create in progress.
        try tree.seed("freezer", ["a", "foreign"], files: [:])
        try tree.seed("freezer", ["a", "making"], files: [:])
        try tree.dir("freezer", ["a", "making"]).setState(.creating)
        let api = try ContainerApi(mounts: tree.mounts)
        #expect(try api.get("/").subcontainers(recursive: false).map(\.path) == ["/a", "/b"])
        #expect(try api.get("/").subcontainers(recursive: true).map(\.path) == ["/a", "/a/c", "/a/c/d", "/a/z", "/b"])
        #expect(try api.get("/a").subcontainers(recursive: false).map(\.path) == ["/a/c", "/a/z"])
    }

    @Test func foreignDirectoryWithAnInvalidNameIsNotListed() throws {
        let tree = try FakeCgroupTree(.v1)
        try tree.seed("freezer", ["_bad"], files: [:])
        let api = try ContainerApi(mounts: tree.mounts)
        #expect(try api.get("/").subcontainers(recursive: false).isEmpty)
        // One lmctfy marked (it could not have made it) fails the listing.
        try tree.dir("freezer", ["_bad"]).setState(.complete)
        #expect(throws: LmctfyError.self) { _ = try api.get("/").subcontainers(recursive: false) }
    }

    @Test func nestedContainerCannotIsolateWhatItsParentDoesNot() throws {
        let tree = try FakeCgroupTree(.v1)
        let api = try ContainerApi(mounts: tree.mounts)
        try api.create(ContainerName.resolve("/p", relativeTo: .root), spec: ContainerSpec())
        #expect {
            try api.create(ContainerName.resolve("/p/c", relativeTo: .root), spec: ContainerSpec(pids: PidsSpec(limit: 5)))
        } throws: { ($0 as? LmctfyError)?.code == .failedPrecondition }
        #expect {
            try api.create(ContainerName.resolve("/p/c", relativeTo: .root), spec: ContainerSpec(cpu: CpuSpec(limit: 5)))
        } throws: { ($0 as? LmctfyError)?.code == .notFound }
        #expect(!Sys.exists(tree.root + "/freezer/p/c"))
    }

    // 9 as in the original, whose mkdir failed (lmctfy-behaviour.md §3.0).
    @Test func missingParentIsAFailedPrecondition() throws {
        let tree = try FakeCgroupTree(.v1)
        let api = try ContainerApi(mounts: tree.mounts)
        #expect {
            try api.create(ContainerName.resolve("/no/such", relativeTo: .root), spec: ContainerSpec())
        } throws: { ($0 as? LmctfyError)?.code == .failedPrecondition }
    }

    @Test func unenforceableSectionsAreRefusedBeforeAnythingIsMade() throws {
        let tree = try FakeCgroupTree(.v1)
        let api = try ContainerApi(mounts: tree.mounts)
        let name = try ContainerName.resolve("/x", relativeTo: .root)
        for spec in [ContainerSpec(childrenLimit: 3), ContainerSpec(network: NetworkSpec()),
                     ContainerSpec(filesystem: FilesystemSpec(fdLimit: 10)), ContainerSpec(securitySpec: SecuritySpec())] {
            #expect { try api.create(name, spec: spec) } throws: { ($0 as? LmctfyError)?.code == .unimplemented }
        }
        #expect(try !api.exists(name))
    }

    @Test func detectReadsTheFreezerLineOrTheV2Line() throws {
        let tree = try FakeCgroupTree(.v1)
        let proc = tree.root + "/proc"
        try Sys.mkdir(proc)
        try Sys.mkdir(proc + "/42")
        try Sys.createFile(proc + "/42/cgroup", "11:memory:/m\n4:freezer:/web/sub\n0::/unified/path\n")
        try Sys.mkdir(proc + "/43")
        try Sys.createFile(proc + "/43/cgroup", "4:freezer:/_bad\n")
        let api = try ContainerApi(mounts: tree.mounts, procRoot: proc)
        #expect(try api.detect(pid: 42).path == "/web/sub")
        #expect { _ = try api.detect(pid: 43) } throws: { ($0 as? LmctfyError)?.code == .failedPrecondition }
        #expect { _ = try api.detect(pid: 44) } throws: { ($0 as? LmctfyError)?.code == .notFound }
        // Another program's cgroup, its name with a terminal escape, a
        // newline and a quote: escaped in the error, never written raw.
        try Sys.mkdir(proc + "/45")
        try Sys.createFile(proc + "/45/cgroup", "4:freezer:/x\u{1b}[2J\"y\\\n")
        #expect { _ = try api.detect(pid: 45) } throws: { error in
            let message = (error as? LmctfyError)?.message ?? ""
            return message.contains("cgroup \"/x\\u{1b}[2J\\\"y\\\\\"") && !message.unicodeScalars.contains { $0.value < 0x20 }
        }

        let v2 = try FakeCgroupTree(.v2)
        let api2 = try ContainerApi(mounts: v2.mounts, procRoot: proc)
        #expect(try api2.detect(pid: 42).path == "/unified/path")
    }

    @Test func aTaskJoinsOnlyTheDirectoriesItIsNotInAlready() throws {
        let tree = try FakeCgroupTree(.v1)
        let proc = tree.root + "/proc"
        try Sys.mkdir(proc)
        try Sys.mkdir(proc + "/42")
        // /web isolates cpu (and cpuacct), /web/sub nothing of its own.
        for (h, segments) in [("freezer", ["web"]), ("freezer", ["web", "sub"]), ("cpu", ["web"]), ("cpuacct", ["web"])] {
            try tree.seed(h, segments, files: [:])
            try tree.dir(h, segments).setState(.complete)
        }
        let api = try ContainerApi(mounts: tree.mounts, procRoot: proc)
        let c = try api.get("/web/sub")
        let all = try c.joinDirs(for: "43")  // no such task: every directory
        let tasks = api.driver.tasksDir(try ContainerName.resolve("/web/sub", relativeTo: .root))
        #expect(all.count > 2 && all[0] == tasks)
        // In the cpu directory of /web (the nearest that isolates cpu), in
        // the root of every other hierarchy, and in /web in the freezer's.
        try Sys.createFile(proc + "/42/cgroup", "2:cpu:/web\n3:memory:/\n4:freezer:/web\n5:cpuacct:/web/sub\n")
        let left = try c.joinDirs(for: "42")
        #expect(!left.contains { $0.path == tree.mounts.v1[.cpu]! + "/web" }, "already in /web's cpu directory")
        #expect(!left.contains { $0.path == tree.mounts.v1[.memory]! }, "already in the memory root")
        #expect(left.contains { $0.path == tree.mounts.v1[.freezer]! + "/web/sub" }, "in /web, not in /web/sub")
        #expect(Set(left.map(\.path)) == Set(all.map(\.path)).subtracting([tree.mounts.v1[.cpu]! + "/web", tree.mounts.v1[.memory]!]))
        // A path that is a prefix of the directory's is not the directory.
        #expect(CgroupDir(mount: "/m", segments: ["a", "b"]).isAt("/a/b") && !CgroupDir(mount: "/m", segments: ["a", "b"]).isAt("/a"))
        #expect(CgroupDir(mount: "/m", segments: []).isAt("/") && !CgroupDir(mount: "/m", segments: ["a"]).isAt("/"))
        #expect(!CgroupDir(mount: "/m", segments: ["a"]).isAt("/a/") && !CgroupDir(mount: "/m", segments: ["a"]).isAt("a"))
        #expect(!CgroupDir(mount: "/m", segments: ["a", "b"]).isAt("/a/bc") && !CgroupDir(mount: "/m", segments: ["ab"]).isAt("/a/b"))
    }

    @Test func aTasksCgroupFileIsReadPerMountPoint() {
        let mounts = CgroupMounts(v1: [.cpu: "/c", .cpuacct: "/c", .memory: "/m", .freezer: "/f"], unified: "/u")
        func read(_ text: String) -> [String] {
            mounts.taskCgroups(Array(text.utf8)).map { "\($0.mount)=\(String(decoding: $0.path, as: UTF8.self))" }
        }
        // Co-mounted controllers name one mount each; names the library does
        // not know (name=systemd, hierarchies it has no mount for) are skipped.
        #expect(read("9:name=systemd:/\n4:cpu,cpuacct:/batch/a\n3:memory:/a\n2:blkio:/x\n1:freezer:/a/b\n0::/v2/path\n")
                == ["/c=/batch/a", "/c=/batch/a", "/m=/a", "/f=/a/b", "/u=/v2/path"])
        // The last line without its newline; a line without two colons; an
        // empty controller list on a hierarchy other than 0.
        #expect(read("3:memory:/a\ngarbage\n5::/nope\n1:freezer:/") == ["/m=/a", "/f=/"])
        #expect(read("").isEmpty && read("\n\n").isEmpty)
        // A path with colons keeps them (only the first two split the line).
        #expect(read("3:memory:/a:b") == ["/m=/a:b"])
    }

    @Test func v2CreateEnablesControllersInTheParentAndRecordsIsolation() throws {
        let tree = try FakeCgroupTree(.v2)
        let api = try ContainerApi(mounts: tree.mounts)
        #expect(api.version == .v2)
        let name = try ContainerName.resolve("/a", relativeTo: .root)
        // The fake tree has no pids.max, so this create fails after enabling
        // the controller and making the directory, and must remove the directory.
        #expect(throws: LmctfyError.self) { try api.create(name, spec: ContainerSpec(pids: PidsSpec(limit: 3))) }
        #expect(!Sys.exists(tree.root + "/unified/a"))
        // On a plain filesystem a write of "+pids" replaces the file's content.
        #expect(try tree.contents("unified", [], "cgroup.subtree_control") == "+pids")
    }

    @Test func v2DeviceRulesAreNotAvailable() throws {
        let tree = try FakeCgroupTree(.v2)
        let api = try ContainerApi(mounts: tree.mounts)
        #expect {
            try api.create(ContainerName.resolve("/d", relativeTo: .root), spec: ContainerSpec(device: DeviceSpec()))
        } throws: { ($0 as? LmctfyError)?.code == .unimplemented }
    }

    @Test func rootCannotBeDestroyedKilledOrPaused() throws {
        let tree = try FakeCgroupTree(.v1)
        let api = try ContainerApi(mounts: tree.mounts)
        #expect { try api.destroy(.root) } throws: { ($0 as? LmctfyError)?.code == .failedPrecondition }
        #expect { try api.get(.root).killAll() } throws: { ($0 as? LmctfyError)?.code == .failedPrecondition }
        #expect { try api.get(.root).setFrozen(true) } throws: { ($0 as? LmctfyError)?.code == .failedPrecondition }
    }
}
