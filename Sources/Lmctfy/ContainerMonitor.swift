// Watching every container of the machine through few descriptors, for an
// event loop (the agent's hub, issue #11). One inotify descriptor carries
// every directory watch; on v1 each container with its own memory cgroup
// adds two eventfds (OOM and pressure), the only v1 notifications that
// inotify cannot give, and the OOM one an epoll and a timer (OomControlSource):
// four descriptors. Past half the open file limit, its OOM kill counter is
// read on the caller's timer instead (`readCounters`).
//
//                  v1                                    v2
//  created         IN_CREATE + IN_ATTRIB (lmctfy's        the same
//  destroyed       `complete` record) on the tasks dir,
//                  IN_DELETE on its parent
//  freezer         IN_MODIFY freezer.state (a write)      IN_MODIFY cgroup.events (frozen)
//  empty           -- (the agent's reconcile)             IN_MODIFY cgroup.events (populated)
//  OOM             eventfd on memory.oom_control          IN_MODIFY memory.events (oom_kill)
//  pressure        eventfd on memory.pressure_level       IN_MODIFY memory.events (high)
//                  (medium)
//  spec written    IN_MODIFY on any other file of any of the container's
//                  directories (the caller compares the spec it knew)
//
// The monitor reports what may have changed; the caller reads the state
// (exists? frozen? the spec?) and decides whether it is news. Watches are
// added from the directories found, so a directory made before its parent's
// watch saw it is found by the scan that follows the parent's watch.
// The monitor watches from a root (the machine's, or a ContainerScope's):
// that root's own directories give only its subcontainers, as "/" does.
import CLmctfyShims
import Glibc
import LmctfySystem

/// Not thread-safe: one thread (the agent's loop) drives it.
public final class ContainerMonitor {
    /// What one of the monitor's eventfds reports.
    public enum Pressure: Sendable {
        case oom
        case pressure
    }

    /// What a change of a state file means.
    public enum StateFile: Sendable {
        /// v1 freezer.state.
        case freezer
        /// v2 cgroup.events: populated and frozen.
        case cgroupEvents
        /// v2 memory.events: oom_kill and high.
        case memoryEvents
    }

    /// Something that may have changed; the caller looks.
    public enum Change: Equatable, Sendable {
        /// A directory appeared or its lmctfy record changed: does the
        /// container exist now?
        case present(ContainerName)
        /// Its tasks directory is gone.
        case gone(ContainerName)
        /// Its freezer state may have changed.
        case freezer(ContainerName)
        /// Whether it has processes may have changed.
        case populated(ContainerName)
        /// One of its resource files was written.
        case spec(ContainerName)
        /// The kernel's OOM killer killed in it (count: how many events).
        case oom(ContainerName, Int)
        /// Its memory is under pressure.
        case memoryPressure(ContainerName, Int)

        /// The container the change is about.
        public var container: ContainerName {
            switch self {
            case .present(let n), .gone(let n), .freezer(let n), .populated(let n), .spec(let n): n
            case .oom(let n, _), .memoryPressure(let n, _): n
            }
        }
    }

    /// One eventfd registration; the caller polls `fd` and calls `collect`
    /// when it is readable, and drops the object (closing the fd) only once
    /// it no longer polls it.
    public final class EventFd {
        public let container: ContainerName
        public let kind: Pressure
        private let source: any EventSource
        public var fd: Int32 { source.fd }

        init(container: ContainerName, kind: Pressure, source: any EventSource) {
            self.container = container
            self.kind = kind
            self.source = source
        }

        /// The change it reports, or nil (nothing pending, or the container
        /// went: its removal signals the eventfd too).
        public func collect() -> Change? {
            guard let n = try? source.collect(), n > 0 else { return nil }
            return kind == .oom ? .oom(container, n) : .memoryPressure(container, n)
        }
    }

    private struct Entry {
        var wds: [Int32] = []
        var eventfds: [EventFd] = []
        var plan: MonitorPlan
        /// The container existed when last watched: its other directories
        /// and eventfds are watched too.
        var complete = false
        /// v2 memory.events counters last seen.
        var oomKills: Int64 = 0
        var high: Int64 = 0
        /// Its tasks directory's inode when the watch began: one removed
        /// and made again under its name is another container.
        var identity: UInt64?
        /// v1, its OOM eventfd not to be had (the descriptor ceiling): its
        /// OOM kill counter as last read by `readCounters` on the caller's
        /// timer (nil: evented, or nothing to count).
        var polledKills: Int64?
    }

