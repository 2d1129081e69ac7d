// The reconcile's bookkeeping on its own (no kernel): what a listing makes
// of changes done without the agent, and that the agent's own changes are
// never reported again, even by a listing taken before or during them.
@testable import LmctfyAgent
@testable import LmctfyEvents
import LmctfyProto
import LmctfySystem
import Glibc
import Testing

@Suite struct InventoryTests {
    func kinds(_ log: EventLog) -> [String] {
        log.since(bootId: "b", after: 0) { _ in true }.0.map {
            "\($0.kind!.protoName.replacingOccurrences(of: "CONTAINER_EVENT_", with: "")) \($0.container!)\($0.frozen.map { " \($0)" } ?? "")"
        }
    }

    /// The agent's changes of one tree run one at a time, each with its
    /// event (a Create racing a Destroy of one name was recorded DESTROYED
    /// then CREATED when the create's thread recorded last); other trees do
    /// not wait, and the thread holding a tree may take it again (a freeze
    /// lease's thaw holds the tree across its Resume).
    @Test func changesOfOneTreeRunOneAtATime() {
        let log = EventLog(capacity: 100, bootId: "b")
        let inventory = Inventory(events: log)
        let order = Mutexed<[String]>([])
        let inA = Latch(), release = Latch()
        let a = Threads.start {
            inventory.change("/t/x") {
                inA.signal()
                release.wait()
                inventory.holdingTree("/t") { order.locked { $0.append("A ends") } }
                return ((), { _ in })
            }
        }
        inA.wait()
        inventory.change("/u") {
            order.locked { $0.append("U") }
            return ((), { _ in })
        }
        let b = Threads.start {
            inventory.change("/t/x/y") {
                order.locked { $0.append("B") }
                return ((), { _ in })
            }
        }
        usleep(100_000)  // B has tried to start by now (it must wait for A)
        release.signal()
        pthread_join(a, nil)
        pthread_join(b, nil)
        #expect(order.locked { $0 } == ["U", "A ends", "B"])
        #expect(Inventory.tree("/t/x/y") == "/t" && Inventory.tree("/t") == "/t" && Inventory.tree("/") == "/")
    }

    @Test func listingsBecomeCreatedFreezerAndDestroyedEvents() {
        let log = EventLog(capacity: 100, bootId: "b")
        let inventory = Inventory(events: log)
        inventory.reconcile(["/old": false], since: inventory.generation)  // seeds: no event
        #expect(kinds(log).isEmpty)
        inventory.reconcile(["/old": false, "/new": false], since: inventory.generation)
        inventory.reconcile(["/old": true, "/new": false], since: inventory.generation)
        inventory.reconcile(["/new": false], since: inventory.generation)
        #expect(kinds(log) == ["CREATED /new", "FREEZER /old true", "DESTROYED /old"])
    }

    @Test func theAgentsOwnChangesAreNotReportedAgainByAStaleListing() {
        let log = EventLog(capacity: 100, bootId: "b")
        let inventory = Inventory(events: log)
        inventory.reconcile(["/a": false, "/a/b": false], since: inventory.generation)
        // A listing starts, then the agent destroys /a (and /a/b with it).
        let since = inventory.generation
        inventory.change("/a") {
            log.record(container: "/a", kind: .containerEventDestroyed)
            return ((), { known in known["/a"] = nil; known["/a/b"] = nil })
        }
        // The listing, taken before the destroy, still shows both.
        inventory.reconcile(["/a": false, "/a/b": false], since: since)
        #expect(kinds(log) == ["DESTROYED /a"], "neither comes back as CREATED")
        // And a create through the agent is not reported again either.
        let since2 = inventory.generation
        inventory.change("/c") {
            log.record(container: "/c", kind: .containerEventCreated)
            return ((), { $0["/c"] = false })
        }
        inventory.reconcile([:], since: since2)  // listed before /c was made
        inventory.reconcile(["/c": false], since: inventory.generation)
        #expect(kinds(log) == ["DESTROYED /a", "CREATED /c"])
    }

    @Test func aListingDuringAChangeLeavesThatNameAlone() {
        let log = EventLog(capacity: 100, bootId: "b")
        let inventory = Inventory(events: log)
        inventory.reconcile([:], since: inventory.generation)
        inventory.change("/x") {
            // The reconcile runs while the agent is creating /x.
            inventory.reconcile(["/x": false], since: inventory.generation)
            log.record(container: "/x", kind: .containerEventCreated)
            return ((), { $0["/x"] = false })
        }
        #expect(kinds(log) == ["CREATED /x"])
    }

