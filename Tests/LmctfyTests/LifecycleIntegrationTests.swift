// Container lifecycle on the real kernel (cgroup v1 on the host, v2 in the
// qemu guest): directories, nesting, rollback, hostile names, killing.
// Needs root; skipped with the reason otherwise.
import Glibc
import Lmctfy
import LmctfyProto
import LmctfySystem
import LmctfyTestSupport
import Testing

@Suite(.enabled(if: RealCgroups.available, "\(RealCgroups.unavailableReason ?? "")"))
struct LifecycleIntegrationTests {
    let api: ContainerApi

    init() throws {
        api = try ContainerApi.detect()
    }

    /// Every directory (in any hierarchy) named after the container.
    func directories(of name: ContainerName) -> [String] {
        var roots = Set(api.mounts.v1.values)
        if api.version == .v2, let u = api.mounts.unified { roots.insert(u) }
        var found: [String] = []
        for root in roots.sorted() {
            for prefix in ["", "/batch"] where Sys.isDirectory(root + prefix + name.path) {
                found.append(root + prefix + name.path)
            }
        }
        return found
    }

    /// A throttle of a device that does not exist (9:9): the kernel refuses
    /// its write (ENODEV) after every directory of the create was made.
    static func unknownDeviceThrottle() throws -> ContainerSpec {
        try ContainerSpec(textFormat: "blockio { max_device_limit_set { max_limits { op_type: READ "
                          + "limit_type: BYTES_PER_SECOND limits { device { major: 9 minor: 9 } limit: 100 } } } }")
    }

    /// A child made inside a frozen container is frozen from the start
    /// (what the agent's snapshot of it then records, read from the kernel).
    @Test func aChildOfAFrozenContainerIsFrozenFromTheStart() throws {
        try withTestContainer(api, label: "rb") { name in
            let c = try api.create(name, spec: ContainerSpec(memory: MemorySpec(limit: 100_000_001)))
            #expect(try c.spec().memory?.limit != 100_000_001, "the kernel's page-rounded limit, not the request")
            try c.setFrozen(true)
            defer { _ = try? c.setFrozen(false) }
            let child = try ContainerName.resolve("kid", relativeTo: name)
            let k = try api.create(child, spec: ContainerSpec(memory: MemorySpec(limit: 50_000_000)))
            #expect(try k.isFrozen() == true)
        }
    }

    @Test func createSpecDestroy() throws {
        try withTestContainer(api) { name in
            try api.create(name, spec: ContainerSpec(pids: PidsSpec(limit: 64)))
            #expect(try api.exists(name))
            let c = try api.get(name)
            #expect(try c.isolatedResources == [.pids])
            #expect(try c.spec() == ContainerSpec(pids: PidsSpec(limit: 64)))
            let dirs = try api.resourceDirs(name)
            #expect(try dirs.dir(.pids)!.read("pids.max").trimmingWhitespace == "64")

            try c.update(ContainerSpec(pids: PidsSpec(limit: 100)), policy: .diff)
            #expect(try c.spec().pids?.limit == 100)
            try c.update(ContainerSpec(pids: PidsSpec()), policy: .replace)  // D3: back to the default
            #expect(try c.spec().pids?.limit == -1)
            #expect(try dirs.dir(.pids)!.read("pids.max").trimmingWhitespace == "max")

            // Only isolated resources may be named; REPLACE must name them all.
            #expect { try c.update(ContainerSpec(memory: MemorySpec(limit: 1 << 30)), policy: .diff) }
                throws: { ($0 as? LmctfyError)?.code == .invalidArgument }
            #expect { try c.update(ContainerSpec(), policy: .replace) }
                throws: { ($0 as? LmctfyError)?.code == .invalidArgument }

            let stats = try c.stats(.full)
            #expect(stats.pids?.current == 0)
            #expect(stats.pids?.limit == -1)

            try api.destroy(name)
            #expect(try !api.exists(name))
            #expect(directories(of: name).isEmpty)
        }
    }