    private let api: ContainerApi
    /// Where watching starts: only its subcontainers are reported.
    public let root: ContainerName
    /// The one inotify descriptor: poll it, then call `readInotify`.
    public let inotifyFd: Int32
    private var entries: [ContainerName: Entry] = [:]
    /// A container inotify could not watch (the watch limit), whose OOM
    /// kills are watched all the same (without, they were never events).
    /// Handed to its entry if it is watched later (nothing counted twice),
    /// given back by `unwatch`.
    private struct Unwatched {
        /// Its tasks directory's inode when it was registered: one removed
        /// and made again under its name is another container
        /// (`isReplaced`; its old eventfds are dead, and were kept).
        var identity: UInt64?
        /// v1: its OOM eventfds, which need no inotify watch.
        var eventfds: [EventFd] = []
        /// v2: its memory.events counters (OOM kills, `high`) as last read
        /// by `readCounters` on the caller's timer, a change of that file
        /// seen through inotify being v2's only word of an OOM kill.
        var counters: (oomKills: Int64, high: Int64)?
    }
    private var unwatched: [ContainerName: Unwatched] = [:]
    /// Watch descriptor → (container, whether it is the tasks directory).
    private var byWd: [Int32: (name: ContainerName, tasks: Bool)] = [:]
    private var buffer = [UInt8](repeating: 0, count: 65536)
    /// Told (a line for the log) when a container cannot be watched for a
    /// reason other than its going: the host's inotify watch limit
    /// (fs.inotify.max_user_watches, ENOSPC), the open file limit (an OOM
    /// eventfd, EMFILE). It skipped them silently: the reconcile still
    /// finds such a container's changes, but not its OOMs.
    public var onWatchFailure: ((String) -> Void)?
    /// An OOM eventfd whose descriptor number reaches this is closed again
    /// (half the open file limit: so many descriptors are in use): the
    /// rest stays free for clients, snapshots, cgroup files and the stats
    /// sampler (a quarter of the limit). The eventfds of 20 containers
    /// took every descriptor of an agent under a limit of 64, which then
    /// refused every client without a word (a probe).
    var eventfdCeiling = Int32(clamping: max(16, min(Sys.fileLimit, 1 << 30) / 2))
    /// Tests: at most this many inotify watches, as if the kernel's limit
    /// were reached there (ENOSPC), so that the monitor's ways past the
    /// limit run in-process, on either cgroup version.
    var watchBudget: Int?

    /// A monitor of what is below `root` (the machine's root by default).
    /// INTERNAL when no inotify descriptor can be had (the per-user limit).
    public init(api: ContainerApi, root: ContainerName = .root) throws(LmctfyError) {
        self.api = api
        self.root = root
        let fd = inotify_init1(Int32(IN_CLOEXEC | IN_NONBLOCK))
        if fd < 0 {
            throw SystemError("inotify_init1", "", Glibc.errno).lmctfy(.internal, "Failed to watch the containers")
        }
        inotifyFd = fd
    }

    deinit { Glibc.close(inotifyFd) }

    /// Containers watched now.
    public var count: Int { entries.count }

    /// Whether `name` is watched.
    public func isWatched(_ name: ContainerName) -> Bool { entries[name] != nil }

    /// Whether `name` is watched fully (its other directories and eventfds).
    public func isFullyWatched(_ name: ContainerName) -> Bool { entries[name]?.complete == true }

    /// Whether the monitor holds anything of `name`: its watch, or only
    /// its OOM eventfds (inotify could not watch it), which `unwatch`
    /// gives back when it goes.
    public func holds(_ name: ContainerName) -> Bool { entries[name] != nil || unwatched[name] != nil }

    /// How many containers inotify could not watch have their OOM kills
    /// watched all the same: the caller calls `readCounters` on a timer
    /// while there are any (v2's are read there).
    public var unwatchedCount: Int { unwatched.count + polled.count }
    /// The containers whose OOM kills are read on the caller's timer
    /// (`Entry.polledKills`).
    private var polled: Set<ContainerName> = []