    /// What the watcher recorded while a listing was under way is not
    /// undone by that listing (it recorded DESTROYED for a container the
    /// watcher had just seen made, and the next round CREATED again; the
    /// same for a destroy and a pause). A later listing still applies.
    @Test func aListingFromBeforeTheWatchersLookLeavesThatNameAlone() {
        let log = EventLog(capacity: 100, bootId: "b")
        let inventory = Inventory(events: log)
        inventory.reconcile(["/gone": false, "/paused": false], since: inventory.listingStarts())
        let since = inventory.listingStarts()
        // Listed now; then the CLI makes /new, destroys /gone and pauses
        // /paused, and the watcher records each.
        let listed = ["/gone": false, "/paused": false]
        inventory.observe("/new", exists: true, frozen: false, since: inventory.generation)
        inventory.observe("/gone", exists: false, frozen: nil, since: inventory.generation)
        inventory.observe("/paused", exists: true, frozen: true, since: inventory.generation)
        inventory.reconcile(listed, since: since)
        #expect(kinds(log) == ["CREATED /new", "DESTROYED /gone", "FREEZER /paused true"], "nothing undone")
        inventory.reconcile(["/new": false, "/paused": true], since: inventory.listingStarts())
        #expect(kinds(log).count == 3, "and nothing again")
        inventory.reconcile(["/new": false], since: inventory.listingStarts())
        #expect(kinds(log).last == "DESTROYED /paused", "a listing after them applies")
    }

    /// A container destroyed with the CLI while the agent destroys one
    /// below it: the agent's destroy records that one's DESTROYED, the
    /// watcher's look at the parent does not record it again.
    @Test func aParentsGoingLeavesWhatTheAgentIsChangingBelowIt() {
        let log = EventLog(capacity: 100, bootId: "b")
        let inventory = Inventory(events: log)
        inventory.reconcile(["/a": false, "/a/b": false, "/a/c": false], since: inventory.listingStarts())
        inventory.change("/a/b") {
            log.record(container: "/a/b", kind: .containerEventDestroyed)
            inventory.observe("/a", exists: false, frozen: nil, since: inventory.generation)
            return ((), { $0["/a/b"] = nil })
        }
        #expect(kinds(log) == ["DESTROYED /a/b", "DESTROYED /a/c", "DESTROYED /a"])
        #expect(!inventory.knows("/a/b") && !inventory.knows("/a"))
    }

    /// A pause or resume of the agent's own writes no resource file: the
    /// spec read before it still stands, and an update made with the CLI
    /// afterwards is an UPDATED (forgotten, the next read only remembered
    /// the spec).
    @Test func anUpdateMadeAfterTheAgentsPauseIsUpdated() {
        let log = EventLog(capacity: 100, bootId: "b")
        let inventory = Inventory(events: log)
        inventory.reconcile(["/c": false], since: inventory.listingStarts())
        inventory.observeSpec("/c", [1], since: inventory.generation)
        inventory.change("/c", keepsSpec: true) {
            log.record(container: "/c", kind: .containerEventFreezer, frozen: true)
            return ((), { $0["/c"] = true })
        }
        inventory.observeSpec("/c", [2], since: inventory.generation)
        #expect(kinds(log) == ["FREEZER /c true", "UPDATED /c"])
        // An update of the agent's own: read again without an event.
        inventory.change("/c") {
            log.record(container: "/c", kind: .containerEventUpdated)
            return ((), { _ in })
        }
        inventory.observeSpec("/c", [3], since: inventory.generation)
        #expect(kinds(log) == ["FREEZER /c true", "UPDATED /c", "UPDATED /c"])
    }
}

@Suite struct ReconnectBackoffTests {
    /// Full jitter: the wait is random below a ceiling that doubles from
    /// the base with each failure in a row, up to the maximum.
    @Test func theCeilingDoublesFromTheBaseUpToTheMaximum() {
        let ceilings = (0..<8).map { Agent.reconnectCeiling(baseMs: 500, maxMs: 30_000, failures: $0) }
        #expect(ceilings == [500, 1000, 2000, 4000, 8000, 16_000, 30_000, 30_000])
        #expect(Agent.reconnectCeiling(baseMs: 500, maxMs: 30_000, failures: 10_000) == 30_000, "no overflow after many failures")
    }
}
