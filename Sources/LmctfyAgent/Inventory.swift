// What the agent knows of the machine's containers, so that changes made
// behind its back (the lmctfy CLI, another agent client's lmctfy) become
// events too: a periodic reconcile lists every container and its freezer
// state and records CREATED, DESTROYED and FREEZER for what differs from
// what the agent knew (issue #11). The machine watcher's inotify
// observations of single containers (`observe`) go through the same rules,
// within milliseconds of the change; the reconcile stays as the backstop
// (and is what sees a v1 container go empty).
//
// The agent's own create, destroy, update, pause and resume go through
// `change`, which records their event and updates what is known under one
// lock; a reconcile whose listing overlapped such a change leaves that name
// alone (it saw the container half way), so no change is reported twice.
// Changes of one container tree (its top-level container and everything
// below) run one at a time, as CL1's lock file already makes creates,
// updates and destroys of a tree do: the change and its event together, so
// that two clients' changes of one name are recorded in the order they were
// made (a Create racing a Destroy was recorded DESTROYED, then CREATED,
// when the create's thread recorded last).
import LmctfyEvents
import LmctfyProto
import LmctfySystem

final class Inventory: Sendable {
    struct State {
        /// Every container known, and whether it is frozen.
        var known = KnownContainers()
        /// Names with a change of the agent's own in progress.
        var busy: [String: Int] = [:]
        /// When each name last changed through the agent (a generation).
        var touched: [String: UInt64] = [:]
        /// When the agent last made or destroyed each name (a generation):
        /// of its changes, only these say anything of a container replaced
        /// under its name (an update or a pause of the old one does not).
        var madeOrGone: [String: UInt64] = [:]
        /// When the watcher last recorded a change of each name (a
        /// generation) while a listing was under way: that listing says
        /// nothing of it. (A reconcile whose listing missed a container the
        /// watcher had just seen made recorded its DESTROYED, and the next
        /// round its CREATED again; the same for a destroy, a pause, an
        /// emptying.) Kept only while listings are under way: a listing
        /// started after a change sees it.
        var seen: [String: UInt64] = [:]
        /// Listings under way (`listingStarts`).
        var listings = 0
        var generation: UInt64 = 0
        var seeded = false
        /// Whether each container had no processes when last looked at.
        var empty: [String: Bool] = [:]
        /// Containers a kernel watch of EMPTY (a `Notify`) is made on, and
        /// how many: their EMPTY is the watch's to record (it sees every
        /// emptying), not the reconcile's or the watcher's too.
        var emptyWatched: [String: Int] = [:]
        /// The EMPTY recorded for each container's present emptiness (gone
        /// once it is seen with processes again, or goes): a `Notify` watch
        /// made on a container already empty answers with it instead of
        /// recording another (each call added an EMPTY to the shared log,
        /// which any reader could fill with them; a probe).
        var lastEmpty: [String: ContainerEvent] = [:]
        /// Each container's spec (serialized) when last read; a change of
        /// the agent's own forgets it (read again without an event).
        var specs: [String: [UInt8]] = [:]
        /// Bumped whenever a container appeared or went without the agent
        /// (seen by the watcher or a reconcile): the policy's ledger, which
        /// the agent's own creates and destroys keep, needs a new listing
        /// only then.
        var outsideChanges: UInt64 = 0
        /// Names whose spec changed without the agent since the policy
        /// last took them (their commitments are read again).
        var updatedOutside: Set<String> = []
    }

    private let state = Mutexed(State())
    /// Held by a change for its tree, across it (see above).
    private let trees = KeyedLocks()
    let events: EventLog

    /// Told of every name whose existence, freezer state or spec changed
    /// without the agent, as it is recorded (the snapshot keeper: it only
    /// queues the name; called with the inventory's lock held). In a
    /// class: see EventLog.observer.
    /// With the spec just read (serialized), when that is why.
    final class Observer: Sendable {
        let call: @Sendable (String, [UInt8]?) -> Void
        init(_ call: @escaping @Sendable (String, [UInt8]?) -> Void) { self.call = call }
    }
    let observer = Mutexed<Observer?>(nil)

    private func changed(_ name: String, spec: [UInt8]? = nil) { observer.locked { $0 }?.call(name, spec) }

    /// Told of the containers found thawed without the agent (a `lmctfy
    /// resume`), after the inventory's lock is let go: their freeze
    /// leases end, so that a thaw at a lease's end never undoes what an
    /// operator did since (the freeze they make next was thawed; a probe).
    let thawedOutside: (@Sendable ([String]) -> Void)?

    private func tellThawed(_ names: [String]) {
        guard !names.isEmpty, let thawedOutside else { return }
        thawedOutside(names)
    }