    /// A directory of the name that lmctfy did not make, in a hierarchy
    /// only the spec's resources use (v1's memory; v2 has one): the dry
    /// run (`checkCreate`, the agent's CheckAdmission) refuses it as the
    /// create does, and neither touches it. The dry run said "admitted"
    /// and the create then failed with 6 (a probe). A spec that does not
    /// use that hierarchy is not refused by it.
    @Test func aForeignDirectoryInOneHierarchyIsRefusedByTheDryRunToo() throws {
        try withTestContainer(api, label: "fd") { name in
            let root = try #require(api.version == .v2 ? api.mounts.unified : api.mounts.v1[.memory], "no memory hierarchy")
            let foreign = root + name.path
            try Sys.mkdir(foreign)
            defer { rmdir(foreign) }
            let memory = ContainerSpec(memory: MemorySpec(limit: 100_000_000))
            let dry = lmctfyError { try api.checkCreate(name, spec: memory) }
            #expect(dry?.code == .alreadyExists, "\(String(describing: dry))")
            #expect(dry?.message.contains(foreign) == true, "\(String(describing: dry))")
            #expect(lmctfyError { try api.create(name, spec: memory) }?.code == .alreadyExists)
            #expect(Sys.isDirectory(foreign), "the foreign directory was removed")
            if api.version == .v1 {
                try api.checkCreate(name, spec: ContainerSpec(pids: PidsSpec(limit: 10)))
            }
        }
    }

    /// A destroy around another program's cgroup is refused, naming it,
    /// and nothing is removed; its name (a terminal escape, a quote) is
    /// escaped in the message, never written to a terminal raw (a probe).
    @Test func aDestroyAroundAForeignCgroupNamesItEscaped() throws {
        try withTestContainer(api, label: "fesc") { name in
            try api.create(name, spec: ContainerSpec(memory: MemorySpec(limit: 100_000_000)))
            let tasks = try #require(try api.resourceDirs(name).tasks)
            let memory = try #require(try api.resourceDirs(name).dir(.memory))
            for parent in Set([tasks.path, memory.path]).sorted() {
                let foreign = parent + "/x\u{1b}[2J\"q"
                try Sys.mkdir(foreign)
                defer { rmdir(foreign) }
                let refused = lmctfyError { try api.destroy(name) }
                #expect(refused?.code == .failedPrecondition, "\(String(describing: refused))")
                let message = refused?.message ?? ""
                #expect(message.contains(parent + "/x\\u{1b}[2J\\\"q was not made by lmctfy"), "\(message)")
                #expect(!message.unicodeScalars.contains { $0.value < 0x20 }, "\(message)")
                #expect(try api.exists(name))
            }
            try api.destroy(name)
        }
    }

    /// `lmctfy run` racing another lmctfy's `destroy -f` of its container
    /// says the container does not exist (5), never the openat2 text of a
    /// cgroup file the destroy took away (a probe; 11 of 150 such races
    /// here before the fix). A race: a run that wins it is fine too.
    @Test func aRunRacingADestroySaysTheContainerDoesNotExist() throws {
        try withTestContainer(api, label: "racerun") { name in
            let lmctfy = builtTool("lmctfy")
            var raw: [String] = []
            for _ in 0..<100 {
                _ = try TestProcess.capture([lmctfy, "create", name.path, "cpu:{limit:100}"])
                let destroyed = Mutexed(false)
                Threads.detach {
                    _ = try? TestProcess.capture([lmctfy, "destroy", "-f", name.path])
                    destroyed.locked { $0 = true }
                }
                let r = try TestProcess.capture([lmctfy, "run", "-n", name.path, "/bin/true"])
                let err = String(decoding: r.stderr, as: UTF8.self)
                if r.status != 0 && !err.contains("does not exist") { raw.append("\(r.status): \(err)") }
                for _ in 0..<1000 where !destroyed.locked({ $0 }) { usleep(5_000) }
            }
            #expect(raw.isEmpty, "\(raw.count) runs: \(raw.prefix(3))")
        }
    }

