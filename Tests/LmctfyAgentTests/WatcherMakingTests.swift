// The watcher and the agent's own creates in progress (issue #10's
// lifecycle profile): a container's directory that appears while the agent
// is still making it is not looked at then, but `fullWatchMs` later, as one
// the agent made; nothing is lost whichever way the create ends. The
// agent's create is stood in for by Inventory.change around a CL1 create
// that stays busy past the watcher's batch, so that its inotify event is
// handled while the name is busy.
import Glibc
import Lmctfy
@testable import LmctfyAgent
import LmctfyProto
import LmctfyRPC
import LmctfySystem
import LmctfyTestSupport
import Testing

@Suite(.enabled(if: RealCgroups.available, "\(RealCgroups.unavailableReason ?? "")"))
struct WatcherMakingTests {
    /// Events of `name` in the log, as "KIND[ frozen]", once `done` says so
    /// (or after 30 s: a machine-wide agent in the parallel host suite
    /// sees every other suite's containers, and once took more than 3 s;
    /// 10 s were not enough once, with a probe's agent busy beside the run).
    func eventsOf(_ socket: String, _ name: String, until done: ([String]) -> Bool) -> [String] {
        var got: [String] = []
        let end = MonotonicClock.milliseconds() + 30_000
        while MonotonicClock.milliseconds() < end {
            let replay = Subscriber(socket, SubscribeRequest(name: name, afterSequence: 0), until: { $0.last?.caughtUp != nil })
            got = events(replay.wait().0).filter { $0.container == name }.map {
                $0.kind!.protoName.replacingOccurrences(of: "CONTAINER_EVENT_", with: "") + ($0.frozen == true ? " frozen" : "")
            }
            if done(got) { break }
            usleep(10_000)
        }
        return got
    }

    /// Made by the agent, its mkdir seen while it was busy: watched once
    /// made, so a freeze behind the agent's back right after is an event,
    /// and the agent's CREATED is the only one. A create that ends after
    /// the full watch was due (60 ms) too.
    @Test(arguments: [UInt32(8_000), 60_000])
    func aContainerSeenWhileTheAgentMakesItIsWatchedOnceMade(busyFor: UInt32) throws {
        try withAgent("reconcile_interval_ms: 0") { agent, socket in
            let name = RealCgroups.uniqueName("watchmaking")
            let api = try ContainerApi.detect()
            defer { _ = try? api.destroy(try api.resolve(name)) }
            let dispatcher = agent.dispatcher
            try dispatcher.inventory.change(name) {
                _ = try api.create(try api.resolve(name), spec: ContainerSpec(memory: MemorySpec(limit: 64 << 20)))
                dispatcher.events.record(container: name, kind: .containerEventCreated)
                usleep(busyFor)  // past the watcher's 2 ms batch: its event is handled now
                return ((), { $0[name] = false })
            }
            try api.get(try api.resolve(name)).setFrozen(true)
            let got = eventsOf(socket, name) { $0.contains("FREEZER frozen") }
            #expect(got == ["CREATED", "FREEZER frozen"], "\(got)")
        }
    }

    /// The agent's create of the name did not make it (it failed), but
    /// the directory seen while it was busy is there (made by another
    /// lmctfy at the same moment): found and reported when due. The
    /// create ends before the full watch is due (8 ms), or after it (a
    /// slow create: 60 ms, past several `fullWatchMs`; under the thread
    /// sanitizer, where the first did, the name was then watched as one
    /// being made, whose `complete` mark had been written already, and it
    /// was never reported).
    @Test(arguments: [UInt32(8_000), 60_000])
    func aContainerSeenWhileTheAgentsCreateFailedIsFoundWhenDue(busyFor: UInt32) throws {
        try withAgent("reconcile_interval_ms: 0") { agent, socket in
            let name = RealCgroups.uniqueName("watchfailed")
            let api = try ContainerApi.detect()
            defer { _ = try? api.destroy(try api.resolve(name)) }
            try agent.dispatcher.inventory.change(name) {
                _ = try api.create(try api.resolve(name), spec: ContainerSpec(memory: MemorySpec(limit: 64 << 20)))
                usleep(busyFor)
                return ((), { _ in })  // not the agent's: nothing known, no event of its own
            }
            var got = eventsOf(socket, name) { $0.contains("CREATED") }
            #expect(got == ["CREATED"], "\(got)")
            try api.get(try api.resolve(name)).setFrozen(true)
            got = eventsOf(socket, name) { $0.contains("FREEZER frozen") }
            #expect(got == ["CREATED", "FREEZER frozen"], "\(got)")
        }
    }

