// Executes one RPC against a ContainerBackend (CL1 on this machine, a
// LocalBackend whose attached runs have /dev/null for stdio). It blocks
// (cgroup writes, waiting for a process, waiting for events), so the agent
// calls it OFF the loop thread (except what the method table schedules on
// the loop); responses of streaming calls go out through `emit`, which the
// agent hops back onto the loop. Semantics are the CLI's: the same backend
// protocol serves `lmctfy`, `lmctl` and the agent.
import Glibc
import LmctfyBackend
import LmctfyEvents
import LmctfyProto
import LmctfyRPC
import LmctfySystem
import Synchronization

/// One call's link to its stream: cancellation (peer cancel, deadline,
/// connection closed) and the way back for streamed responses.
public final class CallContext: Sendable {
    private struct State {
        var isCancelled = false
        /// The caller's socket, looked at for a hang-up (`peerHungUp`).
        var peerFd: Int32 = -1
        var cancelHook: (@Sendable () -> Void)?
        /// Responses kept for the caller to send with the status (no emitter).
        var collected: [[UInt8]] = []
        /// A streaming call's flow (`emit` waits while either says so):
        /// bytes handed to the loop that it has not yet given the caller's
        /// connection, and whether that connection holds more unsent bytes
        /// than its limit (max_connection_buffered_bytes).
        var inFlight = 0
        var connectionFull = false
        /// How the call grants its caller INPUT frames (set by the loop for
        /// a Run on a version 4 connection; nil: it cannot take input), and
        /// the input once the handler opened it.
        var inputGrant: (budget: InputBudget, grant: @Sendable (UInt32) -> Void)?
        /// The connection carries terminals (protocol version 5).
        var terminal = false
        var input: CallInput?
    }
    // One allocation per call: the state's lock lives inside the object.
    private let state = Mutex(State())
    private let emitter: (@Sendable ([UInt8]) -> Void)?
    /// Wakes a streaming call's thread waiting in `emit` for room (nil for
    /// a collecting context, which never waits).
    private let room: ChangeCounter?
    /// How many bytes of one streaming call may wait for the loop at once.
    private let inFlightLimit: Int
    /// A collecting (unary) call's way to send a progress response before
    /// its final one (DestroyRequest.want_progress); nil: progress is dropped.
    private let early: (@Sendable ([UInt8]) -> Void)?

    /// A context that sends streamed responses (serialized) through `emit`,
    /// which must be safe to call from any thread.
    ///
    /// Its `emit` waits while the caller is not reading: a handler on a
    /// thread of its own (Notify) then sleeps instead of piling responses
    /// up in the agent (see `taken` and `connectionDrained`); at most
    /// `inFlight` bytes of it wait for the loop at once.
    public init(inFlight: Int = 256 << 10, emit: @escaping @Sendable ([UInt8]) -> Void) {
        emitter = emit
        early = nil
        room = ChangeCounter()
        inFlightLimit = max(1, inFlight)
    }

    /// A context that keeps the responses until `takeResponses()`: for a
    /// unary call, whose one response leaves with its status (in one frame
    /// when the peer speaks protocol version 2).
    public init(early: (@Sendable ([UInt8]) -> Void)? = nil) {
        emitter = nil
        self.early = early
        room = nil
        inFlightLimit = 0
    }

    /// Sends a progress response now, ahead of the final one, where the
    /// call can (a streaming call, or a unary one given `early`).
    public func emitProgress<M: ProtoMessage>(_ message: M) {
        guard let bytes = try? message.serializedBytes() else { return }
        if let emitter { emitter(bytes) } else { early?(bytes) }
    }

    /// The responses kept so far (collecting contexts, and `emitLast`'s),
    /// in order; clears them.
    public func takeResponses() -> [[UInt8]] {
        state.locked { s in
            defer { s.collected = [] }
            return s.collected
        }
    }

    private func send(_ bytes: [UInt8]) {
        if let emitter {
            emitter(bytes)
        } else {
            state.locked { $0.collected.append(bytes) }
        }
    }

    /// The loop: this call may take input from its caller, granted with
    /// `grant` (protocol version 4).
    func allowInput(_ budget: InputBudget, terminal: Bool = false, _ grant: @escaping @Sendable (UInt32) -> Void) {
        state.locked {
            $0.inputGrant = (budget, grant)
            $0.terminal = terminal
        }
    }

    /// Whether the caller's connection can carry a terminal (its window
    /// sizes: protocol version 5).
    var allowsTerminal: Bool { state.locked { $0.terminal } }

    /// The handler: the caller's input, nil when its connection cannot
    /// carry it (older than protocol version 4, or no eventfd). Nothing is
    /// granted until the input's `start()`.
    func openInput() -> CallInput? {
        state.locked { s in
            if let input = s.input { return input }
            guard let g = s.inputGrant, let input = CallInput(budget: g.budget, grant: g.grant) else { return nil }
            s.input = input
            return input
        }
    }

    /// The loop: an INPUT frame for this call (dropped when it has no input
    /// open, which the session's credit rules out).
    func deliverInput(_ bytes: [UInt8], end: Bool, window: TerminalWindow? = nil) {
        state.locked { $0.input }?.deliver(bytes, end: end, window: window)
    }

    /// Whether the call was cancelled (peer cancel, deadline, connection
    /// closed); a handler checks it between steps. Thread-safe.
    public var cancelled: Bool { state.locked { $0.isCancelled } }

    /// The caller's socket, for `peerHungUp`.
    func watchPeer(fd: Int32) { state.locked { $0.peerFd = fd } }

    /// Whether the caller's connection is closed though the loop has not
    /// yet read its end (a request and the close read together, by an
    /// agent that was stopped: the call starts on a pool thread before the
    /// loop sees the end and cancels it). A descriptor used again by then
    /// is another connection's, and only for a call already cancelled.
    var peerHungUp: Bool {
        let fd = state.locked { $0.peerFd }
        return fd >= 0 && Sys.peerHasHungUp(fd)
    }

    /// Marks the call cancelled and runs the hook set by `onCancel`, once.
    public func cancel() {
        let hook: (@Sendable () -> Void)? = state.locked { s in
            s.isCancelled = true
            defer { s.cancelHook = nil }
            return s.cancelHook
        }
        hook?()
        room?.bump()
    }

    /// Runs `hook` when the call is cancelled (at once if it already is);
    /// `nil` removes it. The hook runs on the cancelling thread.
    public func onCancel(_ hook: (@Sendable () -> Void)?) {
        let now: Bool = state.locked { s in
            if s.isCancelled { return hook != nil }
            s.cancelHook = hook
            return false
        }
        if now { hook?() }
    }

    /// Sends one response message of a streaming call (thread-safe).
    /// A streaming call's waits until its caller's connection has room, or
    /// the call is cancelled (what a cancelled call emits goes at once: a
    /// cancelled Notify still replays, and the agent drops what comes for a
    /// stream that is gone).
    public func emit<M: ProtoMessage>(_ message: M) throws(LmctfyError) {
        let bytes = try Self.encoded(message)
        admit(bytes.count)
        send(bytes)
    }

    /// Waits (a streaming call) until the loop has taken all but
    /// `inFlightLimit` bytes of what the call emitted and the caller's
    /// connection is not full, then counts `n` more bytes in flight.
    private func admit(_ n: Int) {
        guard let room else { return }
        while true {
            let seen: UInt64? = state.locked { s in
                if s.isCancelled { return nil }
                if !s.connectionFull && s.inFlight < inFlightLimit {
                    s.inFlight += n
                    return nil
                }
                return room.value
            }
            guard let seen else { return }
            _ = room.wait(past: seen, timeoutMs: 1000)
        }
    }

