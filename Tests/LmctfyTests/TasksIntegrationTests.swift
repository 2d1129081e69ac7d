// run / exec / enter on the real kernel: the spawn shim joins the cgroups
// before exec, detached runs have /dev/null stdio and no leaked descriptors,
// failures before exec are errors, enter moves exactly the given tasks.
import Glibc
@testable import Lmctfy
import LmctfyProto
import LmctfySystem
import LmctfyTestSupport
import Testing

@Suite(.enabled(if: RealCgroups.available, "\(RealCgroups.unavailableReason ?? "")"))
struct TasksIntegrationTests {
    let api: ContainerApi

    init() throws {
        api = try ContainerApi.detect()
    }

    func readLink(_ path: String) -> String? {
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink(path, &buf, buf.count - 1)
        guard n >= 0 else { return nil }
        return String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// A file without a "#!" line runs under /bin/sh whether it is named
    /// by a path or found through PATH, as execvp(3) does (D16): by its
    /// path it failed with "Exec format error" (9) where PATH ran it.
    @Test func aScriptWithoutAShebangRunsByPathAndThroughPath() throws {
        try withTestContainer(api, label: "nosb") { name in
            try api.create(name, spec: ContainerSpec(pids: PidsSpec(limit: 10)))
            let dir = "/tmp/lmctfy_test_nosb_\(getpid())"
            try Sys.mkdir(dir)
            defer { _ = removeTree(dir) }
            try Sys.createFile(dir + "/nosb", "echo ran-$1\n")
            #expect(chmod(dir + "/nosb", 0o755) == 0)
            let lmctfy = builtTool("lmctfy")
            let byPath = try TestProcess.capture([lmctfy, "run", name.path, dir + "/nosb", "path"])
            #expect(byPath.status == 0 && String(decoding: byPath.stdout, as: UTF8.self) == "ran-path\n", "\(byPath)")
            let found = try TestProcess.capture(["/usr/bin/env", "PATH=\(dir):/usr/bin:/bin", lmctfy, "run", name.path, "nosb", "found"])
            #expect(found.status == 0 && String(decoding: found.stdout, as: UTF8.self) == "ran-found\n", "\(found)")
        }
    }

    @Test func detachedRunIsInTheContainerWithDevNullStdioAndNoOtherFds() throws {
        try withTestContainer(api) { name in
            try api.create(name, spec: ContainerSpec(pids: PidsSpec(limit: 10)))
            let c = try api.get(name)
            // An fd of ours that must not leak.
            let leak = open("/etc/hostname", O_RDONLY)
            defer { close(leak) }
            // Not our child: the container's teardown (killall) ends it, never
            // a kill by pid that may have been reused.
            let pid = try c.run(["sleep", "300"])  // PATH lookup (D16)
            #expect(try c.processes(recursive: false) == [pid])
            #expect(try api.detect(pid: pid) == name)
            // run() returns once exec has begun (the CLOEXEC pipe closed); the
            // kernel may still be closing the other CLOEXEC descriptors, so let
            // it settle. A leaked descriptor never goes away.
            var fds = try Sys.subdirectoriesAndFiles("/proc/\(pid)/fd")
            for _ in 0..<1000 where fds.count > 3 {
                usleep(1000)
                fds = try Sys.subdirectoriesAndFiles("/proc/\(pid)/fd")
            }
            #expect(fds.sorted() == ["0", "1", "2"], "fds: \(fds.map { "\($0) -> \(readLink("/proc/\(pid)/fd/\($0)") ?? "?")" })")
            for fd in 0...2 { #expect(readLink("/proc/\(pid)/fd/\(fd)") == "/dev/null") }
            // A new session, and not our child: nothing for us to reap.
            #expect(getsid(pid) == pid)
            #expect(throws: SystemError("waitpid", "pid \(pid)", ECHILD)) { try Sys.exitStatusIfExited(pid) }
            // In the pids cgroup too, from the first instruction.
            #expect(try api.resourceDirs(name).dir(.pids)!.readPids("cgroup.procs") == [pid])
        }
    }

    /// The CLI's foreground `run` replaces lmctfy with the command and hands
    /// it every descriptor lmctfy was given, as an exec does (reference §5
    /// Exec; they were all closed): `run c cmd 7<file` gives cmd its fd 7.
    /// Nothing lmctfy itself opened (cgroup files, its lock) goes along.
    /// /dev/null is opened before the child joins the container: one whose
    /// device rules leave c 1:3 out refused the open after the join, and
    /// every detached run there failed (7, "setting up stdio").
    @Test(.enabled(if: (try? CgroupMounts.detect())?.version == .v1, "device rules are v1's devices cgroup (refused on v2)"))
    func aDetachedRunWorksWhereTheDeviceRulesLeaveOutDevNull() throws {
        try withTestContainer(api) { name in
            let zero = DeviceSpec.DeviceRestrictions(permission: .allow, type: .deviceChar, access: [.read], major: 1, minor: 5)
            try api.create(name, spec: ContainerSpec(device: DeviceSpec(restrictionsSet: DeviceSpec.DeviceRestrictionsSet(restrictions: [zero]))))
            let c = try api.get(name)
            let pid = try c.run(["sleep", "300"])
            #expect(try c.processes(recursive: false) == [pid])
            #expect(try c.spec().device?.restrictionsSet?.restrictions == [zero], "the rules changed")
        }
    }

    @Test func foregroundRunPassesTheCallersDescriptorsOn() throws {
        try withTestContainer(api) { name in
            try api.create(name, spec: ContainerSpec())
            let given = "/tmp/lmctfy-fd-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
            try Sys.createFile(given, "")
            defer { _ = try? Sys.unlink(given) }
            let script = "exec 7<\(given); exec \(builtTool("lmctfy")) run \(name) /bin/sh -c "
                + "'for f in /proc/$$/fd/*; do echo \"${f##*/} $(readlink $f)\"; done'"
            let r = try TestProcess.capture(["/bin/sh", "-c", script])
            let out = String(decoding: r.stdout, as: UTF8.self)
            #expect(r.status == 0, "\(r) \(String(decoding: r.stderr, as: UTF8.self))")
            #expect(out.split(separator: "\n").contains("7 \(given)"), "\(out)")
            for line in out.split(separator: "\n") {
                #expect(!line.contains("/sys/fs/cgroup") && !line.contains("/run/lmctfy"), "lmctfy's own descriptor leaked: \(line)")
            }
        }
    }

    /// A started command counts against the pids limits of its container
    /// and of every pids-isolating ancestor, as a fork inside would: the
    /// kernel lets a task that joins in over pids.max (`run -n` five times
    /// into a container of limit 1 ran five), so the spawned child checks
    /// once it has joined and fails RESOURCE_EXHAUSTED, leaving nothing.
    @Test func runsCountAgainstThePidsLimitsAbove() throws {
        try withTestContainer(api) { name in
            // Processes in the leaves only (cgroup v2 keeps them out of a
            // container with subcontainers that isolate resources).
            try api.create(name, spec: ContainerSpec(pids: PidsSpec(limit: 2)))
            let c = try api.get(name)
            let a = try ContainerName.resolve("a", relativeTo: name)
            let sub = try ContainerName.resolve("sub", relativeTo: name)
            try api.create(a, spec: ContainerSpec(pids: PidsSpec(limit: 10)))
            try api.create(sub, spec: ContainerSpec(pids: PidsSpec(limit: 10)))
            let first = try api.get(a).run(["sleep", "300"])
            let second = try api.get(sub).run(["sleep", "300"])
            let pidsDir = try api.resourceDirs(name).dir(.pids)!.path
            for target in [a, sub] {
                #expect { _ = try api.get(target).run(["sleep", "300"]) } throws: { error in
                    let e = error as? LmctfyError
                    return e?.code == .resourceExhausted && e?.message.contains("the pids limit of \(pidsDir) is reached") == true
                }
            }
            #expect(try c.processes(recursive: true) == [first, second].sorted())
            #expect(try api.resourceDirs(name).dir(.pids)!.read("pids.current").trimmingWhitespace == "2")
            // Room again once one is gone (and reaped: the kernel counts a
            // task until its parent, here init, has waited for it).
            try api.get(sub).killAll()
            let pidsDir2 = try api.resourceDirs(name).dir(.pids)!
            for _ in 0..<5000 where try pidsDir2.read("pids.current").trimmingWhitespace != "1" { usleep(1000) }
            let third = try api.get(sub).run(["sleep", "300"])
            #expect(try c.processes(recursive: true) == [first, third].sorted())
        }
    }

    /// `enter` refuses to take a container, or one above it, over its pids
    /// limit, before any task moves (the kernel lets a task join over the
    /// limit: five tasks entered a container limited to one; a probe).
    /// A task already counted there adds nothing.
    @Test func entersCountAgainstThePidsLimitsAbove() throws {
        try withTestContainer(api) { name in
            try api.create(name, spec: ContainerSpec(pids: PidsSpec(limit: 3)))
            let a = try ContainerName.resolve("a", relativeTo: name)
            let b = try ContainerName.resolve("b", relativeTo: name)
            try api.create(a, spec: ContainerSpec(pids: PidsSpec(limit: 2)))
            try api.create(b, spec: ContainerSpec(pids: PidsSpec(limit: 10)))
            let tasks = try (0..<4).map { _ in try TestProcess.spawn(["/bin/sleep", "300"]) }
            defer { for t in tasks { TestProcess.end(t) } }
            let (ca, cb) = (try api.get(a), try api.get(b))
            try ca.enter([tasks[0]])
            // Two more into a's limit of 2: refused, neither moved.
            let over = lmctfyError { try ca.enter([tasks[1], tasks[2]]) }
            #expect(over?.code == .resourceExhausted && over?.message.contains("over its pids limit") == true, "\(String(describing: over))")
            #expect(try ca.processes(recursive: false) == [tasks[0]])
            try ca.enter([tasks[1]])
            // Entered again: counted there already.
            try ca.enter([tasks[0], tasks[1]])
            // b's own limit is 10, but the parent's 3 holds 2: one more only.
            try cb.enter([tasks[2]])
            let above = lmctfyError { try cb.enter([tasks[3]]) }
            let parentDir = try api.resourceDirs(name).dir(.pids)!.path
            #expect(above?.code == .resourceExhausted && above?.message.contains(parentDir) == true, "\(String(describing: above))")
            #expect(try api.get(name).processes(recursive: true) == Array(tasks[0...2]).sorted())
            // Moving within the parent adds nothing to it.
            try cb.enter([tasks[1]])
            #expect(try cb.processes(recursive: false) == [tasks[1], tasks[2]].sorted())
        }
    }

    @Test func commandNotFoundIsAnErrorNotExit127() throws {
        try withTestContainer(api) { name in
            try api.create(name, spec: ContainerSpec())
            let c = try api.get(name)
            #expect { _ = try c.run(["/no/such/binary"]) } throws: { error in
                let e = error as? LmctfyError
                return e?.code == .notFound && e?.message.contains("/no/such/binary") == true
            }
            #expect { _ = try c.run(["no-such-command-anywhere"]) } throws: { ($0 as? LmctfyError)?.code == .notFound }
            #expect { _ = try c.run([]) } throws: { ($0 as? LmctfyError)?.code == .invalidArgument }
            #expect(try c.processes(recursive: false).isEmpty)
        }
    }

