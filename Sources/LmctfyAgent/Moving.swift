// Containers leaving and arriving (issue #13; README "Moving containers"):
// ExportSnapshot, ImportSnapshot (the cold path every agent has) and
// Checkpoint/Restore (CRIU, where the host's CRIU passes its check).
// Migration is driven by the caller (lmctl migrate) with these and Pause,
// Resume and Destroy, directly between two agents or through a controller.
import Glibc
import LmctfyProto
import LmctfySystem

extension Dispatcher {
    /// The file a checkpoint keeps the container's snapshot in, beside CRIU's images.
    static let checkpointSnapshotFile = "lmctfy-snapshot.pb"

    func exportSnapshot(_ r: ExportSnapshotRequest) throws -> ExportSnapshotResponse {
        let name = try Self.containerName(r.name)
        let s = try currentSnapshot(name)
        // What an import would not bring back, for the caller to weigh (lmctl
        // migrate refuses to leave either behind unless told to).
        // A virtual host's init is the container's own: the import starts a
        // new one. It was counted as a process the agent did not start, so
        // every virtual host needed --force, which also let truly foreign
        // processes go (the virtual-host probe). The init itself only: an
        // orphan started in the virtual host behind the agent's back is
        // its child too.
        let initPid = backend.virtualHostInit(name)
        let pids = try backend.listTasks(name, threads: false, recursive: true).filter { $0 != initPid }
        let recorded = Set(s.process.compactMap(\.pid))
        let unrecorded = pids.filter { pid in
            var p: Int32? = pid
            var hops = 0
            while let q = p, q > 1, hops < 64 {
                if recorded.contains(q) { return false }
                p = Self.parent(of: q)
                hops += 1
            }
            return true
        }
        let children = try backend.listContainers(name, recursive: false)
        var response = ExportSnapshotResponse(snapshot: s, unrecordedPid: unrecorded, subcontainer: children)
        if let lease = leases.lease(try backend.resolve(name)) {
            let now = MonotonicClock.milliseconds()
            response.freezeLeaseMs = UInt32(clamping: lease.deadline > now ? lease.deadline - now : 0)
        }
        return response
    }

    /// The snapshot of `name`, written afresh from the kernel first (on a
    /// full disk, kept in memory: that is the snapshot; an export, a read,
    /// failed with the write's RESOURCE_EXHAUSTED; a probe).
    func currentSnapshot(_ name: String) throws -> ContainerSnapshot {
        guard let keeper = snapshots else {
            throw LmctfyError.failedPrecondition("This agent keeps no snapshots")
        }
        let path = try backend.resolve(name)
        do throws(LmctfyError) {
            try keeper.sync(path)
        } catch {
            guard error.code == .resourceExhausted && keeper.store.keptInMemoryOnly(path) else { throw error }
        }
        guard let s = keeper.store.current(path) else {
            throw LmctfyError.notFound("Container \(path) does not exist")
        }
        return s
    }