    /// Watches a container's directories (the monitor's root: its tasks
    /// directory, for the containers just below it) and, once it exists, its memory
    /// eventfds. Idempotent: a second call adds what the first could not
    /// (a container still being made has no memory directory yet). Returns
    /// the new eventfds to poll and what the scan of its directory found
    /// (subdirectories made before the watch: `.present`).
    ///
    /// `earlier`: a container that appeared while the agent runs (not one
    /// that was there when it started): OOM kills the kernel counted before
    /// its watch began are reported too (`.oom`), so that a process killed
    /// a moment after its container was made is not missed.
    ///
    /// `full: false`: only its tasks directory (existence, freezer, its
    /// subcontainers) for now; a later call with `full` adds the rest. What
    /// happened in between is not lost: OOM kills are counted (`earlier`)
    /// and the caller reads the spec once the watch is full.
    /// OOM kill counts of containers when an earlier watcher last looked
    /// (an agent's snapshots): the watch of one, begun without `earlier`,
    /// counts its kills from there instead of from now, and reports those
    /// beyond it as found, as `earlier` does, so that kills made while no
    /// watcher ran (an agent down, or starting) are not lost. Each is used
    /// by the watch that reads the count, once.
    public var oomBaselines: [ContainerName: Int64] = [:]

    public func watch(_ name: ContainerName, earlier: Bool = false, full: Bool = true) -> (eventfds: [EventFd], found: [Change]) {
        let tasks = api.driver.tasksDir(name)
        if entries[name] == nil && name != root {
            // Only lmctfy's directories: another program's cgroup tree (a
            // service manager's slices) is not watched. A create marks its
            // directory right after making it, and that mark (IN_ATTRIB on
            // the parent's watch) brings the directory here again.
            switch try? tasks.state() {
            case .creating?, .complete?, .destroying?: break
            default: return ([], [])
            }
        }
        var entry = entries[name] ?? Entry(plan: (try? api.driver.monitorPlan(name)) ?? MonitorPlan())
        var found: [Change] = []
        if entry.wds.isEmpty {
            // Before the watch: a directory replaced in between is found
            // replaced at the next look (and watched again).
            entry.identity = tasks.identity
            let taskMask = UInt32(IN_CREATE | IN_DELETE | IN_ATTRIB | IN_MODIFY | IN_ONLYDIR)
            let overBudget = watchBudget.map { byWd.count >= $0 } ?? false
            let wd = overBudget ? -1 : inotify_add_watch(inotifyFd, tasks.path, taskMask)
            guard wd >= 0 else {
                // Gone already, or not there yet: nothing to say.
                let e = overBudget ? ENOSPC : Glibc.errno
                guard e != ENOENT && e != ENOTDIR else { return ([], []) }
                // Said once its OOM eventfds are registered (a later call
                // tries the inotify watch again, quietly).
                let said = unwatched[name] != nil
                // (Whether or not the call asked for the full watch: that
                // comes after the inotify one, which will not come.)
                let oomsOnly = watchOOMsOnly(name, earlier: earlier)
                if !said {
                    onWatchFailure?("container \(name) is not watched: \(SystemError("inotify_add_watch", tasks.path, e))"
                                    + (e == ENOSPC ? " (the host's fs.inotify.max_user_watches)" : "")
                                    + "; the reconcile still finds its changes"
                                    + (oomsOnly == nil ? "" : ", and its OOM kills are watched"))
                }
                return oomsOnly ?? ([], [])
            }
            entry.wds.append(wd)
            byWd[wd] = (name, true)
            // Subdirectories made before this watch saw them.
            for child in (try? tasks.subdirectories()) ?? [] {
                if let c = try? ContainerName.resolve(child, relativeTo: name), c.parent == name {
                    found.append(.present(c))
                }
            }
            if name != root {
                // The state files, as they are when the watch begins.
                if let had = unwatched[name]?.counters {
                    // Read on the caller's timer until now: counted from there.
                    unwatched[name] = nil
                    entry.oomKills = had.oomKills
                    entry.high = had.high
                } else if entry.plan.stateFiles.values.contains(.memoryEvents) {
                    let counters = (try? tasks.readKeyValues("memory.events")) ?? [:]
                    // Counted from 0 for a new container: the first look
                    // reports what happened before (see `earlier`).
                    entry.oomKills = earlier ? 0 : oomBaselines[name] ?? counters["oom_kill"] ?? 0
                    entry.high = counters["high"] ?? 0
                }
            }
        }
        if full, name != root, !entry.complete, (try? api.exists(name)) == true {
            entry.complete = true
            // Every other directory of the container, for spec writes.
            let plan = (try? api.driver.monitorPlan(name)) ?? entry.plan
            entry.plan = plan
            for dir in (try? api.driver.delegated(name).dirs) ?? [] where dir != tasks {
                let wd = inotify_add_watch(inotifyFd, dir.path, UInt32(IN_MODIFY | IN_ONLYDIR))
                if wd >= 0 {
                    entry.wds.append(wd)
                    byWd[wd] = (name, false)
                }
            }
            var fds: [EventFd] = []
            if let had = unwatched.removeValue(forKey: name)?.eventfds, !had.isEmpty {
                // Registered while inotify could not watch it: polled
                // already, and its earlier kills counted then.
                entry.eventfds = had
                entries[name] = entry
                return ([], found)
            }
            fds = openEventfds(name, plan)
            // No OOM eventfd to be had (past the descriptor ceiling): its
            // kill counter is read on the caller's timer instead (the OOMs
            // of ~100 containers past 1,900 were never events, and a Notify
            // of one never ended; a probe).
            let polling = plan.eventfds.contains { $0.kind == .oom } && !fds.contains { $0.kind == .oom }
                && plan.oomCounter != nil && !entry.plan.stateFiles.values.contains(.memoryEvents)
            // Kills before the eventfds were there (registered just above, so
            // a later kill is theirs, not counted twice), or since a baseline.
            let baseline = earlier ? nil : oomBaselines.removeValue(forKey: name)
            var killsNow: Int64?
            if earlier || baseline != nil || polling, let counter = plan.oomCounter {
                let kills = (try? counter.dir.readKeyValues(counter.file))?[counter.key] ?? 0
                killsNow = kills
                if entry.plan.stateFiles.values.contains(.memoryEvents) {
                    if kills > entry.oomKills { found.append(.oom(name, Int(kills - entry.oomKills))) }
                    entry.oomKills = max(entry.oomKills, kills)
                } else if (earlier || baseline != nil) && kills > (baseline ?? 0) {
                    found.append(.oom(name, Int(kills - (baseline ?? 0))))
                }
            }
            if polling {
                entry.polledKills = killsNow ?? 0
                polled.insert(name)
            }
            entry.eventfds = fds
            entries[name] = entry
            return (fds, found)
        }
        entries[name] = entry
        return ([], found)
    }

