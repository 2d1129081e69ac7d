// lmctfy touches only what it made (issue 9): foreign cgroups of the same
// name are neither adopted nor removed; create is crash-consistent (kill -9
// at any instant leaves nothing visible or the whole container, and the
// next create or destroy cleans up); create, update and destroy of a tree
// are serialised by its lock; permission errors are 7 on every verb; a
// delegated container's owner can make, use and destroy subcontainers.
// On the real kernel (v1 here, v2 in the qemu guest); needs root.
import Glibc
import Lmctfy
import LmctfyCommands
import LmctfyProto
import LmctfySystem
import LmctfyTestSupport
import Testing

@Suite(.serialized, .enabled(if: RealCgroups.available, "\(RealCgroups.unavailableReason ?? "")"))
struct OwnershipIntegrationTests {
    static var v1: Bool { Host.mounts.version == .v1 }
    /// The hierarchy that is not the tasks one where a foreign cgroup is planted.
    static var resourceRoot: String { v1 ? Host.mounts.v1[.memory]! : Host.mounts.unified! }
    static let spec = "cpu:{limit:500} memory:{limit:104857600}"

    func lmctfy(_ args: String...) throws -> CLIResult { try BuiltBinary.run(args) }

    /// argv as uid/gid 65534, no supplementary groups (the spawn shim
    /// drops the ids before exec; the qemu guest has no setpriv).
    static func spawnAsNobody(_ argv: [String], stdout: StdioTarget = .devNull, stderr: StdioTarget = .devNull) throws -> pid_t {
        var o = SpawnOptions(argv: argv)
        o.ids = (uid: 65534, gid: 65534)
        o.stdin = .devNull
        o.stdout = stdout
        o.stderr = stderr
        return try Spawn.spawn(o)
    }

    /// lmctfy as uid/gid 65534, to completion.
    func asNobody(_ args: [String]) throws -> CLIResult {
        let (outRead, outWrite) = try Sys.pipe()
        let (errRead, errWrite) = try Sys.pipe()
        // From a copy that uid can reach wherever the checkout lives.
        let pid = try withCopyForOtherUsers(try #require(BuiltBinary.path)) { lmctfy in
            try Self.spawnAsNobody([lmctfy] + args, stdout: .fd(outWrite), stderr: .fd(errWrite))
        }
        close(outWrite)
        close(errWrite)
        defer { close(outRead); close(errRead) }
        let out = try Sys.readAll(outRead, path: "stdout")
        let err = try Sys.readAll(errRead, path: "stderr")
        guard case .exited(let status) = try Sys.waitForExit(pid) else {
            Issue.record("lmctfy \(args) was killed")
            return CLIResult(status: -1, stdoutBytes: out, stderr: String(decoding: err, as: UTF8.self))
        }
        return CLIResult(status: status, stdoutBytes: out, stderr: String(decoding: err, as: UTF8.self))
    }

    // MARK: 2. Foreign cgroups

    @Test func aForeignCgroupIsNeitherAdoptedNorRemoved() throws {
        try withTestName("foreign") { name in
            // Another program's cgroup of the same name in a resource hierarchy.
            let foreign = Self.resourceRoot + name
            try Sys.mkdir(foreign)
            defer { _ = try? Sys.rmdir(foreign) }
            if Self.v1 {
                let r = try lmctfy("create", name, Self.spec)
                #expect(r.status == 6, "\(r.stderr)")
                #expect(Host.dirs(of: name) == [foreign], "create changed something")
                // Without memory the name is free; the foreign memory cgroup
                // is not the container's: not isolated, not removed.
                #expect(try lmctfy("create", name, "cpu:{limit:500}").status == 0)
                #expect(try !lmctfy("spec", name).stdout.contains("memory"))
                #expect(try lmctfy("update", "diff", name, "memory:{limit:1000000}").status == 3)
                #expect(try lmctfy("destroy", "-f", name).status == 0)
                #expect(Host.dirs(of: name) == [foreign])
            } else {
                // v2: the tasks hierarchy itself.
                #expect(try lmctfy("create", name, Self.spec).status == 6)
                #expect(try lmctfy("destroy", "-f", name).status == 5)
                #expect(Sys.isDirectory(foreign))
            }
        }
    }

