// The verbs of `lmctfy`, against an agent: every operation is one RPC (see
// docs/PROTOCOL.md and the method table, AgentMethods). Status codes come
// back as they were sent, so lmctl's exit status is the agent's code (e.g.
// 16 when it refuses us).
//
// Retries (PROTOCOL.md section 6.1): a call that ends with UNAVAILABLE (the
// connection lost, the agent restarting) is sent once more on a new
// connection when that is safe: a read always, a mutating call because it
// carries a request_id, fresh per operation, that the agent journals. A Run
// is never retried (it carries no id: a second command could start).
import Glibc
import LmctfyBackend
import LmctfyProto
import LmctfyRPC
import LmctfySystem

/// A ContainerBackend whose every call is an RPC to one agent. Names that
/// the agent resolves are returned as sent (the responses do not carry the
/// resolved name).
public final class RemoteBackend: ContainerBackend, @unchecked Sendable {
    // RpcClient is used from one thread at a time: lmctl runs one verb.
    private(set) var client: RpcClient
    let reconnect: (@Sendable () throws(LmctfyError) -> RpcClient)?
    let onRetry: (@Sendable (String) -> Void)?
    /// How long a retry waits for the agent to take connections again.
    let reconnectWaitMs: UInt64
    /// Where a foreground run's stdout (1) and stderr (2) go (lmctl's
    /// own): the agent is asked to send them back (attach_output); false:
    /// they can no longer be written. nil: they go to /dev/null on the
    /// agent's machine.
    public var output: ((Int32, [UInt8]) -> Bool)?
    /// Where a foreground run's stdin comes from (`run -i`: lmctl's own,
    /// sent to the agent, attach_input); nil: /dev/null on the agent's
    /// machine.
    public var input: Int32?
    /// A foreground run's terminal (`run -t`): the command runs on a
    /// pseudo-terminal on the agent's machine, this one's keys and size
    /// passed to it (tty, protocol version 5).
    public var terminal = false
    /// One of the hosts of `--hosts`: lmctl's stdin and terminal cannot be
    /// given to each host's command.
    public var oneOfMany = false

    /// A backend over an authenticated connection to an agent. With
    /// `reconnect`, a call that loses its agent (UNAVAILABLE, the connection
    /// gone) is retried once where that is safe, on a connection `reconnect` makes (tried for up to
    /// `reconnectWaitMs` while it fails with UNAVAILABLE); `onRetry` hears why.
    public init(client: RpcClient, reconnect: (@Sendable () throws(LmctfyError) -> RpcClient)? = nil,
                reconnectWaitMs: UInt64 = 2000, onRetry: (@Sendable (String) -> Void)? = nil) {
        self.client = client
        self.reconnect = reconnect
        self.reconnectWaitMs = reconnectWaitMs
        self.onRetry = onRetry
    }

    /// A fresh idempotency key: 16 random bytes in hex.
    public static func newRequestId() -> String {
        Sys.hex(Crypto.randomBytes(16))
    }

    /// One unary call, sent once more on a new connection if it ends with
    /// UNAVAILABLE. Only for calls that are safe to repeat: reads, and
    /// mutating calls carrying a request_id.
    private func call<Request, Response>(_ method: AgentMethod<Request, Response>, _ request: Request) throws(LmctfyError) -> Response {
        try retryingOnce(method.name) { () throws(LmctfyError) in try client.call(method, request) }
    }

    /// `call`, with the agent's progress responses (those `progress` finds
    /// a message in) passed to this thread's Progress reporter; the final
    /// response is the one without. Used when a reporter listens (a
    /// terminal), so the request asked for progress.
    private func callReporting<Request, Response>(_ method: AgentMethod<Request, Response>, _ request: Request,
                                                  progress: (Response) -> String?) throws(LmctfyError) -> Response {
        try retryingOnce(method.name) { () throws(LmctfyError) -> Response in
            var last: Response?
            try client.stream(method, request) { (r: Response) throws(LmctfyError) -> Bool in
                if let message = progress(r) { Progress.report(message) } else { last = r }
                return true
            }
            guard let last else { throw LmctfyError(.internal, "\(method.name): the agent sent no final response") }
            return last
        }
    }