    /// `plan`'s eventfds for `name`, those that can be had (one refused
    /// for another reason than the container's going is said).
    private func openEventfds(_ name: ContainerName, _ plan: MonitorPlan) -> [EventFd] {
        var fds: [EventFd] = []
        for r in plan.eventfds {
            do {
                let source = try r.open()
                guard source.fd < eventfdCeiling else {
                    // Closed as `source` goes, which ends its registration.
                    onWatchFailure?("the OOMs of container \(name) are read on a timer, not evented: descriptor \(source.fd) "
                                    + "reached half of the open file limit (RLIMIT_NOFILE \(Sys.fileLimit)), kept for clients and files")
                    break
                }
                fds.append(EventFd(container: name, kind: r.kind, source: source))
            } catch where error.errno != ENOENT && error.errno != ENODEV {
                onWatchFailure?("the OOMs of container \(name) are read on a timer, not evented: \(error.message)")
            } catch {}  // going
        }
        return fds
    }

    /// The OOM eventfds of `name`, which inotify cannot watch: registered
    /// (once; nil when it has none, or is not a container now), with the
    /// kills before them when it is new (`earlier`, as `watch` counts them).
    /// On v2, its memory.events counters instead, for `readCounters`
    /// (from 0 when it is new: its first read reports the kills before).
    private func watchOOMsOnly(_ name: ContainerName, earlier: Bool) -> (eventfds: [EventFd], found: [Change])? {
        if unwatched[name] != nil { return ([], []) }
        guard name != root, (try? api.exists(name)) == true, let plan = try? api.driver.monitorPlan(name) else { return nil }
        let tasks = api.driver.tasksDir(name)
        let identity = tasks.identity
        let baseline = earlier ? nil : oomBaselines.removeValue(forKey: name)
        if plan.stateFiles.values.contains(.memoryEvents) {
            guard let counters = try? tasks.readKeyValues("memory.events") else { return nil }
            unwatched[name] = Unwatched(identity: identity, counters: (earlier ? 0 : baseline ?? counters["oom_kill"] ?? 0, counters["high"] ?? 0))
            return ([], [])
        }
        guard !plan.eventfds.isEmpty else { return nil }
        let fds = openEventfds(name, plan)
        guard !fds.isEmpty else { return nil }
        unwatched[name] = Unwatched(identity: identity, eventfds: fds)
        var found: [Change] = []
        if earlier || baseline != nil, let counter = plan.oomCounter, !plan.stateFiles.values.contains(.memoryEvents),
           let kills = (try? counter.dir.readKeyValues(counter.file))?[counter.key], kills > (baseline ?? 0) {
            found.append(.oom(name, Int(kills - (baseline ?? 0))))
        }
        return (fds, found)
    }