    init(events: EventLog, thawedOutside: (@Sendable ([String]) -> Void)? = nil) {
        self.events = events
        self.thawedOutside = thawedOutside
    }

    /// Runs one of the agent's own changes of `path`: `body` does it and
    /// returns how `known` changes; the event is recorded by `body` too, all
    /// while a reconcile cannot apply a listing that saw it half done.
    /// `keepsSpec`: a change that writes none of its resource files (a
    /// pause, a resume), after which the spec read before still stands
    /// (forgotten, the first read after it only remembered the spec, and
    /// an update made with the CLI after an agent's pause was no UPDATED).
    func change<T>(_ path: String, keepsSpec: Bool = false, _ body: () throws -> (T, (inout KnownContainers) -> Void)) rethrows -> T {
        let tree = Self.tree(path)
        trees.enter(tree)
        defer { trees.leave(tree) }
        state.locked { s in
            s.generation += 1
            s.busy[path, default: 0] += 1
            s.touched[path] = s.generation
        }
        var update: ((inout KnownContainers) -> Void)?
        defer {
            state.locked { s in
                s.generation += 1
                s.touched[path] = s.generation
                // Its spec is read again, without an event (the change
                // recorded its own).
                if !keepsSpec { s.specs[path] = nil }
                if let n = s.busy[path], n > 1 { s.busy[path] = n - 1 } else { s.busy[path] = nil }
                if let update {
                    // Every name the change touched (a destroy takes the
                    // subcontainers with it): a listing from before it must
                    // not bring them back.
                    s.known.startTracking()
                    update(&s.known)
                    for (name, was) in s.known.stopTracking() where was != s.known[name] {
                        s.touched[name] = s.generation
                        if (was == nil) != (s.known[name] == nil) { s.madeOrGone[name] = s.generation }
                        if was != nil && s.known[name] == nil {
                            s.empty[name] = nil
                            s.lastEmpty[name] = nil
                            s.specs[name] = nil
                        }
                    }
                }
            }
        }
        let (result, apply) = try body()
        update = apply
        return result
    }

    /// Runs `body` as one of the agent's changes of `path`'s tree would run:
    /// none of them meanwhile (a freeze lease's thaw, whose list stays
    /// locked across it: taken after the tree, as a destroy, which ends
    /// leases while its change runs, takes them).
    func holdingTree<T>(_ path: String, _ body: () throws -> T) rethrows -> T {
        let tree = Self.tree(path)
        trees.enter(tree)
        defer { trees.leave(tree) }
        return try body()
    }

