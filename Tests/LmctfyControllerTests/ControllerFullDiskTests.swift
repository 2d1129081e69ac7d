// The controller on a full state_dir (a real tmpfs that a ballast file
// fills): the fleet log's journal falls behind and catches up in order once
// there is room, with no hole a restart would pass over, and the
// controller stops and starts on the full disk.
import Glibc
import Lmctfy
@testable import LmctfyEvents
import LmctfyProto
import LmctfyRPC
import LmctfySystem
import LmctfyTestSupport
import Testing

/// Containers a test makes through an agent (`base`_0, `base`_1, ...),
/// destroyed at its end.
private final class MadeThroughAgent {
    private let agent: RpcClient
    private let base: String
    private var names: [String] = []

    init(_ socket: String, base: String) throws {
        agent = try RpcClient.connect(unixPath: socket)
        self.base = base
    }

    func create(_ range: Range<Int>) throws {
        for i in range {
            let name = base + "_\(i)"
            _ = try agent.call(AgentMethods.create, CreateRequest(name: name, spec: ContainerSpec()))
            names.append(name)
        }
    }

    func destroyAll() {
        for n in names.reversed() { _ = try? agent.call(AgentMethods.destroy, DestroyRequest(name: n, force: true)) }
        agent.close()
    }
}

@Suite(.enabled(if: RealCgroups.available, "\(RealCgroups.unavailableReason ?? "")"), .serialized)
struct ControllerFullDiskTests {
    /// How many of `host`'s events the controller's fleet log holds.
    private func count(_ fleet: Fleet, host: String) throws -> Int {
        let client = try fleet.client()
        defer { client.close() }
        var n = 0
        try client.stream(AgentMethods.subscribe, SubscribeRequest(afterSequence: 0), deadlineMs: 5_000) { (r: SubscribeResponse) in
            if r.event?.host == host { n += 1 }
            return r.caughtUp == nil
        }
        return n
    }

    @Test func theFleetJournalCatchesUpWithoutAHoleAndTheControllerStartsOnAFullDisk() throws {
        let fleet = try Fleet()
        let disk = try FullDisk(fleet.dir + "/controller", kilobytes: 512)
        defer { disk.unmount() }
        try fleet.startController()
        try fleet.startAgent("a", host: "alpha", keyId: "host-a")
        fleet.waitForHosts(1)
        let made = try MadeThroughAgent(fleet.dir + "/agent-a.sock", base: RealCgroups.uniqueName("ctldisk"))
        defer { made.destroyAll() }
        let create = made.create
        func wait(for n: Int) throws {
            var have = 0
            for _ in 0..<600 {
                have = try count(fleet, host: "alpha")
                if have >= n { break }
                usleep(50_000)
            }
            #expect(have == n, "the controller has \(have) of alpha's \(n) events")
        }
        try create(0..<1)
        try wait(for: 1)
        try disk.fill()
        // More than the slack of the journal's last page.
        try create(1..<60)
        try wait(for: 60)
        disk.free()
        try create(60..<63)
        try wait(for: 63)
        // What the journal holds of alpha: every event, in order.
        let stored = EventJournal.stored(directory: fleet.dir + "/controller/fleet")
            .filter { $0.host == "alpha" }.compactMap(\.hostSequence)
        #expect(stored == Array(1...63), "the journal holds \(stored.count) of 63, in order: \(stored)")
        // A stop and a start on the full disk (the sequence reservation's
        // temp file and rename stopped the start).
        try disk.fill()
        fleet.stopController()
        try fleet.startController()
        fleet.waitForHosts(1)
        try create(63..<64)
        try wait(for: 64)
    }

    /// A fleet journal that gave up (the disk full for longer than the
    /// log keeps) starts again once the disk takes it: it then holds the
    /// newest events, the host cursors are written again, and a restarted
    /// controller goes on after them, storing nothing twice. (It took
    /// nothing more until a restart.)
    @Test func aFleetJournalThatGaveUpStartsAgain() throws {
        let fleet = try Fleet()
        let disk = try FullDisk(fleet.dir + "/controller", kilobytes: 512)
        defer { disk.unmount() }
        try fleet.startController(extra: "event_log_capacity: 16")
        let alpha = try fleet.startAgent("a", host: "alpha", keyId: "host-a")
        fleet.waitForHosts(1)
        let made = try MadeThroughAgent(fleet.dir + "/agent-a.sock", base: RealCgroups.uniqueName("ctlrestart"))
        defer { made.destroyAll() }
        let create = made.create
        /// alpha's host sequences in the fleet journal on disk.
        func journaled() throws -> [UInt64] {
            EventJournal.stored(directory: fleet.dir + "/controller/fleet")
                .filter { $0.host == "alpha" }.compactMap(\.hostSequence)
        }
        func newest() -> UInt64 { alpha.dispatcher.events.newest }
        try create(0..<1)
        try disk.fill()
        try create(1..<40)  // more than the fleet log keeps: the journal gives up
        let last = newest()
        disk.free()
        var stored: [UInt64] = []
        for _ in 0..<300 {
            stored = try journaled()
            if stored.last == last { break }
            usleep(100_000)
        }
        #expect(stored.last == last, "started again: the journal holds the newest event (\(stored))")
        #expect(stored == stored.sorted() && Set(stored).count == stored.count)
        // The cursors are written again (once the journal has everything).
        usleep(1_500_000)
        fleet.stopController()
        try fleet.startController(extra: "event_log_capacity: 16")
        fleet.waitForHosts(1)
        try create(40..<41)
        let end = newest()
        var seen: [UInt64] = []
        for _ in 0..<100 {
            seen = try journaled()
            if seen.last == end { break }
            usleep(100_000)
        }
        #expect(seen.last == end)
        #expect(Set(seen).count == seen.count, "nothing stored twice after the restart: \(seen)")
    }
}