    /// The loop gave `n` bytes of this streaming call to its connection,
    /// which now holds more unsent bytes than its limit if `full` (loop
    /// thread). `emit` then waits until `connectionDrained`.
    func taken(_ n: Int, full: Bool) {
        // (A collecting call's progress response: nothing waits on it.)
        guard room != nil else { return }
        let wake: Bool = state.locked { s in
            let blocked = s.connectionFull || s.inFlight >= inFlightLimit
            s.inFlight -= n
            if full { s.connectionFull = true }
            return blocked && !s.connectionFull && s.inFlight < inFlightLimit
        }
        if wake { room?.bump() }
    }

    /// The caller's connection has drained (loop thread): `emit` goes on.
    func connectionDrained() {
        state.locked { $0.connectionFull = false }
        room?.bump()
    }

    private static func encoded<M: ProtoMessage>(_ message: M) throws(LmctfyError) -> [UInt8] {
        do { return try message.serializedBytes() } catch { throw .internalError("encoding a response: \(error)") }
    }

    /// Sends one response already serialized (a replayed answer).
    func emit(serialized bytes: [UInt8]) { send(bytes) }

    /// The call's last response: kept for its status, even by a streaming
    /// call's context, so that the two leave together (one frame from
    /// protocol version 2 on, PROTOCOL.md section 4; RESPONSE then STATUS
    /// in one write before it) instead of each on its own hop to the loop.
    /// Nothing may be emitted after it.
    public func emitLast<M: ProtoMessage>(_ message: M) throws(LmctfyError) {
        let bytes = try Self.encoded(message)
        state.locked { $0.collected.append(bytes) }
    }
}

/// A request that may carry an idempotency key (PROTOCOL.md section 6.1).
protocol IdempotentRequest: ProtoMessage {
    var requestId: String? { get }
}

extension CreateRequest: IdempotentRequest {}
extension DestroyRequest: IdempotentRequest {}
extension UpdateRequest: IdempotentRequest {}
extension EnterRequest: IdempotentRequest {}
extension KillAllRequest: IdempotentRequest {}
extension PauseRequest: IdempotentRequest {}
extension ResumeRequest: IdempotentRequest {}
extension InitRequest: IdempotentRequest {}
extension ImportSnapshotRequest: IdempotentRequest {}
extension CheckpointRequest: IdempotentRequest {}
extension RestoreRequest: IdempotentRequest {}

/// A test-only fault hook, off unless the agent's environment sets
/// LMCTFY_AGENT_TEST_HOLD_AFTER to a method name (docs/PROTOCOL.md section
/// 6.1): after that method's work is done and before its outcome is
/// journaled and answered, the call writes `marker` and sleeps, so a test can
/// kill the agent at exactly that point.
public struct TestHold: Sendable {
    /// The method to hold.
    public var method: String
    /// The file written when a call is being held.
    public var marker: String
    /// How long the call is held.
    public var seconds: UInt32 = 60

    public init(method: String, marker: String) {
        self.method = method
        self.marker = marker
    }

    /// The hook the environment asks for, or nil (the default).
    public static func fromEnvironment(marker: String) -> TestHold? {
        guard let v = getenv("LMCTFY_AGENT_TEST_HOLD_AFTER"), v.pointee != 0 else { return nil }
        return TestHold(method: String(cString: v), marker: marker)
    }

    func hold(_ method: String) {
        guard method == self.method else { return }
        _ = try? Sys.createFile(marker, method + "\n")
        sleep(seconds)
    }
}

/// Turns agent methods into backend calls: one handler per entry of the
/// method table (AgentMethods), which also decides who may call what.
public final class Dispatcher: Sendable {
    let backend: any ContainerBackend
    /// The cgroup version MachineInfo reports (1 or 2).
    let cgroupVersion: Int32
    /// Where lifecycle calls and notifications are recorded.
    public let events: EventLog
    let agentVersion: String
    /// Where calls carrying a request_id are journaled; nil: ids are ignored.
    public let journal: RequestJournal?
    /// The containers known, so changes made behind the agent's back are
    /// events too (the agent's reconcile feeds it).
    let inventory: Inventory
    /// Notify's kernel watches, one per (container, event).
    let notifyWatches = NotifyWatches()
    /// Set by the agent while its machine watcher records every
    /// container's OOMs: Notify for OOM then needs no kernel watch of its
    /// own, and streams the OOMs of the container this gives (the one whose
    /// memory the named container uses; NOT_FOUND if it does not exist).
    /// (In a class: see EventLog.observer.)
    let memoryOwner = Mutexed<MemoryOwner?>(nil)

    final class MemoryOwner: Sendable {
        let find: @Sendable (String) throws(LmctfyError) -> String
        init(_ find: @escaping @Sendable (String) throws(LmctfyError) -> String) { self.find = find }
    }
    let testHold: TestHold?
    /// The containers' snapshots (state_dir/snapshots); nil: none kept.
    /// Written by each change before its answer (SnapshotKeeper).
    public let snapshots: SnapshotKeeper?
    /// Imports under way, undone at the next start if the agent dies under
    /// them (nil: not kept, as without snapshots).
    let importMarks: ImportMarks?
    /// Whether CRIU can checkpoint here (Criu.swift); nil: not probed, and
    /// Checkpoint and Restore refuse.
    let criu: CriuProbe?
    /// What MachineInfo warns about (the agent's plaintext TCP links).
    let warnings: [String]
    /// CL2 admission (PolicyKeeper.swift); nil: none (every create fits).
    let policy: PolicyKeeper?
    /// The image store (Images.swift); nil: the image methods are UNIMPLEMENTED.
    let images: ImageService?
    /// Freezes that end by themselves (PauseRequest.lease_ms).
    let leases: FreezeLeases

    /// A dispatcher onto `backend`; names the caller leaves out mean
    /// whatever the backend's caller is (the agent's own container).
    public init(backend: any ContainerBackend, cgroupVersion: Int32, events: EventLog, agentVersion: String,
                journal: RequestJournal? = nil, testHold: TestHold? = nil, snapshots: SnapshotKeeper? = nil,
                criu: CriuProbe? = nil, warnings: [String] = [], policy: PolicyKeeper? = nil,
                images: ImageService? = nil, leases: FreezeLeases? = nil, importMarks: String? = nil) {
        self.importMarks = snapshots == nil ? nil : importMarks.map(ImportMarks.init)
        self.leases = leases ?? FreezeLeases(file: nil)
        self.policy = policy
        self.images = images
        self.criu = criu
        self.warnings = warnings
        self.backend = backend
        self.cgroupVersion = cgroupVersion
        self.events = events
        self.agentVersion = agentVersion
        self.journal = journal
        self.testHold = testHold
        self.snapshots = snapshots
        let leases = self.leases
        self.inventory = Inventory(events: events, thawedOutside: { names in leases.release(names) })
        if snapshots != nil || policy != nil {
            // The policy weakly: it holds the inventory (its outside
            // changes), and the inventory this observer (a cycle leaked
            // them both with every agent: the ASan suite).
            inventory.observer.locked {
                $0 = Inventory.Observer { [weak policy] name, spec in
                    snapshots?.observed(name, spec: spec)
                    if let spec, let policy { policy.observedSpec(name, bytes: spec) }
                }
            }
        }
    }

    /// A method's table entry with its handler: what a call needs to be
    /// scheduled and run, looked up once per call.
    final class Route: Sendable {
        let info: AgentMethodInfo
        let handler: Handler

        init(info: AgentMethodInfo, handler: @escaping Handler) {
            self.info = info
            self.handler = handler
        }
    }

    /// The route of `method`; nil: no such method (the call is refused).
    static func route(_ method: String) -> Route? { routes[method] }

