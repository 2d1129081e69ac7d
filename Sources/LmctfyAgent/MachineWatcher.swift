// Every container of the machine watched once, from the loop (issue #11):
// CL1's ContainerMonitor gives one inotify descriptor (and on v1 two
// eventfds per memory container), each polled with uv_poll; what they say
// is looked at on the loop and recorded in the one event log, whether or
// not anyone subscribes. Whether a container exists, is frozen or empty is
// decided through the Inventory, so the agent's own changes (already
// recorded by the dispatcher) are not reported twice. A spec that may have
// been written is read on a pool thread, a few milliseconds later, and
// compared with the one read before. Only the containers below the agent's
// root_container are watched, and they are recorded by the names its
// clients know (relative to that root, ContainerScope).
import Lmctfy
import LmctfyLoop
import LmctfyEvents
import LmctfyProto
import LmctfySystem

/// Loop thread only.
final class MachineWatcher: @unchecked Sendable {
    // @unchecked Sendable: a reference travels into the pool's completion,
    // which runs on the loop thread like everything else here.
    private let loop: EventLoop
    private let api: ContainerApi
    private let scope: ContainerScope
    private let monitor: ContainerMonitor
    private let inventory: Inventory
    private let events: EventLog
    private var inotifyPoll: LoopPoll?
    /// Each eventfd's poll, by fd (the EventFd object lives until its
    /// poll is closed, so the fd is never closed while libuv watches it).
    private var polls: [Int32: (poll: LoopPoll, source: ContainerMonitor.EventFd)] = [:]
    /// Containers whose spec may have been written, read together soon.
    private var specsDue: Set<ContainerName> = []
    private var specTimer: LoopTimer?
    private var specReading = false
    private var batchTimer: LoopTimer?
    static let batchMs = 2
    /// When each container's last MEMORY_PRESSURE was recorded.
    private var lastPressure: [ContainerName: UInt64] = [:]
    static let pressureIntervalMs: UInt64 = 1000
    /// The inventory's generation when each watched container's watch
    /// began: a change the agent made to its name since is its own.
    private var watchedSince: [ContainerName: UInt64] = [:]
    /// Containers that appeared, watched by their tasks directory only until
    /// `fullWatchMs` later, when the rest of the watch (their other
    /// directories, the memory eventfds) is added if they still exist; one
    /// the agent made itself is not watched at all until then (`handle`).
    /// A short-lived container (a job, a test, a create-run-destroy) is
    /// gone by then and costs the watcher next to nothing; one that stays
    /// loses nothing: OOM kills before the full watch are counted then, it
    /// is looked at (frozen, subcontainers) and its spec read again once
    /// the watch is full (as after any new watch), so a write made
    /// meanwhile is an UPDATED. Only a memory pressure notification of its
    /// first milliseconds can be missed (it repeats while the pressure
    /// lasts).
    /// Each with when its full watch is due (monotonic ms): every name
    /// gets its whole `fullWatchMs`, not just what is left of a timer
    /// armed for an earlier one (which completed, here, about one
    /// create-run-destroy in five while it still existed).
    private var fullSoon: [ContainerName: UInt64] = [:]
    /// Those of `fullSoon` whose directory appeared while the agent was
    /// changing them (its own create in progress, not yet known): when due,
    /// one still being made waits another `fullWatchMs`, one the agent knows by then is
    /// completed as any of its own, and one it does not know (its create
    /// failed, or it made and destroyed it meanwhile) is watched only if
    /// it exists (made behind its back after a failed create).
    private var makingSoon: Set<ContainerName> = []
    /// Those of `fullSoon` whose look found them there but could not
    /// record them: a change of the agent's own of them or of a container
    /// above them (a pause, an update) was under way. Looked at again when
    /// due, until it is over. (Watched by then, they were not looked at
    /// again: one made with the CLI while the agent paused its parent was
    /// never CREATED without a reconcile.)
    private var lookSoon: Set<ContainerName> = []
    private var fullTimer: LoopTimer?
    static let fullWatchMs = 10
    /// Reads the memory.events of the v2 containers past the inotify watch
    /// limit (`ContainerMonitor.readCounters`) while there are any: every
    /// `countersMs`, or twenty times what the last read took, whichever is
    /// longer (at most a twentieth of the loop goes to it).
    private var countersTimer: LoopTimer?
    static let countersMs: UInt64 = 250

