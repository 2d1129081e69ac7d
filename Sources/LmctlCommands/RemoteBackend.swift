// The verbs of `lmctfy`, against an agent: every operation is one RPC (see
// docs/PROTOCOL.md). Status codes come back as they were sent, so lmctl's
// exit status is the agent's code (e.g. 16 when it refuses us).
import Lmctfy
import LmctfyCommands
import LmctfyProto
import LmctfyRPC
import LmctfySystem

public final class RemoteBackend: ContainerBackend, @unchecked Sendable {
    // RpcClient is used from one thread at a time: lmctl runs one verb.
    let client: RpcClient

    public init(client: RpcClient) {
        self.client = client
    }

    func call<Req: ProtoMessage, Resp: ProtoMessage>(_ method: String, _ request: Req, _: Resp.Type) throws(LmctfyError) -> Resp {
        try client.call(method, request, as: Resp.self)
    }

    public func create(_ name: String, spec: ContainerSpec) throws(LmctfyError) {
        _ = try call("Create", CreateRequest(name: name, spec: spec), CreateResponse.self)
    }

    public func destroy(_ name: String, force: Bool) throws(LmctfyError) {
        _ = try call("Destroy", DestroyRequest(name: name, force: force), DestroyResponse.self)
    }

    public func update(_ name: String, spec: ContainerSpec, policy: UpdatePolicy) throws(LmctfyError) {
        let p: SpecUpdatePolicy = policy == .diff ? .updateDiff : .updateReplace
        _ = try call("Update", UpdateRequest(name: name, spec: spec, policy: p), UpdateResponse.self)
    }

    public func spec(_ name: String?) throws(LmctfyError) -> ContainerSpec {
        try call("Spec", SpecRequest(name: name ?? "/"), SpecResponse.self).spec ?? ContainerSpec()
    }

    public func stats(_ name: String?, type: StatsType) throws(LmctfyError) -> ContainerStats {
        let kind: StatsKind = type == .full ? .statsFull : .statsSummary
        return try call("Stats", StatsRequest(name: name ?? "/", kind: kind), StatsResponse.self).stats ?? ContainerStats()
    }

    public func listContainers(_ name: String?, recursive: Bool) throws(LmctfyError) -> [String] {
        try call("ListContainers", ListContainersRequest(name: name ?? "/", recursive: recursive), ListContainersResponse.self).names
    }

    public func listTasks(_ name: String?, threads: Bool, recursive: Bool) throws(LmctfyError) -> [Int32] {
        if threads {
            return try call("ListTids", ListTidsRequest(name: name ?? "/", recursive: recursive), ListTidsResponse.self).tids
        }
        return try call("ListPids", ListPidsRequest(name: name ?? "/", recursive: recursive), ListPidsResponse.self).pids
    }

    public func detect(_ tid: Int32?) throws(LmctfyError) -> String {
        guard let tid else {
            throw .invalidArgument("lmctl detect needs a PID: the calling shell is not on the agent's machine")
        }
        return try call("Detect", DetectRequest(pid: tid), DetectResponse.self).name ?? ""
    }

    public func run(_ name: String, argv: [String], detached: Bool) throws(LmctfyError) -> RunOutcome {
        var outcome: RunOutcome?
        try client.stream("Run", RunRequest(name: name, argv: argv, detached: detached), as: RunResponse.self) { r throws(LmctfyError) in
            switch r.kind {
            case .runStarted where detached:
                outcome = .started(pid: r.pid ?? 0)
                return false
            case .runExited:
                outcome = .exited(status: r.termSignal.map { 128 + $0 } ?? r.exitCode ?? 0)
            default:
                break
            }
            return true
        }
        guard let outcome else { throw .internalError("The agent ended Run without reporting the command") }
        return outcome
    }

    public func enter(_ name: String, tids: [Int32]) throws(LmctfyError) {
        guard !tids.isEmpty else {
            throw .invalidArgument("lmctl enter needs TIDs: the calling shell is not on the agent's machine")
        }
        _ = try call("Enter", EnterRequest(name: name, tids: tids), EnterResponse.self)
    }

    public func killAll(_ name: String, recursive: Bool) throws(LmctfyError) {
        _ = try call("KillAll", KillAllRequest(name: name, recursive: recursive), KillAllResponse.self)
    }

    public func setPaused(_ name: String, _ paused: Bool) throws(LmctfyError) {
        if paused {
            _ = try call("Pause", PauseRequest(name: name), PauseResponse.self)
        } else {
            _ = try call("Resume", ResumeRequest(name: name), ResumeResponse.self)
        }
    }

    public func notify(_ name: String, event: EventSpec, follow: Bool, onEvent: (Int) -> Void) throws(LmctfyError) {
        try client.stream("Notify", NotifyRequest(name: name, spec: event), as: NotifyResponse.self) { r throws(LmctfyError) in
            if r.event != nil { onEvent(1) }
            return follow
        }
    }

    public func initMachine(_ spec: InitSpec) throws(LmctfyError) {
        _ = try call("Init", InitRequest(spec: spec), InitResponse.self)
    }

    public func machineInfo() throws(LmctfyError) -> MachineInfoResponse {
        try call("MachineInfo", MachineInfoRequest(), MachineInfoResponse.self)
    }
}