    /// Every method of the table with its handler, by name.
    static let routes: [String: Route] = {
        var table: [String: Route] = [:]
        for info in AgentMethods.all {
            if let handler = handlers[info.name] { table[info.name] = Route(info: info, handler: handler) }
        }
        return table
    }()

    /// Runs `method`; the returned status ends the stream.
    public func handle(method: String, payload: [UInt8], role: AgentRole, context: CallContext) -> CallStatus {
        handle(method: method, route: Self.route(method), payload: payload, role: role, context: context)
    }

    /// `handle` with the method's route already looked up (the agent has it
    /// from scheduling the call).
    func handle(method: String, route: Route?, payload: [UInt8], role: AgentRole, context: CallContext) -> CallStatus {
        guard let route else {
            return CallStatus(.unimplemented, "Unknown method \"\(method)\"")
        }
        guard route.info.role.allows(role) else {
            return CallStatus(.permissionDenied, "Method \(method) needs the admin role")
        }
        // A change cancelled while it waited for a thread (the caller
        // cancelled, its deadline passed, its connection closed): nobody
        // waits for the answer, so nothing is done (the admin methods; a
        // read has nothing to undo, and a cancelled Notify still replays).
        // A request read by an agent that was stopped (SIGSTOP) arrives
        // with the caller's CANCEL behind it; it was carried out all the
        // same, long after the caller had given up and undone its side (a
        // migration thawed its source while the target made the copy).
        if route.info.role == .admin && context.cancelled {
            return CallStatus(.cancelled, "\(method) was cancelled before it started; nothing was done")
        }
        if route.info.role == .admin && context.peerHungUp {
            return CallStatus(.cancelled, "\(method): its caller's connection closed before it started; nothing was done")
        }
        do {
            try route.handler(self, payload, context)
            return .ok
        } catch let e as LmctfyError {
            // Named as the caller names them (the root_container's path
            // left out): the messages said "/root/web" for "/web".
            return CallStatus(LmctfyError(e.code, backend.callerMessage(e.message), errno: e.errno))
        } catch var status as CallStatus {
            // The same for a journaled call's outcome (every call with a
            // request id, which lmctl sends with each change), and its replay.
            status.message = backend.callerMessage(status.message)
            return status
        } catch {
            return Self.status(of: error, method: method)
        }
    }

    static func status(of error: any Error, method: String) -> CallStatus {
        switch error {
        case let error as LmctfyError: CallStatus(error)
        case let status as CallStatus: status
        case let error as ProtoError: CallStatus(.invalidArgument, "Malformed \(method) request: \(error)")
        default: CallStatus(.unknown, String(describing: error))
        }
    }

    typealias Handler = @Sendable (Dispatcher, [UInt8], CallContext) throws -> Void

    /// The methods that have a handler (a test checks it is the whole table).
    static var handledMethods: Set<String> { Set(handlers.keys) }

    /// Mutating methods that go on unrecorded when a full disk cannot take
    /// their request journal entry (RequestJournal.Begin.unrecorded): a
    /// second run of each changes nothing, so a retry after a lost answer
    /// does no harm. The others are refused (RESOURCE_EXHAUSTED).
    static let unrecordedWhenFull: Set<String> = [
        AgentMethods.destroy.name, AgentMethods.killAll.name, AgentMethods.pause.name, AgentMethods.resume.name,
    ]

