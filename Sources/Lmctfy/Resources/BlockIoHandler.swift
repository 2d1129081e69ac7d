// PLACEHOLDER until the BlockIo handler lands (being written now).
import LmctfyProto
import LmctfySystem

struct BlockIoHandler: ResourceHandler {
    var kind: ResourceKind { .blockio }
    func validate(_ spec: ContainerSpec, dirs: ResourceDirs) throws(LmctfyError) { throw .unimplemented("BlockIo") }
    func apply(_ spec: ContainerSpec, policy: UpdatePolicy, dirs: ResourceDirs) throws(LmctfyError) { throw .unimplemented("BlockIo") }
    func readSpec(into spec: inout ContainerSpec, dirs: ResourceDirs) throws(LmctfyError) {}
    func stats(into stats: inout ContainerStats, type: StatsType, dirs: ResourceDirs) throws(LmctfyError) {}
}