    @Test func inheritedRunReportsTheCommandsExitStatus() throws {
        try withTestContainer(api) { name in
            try api.create(name, spec: ContainerSpec())
            var options = RunOptions(fdPolicy: .inherit)
            options.stdout = .devNull
            let pid = try api.get(name).run(["/bin/sh", "-c", "exit 7"], options: options)
            #expect(try Sys.waitForExit(pid) == .exited(7))
        }
    }

    @Test func enterMovesExactlyTheGivenTasks() throws {
        try withTestContainer(api) { name in
            try api.create(name, spec: ContainerSpec(pids: PidsSpec(limit: 10)))
            let c = try api.get(name)
            let a = try TestProcess.spawn(["/bin/sleep", "300"])
            let b = try TestProcess.spawn(["/bin/sleep", "300"])
            defer { TestProcess.end(a); TestProcess.end(b) }
            try c.enter([a])
            #expect(try c.processes(recursive: false) == [a])
            #expect(try api.detect(pid: b) != name)
            try c.enter([b])
            #expect(try c.processes(recursive: false) == [a, b].sorted())
            #expect { try c.enter([999_999_999]) } throws: { $0 is LmctfyError }
            // kthreadd (pid 2), which the kernel never moves: INVALID_ARGUMENT
            // saying so (it was UNAVAILABLE, as if a retry could help).
            let kernelThread = lmctfyError { try c.enter([2]) }
            #expect(kernelThread?.code == .invalidArgument && kernelThread?.message.contains("kernel thread") == true,
                    "\(String(describing: kernelThread))")
            #expect(try c.processes(recursive: false) == [a, b].sorted())
        }
    }

    /// D9: a process forking as fast as it can (bounded by the container's
    /// pids limit, so the host is safe) is still emptied by killall.
    @Test func killAllBeatsAForkLoop() throws {
        try withTestContainer(api) { name in
            try api.create(name, spec: ContainerSpec(pids: PidsSpec(limit: 200)))
            let c = try api.get(name)
            _ = try c.run([testHelperPath, "forkloop"])
            // Let it fill the container.
            for _ in 0..<2000 where (try c.processes(recursive: false).count) < 100 { usleep(1000) }
            #expect(try c.processes(recursive: false).count >= 100)
            try c.killAll()
            #expect(try c.processes(recursive: false).isEmpty)
            #expect(try c.threads(recursive: false).isEmpty)
        }
    }

    @Test func pauseIsHierarchicalAndResumeThaws() throws {
        try withTestContainer(api) { name in
            try api.create(name, spec: ContainerSpec())
            let sub = try ContainerName.resolve("leaf", relativeTo: name)
            try api.create(sub, spec: ContainerSpec())
            let pid = try api.get(sub).run(["sleep", "300"])
            let parent = try api.get(name)
            try parent.setFrozen(true)
            #expect(try parent.isFrozen())
            #expect(try api.get(sub).isFrozen())
            // The task itself is stopped by the freezer: the v1 freezer parks
            // it uninterruptibly (D); v2 traps it in a signal stop that reads
            // as S, so there the cgroup's own report above is the evidence.
            if api.version == .v1 {
                let state = try Sys.readFile("/proc/\(pid)/stat").split(separator: " ")[2]
                #expect(state == "D", "a frozen task sleeps uninterruptibly, not in state \(state)")
            }
            try parent.setFrozen(false)
            #expect(try !api.get(sub).isFrozen())
            #expect(try api.get(sub).processes(recursive: false) == [pid])
        }
    }

    /// A command started in a paused container (or one whose parent is
    /// paused) would freeze before its exec, holding its caller's
    /// descriptors: refused with the reason, nothing started; it runs once
    /// the container is resumed.
    @Test func runningInAPausedContainerIsRefused() throws {
        try withTestContainer(api) { name in
            try api.create(name, spec: ContainerSpec())
            let sub = try ContainerName.resolve("leaf", relativeTo: name)
            try api.create(sub, spec: ContainerSpec())
            let parent = try api.get(name)
            try parent.setFrozen(true)
            for target in [name, sub] {
                #expect { _ = try api.get(target).run(["sleep", "300"]) } throws: { error in
                    let e = error as? LmctfyError
                    return e?.code == .failedPrecondition && e?.message.contains("paused") == true
                }
                #expect(try api.get(target).processes(recursive: false).isEmpty)
            }
            try parent.setFrozen(false)
            let pid = try api.get(sub).run(["sleep", "300"])
            #expect(try api.get(sub).processes(recursive: false) == [pid])
        }
    }

    /// A kill killed part way (SIGKILL of `lmctfy killall` between its
    /// freeze and its thaw) left the container frozen, and it then looked
    /// paused: run refused, its processes held. The kill's record names the
    /// killer (pid and start time); once that process is gone, the next run
    /// thaws it. A killer still running, and a pause made afterwards (the
    /// user's), are left alone.
    /// Runs racing pauses and destroys of the same container: a pause
    /// between a run's "not paused" check and its process's exec froze the
    /// process before exec and the thread that vforked it with it; a destroy
    /// then left the container half removed and frozen for good, nothing
    /// could resume it, and every later call on it waited on its lock (a
    /// probe of the agent, which wedged within seconds). Under the tree's
    /// lock the check, the join and the exec are one step. A watchdog thaws
    /// a run stuck past 5 s (and fails the test) so that it cannot hang.
    /// (8 s; without the lock it caught the hang about one run in two.)
    @Test func runsRacingPausesAndDestroysNeverFreezeAStartingProcess() throws {
        try withTestContainer(api) { name in
            let spec = ContainerSpec(memory: MemorySpec(limit: 64 << 20))
            try api.create(name, spec: spec)
            let api = self.api
            let stop = Mutexed(false)
            let runStarted = Mutexed<UInt64?>(nil)
            let finished = Mutexed(0)
            Threads.detach {
                while !stop.locked({ $0 }) {
                    runStarted.locked { $0 = MonotonicClock.milliseconds() }
                    if let pid = try? api.get(name).run(["/bin/true"]) {
                        var status: Int32 = 0
                        _ = waitpid(pid, &status, 0)
                    }
                    runStarted.locked { $0 = nil }
                }
                finished.locked { $0 += 1 }
            }
            Threads.detach {
                while !stop.locked({ $0 }) {
                    _ = try? api.get(name).setFrozen(true)
                    _ = try? api.get(name).setFrozen(false)
                }
                finished.locked { $0 += 1 }
            }
            Threads.detach {
                while !stop.locked({ $0 }) {
                    _ = try? api.destroy(name)
                    _ = try? api.create(name, spec: spec)
                    usleep(2_000)  // room for the suite's other tests on cgroup_mutex
                }
                finished.locked { $0 += 1 }
            }
            let end = MonotonicClock.milliseconds() + 8_000
            var stuck = false
            while MonotonicClock.milliseconds() < end && !stuck {
                usleep(100_000)
                if let t = runStarted.locked({ $0 }), MonotonicClock.milliseconds() - t > 5_000 { stuck = true }
            }
            stop.locked { $0 = true }
            // Every loop ends; a stuck run is unwedged by thawing the
            // container directly (no lock), again while a pause in flight
            // may freeze it once more.
            let giveUp = MonotonicClock.milliseconds() + 30_000
            while finished.locked({ $0 }) < 3 && MonotonicClock.milliseconds() < giveUp {
                if stuck { try? api.driver.requestFrozen(name, false) }
                usleep(50_000)
            }
            #expect(finished.locked { $0 } == 3, "the loops did not end")
            #expect(!stuck, "a run stayed stuck past 5 s: its process froze before its exec")
            // Nothing is left frozen: the container ends thawed, or gone.
            if let c = try? api.get(name) { #expect(try !c.isFrozen()) }
        }
    }

    /// Enters racing destroys (and creates) of the same container: each
    /// enter lands before the destroy (which then kills the task) or finds
    /// the container gone, NOT_FOUND. A destroy between its existence check
    /// and its writes removed the directories under it: UNAVAILABLE
    /// ("openat2(.../tasks): No such file or directory", or ENODEV) with
    /// the task moved into some hierarchies only (a probe).
    @Test func entersRacingDestroysLandWholeOrFindNothing() throws {
        try withTestContainer(api) { name in
            let spec = ContainerSpec(memory: MemorySpec(limit: 64 << 20))
            try api.create(name, spec: spec)
            let api = self.api
            let stop = Mutexed(false)
            let finished = Latch(1)
            Threads.detach {
                while !stop.locked({ $0 }) {
                    _ = try? api.destroy(name)
                    _ = try? api.create(name, spec: spec)
                }
                finished.signal()
            }
            var codes: [StatusCode: Int] = [:]
            var failures: [String] = []
            let end = MonotonicClock.milliseconds() + 4_000
            while MonotonicClock.milliseconds() < end {
                let pid = try TestProcess.spawn(["/bin/sleep", "100"])
                defer { TestProcess.end(pid) }
                do throws(LmctfyError) {
                    try api.get(name).enter([pid])
                    codes[.ok, default: 0] += 1
                } catch {
                    codes[error.code, default: 0] += 1
                    if error.code != .notFound { failures.append("\(error.code): \(error.message)") }
                }
            }
            stop.locked { $0 = true }
            finished.wait()
            let unexpected = failures.count
            #expect(unexpected == 0, "\(codes); first: \(failures.first ?? "")")
            let (landed, gone) = (codes[.ok, default: 0], codes[.notFound, default: 0])
            #expect(landed > 0 && gone > 0, "both outcomes were seen: \(codes)")
        }
    }

    @Test func aFreezeLeftByAKilledKillIsUndoneByTheNextRun() throws {
        try withTestContainer(api) { name in
            try api.create(name, spec: ContainerSpec())
            let c = try api.get(name)
            let first = try c.run(["sleep", "300"])
            // What the killed kill leaves: frozen, its record naming a process
            // that is gone (our pid with another start time: a pid used again).
            let gone = "\(getpid()) 1"
            try c.setFrozen(true)
            try c.tasksDir.setRecord(.killing, gone)
            let second = try c.run(["sleep", "300"])
            #expect(try !c.isFrozen() && c.tasksDir.record(.killing) == "")
            #expect(Set(try c.processes(recursive: false)) == [first, second])
            let refused = { (error: any Error) -> Bool in
                let e = error as? LmctfyError
                return e?.code == .failedPrecondition && e?.message.contains("is paused") == true
            }
            // A kill still running holds its freeze.
            try c.setFrozen(true)
            try c.tasksDir.setRecord(.killing, Container.killerIdentity)
            #expect { _ = try c.run(["sleep", "300"]) } throws: { refused($0) }
            #expect(try c.isFrozen())
            // A pause after the kill died is the user's: it clears the record.
            try c.tasksDir.setRecord(.killing, gone)
            try c.setFrozen(true)
            #expect(try c.tasksDir.record(.killing) == "")
            #expect { _ = try c.run(["sleep", "300"]) } throws: { refused($0) }
            #expect(try c.isFrozen())
            // Nor may a task enter it: it froze there (the CLI's default, the
            // caller's shell, stopped in D until a resume from elsewhere).
            let outside = try TestProcess.spawn(["/bin/sleep", "300"])
            defer { TestProcess.end(outside) }
            #expect { try c.enter([outside]) } throws: { refused($0) }
            #expect(try !c.processes(recursive: false).contains(outside))
            #expect { try api.get(.root).setFrozen(false) } throws: {
                ($0 as? LmctfyError)?.message == "The root container \"/\" cannot be resumed"
            }
            try c.setFrozen(false)
            #expect(try c.processes(recursive: false).count == 2)
        }
    }

    /// A task that joined one of the container's directories after the
    /// destroy's kill (a run racing the destroy) made an rmdir fail with
    /// EBUSY: the destroy stopped at 9 with the container half removed and
    /// invisible. It is killed and the rmdir tried again. (The task is put
    /// in the child's memory directory alone, where the kill, which reads
    /// the tasks directory, does not look: what a joiner caught half way
    /// leaves. v1 only: on v2 the one directory is the tasks directory, and
    /// a parent with subcontainers cannot hold the process to move.)
    @Test(.enabled(if: (try? CgroupMounts.detect())?.version == .v1, "a task in one hierarchy's directory alone is v1's"))
    func aTaskThatJoinedAfterTheKillDoesNotStopTheDestroy() throws {
        try withTestContainer(api) { name in
            try api.create(name, spec: ContainerSpec(memory: MemorySpec(limit: 64 << 20)))
            let child = try ContainerName.resolve("late", relativeTo: name)
            try api.create(child, spec: ContainerSpec(memory: MemorySpec(limit: 32 << 20)))
            let pid = try api.get(name).run(["sleep", "300"])
            let memory = try #require(try api.resourceDirs(child).dir(.memory))
            try memory.write("cgroup.procs", "\(pid)")
            try api.destroy(child)
            #expect(try !api.exists(child))
            #expect(try Sys.linkStatus(memory.path) == nil, "its memory directory is still there")
        }
    }

    /// A paused container inside a tree does not stop `killall -r` or
    /// `destroy -f` of the tree: each paused one is resumed, outermost
    /// first, so that every kill can land (on v1 a frozen task cannot die,
    /// and a child cannot thaw under a frozen parent: this waited 5 s and
    /// failed UNAVAILABLE part way). Below a paused ancestor, resume,
    /// killall and destroy are refused with FAILED_PRECONDITION naming it,
    /// before anything is signalled or removed.
    @Test func pausedTreesAreEmptiedAndNothingIsTouchedBelowAPausedAncestor() throws {
        try withTestContainer(api) { name in
            let mid = try ContainerName.resolve("mid", relativeTo: name)
            let leaf = try ContainerName.resolve("leaf", relativeTo: mid)
            var pids: [ContainerName: pid_t] = [:]
            for n in [name, mid, leaf] {
                try api.create(n, spec: ContainerSpec())
                pids[n] = try api.get(n).run(["sleep", "300"])
            }
            func refused(_ what: String, _ body: () throws -> Void) {
                expectRefused(what, .failedPrecondition, containing: "ancestor \"\(name)\" is paused: resume \"\(name)\" first", body)
            }
            let backend = LocalBackend(api: api, callerPid: getpid())
            try api.get(name).setFrozen(true)
            refused("resume") { try api.get(mid).setFrozen(false) }
            refused("killall") { try api.get(leaf).killAll() }
            refused("killall -r") { try backend.killAll(mid.description, recursive: true) }
            refused("destroy") { try api.destroy(leaf) }
            // Nothing was signalled, removed or thawed. (Read again for up
            // to a second: the v2 guest once read one of the three not
            // frozen here, with nothing in the test thawing anything.)
            for n in [name, mid, leaf] {
                #expect(try api.exists(n))
                #expect(try api.get(n).processes(recursive: false) == [pids[n]!])
                var frozen = try api.get(n).isFrozen()
                for _ in 0..<100 where !frozen {
                    usleep(10_000)
                    frozen = try api.get(n).isFrozen()
                }
                let state = (try? api.driver.tasksDir(n).read(api.driver.version == .v2 ? "cgroup.events" : "freezer.state")) ?? "?"
                #expect(frozen, "\(n) is not frozen: \(state)")
            }
            #expect(try api.get(leaf).pausedAncestors() == [name])
            try api.get(name).setFrozen(false)

            // killall -r with the middle one paused: everything emptied,
            // every container left thawed.
            try api.get(mid).setFrozen(true)
            try backend.killAll(name.description, recursive: true)
            for n in [name, mid, leaf] {
                #expect(try api.get(n).processes(recursive: false).isEmpty)
                #expect(try !api.get(n).isFrozen())
            }

            // destroy -f with the top and the leaf paused: all gone.
            for n in [name, mid, leaf] { pids[n] = try api.get(n).run(["sleep", "300"]) }
            try api.get(leaf).setFrozen(true)
            try api.get(name).setFrozen(true)
            try api.destroy(name)
            for n in [name, mid, leaf] { #expect(try !api.exists(n)) }
        }
    }

    /// `killall -r` while another caller destroys subcontainers it listed:
    /// one destroyed meanwhile has nothing left to empty (the kill failed
    /// with 5, NOT_FOUND, part way through the tree; a probe).
    @Test func killallRecursiveRacingADestroyOfItsSubcontainers() throws {
        try withTestContainer(api) { name in
            try api.create(name, spec: ContainerSpec())
            let backend = LocalBackend(api: api, callerPid: getpid())
            for round in 0..<3 {
                let subs = try (0..<16).map { try ContainerName.resolve("s\(round)_\($0)", relativeTo: name) }
                for n in subs {
                    try api.create(n, spec: ContainerSpec())
                    _ = try api.get(n).run(["sleep", "300"])
                }
                let destroyer = Threads.start {
                    for n in subs { _ = try? self.api.destroy(n) }
                }
                var failure: LmctfyError?
                do throws(LmctfyError) { try backend.killAll(name.description, recursive: true) } catch { failure = error }
                pthread_join(destroyer, nil)
                #expect(failure == nil, "round \(round): \(String(describing: failure))")
                for n in subs where try api.exists(n) { #expect(try api.get(n).processes(recursive: false).isEmpty) }
                for n in subs { _ = try? api.destroy(n) }
            }
        }
    }

    /// Reads racing another caller's destroy of their container: NOT_FOUND
    /// saying the container does not exist, never a cgroup file's openat2
    /// text (a probe).
    @Test func readsRacingADestroySayTheContainerDoesNotExist() throws {
        try withTestContainer(api) { name in
            try api.create(name, spec: ContainerSpec(cpu: CpuSpec(limit: 1000), memory: MemorySpec(limit: 1_000_000_000)))
            let backend = LocalBackend(api: api, callerPid: getpid())
            var said: [String] = []
            for round in 0..<40 {
                let c = try ContainerName.resolve("r\(round)", relativeTo: name)
                try api.create(c, spec: ContainerSpec(cpu: CpuSpec(limit: 500), memory: MemorySpec(limit: 100_000_000)))
                let go = Latch()
                let destroyer = Threads.start {
                    go.wait()
                    _ = try? self.api.destroy(c)
                }
                go.signal()
                var ended = false
                while !ended {
                    do throws(LmctfyError) {
                        _ = try backend.spec(c.description)
                        _ = try backend.stats(c.description, type: .full)
                        _ = try backend.listTasks(c.description, threads: true, recursive: true)
                    } catch {
                        #expect(error.code == .notFound, "\(error)")
                        said.append(error.message)
                        ended = true
                    }
                }
                pthread_join(destroyer, nil)
            }
            let raw = said.filter { !($0.hasPrefix("Container \"") && $0.hasSuffix("\" does not exist")) }
            #expect(raw.isEmpty, "\(raw.count) of \(said.count): \(raw.prefix(3))")
        }
    }

    /// Below a paused ancestor, a tree without processes has nothing that
    /// could not die: killall -r leaves it as it is (it refused, while
    /// killall and destroy did not), and destroy removes it.
    @Test func anEmptyTreeBelowAPausedAncestorIsNotRefused() throws {
        try withTestContainer(api) { name in
            let mid = try ContainerName.resolve("mid", relativeTo: name)
            let leaf = try ContainerName.resolve("leaf", relativeTo: mid)
            let below = try ContainerName.resolve("below", relativeTo: leaf)
            for n in [name, mid, leaf, below] { try api.create(n, spec: ContainerSpec()) }
            let backend = LocalBackend(api: api, callerPid: getpid())
            try api.get(leaf).setFrozen(true)
            try api.get(name).setFrozen(true)
            try backend.killAll(mid.description, recursive: true)
            try backend.killAll(leaf.description, recursive: false)
            // Nothing thawed: the leaf is still paused itself.
            #expect(try api.get(below).pausedAncestors() == [name, leaf])
            #expect(try api.get(mid).isFrozen())
            try api.destroy(mid)
            #expect(try !api.exists(mid) && !api.exists(leaf) && !api.exists(below))
            try api.get(name).setFrozen(false)
        }
    }

    /// A priority whose oom_score_adj is below 0 needs CAP_SYS_RESOURCE in
    /// every process the container starts. Without it (this VM's root has
    /// none) the create is refused with 7 and leaves nothing; it used to
    /// succeed, and then every run failed. With it, the create succeeds and
    /// a run gets that oom_score_adj.
    @Test func aPriorityBelowZeroNeedsCapSysResourceAtCreate() throws {
        try withTestContainer(api) { name in
            var m = MemorySpec()
            m.evictionPriority = 9000  // oom_score_adj -799
            if Sys.hasEffectiveCapability(24) {
                try api.create(name, spec: ContainerSpec(memory: m))
                let pid = try api.get(name).run(["sleep", "300"])
                #expect(try Sys.readFile("/proc/\(pid)/oom_score_adj").trimmingWhitespace == "-799")
            } else {
                #expect { try api.create(name, spec: ContainerSpec(memory: m)) } throws: { error in
                    let e = error as? LmctfyError
                    return e?.code == .permissionDenied && e?.message.contains("needs CAP_SYS_RESOURCE") == true
                }
                #expect(try !api.exists(name))
            }
        }
    }

    /// The same at an update of a container with no process yet (nothing
    /// to adjust: it was taken, and every run failed afterwards), and at an
    /// enter into a container whose priority needs it (refused before the
    /// task moves; it was moved, its oom_score_adj silently left as it was;
    /// a probe), and at a run. Without CAP_SYS_RESOURCE only: with it they succeed.
    @Test func aPriorityBelowZeroNeedsCapSysResourceAtUpdateAndEnter() throws {
        try withTestContainer(api, label: "capupd") { name in
            let c = try api.create(name, spec: ContainerSpec(memory: MemorySpec(limit: 50_000_000)))
            var m = MemorySpec()
            m.evictionPriority = 9000  // oom_score_adj -799
            guard !Sys.hasEffectiveCapability(24) else {
                try c.update(ContainerSpec(memory: m), policy: .diff)
                let pid = try c.run(["sleep", "300"])
                #expect(try Sys.readFile("/proc/\(pid)/oom_score_adj").trimmingWhitespace == "-799")
                return
            }
            let refused = lmctfyError { try c.update(ContainerSpec(memory: m), policy: .diff) }
            #expect(refused?.code == .permissionDenied && refused?.message.contains("needs CAP_SYS_RESOURCE") == true, "\(String(describing: refused))")
            #expect(try c.spec().memory?.evictionPriority == 5000)
            // A priority set by a process that had the capability (the
            // record written as such an update leaves it), then an enter.
            try api.driver.nearestDir(.memory, name)!.setRecord(.evictionPriority, "9000")
            let pid = try TestProcess.spawn(["/bin/sleep", "300"])
            defer { TestProcess.end(pid) }
            let entering = lmctfyError { try c.enter([pid]) }
            #expect(entering?.code == .permissionDenied && entering?.message.contains("CAP_SYS_RESOURCE") == true, "\(String(describing: entering))")
            #expect(try !c.processes(recursive: false).contains(pid), "the task was moved")
            // A run says why before it forks (the child failed its write).
            let running = lmctfyError { _ = try c.run(["/bin/sleep", "300"]) }
            #expect(running?.code == .permissionDenied && running?.message.contains("CAP_SYS_RESOURCE") == true, "\(String(describing: running))")
            #expect(try c.processes(recursive: false).isEmpty)
        }
    }

    /// D12: a process started in (or entering) a container gets the
    /// oom_score_adj of its eviction priority. Priority 0 maps to 1000,
    /// which needs no capability (values below 0 need CAP_SYS_RESOURCE).
    @Test func evictionPriorityReachesStartedAndEnteringProcesses() throws {
        try withTestContainer(api) { name in
            try api.create(name, spec: ContainerSpec(memory: MemorySpec(evictionPriority: 0)))
            let c = try api.get(name)
            let started = try c.run(["sleep", "300"])
            #expect(try Sys.readFile("/proc/\(started)/oom_score_adj").trimmingWhitespace == "1000")
            let entering = try TestProcess.spawn(["/bin/sleep", "300"])
            defer { TestProcess.end(entering) }
            try c.enter([entering])
            #expect(try Sys.readFile("/proc/\(entering)/oom_score_adj").trimmingWhitespace == "1000")
            try c.update(ContainerSpec(memory: MemorySpec(evictionPriority: 2500)), policy: .diff)
            #expect(try Sys.readFile("/proc/\(started)/oom_score_adj").trimmingWhitespace == "500")
        }
    }

    /// An update of the eviction priority reaches the processes of the
    /// subcontainers that share the container's memory (they got its
    /// priority when they started); one that isolates memory keeps its own.
    /// The update reached the container's own processes only (a probe).
    @Test func evictionPriorityUpdateReachesSubcontainersSharingMemory() throws {
        try withTestContainer(api) { name in
            try api.create(name, spec: ContainerSpec(memory: MemorySpec(evictionPriority: 0)))
            let sharing = try ContainerName.resolve("sharing", relativeTo: name), own = try ContainerName.resolve("own", relativeTo: name)
            try api.create(sharing, spec: ContainerSpec())
            try api.create(own, spec: ContainerSpec(memory: MemorySpec(evictionPriority: 1000)))
            // On v2 only leaves hold processes (the container has a
            // subcontainer that isolates memory).
            let v1 = api.mounts.version == .v1
            let top = v1 ? [try api.get(name).run(["sleep", "300"])] : []
            let inSharing = try api.get(sharing).run(["sleep", "300"])
            let inOwn = try api.get(own).run(["sleep", "300"])
            let adj = { (pid: pid_t) in try Sys.readFile("/proc/\(pid)/oom_score_adj").trimmingWhitespace }
            #expect(try (top + [inSharing, inOwn]).map(adj) == (v1 ? ["1000"] : []) + ["1000", "800"])
            try api.get(name).update(ContainerSpec(memory: MemorySpec(evictionPriority: 2500)), policy: .diff)
            #expect(try (top + [inSharing, inOwn]).map(adj) == (v1 ? ["500"] : []) + ["500", "800"])
        }
    }
}
