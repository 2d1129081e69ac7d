// Something mounted over a container's cgroup directory is never read or
// written as if it were the container's: every access checks (fstatfs /
// statfs) that it lands on cgroupfs or cgroup2fs. Real kernel, root: a tmpfs
// is mounted over the test container's memory directory (v1) or its one
// directory (v2, in the guest) and seeded with a look-alike limit file.
import Glibc
@testable import Lmctfy
import LmctfyProto
import LmctfySystem
import LmctfyTestSupport
import Testing

@Suite(.enabled(if: RealCgroups.available, "\(RealCgroups.unavailableReason ?? "")"))
struct FilesystemCheckIntegrationTests {
    let api: ContainerApi

    init() throws {
        api = try ContainerApi.detect()
    }

    @Test func aFilesystemMountedOverAContainerIsNeitherReadNorWritten() throws {
        try withTestContainer(api, label: "overmount") { name throws in
            try api.create(name, spec: ContainerSpec(memory: MemorySpec(limit: 100_000_000)))
            let dir = try #require(try api.resourceDirs(name).dir(.memory))
            // Got before the mount: on v2 the memory directory is also the
            // tasks directory, whose lmctfy mark is then refused too.
            let c = try api.get(name)
            let limitFile = api.version == .v1 ? "memory.limit_in_bytes" : "memory.max"
            try Sys.mount(source: "none", target: dir.path, type: "tmpfs", data: "size=64k,mode=0755")
            var mounted = true
            defer { if mounted { umount2(dir.path, Int32(MNT_DETACH)) } }
            // A look-alike of the container's files on the tmpfs.
            for file in [limitFile, "memory.stat", "cgroup.procs", "tasks", "memory.usage_in_bytes", "memory.current"] {
                try Sys.createFile(dir.path + "/" + file, file == limitFile ? "7\n" : "")
            }
            let refused = { (e: Error) -> Bool in
                guard let e = e as? LmctfyError else { return false }
                return e.code == .failedPrecondition && e.message.contains("is not on a cgroup filesystem")
            }
            #expect(throws: LmctfyError.self) { _ = try c.spec() }
            #expect { _ = try c.spec() } throws: { refused($0) }
            #expect { _ = try c.stats(.full) } throws: { refused($0) }
            #expect { try c.update(ContainerSpec(memory: MemorySpec(limit: 50_000_000)), policy: .diff) } throws: { refused($0) }
            #expect { try api.destroy(name) } throws: { refused($0) }
            #expect(try Sys.readFile(dir.path + "/" + limitFile) == "7\n", "the look-alike file was written")
            // Once the mount is gone, the container is whole again.
            // Still mounted after a failure: the deferred lazy unmount takes
            // it (a failed unmount left it mounted, and the container behind).
            mounted = !unmountWhenFree(dir.path)
            try #require(!mounted, "the tmpfs could not be unmounted")
            if api.version == .v1 {
                // The destroy marked it (its tasks directory is in another
                // hierarchy) before it met the mount: from then on it is
                // invisible, as any destroy stopped part way, until a
                // destroy finishes it.
                #expect { _ = try c.spec() } throws: { ($0 as? LmctfyError)?.code == .notFound }
            } else {
                #expect(try c.spec().memory?.limit ?? 0 >= 99_000_000)
            }
            try api.destroy(name)
            #expect(try !api.exists(name))
        }
    }

    @Test func recordsAreRefusedOnAFilesystemMountedOverAContainer() throws {
        try withTestContainer(api, label: "overrecord") { name throws in
            try api.create(name, spec: ContainerSpec(memory: MemorySpec(limit: 100_000_000)))
            let dir = try #require(try api.resourceDirs(name).dir(.memory))
            try dir.setXattr("user.lmctfy.test_record", "cgroupfs")
            try Sys.mount(source: "none", target: dir.path, type: "tmpfs", data: "size=64k,mode=0755")
            var mounted = true
            defer { if mounted { umount2(dir.path, Int32(MNT_DETACH)) } }
            // A tmpfs of a kernel before 6.6 has no user.* attributes.
            let tmpfsRecords = (try? Sys.setxattr(dir.path, "user.lmctfy.test_record", "tmpfs")) != nil
            let refused = { (e: Error) -> Bool in
                guard let e = e as? LmctfyError else { return false }
                return e.code == .failedPrecondition && e.message.contains("is not on a cgroup filesystem")
            }
            #expect { _ = try dir.xattr("user.lmctfy.test_record") } throws: { refused($0) }
            #expect { try dir.setXattr("user.lmctfy.test_record", "written") } throws: { refused($0) }
            if tmpfsRecords {
                #expect(try Sys.getxattr(dir.path, "user.lmctfy.test_record") == "tmpfs", "the tmpfs's record was written")
            }
            // Still mounted after a failure: the deferred lazy unmount takes
            // it (a failed unmount left it mounted, and the container behind).
            mounted = !unmountWhenFree(dir.path)
            try #require(!mounted, "the tmpfs could not be unmounted")
            #expect(try dir.xattr("user.lmctfy.test_record") == "cgroupfs")
            try api.destroy(name)
        }
    }

