// Executes one RPC against CL1 on this machine. It blocks (cgroup writes,
// waiting for a process, waiting for events), so the agent calls it OFF the
// loop thread; responses of streaming calls go out through `emit`, which the
// agent hops back onto the loop. Semantics are the CLI's: the same
// LocalBackend serves `lmctfy` and the agent.
import Glibc
import Lmctfy
import LmctfyCommands
import LmctfyProto
import LmctfyRPC
import LmctfySystem

/// One call's link to its stream: cancellation (peer cancel, deadline,
/// connection closed) and the way back for streamed responses.
public final class CallContext: @unchecked Sendable {
    private let lock = Lock()
    private var isCancelled = false
    private let emitter: @Sendable ([UInt8]) -> Void

    public init(emit: @escaping @Sendable ([UInt8]) -> Void) {
        emitter = emit
    }

    public var cancelled: Bool { lock.locked { isCancelled } }
    public func cancel() { lock.locked { isCancelled = true } }

    /// Sends one response message of a streaming call (thread-safe).
    public func emit<M: ProtoMessage>(_ message: M) throws(LmctfyError) {
        do { emitter(try message.serializedBytes()) } catch { throw .internalError("encoding a response: \(error)") }
    }
}

/// Methods by the role they need (docs/PROTOCOL.md §6).
public enum MethodRoles {
    public static let reader: Set<String> = [
        "Spec", "Stats", "ListContainers", "ListPids", "ListTids", "Detect", "Notify", "MachineInfo", "Ping",
    ]
    public static let admin: Set<String> = reader.union([
        "Create", "Destroy", "Update", "Run", "Enter", "KillAll", "Pause", "Resume", "Init",
    ])

    public static func allows(_ role: AgentRole, _ method: String) -> Bool {
        switch role {
        case .agentRoleAdmin: admin.contains(method)
        case .agentRoleReader: reader.contains(method)
        case .agentRoleUnspecified: false
        }
    }
}

public final class Dispatcher: Sendable {
    let api: ContainerApi
    let backend: LocalBackend
    public let events: EventLog
    let agentVersion: String

    public init(api: ContainerApi, events: EventLog, agentVersion: String) {
        self.api = api
        // Names the caller leaves out mean the agent's own container.
        self.backend = LocalBackend(api: api, callerPid: Sys.getpid())
        self.events = events
        self.agentVersion = agentVersion
    }

    /// Runs `method`; the returned status ends the stream.
    public func handle(method: String, payload: [UInt8], role: AgentRole, context: CallContext) -> CallStatus {
        guard MethodRoles.admin.contains(method) else {
            return CallStatus(.unimplemented, "Unknown method \"\(method)\"")
        }
        guard MethodRoles.allows(role, method) else {
            return CallStatus(.permissionDenied, "Method \(method) needs the admin role")
        }
        do {
            try run(method, payload, context)
            return .ok
        } catch let error as LmctfyError {
            return CallStatus(error)
        } catch let error as ProtoError {
            return CallStatus(.invalidArgument, "Malformed \(method) request: \(error)")
        } catch {
            return CallStatus(.unknown, String(describing: error))
        }
    }

    private func name(_ n: String?) throws(LmctfyError) -> String {
        guard let n else { throw .invalidArgument("The request names no container") }
        return n
    }

    private func run(_ method: String, _ payload: [UInt8], _ context: CallContext) throws {
        switch method {
        case "Create":
            let r = try CreateRequest(serializedBytes: payload)
            try backend.create(try name(r.name), spec: r.spec ?? ContainerSpec())
            events.record(container: try api.resolve(try name(r.name)).path, kind: .containerEventCreated)
            try context.emit(CreateResponse())
        case "Destroy":
            let r = try DestroyRequest(serializedBytes: payload)
            let path = try api.resolve(try name(r.name)).path
            try backend.destroy(try name(r.name), force: r.force ?? false)
            events.record(container: path, kind: .containerEventDestroyed)
            try context.emit(DestroyResponse())
        case "Update":
            let r = try UpdateRequest(serializedBytes: payload)
            let policy: UpdatePolicy
            switch r.policy {
            case .updateDiff: policy = .diff
            case .updateReplace: policy = .replace
            default: throw LmctfyError.invalidArgument("Update needs a policy (UPDATE_DIFF or UPDATE_REPLACE)")
            }
            try backend.update(try name(r.name), spec: r.spec ?? ContainerSpec(), policy: policy)
            events.record(container: try api.resolve(try name(r.name)).path, kind: .containerEventUpdated)
            try context.emit(UpdateResponse())
        case "Spec":
            let r = try SpecRequest(serializedBytes: payload)
            try context.emit(SpecResponse(spec: try backend.spec(r.name)))
        case "Stats":
            let r = try StatsRequest(serializedBytes: payload)
            try context.emit(StatsResponse(stats: try backend.stats(r.name, type: r.kind == .statsFull ? .full : .summary)))
        case "ListContainers":
            let r = try ListContainersRequest(serializedBytes: payload)
            try context.emit(ListContainersResponse(names: try backend.listContainers(r.name, recursive: r.recursive ?? false)))
        case "ListPids":
            let r = try ListPidsRequest(serializedBytes: payload)
            try context.emit(ListPidsResponse(pids: try backend.listTasks(r.name, threads: false, recursive: r.recursive ?? false)))
        case "ListTids":
            let r = try ListTidsRequest(serializedBytes: payload)
            try context.emit(ListTidsResponse(tids: try backend.listTasks(r.name, threads: true, recursive: r.recursive ?? false)))
        case "Detect":
            let r = try DetectRequest(serializedBytes: payload)
            try context.emit(DetectResponse(name: try backend.detect(r.pid)))
        case "Run":
            try runCommand(try RunRequest(serializedBytes: payload), context)
        case "Enter":
            let r = try EnterRequest(serializedBytes: payload)
            guard !r.tids.isEmpty else { throw LmctfyError.invalidArgument("Enter needs the TIDs to move") }
            try backend.enter(try name(r.name), tids: r.tids)
            try context.emit(EnterResponse())
        case "KillAll":
            let r = try KillAllRequest(serializedBytes: payload)
            try backend.killAll(try name(r.name), recursive: r.recursive ?? false)
            try context.emit(KillAllResponse())
        case "Pause", "Resume":
            let n = method == "Pause" ? try PauseRequest(serializedBytes: payload).name : try ResumeRequest(serializedBytes: payload).name
            try backend.setPaused(try name(n), method == "Pause")
            events.record(container: try api.resolve(try name(n)).path, kind: .containerEventFreezer, frozen: method == "Pause")
            if method == "Pause" { try context.emit(PauseResponse()) } else { try context.emit(ResumeResponse()) }
        case "Notify":
            try notify(try NotifyRequest(serializedBytes: payload), context)
        case "MachineInfo":
            try context.emit(MachineInfo.collect(api: api, agentVersion: agentVersion, bootId: events.bootId))
        case "Init":
            let r = try InitRequest(serializedBytes: payload)
            try backend.initMachine(r.spec ?? InitSpec())
            try context.emit(InitResponse())
        case "Ping":
            let r = try PingRequest(serializedBytes: payload)
            try context.emit(PingResponse(data: r.data ?? []))
        default:
            throw LmctfyError.unimplemented("Unknown method \"\(method)\"")
        }
    }