    /// Whether the directory of watched `name` is not the one watched any
    /// more: removed and made again under its name (by another program,
    /// between two reads of the inotify descriptor). Its watches and
    /// eventfds are the old one's, dead; `unwatch` it and watch it again.
    public func isReplaced(_ name: ContainerName) -> Bool {
        guard let was = entries[name]?.identity ?? unwatched[name]?.identity,
              let now = api.driver.tasksDir(name).identity else { return false }
        return was != now
    }

    /// Stops watching a container and every container below it; returns
    /// their eventfds, which the caller stops polling before dropping.
    public func unwatch(_ name: ContainerName) -> [EventFd] {
        var out: [EventFd] = []
        for key in unwatched.keys where key == name || name.isAncestor(of: key) {
            out += unwatched.removeValue(forKey: key)?.eventfds ?? []
        }
        for key in entries.keys where key == name || name.isAncestor(of: key) {
            guard let entry = entries.removeValue(forKey: key) else { continue }
            polled.remove(key)
            for wd in entry.wds {
                byWd[wd] = nil
                inotify_rm_watch(inotifyFd, wd)
            }
            out += entry.eventfds
        }
        return out
    }

    /// What to look at after the kernel dropped events (its queue
    /// overflowed): every watched container may have changed or gone, and
    /// any may have new subcontainers, the root included. (Only the watched
    /// ones were looked at again: a container made during a burst of
    /// others' creates and destroys was never reported; seen in the suite.)
    func lostEvents() -> [Change] {
        var out: [Change] = []
        // Those inotify could not watch: their parent's watch may have
        // lost their going too (they kept their dead eventfds, and a
        // successor under the name was taken for them).
        for c in unwatched.keys.sorted() where entries[c] == nil { out += [.gone(c), .present(c)] }
        for c in entries.keys.sorted() {
            if c != root { out += [.gone(c), .present(c)] }
            for child in (try? api.driver.tasksDir(c).subdirectories()) ?? [] {
                if let n = try? ContainerName.resolve(child, relativeTo: c), n.parent == c, entries[n] == nil {
                    out.append(.present(n))
                }
            }
        }
        return out
    }

