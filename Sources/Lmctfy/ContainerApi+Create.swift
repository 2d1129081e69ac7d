// Creating containers: all or nothing (D4), and the spec sections lmctfy
// refuses rather than drops (D11).
import Glibc
import LmctfyProto
import LmctfySystem

extension ContainerApi {
    /// Creates a container isolating the resources its spec names. All or
    /// nothing (D4): on any failure every directory made is removed again.
    /// Every directory is made by this create: one that exists already in
    /// any hierarchy and is not an lmctfy leftover is ALREADY_EXISTS.
    @discardableResult
    public func create(_ name: String, spec: ContainerSpec) throws(LmctfyError) -> Container {
        try create(try resolve(name), spec: spec)
    }

    /// Creates the container `name` (already resolved), all or nothing (D4).
    /// ALREADY_EXISTS if it (or `/`) exists, NOT_FOUND if its parent does not;
    /// a resource its parent does not isolate is NOT_FOUND for cpu and
    /// FAILED_PRECONDITION otherwise; a bad spec is INVALID_ARGUMENT or
    /// UNIMPLEMENTED (D11). Returns the new container.
    @discardableResult
    public func create(_ name: ContainerName, spec: ContainerSpec) throws(LmctfyError) -> Container {
        try create(name, spec: spec, virtualHostStdio: nil)
    }

    /// Create, with the stdio of a virtual host's init given (tests and
    /// embedding; by default /dev/null, or the caller's with run_spec
    /// fd_policy INHERIT). A virtual host's init is started after its
    /// cgroups are made; if it cannot start, the container is removed again
    /// and the error (13, INTERNAL, as in the original) names the step and
    /// errno of the failure.
    ///
    /// `origin`: a token the caller keeps, recorded on the container before
    /// it is complete (`Container.origin`): a caller killed part way (the
    /// agent) knows at its next start whether a container of that name is
    /// the one it was making.
    @discardableResult
    public func create(_ name: ContainerName, spec: ContainerSpec, virtualHostStdio: VirtualHostStdio?,
                       origin: String? = nil) throws(LmctfyError) -> Container {
        if name.isRoot { throw .alreadyExists("Can't create existing container \"\(name)\"") }
        return try locked(name, makesTop: name.depth == 1) { lock throws(LmctfyError) in
            // A virtual host is complete (visible) only once its init runs:
            // it was complete before its record was written, and a create
            // killed between the two left an ordinary container, whose
            // `run` ran as root on the host (the virtual host probe).
            try create(name, spec: spec, lock: lock, complete: spec.virtualHost == nil, origin: origin)
            let container = Container(name: name, api: self)
            if spec.virtualHost != nil {
                do throws(LmctfyError) {
                    let pid = try startVirtualHost(name, spec: spec, stdio: virtualHostStdio)
                    // An init killed as it started (a memory limit too small
                    // for it, a signal) closed its status pipe as an exec
                    // does: the create said it succeeded, with init pid 1,
                    // and left a virtual host without init.
                    // The default init is waited for until it waits for
                    // signals, its start done: one killed part way (a limit
                    // too small) was a success or a failure by chance,
                    // depending on when it was looked at (the probe: 3 of 6).
                    let waitsForDefaultInit = (spec.virtualHost?.init_?.initArgv ?? []).isEmpty
                    guard let initPid = try container.runningInit(),
                          Self.isLiveTask(procRoot, initPid) && (!waitsForDefaultInit || Self.awaitStarted(procRoot, initPid)) else {
                        throw LmctfyError(.internal, "Failed to start the init of virtual host \"\(name)\": it (pid \(pid)) "
                                          + "exited as it started\(Self.smallLimitHint(spec))")
                    }
                    try driver.tasksDir(name).setState(.complete)
                } catch {
                    _ = try? removeLeftovers(name)
                    throw error
                }
            }
            return container
        }
    }

    /// Whether a task is alive and not on its way out. A task killed before
    /// its exec is still listed for a moment after its descriptors (the
    /// status pipe) are closed, but PF_EXITING is set before they are
    /// (`/proc/PID/stat` flags; the cgroup v2 guest showed the window).
    static func isLiveTask(_ procRoot: String, _ pid: pid_t) -> Bool {
        guard let fields = Sys.procStatFields(procRoot + "/\(pid)/stat"), fields.count > 6, let flags = UInt64(fields[6]) else { return false }
        return fields[0] != "Z" && fields[0] != "X" && flags & 0x4 == 0  // PF_EXITING
    }

    /// Waits (up to 2 s) until lmctfy-init `pid` waits for signals
    /// (rt_sigtimedwait, its loop): true then, or when it could not be
    /// told (a kernel without /proc/PID/syscall) or the bound passed; false
    /// once it is gone or exiting.
    /// Its liveness is looked at after each read of what it does: a read
    /// that failed because it died (the v2 guest: 1 create in 60 of an init
    /// killed as it started) is then told from a kernel without the file.
    static func awaitStarted(_ procRoot: String, _ pid: pid_t) -> Bool {
        let deadline = MonotonicClock.milliseconds() + 2000
        let path = procRoot + "/\(pid)/syscall"
        while true {
            // The syscall number first (x86_64 128, aarch64 137: rt_sigtimedwait).
            let text = try? Sys.readFile(path)
            guard isLiveTask(procRoot, pid) else { return false }
            if let text {
                if text.split(separator: " ").first.map(String.init) == Self.sigtimedwaitNumber { return true }
            } else if !Sys.exists(path) {
                return true
            }
            if MonotonicClock.milliseconds() >= deadline { return true }
            usleep(200)
        }
    }

