// What the agent knows of the machine's containers, so that changes made
// behind its back (the lmctfy CLI, another agent client's lmctfy) become
// events too: a periodic reconcile lists every container and its freezer
// state and records CREATED, DESTROYED and FREEZER for what differs from
// what the agent knew (issue #11; inotify is the faster next step).
//
// The agent's own create, destroy, pause and resume go through `change`,
// which records their event and updates what is known under one lock; a
// reconcile whose listing overlapped such a change leaves that name alone
// (it saw the container half way), so no change is reported twice.
import LmctfyProto
import LmctfySystem

final class Inventory: Sendable {
    struct State {
        /// Every container known, and whether it is frozen.
        var known: [String: Bool] = [:]
        /// Names with a change of the agent's own in progress.
        var busy: [String: Int] = [:]
        /// When each name last changed through the agent (a generation).
        var touched: [String: UInt64] = [:]
        var generation: UInt64 = 0
        var seeded = false
    }

    private let state = Mutexed(State())
    let events: EventLog

    init(events: EventLog) {
        self.events = events
    }

    /// Runs one of the agent's own changes of `path`: `body` does it and
    /// returns how `known` changes; the event is recorded by `body` too, all
    /// while a reconcile cannot apply a listing that saw it half done.
    func change<T>(_ path: String, _ body: () throws -> (T, (inout [String: Bool]) -> Void)) rethrows -> T {
        state.locked { s in
            s.generation += 1
            s.busy[path, default: 0] += 1
            s.touched[path] = s.generation
        }
        var update: ((inout [String: Bool]) -> Void)?
        defer {
            state.locked { s in
                s.generation += 1
                s.touched[path] = s.generation
                if let n = s.busy[path], n > 1 { s.busy[path] = n - 1 } else { s.busy[path] = nil }
                if let update {
                    // Every name the change touched (a destroy takes the
                    // subcontainers with it): a listing from before it must
                    // not bring them back.
                    let before = s.known
                    update(&s.known)
                    for name in Set(before.keys).union(s.known.keys) where before[name] != s.known[name] {
                        s.touched[name] = s.generation
                    }
                }
            }
        }
        let (result, apply) = try body()
        update = apply
        return result
    }

    /// The generation a reconcile's listing starts at.
    var generation: UInt64 { state.locked { $0.generation } }

    /// Applies a listing taken after `since`: containers new to it are
    /// CREATED, containers gone DESTROYED, a freezer state that differs
    /// FREEZER; names the agent changed meanwhile are left for the next
    /// round. The first listing only seeds what is known (what existed
    /// before the agent started is no event).
    func reconcile(_ listed: [String: Bool], since: UInt64) {
        state.locked { s in
            guard s.seeded else {
                s.known = listed
                s.seeded = true
                return
            }
            func settled(_ name: String) -> Bool { s.busy[name] == nil && (s.touched[name] ?? 0) <= since }
            for (name, frozen) in listed.sorted(by: { $0.key < $1.key }) where settled(name) {
                if let was = s.known[name] {
                    if was != frozen {
                        events.record(container: name, kind: .containerEventFreezer, frozen: frozen)
                        s.known[name] = frozen
                    }
                } else {
                    events.record(container: name, kind: .containerEventCreated)
                    s.known[name] = frozen
                }
            }
            for name in s.known.keys.sorted(by: >) where listed[name] == nil && settled(name) {
                events.record(container: name, kind: .containerEventDestroyed)
                s.known[name] = nil
            }
            // What no change is in progress for needs no generation any more.
            s.touched = s.touched.filter { s.busy[$0.key] != nil || $0.value > since }
        }
    }
}