    /// `body` (one call on `client`), once more when it lost its agent
    /// (`lostAgent`: on a new connection) or its host came back
    /// (`hostCameBack`). A call deadline (`--timeout`: the client's
    /// `unaryDeadlineMs`) bounds the whole: the wait for the agent or host
    /// and the second try get what is left of it (the wait took its 2 s
    /// whatever --timeout said; a probe).
    private func retryingOnce<T>(_ name: String, _ body: () throws(LmctfyError) -> T) throws(LmctfyError) -> T {
        let started = MonotonicClock.milliseconds()
        let callMs = client.unaryDeadlineMs.map(UInt64.init)
        func waitUntil() -> UInt64 {
            let wait = MonotonicClock.milliseconds() + reconnectWaitMs
            return callMs.map { min(wait, started + $0) } ?? wait
        }
        /// The second try, within what is left of the call's deadline.
        func again() throws(LmctfyError) -> T {
            guard let callMs else { return try body() }
            let now = MonotonicClock.milliseconds()
            guard now < started + callMs else {
                throw LmctfyError(.deadlineExceeded, "\(name): the call's deadline (\(callMs) ms, --timeout) ran out before it could be sent again")
            }
            let saved = client.unaryDeadlineMs
            client.unaryDeadlineMs = UInt32(started + callMs - now)
            defer { client.unaryDeadlineMs = saved }
            return try body()
        }
        do {
            return try body()
        } catch where lostAgent(error) {
            onRetry?("\(name): \(error.message); retrying once")
            client = try reconnectWithin(until: waitUntil())
            return try again()
        } catch where hostCameBack(error, until: waitUntil()) {
            onRetry?("\(name): \(error.message); the host is connected again, retrying once")
            return try again()
        }
    }

    /// Whether a failed call lost its agent, and so may be sent again on a
    /// new connection: UNAVAILABLE with the connection gone. An agent that
    /// answered UNAVAILABLE itself (a cgroup write the kernel refused, a
    /// freezer that did not settle) is still there: its answer is final,
    /// and sending the call again would only repeat it, later.
    private func lostAgent(_ error: LmctfyError) -> Bool {
        error.code == .unavailable && reconnect != nil && client.isClosed
    }

    /// Whether a call routed through a controller (`client.host`) that
    /// failed with UNAVAILABLE, the connection to the controller still up,
    /// found its host away and may be sent again: the controller's
    /// inventory says the host is not connected, and it connects within
    /// `reconnectWaitMs` (a host whose agent restarted: the call failed
    /// with "host ... is not connected" and was not retried, though the
    /// README said it was; a probe). A host connected at the first look
    /// answered UNAVAILABLE itself: final, as at an agent.
    private func hostCameBack(_ error: LmctfyError, until deadline: UInt64) -> Bool {
        guard error.code == .unavailable, reconnect != nil, !client.isClosed, let host = client.host else { return false }
        client.host = nil  // ListHosts is the controller's own
        defer { client.host = host }
        var away = false
        while true {
            guard let hosts = try? allHosts(client, selector: nil),
                  let state = hosts.first(where: { $0.identity?.hostName == host })?.state else { return false }
            if state == .hostConnected { return away }
            away = true
            guard MonotonicClock.milliseconds() < deadline else { return false }
            usleep(100_000)
        }
    }

    /// The first connection of a verb, waiting up to `waitMs` for an agent
    /// that is restarting: its socket there and nobody listening yet
    /// (ECONNREFUSED), or the connection closed before the hello was done.
    /// Nothing was sent, so trying again is safe; it failed at once (a
    /// probe: 181 of 400 calls made during agent restarts). No socket at
    /// all (ENOENT: no agent here) fails at once, unless the socket was
    /// there a moment ago (the starting agent replaces the old one).
    public static func dialWaitingForRestart(_ dial: @Sendable () throws(LmctfyError) -> RpcClient,
                                             waitMs: UInt64 = 2000) throws(LmctfyError) -> RpcClient {
        let deadline = MonotonicClock.milliseconds() + waitMs
        var restarting = false
        while true {
            do {
                return try dial()
            } catch {
                guard error.code == .unavailable, restarting || error.errno != ENOENT,
                      MonotonicClock.milliseconds() < deadline else { throw error }
                restarting = true
                usleep(50_000)
            }
        }
    }

    /// A new connection, waiting until `deadline` (reconnectWaitMs, or
    /// less of a call's deadline) for the agent's socket to take
    /// connections again (it may be restarting).
    private func reconnectWithin(until deadline: UInt64) throws(LmctfyError) -> RpcClient {
        guard let reconnect else { throw LmctfyError(.unavailable, "no way to reconnect") }
        while true {
            do {
                return try reconnect()
            } catch where error.code == .unavailable && MonotonicClock.milliseconds() < deadline {
                usleep(50_000)
            }
        }
    }