    /// Reads what the inotify descriptor has (non-blocking) and says what
    /// may have changed, in order, each change once per read.
    public func readInotify() -> [Change] {
        var changes: [Change] = []
        func add(_ c: Change) { if changes.last != c { changes.append(c) } }
        while true {
            let n = buffer.withUnsafeMutableBytes { Glibc.read(inotifyFd, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            var offset = 0
            let header = MemoryLayout<inotify_event>.size
            while offset + header <= n {
                let (e, name) = buffer.withUnsafeBytes { raw -> (inotify_event, String) in
                    let e = raw.load(fromByteOffset: offset, as: inotify_event.self)
                    let start = offset + header
                    let bytes = raw[start ..< min(n, start + Int(e.len))]
                    return (e, String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self))
                }
                offset += header + Int(e.len)
                if e.mask & UInt32(IN_Q_OVERFLOW) != 0 {
                    for c in lostEvents() { add(c) }
                    continue
                }
                guard let (container, isTasks) = byWd[e.wd] else { continue }
                if e.mask & UInt32(IN_IGNORED) != 0 {
                    // The directory went (or the watch was removed).
                    byWd[e.wd] = nil
                    if isTasks && container != root { add(.gone(container)) }
                    continue
                }
                let isDir = e.mask & UInt32(IN_ISDIR) != 0
                if isTasks && isDir && !name.isEmpty {
                    // A subdirectory made, removed, or marked (IN_ATTRIB).
                    guard let child = try? ContainerName.resolve(name, relativeTo: container), child.parent == container else {
                        continue
                    }
                    if e.mask & UInt32(IN_DELETE) != 0 { add(.gone(child)) } else { add(.present(child)) }
                    continue
                }
                if name.isEmpty {
                    if e.mask & UInt32(IN_ATTRIB) != 0 && isTasks && container != root { add(.present(container)) }
                    continue
                }
                guard e.mask & UInt32(IN_MODIFY) != 0, container != root, let entry = entries[container] else { continue }
                if let role = entry.plan.stateFiles[name] {
                    switch role {
                    case .freezer: add(.freezer(container))
                    case .cgroupEvents:
                        add(.populated(container))
                        add(.freezer(container))
                    case .memoryEvents:
                        memoryEvents(container, into: &changes)
                    }
                } else if !entry.plan.notSpec.contains(name) {
                    add(.spec(container))
                }
            }
        }
        return changes
    }

    /// The memory.events counters of the containers inotify could not
    /// watch (v2, `Unwatched.counters`), read now: what grew since the
    /// last read. One whose directory went is said gone (its parent's
    /// watch may have missed it: the watch limit, an overflow), one made
    /// again under its name is left to the look that follows (its counts
    /// are another container's).
    public func readCounters() -> [Change] {
        var changes: [Change] = []
        for name in polled {
            guard let entry = entries[name], let was = entry.polledKills, let counter = entry.plan.oomCounter else {
                polled.remove(name)
                continue
            }
            // Gone meanwhile: the tasks directory's watch says so.
            guard let kills = (try? counter.dir.readKeyValues(counter.file))?[counter.key] else { continue }
            if kills > was {
                changes.append(.oom(name, Int(kills - was)))
                entries[name]?.polledKills = kills
            }
        }
        for (name, u) in unwatched {
            guard let was = u.counters else { continue }
            let dir = api.driver.tasksDir(name)
            let counters: [String: Int64]
            do {
                counters = try dir.readKeyValues("memory.events")
            } catch {
                if error.errno == ENOENT || error.errno == ENODEV { changes.append(.gone(name)) }
                continue
            }
            if let identity = u.identity, dir.identity != identity {
                changes.append(.gone(name))  // a look at it finds it replaced
                continue
            }
            unwatched[name]?.counters = Self.memoryEvents(name, counters, was: was, into: &changes)
        }
        return changes
    }

    /// v2 memory.events: oom_kill and high grew since last seen.
    private func memoryEvents(_ name: ContainerName, into changes: inout [Change]) {
        guard var entry = entries[name],
              let counters = try? api.driver.tasksDir(name).readKeyValues("memory.events") else { return }
        (entry.oomKills, entry.high) = Self.memoryEvents(name, counters, was: (entry.oomKills, entry.high), into: &changes)
        entries[name] = entry
    }

    /// What grew in v2 memory.events `counters` since `was` (OOM kills,
    /// `high`), and the counters to remember now.
    private static func memoryEvents(_ name: ContainerName, _ counters: [String: Int64], was: (oomKills: Int64, high: Int64),
                                     into changes: inout [Change]) -> (oomKills: Int64, high: Int64) {
        let kills = counters["oom_kill"] ?? was.oomKills
        let high = counters["high"] ?? was.high
        if kills > was.oomKills { changes.append(.oom(name, Int(kills - was.oomKills))) }
        if high > was.high { changes.append(.memoryPressure(name, Int(high - was.high))) }
        return (kills, high)
    }
}