    /// ImportSnapshot: checks that the snapshot fits, makes the container,
    /// starts its recorded processes (with `start`), freezes it if it was
    /// frozen. Nothing is left behind when a step fails, nor when the call
    /// is cancelled part way (its caller gave up: its deadline passed, it
    /// cancelled, its connection or the controller's link closed): a
    /// migration that gave up thaws its source, and a copy made here after
    /// that would run beside it.
    func importSnapshot(_ r: ImportSnapshotRequest, context: CallContext? = nil) throws -> ImportSnapshotResponse {
        guard let s = r.snapshot else { throw LmctfyError.invalidArgument("ImportSnapshot needs a snapshot") }
        let (name, spec) = try Self.fit(s, name: r.name)
        func checkCancelled() throws(LmctfyError) {
            if context?.cancelled == true {
                throw LmctfyError(.cancelled, "ImportSnapshot of \(name) was cancelled (its caller gave up); what it had made is removed")
            }
        }
        // Marked until whole: undone at the next start if the agent dies
        // before (ImportMarks).
        // Cleared however it ends (after the undo of a failed one).
        let marked = try backend.resolve(name)
        let token = ImportMarks.newToken()
        try importMarks?.begin(marked, token: token)
        defer { importMarks?.end(marked) }
        let path = try makeImported(name, spec: spec, origin: token)
        // A frozen snapshot's processes never run here before the freeze
        // (a migration's copy: its source is frozen, and must stay the only
        // one that runs). Each is stopped (SIGSTOP) the moment it has
        // started, and let go once the freezer holds them: a process cannot
        // be started inside a frozen cgroup (its start waits for its exec),
        // and an agent killed or stopped between the starts and the freeze
        // left them running beside a source that its caller then thawed.
        // (What a process does in the microseconds between its exec and
        // the stop is not held: a start that waits at a gate before its
        // exec would need a spawn without vfork.)
        let hold = s.frozen == true
        var pids: [Int32] = []
        defer { if hold { for pid in pids { _ = try? Sys.kill(-pid, SIGCONT) } } }
        do {
            try importMarks?.made(marked, cgroupId: snapshots?.cgroupId(path), token: token)
            if r.start == true {
                for p in s.process {
                    try checkCancelled()
                    pids.append(try launch(name, path: path, p, stop: hold))
                }
            }
            // Test hook (LMCTFY_AGENT_TEST_HOLD_AFTER=ImportSnapshot.started):
            // the processes started, the freeze not yet made.
            testHold?.hold("ImportSnapshot.started")
            if hold { try setPaused(name, true) }
            // Last: after this the answer goes, and the copy is the caller's.
            try checkCancelled()
            return ImportSnapshotResponse(name: path, startedPid: pids, cgroupId: backend.containerIdentity(name))
        } catch {
            undoImport(name, path: path)
            throw error
        }
    }

    /// At the start, before anything is served: the imports an earlier
    /// agent died under (ImportMarks) are destroyed, if their container is
    /// still the cgroup the import made. Returns a line for each.
    func undoUnfinishedImports() -> [String] {
        guard let marks = importMarks else { return [] }
        var said: [String] = []
        for m in marks.left() {
            defer { marks.end(m.path) }
            let what = m.oneShot ? "run --create of \(m.path)" : "import of \(m.path)"
            // The container is the one the mark's create made: its cgroup,
            // once recorded (gone, or another since: left alone); before
            // that, the token the create recorded on it.
            let made: Bool
            if let id = m.cgroupId {
                made = snapshots?.cgroupId(m.path) == id
            } else {
                made = m.token != nil && backend.containerOrigin(m.path) == m.token
                if !made { said.append("\(what) cut short before its container was made: nothing to undo") }
            }
            guard made else { continue }
            do {
                _ = try destroyContainer(m.path, force: true)
                said.append("\(what) cut short by the agent's end: the half-made container destroyed")
            } catch let e as LmctfyError where e.code == .notFound {
                // (A one-shot's own recovery removed it already.)
            } catch {
                said.append("\(what) cut short by the agent's end: its half-made container could not be destroyed: \(error)")
            }
        }
        return said
    }

    /// The name to import as and the spec to create, or why the snapshot
    /// does not fit this machine (nothing is made then).
    static func fit(_ s: ContainerSnapshot, name: String?) throws(LmctfyError) -> (String, ContainerSpec) {
        // Every snapshot an agent writes has its format; one without (an
        // empty file decodes as an empty snapshot) is not one, and made a
        // container with an empty spec.
        guard let v = s.formatVersion, v >= 1 else {
            throw .invalidArgument("Not a container snapshot: it has no format_version (an empty or foreign file?)")
        }
        if v > SnapshotStore.formatVersion {
            throw .failedPrecondition("The snapshot's format \(v) is newer than this agent's (\(SnapshotStore.formatVersion))")
        }
        guard let name = name ?? s.name, !name.isEmpty else {
            throw .invalidArgument("The snapshot names no container: give a name")
        }
        let spec = s.spec ?? ContainerSpec()
        if let mask = spec.cpu?.mask, !mask.data.isEmpty {
            let online = onlineCpus()
            let words = mask.data.count
            for (i, word) in mask.data.enumerated() where word != 0 {
                let base = (words - 1 - i) * 64
                for bit in 0..<64 where word & (1 << UInt64(bit)) != 0 && !online.contains(base + bit) {
                    throw .failedPrecondition(
                        "The snapshot's cpuset has CPU \(base + bit), which this machine does not have online (\(online.isEmpty ? "none" : describe(online)))")
                }
            }
        }
        return (name, spec)
    }

