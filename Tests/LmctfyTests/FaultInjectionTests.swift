// Every step of create, update, destroy, run and pause failed in turn, on a
// fake v1 and a fake v2 tree that act like cgroupfs (FakeCgroupKernel), with
// each errno the kernel gives such calls. Each operation's promise is
// checked after every failure:
//  - create: nothing is left in any hierarchy, and the name can be used again;
//  - update: the spec read back is the one from before;
//  - destroy: the container is still destroyable (a second destroy removes
//    everything);
//  - run: the error names a cause and the container is unchanged;
//  - pause: the container can be resumed and ends thawed;
//  - destroy of a tree with a paused subcontainer: as destroy, and what a
//    failed one leaves of the paused subcontainer is paused still;
// and for every operation: an injected EINTR is retried (the operation
// succeeds as without faults), EACCES is PERMISSION_DENIED (7).
import Glibc
@testable import Lmctfy
import LmctfyProto
import LmctfySystem
import LmctfyTestSupport
import Testing

@Suite struct FaultInjectionTests {
    static let errnos: [Int32] = [ENOSPC, EBUSY, EINTR, EACCES, ENOENT, EEXIST]
    static let spec = ContainerSpec(cpu: CpuSpec(limit: 500, maxLimit: 2000), memory: MemorySpec(limit: 100_000_000),
                                    pids: PidsSpec(limit: 64))
    static let update = ContainerSpec(cpu: CpuSpec(limit: 250), memory: MemorySpec(limit: 50_000_000),
                                      pids: PidsSpec(limit: 32))

    /// A fresh fake machine of `version` whose calls go through `plan`
    /// (nil: the same machine without faults, for setup and checks).
    final class Machine {
        let tree: FakeCgroupTree
        let kernel: FakeCgroupKernel
        let name: ContainerName
        /// Two subcontainers of `name` for destroyPaused: one paused (it
        /// goes after the running one, which is destroyed first).
        let paused: ContainerName
        let running: ContainerName

        init(_ version: CgroupVersion) throws {
            tree = try FakeCgroupTree(version)
            kernel = try FakeCgroupKernel(tree)
            try Sys.mkdir(tree.root + "/proc")
            name = try ContainerName.resolve("/c", relativeTo: .root)
            paused = try ContainerName.resolve("/c/p", relativeTo: .root)
            running = try ContainerName.resolve("/c/r", relativeTo: .root)
        }

        func api(_ failAt: Int = 0, _ errno: Int32 = 0) throws -> (ContainerApi, FaultPlan) {
            let plan = FaultPlan(failAt: failAt, errno: errno, filesystem: kernel)
            return (try ContainerApi(mounts: tree.mounts(faults: plan), procRoot: tree.root + "/proc"), plan)
        }

        /// Directories named like the container, in any hierarchy.
        var leftovers: [String] {
            var found: [String] = []
            for h in (try? Sys.subdirectories(tree.root)) ?? [] {
                for path in [tree.root + "/" + h + "/c", tree.root + "/" + h + "/batch/c"] where Sys.isDirectory(path) {
                    found.append(path)
                }
            }
            return found
        }
    }

    enum Operation: String, CaseIterable, CustomTestStringConvertible {
        case create, update, destroy, run, pause, destroyPaused
        var testDescription: String { rawValue }
    }

    static let cases: [(CgroupVersion, Operation)] = [CgroupVersion.v1, .v2].flatMap { v in Operation.allCases.map { (v, $0) } }

    /// Sets the machine up for `op` (without faults).
    func prepare(_ op: Operation, _ m: Machine) throws {
        guard op != .create else { return }
        let (api, _) = try m.api()
        try api.create(m.name, spec: Self.spec)
        if op == .destroyPaused {
            try api.create(m.paused, spec: ContainerSpec(memory: MemorySpec(limit: 50_000_000)))
            try api.create(m.running, spec: ContainerSpec(memory: MemorySpec(limit: 50_000_000)))
            try api.get(m.paused).setFrozen(true, timeoutMs: 200)
        }
    }