    /// One handler per method of the table, by name.
    static let handlers: [String: Handler] = {
        var table: [String: Handler] = [:]
        /// A unary method: decode the request, answer with one response.
        func unary<Req, Resp>(_ m: AgentMethod<Req, Resp>, _ body: @escaping @Sendable (Dispatcher, Req) throws -> Resp) {
            table[m.name] = { d, payload, context in
                try context.emit(try body(d, try Req(serializedBytes: payload)))
            }
        }
        /// A mutating unary method (PROTOCOL.md section 6.1): with a
        /// request_id and a journal, a finished call is replayed, a new one
        /// journaled, and one an earlier agent died under is redone, where
        /// `recover` may turn "already done" (ALREADY_EXISTS, NOT_FOUND) into
        /// its response, and `done` (given when it started) say the earlier
        /// run got as far as its event, so the change was made and is not
        /// made (nor recorded) again.
        func mutating<Req: IdempotentRequest, Resp>(
            _ m: AgentMethod<Req, Resp>,
            recover: @escaping @Sendable (Dispatcher, Req, LmctfyError) throws -> Resp? = { _, _, _ in nil },
            done: (@Sendable (Dispatcher, Req, UInt64) -> Resp?)? = nil,
            progress: (@Sendable (Req, String) -> Resp?)? = nil,
            _ rawBody: @escaping @Sendable (Dispatcher, Req) throws -> Resp
        ) {
            mutating(m, recover: recover, done: done, progress: progress, withContext: { d, r, _ in try rawBody(d, r) })
        }
        /// The same, for a body that checks the call's cancellation itself.
        func mutating<Req: IdempotentRequest, Resp>(
            _ m: AgentMethod<Req, Resp>,
            recover: @escaping @Sendable (Dispatcher, Req, LmctfyError) throws -> Resp? = { _, _, _ in nil },
            done: (@Sendable (Dispatcher, Req, UInt64) -> Resp?)? = nil,
            progress: (@Sendable (Req, String) -> Resp?)? = nil,
            withContext rawBody: @escaping @Sendable (Dispatcher, Req, CallContext) throws -> Resp
        ) {
            table[m.name] = { d, payload, context in
                let r = try Req(serializedBytes: payload)
                // A caller that asked for progress gets the library's reports
                // as responses ahead of the final one (ProgressReporting).
                let body: @Sendable (Dispatcher, Req) throws -> Resp = { d, r in
                    guard let progress, progress(r, "") != nil else { return try rawBody(d, r, context) }
                    return try d.withProgress(context, make: { progress(r, $0) }, body: { try rawBody(d, r, context) })
                }
                guard let id = r.requestId, let journal = d.journal else {
                    let response = try body(d, r)
                    d.testHold?.hold(m.name)
                    try context.emit(response)
                    return
                }
                // A full disk does not stop what an operator needs then and
                // what a retry cannot do twice: a destroy (it makes room), a
                // killall, a pause, a resume.
                let mode = try journal.begin(id: id, method: m.name, payload: payload,
                                             evenWhenFull: Dispatcher.unrecordedWhenFull.contains(m.name))
                if case .replay(let status, let bytes) = mode {
                    guard status.code == .ok else { throw status }
                    context.emit(serialized: bytes)
                    return
                }
                var status = CallStatus.ok
                var bytes: [UInt8] = []
                var redo = false
                var finished: Resp?
                if case .redo(let started) = mode {
                    redo = true
                    finished = done?(d, r, started)
                }
                do {
                    let response: Resp
                    if let finished {
                        response = finished
                    } else {
                        do {
                            response = try body(d, r)
                        } catch let error as LmctfyError where redo {
                            guard let recovered = try recover(d, r, error) else { throw error }
                            response = recovered
                        }
                    }
                    bytes = try response.serializedBytes()
                } catch {
                    status = Dispatcher.status(of: error, method: m.name)
                }
                if status.code == .ok { d.testHold?.hold(m.name) }
                journal.finish(id: id, method: m.name, payload: payload, status: status, response: bytes)
                guard status.code == .ok else { throw status }
                context.emit(serialized: bytes)
            }
        }
        /// A streaming method: decode the request; the body emits.
        func streaming<Req, Resp>(_ m: AgentMethod<Req, Resp>, _ body: @escaping @Sendable (Dispatcher, Req, CallContext) throws -> Void) {
            table[m.name] = { d, payload, context in try body(d, try Req(serializedBytes: payload), context) }
        }
        mutating(AgentMethods.create, recover: { d, r, error in
            // The earlier agent may have made it: OK if what is there has
            // every value the request asked for, as the kernel keeps them
            // (memory amounts in whole pages: a limit of 100000000 reads
            // back 99999744, and the retry was ALREADY_EXISTS; a probe).
            guard error.code == .alreadyExists,
                  let spec = try? d.backend.spec(try Dispatcher.containerName(r.name)),
                  Dispatcher.contains(spec.dynamic, Dispatcher.asKept(r.spec ?? ContainerSpec()).dynamic) else { return nil }
            return CreateResponse()
        }) { d, r in
            try d.createAdmitted(try Dispatcher.containerName(r.name), spec: r.spec ?? ContainerSpec(), tier: r.tier)
        }
        mutating(AgentMethods.destroy, recover: { _, _, error in
            // The earlier agent destroyed it before it died.
            error.code == .notFound ? DestroyResponse() : nil
        }, progress: { r, message in r.wantProgress == true ? DestroyResponse(progress: message) : nil }) { d, r in
            _ = try d.destroyContainer(try Dispatcher.containerName(r.name), force: r.force ?? false, cgroupId: r.cgroupId)
            return DestroyResponse()
        }
        mutating(AgentMethods.update, done: { d, r, started in
            d.recordedEarlier(r.name, .containerEventUpdated, since: started) ? UpdateResponse() : nil
        }) { d, r in
            let policy: UpdatePolicy
            switch r.policy {
            case .updateDiff: policy = .diff
            case .updateReplace: policy = .replace
            default: throw LmctfyError.invalidArgument("Update needs a policy (UPDATE_DIFF or UPDATE_REPLACE)")
            }
            let name = try Dispatcher.containerName(r.name)
            let target = try d.backend.resolve(name)
            // Frozen under a lease: a migration is copying it, and a change
            // now would not reach the copy (it was acknowledged, then lost
            // with the source; a probe).
            if d.leases.lease(target) != nil {
                throw LmctfyError(.aborted, "Container \(name) is frozen under a lease: a migration of it is under way (an update now would not reach its copy), or one was cut short and the freeze ends by itself then; update it after, or resume it first")
            }
            let spec = r.spec ?? ContainerSpec()
            return try d.inventory.change(target) {
                // An update that leaves the spec as it was (the values it
                // had, or ones the kernel rounds to them) is no UPDATED, as
                // the watcher sees none in such a write behind its back.
                // The spec before it is read once, here, where no other
                // change of the tree runs: the policy counts the update
                // from the same read.
                let before = try? d.backend.spec(name)
                let update = { () throws -> String in try d.backend.update(name, spec: spec, policy: policy) }
                let path = try d.policy.map { keeper in
                    try keeper.admitUpdate(path: target, current: before, spec: spec, replace: policy == .replace, update)
                } ?? update()
                if before == nil || before != (try? d.backend.spec(path)) {
                    d.events.record(container: path, kind: .containerEventUpdated)
                    d.snapshots?.syncOrWarn(path)
                }
                return (UpdateResponse(), { _ in })
            }
        }
        unary(AgentMethods.spec) { d, r in SpecResponse(spec: try d.backend.spec(r.name)) }
        unary(AgentMethods.stats) { d, r in
            StatsResponse(stats: try d.backend.stats(r.name, type: r.kind == .statsFull ? .full : .summary))
        }
        unary(AgentMethods.listContainers) { d, r in
            let all = try d.backend.listContainers(r.name, recursive: r.recursive ?? false)
            let (names, next) = Dispatcher.page(all, after: r.pageToken, size: r.pageSize)
            return ListContainersResponse(names: names, frozen: r.withFrozen == true ? d.inventory.frozen(among: names) : [],
                                          nextPageToken: next,
                                          total: r.pageToken != nil || r.pageSize != nil ? UInt32(clamping: all.count) : nil)
        }
        unary(AgentMethods.listPids) { d, r in
            ListPidsResponse(pids: try d.backend.listTasks(r.name, threads: false, recursive: r.recursive ?? false))
        }
        unary(AgentMethods.listTids) { d, r in
            ListTidsResponse(tids: try d.backend.listTasks(r.name, threads: true, recursive: r.recursive ?? false))
        }
        unary(AgentMethods.detect) { d, r in DetectResponse(name: try d.backend.detect(r.pid)) }
        streaming(AgentMethods.run) { d, r, context in try d.runCommand(r, context) }
        mutating(AgentMethods.enter) { d, r in
            guard !r.tids.isEmpty else { throw LmctfyError.invalidArgument("Enter needs the TIDs to move") }
            try d.backend.enter(try Dispatcher.containerName(r.name), tids: r.tids)
            return EnterResponse()
        }
        mutating(AgentMethods.killAll, progress: { r, message in r.wantProgress == true ? KillAllResponse(progress: message) : nil }) { d, r in
            let name = try Dispatcher.containerName(r.name)
            try d.backend.killAll(name, recursive: r.recursive ?? false)
            // The processes it recorded that died leave its snapshot.
            if let snapshots = d.snapshots, let path = try? d.backend.resolve(name) { snapshots.syncOrWarn(path) }
            return KillAllResponse()
        }
        mutating(AgentMethods.pause, done: { d, r, started in
            d.recordedEarlier(r.name, .containerEventFreezer, frozen: true, since: started) ? PauseResponse() : nil
        }) { d, r in
            try d.pause(try Dispatcher.containerName(r.name), leaseMs: r.leaseMs, cgroupId: r.cgroupId)
            return PauseResponse()
        }
        mutating(AgentMethods.resume, done: { d, r, started in
            d.recordedEarlier(r.name, .containerEventFreezer, frozen: false, since: started) ? ResumeResponse() : nil
        }) { d, r in
            let name = try Dispatcher.containerName(r.name)
            try d.checkIdentity(name, r.cgroupId)
            d.leases.release([try d.backend.resolve(name)])
            try d.setPaused(name, false, cgroupId: r.cgroupId)
            return ResumeResponse()
        }
        streaming(AgentMethods.notify) { d, r, context in try d.notify(r, context) }
        unary(AgentMethods.machineInfo) { d, _ in
            var info = MachineInfo.collect(cgroupVersion: d.cgroupVersion, agentVersion: d.agentVersion, bootId: d.events.bootId)
            info.criu = d.criu?.status
            info.warnings = d.warnings
            info.policy = d.policy?.report()
            return info
        }
        unary(AgentMethods.checkAdmission) { d, r in
            guard let policy = d.policy else { throw LmctfyError.failedPrecondition("This agent has no policy") }
            return try policy.check(r)
        }
        unary(AgentMethods.exportSnapshot) { d, r in try d.exportSnapshot(r) }
        mutating(AgentMethods.importSnapshot, withContext: { d, r, context in try d.importSnapshot(r, context: context) })
        mutating(AgentMethods.checkpoint) { d, r in try d.checkpoint(r) }
        mutating(AgentMethods.restore) { d, r in try d.restore(r) }
        mutating(AgentMethods.initMachine) { d, r in
            try d.backend.initMachine(r.spec ?? InitSpec())
            return InitResponse()
        }
        unary(AgentMethods.ping) { _, r in PingResponse(data: r.data ?? []) }
        unary(AgentMethods.importImage) { d, r in try d.imageService().importImage(r) }
        // With the call's cancellation: a caller gone stops the packing.
        table[AgentMethods.exportImage.name] = { d, payload, context in
            let r = try ExportImageRequest(serializedBytes: payload)  // a malformed one is 3 before anything
            try context.emit(try d.imageService().exportImage(r, cancelled: { context.cancelled || context.peerHungUp }))
        }
        unary(AgentMethods.listImages) { d, _ in try d.imageService().listImages() }
        unary(AgentMethods.removeImage) { d, r in try d.imageService().removeImage(r) }
        // Served by the agent's event hub on its loop (Agent.subscribe), which
        // needs the agent's connections: a dispatcher on its own has none.
        table[AgentMethods.subscribe.name] = { _, payload, _ in
            _ = try SubscribeRequest(serializedBytes: payload)
            throw LmctfyError.unimplemented("Subscribe is served by the agent's event hub, not by a dispatcher alone")
        }
        return table
    }()

