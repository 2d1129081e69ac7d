// Serialising create, update and destroy across processes, and finishing
// what a killed one left: one flock per top-level container, whose file is
// also the journal of the create in progress.
//
// One lock per top-level container (not per name): a create touches its
// parent (v2 enables controllers there, v1 nests cpu under it), and a
// destroy walks every descendant; one lock per tree covers all of that with
// a single flock and no lock ordering. Trees are independent, so unrelated
// containers never wait for each other.
import Glibc
import LmctfyProto
import LmctfySystem

enum ContainerLock {
    /// This boot of the machine (the kernel's random boot id), written at the
    /// head of every create's journal. A journal of another boot (kept where
    /// /run is on a disk) describes directories that went with that boot,
    /// cgroupfs keeping nothing across a reboot: it is discarded without
    /// undoing anything, since a cgroup of the same name now is someone
    /// else's. "" when the kernel does not say.
    static let bootId: String = {
        ((try? Sys.readFile("/proc/sys/kernel/random/boot_id")) ?? "").trimmingWhitespace
    }()

    /// Locks the tree `name` is in (nil for `/`, and for an unprivileged
    /// caller that may not use the lock file: see below). Waits for the
    /// holder; released when the FileLock goes, or when the process dies.
    /// `makesTop`: a create of the top-level container, whose lock file is
    /// usually not there yet (a spare is put there instead of making one:
    /// SpareFiles); the file goes back to the spares when the tree goes.
    static func acquire(_ name: ContainerName, access: CgroupAccess, makesTop: Bool = false) throws(LmctfyError) -> FileLock? {
        guard let root = access.lockRoot, let top = name.components.first else { return nil }
        let path = root + "/" + top
        let spares = SpareFiles.pool(for: root)
        do {
            return try FileLock.acquire(path, faults: access.faults, spares: spares, fresh: makesTop)
        } catch where error.errno == ENOENT {
            try makeRoot(root, faults: access.faults)
        } catch where (error.errno == EACCES || error.errno == EPERM) && geteuid() != 0 {
            // Lock files are root's (0600) except a delegated tree's, which
            // belongs to its owner. Another user works unlocked: cgroupfs
            // refuses it anything it was not delegated anyway.
            return nil
        } catch {
            throw error.cgroup(.failedPrecondition, "Failed to lock container tree \"/\(top)\"")
        }
        do {
            return try FileLock.acquire(path, faults: access.faults, spares: spares, fresh: makesTop)
        } catch {
            throw error.cgroup(.failedPrecondition, "Failed to lock container tree \"/\(top)\"")
        }
    }

    /// mkdir -p of the lock directory (0755: only root makes lock files).
    private static func makeRoot(_ root: String, faults: FaultPlan?) throws(LmctfyError) {
        var path = ""
        for part in root.split(separator: "/") {
            path += "/" + part
            do { try Sys.mkdir(path, faults: faults) } catch where error.errno == EEXIST {} catch {
                throw error.cgroup(.failedPrecondition, "Failed to make the lock directory")
            }
        }
    }
}

