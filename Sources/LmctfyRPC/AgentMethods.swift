// The agent's methods, once (docs/PROTOCOL.md §6): name, request and
// response types, the role a caller needs, where the agent runs the call and
// whether it streams. The agent's dispatcher and scheduler and lmctl's
// RemoteBackend all read this table; no method name is spelled anywhere else.
import LmctfyProto
import LmctfySystem

/// The role a caller needs for a method (`AgentRole`; admin includes reader).
public enum MethodRole: Sendable, Equatable {
    /// Reading state: spec, stats, lists, events.
    case reader
    /// Changing state: create, destroy, run, ...
    case admin

    /// Whether a caller holding `role` may call a method needing this one.
    public func allows(_ role: AgentRole) -> Bool {
        switch role {
        case .agentRoleAdmin: true
        case .agentRoleReader: self == .reader
        case .agentRoleUnspecified: false
        }
    }
}

/// Where the agent executes a call.
public enum MethodScheduling: Sendable, Equatable {
    /// On the loop thread itself: the call never blocks (a ping proves the
    /// loop is alive without waiting for a pool thread).
    case loop
    /// On one of libuv's pool threads: blocking, but bounded.
    case pool
    /// On a thread of its own: the call lasts (waiting for events or a
    /// process) and would otherwise hold a pool thread.
    case ownThread
    /// Served by the agent's event hub on the loop for as long as the caller
    /// stays: no thread is held (Subscribe).
    case hub
}

/// How many responses a call has.
public enum MethodShape: Sendable, Equatable {
    /// One response, then the status.
    case unary
    /// Any number of responses, then the status.
    case serverStreaming
}

/// One agent method with its message types, for typed calls and handlers.
public struct AgentMethod<Request: ProtoMessage, Response: ProtoMessage>: Sendable {
    /// The method's description, as the type-erased table lists it.
    public let info: AgentMethodInfo

    init(_ name: String, _ role: MethodRole, _ scheduling: MethodScheduling, _ shape: MethodShape) {
        info = AgentMethodInfo(name: name, role: role, scheduling: scheduling, shape: shape,
                               request: String(describing: Request.self), response: String(describing: Response.self))
    }

    /// The name on the wire.
    public var name: String { info.name }
}

/// One agent method without its types: what the scheduler and the role
/// check need, and the message types by name.
public struct AgentMethodInfo: Sendable {
    /// The name on the wire: the request message's name without `Request`.
    public let name: String
    /// The role a caller needs.
    public let role: MethodRole
    /// Where the agent runs the call.
    public let scheduling: MethodScheduling
    /// Unary or server streaming.
    public let shape: MethodShape
    /// The request message's name (e.g. `CreateRequest`).
    public let request: String
    /// The response message's name (e.g. `CreateResponse`).
    public let response: String
}

