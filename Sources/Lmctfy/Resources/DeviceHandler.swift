// PLACEHOLDER until the Device handler lands (being written now).
import LmctfyProto
import LmctfySystem

struct DeviceHandler: ResourceHandler {
    var kind: ResourceKind { .device }
    func validate(_ spec: ContainerSpec, dirs: ResourceDirs) throws(LmctfyError) { throw .unimplemented("Device") }
    func apply(_ spec: ContainerSpec, policy: UpdatePolicy, dirs: ResourceDirs) throws(LmctfyError) { throw .unimplemented("Device") }
    func readSpec(into spec: inout ContainerSpec, dirs: ResourceDirs) throws(LmctfyError) {}
    func stats(into stats: inout ContainerStats, type: StatsType, dirs: ResourceDirs) throws(LmctfyError) {}
}
