// CL2 through a controller (README "Policy"): `lmctl hosts` shows each
// connected host's capacity and commitment, and `lmctl --controller ...
// create --anywhere` places a container on the least committed connected
// host whose policy admits it, says where it went, and refuses (8, with
// each host's arithmetic) when no host has room.
import Glibc
import Lmctfy
import LmctfyAgent
import LmctfyController
import LmctfyProto
import LmctfyRPC
import LmctfySystem
import LmctfyTestSupport
@testable import LmctlCommands
import Testing

@Suite(.enabled(if: RealCgroups.available, "\(RealCgroups.unavailableReason ?? "")"), .serialized)
struct PolicyControllerTests {
    @Test func anywherePicksTheLeastCommittedHostWithRoomAndRefusesWhenNoneHas() throws {
        let api = try ContainerApi.detect()
        let roots = try ["anyalpha", "anybeta"].map { try ContainerName.resolve(RealCgroups.uniqueName($0), relativeTo: .root) }
        defer { for r in roots { _ = try? api.destroy(r) } }
        for r in roots { try api.create(r, spec: try ContainerSpec(textFormat: "memory { limit: 268435456 }")) }
        let fleet = try Fleet()
        try withExtendedLifetime(fleet) {
            try fleet.startController()
            try fleet.startAgent("a", host: "alpha", keyId: "host-a", root: roots[0])
            try fleet.startAgent("b", host: "beta", keyId: "host-b", root: roots[1])
            fleet.waitForHosts(2)
            let client = try fleet.client()
            defer { client.close() }
            // alpha: 200 MiB of prod committed.
            client.host = "alpha"
            _ = try client.call(AgentMethods.create, CreateRequest(
                name: "/big", spec: try ContainerSpec(textFormat: "memory { limit: 209715200 }"), tier: "prod"))

            func anywhere(_ name: String, _ mib: Int) throws -> (Int32, String, String) {
                let r = try fleet.lmctl(["create", "--anywhere", "--tier", "prod", name, "memory { limit: \(mib << 20) }"])
                return (r.status, String(decoding: r.stdout, as: UTF8.self), String(decoding: r.stderr, as: UTF8.self))
            }
            func exists(_ root: ContainerName, _ n: String) throws -> Bool { try api.exists(ContainerName.resolve(root.path + n, relativeTo: .root)) }

            // Both admit 10 MiB; beta (nothing committed) is the less committed.
            var r = try anywhere("/small", 10)
            #expect(r.0 == 0 && r.1 == "host=\"beta\"\n", "\(r)")
            #expect(try exists(roots[1], "/small") && !exists(roots[0], "/small"))
            // 100 MiB: alpha has 56 MiB free, beta 246: beta.
            r = try anywhere("/web", 100)
            #expect(r.0 == 0 && r.1 == "host=\"beta\"\n", "\(r)")
            // A dry run says where it would go and makes nothing.
            r = try (fleet.lmctl(["create", "--anywhere", "--dry-run", "--tier", "prod", "/web2", "memory { limit: 104857600 }"]))
                .map3()
            #expect(r.0 == 0 && r.1.hasPrefix("admitted=\"true\" host=\"beta\" tier=\"prod\" message=\""), "\(r)")
            // In JSON: the host's whole answer, as a dry run at one agent
            // prints it, with the host (it was only {admitted, host}).
            let dryJSON = try fleet.lmctl(["create", "--anywhere", "--dry-run", "-o", "json", "--tier", "prod", "/web2",
                                        "memory { limit: 104857600 }"]).map3()
            #expect(dryJSON.0 == 0 && dryJSON.1.hasPrefix("{\"host\":\"beta\",") && dryJSON.1.contains("\"admitted\":true")
                    && dryJSON.1.contains("\"tier\":\"prod\"") && dryJSON.1.contains("\"policy\":"), "\(dryJSON)")
            #expect(try !exists(roots[1], "/web2") && !exists(roots[0], "/web2"))
            // beta now 110 MiB, alpha 200: 100 MiB more fits only on beta.
            r = try anywhere("/web2", 100)
            #expect(r.0 == 0 && r.1 == "host=\"beta\"\n", "\(r)")
            // Neither has 100 MiB left: 8, each host's arithmetic, nothing made.
            r = try anywhere("/web3", 100)
            #expect(r.0 == 8, "\(r)")
            #expect(r.2.contains("No host admits \"/web3\"") && r.2.contains("alpha: refused") && r.2.contains("beta: refused"), "\(r)")
            #expect(r.2.contains("prod 220200960 B (210.0 MiB) 0 milliCPU (3)"), "beta's three: \(r)")
            #expect(try !exists(roots[1], "/web3") && !exists(roots[0], "/web3"))
            // A name one host has already: 6, not a second one elsewhere.
            r = try anywhere("/small", 1)
            #expect(r.0 == 6 && r.2.contains("\"/small\" exists on host"), "\(r)")
            // A request every host refuses for itself: that code, not 8.
            let bad = try fleet.lmctl(["create", "--anywhere", "--tier", "nosuch", "/t", "memory { limit: 1048576 }"])
            #expect(bad.status == 3 && String(decoding: bad.stderr, as: UTF8.self).contains("Every host refused \"/t\""), "\(bad)")

            // hosts: capacity and commitment per host.
            let hosts = try fleet.lmctl(["hosts"])
            let lines = String(decoding: hosts.stdout, as: UTF8.self).split(separator: "\n")
            #expect(hosts.status == 0 && lines.count == 2)
            #expect(lines.allSatisfy { $0.contains("capacity_memory=\"268435456\"") }, "\(lines)")
            #expect(lines.first?.contains("name=\"alpha\"") == true && lines.first?.contains("committed_prod=\"209715200 bytes 0 milliCPU 1 containers\"") == true,
                    "\(lines)")
            #expect(lines.last?.contains("committed_prod=\"220200960 bytes 0 milliCPU 3 containers\"") == true
                    && lines.last?.contains("free_memory=\"48234496\"") == true, "\(lines)")
            // -o json: each HostInfo with its policy filled in by lmctl.
            let json = try fleet.lmctl(["hosts", "-o", "json"])
            let docs = String(decoding: json.stdout, as: UTF8.self).split(separator: "\n")
            #expect(json.status == 0 && docs.count == 2)
            #expect(docs.allSatisfy { $0.contains("\"capacityMemory\":\"268435456\"") || $0.contains("\"capacityMemory\": \"268435456\"") },
                    "\(docs)")
        }
    }
}