/// The table of agent methods, in the order of docs/PROTOCOL.md §6.
public enum AgentMethods {
    /// Creates a container.
    public static let create = AgentMethod<CreateRequest, CreateResponse>("Create", .admin, .pool, .unary)
    /// Destroys a container.
    public static let destroy = AgentMethod<DestroyRequest, DestroyResponse>("Destroy", .admin, .pool, .unary)
    /// Updates a container's spec.
    public static let update = AgentMethod<UpdateRequest, UpdateResponse>("Update", .admin, .pool, .unary)
    /// Reads a container's spec.
    public static let spec = AgentMethod<SpecRequest, SpecResponse>("Spec", .reader, .pool, .unary)
    /// Reads a container's statistics.
    public static let stats = AgentMethod<StatsRequest, StatsResponse>("Stats", .reader, .pool, .unary)
    /// Lists subcontainers.
    public static let listContainers = AgentMethod<ListContainersRequest, ListContainersResponse>(
        "ListContainers", .reader, .pool, .unary)
    /// Lists a container's processes.
    public static let listPids = AgentMethod<ListPidsRequest, ListPidsResponse>("ListPids", .reader, .pool, .unary)
    /// Lists a container's threads.
    public static let listTids = AgentMethod<ListTidsRequest, ListTidsResponse>("ListTids", .reader, .pool, .unary)
    /// The container of a task.
    public static let detect = AgentMethod<DetectRequest, DetectResponse>("Detect", .reader, .pool, .unary)
    /// Runs a command in a container: RUN_STARTED, then (attached) RUN_EXITED.
    public static let run = AgentMethod<RunRequest, RunResponse>("Run", .admin, .ownThread, .serverStreaming)
    /// Moves tasks into a container.
    public static let enter = AgentMethod<EnterRequest, EnterResponse>("Enter", .admin, .pool, .unary)
    /// Kills every process of a container.
    public static let killAll = AgentMethod<KillAllRequest, KillAllResponse>("KillAll", .admin, .pool, .unary)
    /// Freezes a container.
    public static let pause = AgentMethod<PauseRequest, PauseResponse>("Pause", .admin, .pool, .unary)
    /// Thaws a container.
    public static let resume = AgentMethod<ResumeRequest, ResumeResponse>("Resume", .admin, .pool, .unary)
    /// Streams a container's events until cancelled.
    public static let notify = AgentMethod<NotifyRequest, NotifyResponse>("Notify", .reader, .ownThread, .serverStreaming)
    /// Streams the agent's event log, filtered, from a resume point, then live.
    public static let subscribe = AgentMethod<SubscribeRequest, SubscribeResponse>("Subscribe", .reader, .hub, .serverStreaming)
    /// The agent's machine.
    public static let machineInfo = AgentMethod<MachineInfoRequest, MachineInfoResponse>(
        "MachineInfo", .reader, .pool, .unary)
    /// Echoes its data; answered on the loop.
    public static let ping = AgentMethod<PingRequest, PingResponse>("Ping", .reader, .loop, .unary)
    /// Prepares the agent's machine (mounts hierarchies).
    public static let initMachine = AgentMethod<InitRequest, InitResponse>("Init", .admin, .pool, .unary)
    /// A container's snapshot, written afresh (admin: it holds the recorded
    /// processes' environments).
    public static let exportSnapshot = AgentMethod<ExportSnapshotRequest, ExportSnapshotResponse>(
        "ExportSnapshot", .admin, .pool, .unary)
    /// Re-creates a container from a snapshot.
    public static let importSnapshot = AgentMethod<ImportSnapshotRequest, ImportSnapshotResponse>(
        "ImportSnapshot", .admin, .pool, .unary)
    /// Dumps a container's processes with CRIU.
    public static let checkpoint = AgentMethod<CheckpointRequest, CheckpointResponse>("Checkpoint", .admin, .pool, .unary)
    /// Restores a checkpoint with CRIU.
    public static let restore = AgentMethod<RestoreRequest, RestoreResponse>("Restore", .admin, .pool, .unary)
    /// Whether a create (or update) would be admitted by the agent's policy
    /// now; changes nothing.
    public static let checkAdmission = AgentMethod<CheckAdmissionRequest, CheckAdmissionResponse>(
        "CheckAdmission", .reader, .pool, .unary)

    /// Uploads an archive in chunks and unpacks it into the image store
    /// (PROTOCOL.md section 6.3). Each call is bounded: a 1 MiB chunk, or the
    /// commit's unpacking of what was uploaded.
    public static let importImage = AgentMethod<ImportImageRequest, ImportImageResponse>(
        "ImportImage", .admin, .pool, .unary)
    /// Packs an image (first call) and hands it out in 1 MiB chunks.
    public static let exportImage = AgentMethod<ExportImageRequest, ExportImageResponse>(
        "ExportImage", .admin, .pool, .unary)
    /// The images of the store.
    public static let listImages = AgentMethod<ListImagesRequest, ListImagesResponse>("ListImages", .reader, .pool, .unary)
    /// Removes an image.
    public static let removeImage = AgentMethod<RemoveImageRequest, RemoveImageResponse>("RemoveImage", .admin, .pool, .unary)

    /// Every method, in the order of docs/PROTOCOL.md §6.
    public static let all: [AgentMethodInfo] = [
        create.info, destroy.info, update.info, spec.info, stats.info, listContainers.info, listPids.info,
        listTids.info, detect.info, run.info, enter.info, killAll.info, pause.info, resume.info, notify.info,
        machineInfo.info, ping.info, initMachine.info, subscribe.info, exportSnapshot.info, importSnapshot.info,
        checkpoint.info, restore.info, checkAdmission.info,
        importImage.info, exportImage.info, listImages.info, removeImage.info,
    ]

    private static let byName: [String: AgentMethodInfo] = Dictionary(uniqueKeysWithValues: all.map { ($0.name, $0) })

    /// The method called `name`, or nil for an unknown method.
    public static func named(_ name: String) -> AgentMethodInfo? {
        byName[name]
    }
}