    @Test func aForeignCgroupInTheTasksHierarchyIsNoContainer() throws {
        try withTestName("foreigntasks") { name in
            let foreign = Host.freezer + name
            try Sys.mkdir(foreign)
            defer { _ = try? Sys.rmdir(foreign) }
            let task = try SleepingTask(into: name)
            defer { task.end() }
            #expect(try lmctfy("create", name, "").status == 6)
            #expect(try !lmctfy("list", "containers", "/").stdout.contains(name))
            #expect(try lmctfy("spec", name).status == 5)
            #expect(try lmctfy("destroy", "-f", name).status == 5)
            #expect(try lmctfy("killall", name).status == 5)
            #expect(kill(task.pid, 0) == 0, "a task of a foreign cgroup was killed")
            #expect(Sys.isDirectory(foreign))
        }
    }

    @Test func destroyRefusesAroundAForeignSubcgroup() throws {
        try withTestName("foreignsub") { name in
            #expect(try lmctfy("create", name, "").status == 0)
            let foreign = Host.freezer + name + "/other"
            try Sys.mkdir(foreign)
            defer { _ = try? Sys.rmdir(foreign) }
            #expect(try !lmctfy("list", "containers", name).stdout.contains("other"))
            let r = try lmctfy("destroy", "-f", name)
            #expect(r.status == 9 && r.stderr.contains(foreign), "\(r.stderr)")
            #expect(Sys.isDirectory(foreign))
        }
    }

    /// The same below the container's directory in another hierarchy
    /// (memory): refused before anything is killed or removed, naming it.
    /// It was found only by the rmdir, after the kill: the container was
    /// left half removed and invisible (a probe).
    @Test func destroyRefusesAroundAForeignSubcgroupInAnotherHierarchy() throws {
        try withTestName("foreignres") { name in
            #expect(try lmctfy("create", name, Self.spec).status == 0)
            let started = try lmctfy("run", "-n", name, "sleep", "300")
            let line = started.stdout.split(separator: "\n").first { $0.hasPrefix("pid=\"") }
            let pid = try #require(line.flatMap { pid_t($0.dropFirst(5).dropLast()) }, "\(started)")
            let foreign = Self.resourceRoot + name + "/other"
            try Sys.mkdir(foreign)
            defer { _ = try? Sys.rmdir(foreign) }
            let dirs = Self.v1 ? Host.dirs(of: name) : []
            let r = try lmctfy("destroy", "-f", name)
            #expect(r.status == 9 && r.stderr.contains(foreign), "\(r.stderr)")
            #expect(kill(pid, 0) == 0, "the container's process was killed")
            #expect(Self.v1 ? Host.dirs(of: name) == dirs : true, "directories were removed")
            #expect(try lmctfy("spec", name).status == 0, "the container is still there")
            try Sys.rmdir(foreign)
            #expect(try lmctfy("destroy", "-f", name).status == 0)
        }
    }

    // MARK: 4. Leftovers and the lock

    @Test func destroyRemovesLeftoversWhoseTasksDirectoryIsGone() throws {
        try withTestName("leftover") { name in
            #expect(try lmctfy("create", name, Self.spec).status == 0)
            // What an unserialised create racing a destroy used to leave:
            // resource directories without the tasks directory.
            try Sys.rmdir(Host.freezer + name)
            if Self.v1 {
                #expect(!Host.dirs(of: name).isEmpty)
                #expect(try !lmctfy("list", "containers", "/").stdout.contains(name))
                #expect(try lmctfy("create", name, Self.spec).status == 0)  // cleans up, then creates
                try Sys.rmdir(Host.freezer + name)
                #expect(try lmctfy("destroy", "-f", name).status == 0)
                #expect(Host.dirs(of: name).isEmpty)
                #expect(try lmctfy("destroy", "-f", name).status == 5)
            }
        }
    }