    /// Made with the CLI while the agent changes the container above it (a
    /// pause, an update): the watcher's look cannot record it then, and
    /// looks again once the change is over (it watched it and never looked
    /// again: no CREATED without a reconcile).
    @Test func aContainerMadeBelowOneTheAgentIsChangingIsFoundAfterTheChange() throws {
        try withAgent("reconcile_interval_ms: 0") { agent, socket in
            let parent = RealCgroups.uniqueName("watchbelow")
            let name = parent + "/sub"
            let api = try ContainerApi.detect()
            defer { _ = try? api.destroy(try api.resolve(parent)) }
            _ = try api.create(try api.resolve(parent), spec: ContainerSpec(memory: MemorySpec(limit: 64 << 20)))
            #expect(eventsOf(socket, parent) { $0.contains("CREATED") } == ["CREATED"])
            try agent.dispatcher.inventory.change(parent) {
                _ = try api.create(try api.resolve(name), spec: ContainerSpec(memory: MemorySpec(limit: 32 << 20)))
                usleep(60_000)  // past the watcher's batch and its full watch
                return ((), { _ in })
            }
            #expect(eventsOf(socket, name) { $0.contains("CREATED") } == ["CREATED"])
        }
    }

    /// Destroyed through the agent and made again under its name by another
    /// lmctfy before the agent's destroy was over: the new one is CREATED
    /// and watched (it was taken for the agent's own, then forgotten with
    /// it, never watched: a freeze of it was no event).
    @Test func aContainerMadeAgainDuringTheAgentsDestroyIsFoundAndWatched() throws {
        try withAgent("reconcile_interval_ms: 0") { agent, socket in
            let name = RealCgroups.uniqueName("watchagain")
            let api = try ContainerApi.detect()
            defer { _ = try? api.destroy(try api.resolve(name)) }
            _ = try api.create(try api.resolve(name), spec: ContainerSpec(memory: MemorySpec(limit: 64 << 20)))
            #expect(eventsOf(socket, name) { $0.contains("CREATED") } == ["CREATED"])
            usleep(50_000)  // its full watch
            let dispatcher = agent.dispatcher
            try dispatcher.inventory.change(name) {
                try api.destroy(try api.resolve(name))
                dispatcher.events.record(container: name, kind: .containerEventDestroyed)
                _ = try api.create(try api.resolve(name), spec: ContainerSpec(memory: MemorySpec(limit: 64 << 20)))
                // Past the watcher's batch, and past its full watch of the
                // name (MachineWatcher.fullWatchMs): the destroy outlasts
                // the watcher's first looks, as under TSan (where 8 ms
                // failed once).
                usleep(60_000)
                return ((), { $0[name] = nil })
            }
            var got = eventsOf(socket, name) { $0.count >= 3 }
            #expect(got == ["CREATED", "DESTROYED", "CREATED"], "\(got)")
            usleep(50_000)  // its full watch
            try api.get(try api.resolve(name)).setFrozen(true)
            got = eventsOf(socket, name) { $0.contains("FREEZER frozen") }
            #expect(got == ["CREATED", "DESTROYED", "CREATED", "FREEZER frozen"], "\(got)")
        }
    }
}
