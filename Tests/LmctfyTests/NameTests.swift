// Container names (lmctfy-behaviour.md §2): characters, relative names,
// Plan 9 cleaning, segment rules, and our length limits.
import Lmctfy
import LmctfySystem
import Testing

@Suite struct NameTests {
    let top = try! ContainerName.resolve("/top", relativeTo: .root)

    @Test(arguments: [
        (".", "/top"), ("./", "/top"), ("..", "/"), ("../t", "/t"), ("/..", "/"),
        ("//a//b///", "/a/b"), ("/a/./././b", "/a/b"), ("sub", "/top/sub"), ("sub/../x", "/top/x"),
        ("../../etc", "/etc"), ("/test..", "/test.."), ("/a.b", "/a.b"), ("/a_b", "/a_b"), ("/a-b", "/a-b"), ("/90", "/90"),
        ("/", "/"),
    ])
    func resolves(_ input: String, _ expected: String) throws {
        #expect(try ContainerName.resolve(input, relativeTo: top).path == expected)
    }

    @Test(arguments: ["", "/a b", "/a<b", "/a+b", "/é", "/a\nb", "/_x", "/.x", "/-x", "../.bad", "/ok/_no",
                      "/" + String(repeating: "a", count: 256), String(repeating: "/abc", count: 1000)])
    func rejects(_ input: String) {
        #expect {
            _ = try ContainerName.resolve(input, relativeTo: ContainerName.root)
        } throws: { error in
            (error as? LmctfyError)?.code == .invalidArgument
        }
    }

    @Test func segmentOf255BytesIsAllowed() throws {
        let name = "/" + String(repeating: "b", count: 255)
        #expect(try ContainerName.resolve(name, relativeTo: .root).path == name)
    }

    @Test func relationships() throws {
        let ab = try ContainerName.resolve("/a/b", relativeTo: .root)
        #expect(ab.parent?.path == "/a")
        #expect(ab.basename == "b")
        #expect(ab.selfAndAncestors.map(\.path) == ["/a/b", "/a", "/"])
        #expect(try ContainerName.resolve("/a", relativeTo: .root).isAncestor(of: ab))
        #expect(!ab.isAncestor(of: ab))
        #expect(ContainerName.root.parent == nil)
    }

    // Issue 9: a segment named like a control file would be made where no
    // such file exists and fail elsewhere, and could never be destroyed.
    @Test(arguments: ["/cpu.shares", "/memory.limit_in_bytes", "/a/tasks", "/a/cgroup.procs", "/devices.allow",
                      "/a/b/notify_on_release", "/release_agent", "/memory.max", "/io.weight", "/pids.max",
                      "/cpuset.cpus", "/blkio.weight", "/freezer.state", "/hugetlb.2MB.limit_in_bytes",
                      "/net_cls.classid", "/net_prio.ifpriomap", "/perf_event.x", "/rdma.max", "/misc.max",
                      "/irq.pressure", "/cpuacct.usage", "x/../cgroup.subtree_control"])
    func refusesControlFileNames(_ input: String) {
        let segment = String(input.split(separator: "/").last!)
        let err = #expect(throws: LmctfyError.self) { _ = try ContainerName.resolve(input, relativeTo: .root) }
        #expect(err?.code == .invalidArgument)
        #expect(err?.message.contains("\"\(segment)\"") == true && err?.message.contains("control file") == true, "\(String(describing: err))")
    }

    @Test(arguments: ["/cpu", "/memory", "/task", "/tasks2", "/cpuxshares", "/a/cpu_shares", "/Cpu.shares", "/iox", "/a/batch", "/batch2"])
    func controllerLikeNamesThatAreNoFileAreFine(_ input: String) throws {
        #expect(try ContainerName.resolve(input, relativeTo: .root).path == input)
    }

    // Issue 9: /batch is the cpu cgroup of every NORMAL/BEST_EFFORT container.
    @Test func batchIsReservedAtTheTopLevel() throws {
        for input in ["/batch", "batch", "/a/../batch", "//batch/"] {
            let err = #expect(throws: LmctfyError.self) { _ = try ContainerName.resolve(input, relativeTo: .root) }
            #expect(err?.code == .invalidArgument)
            #expect(err?.message.hasPrefix("Container name \"/batch\" is reserved") == true, "\(String(describing: err))")
        }
        // Relative to a container it is an ordinary nested name.
        #expect(try ContainerName.resolve("batch", relativeTo: top).path == "/top/batch")
        #expect(throws: LmctfyError.self) { _ = try ContainerName.resolve("/batch/x", relativeTo: .root) }
    }

    @Test func errorMessagesNameTheProblem() {
        #expect(throws: LmctfyError(.invalidArgument, "Container name is missing")) {
            _ = try ContainerName.resolve("", relativeTo: .root)
        }
        #expect(throws: LmctfyError(.invalidArgument, "Part of the container name \"_x\" starts with a non-alphanumeric character")) {
            _ = try ContainerName.resolve("/a/_x", relativeTo: .root)
        }
    }
}

@Suite struct MountsTests {
    static let hybrid = """
        24 30 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
        33 24 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
        34 33 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
        35 33 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
        36 33 0:31 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
        37 33 0:32 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
        38 33 0:33 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
        39 33 0:34 / /sys/fs/cgroup/mem\\040ory rw,relatime shared:9 master:2 - cgroup cgroup rw,memory
        40 33 0:35 / /other/cpu rw,relatime - cgroup cgroup rw,cpu
        """

    @Test func parsesV1HierarchiesAndTheUnifiedMount() {
        let m = CgroupMounts.parse(mountinfo: Self.hybrid)
        #expect(m.v1[.cpu] == "/sys/fs/cgroup/cpu")  // the first mount wins
        #expect(m.v1[.cpuacct] == "/sys/fs/cgroup/cpuacct")
        #expect(m.v1[.freezer] == "/sys/fs/cgroup/freezer")
        #expect(m.v1[.memory] == "/sys/fs/cgroup/mem ory")  // \040 unescaped
        #expect(m.v1[.cpuset] == nil)
        #expect(m.unified == "/sys/fs/cgroup/unified")
        #expect(m.version == .v1)
    }

    @Test func pureV2MachineIsV2() {
        let m = CgroupMounts.parse(mountinfo: "30 1 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n")
        #expect(m.version == .v2)
        #expect(m.unified == "/sys/fs/cgroup")
        #expect(m.v1.isEmpty)
    }

    @Test func coMountedHierarchiesShareAMountPoint() {
        let m = CgroupMounts.parse(mountinfo: "1 1 0:1 / /cg/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n")
        #expect(m.v1[.cpu] == "/cg/cpu,cpuacct")
        #expect(m.v1[.cpuacct] == "/cg/cpu,cpuacct")
        #expect(m.version == nil)
    }

    @Test func noCgroupsMeansNoVersionAndApiRefuses() {
        #expect(throws: LmctfyError.self) { _ = try ContainerApi(mounts: CgroupMounts()) }
    }
}
