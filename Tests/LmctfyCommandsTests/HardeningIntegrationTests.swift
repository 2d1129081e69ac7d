// Issue 9 on the real kernel (v1 on the host, v2 in the qemu guest): names
// that are control files or reserved, `update /`, specs that do not parse,
// owner ids out of range, and what `spec` reports without a CFS quota.
import Foundation
import Glibc
import Lmctfy
import LmctfyProto
import LmctfySystem
import LmctfyTestSupport
import Testing

@Suite(.serialized, .enabled(if: RealCgroups.available, "\(RealCgroups.unavailableReason ?? "")"))
struct HardeningIntegrationTests {
    /// Every hierarchy root (v1 mounts and the unified one).
    static var roots: [String] {
        var roots = Set(Host.mounts.v1.values)
        if let u = Host.mounts.unified { roots.insert(u) }
        return roots.sorted()
    }

    @Test(arguments: Runner.allCases)
    func controlFileNamesAreRefusedBeforeAnythingIsMade(_ lmctfy: Runner) throws {
        try withTestName("ctl") { name throws in
            try #require(try lmctfy("create", name, "").status == 0)
            for segment in ["cpu.shares", "memory.limit_in_bytes", "tasks", "cgroup.procs", "devices.allow",
                            "notify_on_release", "release_agent", "memory.max", "cpu.max", "pids.max", "io.max"] {
                let r = try lmctfy("create", name + "/" + segment, "")
                #expect(r.status == 3, "\(segment): \(r)")
                #expect(r.stderr.contains("\"\(segment)\"") && r.stderr.contains("control file"), "\(r)")
                for root in Self.roots {
                    // A directory, not the control file the hierarchy has anyway.
                    var st = stat()
                    let isDir = stat(root + name + "/" + segment, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
                    #expect(!isDir, "\(root + name)/\(segment) was made")
                }
            }
            #expect(try lmctfy("list", "containers", name).stdout.isEmpty)
            // And so the parent can still go.
            #expect(try lmctfy("destroy", name).status == 0)
        }
    }

    @Test(arguments: Runner.allCases)
    func batchIsReserved(_ lmctfy: Runner) throws {
        try MachineBatch.exclusively { try batchIsReservedAlone(lmctfy) }
    }

    private func batchIsReservedAlone(_ lmctfy: Runner) throws {
        let existed = Set(Self.roots.filter { Sys.exists($0 + "/batch") })
        let cpuBatch = Host.mounts.v1[.cpu].map { $0 + "/batch" }
        let shares = cpuBatch.flatMap { try? Sys.readFile($0 + "/cpu.shares") }
        defer {
            // Only what this test made: an empty directory lmctfy left.
            for root in Self.roots where !existed.contains(root) && Sys.exists(root + "/batch") {
                try? Sys.rmdir(root + "/batch")
            }
        }
        let r = try lmctfy("create", "/batch", "")
        #expect(r.status == 3, "\(r)")
        #expect(r.stderr.contains("Container name \"/batch\" is reserved"), "\(r)")
        #expect(Set(Self.roots.filter { Sys.exists($0 + "/batch") }) == existed)
        // Stop here if it was made: update and destroy would then act on the
        // machine's own /batch cgroup.
        try #require(r.status == 3)
        for args in [["update", "diff", "/batch", "cpu:{limit:100}"], ["destroy", "-f", "/batch"], ["spec", "/batch"],
                     ["killall", "/batch"], ["create", "/batch/x", ""]] {
            let refused = try lmctfy.run(args)
            #expect(refused.status == 3, "\(args): \(refused)")
        }
        #expect(Set(Self.roots.filter { Sys.exists($0 + "/batch") }) == existed)
        if let cpuBatch, let shares { #expect(try Sys.readFile(cpuBatch + "/cpu.shares") == shares) }
    }

    @Test(arguments: Runner.allCases)
    func updateOfTheRootIsRefused(_ lmctfy: Runner) throws {
        for args in [["update", "diff", "/", ""], ["update", "replace", "/", ""], ["update", "diff", "/", "pids:{limit:100000}"]] {
            let r = try lmctfy.run(args)
            #expect(r.status == 9, "\(args): \(r)")
            #expect(r.stderr.contains("Updating the root container \"/\" is not allowed"), "\(r)")
        }
    }

    @Test(arguments: Runner.allCases)
    func printableTextThatIsNotASpecMakesNothing(_ lmctfy: Runner) throws {
        try withTestName("typo") { name throws in
            for text in ["@A", "}}}}"] {
                let r = try lmctfy("create", name, text)
                #expect(r.status == 3, "\(text): \(r)")
                #expect(r.stderr.contains("Failed to parse the container config in text format: 1:1:"), "\(r)")
                #expect(Host.dirs(of: name).isEmpty)
            }
            // A binary spec (owner 1, pids) still works inline (no NUL in it: argv).
            let binary = try ContainerSpec(owner: 1, pids: PidsSpec(limit: 20)).serializedBytes()
            try #require(String(validating: binary, as: UTF8.self) != nil)
            let r = try lmctfy("create", name, String(decoding: binary, as: UTF8.self))
            #expect(r.status == 0, "\(r)")
            #expect(try lmctfy("spec", name).stdout == "owner: 1\npids {\n  limit: 20\n}\n")
        }
    }

    @Test(arguments: Runner.allCases)
    func ownerIdsOutOfRangeAreRefused(_ lmctfy: Runner) throws {
        try withTestName("owner") { name throws in
            for spec in ["owner: 4294967296", "owner: 4294967295", "owner: -1", "owner_group: 4294967296",
                         "owner_group: -2 pids:{limit:10}", "owner: 1000 owner_group: 9223372036854775807"] {
                let r = try lmctfy("create", name, spec)
                #expect(r.status == 3, "\(spec): \(r)")
                #expect(r.stderr.contains("is out of range"), "\(r)")
                #expect(Host.dirs(of: name).isEmpty, "\(spec)")
            }
            // The largest real ids are fine.
            #expect(try lmctfy("create", name, "owner: 4294967294 owner_group: 4294967294").status == 0)
            var st = stat()
            #expect(stat(Host.freezer + name, &st) == 0 && st.st_uid == 4294967294 && st.st_gid == 4294967294)
        }
    }

    @Test(arguments: Runner.allCases)
    func specWithoutAQuotaReportsMaxLimitAsTheOriginal(_ lmctfy: Runner) throws {
        try withTestName("noquota") { name throws in
            try #require(try lmctfy("create", name, "cpu:{limit:1000}").status == 0)
            var r = try lmctfy("spec", name)
            #expect(r.stdout.contains("  max_limit: 18446744073709551615\n"), "\(r)")
            // What spec prints is a spec again: replace with it changes nothing.
            r = try lmctfy("update", "replace", name, r.stdout)
            #expect(r.status == 0, "\(r)")
            #expect(try lmctfy("spec", name).stdout.contains("  max_limit: 18446744073709551615\n"))
            #expect(try lmctfy("update", "diff", name, "cpu:{max_limit:500}").status == 0)
            #expect(try lmctfy("spec", name).stdout.contains("  max_limit: 500\n"))
            #expect(try lmctfy("update", "diff", name, "cpu:{max_limit:18446744073709551615}").status == 0)
            #expect(try lmctfy("spec", name).stdout.contains("  max_limit: 18446744073709551615\n"))
        }
    }

    @Test(arguments: Runner.allCases)
    func aMissingParentIsAFailedPrecondition(_ lmctfy: Runner) throws {
        try withTestName("orphan") { name throws in
            let r = try lmctfy("create", name + "/child", "")
            #expect(r.status == 9, "\(r)")
            #expect(r.stderr.contains("its parent \"\(name)\" does not exist"), "\(r)")
            #expect(Host.dirs(of: name).isEmpty)
        }
    }
}