    /// Creates the imported container; errors say why it does not fit.
    private func makeImported(_ name: String, spec: ContainerSpec, origin: String? = nil) throws -> String {
        do {
            // Admitted by this agent's policy like a Create, in the tier its
            // spec says (RESOURCE_EXHAUSTED with the arithmetic otherwise).
            guard let policy else { return try createContainer(name, spec: spec, origin: origin).name }
            let path = try backend.resolve(name)
            // Held to what a Create of the spec is (a guaranteed tier needs
            // a real memory limit).
            let (tier, _) = try policy.planCreate(path: path, spec: spec, tier: nil)
            return try policy.admitCreate(path: path, tier: tier, spec: spec, verb: "ImportSnapshot") {
                try createContainer(name, spec: spec, origin: origin).name
            }
        } catch let e as LmctfyError where e.code == .alreadyExists {
            throw LmctfyError(.alreadyExists, "Cannot import: \(e.message)")
        } catch let e as LmctfyError where [.failedPrecondition, .invalidArgument, .unimplemented, .outOfRange, .notFound].contains(e.code) {
            // NOT_FOUND from a create: a resource (cpu) the parent here does
            // not isolate (a missing parent is FAILED_PRECONDITION already).
            throw LmctfyError(.failedPrecondition, "The snapshot does not fit this agent: \(e.message)")
        }
    }

    private func undoImport(_ name: String, path: String) {
        do { _ = try destroyContainer(name, force: true) } catch {
            events.record(container: path, kind: .containerEventDestroyed)
        }
    }

    /// Starts a recorded process again, detached (nobody is attached to a
    /// restored container's processes), recorded with its restart policy
    /// and, for a one-shot command's (Run with remove_when_done), with its
    /// container's removal when it ends, as on the source.
    /// `stop`: SIGSTOPped as soon as it has started (see importSnapshot).
    private func launch(_ name: String, path: String, _ p: SnapshotProcess, stop: Bool = false) throws -> Int32 {
        guard !p.argv.isEmpty else { throw LmctfyError.invalidArgument("A recorded process of the snapshot has no command") }
        var pid: Int32 = 0
        let snapshots = self.snapshots
        _ = try backend.run(name, argv: p.argv, detached: true) { (started: Int32) throws(LmctfyError) in
            // Its whole process group (a detached run leads its own
            // session): a shell may already have forked.
            if stop { _ = try? Sys.kill(-started, SIGSTOP) }
            pid = started
            snapshots?.started(path, pid: started, argv: p.argv, detached: true, policy: p.restartPolicy,
                               removes: p.removesContainer == true)
        }
        return pid
    }

    // MARK: CRIU

    private func usableCriu(_ what: String) throws -> CriuProbe {
        guard let criu else { throw LmctfyError.unimplemented("\(what) needs CRIU, and this agent did not probe for it") }
        let status = criu.status
        guard status.usable == true else {
            throw LmctfyError.unimplemented("\(what) needs CRIU, which cannot be used here: \(status.reason ?? "unknown")")
        }
        return criu
    }

    /// Checkpoint: the snapshot beside CRIU's images of the container's one
    /// process tree; the container destroyed afterwards unless `leave_running`.
    func checkpoint(_ r: CheckpointRequest) throws -> CheckpointResponse {
        let criu = try usableCriu("Checkpoint")
        let name = try Self.containerName(r.name)
        let dir = try Self.imagesDir(r.imagesDir, create: true)
        let snapshot = try currentSnapshot(name)
        let pids = try backend.listTasks(name, threads: false, recursive: true)
        let roots = pids.filter { !pids.contains(Self.parent(of: $0) ?? 0) }
        guard roots.count == 1, let root = roots.first else {
            throw LmctfyError.failedPrecondition(
                "CRIU dumps one process tree; container \(name) has \(roots.count) (pids \(roots.map(String.init).joined(separator: ", ")))")
        }
        try Sys.writeFileAtomically(dir + "/" + Self.checkpointSnapshotFile, try snapshot.serializedBytes())
        var argv = [criu.binary, "dump", "--tree", String(root), "--images-dir", dir, "--shell-job",
                    "--manage-cgroups", "--tcp-established", "--file-locks", "--ext-unix-sk"]
        if r.leaveRunning == true { argv.append("--leave-running") }
        let out = Tool.run(argv, timeoutMs: 600_000)
        guard out.ok else {
            throw LmctfyError.internalError("criu dump of \(name) (pid \(root)) failed: \(CriuProbe.firstLine(out.output))")
        }
        if r.leaveRunning != true { _ = try destroyContainer(name, force: true) }
        return CheckpointResponse(imagesDir: dir)
    }

