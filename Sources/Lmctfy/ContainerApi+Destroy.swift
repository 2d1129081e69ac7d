// Destroying containers: recursive, children first, processes killed; the
// root never (D7); nothing lmctfy did not make.
import Glibc
import LmctfyProto
import LmctfySystem

extension ContainerApi {
    /// Destroys a container and everything below it, children first, killing
    /// their processes. Stops at the first failure; what was destroyed stays
    /// destroyed, and what is left can be destroyed again. The root cannot
    /// be destroyed (D7).
    ///
    /// Only directories lmctfy made are removed: a directory below the
    /// container that lmctfy did not make is FAILED_PRECONDITION before
    /// anything is touched. A name with no visible container but with
    /// lmctfy's leftovers (an interrupted create or destroy, in any
    /// hierarchy, with or without its tasks directory) has them removed;
    /// NOT_FOUND only when there is nothing of lmctfy's at all. Returns
    /// the subcontainers destroyed with it, deepest first.
    @discardableResult
    public func destroy(_ name: ContainerName) throws(LmctfyError) -> [ContainerName] {
        guard !name.isRoot else { throw .failedPrecondition("Destroying the root container \"/\" is not allowed") }
        // An interrupted create of this name undone as the lock is taken:
        // its leftovers were there, and are gone (not NOT_FOUND).
        var undone = false
        return try locked(name, destroysTop: true, undone: { undone = undone || $0 == name }) { lock throws(LmctfyError) -> [ContainerName] in
            // `exists` is this very record being `complete` (one read).
            let tasksState = try driver.tasksDir(name).state()
            let visible = tasksState == .complete
            if !visible && tasksState == .foreign {
                throw .notFound("Container \"\(name)\" does not exist (\(driver.tasksDir(name).path) was not made by lmctfy)")
            }
            var subs: [ContainerName] = []
            try collectOwn(name, into: &subs)
            // A caller inside the tree is refused before anything is
            // touched: the kill of its own container refused it only after
            // every subcontainer before it was destroyed, its processes
            // killed (a probe: `run /t lmctfy destroy -f /t` destroyed
            // /t's subcontainers, then exited 9).
            try Container(name: name, api: self).refuseIfCallerInside("destroyed")
            try refuseForeignInOtherHierarchies([name] + subs, destroying: name)
            // Processes below a paused ancestor cannot die (v1) or the
            // container cannot be thawed after its kill: refused before
            // anything is destroyed. Paused containers inside the tree are
            // resumed first, outermost first, or the kill of one below
            // another could not thaw it.
            // Ancestors first: a top-level container has none to read, so a
            // plain destroy reads nothing more than it did.
            let tree = [name] + subs
            let paused = try Container(name: name, api: self).pausedAncestors()
            if !paused.isEmpty, try anyHasTasks(tree) {
                try Container(name: name, api: self).refuseUnderPausedAncestors("destroyed", paused)
            }
            try withTreeResumed(tree, journal: lock) { gone throws(LmctfyError) in
                for (i, sub) in subs.reversed().enumerated() {
                    Progress.report("\(name): destroying \(sub) (\(i + 1) of \(subs.count + 1) containers)")
                    _ = try destroyOne(sub)
                    gone.insert(sub)
                }
                Progress.report("\(name): destroying \(name)\(subs.isEmpty ? "" : " (\(subs.count + 1) of \(subs.count + 1) containers)")")
                guard try destroyOne(name) || visible || undone else { throw .notFound("Container \"\(name)\" does not exist") }
            }
            // Best effort: the container is gone whatever this says (a
            // parent left enabling controllers refuses processes on v2,
            // which a run in it then reports).
            if let parent = name.parent { try? driver.releaseControllers(parent) }
            return subs.reversed()
        }
    }

    /// Whether any of the containers has a process (one gone meanwhile has none).
    func anyHasTasks(_ names: [ContainerName]) throws(LmctfyError) -> Bool {
        for n in names {
            do {
                if try !driver.tasksDir(n).readPids("cgroup.procs").isEmpty { return true }
            } catch where error.code == .notFound {
                continue
            }
        }
        return false
    }