    /// The OOM kills below a container (what tells the v1 watcher an OOM
    /// at its limit killed in a subcontainer), summed by a walk from
    /// descriptor to descriptor, are those summed by paths from the mount
    /// point; neither counts a filesystem mounted over a subcontainer.
    @Test(.enabled(if: (try? CgroupMounts.detect())?.version == .v1, "v1's memory.oom_control"))
    func killsBelowAContainerAreCountedWithoutCrossingAMount() throws {
        try withTestContainer(api, label: "killsbelow") { name throws in
            try api.create(name, spec: ContainerSpec(memory: MemorySpec(limit: 256 << 20)))
            let a = try ContainerName.resolve("a", relativeTo: name)
            let b = try ContainerName.resolve("a/b", relativeTo: name)
            let other = try ContainerName.resolve("other", relativeTo: name)
            for sub in [a, b, other] { try api.create(sub, spec: ContainerSpec(memory: MemorySpec(limit: 32 << 20))) }
            let top = try #require(try api.resourceDirs(name).dir(.memory))
            #expect(top.sumBelow("memory.oom_control", key: "oom_kill", byPath: OomControlSource.killsBelowByPath) == 0)
            _ = try api.get(b).run([testHelperPath, "alloc", "64"])
            var waited = 0
            while (oomKills(b) ?? 0) < 1 && waited < 300 {
                usleep(100_000)
                waited += 1
            }
            let kills = try #require(oomKills(b))
            try #require(kills >= 1, "no OOM kill in \(b)")
            let walked = try #require(top.sumBelow("memory.oom_control", key: "oom_kill", byPath: OomControlSource.killsBelowByPath),
                                      "not walked from descriptors on the kernel")
            #expect(walked == Int64(kills))
            #expect(walked == OomControlSource.killsBelowByPath(top))
            // A tmpfs over the other subcontainer, with a look-alike count.
            let over = try #require(try api.resourceDirs(other).dir(.memory))
            try Sys.mount(source: "none", target: over.path, type: "tmpfs", data: "size=64k,mode=0755")
            var mounted = true
            defer { if mounted { umount2(over.path, Int32(MNT_DETACH)) } }
            try Sys.createFile(over.path + "/memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 1000\n")
            try Sys.mkdir(over.path + "/deeper")
            #expect(OomControlSource.killsBelow(top) == Int64(kills))
            #expect(OomControlSource.killsBelowByPath(top) == Int64(kills))
            mounted = !unmountWhenFree(over.path)
            try #require(!mounted, "the tmpfs could not be unmounted")
            try api.destroy(name)
        }
    }

    @Test func recordsReadAndWrittenFromTheMountPointAreThePathsOwn() throws {
        // By name from the hierarchy's kept descriptor (getxattrat and
        // setxattrat, or the directory opened with openat2 for a checked
        // record), and by path where the kernel lacks those calls: the
        // same records either way.
        try withTestContainer(api, label: "records") { name throws in
            try api.create(name, spec: ContainerSpec(memory: MemorySpec(limit: 100_000_000)))
            let dir = try #require(try api.resourceDirs(name).dir(.memory))
            defer { MountRoots.shared.xattrat = true }
            for viaMountPoint in [true, false] {
                MountRoots.shared.xattrat = viaMountPoint
                for checked in [true, false] {
                    let value = "v\(viaMountPoint)\(checked)" + String(repeating: "x", count: checked ? 300 : 3)
                    try dir.setXattr("user.lmctfy.test_record", value, checked: checked)
                    #expect(try Sys.getxattr(dir.path, "user.lmctfy.test_record") == value)
                    #expect(try dir.xattr("user.lmctfy.test_record", checked: checked) == value)
                    #expect(try dir.xattr("user.lmctfy.never_written", checked: checked) == nil)
                }
            }
            try api.destroy(name)
            #expect { _ = try dir.xattr("user.lmctfy.test_record") } throws: { ($0 as? LmctfyError)?.code == .notFound }
            #expect { _ = try dir.xattr("user.lmctfy.test_record", checked: false) } throws: { ($0 as? LmctfyError)?.code == .notFound }
        }
    }

    @Test func theCheckKnowsBothCgroupFilesystems() throws {
        // The magic numbers are the kernel's CGROUP_SUPER_MAGIC and
        // CGROUP2_SUPER_MAGIC: this machine's hierarchy root says which.
        let root = try #require(api.mounts.v1[.freezer] ?? api.mounts.unified)
        let type = try Sys.filesystemType(root)
        #expect([CgroupAccess.cgroupMagic, CgroupAccess.cgroup2Magic].contains(type))
        #expect(throws: Never.self) { try CgroupAccess.kernel.check(type, root) }
        #expect(throws: LmctfyError.self) { try CgroupAccess.kernel.check(0x0102_1994, "/tmp") }
        #expect(throws: Never.self) { try CgroupAccess.fake().check(0x0102_1994, "/tmp") }
    }
}

/// Unmounts `path`, trying again for up to 5 s while it is busy: an agent
/// of another test (or any process) that walks the machine's cgroup tree may
/// have a directory or file of the mount open at that instant (a CI run
/// failed here with EBUSY once, while an agent was reconciling the whole
/// tree). True once it is unmounted.
private func unmountWhenFree(_ path: String) -> Bool {
    for _ in 0..<250 {
        if umount2(path, 0) == 0 { return true }
        guard errno == EBUSY else { return false }
        usleep(20_000)
    }
    return false
}