    init(loop: EventLoop, api: ContainerApi, scope: ContainerScope, inventory: Inventory, events: EventLog) throws(LmctfyError) {
        self.loop = loop
        self.api = api
        self.scope = scope
        self.inventory = inventory
        self.events = events
        monitor = try ContainerMonitor(api: api, root: scope.root)
    }

    /// Where the monitor's failures to watch go (the agent's log, within a
    /// budget). Loop thread, before `start`.
    func onWatchFailure(_ report: @escaping (String) -> Void) { monitor.onWatchFailure = report }

    /// Containers (clients' names) whose OOM kills are counted from the
    /// count an earlier agent's snapshot had (ContainerMonitor.oomBaselines),
    /// not from the first look: those are the kills made while no agent
    /// watched, recorded then with that reason. Loop thread, before `start`.
    func countOOMKills(since counts: [String: Int64]) {
        for (path, kills) in counts {
            guard let name = try? scope.resolve(path) else { continue }
            monitor.oomBaselines[name] = kills
            sinceSnapshot.insert(name)
        }
    }
    private var sinceSnapshot: Set<ContainerName> = []

    /// One OOM event per kill (v1 counts them as v2 does; see
    /// OomControlSource), then the snapshot's count written again.
    private func recordOOMs(_ path: String, _ kills: Int, reason: String? = nil) {
        for _ in 0..<max(1, kills) { events.append(ContainerEvent(container: path, kind: .containerEventOom, reason: reason)) }
        inventory.recordedOOM(path)
    }

    /// Watches the scope's root and, through the scans that follow, every
    /// container below it. Loop thread.
    func start() throws(LmctfyError) {
        do {
            inotifyPoll = try LoopPoll(on: loop, fd: monitor.inotifyFd) { [unowned self] error in
                if error == nil { self.inotifyReadable() }
            }
        } catch {
            throw error.lmctfy("Watching the containers")
        }
        add(scope.root, now: true)
        // The specs of the containers there now are read soon, so that the
        // first write of one (a CLI update) is told from them: without this
        // they waited for the next inotify event, and that first write was
        // taken for the spec they had (no UPDATED, a stale snapshot).
        handle([])
    }

    /// Stops every poll (loop thread); the descriptors close once their
    /// polls are closed.
    func stop() {
        inotifyPoll?.close()
        specTimer?.cancel()
        batchTimer?.cancel()
        fullTimer?.cancel()
        countersTimer?.cancel()
        makingSoon = []
        lookSoon = []
        for (fd, entry) in polls {
            entry.poll.onClose = { _ = entry.source }  // keeps the fd open until then
            entry.poll.close()
            polls[fd] = nil
        }
    }

    /// The inotify descriptor has something: it is read `batchMs` later, in
    /// one go, so that the burst one create or destroy makes (a directory
    /// in each hierarchy, its marks, its tasks joining) wakes the loop once
    /// or twice rather than for each event.
    private func inotifyReadable() {
        guard batchTimer == nil else { return }
        inotifyPoll?.pause()
        batchTimer = try? LoopTimer.once(on: loop, after: .milliseconds(Self.batchMs)) { [unowned self] in
            self.batchTimer = nil
            self.handle(self.monitor.readInotify())
            self.inotifyPoll?.resume()
        }
        if batchTimer == nil {
            // No timer to be had: read now.
            inotifyPoll?.resume()
            handle(monitor.readInotify())
        }
    }

    /// How many containers are watched (the scope's root included).
    var watchedCount: Int { monitor.count }