    /// Restore: the container made again from the checkpoint's snapshot
    /// (ImportSnapshot's checks), its processes restored by CRIU and moved
    /// into it, frozen again if it was.
    func restore(_ r: RestoreRequest) throws -> RestoreResponse {
        let criu = try usableCriu("Restore")
        let dir = try Self.imagesDir(r.imagesDir, create: false)
        let bytes: [UInt8]
        do { bytes = try Sys.readBytes(dir + "/" + Self.checkpointSnapshotFile) } catch {
            throw LmctfyError.notFound("\(dir) holds no checkpoint of lmctfy (\(Self.checkpointSnapshotFile)): \(error)")
        }
        let s = try ContainerSnapshot(serializedBytes: bytes)
        let (name, spec) = try Self.fit(s, name: r.name)
        let path = try makeImported(name, spec: spec)
        do {
            let pidFile = dir + "/restored.pid"
            unlink(pidFile)
            let out = Tool.run([criu.binary, "restore", "--images-dir", dir, "--restore-detached", "--shell-job",
                                "--manage-cgroups=ignore", "--tcp-established", "--file-locks", "--ext-unix-sk",
                                "--pidfile", pidFile], timeoutMs: 600_000)
            guard out.ok, let text = try? Sys.readFile(pidFile), let root = Int32(text.trimmingWhitespace) else {
                throw LmctfyError.internalError("criu restore from \(dir) failed: \(CriuProbe.firstLine(out.output))")
            }
            try backend.enter(name, tids: Self.tree(root))
            if s.frozen == true { try setPaused(name, true) }
            return RestoreResponse(name: path)
        } catch {
            undoImport(name, path: path)
            throw error
        }
    }

    private static func imagesDir(_ dir: String?, create: Bool) throws(LmctfyError) -> String {
        guard let dir, dir.hasPrefix("/"), !dir.split(separator: "/").contains("..") else {
            throw .invalidArgument("The images directory must be an absolute path without \"..\"")
        }
        if create {
            if mkdir(dir, 0o700) != 0 && errno != EEXIST {
                throw .failedPrecondition("Cannot make \(dir): \(String(cString: strerror(errno)))")
            }
        }
        var st = stat()
        guard stat(dir, &st) == 0, st.st_mode & S_IFMT == S_IFDIR else { throw .notFound("\(dir) is not a directory") }
        return dir
    }

    /// The parent pid of `pid` (/proc/<pid>/stat field 4).
    static func parent(of pid: Int32) -> Int32? {
        guard let text = try? Sys.readFile("/proc/\(pid)/stat"), let close = text.lastIndex(of: ")") else { return nil }
        let fields = text[text.index(after: close)...].split(separator: " ")
        return fields.count > 1 ? Int32(fields[1]) : nil
    }

    /// Every thread of `root` and of the processes below it.
    static func tree(_ root: Int32) -> [Int32] {
        var children: [Int32: [Int32]] = [:]
        let pids = ((try? Sys.subdirectoriesAndFiles("/proc")) ?? []).compactMap { Int32($0) }
        for pid in pids { if let p = parent(of: pid) { children[p, default: []].append(pid) } }
        var out: [Int32] = []
        var queue = [root]
        while let pid = queue.popLast() {
            out += ((try? Sys.subdirectoriesAndFiles("/proc/\(pid)/task")) ?? []).compactMap { Int32($0) }
            queue += children[pid] ?? []
        }
        return out
    }

    /// The CPUs online (/sys/devices/system/cpu/online, e.g. "0-3,6").
    static func onlineCpus() -> Set<Int> {
        guard let text = try? Sys.readFile("/sys/devices/system/cpu/online") else { return [] }
        var out = Set<Int>()
        for part in text.trimmingWhitespace.split(separator: ",") {
            let ends = part.split(separator: "-").compactMap { Int($0) }
            if ends.count == 2, ends[0] <= ends[1] { out.formUnion(ends[0]...ends[1]) } else if ends.count == 1 { out.insert(ends[0]) }
        }
        return out
    }

    static func describe(_ cpus: Set<Int>) -> String {
        cpus.sorted().map(String.init).joined(separator: ",")
    }
}