    /// `spec` with its memory amounts as the kernel keeps them: positive
    /// byte values rounded down to whole pages (v1 and v2 alike).
    static func asKept(_ spec: ContainerSpec) -> ContainerSpec {
        guard var m = spec.memory else { return spec }
        func page(_ v: Int64?) -> Int64? { v.map { $0 > 0 ? Sys.pageRounded($0) : $0 } }
        (m.limit, m.reservation, m.swapLimit) = (page(m.limit), page(m.reservation), page(m.swapLimit))
        var kept = spec
        kept.memory = m
        return kept
    }

    /// Whether `whole` has every field `part` sets, with the same values
    /// (recursively for single messages; repeated fields must be equal).
    static func contains(_ whole: DynamicMessage, _ part: DynamicMessage) -> Bool {
        part.setFieldNumbers.allSatisfy { n in
            let (a, b) = (whole.values(n), part.values(n))
            if a.count == 1, b.count == 1, case .message(let x) = a[0], case .message(let y) = b[0] {
                return contains(x, y)
            }
            return a == b
        }
    }

    func imageService() throws(LmctfyError) -> ImageService {
        guard let images else { throw .unimplemented("This agent has no image store") }
        return images
    }

    /// Names pages hold at most (whatever `page_size` says): well within
    /// the default 4 MiB frame limit.
    static let pageBytes = 1 << 20

    /// One page of `all` (sorted): the names after `token`, at most `size`
    /// of them (0: as many as fit) and `pageBytes` of them, and the token
    /// of the next page when names follow. Without a token or a size,
    /// every name (a client from before paging). A token need not be a name
    /// still there: the page starts after where it would be.
    static func page(_ all: [String], after token: String?, size: UInt32?) -> (names: [String], next: String?) {
        guard token != nil || size != nil else { return (all, nil) }
        var start = all.startIndex
        if let token {
            // Sorted: the first name past the token, by halves.
            var lo = 0, hi = all.count
            while lo < hi {
                let mid = (lo + hi) / 2
                if all[mid] <= token { lo = mid + 1 } else { hi = mid }
            }
            start = lo
        }
        let most = size.map { $0 == 0 ? Int.max : Int($0) } ?? Int.max
        var end = start
        var bytes = 0
        while end < all.count, end - start < most {
            let cost = all[end].utf8.count + 4
            if end > start && bytes + cost > pageBytes { break }
            bytes += cost
            end += 1
        }
        return (Array(all[start..<end]), end < all.count ? all[end - 1] : nil)
    }

    static func containerName(_ n: String?) throws(LmctfyError) -> String {
        guard let n else { throw .invalidArgument("The request names no container") }
        return n
    }

    /// Creates `name` as the Create call does: admitted by the policy (in
    /// `tier`, when given) if the agent has one, then `createContainer`.
    /// `oneShot`: for a Run with remove_when_done (its snapshot says so).
    /// `origin`: the token the container records (`ImportMarks`).
    func createAdmitted(_ name: String, spec: ContainerSpec, tier: String?, oneShot: Bool = false,
                        origin: String? = nil) throws -> CreateResponse {
        guard let policy else {
            if tier != nil { throw LmctfyError.failedPrecondition("This agent has no policy: a create cannot name a tier") }
            return CreateResponse(initPid: try createContainer(name, spec: spec, oneShot: oneShot, origin: origin).initPid)
        }
        let path = try backend.resolve(name)
        let (tier, spec) = try policy.planCreate(path: path, spec: spec, tier: tier)
        let made = try policy.admitCreate(path: path, tier: tier, spec: spec) {
            try createContainer(name, spec: spec, oneShot: oneShot, origin: origin)
        }
        return CreateResponse(tier: tier.name, initPid: made.initPid)
    }

    /// Creates `name` (without the policy): recorded, snapshot written.
    /// Returns what was made.
    func createContainer(_ name: String, spec: ContainerSpec, oneShot: Bool = false, origin: String? = nil) throws -> CreateOutcome {
        try inventory.change(try backend.resolve(name)) {
            let made = try backend.createReportingInit(name, spec: spec, origin: origin)
            // Test hook (LMCTFY_AGENT_TEST_HOLD_AFTER=Create.made): the
            // container made, nothing of it recorded yet.
            testHold?.hold("Create.made")
            let path = made.name
            // Known still, so destroyed behind the agent's back since the
            // watcher looked: its DESTROYED first (Inventory.known).
            let stale = inventory.known(atOrBelow: path)
            for p in stale { events.record(container: p, kind: .containerEventDestroyed) }
            if !stale.isEmpty { snapshots?.removeTree(path) }
            events.record(container: path, kind: .containerEventCreated)
            // Its intent now; its full snapshot off the answer's path, once
            // it has lived `deferMs` (SnapshotKeeper.created).
            snapshots?.created(path, oneShot: oneShot)
            return (made, { known in
                for p in stale { known[p] = nil }
                known[path] = false
            })
        }
    }

    /// ABORTED when `name` is not the container `cgroupId` identifies (a
    /// request's `cgroup_id`) any more: destroyed and made again since.
    /// A container that is gone is left to the call (NOT_FOUND).
    func checkIdentity(_ name: String, _ cgroupId: UInt64?) throws {
        guard let cgroupId, let now = backend.containerIdentity(name), now != cgroupId else { return }
        throw LmctfyError(.aborted, "Container \(name) is another container now (its cgroup_id is \(now), not \(cgroupId): destroyed and made again since): nothing was done")
    }

    /// Destroys `name` as Destroy does (only if it is still the container
    /// `cgroupId` identifies, when given). Returns its path.
    func destroyContainer(_ name: String, force: Bool, cgroupId: UInt64? = nil) throws -> String {
        let target = try backend.resolve(name)
        let committed = policy?.entry(target)
        return try inventory.change(target) {
            try checkIdentity(name, cgroupId)
            let gone = try backend.destroyReporting(name, force: force)
            let path = gone.last!
            // One DESTROYED for each container that went, deepest first, as
            // the watcher records a destroy made with the CLI: a subscriber
            // of a subcontainer hears of its end too (only the top was
            // recorded, and `top` kept showing the others).
            // One made behind the agent's back since the watcher looked:
            // its CREATED first; one known below it that was not there any
            // more (destroyed behind its back): its DESTROYED, which
            // forgetting it below left out (Inventory.known).
            let unknown = Set(inventory.known(gone).unknown)
            let goneSet = Set(gone)
            for p in inventory.known(atOrBelow: path) where !goneSet.contains(p) {
                events.record(container: p, kind: .containerEventDestroyed)
            }
            for p in gone {
                if unknown.contains(p) { events.record(container: p, kind: .containerEventCreated) }
                events.record(container: p, kind: .containerEventDestroyed)
            }
            snapshots?.removeTree(path)
            policy?.destroyed(path, was: committed)
            // A freeze lease on it or below ends with it (after it: a
            // destroy that is refused leaves the freeze and its lease; a thaw
            // at the lease's end meanwhile finds it gone).
            leases.release(leases.held(under: path))
            return (path, { known in
                for k in known.atOrBelow(path) { known[k] = nil }
            })
        }
    }