/// The controller's own methods (PROTOCOL.md section 9). Every agent
/// method is also served by the controller, for the host a request names.
public enum ControllerMethods {
    /// The first call of an agent on its dial-home connection: who it is.
    public static let register = AgentMethod<RegisterRequest, RegisterResponse>("Register", .admin, .loop, .unary)
    /// Every host the controller knows.
    public static let listHosts = AgentMethod<ListHostsRequest, ListHostsResponse>("ListHosts", .reader, .loop, .unary)
    /// One unary agent method on every host a selector matches.
    public static let fanOut = AgentMethod<FanOutRequest, FanOutResponse>("FanOut", .reader, .hub, .serverStreaming)
    /// A disconnected host out of the inventory, its name's key binding with it.
    public static let removeHost = AgentMethod<RemoveHostRequest, RemoveHostResponse>("RemoveHost", .admin, .loop, .unary)
    /// The hosts, then every change.
    public static let watchHosts = AgentMethod<WatchHostsRequest, WatchHostsResponse>("WatchHosts", .reader, .hub, .serverStreaming)
    /// A bootstrap token and a certificate request: the agent's certificate
    /// (PROTOCOL.md section 3.2). Served on enroll_address only, to anyone
    /// holding a token (the role is not what authorizes it there).
    public static let enroll = AgentMethod<EnrollRequest, EnrollResponse>("Enroll", .admin, .loop, .unary)
    /// A certificate request for the host the caller's (still valid)
    /// certificate names: a new certificate (PROTOCOL.md section 3.2).
    /// Served on agent_address only, to the certificate presented there.
    public static let renew = AgentMethod<RenewRequest, RenewResponse>("Renew", .admin, .loop, .unary)

    /// What a client's connection may call on the controller itself (no
    /// host named): its own methods for clients, and the agent methods it
    /// answers for the fleet.
    public static let local: [AgentMethodInfo] = [
        listHosts.info, fanOut.info, removeHost.info, watchHosts.info, AgentMethods.ping.info, AgentMethods.subscribe.info,
    ]

    private static let localByName: [String: AgentMethodInfo] = Dictionary(uniqueKeysWithValues: local.map { ($0.name, $0) })

    /// The local method called `name`, or nil.
    public static func local(_ name: String) -> AgentMethodInfo? { localByName[name] }
}

extension RpcClient {
    /// Calls a unary method of the table.
    public func call<Request, Response>(
        _ method: AgentMethod<Request, Response>, _ request: Request, deadlineMs: UInt32? = nil
    ) throws(LmctfyError) -> Response {
        try call(method.name, request, as: Response.self, deadlineMs: deadlineMs)
    }

    /// Calls a unary method of the table once per request, pipelined
    /// (`callMany`); results in the requests' order. A request that cannot
    /// be encoded or an answer that cannot be decoded is that call's error.
    public func callMany<Request, Response>(
        _ method: AgentMethod<Request, Response>, _ requests: [Request], hosts: [String?]? = nil, inFlight: Int = 64,
        deadlineMs: UInt32? = nil
    ) -> [Result<Response, LmctfyError>] {
        var encoded: [[UInt8]] = []
        var failed: [Int: LmctfyError] = [:]
        for (i, r) in requests.enumerated() {
            do throws(LmctfyError) { encoded.append(try encode(r)) } catch {
                failed[i] = error
                encoded.append([])
            }
        }
        let sendable = encoded.indices.filter { failed[$0] == nil }
        var answers = callMany(method.name, sendable.map { encoded[$0] }, hosts: hosts.map { h in sendable.map { h[$0] } },
                               inFlight: inFlight, deadlineMs: deadlineMs).makeIterator()
        return requests.indices.map { i -> Result<Response, LmctfyError> in
            if let e = failed[i] { return .failure(e) }
            return answers.next()!.flatMap { bytes in
                do throws(LmctfyError) { return .success(try decode(bytes)) } catch { return .failure(error) }
            }
        }
    }

    /// Calls a streaming method of the table; `onResponse` returns whether
    /// to keep reading.
    public func stream<Request, Response>(
        _ method: AgentMethod<Request, Response>, _ request: Request, deadlineMs: UInt32? = nil,
        window: UInt32? = nil, giveUp: (everyMs: Int32, when: () -> Bool)? = nil, input: Int32? = nil,
        terminal: (any TerminalWatch)? = nil, onResponse: (Response) throws(LmctfyError) -> Bool
    ) throws(LmctfyError) {
        try stream(method.name, request, as: Response.self, deadlineMs: deadlineMs, window: window, giveUp: giveUp,
                   input: input, terminal: terminal, onResponse: onResponse)
    }
}