/// lmctl's lines for what CL2 adds, without root.
@Suite struct PolicyLineTests {
    @Test func aHostLineEndsWithItsPolicy() {
        let h = HostInfo(identity: HostIdentity(hostName: "alpha", cgroupVersion: 1, cpus: 2, memoryBytes: 1 << 30),
                         state: .hostConnected, stateSinceNs: 1_796_002_346_757_290_745)
        let p = PolicyReport(capacityMemory: 268_435_456, capacityMilliCpu: 2000,
                             tier: [TierCommitment(tier: "prod", memory: 209_715_200, milliCpu: 0, containers: 2),
                                    TierCommitment(tier: "batch", memory: 0, milliCpu: 0, containers: 0)],
                             freeMemory: 58_720_256, freeMilliCpu: 2000, overcommitPercent: 25)
        #expect(HostsCommand.line(h, policy: p) == "name=\"alpha\" state=\"connected\" since=\"2026-11-30T01:32:26.757Z\" "
            + "cgroup_version=\"1\" cpus=\"2\" memory_bytes=\"1073741824\" labels=\"\" capacity_memory=\"268435456\" "
            + "capacity_milli_cpu=\"2000\" committed_memory=\"209715200\" committed_prod=\"209715200 bytes 0 milliCPU 2 containers\" "
            + "committed_batch=\"0 bytes 0 milliCPU 0 containers\" free_memory=\"58720256\" free_milli_cpu=\"2000\" overcommit_percent=\"25\"")
    }

    @Test func anEvictedLineHasItsFigures() {
        let e = ContainerEvent(bootId: "b", sequence: 7, timestampNs: 1_796_002_346_757_290_745, container: "/e2",
                               kind: .containerEventEvicted, memoryThreshold: 161_061_240, reason: "memory pressure: \"x\"",
                               memoryUsage: 161_546_240)
        #expect(EventsCommand.line(e) == "b:7 2026-11-30T01:32:26.757Z EVICTED /e2 threshold=161061240 memory_usage=161546240 reason=\"memory pressure: \\\"x\\\"\"")
    }
}

private extension ChildResult {
    func map3() -> (Int32, String, String) {
        (status, String(decoding: stdout, as: UTF8.self), String(decoding: stderr, as: UTF8.self))
    }
}

/// lmctl's sums over a peer's policy figures: each tier's sum fits an
/// Int64, their total need not (CLI-made containers near 1 EiB; a hostile
/// peer), and `info` trapped adding them (SIGILL, found by an audit); `top`
/// trapped converting a peer's absurd CPU percentage to an Int.
@Suite struct LmctlPeerFiguresTests {
    @Test func tierSumsAndPercentagesCannotTrap() {
        let big: Int64 = 8_800_000_000_000_000_000
        let report = PolicyReport(capacityMemory: 1 << 30, capacityMilliCpu: 2000,
                                  tier: [TierCommitment(tier: "prod", memory: 1_100_000_000_000_000_000),
                                         TierCommitment(tier: "batch", memory: big)])
        let pairs = Dictionary(uniqueKeysWithValues: LmctlCLI.policyPairs(report))
        #expect(pairs["committed_memory"] == "9900000000000000000")
        #expect(PolicyCommands.load(report) > 9e9)
        #expect(TopCommand.formatPercent(12.34) == "12.3")
        #expect(TopCommand.formatPercent(1e300) == "-")
        #expect(TopCommand.formatPercent(.infinity) == "-")
    }
}