    /// Pause, with a lease (`leaseMs`) or without. The lease is kept before
    /// the freeze, so that no freeze is made that could outlive its lease;
    /// a Pause without one ends any lease (the freeze is then the caller's).
    /// Whether an earlier boot of this agent recorded `kind` (with
    /// `frozen`, when given) for the container `name` at or after
    /// `startedNs`: a call redone after the agent died under it got that
    /// far, so its change was made and its event recorded (a retried
    /// Update, Pause or Resume recorded its event twice; a probe).
    func recordedEarlier(_ name: String?, _ kind: ContainerEventKind, frozen: Bool? = nil, since startedNs: UInt64) -> Bool {
        guard let path = try? backend.resolve(try Self.containerName(name)) else { return false }
        return events.olderBoots.contains { boot in
            boot.events.contains { e in
                e.container == path && e.kind == kind && (frozen == nil || e.frozen == frozen) && (e.timestampNs ?? 0) >= startedNs
            }
        }
    }

    func pause(_ name: String, leaseMs: UInt32?, cgroupId: UInt64? = nil) throws {
        let path = try backend.resolve(name)
        try checkIdentity(name, cgroupId)
        guard let ms = leaseMs else {
            leases.release([path])
            return try setPaused(name, true, cgroupId: cgroupId)
        }
        guard ms >= 1, ms <= FreezeLeases.maxMs else {
            throw LmctfyError.invalidArgument("lease_ms \(ms) is out of range: 1 to \(FreezeLeases.maxMs) (an hour)")
        }
        // One lease at a time (ABORTED while another caller's is held).
        try leases.hold(path, name: name, ms: ms)
        do {
            try setPaused(name, true, cgroupId: cgroupId)
        } catch {
            leases.release([path])
            throw error
        }
    }

    /// Thaws the containers whose freeze lease has run out; returns what to
    /// log. A thaw that fails is tried again a second later, unless the
    /// container is gone.
    func thawExpiredLeases(now: UInt64 = MonotonicClock.milliseconds()) -> [String] {
        var said: [String] = []
        // The tree first, then the leases' list (expire holds it across the
        // thaw), as a destroy takes them: the other way round, a destroy
        // of the tree ending its leases would wait for this thaw's list
        // while the thaw waited for the destroy's tree.
        for (path, lease) in leases.due(now: now) { inventory.holdingTree(path) {
            _ = leases.expire(path, lease) {
                do {
                    try setPaused(lease.name, false)
                    said.append("the freeze lease of \(lease.name) ran out: thawed it (a migration or another caller that paused it with a lease did not finish)")
                    return true
                } catch let e as LmctfyError where e.code == .notFound {
                    return true
                } catch {
                    said.append("the freeze lease of \(lease.name) ran out but it could not be thawed (trying again in a second): \(error)")
                    return false
                }
            }
        } }
        return said
    }

    func setPaused(_ name: String, _ paused: Bool, cgroupId: UInt64? = nil) throws {
        try inventory.change(try backend.resolve(name), keepsSpec: true) {
            try checkIdentity(name, cgroupId)
            let (path, changed) = try backend.setPausedReporting(name, paused)
            // Made behind the agent's back since the watcher looked: known
            // from now on, so its CREATED first (it became known without
            // one, and its DESTROYED later had no CREATED; a probe), and
            // its snapshot, as the watcher's finding it would.
            if !inventory.known([path]).unknown.isEmpty {
                events.record(container: path, kind: .containerEventCreated)
                snapshots?.observed(path)
            }
            // A pause of a paused container (20 callers pausing at once:
            // one pauses it) or a resume of a running one is no event.
            if changed {
                events.record(container: path, kind: .containerEventFreezer, frozen: paused)
                snapshots?.syncOrWarn(path)
            }
            return ((), { $0[path] = paused })
        }
    }

    /// RUN_STARTED with the pid, then (attached) RUN_EXITED with the status.
    /// The agent's stdio is not the caller's: a foreground run's output goes
    /// to /dev/null, or with `attach_output` back to the caller as
    /// RUN_OUTPUT responses (LocalBackend.runCapturing).
    ///
    /// A foreground run belongs to its caller (PROTOCOL.md section 6): when
    /// the call is cancelled, passes its deadline or loses its connection,
    /// the command is SIGKILLed, as a shell's job dies with its terminal, so
    /// nothing runs on whose exit nobody will hear. Detached runs outlive it.
    ///
    /// With `create`, the container is made first (as Create makes it) and,
    /// when the command could not be started in it, destroyed again; with
    /// `remove_when_done` too, it is destroyed when the command ends: before
    /// RUN_EXITED in the foreground, when the agent sees the command exit
    /// for a detached one (SnapshotKeeper's exit watch, `removeOneShot`).
    private func runCommand(_ r: RunRequest, _ context: CallContext) throws {
        guard !r.argv.isEmpty else { throw LmctfyError.invalidArgument("Run needs a command") }
        let removes = r.removeWhenDone == true
        if r.create == nil {
            if removes {
                throw LmctfyError.invalidArgument("remove_when_done needs create: the agent removes only a container the same Run made (lmctl run --create SPEC --rm)")
            }
            if r.tier != nil { throw LmctfyError.invalidArgument("tier is the tier of a container the Run creates: give create too") }
        }
        let detached = r.detached ?? (r.spec?.fdPolicy == .detached)
        if detached && r.attachOutput == true {
            throw LmctfyError.invalidArgument("attach_output is for a foreground Run: a detached command's output goes to /dev/null")
        }
        if detached && r.attachInput == true {
            throw LmctfyError.invalidArgument("attach_input is for a foreground Run: a detached command's stdin is /dev/null")
        }
        if r.tty == true {
            if detached {
                throw LmctfyError.invalidArgument("tty is for a foreground Run: a detached command has no terminal")
            }
            if r.attachOutput != true {
                throw LmctfyError.invalidArgument("tty needs attach_output: what the command writes on its terminal comes back as its output")
            }
            if !context.allowsTerminal {
                throw LmctfyError.invalidArgument("tty needs protocol version \(ProtocolVersion.terminal): this connection speaks an older one")
            }
        } else if r.window != nil {
            throw LmctfyError.invalidArgument("window is the size of a Run's terminal: give tty too")
        }
        if let w = r.window, TerminalWindow(rows: w.rows, cols: w.cols) == nil {
            throw LmctfyError.invalidArgument("window \(w.rows ?? 0)x\(w.cols ?? 0): rows and cols are each 1 to 65535")
        }
        if let term = r.term {
            guard r.tty == true else { throw LmctfyError.invalidArgument("term is the type of a Run's terminal: give tty too") }
            guard RunTerminal.isValidTerm(term) else {
                throw LmctfyError.invalidArgument("term \"\(term.prefix(80))\": 1 to 64 letters, digits and \"._+-\"")
            }
        }
        if !r.modes.isEmpty {
            guard r.tty == true else { throw LmctfyError.invalidArgument("modes are the settings of a Run's terminal: give tty too") }
            if let refusal = TerminalSetting.refusal(r.modes.map(\.setting)) { throw LmctfyError.invalidArgument(refusal) }
        }
        // Before anything is made: a caller that cannot send input is told
        // so, not left with a command reading an empty stdin.
        let input = r.attachInput == true ? context.openInput() : nil
        if r.attachInput == true && input == nil {
            throw LmctfyError.invalidArgument("attach_input needs protocol version \(ProtocolVersion.input) (INPUT frames): this connection speaks an older one")
        }
        // However the call ends, what its input was granted goes back to
        // the agent's budget.
        defer { input?.close() }
        var pid: Int32 = 0
        // The pid stays ours until the backend has reaped it, just before it
        // returns, and the hook is removed right after: the kill cannot hit
        // a reused pid unless pids wrap around in between.
        defer { context.onCancel(nil) }
        let name = try Self.containerName(r.name)
        let path = try backend.resolve(name)
        // The cgroup the Run made: its removal is of that one only.
        var madeId: UInt64?
        if let spec = r.create {
            // Before anything is made: a Run whose caller has gone makes
            // nothing (the create would otherwise be undone at once).
            if context.cancelled { throw LmctfyError(.cancelled, "The Run was cancelled before its container was made") }
            // Marked until its intent says one-shot (`ImportMarks`).
            let token = removes ? ImportMarks.newToken() : nil
            if let token { try importMarks?.begin(path, token: token, oneShot: true) }
            defer { if token != nil { importMarks?.end(path) } }
            _ = try createAdmitted(name, spec: spec, tier: r.tier, oneShot: removes, origin: token)
            madeId = backend.containerIdentity(path)
            // Test hook (LMCTFY_AGENT_TEST_HOLD_AFTER=Run.created): the
            // container made, its command not started.
            testHold?.hold("Run.created")
        }
        let snapshots = self.snapshots
        let outcome: RunOutcome
        do {
            outcome = try startAndWait(name, path, r, detached: detached, removes: removes, input: input, context) { pid = $0 }
        } catch {
            // The container made for a command that did not start (or whose
            // caller went before it heard of the start: the command was
            // killed with its job) goes again: a failed Run leaves nothing.
            guard r.create != nil, pid == 0 || !detached else { throw error }
            throw undoCreate(name, path, after: error)
        }
        context.onCancel(nil)
        // (A one-shot's process record goes with its container's snapshot
        // in the destroy below, one write fewer; an agent killed before
        // that finds the process gone and removes the container, as for a
        // detached one. Dropped here too when the destroy does not happen.)
        if case .started = outcome {} else if !removes { snapshots?.exited(path, pid: pid) }
        // The exit is an event whoever is still listening: the caller may be
        // gone (its cancel killed the command) and still learn it later.
        let exited: RunResponse
        switch outcome {
        case .started:
            return
        case .exited(let code):
            events.record(container: path, kind: .containerEventProcessExited, pid: pid, exitCode: code)
            exited = RunResponse(kind: .runExited, pid: pid, exitCode: code)
        case .killed(let signal):
            events.record(container: path, kind: .containerEventProcessExited, pid: pid, termSignal: signal)
            exited = RunResponse(kind: .runExited, pid: pid, termSignal: signal)
        }
        if removes, let madeId, backend.containerIdentity(path) != madeId {
            // Not the container this Run made any more: destroyed, and made
            // again under its name by another, whose container (and
            // processes) it is (it was destroyed with them; a probe).
            snapshots?.exited(path, pid: pid)
        } else if removes {
            do {
                _ = try destroyContainer(name, force: true)
            } catch let error as LmctfyError where error.code == .notFound {
                // Destroyed by another caller meanwhile: gone, as asked.
                snapshots?.exited(path, pid: pid)
            } catch {
                snapshots?.exited(path, pid: pid)
                // How the command ended is still the caller's, then why the
                // container stays.
                try? context.emit(exited)
                let e = error as? LmctfyError ?? LmctfyError(.internal, String(describing: error))
                throw LmctfyError(e.code, "The command ended but its container \(path) could not be removed: \(e.message)")
            }
        }
        try context.emitLast(exited)
    }