    /// Runs `body` with the containers of `names` (a tree, its top first)
    /// that are paused themselves resumed, outermost first, so that the
    /// kill of one below another can thaw it; a tree of one container is
    /// not (it thaws itself in its kill). `body` puts in `done` each
    /// container it has finished with (destroyed, emptied); if it fails,
    /// those it resumed and had not finished are paused again: what is
    /// left is as it was (a destroy or `killall -r` that stopped part way
    /// left them running).
    ///
    /// `journal`: the tree's lock, held across `body` (a destroy): each
    /// container is journaled before it is resumed, and the journal cleared
    /// once `body` has finished or they are paused again. A destroy killed
    /// part way (SIGKILL) leaves the lines, and whoever locks the tree next
    /// pauses again those still there (`recover`): they were left running.
    func withTreeResumed<T>(_ names: [ContainerName], journal: FileLock? = nil,
                            _ body: (_ done: inout Set<ContainerName>) throws(LmctfyError) -> T) throws(LmctfyError) -> T {
        let thawed = names.count > 1 ? try resumeTree(names, journal: journal) : []
        var done = Set<ContainerName>()
        let result: T
        do {
            result = try body(&done)
        } catch {
            pauseAgain(thawed.filter { !done.contains($0) })
            if !thawed.isEmpty { try? journal?.clear() }
            throw error
        }
        if !thawed.isEmpty, let journal {
            do { try journal.clear() } catch { throw error.cgroup(.failedPrecondition, "Failed to clear the lock journal") }
        }
        return result
    }

    /// Asks the kernel to thaw each of `names` (parents before children)
    /// that is paused itself; one gone meanwhile is skipped. Does not wait:
    /// each kill that follows freezes, kills and thaws, and waits for that.
    /// Returns those it thawed; if it fails part way, pauses them again.
    /// Each is journaled first in `journal` (see `withTreeResumed`).
    private func resumeTree(_ names: [ContainerName], journal: FileLock?) throws(LmctfyError) -> [ContainerName] {
        var thawed: [ContainerName] = []
        for n in names {
            do throws(LmctfyError) {
                if try driver.isPausedItself(n) {
                    if let journal {
                        do {
                            try journal.append((thawed.isEmpty ? "boot \(ContainerLock.bootId)\n" : "") + "resumed \(n)")
                        } catch {
                            throw error.cgroup(.failedPrecondition, "Failed to journal the resume of \"\(n)\"")
                        }
                    }
                    try driver.requestFrozen(n, false)
                    thawed.append(n)
                }
            } catch where error.code == .notFound {
                continue
            } catch {
                pauseAgain(thawed)
                if !thawed.isEmpty { try? journal?.clear() }
                throw error
            }
        }
        return thawed
    }

    /// Undoes `resumeTree` for `names` (parents first), on the path of a
    /// destroy or kill that failed part way: best effort, not waited for
    /// (the failure is what the caller reports); one gone meanwhile is
    /// skipped.
    private func pauseAgain(_ names: [ContainerName]) {
        for n in names { try? driver.requestFrozen(n, true) }
    }

    /// Removes what lmctfy left of a container that is not visible (see
    /// `destroy`); true when there was something. The caller holds the lock.
    @discardableResult
    func removeLeftovers(_ name: ContainerName) throws(LmctfyError) -> Bool {
        guard try driver.tasksDir(name).state() != .foreign else { return false }
        var subs: [ContainerName] = []
        try collectOwn(name, into: &subs)
        for sub in subs.reversed() { _ = try destroyOne(sub) }
        return try destroyOne(name)
    }

    /// Every directory below `name` in the tasks hierarchy, depth first,
    /// whatever lmctfy state it is in; one lmctfy did not make is refused.
    private func collectOwn(_ name: ContainerName, into out: inout [ContainerName]) throws(LmctfyError) {
        let dir = driver.tasksDir(name)
        let children: [String]
        do { children = try dir.subdirectories() } catch where error.code == .notFound { return }
        for child in children {
            let d = dir.child(child)
            guard try d.state().isLmctfy, let sub = try? ContainerName.resolve(child, relativeTo: name) else {
                if try d.state() == .absent { continue }  // gone meanwhile
                throw Self.foreign(d, inside: name)
            }
            out.append(sub)
            try collectOwn(sub, into: &out)
        }
    }