    /// Create; returns the name as sent.
    @discardableResult
    public func create(_ name: String, spec: ContainerSpec) throws(LmctfyError) -> String {
        try create(name, spec: spec, tier: nil)
        return name
    }

    /// Create; the agent reports a virtual host's init pid.
    public func createReportingInit(_ name: String, spec: ContainerSpec) throws(LmctfyError) -> CreateOutcome {
        CreateOutcome(name: name, initPid: try create(name, spec: spec, tier: nil).initPid)
    }

    /// Destroy; returns the name as sent.
    @discardableResult
    public func destroy(_ name: String, force: Bool) throws(LmctfyError) -> String {
        var request = DestroyRequest(name: name, force: force, requestId: Self.newRequestId())
        if Progress.isActive {
            request.wantProgress = true
            _ = try callReporting(AgentMethods.destroy, request) { $0.progress }
        } else {
            _ = try call(AgentMethods.destroy, request)
        }
        return name
    }

    /// Update; returns the name as sent.
    @discardableResult
    public func update(_ name: String, spec: ContainerSpec, policy: UpdatePolicy) throws(LmctfyError) -> String {
        let p: SpecUpdatePolicy = policy == .diff ? .updateDiff : .updateReplace
        _ = try call(AgentMethods.update, UpdateRequest(name: name, spec: spec, policy: p, requestId: Self.newRequestId()))
        return name
    }

    /// Spec; `nil`: `/` (the caller is not on the agent's machine).
    public func spec(_ name: String?) throws(LmctfyError) -> ContainerSpec {
        try call(AgentMethods.spec, SpecRequest(name: name ?? "/")).spec ?? ContainerSpec()
    }

    /// Stats; `nil`: `/`.
    public func stats(_ name: String?, type: StatsType) throws(LmctfyError) -> ContainerStats {
        let kind: StatsKind = type == .full ? .statsFull : .statsSummary
        return try call(AgentMethods.stats, StatsRequest(name: name ?? "/", kind: kind)).stats ?? ContainerStats()
    }

    /// ListContainers; `nil`: `/`. A page at a time (a listing past the
    /// frame limit failed: RESOURCE_EXHAUSTED past 4 MiB of names; a probe).
    public func listContainers(_ name: String?, recursive: Bool) throws(LmctfyError) -> [String] {
        try Self.listAll(ListContainersRequest(name: name ?? "/", recursive: recursive)) { (r: ListContainersRequest) throws(LmctfyError) in
            try call(AgentMethods.listContainers, r)
        }.names
    }

    /// Every page of a ListContainers (names and frozen ones), asking for
    /// each after the last through `call`. An agent from before paging
    /// answers the first with everything and no next page.
    public static func listAll(_ request: ListContainersRequest,
                               _ call: (ListContainersRequest) throws(LmctfyError) -> ListContainersResponse)
        throws(LmctfyError) -> (names: [String], frozen: [String]) {
        var r = request
        r.pageSize = 0
        var names: [String] = []
        var frozen: [String] = []
        var pages = 0
        while true {
            let page = try call(r)
            names += page.names
            frozen += page.frozen
            pages += 1
            guard let next = page.nextPageToken, !page.names.isEmpty else { return (names, frozen) }
            guard next > (r.pageToken ?? ""), pages < 1_000_000 else {
                throw .internalError("ListContainers: the agent's next page token \"\(next)\" does not move on")
            }
            r.pageToken = next
        }
    }

    /// ListPids or ListTids; `nil`: `/`.
    public func listTasks(_ name: String?, threads: Bool, recursive: Bool) throws(LmctfyError) -> [Int32] {
        if threads {
            return try call(AgentMethods.listTids, ListTidsRequest(name: name ?? "/", recursive: recursive)).tids
        }
        return try call(AgentMethods.listPids, ListPidsRequest(name: name ?? "/", recursive: recursive)).pids
    }

    /// Detect; needs a pid (the calling shell is not on the agent's machine).
    /// Names are the agent's to resolve (against its own container); only
    /// an absolute one is known here.
    public func resolve(_ name: String) throws(LmctfyError) -> String {
        guard name.hasPrefix("/") else { throw .unimplemented("A relative name is resolved by the agent") }
        return name
    }