    /// The command started in `name` (its start recorded and reported);
    /// in the foreground, waited for.
    private func startAndWait(_ name: String, _ path: String, _ r: RunRequest, detached: Bool, removes: Bool,
                              input: CallInput?, _ context: CallContext, started report: (Int32) -> Void) throws -> RunOutcome {
        let snapshots = self.snapshots
        func onStarted(_ started: Int32) throws(LmctfyError) {
            report(started)
            // Its whole job: a shell's children too (`run /web "sleep 30"` is
            // `/bin/sh -c`; the kill of the shell alone left the sleep
            // running, re-parented to init, while the event log said it was
            // killed; a probe). Its own process group (`ownSession`).
            if !detached {
                context.onCancel { [self] in
                    _ = try? Sys.kill(-started, SIGKILL)
                    _ = try? Sys.kill(started, SIGKILL)
                    // And the rest of its session: an interactive shell's
                    // background jobs are process groups of their own (on a
                    // terminal, `run -t`: they kept running when the
                    // caller went; a probe). Looked for among the
                    // container's processes, off the cancelling thread.
                    Threads.detach { [self] in
                        for task in (try? backend.listTasks(name, threads: false, recursive: true)) ?? [] where Sys.sessionId(task) == started {
                            _ = try? Sys.kill(task, SIGKILL)
                        }
                    }
                    // A one-shot's container is ending: one paused meanwhile
                    // is thawed so that its killed job can die (it stayed
                    // frozen, the call's thread waiting on it, until someone
                    // resumed it; a probe). Off the caller's thread.
                    if removes { Threads.detach { _ = try? self.setPaused(name, false) } }
                }
            }
            // Recorded (and on disk) before the caller hears of it.
            snapshots?.started(path, pid: started, argv: r.argv, detached: detached, policy: r.restartPolicy, removes: removes)
            try context.emit(RunResponse(kind: .runStarted, pid: started))
        }
        guard r.attachOutput == true || input != nil else {
            return try backend.run(name, argv: r.argv, detached: detached, onStarted: onStarted)
        }
        // Each chunk as it comes (emit waits while the caller's window is
        // full: the command then waits on its full pipe).
        let output: ((Int32, [UInt8]) throws(LmctfyError) -> Void)? = r.attachOutput != true ? nil : { (stream: Int32, bytes: [UInt8]) throws(LmctfyError) in
            try context.emit(stream == 1 ? RunResponse(kind: .runOutput, stdout: bytes) : RunResponse(kind: .runOutput, stderr: bytes))
        }
        let terminal = r.tty != true ? nil : RunTerminal(
            window: r.window.flatMap { TerminalWindow(rows: $0.rows, cols: $0.cols) } ?? TerminalWindow(rows: 24, cols: 80),
            term: r.term ?? "xterm", modes: r.modes.map(\.setting))
        return try backend.runCapturing(name, argv: r.argv, input: input, terminal: terminal, onStarted: onStarted, onOutput: output)
    }

    /// Destroys `name` and everything in it (a one-shot's container); one
    /// gone already (another caller's destroy) is no error.
    private func destroyIfThere(_ name: String) throws {
        do { _ = try destroyContainer(name, force: true) } catch let gone as LmctfyError where gone.code == .notFound {}
    }

    /// Destroys the container a Run made for a command that did not start;
    /// returns the error to end the call with (the start's, and the
    /// destroy's when the container stays).
    private func undoCreate(_ name: String, _ path: String, after error: any Error) -> any Error {
        do {
            try destroyIfThere(name)
            return error
        } catch let failed {
            let e = error as? LmctfyError ?? LmctfyError(.internal, String(describing: error))
            return LmctfyError(e.code, "\(e.message); the container \(path) made for it could not be removed: \(failed)")
        }
    }

    /// The container of a detached one-shot command (Run with
    /// `remove_when_done`) whose command has ended, found by the snapshot
    /// keeper's exit watch (now, or at the start after an agent that was
    /// down): destroyed with whatever is left in it. Returns what to log.
    func removeOneShot(_ path: String) -> String? {
        do {
            try destroyIfThere(path)
            return nil
        } catch {
            return "the container \(path) of a one-shot command that ended was not removed: \(error)"
        }
    }

    /// How many sequence numbers Notify reads from the log at a time.
    static let notifyPart: UInt64 = 256