    /// The refusal of a destroy around a cgroup lmctfy did not make.
    private static func foreign(_ d: CgroupDir, inside name: ContainerName) -> LmctfyError {
        // (Its name is another program's: escaped.)
        .failedPrecondition("\(ContainerName.printable(d.path, limit: .max)) was not made by lmctfy: lmctfy will not destroy \"\(name)\" around it")
    }

    /// `collectOwn` for the other hierarchies: a cgroup lmctfy did not make
    /// below one of the tree's directories there (the kernel would refuse
    /// that directory's rmdir, EBUSY) is refused now, naming it, before any
    /// process is killed or any directory removed. It was found only at the
    /// rmdir, after the kill: the container was left half removed and
    /// invisible (a probe). One stat per directory; a listing only where
    /// its link count shows subdirectories.
    private func refuseForeignInOtherHierarchies(_ tree: [ContainerName], destroying name: ContainerName) throws(LmctfyError) {
        let tasksMount = driver.tasksDir(name).mount
        for n in tree {
            for candidates in try driver.removalGroups(n) {
                for d in candidates where d.mount != tasksMount && d.mayHaveSubdirectories() {
                    guard try d.state().isLmctfy else { continue }  // not the container's: not removed either
                    let children: [String]
                    do { children = try d.subdirectories() } catch where error.code == .notFound { continue }
                    for child in children {
                        let c = d.child(child)
                        let state = try c.state()
                        guard !state.isLmctfy && state != .absent else { continue }
                        throw Self.foreign(c, inside: name)
                    }
                }
            }
        }
    }

    /// rmdir of one of the container's directories. EBUSY with tasks in
    /// it: they joined after the kill (a run racing the destroy; they are
    /// in this container's own directory, so its own): killed, and the
    /// rmdir tried again, for up to ~100 ms. A destroy that failed there
    /// left the container half removed and invisible.
    private func removeLateJoiners(_ d: CgroupDir) throws(LmctfyError) -> Bool {
        var tries = 0
        while true {
            do {
                return try d.remove()
            } catch {
                tries += 1
                guard error.errno == EBUSY, tries <= 100,
                      let late = try? d.readPids("cgroup.procs"), !late.isEmpty || tries > 1 else { throw error }
                for pid in late { try? Sys.kill(pid, SIGKILL, faults: faults) }
                usleep(1000)
            }
        }
    }

    /// Kills the tasks of one container and removes its directories that
    /// lmctfy made (any state); true when it found any.
    private func destroyOne(_ name: ContainerName) throws(LmctfyError) -> Bool {
        let tasks = driver.tasksDir(name)
        let tasksState = try tasks.state()
        if tasksState.isLmctfy {
            do {
                try Container(name: name, api: self).killTasks()
            } catch where error.code == .notFound {
                return false  // already gone
            }
            try removeVirtualHostLinks(name)
            // From here the container is invisible: a destroy that stops
            // part way leaves no half container to list, update or run in.
            if tasksState != .destroying { try tasks.setState(.destroying) }
        }
        // rmdir every place the container may have a directory that lmctfy
        // made; a hierarchy's later candidates (cpu's /batch) are not tried
        // once one went. The tasks directory goes last, so a destroy that
        // failed part way can be repeated.
        var found = tasksState.isLmctfy
        for candidates in try driver.removalGroups(name) {
            for d in candidates {
                do {
                    let state = d == tasks ? tasksState : try d.state()
                    guard state.isLmctfy else { continue }
                    found = true
                    if try removeLateJoiners(d) { break }
                } catch {
                    throw LmctfyError(error.code == .permissionDenied ? .permissionDenied : .failedPrecondition,
                                      "Unable to delete directory of container \"\(name)\": \(error.message)", errno: error.errno)
                }
            }
        }
        return found
    }
}