extension ContainerApi {
    /// Runs `body` holding the lock of `name`'s tree, after undoing what an
    /// interrupted create in that tree left (its journal).
    /// The lock file goes with its tree, so /run keeps no file per name
    /// ever used: it goes while still held when `body` destroyed the tree's
    /// top container (`destroysTop`), or when `body` failed and the top
    /// container turns out not to exist (a failed create, a verb on a name
    /// that never existed) with no interrupted create journaled. As root it
    /// goes, emptied, into a bounded pool of spares that the next create of
    /// a tree (`makesTop`) takes from (SpareFiles). Waiters start again on
    /// a new file (`FileLock.acquire`).
    /// `undone` hears of the container whose interrupted create was undone
    /// (when one was).
    func locked<T>(_ name: ContainerName, destroysTop: Bool = false, makesTop: Bool = false,
                   undone: ((ContainerName) -> Void)? = nil,
                   _ body: (FileLock?) throws(LmctfyError) -> T) throws(LmctfyError) -> T {
        let lock = try ContainerLock.acquire(name, access: mounts.access, makesTop: makesTop)
        defer { lock?.release() }
        if let made = try recover(lock) { undone?(made) }
        let result: T
        do {
            result = try body(lock)
        } catch {
            // Best effort, on a path that reports an error anyway: a probe
            // that fails keeps the file. A top that is not lmctfy's (a
            // cgroup someone else made: a create or destroy of its name is
            // refused) has no tree to lock either: its file was left behind,
            // one per name tried.
            if let lock, let top = name.components.first,
               let state = try? driver.tasksDir(ContainerName(trusted: [top])).state(), !state.isLmctfy,
               (try? lock.journal())?.isEmpty == true {
                try? lock.remove()
            }
            throw error
        }
        if destroysTop, name.depth == 1, let lock {
            do { try lock.remove() } catch {
                throw error.cgroup(.failedPrecondition, "Destroyed \"\(name)\", but failed to remove its lock file")
            }
        }
        return result
    }

    /// Finishes, in every tree whose lock journal is not empty (or in the
    /// tree of `within` alone), what a killed create, update, destroy or
    /// enter left: what the tree's next create or destroy would do, done
    /// now. For a daemon's start (the agent), so that a create cut short by
    /// its death leaves no half-made directories (`creating`: invisible to
    /// list and detect) until someone happens to touch the tree. A journal
    /// whose holder is alive waits for it (its work is short), then is
    /// empty. Returns the containers whose interrupted creates were undone,
    /// and what could not be finished (each a line for the log).
    public func recoverInterruptedTrees(within: ContainerName = .root) -> (undone: [ContainerName], failed: [String]) {
        guard let root = mounts.access.lockRoot, let names = try? Sys.directoryEntries(root) else { return ([], []) }
        var undone: [ContainerName] = [], failed: [String] = []
        for file in names {
            // A tree's file is named as its top container (".spare" and
            // anything else no container could be named are not trees).
            guard let top = try? ContainerName.resolve("/" + file, relativeTo: .root), top.depth == 1,
                  within.isRoot || within.components.first == file,
                  let st = try? Sys.linkStatus(root + "/" + file), (st.st_mode & S_IFMT) == S_IFREG, st.st_size > 0
            else { continue }
            do {
                try locked(top, undone: { undone.append($0) }) { _ throws(LmctfyError) in }
            } catch {
                failed.append("tree \(top): \(error)")
            }
        }
        return (undone, failed)
    }

    /// The journal of a create says which container it was making and,
    /// before each mkdir, the directory (and after one that found the
    /// directory there already, `kept` and the directory). Left non-empty, it belonged to a
    /// process that died (we hold the lock now): unless that container was
    /// completed (the process died after its last step), every directory
    /// listed is removed, last made first. A destroy's journal names the
    /// paused containers it resumed (`withTreeResumed`): left behind, the
    /// destroy was killed part way, and each of them still there is paused
    /// again (best effort: one that cannot be does not keep the tree
    /// locked out). Returns the container whose directories were removed.
    /// The journal lines of an update of `name`: the spec before it (the
    /// resources it writes, as read back) and the exact previous text of
    /// every one-line file it writes, for `recover` to put back.
    static func updateJournal(_ name: ContainerName, before: ContainerSpec, saved: [CgroupWrite]) -> String {
        let spec = (try? before.serializedBytes()) ?? []
        var lines = "boot \(ContainerLock.bootId)\nupdate \(name) \(Sys.hex(spec))"
        for w in saved { lines += "\nrestore \(w.dir.mount)\t\(w.dir.segments.joined(separator: "/"))\t\(w.file)\t\(w.value)" }
        return lines
    }

