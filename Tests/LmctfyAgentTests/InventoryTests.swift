// The reconcile's bookkeeping on its own (no kernel): what a listing makes
// of changes done without the agent, and that the agent's own changes are
// never reported again, even by a listing taken before or during them.
@testable import LmctfyAgent
@testable import LmctfyEvents
import LmctfyProto
import Testing

@Suite struct InventoryTests {
    func kinds(_ log: EventLog) -> [String] {
        log.since(bootId: "b", after: 0) { _ in true }.0.map {
            "\($0.kind!.protoName.replacingOccurrences(of: "CONTAINER_EVENT_", with: "")) \($0.container!)\($0.frozen.map { " \($0)" } ?? "")"
        }
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
