// lmctl top at a controller (issue #16): without --host, every connected
// host's containers (HOST:NAME), or those of the hosts --hosts selects.
// The two test hosts share this machine, so each sees the same containers.
import Glibc
import LmctfyProto
import LmctfySystem
import LmctfyTestSupport
import Testing

@Suite(.enabled(if: RealCgroups.available, "\(RealCgroups.unavailableReason ?? "")"), .serialized)
struct TopControllerTests {
    @Test func everyHostsContainersOrTheSelectedOnes() throws {
        let fleet = try Fleet.twoHosts()
        let base = RealCgroups.uniqueName("fleettop")
        defer { _ = try? fleet.lmctl(["--host", "alpha", "destroy", "-f", base]) }
        for (name, spec) in [(base, "memory:{limit:209715200}"), (base + "/web", "memory:{limit:104857600}")] {
            let r = try fleet.lmctl(["--host", "alpha", "create", name, spec])
            #expect(r.status == 0, "\(r.err)")
        }
        let all = try fleet.lmctl(["top", "--once", "-r", "--sort", "name", base])
        #expect(all.status == 0, "\(all.err)")
        let rows = all.lines.dropFirst().map { $0.split(separator: " ").map(String.init) }
        #expect(rows.map { $0[0] } == ["alpha:\(base)/web", "beta:\(base)/web"], "\(all.out)")
        #expect(rows.allSatisfy { $0[3] == "100.0M" }, "\(all.out)")

        let selected = try fleet.lmctl(["--hosts", "zone=z2", "top", "--once", base])
        #expect(selected.status == 0, "\(selected.err)")
        #expect(selected.lines.dropFirst().map { String($0.split(separator: " ")[0]) } == ["beta:\(base)/web"], "\(selected.out)")

        // One host: its names as they are.
        let one = try fleet.lmctl(["--host", "alpha", "top", "--once", base])
        #expect(one.lines.dropFirst().map { String($0.split(separator: " ")[0]) } == ["\(base)/web"], "\(one.out)")

        let none = try fleet.lmctl(["--hosts", "zone=nowhere", "top", "--once"])
        #expect(none.status == 5, "\(none.err)")
    }
}
