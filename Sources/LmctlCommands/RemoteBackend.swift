// The verbs of `lmctfy`, against an agent: every operation is one RPC (see
// docs/PROTOCOL.md and the method table, AgentMethods). Status codes come
// back as they were sent, so lmctl's exit status is the agent's code (e.g.
// 16 when it refuses us).
import LmctfyBackend
import LmctfyProto
import LmctfyRPC
import LmctfySystem

/// A ContainerBackend whose every call is an RPC to one agent. Names that
/// the agent resolves are returned as sent (the responses do not carry the
/// resolved name).
public final class RemoteBackend: ContainerBackend, @unchecked Sendable {
    // RpcClient is used from one thread at a time: lmctl runs one verb.
    let client: RpcClient

    /// A backend over an authenticated connection to an agent.
    public init(client: RpcClient) {
        self.client = client
    }

    /// Create; returns the name as sent.
    @discardableResult
    public func create(_ name: String, spec: ContainerSpec) throws(LmctfyError) -> String {
        _ = try client.call(AgentMethods.create, CreateRequest(name: name, spec: spec))
        return name
    }

    /// Destroy; returns the name as sent.
    @discardableResult
    public func destroy(_ name: String, force: Bool) throws(LmctfyError) -> String {
        _ = try client.call(AgentMethods.destroy, DestroyRequest(name: name, force: force))
        return name
    }

    /// Update; returns the name as sent.
    @discardableResult
    public func update(_ name: String, spec: ContainerSpec, policy: UpdatePolicy) throws(LmctfyError) -> String {
        let p: SpecUpdatePolicy = policy == .diff ? .updateDiff : .updateReplace
        _ = try client.call(AgentMethods.update, UpdateRequest(name: name, spec: spec, policy: p))
        return name
    }

    /// Spec; `nil`: `/` (the caller is not on the agent's machine).
    public func spec(_ name: String?) throws(LmctfyError) -> ContainerSpec {
        try client.call(AgentMethods.spec, SpecRequest(name: name ?? "/")).spec ?? ContainerSpec()
    }

    /// Stats; `nil`: `/`.
    public func stats(_ name: String?, type: StatsType) throws(LmctfyError) -> ContainerStats {
        let kind: StatsKind = type == .full ? .statsFull : .statsSummary
        return try client.call(AgentMethods.stats, StatsRequest(name: name ?? "/", kind: kind)).stats ?? ContainerStats()
    }

    /// ListContainers; `nil`: `/`.
    public func listContainers(_ name: String?, recursive: Bool) throws(LmctfyError) -> [String] {
        try client.call(AgentMethods.listContainers, ListContainersRequest(name: name ?? "/", recursive: recursive)).names
    }

    /// ListPids or ListTids; `nil`: `/`.
    public func listTasks(_ name: String?, threads: Bool, recursive: Bool) throws(LmctfyError) -> [Int32] {
        if threads {
            return try client.call(AgentMethods.listTids, ListTidsRequest(name: name ?? "/", recursive: recursive)).tids
        }
        return try client.call(AgentMethods.listPids, ListPidsRequest(name: name ?? "/", recursive: recursive)).pids
    }

    /// Detect; needs a pid (the calling shell is not on the agent's machine).
    public func detect(_ tid: Int32?) throws(LmctfyError) -> String {
        guard let tid else {
            throw .invalidArgument("lmctl detect needs a PID: the calling shell is not on the agent's machine")
        }
        return try client.call(AgentMethods.detect, DetectRequest(pid: tid)).name ?? ""
    }

    /// Run: `onStarted` at RUN_STARTED; attached runs return at RUN_EXITED.
    public func run(_ name: String, argv: [String], detached: Bool,
                    onStarted: (Int32) throws(LmctfyError) -> Void) throws(LmctfyError) -> RunOutcome {
        var outcome: RunOutcome?
        try client.stream(AgentMethods.run, RunRequest(name: name, argv: argv, detached: detached)) { r throws(LmctfyError) in
            switch r.kind {
            case .runStarted:
                try onStarted(r.pid ?? 0)
                guard detached else { break }
                outcome = .started(pid: r.pid ?? 0)
                return false
            case .runExited:
                outcome = r.termSignal.map { .killed(signal: $0) } ?? .exited(status: r.exitCode ?? 0)
            default:
                break
            }
            return true
        }
        guard let outcome else { throw .internalError("The agent ended Run without reporting the command") }
        return outcome
    }

    /// Enter; needs TIDs.
    public func enter(_ name: String, tids: [Int32]) throws(LmctfyError) {
        guard !tids.isEmpty else {
            throw .invalidArgument("lmctl enter needs TIDs: the calling shell is not on the agent's machine")
        }
        _ = try client.call(AgentMethods.enter, EnterRequest(name: name, tids: tids))
    }

    /// KillAll.
    public func killAll(_ name: String, recursive: Bool) throws(LmctfyError) {
        _ = try client.call(AgentMethods.killAll, KillAllRequest(name: name, recursive: recursive))
    }

    /// Pause or Resume; returns the name as sent.
    @discardableResult
    public func setPaused(_ name: String, _ paused: Bool) throws(LmctfyError) -> String {
        if paused {
            _ = try client.call(AgentMethods.pause, PauseRequest(name: name))
        } else {
            _ = try client.call(AgentMethods.resume, ResumeRequest(name: name))
        }
        return name
    }

    /// The agent registers the watch when the call arrives; `onWatching`
    /// gets the name as sent. `cancellation` is asked as each response
    /// arrives (the client has no timed wait yet).
    public func notify(_ name: String, event: EventSpec, cancellation: NotifyCancellation?,
                       onWatching: (String) throws(LmctfyError) -> Void,
                       onEvent: (Int) throws(LmctfyError) -> Bool) throws(LmctfyError) {
        try onWatching(name)
        try client.stream(AgentMethods.notify, NotifyRequest(name: name, spec: event)) { r throws(LmctfyError) in
            if cancellation?.isCancelled() == true { return false }
            return r.event != nil ? try onEvent(1) : true
        }
    }

    /// Init, on the agent's machine.
    public func initMachine(_ spec: InitSpec) throws(LmctfyError) {
        _ = try client.call(AgentMethods.initMachine, InitRequest(spec: spec))
    }

    /// The agent's machine (`lmctl info`).
    public func machineInfo() throws(LmctfyError) -> MachineInfoResponse {
        try client.call(AgentMethods.machineInfo, MachineInfoRequest())
    }
}
