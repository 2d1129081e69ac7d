// A resource handler turns one slice of a ContainerSpec into controller file
// writes, reads it back from the kernel, and gathers its statistics. Handlers
// never build paths: they get the container's directories in ResourceDirs.
import Glibc
import LmctfyProto
import LmctfySystem

/// The resources a container can isolate, in the order they are created
/// (and updated); destroy runs in reverse.
public enum ResourceKind: Int, CaseIterable, Sendable, Comparable, CustomStringConvertible {
    /// cpu, memory, blockio, device, pids, monitoring: one per ContainerSpec
    /// slice, in creation order.
    case cpu, memory, blockio, device, pids, monitoring

    public static func < (a: ResourceKind, b: ResourceKind) -> Bool { a.rawValue < b.rawValue }

    /// The spec field's name, as in error messages and `xattr` records.
    public var description: String {
        switch self {
        case .cpu: "cpu"
        case .memory: "memory"
        case .blockio: "blockio"
        case .device: "device"
        case .pids: "pids"
        case .monitoring: "monitoring"
        }
    }

    /// The v1 hierarchies holding this resource's directories, owner first.
    /// cpuset and perf_event mirror the container tree like the others (D8).
    public var v1Controllers: [Controller] {
        switch self {
        case .cpu: [.cpu, .cpuacct, .cpuset]
        case .memory: [.memory]
        case .blockio: [.blkio]
        case .device: [.devices]
        case .pids: [.pids]
        case .monitoring: [.perfEvent]
        }
    }

    /// The v2 controller to enable in the parent's cgroup.subtree_control.
    public var v2Controllers: [String] {
        switch self {
        case .cpu: ["cpu", "cpuset"]
        case .memory: ["memory"]
        case .blockio: ["io"]
        case .device: []
        case .pids: ["pids"]
        case .monitoring: ["perf_event"]
        }
    }

    /// Whether `spec` names this resource.
    public func isPresent(in spec: ContainerSpec) -> Bool {
        switch self {
        case .cpu: spec.cpu != nil
        case .memory: spec.memory != nil
        case .blockio: spec.blockio != nil
        case .device: spec.device != nil
        case .pids: spec.pids != nil
        case .monitoring: spec.monitoring != nil
        }
    }
}

/// One resource's spec slice ↔ kernel files, for both cgroup versions.
public protocol ResourceHandler: Sendable {
    /// The resource (spec slice) this handler is for.
    var kind: ResourceKind { get }

    /// Checks the slice before anything is written: a bad value is
    /// INVALID_ARGUMENT, a field this kernel cannot enforce UNIMPLEMENTED
    /// naming the field (D11). Called with the slice present.
    func validate(_ spec: ContainerSpec, dirs: ResourceDirs) throws(LmctfyError)

    /// The part of `validate` that reads no directory: the values alone.
    /// `validate` runs it first; a dry run (`ContainerApi.checkCreate`)
    /// runs it where nothing is made yet.
    func checkSpec(_ spec: ContainerSpec) throws(LmctfyError)

    /// Runs once after the directories were made, before the first apply.
    func prepare(dirs: ResourceDirs) throws(LmctfyError)

    /// Writes the slice with the policy (create uses .replace).
    func apply(_ spec: ContainerSpec, policy: UpdatePolicy, dirs: ResourceDirs) throws(LmctfyError)

    /// The cgroup file writes `apply` would make (besides lmctfy's records),
    /// so an update can save what they overwrite.
    func plannedWrites(_ spec: ContainerSpec, policy: UpdatePolicy, dirs: ResourceDirs) throws(LmctfyError) -> [CgroupWrite]

    /// Reads the slice back from the kernel into `spec`.
    func readSpec(into spec: inout ContainerSpec, dirs: ResourceDirs) throws(LmctfyError)

    /// Fills this resource's statistics.
    func stats(into stats: inout ContainerStats, type: StatsType, dirs: ResourceDirs) throws(LmctfyError)
}

extension ResourceHandler {
    /// A slice whose every check needs the kernel's files: nothing.
    public func checkSpec(_ spec: ContainerSpec) throws(LmctfyError) {}

    /// Most resources need no preparation: does nothing.
    public func prepare(dirs: ResourceDirs) throws(LmctfyError) {}
}