    public func detect(_ tid: Int32?) throws(LmctfyError) -> String {
        guard let tid else {
            throw .invalidArgument("lmctl detect needs a PID: the calling shell is not on the agent's machine")
        }
        return try call(AgentMethods.detect, DetectRequest(pid: tid)).name ?? ""
    }

    /// Run: `onStarted` at RUN_STARTED; attached runs return at RUN_EXITED.
    public func run(_ name: String, argv: [String], detached: Bool,
                    onStarted: (Int32) throws(LmctfyError) -> Void) throws(LmctfyError) -> RunOutcome {
        try run(RunRequest(name: name, argv: argv, detached: detached), onStarted: onStarted)
    }

    /// `run --create SPEC [--rm]`: one Run call, the agent making the
    /// container, running the command and (`remove`) destroying it when the
    /// command ends, detached too (it sees the command end); `tier`: a
    /// tier of the agent's policy.
    public func runInNewContainer(_ name: String, spec: ContainerSpec, tier: String?, argv: [String], detached: Bool,
                                  remove: Bool) throws(LmctfyError) -> RunOutcome {
        try run(RunRequest(name: name, argv: argv, detached: detached, create: spec, tier: tier, removeWhenDone: remove ? true : nil)) {
            (_: Int32) throws(LmctfyError) in
        }
    }

    private func run(_ request: RunRequest, onStarted: (Int32) throws(LmctfyError) -> Void) throws(LmctfyError) -> RunOutcome {
        var request = request
        let detached = request.detached == true
        let output = detached ? nil : self.output
        if output != nil { request.attachOutput = true }
        let input = detached ? nil : self.input
        if input != nil {
            guard let version = client.version, version >= ProtocolVersion.input else {
                throw .failedPrecondition("run -i sends the command's stdin in protocol version \(ProtocolVersion.input): the agent speaks \(client.version ?? 0)")
            }
            request.attachInput = true
        }
        // A terminal: sized as lmctl's own, which passes keys through
        // untouched while the command runs (its ^C is the command's) and
        // sends its size as it changes.
        var signals: TerminalSignals?
        if terminal && !detached {
            guard let version = client.version, version >= ProtocolVersion.terminal else {
                throw .failedPrecondition("run -t asks for a terminal in protocol version \(ProtocolVersion.terminal): the agent speaks \(client.version ?? 0)")
            }
            request.tty = true
            // The command's TERM is lmctl's (one the agent would refuse is
            // left out: the agent's default then).
            if let term = getenv("TERM").map({ String(cString: $0) }), RunTerminal.isValidTerm(term) { request.term = term }
            let shown: Int32? = Terminal.isTerminal(0) ? 0 : Terminal.isTerminal(1) ? 1 : nil
            if let shown, let w = Terminal.window(shown) { request.window = TerminalSize(rows: UInt32(w.rows), cols: UInt32(w.cols)) }
            // The keys typed are read with this terminal's modes (its erase
            // character, iutf8), taken before it passes keys through.
            if shown == 0, let modes = Terminal.modes(0) { request.modes = modes.map(TerminalMode.init) }
            if let shown {
                var saved: Terminal.Saved?
                do throws(SystemError) {
                    if shown == 0 { saved = try Terminal.enterPassThrough(0) }
                    signals = try TerminalSignals(terminalFd: shown, saved: saved)
                } catch {
                    if let saved { Terminal.restore(saved) }
                    throw error.lmctfy(.internal, "lmctl's terminal for run -t")
                }
            }
        }
        defer { signals?.close() }
        var outcome: RunOutcome?
        try client.stream(AgentMethods.run, request, input: input, terminal: signals) { r throws(LmctfyError) in
            switch r.kind {
            case .runStarted:
                try onStarted(r.pid ?? 0)
                guard detached else { break }
                // Its call ends at once (OK): waited for, not cancelled, so
                // the agent counts it as the success it is (a cancel that
                // overtook the status made it CANCELLED: a flaky metrics test).
                outcome = .started(pid: r.pid ?? 0)
            case .runOutput:
                guard let output else { break }
                var writable = true
                if let bytes = r.stdout { writable = output(1, bytes) && writable }
                if let bytes = r.stderr { writable = output(2, bytes) && writable }
                // Nobody reads it any more: the call ends, and the agent
                // kills the command (a pipeline's writer gets SIGPIPE).
                if !writable {
                    throw LmctfyError(.dataLoss, "The command's output could not be written (its reader went away): the command was stopped")
                }
            case .runExited:
                outcome = r.termSignal.map { .killed(signal: $0) } ?? .exited(status: r.exitCode ?? 0)
            default:
                break
            }
            return true
        }
        guard let outcome else { throw .internalError("The agent ended Run without reporting the command") }
        // Its input was cut short: said, rather than passed off as its end.
        if input != nil, let why = client.inputFailure {
            let ended = outcome.shellStatus.map { "exited with \($0)" } ?? "ended"
            throw LmctfyError(.dataLoss, "lmctl's stdin could not be read (\(why)): the command's input ended there, and it \(ended)")
        }
        return outcome
    }

