// cpu and memory through the CLI, on whichever cgroup version the machine
// runs (v1 on the host, v2 in the qemu guest).
import Foundation
import Lmctfy
import LmctfyProto
import LmctfyTestSupport
import Testing

@Suite(.serialized, .enabled(if: RealCgroups.available, "\(RealCgroups.unavailableReason ?? "")"))
struct CpuMemoryCLITests {
    @Test(arguments: Runner.allCases)
    func createSpecUpdateWithCpuAndMemory(_ lmctfy: Runner) throws {
        try withTestName("cpumem") { name throws in
            var r = try lmctfy("create", name, "cpu:{limit:500} memory:{limit:104857600}")
            try #require(r.status == 0, "\(r)")
            let spec = try ContainerSpec(serializedBytes: try lmctfy("-b", "spec", name).stdoutBytes)
            // v2 keeps cpu.weight, coarser than shares: one weight step is
            // about 25 milliCPU, so the read-back is only that close there.
            let v2 = (try? ContainerApi.detect().version) == .v2
            if v2 { #expect(abs(Int(spec.cpu?.limit ?? 0) - 500) <= 25, "\(spec)") } else { #expect(spec.cpu?.limit == 500) }
            #expect(spec.memory?.limit == 104857600)

            r = try lmctfy("update", "diff", name, "memory:{limit:209715200}")
            #expect(r.status == 0, "\(r)")
            let json = try lmctfy("-o", "json", "spec", name).json()
            #expect((json["memory"] as? [String: Any])?["limit"] as? String == "209715200")

            r = try lmctfy("stats", "summary", name)
            #expect(r.status == 0, "\(r)")
            #expect(r.stdout.contains("cpu {") && r.stdout.contains("memory {"))
            #expect(try lmctfy("destroy", name).status == 0)
        }
    }

    @Test(arguments: Runner.allCases)
    func updateOfAResourceNotIsolatedIsInvalid(_ lmctfy: Runner) throws {
        try withTestName("cpuonly") { name throws in
            let r = try lmctfy("create", name, "cpu:{limit:1000}")
            try #require(r.status == 0, "\(r)")
            #expect(try lmctfy("update", "diff", name, "memory:{limit:104857600}").status == 3)
            #expect(try lmctfy("destroy", name).status == 0)
        }
    }
}