    @Test func createWaitsForTheTreeLock() throws {
        try withTestName("lock") { name in
            let top = String(name.dropFirst())
            _ = try? Sys.mkdir("/run/lmctfy")
            _ = try? Sys.mkdir(CgroupAccess.kernelLockRoot)
            var lock: FileLock? = try FileLock.acquire(CgroupAccess.kernelLockRoot + "/" + top)
            let pid = try TestProcess.spawn([BuiltBinary.path!, "create", name, ""])
            defer { TestProcess.end(pid) }
            usleep(300_000)
            #expect(TestProcess.reapIfExited(pid) == nil, "create did not wait for the lock")
            #expect(Host.dirs(of: name).isEmpty)
            lock = nil
            _ = lock
            let status = try Sys.waitForExit(pid)
            #expect(status == .exited(0))
            #expect(try lmctfy("list", "containers", "/").stdout.contains(name))
        }
    }

    /// Where /run is on a disk a journal outlives a reboot; one of another
    /// boot undoes nothing (the cgroups it names went with that boot, and
    /// one of the same name now is someone else's), one of this boot is an
    /// interrupted create of ours and is undone.
    @Test func aJournalOfAnotherBootUndoesNothing() throws {
        try withTestName("reboot") { name in
            let top = String(name.dropFirst())
            let dir = Self.resourceRoot + name
            try Sys.mkdir(dir, mode: 0o755)
            defer { rmdir(dir) }
            _ = try? Sys.mkdir("/run/lmctfy")
            _ = try? Sys.mkdir(CgroupAccess.kernelLockRoot)
            let file = CgroupAccess.kernelLockRoot + "/" + top
            defer { unlink(file) }
            func journal(boot: String) throws {
                try Sys.createFile(file, "boot \(boot)\ncreate \(name)\nmkdir \(Self.resourceRoot)\t\(top)\n", mode: 0o600)
            }
            try journal(boot: "00000000-0000-0000-0000-000000000000")
            // Any verb on the tree replays its journal first: here a create,
            // refused because of the other program's cgroup.
            #expect(try lmctfy("create", name, Self.spec).status == 6)
            #expect(Sys.exists(dir), "a journal of another boot removed a cgroup")
            let boot = String(try Sys.readFile("/proc/sys/kernel/random/boot_id").dropLast())
            try journal(boot: boot)
            // Its leftovers were there and are gone: the destroy succeeds
            // (it said 5, "does not exist", having removed them); 5 once
            // nothing is left.
            #expect(try lmctfy("destroy", name).status == 0)
            #expect(!Sys.exists(dir), "this boot's journal of an interrupted create is undone")
            #expect(try lmctfy("destroy", name).status == 5)
        }
    }

    /// A top-level container's lock file goes with its tree, so /run does
    /// not fill with one file per name ever used; a waiter on the removed
    /// file starts again on the new one (the race test below).
    @Test func theLockFileGoesWithItsTree() throws {
        try withTestName("lockfile") { name throws in
            let file = CgroupAccess.kernelLockRoot + name
            #expect(try lmctfy("create", name, Self.spec).status == 0)
            #expect(try lmctfy("create", name + "/sub", "").status == 0)
            #expect(Sys.exists(file))
            #expect(try lmctfy("destroy", "-f", name + "/sub").status == 0)
            #expect(Sys.exists(file), "a nested destroy keeps the tree's lock file")
            #expect(try lmctfy("destroy", "-f", name).status == 0)
            #expect(!Sys.exists(file), "\(file) was left behind")
            // Nor by a verb on a name that does not exist, or a failed create.
            #expect(try lmctfy("destroy", name).status == 5)
            #expect(try lmctfy("update", "diff", name, "cpu:{limit:100}").status == 5)
            #expect(try lmctfy("create", name, "cpu:{max_limit:3}").status == 3)
            #expect(!Sys.exists(file), "\(file) was left behind")
        }
    }