    /// RUN_STARTED with the pid, then (attached) RUN_EXITED with the status.
    /// The agent's stdio is not the caller's: an attached run's output goes
    /// to /dev/null until attached output exists in the protocol.
    private func runCommand(_ r: RunRequest, _ context: CallContext) throws {
        guard !r.argv.isEmpty else { throw LmctfyError.invalidArgument("Run needs a command") }
        let container = try api.get(try name(r.name))
        let detached = r.detached ?? (r.spec?.fdPolicy == .detached)
        var options = RunOptions(fdPolicy: detached ? .detached : .inherit)
        if !detached { options.stdin = .devNull; options.stdout = .devNull; options.stderr = .devNull }
        let pid = try container.run(r.argv, options: options)
        try context.emit(RunResponse(kind: .runStarted, pid: pid))
        guard !detached else { return }
        let status: ExitStatus
        do { status = try Sys.waitForExit(pid) } catch { throw error.lmctfy(.internal, "Failed to wait for pid \(pid)") }
        try context.emit(RunResponse(kind: .runExited, pid: pid, exitCode: status.exitCode, termSignal: status.signal))
    }

    /// Replays what the subscriber missed (or says it cannot: EventGap),
    /// then streams live events until cancelled or the container goes away.
    private func notify(_ r: NotifyRequest, _ context: CallContext) throws {
        guard let spec = r.spec else { throw LmctfyError.invalidArgument("Notify needs an EventSpec") }
        let container = try api.get(try name(r.name))
        let kind: ContainerEventKind = spec.oom != nil ? .containerEventOom
            : spec.memoryThreshold != nil ? .containerEventMemoryThreshold : .containerEventEmpty
        let watch = try container.watch(spec)
        defer { watch.close() }
        let path = container.name.path
        if let after = r.afterSequence {
            let (missed, gap) = events.since(bootId: r.bootId, after: after) { $0.container == path && $0.kind == kind }
            if let gap { try context.emit(NotifyResponse(gap: gap)) }
            for e in missed { try context.emit(NotifyResponse(event: e)) }
        }
        while !context.cancelled {
            let n = try watch.wait(timeoutMs: 200)
            for _ in 0..<n {
                let e = events.record(container: path, kind: kind, threshold: spec.memoryThreshold?.usage)
                try context.emit(NotifyResponse(event: e))
            }
        }
    }
}

/// The machine, for MachineInfo.
enum MachineInfo {
    static func collect(api: ContainerApi, agentVersion: String, bootId: String) -> MachineInfoResponse {
        var info = MachineInfoResponse()
        var u = utsname()
        uname(&u)
        func field<T>(_ value: T) -> String {
            withUnsafeBytes(of: value) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        }
        info.hostname = field(u.nodename)
        info.kernel = field(u.release)
        info.cgroupVersion = api.version == .v1 ? 1 : 2
        info.cpus = Int32(sysconf(Int32(_SC_NPROCESSORS_ONLN)))
        if let meminfo = try? Sys.readFile("/proc/meminfo"),
           let line = meminfo.split(separator: "\n").first(where: { $0.hasPrefix("MemTotal:") }),
           let kb = UInt64(line.split(separator: " ").dropFirst().first ?? "") {
            info.memoryBytes = kb * 1024
        }
        info.agentVersion = agentVersion
        info.bootId = bootId
        return info
    }
}