    @Test func duplicatesMissingParentsAndTheRoot() throws {
        try withTestContainer(api) { name in
            try api.create(name, spec: ContainerSpec())
            #expect { try api.create(name, spec: ContainerSpec()) } throws: { ($0 as? LmctfyError)?.code == .alreadyExists }
            let orphan = try ContainerName.resolve(name.path + "/missing/child", relativeTo: .root)
            #expect { try api.create(orphan, spec: ContainerSpec()) } throws: { ($0 as? LmctfyError)?.code == .failedPrecondition }
            #expect { try api.destroy(.root) } throws: { ($0 as? LmctfyError)?.code == .failedPrecondition }
            #expect { try api.create(.root, spec: ContainerSpec()) } throws: { ($0 as? LmctfyError)?.code == .alreadyExists }
            #expect { _ = try api.get(orphan) } throws: { ($0 as? LmctfyError)?.code == .notFound }
            // A child cannot isolate what its parent does not (the sentence
            // used to stop at "cannot").
            let child = try ContainerName.resolve("child", relativeTo: name)
            #expect { try api.create(child, spec: ContainerSpec(pids: PidsSpec(limit: 5))) } throws: { error in
                (error as? LmctfyError)?.message == "Container \"\(name)\" does not isolate pids, so \"\(child)\" cannot isolate it either"
            }
        }
    }

    @Test func nestedContainersListAndDestroyRecursively() throws {
        try withTestContainer(api) { name in
            try api.create(name, spec: ContainerSpec(pids: PidsSpec(limit: 50)))
            for child in ["b", "a", "a/x"] {
                let sub = try ContainerName.resolve(child, relativeTo: name)
                try api.create(sub, spec: ContainerSpec(pids: PidsSpec(limit: 10)))
            }
            let c = try api.get(name)
            #expect(try c.subcontainers(recursive: false).map(\.path) == [name.path + "/a", name.path + "/b"])
            #expect(try c.subcontainers(recursive: true).map(\.path) == [name.path + "/a", name.path + "/a/x", name.path + "/b"])
            // The kernel nests them: the pids cgroup of /a/x is inside /a's.
            #expect(Sys.isDirectory(api.mounts.v1[.pids].map { $0 + name.path + "/a/x" } ?? api.mounts.unified! + name.path + "/a/x"))
            try api.destroy(name)
            #expect(directories(of: name).isEmpty)
        }
    }

    /// A deep tree (each level isolating cpu and memory, the top in /batch
    /// on v1) is made, read, listed and destroyed: each lookup of a nested
    /// container's cpu directory once asked every ancestor's, and a
    /// destroy of a 400-deep tree took 35 s (1,500 levels: over 20 min).
    @Test func aDeepTreeIsMadeListedAndDestroyed() throws {
        try MachineBatch.made(api) { try withTestContainer(api, label: "deep") { name in
            let depth = 120
            var spec = ContainerSpec(cpu: CpuSpec(schedulingLatency: .normal, limit: 100), memory: MemorySpec(limit: 64 << 20))
            try api.create(name, spec: spec)
            spec.cpu?.schedulingLatency = nil
            var deepest = name
            for _ in 1..<depth {
                deepest = try ContainerName.resolve("d", relativeTo: deepest)
                try api.create(deepest, spec: spec)
            }
            #expect(try api.get(deepest).isolatedResources.isSuperset(of: [.cpu, .memory]))
            if api.version == .v1 {
                let cpu = try #require(try api.resourceDirs(deepest).dir(.cpu))
                #expect(cpu.segments.first == "batch" && cpu.segments.count == depth + 1, "\(cpu.path)")
            }
            #expect(try api.get(deepest).spec().memory?.limit == 64 << 20)
            #expect(try api.get(name).subcontainers(recursive: true).count == depth - 1)
            try api.destroy(name)
            #expect(directories(of: name).isEmpty)
        } }
    }

    @Test(arguments: ["../../\(RealCgroups.prefix)escape", "/a b", "/a<b", "", "/_x", "/.x", "/-x",
                      "/" + String(repeating: "n", count: 300)])
    func hostileNamesAreRefusedAndCreateNothing(_ raw: String) throws {
        let freezerRoot = api.version == .v1 ? api.mounts.v1[.freezer]! : api.mounts.unified!
        // Other tests create lmctfy_test_ containers in parallel; look at the rest.
        func others() throws -> [String] { try Sys.subdirectories(freezerRoot).filter { !$0.hasPrefix(RealCgroups.prefix) } }
        let before = try others()
        if raw.hasPrefix("../") {
            // From the root, ".." cannot leave the mount: it names a top-level container.
            let resolved = try ContainerName.resolve(raw, relativeTo: .root)
            #expect(resolved.path == "/\(RealCgroups.prefix)escape")
            return
        }
        #expect { try api.create(raw, spec: ContainerSpec()) } throws: { ($0 as? LmctfyError)?.code == .invalidArgument }
        #expect(try others() == before)
    }

    @Test func failedCreateLeavesNothingAndTheNameStaysUsable() throws {
        try withTestContainer(api) { name in
            // The kernel refuses a throttle of a device that does not exist
            // (9:9; ENODEV): the write fails after every directory was made.
            // (A CPU the machine does not have is refused before, now.)
            let throttle = try Self.unknownDeviceThrottle()
            #expect { try api.create(name, spec: throttle) }
                throws: { ($0 as? LmctfyError)?.message.contains("No such device") == true }
            #expect(try !api.exists(name))
            #expect(directories(of: name).isEmpty)
            try api.create(name, spec: ContainerSpec(pids: PidsSpec(limit: 5)))
            #expect(try api.exists(name))
        }
    }

    /// A container whose subcontainers all went (destroyed, or a create
    /// that failed and was undone) takes processes again: on v2 the
    /// controllers they had enabled in its cgroup.subtree_control are
    /// turned off with the last one (they stayed, and a run in it was
    /// refused: the kernel allows no process in a cgroup that enables
    /// controllers for children).
    @Test func aContainerWhoseSubcontainersWentTakesProcessesAgain() throws {
        try withTestContainer(api, label: "parent") { name in
            let c = try api.create(name, spec: ContainerSpec(cpu: CpuSpec(limit: 500), memory: MemorySpec(limit: 100_000_000),
                                                             pids: PidsSpec(limit: 20)))
            func subtreeControl() throws -> String {
                try Sys.readFile(api.mounts.unified! + name.path + "/cgroup.subtree_control").trimmingWhitespace
            }
            let kid = try ContainerName.resolve("kid", relativeTo: name)
            try api.create(kid, spec: ContainerSpec(memory: MemorySpec(limit: 50_000_000), pids: PidsSpec(limit: 10)))
            if api.version == .v2 { #expect(try subtreeControl() != "", "the create enabled nothing for its child") }
            try api.destroy(kid)
            if api.version == .v2 { #expect(try subtreeControl() == "") }
            // A create that fails after its directory was made (the kernel
            // refuses a throttle of device 9:9) is undone, parent included.
            let throttle = try Self.unknownDeviceThrottle()
            #expect(throws: LmctfyError.self) { try api.create(kid, spec: throttle) }
            if api.version == .v2 { #expect(try subtreeControl() == "") }
            let pid = try c.run(["/bin/sleep", "300"])
            #expect(try c.processes(recursive: false).contains(pid))
        }
    }

    /// lmctfy run from inside a container does not pause or empty that
    /// container (or an ancestor): its freeze stopped lmctfy itself, for
    /// good, and left the container frozen (a probe: `destroy -f` from a
    /// shell inside). Refused with 9 before anything is frozen.
    @Test func pauseAndKillFromInsideAreRefused() throws {
        try withTestContainer(api, label: "inside") { name in
            let c = try api.create(name, spec: ContainerSpec(memory: MemorySpec(limit: 100_000_000)))
            let procs = (api.version == .v1 ? api.mounts.v1[.freezer]! : api.mounts.unified!) + name.path + "/cgroup.procs"
            for verb in [["pause", name.description], ["killall", name.description], ["destroy", "-f", name.description]] {
                // The shell joins the container, then becomes lmctfy.
                let script = "echo $$ > \(procs) && exec \(builtTool("lmctfy")) \(verb.joined(separator: " "))"
                let r = try TestProcess.capture(["/bin/sh", "-c", script])
                let err = String(decoding: r.stderr, as: UTF8.self)
                #expect(r.status == 9 && err.contains("from inside it"), "\(verb): \(r.status) \(err)")
                #expect(try c.isFrozen() == false, "\(verb) left it frozen")
            }
            #expect(try api.exists(name))
        }
    }

    /// `destroy -f` and `killall -r` of a tree from inside it (here from a
    /// subcontainer) are refused before anything is touched: the refusal
    /// came at the caller's own container, after every subcontainer
    /// emptied before it (a sibling destroyed, its processes killed; a
    /// probe).
    @Test func aTreeIsNotDestroyedOrEmptiedFromInsideIt() throws {
        try withTestContainer(api, label: "insidetree") { name in
            let c = try api.create(name, spec: ContainerSpec(memory: MemorySpec(limit: 100_000_000)))
            let inner = try ContainerName.resolve(name.path + "/a_in", relativeTo: .root)
            let sibling = try ContainerName.resolve(name.path + "/b_sib", relativeTo: .root)
            _ = try api.create(inner, spec: ContainerSpec(memory: MemorySpec(limit: 50_000_000)))
            let sib = try api.create(sibling, spec: ContainerSpec(memory: MemorySpec(limit: 50_000_000)))
            let pid = try sib.run(["/bin/sleep", "300"])
            defer { kill(pid, SIGKILL) }
            let procs = (api.version == .v1 ? api.mounts.v1[.freezer]! : api.mounts.unified!) + inner.path + "/cgroup.procs"
            for verb in [["killall", "-r", name.description], ["destroy", "-f", name.description]] {
                let script = "echo $$ > \(procs) && exec \(builtTool("lmctfy")) \(verb.joined(separator: " "))"
                let r = try TestProcess.capture(["/bin/sh", "-c", script])
                let err = String(decoding: r.stderr, as: UTF8.self)
                #expect(r.status == 9 && err.contains("from inside it"), "\(verb): \(r.status) \(err)")
                #expect(try api.exists(sibling) && sib.processes(recursive: false).contains(pid), "\(verb) touched the sibling")
                #expect(try c.isFrozen() == false, "\(verb) left it frozen")
            }
        }
    }

    @Test func unimplementedSectionsAreRefusedWithTwelve() throws {
        try withTestContainer(api) { name throws in
            #expect { try api.create(name, spec: ContainerSpec(network: NetworkSpec())) }
                throws: { ($0 as? LmctfyError)?.code == .unimplemented }
            #expect(try !api.exists(name))
        }
    }

    @Test func detectKillAllAndDestroyWithProcesses() throws {
        try withTestContainer(api) { name in
            try api.create(name, spec: ContainerSpec(pids: PidsSpec(limit: 20)))
            let c = try api.get(name)
            let pid = try TestProcess.spawn(["/bin/sleep", "300"])
            defer { TestProcess.end(pid) }
            try TestProcess.move(pid, into: try api.resourceDirs(name).allDirs)
            #expect(try api.detect(pid: pid) == name)
            #expect(try c.processes(recursive: false) == [pid])
            #expect(try c.threads(recursive: true) == [pid])

            try c.killAll()
            #expect(try c.processes(recursive: false).isEmpty)
            #expect(try Sys.waitForExit(pid) == .signaled(SIGKILL))
        }
    }

    @Test func killAllWorksOnAPausedContainer() throws {
        try withTestContainer(api) { name in
            try api.create(name, spec: ContainerSpec())
            let c = try api.get(name)
            let pids = try (0..<3).map { _ in try TestProcess.spawn(["/bin/sleep", "300"]) }
            defer { for p in pids { TestProcess.end(p) } }
            for p in pids { try TestProcess.move(p, into: try api.resourceDirs(name).allDirs) }
            try c.setFrozen(true)
            #expect(try c.isFrozen())
            try c.killAll()
            #expect(try c.processes(recursive: false).isEmpty)
            #expect(try !c.isFrozen())
        }
    }

    /// A task the freezer cannot stop (v1: waiting at its memory limit with
    /// the OOM killer off sleeps killable, not freezable) keeps the freeze
    /// from completing: killAll kills it all the same once the freeze's
    /// bound passes, and leaves the container thawed, not FREEZING.
    @Test(.enabled(if: (try? CgroupMounts.detect())?.version == .v1, "v1's memory.oom_control (v2 has no OOM-killer switch)"))
    func killAllEndsATaskTheFreezerCannotStop() throws {
        try withTestContainer(api) { name in
            try api.create(name, spec: ContainerSpec(memory: MemorySpec(limit: 16 << 20)))
            let c = try api.get(name)
            let memory = try #require(try CgroupMounts.detect().v1[.memory]) + name.description
            try Sys.writeFile(memory + "/memory.oom_control", "1")
            let pid = try c.run([testHelperPath, "alloc", "64"])
            // Stuck at the limit (under_oom), not dead.
            var stuck = false
            for _ in 0..<5000 where !stuck {
                stuck = (try? Sys.readFile(memory + "/memory.oom_control"))?.contains("under_oom 1") == true
                if !stuck { usleep(1000) }
            }
            #expect(stuck, "the allocator waits at its limit")
            try c.killAll()
            #expect(try c.processes(recursive: false).isEmpty)
            #expect(try !c.isFrozen())
            let freezer = try #require(try CgroupMounts.detect().v1[.freezer]) + name.description
            #expect(try Sys.readFile(freezer + "/freezer.state").trimmingWhitespace == "THAWED")
            _ = try? Sys.waitForExit(pid)
        }
    }

    @Test func destroyKillsTheProcessesOfEveryLevel() throws {
        try withTestContainer(api) { name in
            try api.create(name, spec: ContainerSpec())
            let sub = try ContainerName.resolve("inner", relativeTo: name)
            try api.create(sub, spec: ContainerSpec())
            let outer = try TestProcess.spawn(["/bin/sleep", "300"])
            let inner = try TestProcess.spawn(["/bin/sleep", "300"])
            defer { TestProcess.end(outer); TestProcess.end(inner) }
            try TestProcess.move(outer, into: try api.resourceDirs(name).allDirs)
            try TestProcess.move(inner, into: try api.resourceDirs(sub).allDirs)
            try api.destroy(name)
            #expect(try !api.exists(name))
            _ = try Sys.waitForExit(inner)
            _ = try Sys.waitForExit(outer)
        }
    }

    @Test func ownerAndGroupAreDelegated() throws {
        try withTestContainer(api) { name in
            try api.create(name, spec: ContainerSpec(owner: 65534, ownerGroup: 65533, pids: PidsSpec(limit: 7)))
            let dirs = try api.resourceDirs(name).allDirs
            #expect(!dirs.isEmpty)
            for d in dirs {
                var st = stat()
                #expect(stat(d.path, &st) == 0)
                #expect(st.st_uid == 65534 && st.st_gid == 65533, "\(d.path) is \(st.st_uid):\(st.st_gid)")
                var procs = stat()
                #expect(stat(d.file("cgroup.procs"), &procs) == 0)
                #expect(procs.st_uid == 65534)
            }
            // The spec says so (it left them out: a snapshot, a migration,
            // `lmctfy spec | lmctfy create` lost them), and giving it back
            // to an update is fine; another owner is not.
            let spec = try api.get(name).spec()
            #expect(spec.owner == 65534 && spec.ownerGroup == 65533, "\(spec)")
            try api.get(name).update(spec, policy: .replace)
            #expect { try api.get(name).update(ContainerSpec(owner: 1), policy: .diff) } throws: {
                ($0 as? LmctfyError)?.code == .invalidArgument
            }
        }
    }

    /// The root reports what its files hold (it has fewer than a
    /// container): on v1 it printed nothing at all, its directories being
    /// the hierarchies' roots, which lmctfy did not make.
    @Test func rootSpecAndStatsCanBeRead() throws {
        let root = try api.get(.root)
        let spec = try root.spec()
        let stats = try root.stats(.full)
        #expect(try !root.isolatedResources.isEmpty)
        #expect((stats.cpu?.usage?.total ?? 0) > 0, "\(stats)")
        if api.version == .v1 {
            #expect(spec.cpu?.limit != nil && spec.memory?.limit != nil, "\(spec)")
            #expect((stats.memory?.usage ?? 0) > 0, "\(stats)")
        }
    }
}