    @Test func racingCreatesAndDestroysLeaveNoHalfContainers() throws {
        try withTestName("race") { base in
            let names = (0..<3).map { "\(base)_\($0)" }
            defer { for n in names { _ = try? lmctfy("destroy", "-f", n) } }
            let script = (0..<15).map { i in
                let n = names[i % 3]
                return "\(BuiltBinary.path!) create \(n) '\(Self.spec)' >/dev/null 2>&1; \(BuiltBinary.path!) destroy -f \(n) >/dev/null 2>&1"
            }.joined(separator: "; ")
            let pids = try (0..<20).map { _ in try TestProcess.spawn(["/bin/sh", "-c", script]) }
            for pid in pids { _ = try Sys.waitForExit(pid) }
            for n in names {
                let create = try lmctfy("create", n, Self.spec)
                #expect(create.status == 0, "\(n): \(create.stderr)")
                #expect(try lmctfy("destroy", "-f", n).status == 0)
                #expect(Host.dirs(of: n).isEmpty, "\(n): \(Host.dirs(of: n))")
            }
        }
    }

    // MARK: 5. kill -9 during create

    @Test func createKilledAtAnyInstantLeavesNothingOrTheWholeContainer() throws {
        try withTestName("kill") { name in
            let full = "cpu:{limit:500 mask:{data:[1]}} memory:{limit:104857600 reservation:52428800}"
            var rng = SystemRandomNumberGenerator()
            var complete = 0, invisible = 0
            // Kill anywhere from the start to a little after a whole create
            // (measured here: the qemu guest is several times slower).
            let start = MonotonicClock.nanoseconds()
            #expect(try lmctfy("create", name, full).status == 0)
            let createUs = UInt32((MonotonicClock.nanoseconds() - start) / 1000)
            // The whole spec as read back (v2 weights round cpu limits).
            let whole = try lmctfy("spec", name).stdout
            #expect(whole.contains("limit: 104857600") && whole.contains("reservation: 52428800"), "\(whole)")
            #expect(try lmctfy("destroy", "-f", name).status == 0)
            for _ in 0..<60 {
                let pid = try TestProcess.spawn([BuiltBinary.path!, "create", name, full])
                usleep(UInt32.random(in: 0...(createUs + createUs / 5), using: &rng))
                kill(pid, SIGKILL)
                _ = try Sys.waitForExit(pid)
                let spec = try lmctfy("spec", name)
                if spec.status == 0 {
                    complete += 1
                    #expect(spec.stdout == whole, "a visible container is not whole:\n\(spec.stdout)")
                    #expect(try lmctfy("create", name, full).status == 6)
                    #expect(try lmctfy("destroy", "-f", name).status == 0)
                } else {
                    invisible += 1
                    #expect(spec.status == 5)
                    #expect(try !lmctfy("list", "containers", "/").stdout.contains(name))
                    // The next create cleans up whatever the killed one left.
                    let again = try lmctfy("create", name, full)
                    #expect(again.status == 0, "\(again.stderr)")
                    #expect(try lmctfy("destroy", "-f", name).status == 0)
                }
                #expect(Host.dirs(of: name).isEmpty, "left: \(Host.dirs(of: name))")
            }
            print("kill -9 during create: \(complete) complete, \(invisible) invisible")
        }
    }

    // MARK: 8. Permission