    /// `run -i`: the next foreground run's stdin is lmctl's.
    public func attachStdin() throws(LmctfyError) {
        // (The first host's command read it all, the others its end.)
        if oneOfMany { throw .invalidArgument("run -i gives one command lmctl's stdin: with --hosts name one host (--host NAME)") }
        input = 0
    }

    /// `run -t`: the next foreground run's terminal is lmctl's (its stdin
    /// too).
    public func attachTerminal() throws(LmctfyError) {
        if oneOfMany { throw .invalidArgument("run -t gives one command lmctl's terminal: with --hosts name one host (--host NAME)") }
        terminal = true
        input = 0
    }

    /// Enter; needs TIDs.
    public func enter(_ name: String, tids: [Int32]) throws(LmctfyError) {
        guard !tids.isEmpty else {
            throw .invalidArgument("lmctl enter needs TIDs: the calling shell is not on the agent's machine")
        }
        _ = try call(AgentMethods.enter, EnterRequest(name: name, tids: tids, requestId: Self.newRequestId()))
    }

    /// KillAll.
    public func killAll(_ name: String, recursive: Bool) throws(LmctfyError) {
        var request = KillAllRequest(name: name, recursive: recursive, requestId: Self.newRequestId())
        if Progress.isActive {
            request.wantProgress = true
            _ = try callReporting(AgentMethods.killAll, request) { $0.progress }
        } else {
            _ = try call(AgentMethods.killAll, request)
        }
    }

    /// Pause or Resume; returns the name as sent.
    @discardableResult
    public func setPaused(_ name: String, _ paused: Bool) throws(LmctfyError) -> String {
        if paused {
            _ = try call(AgentMethods.pause, PauseRequest(name: name, requestId: Self.newRequestId()))
        } else {
            _ = try call(AgentMethods.resume, ResumeRequest(name: name, requestId: Self.newRequestId()))
        }
        return name
    }

    /// The agent registers the watch when the call arrives; `onWatching`
    /// gets the name as sent. `cancellation` is asked as each response
    /// arrives and at least every `pollMs` while none does.
    public func notify(_ name: String, event: EventSpec, cancellation: NotifyCancellation?,
                       onWatching: (String) throws(LmctfyError) -> Void,
                       onEvent: (Int) throws(LmctfyError) -> Bool) throws(LmctfyError) {
        try onWatching(name)
        try client.stream(AgentMethods.notify, NotifyRequest(name: name, spec: event),
                          giveUp: cancellation.map { c in (c.pollMs, c.isCancelled) }) { r throws(LmctfyError) in
            if cancellation?.isCancelled() == true { return false }
            return r.event != nil ? try onEvent(1) : true
        }
    }

    /// Init, on the agent's machine.
    public func initMachine(_ spec: InitSpec) throws(LmctfyError) {
        _ = try call(AgentMethods.initMachine, InitRequest(spec: spec, requestId: Self.newRequestId()))
    }

    /// The agent's machine (`lmctl info`).
    public func machineInfo() throws(LmctfyError) -> MachineInfoResponse {
        try call(AgentMethods.machineInfo, MachineInfoRequest())
    }

    /// CheckAdmission (a read: retried as any).
    public func checkAdmission(_ request: CheckAdmissionRequest) throws(LmctfyError) -> CheckAdmissionResponse {
        try call(AgentMethods.checkAdmission, request)
    }

    /// Create in a tier of the agent's policy (`tier` nil: the spec's).
    @discardableResult
    public func create(_ name: String, spec: ContainerSpec, tier: String?) throws(LmctfyError) -> CreateResponse {
        try call(AgentMethods.create, CreateRequest(name: name, spec: spec, requestId: Self.newRequestId(), tier: tier))
    }
}

/// lmctl's terminal, watched for `RpcClient.stream(terminal:)`.
extension TerminalSignals: TerminalWatch {}