    /// Watches `name` and what its scan finds: its tasks directory while it
    /// is being made, everything (its other directories, its memory
    /// eventfds) once it exists. `now`: the containers there when the agent
    /// starts, whose specs are read anyway.
    private func add(_ name: ContainerName, now: Bool = false, full: Bool = false) {
        var queue = [name]
        while let next = queue.popLast() {
            let wasFull = monitor.isFullyWatched(next)
            let wasWatched = monitor.isWatched(next)
            let fullNow = now || (full && next == name)
            let generation = inventory.generation
            let (fds, found) = monitor.watch(next, earlier: !now, full: fullNow)
            if !wasWatched && monitor.isWatched(next) { watchedSince[next] = generation }
            if !fullNow && monitor.isWatched(next) && !monitor.isFullyWatched(next) { completeSoon(next) }
            for source in fds { poll(source) }
            // A write made before its directories were watched (a CLI update
            // right after the create) is found by reading the spec again.
            if !now && !wasFull && monitor.isFullyWatched(next), let path = scope.path(next), inventory.knows(path) {
                specsDue.insert(next)
            }
            for case .present(let child) in found {
                guard let path = scope.path(child), !monitor.isWatched(child) || !inventory.knows(path) else { continue }
                look(child, path, queue: &queue)
            }
            // OOM kills before the watch began (a container just made, or
            // one whose snapshot had its count: since then).
            let earlier = found.filter { if case .oom = $0 { true } else { false } }
            if sinceSnapshot.remove(next) != nil, let path = scope.path(next) {
                for case .oom(_, let kills) in earlier { recordOOMs(path, kills, reason: "while the agent was down") }
            } else if !earlier.isEmpty {
                handle(earlier)
            }
        }
    }

    /// Completes the watch of `name` `fullWatchMs` from now (see `fullSoon`).
    private func completeSoon(_ name: ContainerName) {
        if fullSoon[name] == nil { fullSoon[name] = MonotonicClock.milliseconds() + UInt64(Self.fullWatchMs) }
        if fullTimer == nil { armFullTimer(after: Self.fullWatchMs) }
    }

    /// Arms the timer that completes the names due when it fires (and is
    /// armed again for those still waiting); with no timer to be had,
    /// completes every waiting name now.
    private func armFullTimer(after ms: Int) {
        fullTimer = try? LoopTimer.once(on: loop, after: .milliseconds(ms)) { [unowned self] in
            // The timer stays set while the due names complete: a name one
            // of them queues (`completeSoon`) waits for the arming below.
            let now = MonotonicClock.milliseconds()
            let due = self.fullSoon.filter { $0.value <= now }.keys.sorted()
            for name in due { self.fullSoon[name] = nil }
            // Parents first; one gone meanwhile is no longer watched (or
            // no longer exists, which its full watch finds).
            for name in due { self.complete(name) }
            self.fullTimer = nil
            if let next = self.fullSoon.values.min() {
                self.armFullTimer(after: Int(next > now ? next - now : 0) + 1)
            }
            self.handle([])  // the specs of those now fully watched, soon
        }
        if fullTimer == nil {
            let names = fullSoon.keys.sorted()
            fullSoon = [:]
            for name in names { complete(name) }
            handle([])
        }
    }

    /// The full watch of `name`, due now. One the agent made and nothing
    /// watches yet (`handle`) is looked at first, if the agent still knows
    /// it (it did not destroy it meanwhile): what was done to it behind
    /// the agent's back since it was made (paused, updated, given
    /// subcontainers, OOM kills) is found then, as for any new watch.
    private func complete(_ name: ContainerName) {
        let making = makingSoon.remove(name) != nil
        let relook = lookSoon.remove(name) != nil
        guard let path = scope.path(name) else { return }
        if (making || relook) && inventory.isBusy(path, orAbove: relook) {
            // The agent's change is still under way after all this time:
            // looked at again `fullWatchMs` later, until it is over. (Not
            // watched as one being made: its `complete` mark may be
            // written already, and a look now records nothing, so one
            // whose create then failed, made by another lmctfy at the same
            // moment, was never reported.) Known or not: the agent's
            // destroy of a container knows it until the destroy is over,
            // and one made again under its name meanwhile, looked at while
            // it was still known, was dropped here and never CREATED (a
            // flake under TSan, where the destroy outlasted `fullWatchMs`).
            if making { makingSoon.insert(name) }
            if relook { lookSoon.insert(name) }
            completeSoon(name)
            return
        }
        let unknown = !inventory.knows(path)
        if !monitor.isWatched(name) {
            if unknown {
                guard making, (try? api.exists(name)) == true else { return }
            }
            var queue: [ContainerName] = []
            look(name, path, queue: &queue)
            add(name, full: true)
        } else {
            // Watched meanwhile (the look at a replaced one, a scan), but
            // not recorded: a look now records it.
            if (making || relook) && unknown {
                var queue: [ContainerName] = []
                look(name, path, queue: &queue)
            }
            if !monitor.isFullyWatched(name) { add(name, full: true) }
        }
    }

