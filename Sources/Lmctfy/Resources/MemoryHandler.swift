// PLACEHOLDER until the Memory handler lands (being written now).
import LmctfyProto
import LmctfySystem

struct MemoryHandler: ResourceHandler {
    var kind: ResourceKind { .memory }
    func validate(_ spec: ContainerSpec, dirs: ResourceDirs) throws(LmctfyError) { throw .unimplemented("Memory") }
    func apply(_ spec: ContainerSpec, policy: UpdatePolicy, dirs: ResourceDirs) throws(LmctfyError) { throw .unimplemented("Memory") }
    func readSpec(into spec: inout ContainerSpec, dirs: ResourceDirs) throws(LmctfyError) {}
    func stats(into stats: inout ContainerStats, type: StatsType, dirs: ResourceDirs) throws(LmctfyError) {}
}
