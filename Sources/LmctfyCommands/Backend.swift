// What the verbs act on. `lmctfy` runs them on this machine's cgroups
// (LocalBackend, over CL1); `lmctl` runs the very same verbs against an
// agent (a remote backend over the RPC); the agent serves its RPCs with a
// LocalBackend. One set of verb semantics, three front doors.
import Glibc
import Lmctfy
import LmctfyProto
import LmctfySystem

/// The result of `run`: a detached command's pid, or a foreground
/// command's exit status (as a shell reports it: code, or 128 + signal).
public enum RunOutcome: Sendable, Equatable {
    case started(pid: Int32)
    case exited(status: Int32)
}

/// Every operation a verb performs. Names are as the user typed them
/// (relative names resolve against the caller's container); `nil` means
/// "the caller's container" (the calling shell's, locally).
public protocol ContainerBackend: Sendable {
    func create(_ name: String, spec: ContainerSpec) throws(LmctfyError)
    /// Without `force`, refuses (9) a container with subcontainers,
    /// processes or threads. `/` is always refused (D7).
    func destroy(_ name: String, force: Bool) throws(LmctfyError)
    func update(_ name: String, spec: ContainerSpec, policy: UpdatePolicy) throws(LmctfyError)
    func spec(_ name: String?) throws(LmctfyError) -> ContainerSpec
    func stats(_ name: String?, type: StatsType) throws(LmctfyError) -> ContainerStats
    func listContainers(_ name: String?, recursive: Bool) throws(LmctfyError) -> [String]
    func listTasks(_ name: String?, threads: Bool, recursive: Bool) throws(LmctfyError) -> [Int32]
    /// The container of a task; `nil`: the caller.
    func detect(_ tid: Int32?) throws(LmctfyError) -> String
    func run(_ name: String, argv: [String], detached: Bool) throws(LmctfyError) -> RunOutcome
    /// `tids` empty: the caller.
    func enter(_ name: String, tids: [Int32]) throws(LmctfyError)
    func killAll(_ name: String, recursive: Bool) throws(LmctfyError)
    func setPaused(_ name: String, _ paused: Bool) throws(LmctfyError)
    /// Waits for events; calls `onEvent` with the count of each delivery.
    /// Returns after the first unless `follow`; ends by throwing otherwise
    /// (NOT_FOUND when the container goes away, D5).
    func notify(_ name: String, event: EventSpec, follow: Bool, onEvent: (Int) -> Void) throws(LmctfyError)
    func initMachine(_ spec: InitSpec) throws(LmctfyError)
}

/// CL1 on this machine.
public struct LocalBackend: ContainerBackend {
    public let api: ContainerApi
    /// Whose container `nil` names mean (lmctfy: its parent, the shell).
    public let callerPid: pid_t
    public let runForeground: @Sendable (Container, [String]) throws(LmctfyError) -> Int32
    public let initMachineHook: @Sendable (InitSpec) throws(LmctfyError) -> Void

    public init(api: ContainerApi, callerPid: pid_t,
                runForeground: @escaping @Sendable (Container, [String]) throws(LmctfyError) -> Int32 = CLIEnvironment.spawnAndWait,
                initMachine: @escaping @Sendable (InitSpec) throws(LmctfyError) -> Void = { (s: InitSpec) throws(LmctfyError) in
                    _ = try ContainerApi.initMachine(s)
                }) {
        self.api = api
        self.callerPid = callerPid
        self.runForeground = runForeground
        self.initMachineHook = initMachine
    }

    func container(_ name: String?) throws(LmctfyError) -> Container {
        if let name { return try api.get(name) }
        return try api.get(api.detect(pid: callerPid))
    }

    public func create(_ name: String, spec: ContainerSpec) throws(LmctfyError) {
        try api.create(name, spec: spec)
    }

    public func destroy(_ name: String, force: Bool) throws(LmctfyError) {
        let container = try api.get(name)
        // D7: the root holds every task on the machine; never destroy it.
        if container.name.isRoot {
            throw .failedPrecondition("Destroying the root container \"/\" is not allowed")
        }
        if !force {
            // Only an empty container goes: the recursive destroy would
            // otherwise kill what is running in it.
            let n = container.name
            if !(try container.subcontainers(recursive: false)).isEmpty {
                throw .failedPrecondition("Subcontainers found in \"\(n)\"; use -f to destroy them too")
            }
            if !(try container.processes(recursive: false)).isEmpty {
                throw .failedPrecondition("Processes found in \"\(n)\"; use -f to kill them")
            }
            if !(try container.threads(recursive: false)).isEmpty {
                throw .failedPrecondition("Tourist threads found in \"\(n)\"; use -f to kill them")
            }
        }
        try api.destroy(container.name)
    }

    public func update(_ name: String, spec: ContainerSpec, policy: UpdatePolicy) throws(LmctfyError) {
        try api.get(name).update(spec, policy: policy)
    }

    public func spec(_ name: String?) throws(LmctfyError) -> ContainerSpec {
        try container(name).spec()
    }

    public func stats(_ name: String?, type: StatsType) throws(LmctfyError) -> ContainerStats {
        try container(name).stats(type)
    }

    public func listContainers(_ name: String?, recursive: Bool) throws(LmctfyError) -> [String] {
        try container(name).subcontainers(recursive: recursive).map(\.path)
    }

    public func listTasks(_ name: String?, threads: Bool, recursive: Bool) throws(LmctfyError) -> [Int32] {
        let c = try container(name)
        return threads ? try c.threads(recursive: recursive) : try c.processes(recursive: recursive)
    }

    public func detect(_ tid: Int32?) throws(LmctfyError) -> String {
        try api.detect(pid: tid ?? callerPid).path
    }

    public func run(_ name: String, argv: [String], detached: Bool) throws(LmctfyError) -> RunOutcome {
        let c = try api.get(name)
        if detached { return .started(pid: try c.run(argv, options: RunOptions(fdPolicy: .detached))) }
        return .exited(status: try runForeground(c, argv))
    }

    public func enter(_ name: String, tids: [Int32]) throws(LmctfyError) {
        try api.get(name).enter(tids.isEmpty ? [callerPid] : tids)
    }

    public func killAll(_ name: String, recursive: Bool) throws(LmctfyError) {
        let c = try api.get(name)
        if recursive {
            for sub in try c.subcontainers(recursive: true).reversed() {
                try api.get(sub).killAll()
            }
        }
        try c.killAll()
    }

    public func setPaused(_ name: String, _ paused: Bool) throws(LmctfyError) {
        try api.get(name).setFrozen(paused)
    }

    public func notify(_ name: String, event: EventSpec, follow: Bool, onEvent: (Int) -> Void) throws(LmctfyError) {
        let watch = try api.get(name).watch(event)
        defer { watch.close() }
        repeat {
            onEvent(try watch.wait())
        } while follow
    }

    public func initMachine(_ spec: InitSpec) throws(LmctfyError) {
        try initMachineHook(spec)
    }
}