    /// Puts back what an update changed: `before` (the spec as read back
    /// before it) for `kinds`, then the exact previous text of each
    /// one-line file, last first. Whether all of it went back. What a
    /// refused write does in the update, and `recover` after a killed one
    /// (`dirs` nil: they could not be looked up, the files alone).
    func putBack(_ before: ContainerSpec, kinds: [ResourceKind], saved: [CgroupWrite], dirs: ResourceDirs?) -> Bool {
        var restored = true
        for kind in kinds {
            guard let dirs else { restored = false; break }
            do { try handler(kind).apply(before, policy: .replace, dirs: dirs) } catch { restored = false }
        }
        for w in saved.reversed() {
            do { try w.dir.write(w.file, w.value) } catch { restored = false }
        }
        return restored
    }

    /// An update's journal (`updateJournal`) left behind: it was killed
    /// part way. Puts the previous spec back (`putBack`). Best effort: what
    /// cannot be put back does not keep the tree locked out.
    private func undoUpdate(_ name: ContainerName, specHex: Substring, restores: [CgroupWrite]) {
        guard (try? exists(name)) == true else { return }
        var bytes: [UInt8] = []
        var i = specHex.startIndex
        while i < specHex.endIndex, let j = specHex.index(i, offsetBy: 2, limitedBy: specHex.endIndex), let b = UInt8(specHex[i..<j], radix: 16) {
            bytes.append(b)
            i = j
        }
        let resolved = try? driver.resolved(name)
        let before = (try? ContainerSpec(serializedBytes: bytes)) ?? ContainerSpec()
        let kinds = resolved.map { $0.isolated.sorted().filter { $0.isPresent(in: before) } } ?? []
        _ = putBack(before, kinds: kinds, saved: restores, dirs: resolved?.dirs)
    }