    /// Runs `op` once through `api`.
    func perform(_ op: Operation, _ api: ContainerApi, _ m: Machine) throws(LmctfyError) {
        switch op {
        case .create: try api.create(m.name, spec: Self.spec)
        case .update: try api.get(m.name).update(Self.update, policy: .diff)
        case .destroy, .destroyPaused: try api.destroy(m.name)
        case .run: _ = try api.get(m.name).run(["/bin/true"])
        case .pause: try api.get(m.name).setFrozen(true, timeoutMs: 200)
        }
    }

    /// What the machine looks like after `op` succeeded, to compare an
    /// EINTR-injected run with.
    func outcome(_ op: Operation, _ m: Machine) throws -> String {
        let (api, _) = try m.api()
        switch op {
        case .create, .update, .run: return try api.get(m.name).spec().textFormatString
        case .destroy, .destroyPaused: return "exists: \(try api.exists(m.name)), left: \(m.leftovers)"
        case .pause: return "frozen: \(try api.get(m.name).isFrozen())"
        }
    }

    /// Checks the promise `op` makes after failing with `error`.
    func checkPromise(_ op: Operation, _ m: Machine, before: String?, _ comment: Comment) throws {
        let (api, _) = try m.api()
        switch op {
        case .create:
            #expect(try !api.exists(m.name), comment)
            #expect(m.leftovers.isEmpty, "\(comment): left \(m.leftovers)")
            try api.create(m.name, spec: Self.spec)
        case .update, .run:
            let now = try api.get(m.name).spec().textFormatString
            #expect(now == before, "\(comment)\nbefore: \(before ?? "")\nnow: \(now)")
        case .destroy, .destroyPaused:
            if op == .destroyPaused, try api.exists(m.paused) {
                #expect(try api.get(m.paused).driver.isPausedItself(m.paused), "\(comment): the paused subcontainer was left resumed")
            }
            // A destroy that stopped part way leaves the container
            // invisible; destroying the name again removes what is left.
            let again = Result { () throws(LmctfyError) in try api.destroy(m.name) }
            if case .failure(let e) = again, e.code != .notFound { throw e }
            #expect(try !api.exists(m.name), comment)
            #expect(m.leftovers.isEmpty, "\(comment): left \(m.leftovers)")
        case .pause:
            try api.get(m.name).setFrozen(false)
            #expect(try api.get(m.name).isFrozen() == false, comment)
        }
    }