    @Test func everyVerbIsPermissionDeniedForAnotherUser() throws {
        try withTestName("perm") { name in
            #expect(try lmctfy("create", name, Self.spec).status == 0)
            let task = try SleepingTask(into: name)
            defer { task.end() }
            let calls: [[String]] = [
                ["create", name + "/sub", ""], ["create", RealCgroups.uniqueName("permtop"), ""],
                ["destroy", "-f", name], ["update", "diff", name, "memory:{limit:1000000}"],
                ["update", "replace", name, Self.spec], ["pause", name], ["resume", name],
                ["killall", name], ["enter", name, String(getpid())], ["run", name, "/bin/true"],
                ["run", "-n", name, "/bin/true"],
                // v1 registers through cgroup.event_control (a write); v2
                // only reads memory.events, which anyone may watch.
            ] + (Self.v1 ? [["notify", "memory", "oom", name]] : [])
            for args in calls {
                let r = try asNobody(args)
                #expect(r.status == 7, "\(args): \(r.status) \(r.stderr)")
                #expect(r.stderr.contains("/"), "\(args): no path in \(r.stderr)")
            }
            #expect(kill(task.pid, 0) == 0)
            #expect(try lmctfy("destroy", "-f", name).status == 0)
        }
    }

    // MARK: 9. Delegation

    @Test func theOwnerOfADelegatedContainerMakesUsesAndDestroysSubcontainers() throws {
        try withTestName("deleg") { name in
            let r = try lmctfy("create", name, Self.spec + " owner:65534 owner_group:65534")
            #expect(r.status == 0, "\(r.stderr)")
            // Its own limits are root's: refused, nothing changed, and no
            // "restoring the previous spec failed too" (the CLI probe).
            let own = try asNobody(["update", "diff", name, "memory:{limit:209715200}"])
            #expect(own.status == 7 && !own.stderr.contains("restoring"), "\(own)")
            #expect(try lmctfy("spec", name).stdout.contains("limit: 104857600"))
            let sub = name + "/sub"
            let create = try asNobody(["create", sub, "cpu:{limit:250} memory:{limit:52428800}"])
            #expect(create.status == 0, "\(create.stderr)")
            let spec = try asNobody(["spec", sub])
            // (v2 weights round cpu limits: 250 reads back near it.)
            #expect(spec.stdout.contains("limit: 52428800") && spec.stdout.contains(Self.v1 ? "limit: 250" : "cpu"), "\(spec.stdout)")
            #expect(try asNobody(["update", "diff", sub, "memory:{limit:41943040}"]).status == 0)
            let run = try asNobody(["run", sub, "/bin/true"])
            if Self.v1 {
                #expect(run.status == 0, "\(run.stderr)")
            } else {
                // cgroup v2 lets a delegatee move a process only from inside
                // the delegated subtree (write access to the common
                // ancestor's cgroup.procs): from the root cgroup it is 7.
                #expect(run.status == 7 && run.stderr.contains("cgroup.procs"), "\(run)")
            }
            if Self.v1 {
                // A task of the owner's, entered by the owner.
                let sleeper = try Self.spawnAsNobody(["/bin/sleep", "300"])
                defer { TestProcess.end(sleeper) }
                usleep(100_000)
                let enter = try asNobody(["enter", sub, String(sleeper)])
                #expect(enter.status == 0, "\(enter.stderr)")
                #expect(try lmctfy("list", "pids", sub).stdout.contains("\"\(sleeper)\""))
            }
            if Self.v1 {
                // root's process in the owner's container: the owner may not kill it.
                #expect(try asNobody(["create", sub + "/root", ""]).status == 0)
                let rootTask = try SleepingTask(into: sub + "/root")
                defer { rootTask.end() }
                let killall = try asNobody(["killall", sub + "/root"])
                #expect(killall.status == 7 && killall.stderr.contains("\(rootTask.pid)"), "\(killall)")
                #expect(kill(rootTask.pid, 0) == 0)
                #expect(try lmctfy("killall", sub + "/root").status == 0)
            }
            let destroy = try asNobody(["destroy", "-f", sub])
            #expect(destroy.status == 0, "\(destroy.stderr)")
            #expect(try lmctfy("destroy", "-f", name).status == 0)
        }
    }
}