    #if arch(x86_64)
    static let sigtimedwaitNumber = "128"
    #else
    static let sigtimedwaitNumber = "137"
    #endif

    /// What may have killed a virtual host's init as it started: a memory
    /// limit too small for it (the kernel's OOM killer says so in its log).
    static func smallLimitHint(_ spec: ContainerSpec) -> String {
        guard let limit = spec.memory?.limit, limit > 0, limit < 16 << 20 else { return "" }
        return " (its memory limit, \(limit) bytes, may be too small for it)"
    }

    /// Create, holding the tree's lock. The container becomes visible
    /// (`exists`, listings) only with its last step, the `complete` mark on
    /// its tasks directory: killed at any instant, a create leaves either
    /// nothing visible or the whole container, and what it left is removed
    /// by the next create or destroy of the tree (the lock's journal, the
    /// `creating` marks).
    /// `complete`: marked complete (visible) at the end; otherwise left
    /// `creating` for the caller to mark once the rest is done.
    private func create(_ name: ContainerName, spec: ContainerSpec, lock: FileLock?, complete: Bool = true,
                        origin: String? = nil) throws(LmctfyError) {
        if try !nameIsFree(name) {
            try removeLeftovers(name)  // of a failed create or destroy
        }
        let (parent, kinds) = try checkPlace(name, spec: spec)
        do {
            try make(name, parent: parent, kinds: kinds, spec: spec, lock: lock, complete: complete, origin: origin)
        } catch where error.code == .alreadyExists {
            // A directory of this name in another hierarchy: lmctfy's
            // leftover (its tasks directory is gone) goes and the create is
            // tried again; anything else is not lmctfy's to touch (6).
            guard try removeLeftovers(name) else { throw error }
            try make(name, parent: parent, kinds: kinds, spec: spec, lock: lock, complete: complete, origin: origin)
        }
    }

    /// What `create` refuses before it makes anything, checked without
    /// making anything or taking the tree's lock (a dry run: the agent's
    /// CheckAdmission): the name is taken, the parent is missing or does
    /// not isolate what the spec names, the spec has a section or a value
    /// this machine refuses. A name with lmctfy's leftovers counts as free
    /// (the create removes them). What only the new directories can tell
    /// (a kernel file a field needs, a cpu mask against the parent's
    /// cpuset) is the create's to find.
    public func checkCreate(_ name: ContainerName, spec: ContainerSpec) throws(LmctfyError) {
        if name.isRoot { throw .alreadyExists("Can't create existing container \"\(name)\"") }
        _ = try nameIsFree(name)
        let (_, kinds) = try checkPlace(name, spec: spec)
        // A directory of the name in another hierarchy that lmctfy did not
        // make: the create's mkdir finds it and refuses (6); the dry run
        // said "admitted" (a probe).
        for d in try driver.plannedDirs(name, kinds: kinds, spec: spec).dropFirst() where try d.state() == .foreign {
            throw .alreadyExists("Can't create container \"\(name)\": \(d.path) exists and was not made by lmctfy")
        }
        for kind in kinds { try handler(kind).checkSpec(spec) }
    }

    /// ALREADY_EXISTS for a container (or a directory lmctfy did not make)
    /// of this name; false when lmctfy's leftovers of a failed create or
    /// destroy are there.
    private func nameIsFree(_ name: ContainerName) throws(LmctfyError) -> Bool {
        let tasks = driver.tasksDir(name)
        switch try tasks.state() {
        case .complete: throw .alreadyExists("Can't create existing container \"\(name)\"")
        case .foreign:
            throw .alreadyExists("Can't create container \"\(name)\": \(tasks.path) exists and was not made by lmctfy")
        case .creating, .destroying: return false
        case .absent: return true
        }
    }

    /// The parent, there and isolating what the spec names, and the spec's
    /// sections this machine takes: the parent and the resources to make.
    private func checkPlace(_ name: ContainerName, spec: ContainerSpec) throws(LmctfyError) -> (ContainerName, [ResourceKind]) {
        guard let parent = name.parent, try exists(parent) else {
            // 9 as in the original (its mkdir failed): 5 would say the new name is missing.
            throw .failedPrecondition("Can't create \"\(name)\": its parent \"\(name.parent!)\" does not exist")
        }
        if spec.virtualHost != nil && name.depth > 1 { throw .unimplemented("Nested Virtual Hosts are not yet supported.") }
        try checkSupported(spec, isUpdate: false)
        let kinds = ResourceKind.allCases.filter { $0.isPresent(in: spec) }
        // A nested container can only isolate what its parent isolates (v1
        // nests directories; v2 enables controllers parent by parent).
        let parentIsolates = try driver.isolated(parent)
        for kind in kinds where !parentIsolates.contains(kind) {
            let message = "Container \"\(parent)\" does not isolate \(kind), so \"\(name)\" cannot isolate it either"
            throw kind == .cpu ? .notFound(message) : .failedPrecondition(message)
        }
        return (parent, kinds)
    }

