// A resource handler turns one slice of a ContainerSpec into controller file
// writes, reads it back from the kernel, and gathers its statistics. Handlers
// never build paths: they get the container's directories in ResourceDirs.
import Glibc
import LmctfyProto
import LmctfySystem

/// The resources a container can isolate, in the order they are created
/// (and updated); destroy runs in reverse.
public enum ResourceKind: Int, CaseIterable, Sendable, Comparable, CustomStringConvertible {
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

/// The directories of one container that a handler may touch, and where the
/// container's processes are listed.
public struct ResourceDirs: Sendable {
    public let version: CgroupVersion
    public let container: ContainerName
    /// v1: one directory per controller (co-mounted controllers share one).
    public let v1: [Controller: CgroupDir]
    /// v2: the container's one directory.
    public let unified: CgroupDir?
    /// Where /proc is (injected for tests).
    public let procRoot: String
    /// The directories were made by the create in progress: no process is
    /// in them yet and no record was left on them, so handlers need not look.
    public var isNew = false

    public init(version: CgroupVersion, container: ContainerName, v1: [Controller: CgroupDir] = [:],
                unified: CgroupDir? = nil, procRoot: String = "/proc") {
        self.version = version
        self.container = container
        self.v1 = v1
        self.unified = unified
        self.procRoot = procRoot
    }

    /// The directory holding a controller's files: on v2 always the unified one.
    public func dir(_ c: Controller) -> CgroupDir? {
        version == .v2 ? unified : v1[c]
    }

    /// Every distinct directory of the container (co-mounted hierarchies
    /// once), the tasks directory first.
    public var allDirs: [CgroupDir] {
        if version == .v2 { return unified.map { [$0] } ?? [] }
        var seen = Set<String>()
        var out: [CgroupDir] = []
        for c in [Controller.freezer] + Controller.allCases {
            if let d = v1[c], seen.insert(d.path).inserted { out.append(d) }
        }
        return out
    }

    /// The processes of the container (its own, not its subcontainers').
    public func processes() throws(LmctfyError) -> [pid_t] {
        guard let d = version == .v2 ? unified : v1[.freezer] else { return [] }
        return try d.readPids("cgroup.procs")
    }
}

/// One resource's spec slice ↔ kernel files, for both cgroup versions.
public protocol ResourceHandler: Sendable {
    var kind: ResourceKind { get }

    /// Checks the slice before anything is written: a bad value is
    /// INVALID_ARGUMENT, a field this kernel cannot enforce UNIMPLEMENTED
    /// naming the field (D11). Called with the slice present.
    func validate(_ spec: ContainerSpec, dirs: ResourceDirs) throws(LmctfyError)

    /// Runs once after the directories were made, before the first apply.
    func prepare(dirs: ResourceDirs) throws(LmctfyError)

    /// Writes the slice with the policy (create uses .replace).
    func apply(_ spec: ContainerSpec, policy: UpdatePolicy, dirs: ResourceDirs) throws(LmctfyError)

    /// Reads the slice back from the kernel into `spec`.
    func readSpec(into spec: inout ContainerSpec, dirs: ResourceDirs) throws(LmctfyError)

    /// Fills this resource's statistics.
    func stats(into stats: inout ContainerStats, type: StatsType, dirs: ResourceDirs) throws(LmctfyError)
}

extension ResourceHandler {
    public func prepare(dirs: ResourceDirs) throws(LmctfyError) {}
}
