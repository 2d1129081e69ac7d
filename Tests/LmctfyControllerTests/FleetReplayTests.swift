// A fleet Subscribe whose replay is longer than the controller holds for a
// connection (4 MiB), from a caller that does not read for a while: the
// replay waits for the connection and then comes whole, a part at a time
// (it ended "lagged" part way, and built in one go it held the
// controller's loop while every kept event was decoded).
import Glibc
import Lmctfy
import LmctfyProto
import LmctfyRPC
import LmctfySystem
import LmctfyTestSupport
import Testing

@Suite(.enabled(if: RealCgroups.available, "\(RealCgroups.unavailableReason ?? "")"), .serialized)
struct FleetReplayTests {
    @Test func aFleetReplayLongerThanTheConnectionsLimitWaitsForIt() throws {
        let fleet = try Fleet()
        try fleet.startController()
        let agent = try fleet.startAgent("a", host: "alpha", keyId: "host-a")
        fleet.waitForHosts(1)
        // ~6 MB of events: long names (events are recorded as they are, no
        // container needed).
        let name = RealCgroups.uniqueName("fleetwait") + "/" + String(repeating: "n", count: 1500)
        let count = 4000  // within the agent's log (4,096)
        let base = fleet.controller?.fleetLog.newest ?? 0
        for i in 0..<count { agent.dispatcher.events.record(container: name, kind: .containerEventEmpty, pid: Int32(i + 1)) }
        var tries = 0
        while (fleet.controller?.fleetLog.newest ?? 0) < base + UInt64(count) && tries < 3000 { usleep(10_000); tries += 1 }
        #expect((fleet.controller?.fleetLog.newest ?? 0) >= base + UInt64(count), "the controller has them")

        let link = try RawLink(fd: try RpcSocket.connectUnix(path: fleet.dir + "/controller.sock"),
                               Session(dialler: .peerCredentials, name: "slow", now: MonotonicClock.milliseconds()))
        link.open("Subscribe", try SubscribeRequest(name: name, afterSequence: base).serializedBytes(), deadlineMs: nil)
        usleep(500_000)  // not reading: the socket fills, the replay waits
        let (pids, caughtUp) = link.readReplayPids()
        #expect(link.statuses.isEmpty, "not ended: \(link.statuses)")
        #expect(caughtUp && pids == (1...Int32(count)).map { $0 }, "every event once, in order (\(pids.count))")
        // Meanwhile others were served.
        let client = try fleet.client()
        defer { client.close() }
        #expect(try client.call(ControllerMethods.listHosts, ListHostsRequest()).hosts.count == 1)
    }
}