    private func poll(_ source: ContainerMonitor.EventFd) {
        do {
            let p = try LoopPoll(on: loop, fd: source.fd) { [unowned self] error in
                if error == nil, let change = source.collect() { self.handle([change]) }
            }
            polls[source.fd] = (p, source)
        } catch {
            // Too many descriptors: this container's memory events are not
            // watched; the rest goes on.
        }
    }

    /// Stops watching `name` and what is below it.
    private func forget(_ name: ContainerName) {
        drop(monitor.unwatch(name))
        lastPressure = lastPressure.filter { $0.key != name && !name.isAncestor(of: $0.key) }
        watchedSince = watchedSince.filter { $0.key != name && !name.isAncestor(of: $0.key) }
    }

    private func drop(_ sources: [ContainerMonitor.EventFd]) {
        for source in sources {
            guard let entry = polls.removeValue(forKey: source.fd) else { continue }
            entry.poll.onClose = { _ = entry.source }
            entry.poll.close()
        }
    }

    /// A container that may have appeared (`path`: the clients' name for
    /// it): recorded if it exists and is new, and watched either way (a
    /// container still being made is watched so that its `complete` record
    /// is seen).
    private func look(_ name: ContainerName, _ path: String, queue: inout [ContainerName]) {
        let since = inventory.generation
        // nil: it does not exist (or cannot be looked at).
        if let container = try? api.get(name) {
            let frozen = try? container.isFrozen()
            let created = inventory.observe(path, exists: true, frozen: frozen, since: since)
            // Not recorded because the agent is changing it or a container
            // above it: looked at again once that is over. Known too: the
            // change may be its destroy (known until it is over), and what
            // this look found the container made again under its name.
            if !created, frozen != nil, inventory.isBusy(path, orAbove: true) {
                lookSoon.insert(name)
                completeSoon(name)
            }
            // The spec as it is now, so that a later write is told from it:
            // read at once for a container made behind the agent's back (its
            // maker may update it a moment later), soon for the others.
            if created, let spec = try? container.spec(), let bytes = try? spec.serializedBytes() {
                inventory.observeSpec(path, bytes, since: since)
            } else if inventory.needsSpec(path) {
                specsDue.insert(name)
            }
        }
        queue.append(name)
    }