    /// Replays what the subscriber missed (or says it cannot: EventGap),
    /// then streams live events until cancelled or the container goes away.
    private func notify(_ r: NotifyRequest, _ context: CallContext) throws {
        guard let spec = r.spec else { throw LmctfyError.invalidArgument("Notify needs an EventSpec") }
        let kind: ContainerEventKind = spec.oom != nil ? .containerEventOom
            : spec.memoryThreshold != nil ? .containerEventMemoryThreshold : .containerEventEmpty
        let threshold = spec.memoryThreshold?.usage
        let path = try backend.resolve(try Self.containerName(r.name))
        let events = self.events
        let watches = self.notifyWatches
        // OOMs of every container are recorded by the agent's machine
        // watcher: the call only streams them from the log, and ends when
        // the container's DESTROYED is recorded.
        let owner = kind == .containerEventOom ? memoryOwner.locked({ $0 }) : nil
        let fedByHub = owner != nil
        // NOT_FOUND if it is not there; the events are the memory owner's.
        let ownerPath = try owner?.find(path)
        // As Subscribe: nobody handled an event never recorded (checked
        // before any watch is made).
        if let after = r.afterSequence { try events.checkResumePoint(bootId: r.bootId, after: after) }
        func matches(_ e: ContainerEvent) -> Bool {
            if let ownerPath { return e.kind == kind && e.container == ownerPath }
            return e.container == path && e.kind == kind && (threshold == nil || e.memoryThreshold == threshold)
        }
        // A destroy recorded after the call came ends it, whatever the
        // watch (shared, on its own thread) has seen yet: one made on the
        // container that replaced it under its name watched that one (a
        // threshold notify then never ended).
        func destroyed(_ e: ContainerEvent) -> Bool {
            guard e.kind == .containerEventDestroyed, let c = e.container else { return false }
            return c == path || path.hasPrefix(c == "/" ? "/" : c + "/")
        }
        // Live events are those recorded from now on.
        var cursor = events.newest
        let watch = fedByHub ? nil : joinWatch(path: path, spec: spec, kind: kind, threshold: threshold)
        defer { if let watch { watches.leave(watch) } }
        // The watch is made in a moment (a few syscalls); what was missed is
        // replayed even to a call cancelled meanwhile, as before.
        var seen: UInt64 = 0
        var seenLog = events.changes.value
        if let watch {
            var waited = 0
            while case .starting = watch.state.locked({ $0 }) {
                guard waited < 50 else { throw LmctfyError(.unavailable, "The watch of \(path) was not made in 10 s") }
                seen = watch.changes.wait(past: seen, timeoutMs: 200)
                waited += 1
            }
            if case .ended(let error?) = watch.state.locked({ $0 }) { throw error }
        }
        // The log is read a part at a time: a caller that does not read
        // keeps this thread waiting in emit with one part, not everything it
        // missed decoded (~2.3 KB an event). Returns where it got to.
        func stream(after start: UInt64, upTo end: UInt64, live: Bool) throws -> UInt64 {
            var from = start
            while from < end {
                let upTo = min(end, from + Self.notifyPart)
                let (part, dropped) = events.range(after: from, upTo: upTo)
                if let dropped {
                    // More events than the log keeps went by since the last
                    // look (or while the caller was not reading).
                    try context.emit(NotifyResponse(gap: EventGap(
                        requestedBootId: events.bootId, afterSequence: from, bootId: events.bootId, firstSequence: dropped)))
                    from = dropped - 1
                    continue
                }
                for e in part {
                    if matches(e) { try context.emit(NotifyResponse(event: e)) }
                    if live && destroyed(e) {
                        throw LmctfyError.notFound("Container \"\(path)\" was destroyed while a notification was registered")
                    }
                }
                from = upTo
            }
            return max(from, end)
        }
        if let after = r.afterSequence {
            cursor = events.newest
            let (gap, from) = events.resumePoint(bootId: r.bootId, after: after)
            if let gap { try context.emit(NotifyResponse(gap: gap)) }
            cursor = try stream(after: from, upTo: cursor, live: false)
        }
        // An EMPTY watch fires once when made on a container already empty.
        // A call joining it after that (its first listener just got the
        // event and left, the watch not stopped yet) would wait for ever for
        // an emptying that happened: while the container is still empty, it
        // gets the watch's EMPTY as its own watch would have given it (a
        // call resuming has had it from the log, or handled it before).
        // So does a call whose watch found the container empty with its
        // EMPTY on record already (recorded before this call): it gets that
        // one, as soon as its watch has looked.
        let started = cursor
        var answered = false
        func answerIfEmptyOnRecord() throws {
            guard !answered, let watch, kind == .containerEventEmpty, r.afterSequence == nil,
                  let e = watch.lastEvent.locked({ $0 }), let seq = e.sequence, seq <= started,
                  (try? backend.listTasks(path, threads: false, recursive: true).isEmpty) == true else { return }
            answered = true
            try context.emit(NotifyResponse(event: e))
        }
        try answerIfEmptyOnRecord()
        while !context.cancelled {
            try answerIfEmptyOnRecord()
            let newest = events.newest
            if newest > cursor {
                cursor = try stream(after: cursor, upTo: newest, live: true)
                continue
            }
            if let watch, case .ended(let error) = watch.state.locked({ $0 }) {
                // The container went (NOT_FOUND, D5), or the watch failed.
                throw error ?? LmctfyError(.unavailable, "The watch of \(path) ended")
            }
            if let watch {
                seen = watch.changes.wait(past: seen, timeoutMs: 200)
            } else {
                seenLog = events.changes.wait(past: seenLog, timeoutMs: 200)
            }
        }
    }

    /// One kernel watch per (container, event) however many listen: its
    /// thread records each event once; every listener streams it from the log.
    private func joinWatch(path: String, spec: EventSpec, kind: ContainerEventKind, threshold: Int64?) -> NotifyWatches.Watch {
        let events = self.events
        let backend = self.backend
        let watches = self.notifyWatches
        let inventory = kind == .containerEventEmpty ? self.inventory : nil
        return watches.join(NotifyWatches.Key(container: path, kind: kind, threshold: threshold)) { w in
            inventory?.watchingEmpty(path, true)
            defer { inventory?.watchingEmpty(path, false) }
            do throws(LmctfyError) {
                try backend.notify(
                    path, event: spec,
                    cancellation: NotifyCancellation(pollMs: 200) { !watches.keepWatching(w) },
                    onWatching: { (_: String) throws(LmctfyError) in w.set(.watching) },
                    onEvent: { (n: Int) throws(LmctfyError) -> Bool in
                        for _ in 0..<n {
                            // Empty already, its EMPTY on record (a watch
                            // fires once when made on such a container):
                            // that one answers, none is added.
                            if let known = inventory?.emptyOnRecord(path) {
                                w.lastEvent.locked { $0 = known }
                                continue
                            }
                            let e = events.record(container: path, kind: kind, threshold: threshold)
                            w.lastEvent.locked { $0 = e }
                            inventory?.notedEmpty(path, e)
                        }
                        w.changes.bump()
                        return true
                    })
                watches.end(w, nil)
            } catch {
                watches.end(w, error)
            }
        }
    }
}

/// The machine, for MachineInfo.
enum MachineInfo {
    static func collect(cgroupVersion: Int32, agentVersion: String, bootId: String) -> MachineInfoResponse {
        var info = MachineInfoResponse()
        var u = utsname()
        uname(&u)
        func field<T>(_ value: T) -> String {
            withUnsafeBytes(of: value) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        }
        info.hostname = field(u.nodename)
        info.kernel = field(u.release)
        info.cgroupVersion = cgroupVersion
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