    /// Makes the container.
    private func make(_ name: ContainerName, parent: ContainerName, kinds: [ResourceKind], spec: ContainerSpec,
                      lock: FileLock?, complete: Bool, origin: String?) throws(LmctfyError) {
        let made = MadeDirs(lock: lock)
        do throws(LmctfyError) {
            if let lock {
                do { try lock.append("boot \(ContainerLock.bootId)\ncreate \(name)") } catch {
                    throw error.cgroup(.failedPrecondition, "Failed to journal the create")
                }
            }
            var dirs = try driver.makeDirs(name, parent: parent, kinds: kinds, spec: spec, made: made)
            dirs.isNew = true
            // Every directory is marked `creating` now: the marks, not the
            // journal, say what a killed create left.
            if let lock {
                do { try lock.clear() } catch { throw error.cgroup(.failedPrecondition, "Failed to clear the lock journal") }
            }
            for kind in kinds {
                let h = try handler(kind)
                try h.validate(spec, dirs: dirs)
                try h.prepare(dirs: dirs)
                try h.apply(spec, policy: .replace, dirs: dirs)
            }
            if spec.owner != nil || spec.ownerGroup != nil {
                try chownContainer(name, spec: spec, lock: lock)
            }
            if let origin { try driver.tasksDir(name).setRecord(.origin, origin) }
            if complete { try driver.tasksDir(name).setState(.complete) }
        } catch {
            // Undo in reverse. A directory that cannot be removed now (a
            // fault) keeps its `creating` mark and is removed by the next
            // create or destroy of the name; the journal stays for one whose
            // mark could not be written.
            var undone = true
            for dir in made.dirs.reversed() where (try? dir.remove()) == nil { undone = false }
            if undone { try? lock?.clear() }
            // What the create enabled in its parent for it (v2), when the
            // parent has no other subcontainer.
            if undone { try? driver.releaseControllers(parent) }
            throw error
        }
    }

    /// owner / owner_group: hand the container's directories and task files
    /// to a user and group (delegation). An unset id stays as it is.
    /// A top-level container's lock file goes to the owner too, so that the
    /// owner's creates and destroys below it are serialised and journaled.
    func chownContainer(_ name: ContainerName, spec: ContainerSpec, lock: FileLock?) throws(LmctfyError) {
        let uid = spec.owner.map { uid_t(truncatingIfNeeded: $0) } ?? uid_t.max
        let gid = spec.ownerGroup.map { gid_t(truncatingIfNeeded: $0) } ?? gid_t.max
        let (dirs, files) = try driver.delegated(name)
        do throws(LmctfyError) {
            if name.depth == 1, let lock {
                do { try lock.chown(uid: uid, gid: gid) } catch { throw error.cgroup(.failedPrecondition, "Failed to chown the lock file") }
            }
            for d in dirs {
                try d.chown(uid: uid, gid: gid)
                for f in files where try d.has(f) { try d.chown(f, uid: uid, gid: gid) }
            }
        } catch {
            throw LmctfyError(error.code, "Failed to chown container \"\(name)\": \(error.message)", errno: error.errno)
        }
    }

    /// Sections lmctfy cannot enforce are refused, never dropped (D11).
    func checkSupported(_ spec: ContainerSpec, isUpdate: Bool) throws(LmctfyError) {
        // An id chown(2) takes as itself: not truncated, and not -1 ("unchanged").
        for (field, id) in [("owner", spec.owner), ("owner_group", spec.ownerGroup)] {
            if let id, id < 0 || id >= Int64(UInt32.max) {
                throw .invalidArgument("\(field) \(id) is out of range (a \(field == "owner" ? "uid" : "gid") is 0 to \(UInt32.max - 1))")
            }
        }
        if spec.childrenLimit != nil {
            throw .unimplemented("children_limit is not supported by this kernel (it needs cgroup.children_limit)")
        }
        if spec.network != nil { throw .unimplemented("network isolation is not implemented yet") }
        try checkVirtualHost(nil, spec, isUpdate: isUpdate)
        if spec.securitySpec != nil { throw .unimplemented("security_spec (AppArmor) is not implemented") }
        for kind in ResourceKind.allCases where kind.isPresent(in: spec) {
            if try !driver.available(kind) {
                throw .unimplemented("\(kind) cannot be isolated on this machine (its cgroup controller is not available)")
            }
        }
    }

    func handler(_ kind: ResourceKind) throws(LmctfyError) -> any ResourceHandler {
        guard let h = handlers[kind] else { throw .unimplemented("\(kind) is not implemented") }
        return h
    }
}