    @Test(arguments: cases)
    func everyStepFailsCleanly(_ version: CgroupVersion, _ op: Operation) throws {
        // How many calls the operation makes, and what it leaves, without faults.
        let reference = try Machine(version)
        try prepare(op, reference)
        let (counting, plan) = try reference.api()
        try perform(op, counting, reference)
        let steps = plan.count
        let expected = try outcome(op, reference)
        #expect(steps > 3, "\(op) on \(version) made only \(steps) calls")

        var failures = 0
        for n in 1...steps {
            // ENOENT, "not there", is what the kernel says of a directory
            // or file that was removed: injected into a tree's destroy it
            // makes a subcontainer that is there look gone, which no kernel
            // says while the tree's lock is held (the one-container destroy
            // is tried with it).
            for e in Self.errnos where !(op == .destroyPaused && e == ENOENT) {
                let m = try Machine(version)
                try prepare(op, m)
                let before = op == .update || op == .run ? try m.api().0.get(m.name).spec().textFormatString : nil
                let (api, plan) = try m.api(n, e)
                let what = "\(op) on \(version), call \(n) of \(steps) failing with \(String(cString: strerror(e)))"
                do throws(LmctfyError) {
                    try perform(op, api, m)
                } catch {
                    let comment: Comment = "\(what): \(plan.seen.first { $0.failed }.map(\.description) ?? "?")"

                    failures += 1
                    #expect(e != EINTR, "EINTR was not retried: \(comment): \(error)")
                    if e == EACCES {
                        #expect(error.code == .permissionDenied, "\(comment): \(error)")
                    }
                    #expect(error.code != .ok && error.code != .unknown, "\(comment): \(error)")
                    try checkPromise(op, m, before: before, comment)
                    continue
                }
                // A fault that did not fail the operation was retried
                // (EINTR), or was an answer: ENOENT says "not there" to a
                // probe (an optional file, a directory already gone), EEXIST
                // to the mkdir -p of the lock directory, and a process may be
                // gone by the time it is killed. Nothing else may be swallowed.
                let ignored = plan.seen.first { $0.failed }
                let lockDirExists = e == EEXIST && ignored?.call == .mkdir
                    && (m.tree.root.hasPrefix(ignored!.path) || ignored!.path == m.tree.root + "/locks")
                #expect(e == EINTR || e == ENOENT || ignored == nil || ignored?.call == .kill || lockDirExists,
                        "\(what): \(ignored.map(\.description) ?? "") was swallowed")
                if e == EINTR || !plan.fired {
                    #expect(try outcome(op, m) == expected, "\(what)")
                }
            }
        }
        #expect(failures > 0, "no injected fault made \(op) fail")
    }

    @Test func theSpawnPathGoesThroughTheSeam() throws {
        let m = try Machine(.v1)
        try prepare(.run, m)
        let (api, plan) = try m.api()
        _ = try api.get(m.name).run(["/bin/true"])
        #expect(plan.seen.contains { $0.call == .spawn && $0.path == "/bin/true" })
        let (failing, _) = try m.api(plan.count, EAGAIN)
        #expect { _ = try failing.get(m.name).run(["/bin/true"]) } throws: {
            ($0 as? LmctfyError)?.errno == EAGAIN
        }
    }

    @Test func aFaultPlanCountsAndFailsOnlyTheChosenCalls() {
        let plan = FaultPlan(failAt: 2, errno: ENOSPC, times: 2, calls: [.write])
        #expect(plan.check(.open, "/x") == nil)
        #expect(plan.check(.write, "/x") == nil)
        #expect(plan.check(.write, "/y") == ENOSPC)
        #expect(plan.check(.write, "/z") == ENOSPC)
        #expect(plan.check(.write, "/w") == nil)
        #expect(plan.count == 4)
        #expect(plan.seen.filter(\.failed).map(\.path) == ["/y", "/z"])
    }

    /// kernfs answers ENODEV for a file of a cgroup removed meanwhile (a
    /// container destroyed while it is read): NOT_FOUND, as a missing file.
    @Test(arguments: [SysCall.open, .read, .write])
    func aFileOfACgroupRemovedMeanwhileIsNotFound(call: SysCall) throws {
        let tree = try FakeCgroupTree(.v1)
        try tree.seed("memory", files: ["memory.limit_in_bytes": "1\n"])
        let plan = FaultPlan(failAt: 1, errno: ENODEV, calls: [call])
        let dir = CgroupDir(mount: tree.root + "/memory", segments: [], access: .fake(faults: plan))
        #expect {
            if call == .write { try dir.write("memory.limit_in_bytes", "2") } else { _ = try dir.read("memory.limit_in_bytes") }
        } throws: { ($0 as? LmctfyError)?.code == .notFound && ($0 as? LmctfyError)?.errno == ENODEV }
        #expect(plan.seen.contains { $0.failed && $0.call == call })
    }

    @Test func anInjectedEINTRIsRetriedByTheRealLoop() throws {
        let tree = try FakeCgroupTree(.v1)
        try tree.seed("memory", files: ["x": "1\n"])
        let plan = FaultPlan(failAt: 1, errno: EINTR, times: 3)
        #expect(try Sys.readFile(tree.root + "/memory/x", faults: plan) == "1\n")
        #expect(plan.seen.filter(\.failed).count == 3)
    }
}