    private func handle(_ changes: [ContainerMonitor.Change]) {
        var queue: [ContainerName] = []
        // Names whose last change in this batch is that they went: one
        // that appeared and went within it (made and destroyed in a few
        // milliseconds, by the agent or not) is not looked at, which
        // would find nothing (its going is handled as usual).
        var went: Set<ContainerName> = []
        if changes.count > 1 {
            for change in changes {
                if case .gone(let name) = change { went.insert(name) }
                if case .present(let name) = change { went.remove(name) }
            }
        }
        for change in changes {
            // The monitor watches nothing outside the root, and never
            // reports the root itself: every change has a client's name.
            guard let path = scope.path(change.container), change.container != scope.root else { continue }
            switch change {
            case .present(let name) where !monitor.isWatched(name) && inventory.knows(path):
                // Made through the agent (which recorded it and its
                // events): watched, whole, `fullWatchMs` from now if it
                // is still there. A container that lives less (a job, a
                // test, a create-run-destroy) costs the watcher nothing
                // more than this event. One the agent is changing now (its
                // destroy, before it forgets it: the name made again
                // meanwhile by another) is looked at as one being made.
                if inventory.isBusy(path) { makingSoon.insert(name) }
                completeSoon(name)
            case .present(let name) where !monitor.isWatched(name) && inventory.isBusy(path):
                // Being made through the agent now (its mkdir is what the
                // event says): as above once the create is done; the
                // agent's create records it and its event.
                makingSoon.insert(name)
                completeSoon(name)
            case .present(let name) where went.contains(name) && !monitor.isWatched(name):
                break
            case .present(let name):
                look(name, path, queue: &queue)
            case .gone(let name) where !monitor.holds(name) && !inventory.knows(path):
                break  // nothing to forget (the agent destroyed it, or never saw it)
            case .gone(let name):
                let since = inventory.generation
                if (try? api.exists(name)) != true {
                    forget(name)
                    inventory.observe(path, exists: false, frozen: nil, since: since)
                } else if monitor.isReplaced(name) {
                    // Destroyed and made again under its name before this
                    // look (a script's destroy and create): another
                    // container, whose directories and eventfds the old
                    // watch does not have (its OOMs were missed, and the
                    // old eventfds' signal at the removal was taken for
                    // one). Its going and coming are recorded unless the
                    // agent made or destroyed it (and recorded that) since
                    // the old one was watched; another change of the
                    // agent's (an update, a pause) says nothing of it.
                    let watched = watchedSince[name] ?? since
                    forget(name)
                    inventory.observe(path, exists: false, frozen: nil, since: since, replacedSince: watched)
                    look(name, path, queue: &queue)
                }
            case .freezer(let name):
                let since = inventory.generation
                if let frozen = try? api.get(name).isFrozen() {
                    inventory.observe(path, exists: true, frozen: frozen, since: since)
                }
            case .populated(let name):
                let since = inventory.generation
                if let pids = try? api.get(name).processes(recursive: true) {
                    inventory.observeEmpty(path, pids.isEmpty, since: since)
                }
            case .spec(let name):
                if inventory.knows(path) { specsDue.insert(name) }
            case .oom(_, let kills):
                recordOOMs(path, kills)
            case .memoryPressure(let name, _):
                // The kernel signals pressure in bursts (each reclaim
                // round): one event per container per second says it.
                let now = MonotonicClock.milliseconds()
                if let last = lastPressure[name], now - last < Self.pressureIntervalMs { continue }
                lastPressure[name] = now
                events.record(container: path, kind: .containerEventMemoryPressure)
            }
        }
        for name in queue { add(name) }
        if monitor.unwatchedCount > 0 && countersTimer == nil { armCounters(after: Self.countersMs) }
        if !specsDue.isEmpty && specTimer == nil && !specReading {
            specTimer = try? LoopTimer.once(on: loop, after: .milliseconds(20)) { [unowned self] in
                self.specTimer = nil
                self.readSpecs()
            }
        }
    }

    /// Reads the counters of the containers inotify could not watch (v2)
    /// `ms` from now, and again while there are any (see `countersTimer`).
    private func armCounters(after ms: UInt64) {
        countersTimer = try? LoopTimer.once(on: loop, after: .milliseconds(Int(ms))) { [unowned self] in
            // The timer stays set while its changes are handled (which
            // would arm it again): armed below, for the cost measured.
            let t0 = MonotonicClock.milliseconds()
            self.handle(self.monitor.readCounters())
            let cost = MonotonicClock.milliseconds() - t0
            self.countersTimer = nil
            if self.monitor.unwatchedCount > 0 { self.armCounters(after: max(Self.countersMs, cost * 19)) }
        }
    }

    /// Reads the specs that may have been written, on a pool thread, one
    /// round at a time.
    private func readSpecs() {
        let names = specsDue
        specsDue = []
        specReading = true
        let (api, scope) = (self.api, self.scope)
        let inventory = self.inventory
        let started = loop.offload({
            for name in names {
                let since = inventory.generation
                guard let path = scope.path(name), let spec = try? api.get(name).spec(),
                      let bytes = try? spec.serializedBytes() else { continue }
                inventory.observeSpec(path, bytes, since: since)
            }
        }, then: { [weak self] _ in
            guard let self else { return }
            self.specReading = false
            if !self.specsDue.isEmpty { self.handle([]) }
        })
        if !started { specReading = false }
    }
}