    /// The top-level container `path` is in ("/" for the root).
    static func tree(_ path: String) -> String {
        let parts = path.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: true)
        return parts.first.map { "/" + $0 } ?? "/"
    }

    /// The generation a reconcile's listing starts at.
    var generation: UInt64 { state.locked { $0.generation } }

    /// A reconcile's listing starts: its generation, for `reconcile` (or
    /// `listingFailed`), which ends it.
    func listingStarts() -> UInt64 {
        state.locked { s in
            s.listings += 1
            return s.generation
        }
    }

    /// A listing that started came to nothing.
    func listingFailed() {
        state.locked { s in
            s.listings = max(0, s.listings - 1)
            if s.listings == 0 { s.seen = [:] }
        }
    }

    /// Applies a listing taken after `since`: containers new to it are
    /// CREATED, containers gone DESTROYED, a freezer state that differs
    /// FREEZER; names the agent changed meanwhile are left for the next
    /// round. The first listing only seeds what is known (what existed
    /// before the agent started is no event).
    /// `empties`: whether each container listed has no processes (EMPTY
    /// when one that had some has none).
    func reconcile(_ listed: [String: Bool], empties: [String: Bool] = [:], since: UInt64) {
        var thawed: [String] = []
        defer { tellThawed(thawed) }
        state.locked { s in
            s.listings = max(0, s.listings - 1)
            defer { s.seen = s.listings == 0 ? [:] : s.seen.filter { $0.value > since } }
            guard s.seeded else {
                s.known = KnownContainers(listed)
                s.empty = empties
                s.seeded = true
                return
            }
            func settled(_ name: String) -> Bool {
                !Self.busy(s, name) && (s.touched[name] ?? 0) <= since && (s.seen[name] ?? 0) <= since
            }
            for (name, isEmpty) in empties.sorted(by: { $0.key < $1.key }) where settled(name) && s.known[name] != nil {
                Self.setEmpty(&s, name, isEmpty, events)
            }
            for (name, frozen) in listed.sorted(by: { $0.key < $1.key }) where settled(name) {
                if let was = s.known[name] {
                    if was != frozen {
                        events.record(container: name, kind: .containerEventFreezer, frozen: frozen)
                        s.known[name] = frozen
                        if !frozen { thawed.append(name) }
                        changed(name)
                    }
                } else {
                    Self.appear(&s, name, frozen, events)
                    changed(name)
                }
            }
            for name in s.known.keys.sorted(by: >) where listed[name] == nil && settled(name) {
                Self.forget(&s, name, events)
                changed(name)
            }
            // What no change is in progress for needs no generation any more.
            s.touched = s.touched.filter { s.busy[$0.key] != nil || $0.value > since }
            s.madeOrGone = s.madeOrGone.filter { s.busy[$0.key] != nil || $0.value > since }
        }
    }

    /// One container looked at after `since` (the watcher's inotify): it
    /// exists (and is frozen or not) or it does not. What is news is
    /// recorded, as a reconcile would; a name the agent changed meanwhile
    /// is left alone.
    /// `replacedSince`: the container was found replaced under its name
    /// (its watch began at this generation): its going is news unless the
    /// agent made or destroyed it since (its own changes recorded that).
    /// Returns whether it recorded the container's CREATED.
    @discardableResult
    func observe(_ name: String, exists: Bool, frozen: Bool?, since: UInt64, replacedSince: UInt64? = nil) -> Bool {
        var thawed = false
        defer { if thawed { tellThawed([name]) } }
        return state.locked { s in
            func settled(_ k: String) -> Bool {
                (s.touched[k] ?? 0) <= since && (replacedSince.map { (s.madeOrGone[k] ?? 0) <= $0 } ?? true)
            }
            guard s.seeded, !Self.busy(s, name), settled(name) else { return false }
            if !exists {
                // What is below it went first (or with it); but not what
                // the agent is changing, or changed since the look (its
                // destroy records its own DESTROYED: it was recorded twice).
                for k in s.known.below(name) where s.busy[k] == nil && settled(k) {
                    Self.forget(&s, k, events)
                    Self.seen(&s, k)
                    changed(k)
                }
                if s.known[name] != nil {
                    Self.forget(&s, name, events)
                    Self.seen(&s, name)
                    changed(name)
                }
                return false
            }
            guard let frozen else { return false }
            if let was = s.known[name] {
                if was != frozen {
                    events.record(container: name, kind: .containerEventFreezer, frozen: frozen)
                    s.known[name] = frozen
                    thawed = !frozen
                    Self.seen(&s, name)
                    changed(name)
                }
                return false
            }
            Self.appear(&s, name, frozen, events)
            Self.seen(&s, name)
            changed(name)
            return true
        }
    }

    /// Whether a known container has processes, looked at after `since`:
    /// EMPTY when it had some and has none now.
    func observeEmpty(_ name: String, _ isEmpty: Bool, since: UInt64) {
        state.locked { s in
            guard s.known[name] != nil, !Self.busy(s, name), (s.touched[name] ?? 0) <= since else { return }
            if s.empty[name] != isEmpty { Self.seen(&s, name) }
            Self.setEmpty(&s, name, isEmpty, events)
        }
    }

    /// A known container's spec, read after `since` (serialized): UPDATED
    /// when it differs from the one read before; the first read only
    /// remembers it.
    func observeSpec(_ name: String, _ spec: [UInt8], since: UInt64) {
        state.locked { s in
            guard s.known[name] != nil, !Self.busy(s, name), (s.touched[name] ?? 0) <= since else { return }
            if let was = s.specs[name], was != spec {
                events.record(container: name, kind: .containerEventUpdated)
                s.outsideChanges &+= 1
                s.updatedOutside.insert(name)
            }
            // Every read, the first too: a write made between the snapshot
            // keeper's last read and this first one (just after the agent
            // started) is no UPDATED here, but the keeper compares with
            // what it wrote (and writes nothing when that is the same).
            changed(name, spec: spec)
            s.specs[name] = spec
        }
    }

    /// Every container known to exist.
    func names() -> [String] { state.locked { Array($0.known.keys) } }

    /// How many containers are known; nil before the first listing.
    var count: Int? { state.locked { $0.seeded ? $0.known.count : nil } }

    /// Whether `name` is known to exist.
    func knows(_ name: String) -> Bool { state.locked { $0.known[name] != nil } }

    /// For one of the agent's own changes of `path` (called inside it, so
    /// no listing or look decides these names meanwhile): those of
    /// `names` the inventory holds, and those it does not, once it follows
    /// the machine (seeded; without a watcher nothing outside the agent's
    /// own changes is known, and no event says so). A create finds its name
    /// (or one below) known when another lmctfy destroyed it since the
    /// watcher last looked; a destroy finds names unknown that another
    /// lmctfy made since. Their events were missing: a subscriber heard
    /// CREATED twice, or DESTROYED of a container never CREATED (a probe,
    /// lmctl and lmctfy on one tree at once).
    func known(_ names: [String]) -> (known: [String], unknown: [String]) {
        state.locked { s in
            guard s.seeded else { return ([], []) }
            return (names.filter { s.known[$0] != nil }, names.filter { s.known[$0] == nil })
        }
    }

    /// The known containers at `path` and below it, deepest first.
    func known(atOrBelow path: String) -> [String] {
        state.locked { s in
            guard s.seeded else { return [] }
            return s.known.atOrBelow(path)
        }
    }

    /// Whether one of the agent's own changes of `name` is in progress
    /// (`orAbove`: or of a container above it).
    func isBusy(_ name: String, orAbove: Bool = false) -> Bool {
        state.locked { orAbove ? Self.busy($0, name) : $0.busy[name] != nil }
    }

    /// The names of `names` known to be frozen (ListContainers with_frozen).
    func frozen(among names: [String]) -> [String] {
        state.locked { s in names.filter { s.known[$0] == true } }
    }

    /// Whether `name` is known but its spec was not read since it appeared
    /// or the agent last changed it (a write of it could not be told).
    func needsSpec(_ name: String) -> Bool { state.locked { $0.known[name] != nil && $0.specs[name] == nil } }

    /// A kernel watch of `name`'s EMPTY starts (`on`) or ends: meanwhile
    /// it records that event, and the inventory only follows the state.
    func watchingEmpty(_ name: String, _ on: Bool) {
        state.locked { s in
            let n = (s.emptyWatched[name] ?? 0) + (on ? 1 : -1)
            s.emptyWatched[name] = n > 0 ? n : nil
        }
    }

    /// OOM kills of `name` were recorded: its snapshot's count of them is
    /// written again (an agent restarting from the old count would report
    /// them a second time).
    func recordedOOM(_ name: String) {
        state.locked { s in if s.known[name] != nil { changed(name) } }
    }

    /// The kernel watch of `name` recorded its EMPTY (`event`): it is
    /// empty, and the next look that finds it so is no second EMPTY (one
    /// emptying was recorded twice while a `notify container empty` was
    /// registered).
    func notedEmpty(_ name: String, _ event: ContainerEvent) {
        state.locked { s in
            guard s.known[name] != nil else { return }
            s.empty[name] = true
            s.lastEmpty[name] = event
            // A listing from before says nothing of it (it could find it
            // not empty yet, and the next one take the emptying as news).
            s.generation += 1
            s.touched[name] = s.generation
        }
    }

    private static func setEmpty(_ s: inout State, _ name: String, _ isEmpty: Bool, _ events: EventLog) {
        if s.empty[name] == false && isEmpty && s.emptyWatched[name] == nil {
            s.lastEmpty[name] = events.record(container: name, kind: .containerEventEmpty)
        }
        if !isEmpty { s.lastEmpty[name] = nil }
        s.empty[name] = isEmpty
    }

    /// The EMPTY already recorded for `name`'s present emptiness, if the
    /// inventory knows it empty and has one (see `State.lastEmpty`).
    func emptyOnRecord(_ name: String) -> ContainerEvent? {
        state.locked { s in s.empty[name] == true ? s.lastEmpty[name] : nil }
    }

    /// How many times containers appeared, went or changed without the agent.
    var outsideChanges: UInt64 { state.locked { $0.outsideChanges } }

    /// The names whose spec changed without the agent since the last call.
    func takeUpdatedOutside() -> [String] {
        state.locked { s in
            defer { s.updatedOutside = [] }
            return s.updatedOutside.sorted()
        }
    }

    /// Whether one of the agent's own changes of `name` or of a container
    /// above it is in progress: a destroy takes the subcontainers with it
    /// and records each one's DESTROYED itself, so the watcher seeing one
    /// go meanwhile must not record it a second time.
    private static func busy(_ s: State, _ name: String) -> Bool {
        if s.busy[name] != nil { return true }
        return s.busy.keys.contains { name.hasPrefix($0 == "/" ? "/" : $0 + "/") }
    }

    /// The watcher recorded a change of `name` now (see `State.seen`).
    private static func seen(_ s: inout State, _ name: String) {
        guard s.listings > 0 else { return }
        s.generation += 1
        s.seen[name] = s.generation
    }

    /// A container that appeared without the agent: CREATED.
    private static func appear(_ s: inout State, _ name: String, _ frozen: Bool, _ events: EventLog) {
        s.outsideChanges &+= 1
        events.record(container: name, kind: .containerEventCreated)
        s.known[name] = frozen
    }

    /// A container that went without the agent: DESTROYED.
    private static func forget(_ s: inout State, _ name: String, _ events: EventLog) {
        s.outsideChanges &+= 1
        events.record(container: name, kind: .containerEventDestroyed)
        s.known[name] = nil
        s.empty[name] = nil
        s.lastEmpty[name] = nil
        s.specs[name] = nil
    }
}