    private func recover(_ lock: FileLock?) throws(LmctfyError) -> ContainerName? {
        guard let lock else { return nil }
        let text: String
        do { text = try lock.journal() } catch { throw error.cgroup(.failedPrecondition, "Failed to read the lock journal") }
        if text.isEmpty { return nil }
        var dirs: [CgroupDir] = []
        var complete = false
        var making: ContainerName?
        var resumed: [ContainerName] = []
        var updating: (name: ContainerName, spec: Substring)?
        var restores: [CgroupWrite] = []
        var entering: [(name: ContainerName, tid: pid_t, start: Substring)] = []
        // A journal names only its own tree: lines about another are not
        // this lock's to act on (and a whole journal that names another
        // tree is dropped without undoing anything).
        let top = lock.path.split(separator: "/").last.map(String.init) ?? ""
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: " ", maxSplits: 1)
            guard parts.count == 2 else { continue }
            if parts[0] == "boot" && parts[1] != ContainerLock.bootId {
                // Left before a reboot: what it made is gone, and a cgroup of
                // the same name now is someone else's.
                dirs = []
                resumed = []
                updating = nil
                entering = []
                complete = true
                break
            }
            if parts[0] == "resumed", let name = try? ContainerName.resolve(String(parts[1]), relativeTo: .root),
               !name.isRoot, name.components.first == top {
                resumed.append(name)
            } else if parts[0] == "create", let name = try? ContainerName.resolve(String(parts[1]), relativeTo: .root) {
                guard name.components.first == top else {
                    dirs = []
                    complete = true
                    break
                }
                complete = try exists(name)
                making = name
            } else if parts[0] == "update" {
                let words = parts[1].split(separator: " ", maxSplits: 1)
                if words.count == 2, let name = try? ContainerName.resolve(String(words[0]), relativeTo: .root),
                   !name.isRoot, name.components.first == top {
                    updating = (name, words[1])
                }
            } else if parts[0] == "enter" {
                // "<name> <tid> <start time>" (`Container.enter`).
                let words = parts[1].split(separator: " ")
                if words.count == 3, let name = try? ContainerName.resolve(String(words[0]), relativeTo: .root),
                   !name.isRoot, name.components.first == top, let tid = pid_t(words[1]), tid > 0 {
                    entering.append((name, tid, words[2]))
                }
            } else if parts[0] == "restore" {
                // "<mount>\t<a/b>\t<file>\t<value>", in this tree only.
                let f = parts[1].split(separator: "\t", maxSplits: 3, omittingEmptySubsequences: false)
                if f.count == 4, let d = journalDir(f[0] + "\t" + f[1]), d.segments.first == top,
                   !f[2].isEmpty, !f[2].contains("/"), f[2] != "..", f[2] != "." {
                    restores.append(CgroupWrite(d, String(f[2]), String(f[3])))
                }
            } else if parts[0] == "mkdir", let d = journalDir(String(parts[1])), d.segments.first == top {
                dirs.append(d)
            } else if parts[0] == "kept", let d = journalDir(String(parts[1])) {
                // Its mkdir found it there: not the create's to remove.
                dirs.removeAll { $0 == d }
            }
        }
        var removed = false
        if !complete {
            for d in dirs.reversed() {
                do { removed = try d.remove() || removed } catch {
                    throw LmctfyError(error.code, "Failed to clean up after an interrupted create: \(error.message)", errno: error.errno)
                }
            }
        }
        for name in resumed where (try? driver.isPausedItself(name)) == false && (try? exists(name)) == true {
            try? driver.requestFrozen(name, true)
        }
        // Only a journal as privileged as we are: a delegated tree's lock
        // file is its owner's, whose lines would have root write that
        // tree's limits (which the owner may not).
        if let u = updating, lock.isOwnedBySelf { undoUpdate(u.name, specHex: u.spec, restores: restores) }
        for e in entering where lock.isOwnedBySelf && (try? exists(e.name)) == true {
            Container(name: e.name, api: self).completeEnter(e.tid, start: e.start)
        }
        do { try lock.clear() } catch { throw error.cgroup(.failedPrecondition, "Failed to clear the lock journal") }
        return removed ? making : nil
    }

    /// A journal line naming a directory: "<mount>\t<a/b>", accepted only
    /// under one of this machine's mounts and with valid name segments.
    private func journalDir(_ text: String) -> CgroupDir? {
        let parts = text.split(separator: "\t", maxSplits: 1, omittingEmptySubsequences: false)
        guard parts.count == 2 else { return nil }
        let mount = String(parts[0])
        let known = Set(mounts.v1.values).union(mounts.unified.map { [$0] } ?? [])
        guard known.contains(mount),
              let name = try? ContainerName.resolve("/" + parts[1], relativeTo: .root), !name.isRoot,
              name.path == "/" + parts[1]
        else { return nil }
        return CgroupDir(mount: mount, segments: name.components, access: mounts.access)
    }
}

/// The directories a create has made so far: each is journaled before its
/// mkdir and marked lmctfy's (`creating`) right after it. Once all are made
/// the marks say what is lmctfy's and the journal is cleared.
final class MadeDirs {
    private(set) var dirs: [CgroupDir] = []
    private let lock: FileLock?

    init(lock: FileLock?) { self.lock = lock }

    /// A directory that was there already (ALREADY_EXISTS: someone else's,
    /// made before the mkdir) gets a `kept` line after its `mkdir` line, so
    /// that whoever finishes the create after a crash, or after a failed
    /// create whose undo could not remove everything (its journal stays),
    /// does not remove it.
    func make(_ d: CgroupDir) throws(LmctfyError) {
        let line = "\(d.mount)\t\(d.segments.joined(separator: "/"))"
        if let lock {
            do { try lock.append("mkdir " + line) } catch {
                throw error.cgroup(.failedPrecondition, "Failed to journal the create")
            }
        }
        do {
            try d.make()
        } catch where error.code == .alreadyExists {
            let exists = error
            if let lock {
                do { try lock.append("kept " + line) } catch {
                    throw LmctfyError(exists.code, "\(exists.message) (and journaling that it is not this create's failed: \(error))",
                                      errno: exists.errno)
                }
            }
            throw exists
        }
        dirs.append(d)
        try d.setState(.creating)
    }
}
