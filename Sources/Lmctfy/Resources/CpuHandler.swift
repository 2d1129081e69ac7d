// PLACEHOLDER until the Cpu handler lands (being written now).
import LmctfyProto
import LmctfySystem

struct CpuHandler: ResourceHandler {
    var kind: ResourceKind { .cpu }
    func validate(_ spec: ContainerSpec, dirs: ResourceDirs) throws(LmctfyError) { throw .unimplemented("Cpu") }
    func apply(_ spec: ContainerSpec, policy: UpdatePolicy, dirs: ResourceDirs) throws(LmctfyError) { throw .unimplemented("Cpu") }
    func readSpec(into spec: inout ContainerSpec, dirs: ResourceDirs) throws(LmctfyError) {}
    func stats(into stats: inout ContainerStats, type: StatsType, dirs: ResourceDirs) throws(LmctfyError) {}
}
