// The resource handlers on a real cgroup v2 kernel: this suite runs in the
// qemu guest (tools/test-v2); on the v1 host it is skipped, saying so. The
// v1 twin is ResourceIntegrationTests.
import Glibc
import Lmctfy
import LmctfyProto
import LmctfySystem
import LmctfyTestSupport
import Testing

private let v2Reason: String? = {
    if let reason = RealCgroups.unavailableReason { return reason }
    guard let api = try? ContainerApi.detect() else { return "cannot detect the cgroup mounts" }
    return api.version == .v2 ? nil : "cgroup v2 suite: runs in the qemu guest (tools/test-v2); this host runs cgroup \(api.version)"
}()

@Suite(.enabled(if: v2Reason == nil, "\(v2Reason ?? "")"))
struct ResourceV2IntegrationTests {
    let api: ContainerApi

    init() throws {
        api = try ContainerApi.detect()
    }

    func file(_ name: ContainerName, _ f: String) throws -> String {
        try api.resourceDirs(name).tasks!.read(f).trimmingWhitespace
    }

    @Test func cpuWeightAndMax() throws {
        try withTestContainer(api) { name in
            try api.create(name, spec: ContainerSpec(cpu: CpuSpec(limit: 2000, maxLimit: 500)))
            // shares 2048 → weight 1 + (2046 * 9999) / 262142 = 79
            #expect(try file(name, "cpu.weight") == "79")
            #expect(try file(name, "cpu.max") == "125000 250000")
            let spec = try api.get(name).spec()
            #expect(spec.cpu?.maxLimit == 500)
            try api.get(name).update(ContainerSpec(cpu: CpuSpec()), policy: .replace)  // D3
            #expect(try file(name, "cpu.weight") == "100")
            #expect(try file(name, "cpu.max") == "max 250000")
            #expect { try api.get(name).update(ContainerSpec(cpu: CpuSpec(maxLimit: 3)), policy: .diff) }
                throws: { ($0 as? LmctfyError)?.code == .invalidArgument }
        }
    }

    @Test func memoryMaxLowAndSwap() throws {
        try withTestContainer(api) { name in
            try api.create(name, spec: ContainerSpec(memory: MemorySpec(limit: 100_000_000, reservation: 50_000_000)))
            #expect(try file(name, "memory.max") == "99999744")  // page-rounded
            #expect(try file(name, "memory.low") == "49999872")
            let c = try api.get(name)
            #expect(try c.spec().memory?.limit == 99_999_744)
            try c.update(ContainerSpec(memory: MemorySpec()), policy: .replace)
            #expect(try file(name, "memory.max") == "max")
            #expect(try file(name, "memory.low") == "0")
            let stats = try c.stats(.full)
            #expect(stats.memory?.usage != nil)
        }
    }

    @Test func pidsAndIoThrottles() throws {
        try withTestContainer(api) { name in
            try api.create(name, spec: ContainerSpec(pids: PidsSpec(limit: 3)))
            #expect(try file(name, "pids.max") == "3")
            // A fork beyond the limit fails in the container: the limit is real.
            let c = try api.get(name)
            _ = try c.run([testHelperPath, "forkloop"])
            var count = 0
            for _ in 0..<2000 {
                count = try c.processes(recursive: false).count
                if count >= 3 { break }
                usleep(1000)
            }
            #expect(count == 3)
            usleep(50_000)  // three processes forking all the while
            #expect(try c.processes(recursive: false).count == 3)
            #expect(try c.stats(.summary).pids?.failCount ?? 0 > 0)
            // pids.current may read above the limit for an instant: the
            // kernel charges a fork before it checks the limit, and takes
            // the charge back when it is over (a CI run read 4).
            #expect(try api.resourceDirs(name).tasks!.readInt("pids.current") ?? 0 >= 3)
            try c.killAll()
        }
    }

    @Test func scheduledLatencyBestEffortIsCpuIdle() throws {
        try withTestContainer(api) { name in
            try api.create(name, spec: ContainerSpec(cpu: CpuSpec(schedulingLatency: .bestEffort)))
            #expect(try file(name, "cpu.idle") == "1")
        }
    }

    /// `init` on v2 enables every available controller at the root; in the
    /// guest that changes nothing outside it (it is the guest's machine).
    @Test func initEnablesControllersAtTheRoot() throws {
        _ = try ContainerApi.initMachine(InitSpec())
        let enabled = try api.resourceDirs(.root).tasks!.read("cgroup.subtree_control")
        for c in ["cpu", "memory", "io", "pids"] { #expect(enabled.contains(c), "\(c) in \(enabled)") }
        // And through the binary, as an operator would run it.
        let r = try TestProcess.capture([builtTool("lmctfy"), "init", ""])
        #expect(r.status == 0, "\(String(decoding: r.stderr, as: UTF8.self))")
    }
}
