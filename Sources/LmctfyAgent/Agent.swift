// lmctfy-agent: listeners on the libuv loop, one RPC Session per connection,
// calls executed OFF the loop (so a ping is answered while a destroy of a
// thousand processes runs), graceful shutdown. Everything in a ConnState and
// the listener list is touched on the loop thread only.
import Glibc
import Lmctfy
import LmctfyLoop
import Logging
import Synchronization
import LmctfyEvents
import LmctfyPolicy
import LmctfyHTTP
import LmctfyProto
import LmctfyRPC
import LmctfySystem


final class ConnState {
    let id: Int
    let conn: Connection
    var session: Session
    var role: AgentRole = .agentRoleUnspecified
    var calls: [UInt32: CallContext] = [:]
    /// Frames not yet handed to the connection, and perform's nesting depth.
    var outbox: [UInt8] = []
    /// Set by the agent before each read: it holds more than half its
    /// limit of unsent answers (big Pings then take the normal path).
    var agentNearlyFull = false
    var depth = 0
    /// Flow control (FlowLimits): bytes handed to the connection whose
    /// write has not completed; request bytes of pool calls by stream id
    /// (kept until the call's work returns, even if it was cancelled).
    var unsent = 0
    var poolCalls: [UInt32: Int] = [:]
    var poolBytes = 0
    /// Streaming calls whose `emit` waits until this connection drains.
    var fullStreams: Set<UInt32> = []
    /// Reading is stopped until this connection (or the agent) drains.
    var throttled = false
    var held: Int { unsent + outbox.count + poolBytes }
    /// TLS under the framing (PROTOCOL.md section 3.1): every byte read goes
    /// through it before the session, every byte written after.
    var tls: TlsChannel?
    /// The peer this TCP connection is counted for (max_connections_per_peer).
    var countedAs: String?
    /// The session is a stand-in until the TLS handshake names the peer's
    /// certificate; then it is replaced by one authenticating by it.
    var awaitingCertificate = false
    /// Whether any byte was read yet (the first tells TLS from plaintext).
    var readAny = false
    /// When the connection began: the hello timeout counts from here.
    let startedAt: UInt64
    /// Where pings answered inline are counted (the agent's metrics).
    var metrics: AgentMetrics?
    /// Pings answered inline in the read batch being handled.
    var inlineAnswered: UInt64 = 0

    init(id: Int, conn: Connection, session: Session, startedAt: UInt64 = MonotonicClock.milliseconds()) {
        self.id = id
        self.conn = conn
        self.session = session
        self.startedAt = startedAt
    }
}

/// Ping is answered inside the session's receive (InlineCalls.swift): it
/// proves the loop is alive and echoes its data; the dispatcher's handler
/// gives the same answer (tests compare them). Refusals (a connection
/// without a role) take the normal path, which says why.
extension ConnState: InlineResponder {
    private static let ping = Array(AgentMethods.ping.name.utf8)
    private static let pingRole = AgentMethods.ping.info.role

    func answerInline(method: UnsafeRawBufferPointer, request: UnsafeRawBufferPointer,
                      response: inout [UInt8]) -> Bool {
        guard method.elementsEqual(Self.ping), Self.pingRole.allows(role) else { return false }
        // A big echo while the agent holds much: the normal path, whose
        // end (Agent.final) refuses an answer past the agent's limit.
        if request.count > Agent.answerBytesWhileFull && agentNearlyFull { return false }
        guard PingWire.answer(request, to: &response) else { return false }
        inlineAnswered += 1
        return true
    }

    /// Plaintext read from the connection (`startNanos`: when the read was
    /// taken) given to the session; the pings it answered inline are then
    /// timed together: each one's answer leaves with its batch, so the
    /// batch's time in the agent is each one's. Two clock reads a read
    /// batch, not two a ping (issue #10's profile: the per-ping reads were
    /// 7-10 % of the agent's CPU for pipelined Pings).
    func receive(_ bytes: [UInt8], startNanos: UInt64, then perform: ([SessionAction]) -> Void) {
        perform(session.receive(bytes, now: startNanos / 1_000_000, inline: self))
        guard inlineAnswered > 0 else { return }
        metrics?.pingsAnsweredInline(inlineAnswered, seconds: Double(MonotonicClock.nanoseconds() &- startNanos) / 1e9)
        inlineAnswered = 0
    }
}

/// lmctfy-agent: serves the agent RPC protocol on a Unix socket (and, if
/// configured, TCP) from one libuv loop, executing calls on worker threads
/// off the loop. `start` it, then `waitUntilStopped`, or `stop`. Thread-safe:
/// its mutable state lives on the loop thread, the worker count behind a lock.
public final class Agent: @unchecked Sendable {
    // @unchecked: the mutable state below is confined to the loop thread
    // (every access is inside loop.execute / loop callbacks); `workers` is
    // behind its lock.
    /// The checked configuration the agent runs with.
    public let settings: AgentSettings
    /// The agent's event loop: listeners, connections, timers and signals all
    /// run on its one thread.
    public let loop: EventLoop
    /// Executes the RPC methods against this machine's containers (CL1 through
    /// a LocalBackend whose attached runs have /dev/null for stdio).
    public let dispatcher: Dispatcher
    /// The INPUT frames granted over all calls (CallInput).
    let inputBudget: InputBudget
    let replay = ReplayCache()
    let log: AgentLog

    private var listeners: [Listener] = []
    private var conns: [Int: ConnState] = [:]
    /// TCP connections open per authenticated peer (`connectionOwner`).
    private var connectionsPerPeer: [String: Int] = [:]
    /// Connections whose answers wait for the end of the loop's batch.
    private var unflushed: [Int: ConnState] = [:]
    private var nextConnId = 1
    /// TCP connections whose handshake (TLS, hello) has not finished.
    private lazy var handshaking = HandshakeBudget(limit: settings.maxHandshakingConnections,
                                                   helloTimeoutMs: settings.limits.helloTimeoutMs)
    /// Bytes received and not yet a whole frame, all connections together.
    private lazy var inbound = InboundBudget(settings.limits)
    private var home = HomeLink()
    private var ticker: LoopTimer?
    private var sweeper: LoopTimer?
    private var reconciler: LoopTimer?
    private var reconciling = false
    /// No reconcile starts before this (CLOCK_MONOTONIC ms): see
    /// `reconcileNotBefore(finishedMs:costMs:)`.
    private var nextReconcileMs: UInt64 = 0
    /// The TLS contexts new connections get (loop thread): the settings'
    /// at start, replaced by `reloadTls` (SIGHUP). A connection keeps the
    /// context it was made with.
    private var tlsServer: TlsContext?
    private var tlsClient: TlsContext?
    /// Each minute, every TLS peer's certificate is checked again (expiry).
    private var certChecker: LoopTimer?
    /// How often established TLS peers' certificates are checked again.
    static let certCheckIntervalMs = 60_000
    /// Every container, whether it is frozen and whether it has no
    /// processes (itself and below); nil when the listing failed.
    private let listContainers: @Sendable () -> (frozen: [String: Bool], empty: [String: Bool])?
    private let api: ContainerApi
    /// The part of the machine served (root_container): every name in a
    /// call, a listing or an event is relative to its root.
    private let scope: ContainerScope
    /// Every container watched from the loop (watch_containers).
    private var watcher: MachineWatcher?
    /// STATS events every stats_interval_ms (a thread of its own).
    private var statsPublisher: StatsPublisher?
    /// Eviction under memory pressure (policy.evict_above_percent; a
    /// thread of its own). Set once by `start`.
    private(set) var evictor: PolicyEvictor?
    /// The Prometheus endpoint (metrics { address }) and its figures.
    private var metricsServer: HttpServer?
    let metrics = AgentMetrics()
    /// The metrics endpoint's TCP port (a port of 0 picks one); nil: none or Unix.
    public private(set) var metricsPort: UInt16?
    /// How often expired request journal entries are removed.
    static let sweepIntervalMs = 60_000
    private var signals: [SignalWatcher] = []
    private var stopping = false
    /// state_dir/agent.lock, held from `start` until the agent has stopped.
    private let stateLock = Mutexed<StateDirLock?>(nil)


    /// Sums over every connection still open, for the agent-wide limits.
    private var totalHeld = 0
    private var totalPoolCalls = 0
    private var throttledCount = 0
    private let workers = Mutexed(0)
    /// Threads for calls that last (Run, Notify), kept for the next call.
    private let ownThreads = ThreadCache()
    /// What peers did wrong, logged at most 10 lines a second.
    private var peerFaults = LogBudget(perSecond: 10)
    /// Calls running on those threads now (at most limits.max_call_threads).
    private let ownThreadCalls = Mutexed(ThreadShare())
    /// The context of every call answered on the loop (one at a time).
    private let loopContext = CallContext()
    /// Subscribe's subscribers (loop thread) and whether a fan-out of newly
    /// recorded events is already queued on the loop.
    private let hub: EventHub
    private let publishQueued = Atomic<Bool>(false)
    /// The next parts of the replays, at the loop's next turn.
    private lazy var replayTurn = NextTurn(on: loop) { [unowned self] in self.continueReplays() }
    /// A renewal is under way (renewCertificateIfDue).
    private let renewing = Atomic<Bool>(false)
    private let finished = Latch()

    /// How much answer the outbox holds before it is written out mid-batch.
    /// A read batch of small calls (64 pings: about 1.2 KB of answers) goes
    /// out in one write, as the C floor does; only big answers are sliced.
    static let flushBytes = 65536

    /// Calls being executed (pool or own thread), for tests and shutdown.
    public var activeCalls: Int { workers.locked { $0 } }

    /// The TCP port actually bound (tcp_address with port 0 picks one).
    public private(set) var tcpPort: UInt16?

    /// An agent that is not started yet: nothing is bound or running until
    /// `start`. Names a caller leaves out mean the agent's own container
    /// (with a root_container: that root).
    public init(settings: AgentSettings, api: ContainerApi) {
        self.settings = settings
        self.loop = EventLoop(name: "lmctfy-agent")
        let scope = ContainerScope(root: settings.rootContainer)
        // Names the caller leaves out mean the agent's own container (or its
        // root_container); an attached run's stdio is /dev/null (the
        // agent's is not the caller's).
        let backend = LocalBackend(api: api, callerPid: Sys.getpid(), scope: scope,
                                   foreground: LocalBackend.spawnAndWait(stdio: .devNull))
        let events = EventLog(capacity: settings.eventLogCapacity)
        // PROTOCOL.md section 6.1; opened (and swept) by `start`.
        let log = AgentLog(level: settings.logLevel)
        let journal = RequestJournal(directory: settings.stateDir + "/requests", bootId: events.bootId,
                                     report: { log.warning("\($0)") })
        // Snapshots (README "Snapshots and restart recovery"): what is
        // written is read from the kernel, by the clients' names.
        // CRIU's check takes a while: it runs on a thread of its own from
        // now, and MachineInfo, Checkpoint and Restore wait for it.
        let criu = CriuProbe()
        criu.start()
        // LMCTFY_AGENT_BENCH_SNAPSHOTS (tools/bench-snapshots only): "off"
        // keeps none, "volatile" writes them without fsync, to measure what
        // snapshots cost a create.
        let bench = getenv("LMCTFY_AGENT_BENCH_SNAPSHOTS").map { String(cString: $0) }
        // A full disk fails every snapshot write of every call: at most 10
        // such lines a second (the store reports its own failed passes).
        let snapshotWarnings = Mutexed(LogBudget(perSecond: 10))
        let snapshots = bench == "off" ? nil : SnapshotKeeper(
            store: SnapshotStore(directory: settings.stateDir + "/snapshots", durable: bench != "volatile",
                                 crash: SnapshotCrashPoint.fromEnvironment(), report: { log.warning("\($0)") }),
            events: events,
            read: { (path: String) throws(LmctfyError) -> SnapshotKeeper.Kernel? in
                let name = try scope.resolve(path)
                do throws(LmctfyError) {
                    let c = try api.get(name)  // NOT_FOUND when it does not exist
                    return (try c.spec(), try c.isFrozen(), c.oomKills(), c.cgroupId())
                } catch where error.code == .notFound {
                    // Destroyed while it was read (its files are then
                    // ENOENT or ENODEV); one still there lacks a file,
                    // which is an error, not a reason to drop its snapshot.
                    if (try? api.exists(name)) == true { throw error }
                    return nil
                }
            },
            cgroupId: { path in (try? scope.resolve(path)).flatMap { try? api.get($0).cgroupId() } },
            warn: { line in
                if let left = snapshotWarnings.locked({ $0.take() }) { log.warning("\(line)\(left)") }
            })
        // MachineInfo's warnings (what `lmctl info` shouts about).
        var warnings: [String] = []
        if settings.plaintextTcp, let tcp = settings.tcp {
            warnings.append("PLAINTEXT TCP: the TCP listener \(tcp.host):\(tcp.port) has no TLS (allow_plaintext_tcp); its frames are neither encrypted nor integrity-protected")
        }
        if settings.plaintextTcp, let address = settings.config.controllerAddress {
            warnings.append("PLAINTEXT TCP: the link to the controller \(address) has no TLS (allow_plaintext_tcp); its frames are neither encrypted nor integrity-protected")
        }
        // CL2 (README "Policy"): admission against the root container's
        // capacity; the ledger is rebuilt from what exists on first use.
        let machine = MachineInfo.collect(cgroupVersion: api.version.number, agentVersion: "", bootId: "")
        let policy = PolicyKeeper(
            policy: settings.policy, backend: backend,
            host: Amount(memory: Int64(clamping: machine.memoryBytes ?? 0), milliCpu: Int64(machine.cpus ?? 0) * 1000),
            machineRoot: scope.isMachine)
        if let m = settings.metrics, !m.isLocal {
            warnings.append("METRICS EXPOSED: the metrics endpoint \(m) is not loopback (allow_non_loopback); anyone who can reach it reads every container's figures, unauthenticated and in the clear")
        }
        self.inputBudget = InputBudget(agentBytes: settings.flow.agentBytes)
        self.dispatcher = Dispatcher(backend: backend, cgroupVersion: api.version.number,
                                     events: events, agentVersion: LmctfyVersion.string, journal: journal,
                                     testHold: TestHold.fromEnvironment(marker: settings.stateDir + "/test-hold"),
                                     snapshots: snapshots, criu: criu, warnings: warnings, policy: policy,
                                     images: ImageService(root: settings.imageRoot),
                                     leases: FreezeLeases(file: settings.stateDir + "/freeze-leases", identify: { path in
                                         guard let name = try? scope.resolve(path) else { return nil }
                                         return (try? api.get(name))?.directoryIdentity()
                                     }),
                                     importMarks: settings.stateDir + "/imports")
        self.tlsServer = settings.tlsServer
        self.tlsClient = settings.tlsClient
        self.log = log
        self.hub = EventHub(log: events, buffer: settings.subscriberBuffer, connectionLimit: settings.flow.connectionBytes)
        self.api = api
        self.scope = scope
        self.listContainers = {
            // Every container below the root, by the name the agent's
            // clients know it by.
            var out: [String: Bool] = [:]
            var hasOwn: [String: Bool] = [:]
            var names: [(name: ContainerName, path: String)] = []
            do throws(LmctfyError) {
                for name in try api.get(scope.root).subcontainers(recursive: true) {
                    guard let path = scope.path(name) else { continue }
                    names.append((name, path))
                    do throws(LmctfyError) {
                        let c = try api.get(name)
                        out[path] = try c.isFrozen()
                        hasOwn[path] = !(try c.processes(recursive: false).isEmpty)
                    } catch where error.code == .notFound {
                        // Destroyed while listed: absent from this round.
                    }
                }
            } catch {
                return nil
            }
            // Empty: no process in it nor below it (deepest first).
            var busy = hasOwn
            for (name, path) in names.reversed() where busy[path] == true {
                if let parent = name.parent, parent != scope.root, let p = scope.path(parent) { busy[p] = true }
            }
            return (out, busy.mapValues { !$0 })
        }
    }

    /// One round of the reconcile (loop thread): the listing runs on a pool
    /// thread, one round at a time.
    private func reconcile() {
        guard !reconciling, MonotonicClock.milliseconds() >= nextReconcileMs else { return }
        reconciling = true
        let inventory = dispatcher.inventory
        let list = listContainers
        let started = loop.offload({ () -> UInt64 in
            let t0 = MonotonicClock.milliseconds()
            let since = inventory.listingStarts()
            if let listed = list() {
                inventory.reconcile(listed.frozen, empties: listed.empty, since: since)
            } else {
                inventory.listingFailed()
            }
            return MonotonicClock.milliseconds() - t0
        }, then: { [weak self] cost in
            guard let self else { return }
            self.reconciling = false
            self.nextReconcileMs = Self.reconcileNotBefore(finishedMs: MonotonicClock.milliseconds(), costMs: cost)
        })
        if !started { reconciling = false }
    }

    /// When the next reconcile may start after one that took `costMs`: at
    /// most a twentieth of a CPU goes to them. A listing of 2,000
    /// containers (each one's freezer state, processes and marks) took
    /// ~75 ms, and once a second that was most of an idle agent's 9 % of a
    /// CPU (a probe); 10,000 would take ~40 %. The watcher sees changes as
    /// they happen; the reconcile is its backstop (and v1's only word on a
    /// container becoming empty), due `reconcile_interval_ms` apart or
    /// twenty times its own cost, whichever is longer.
    static func reconcileNotBefore(finishedMs: UInt64, costMs: UInt64) -> UInt64 {
        finishedMs + costMs * 19
    }

    /// Starts the loop and the listeners. Throws when a listener cannot bind.
    public func start(handleSignals: Bool = true) throws(LmctfyError) {
        // The root_container is the agent's "/": it must be there (the agent
        // does not make it; whoever delegates it does).
        guard try api.exists(scope.root) else {
            throw .failedPrecondition("root_container \(scope.root) does not exist")
        }
        try settings.checkStateDir(create: true)
        let lock = try StateDirLock(settings.stateDir, daemon: "agent")
        stateLock.locked { $0 = lock }
        // A start that fails lets the state_dir go again.
        var started = false
        defer { if !started { releaseStateDir() } }
        try Self.checkRootContainer(stateDir: settings.stateDir, root: scope.root.description)
        if let damaged = dispatcher.leases.unreadable { log.warning("freeze leases: \(damaged)") }
        // What a create, update, destroy or enter cut short (by this agent's
        // earlier death, or anyone's) left in its tree's lock journal is
        // finished now, not when the tree is next touched: a half-made
        // container is otherwise invisible to list and detect, and to the
        // listing below.
        let interrupted = api.recoverInterruptedTrees(within: scope.root)
        for name in interrupted.undone { log.warning("undid the interrupted create of \(name)") }
        for line in interrupted.failed { log.error("finishing an interrupted change failed: \(line)") }
        // Watching and sampling keep a few descriptors per container open.
        Sys.raiseFileLimit()
        if let damage = try dispatcher.events.attachJournal(directory: settings.stateDir + "/events") {
            log.error("event journal: \(damage)")
        }
        // What exists now is known, not new: the first listing seeds it.
        let listed = listContainers()
        if settings.reconcileIntervalMs > 0 || settings.watchContainers, let listed {
            dispatcher.inventory.reconcile(listed.frozen, empties: listed.empty, since: 0)
        }
        // Restart recovery: the snapshots against that same listing, before
        // anything is served (the journal above already has the new boot id).
        if let snapshots = dispatcher.snapshots {
            guard let listed else { throw .unavailable("Listing the containers for the snapshots' recovery failed") }
            let t0 = MonotonicClock.milliseconds()
            let found = try snapshots.recover(listed: Array(listed.frozen.keys))
            oomBaselines = found.oomKills
            log.info("snapshots: \(found) in \(MonotonicClock.milliseconds() - t0) ms")
            for line in dispatcher.undoUnfinishedImports() { log.warning("\(line)") }
        }
        // CL2: every commitment recomputed from what exists (the containers'
        // specs as the kernel has them), before the first create is admitted.
        if let policy = dispatcher.policy {
            if let snapshots = dispatcher.snapshots {
                policy.created.locked { $0 = PolicyKeeper.CreatedClock { snapshots.createdNs($0) } }
            }
            let t0 = MonotonicClock.milliseconds()
            policy.sync()
            log.info("policy: \(policy.admitter.snapshot().entries.count) commitments in \(MonotonicClock.milliseconds() - t0) ms")
        }
        let swept = try dispatcher.journal?.open() ?? 0
        if swept > 0 { log.debug("request journal: \(swept) expired entries removed") }
        loop.afterBatch = { [unowned self] in
            guard !unflushed.isEmpty else { return }
            let batch = unflushed
            unflushed = [:]
            for s in batch.values where conns[s.id] != nil {
                flush(s)
                updateFlow(s)
            }
        }
        do { try loop.start() } catch { throw error.lmctfy("Starting the event loop") }
        let result: Result<UInt16?, LmctfyError>
        do {
            result = try loop.runAndWait { () -> Result<UInt16?, LmctfyError> in
                do throws(LmctfyError) {
                    return .success(try self.startListeners(handleSignals: handleSignals))
                } catch {
                    return .failure(error)
                }
            }
        } catch {
            _ = loop.shutdown()
            throw .internalError("Starting the agent: \(error)")
        }
        switch result {
        case .success(let port):
            tcpPort = port
            dispatcher.events.onRecord { [weak self] in self?.queuePublish() }
            // Its threads (the flusher, changes behind the agent's back,
            // processes of an earlier agent) once nothing can fail any more.
            dispatcher.snapshots?.start()
            // One-shot commands' containers (Run with remove_when_done) whose
            // command ended with no caller waiting: destroyed off the watch's
            // thread (those found ended at the start, at once).
            dispatcher.snapshots?.onCommandEnded { [weak dispatcher, log] path in
                guard let dispatcher else { return }
                Threads.detach {
                    if let line = dispatcher.removeOneShot(path) { log.warning("\(line)") }
                }
            }
            if settings.policy.evictAbovePercent > 0, let keeper = dispatcher.policy {
                let e = PolicyEvictor(api: api, scope: scope, dispatcher: dispatcher, keeper: keeper, log: log,
                                      frozenFile: settings.stateDir + "/evicted-frozen")
                e.start()
                evictor = e
            }
        case .failure(let error):
            // The metrics endpoint is bound first: a later failure closes it.
            _ = try? loop.runAndWait { self.metricsServer?.stop() }
            _ = loop.shutdown()
            throw error
        }
        log.info("lmctfy-agent \(LmctfyVersion.string) listening on unix:\(settings.unixSocketPath)\(tcpPort.map { " and tcp port \($0)\(settings.tlsServer != nil ? " (TLS 1.3)" : "")" } ?? "") (boot id \(dispatcher.events.bootId))")
        if let cert = settings.tlsFiles?.certificateFile, let warning = Enrolment.certificateWarning(file: cert) { log.warning("\(warning)") }
        if settings.plaintextTcp {
            log.warning("PLAINTEXT TCP (allow_plaintext_tcp): frames on TCP are neither encrypted nor integrity-protected; configure tls")
        }
        if let m = settings.metrics {
            log.info("metrics on \(m)\(metricsPort.map { " (port \($0))" } ?? "")")
            if !m.isLocal { log.warning("METRICS EXPOSED (allow_non_loopback): \(m) serves every container's figures to anyone who can reach it") }
        }
        started = true
    }

    /// Unlocks state_dir/agent.lock (once).
    private func releaseStateDir() {
        stateLock.locked { $0 }?.release()
    }

    /// The snapshots' counts of OOM kills (set by the recovery in `start`),
    /// for the watcher made in `startListeners`.
    private var oomBaselines: [String: Int64] = [:]

    private func startListeners(handleSignals: Bool) throws(LmctfyError) -> UInt16? {
        // First: a bad metrics address fails the start before anything runs.
        if let address = settings.metrics {
            metricsServer = try HttpServer(on: loop, address: address) { [unowned self] method, path in
                self.answerMetrics(method, path)
            }
            metricsPort = metricsServer?.port
        }
        if settings.watchContainers {
            let w = try MachineWatcher(loop: loop, api: api, scope: scope, inventory: dispatcher.inventory, events: dispatcher.events)
            // OOM kills made while no agent watched are found by the first look.
            w.countOOMKills(since: oomBaselines)
            // One line per container otherwise: at most 10 a second.
            var budget = LogBudget(perSecond: 10)
            w.onWatchFailure { [log] line in
                if let more = budget.take() { log.warning("\(line)\(more)") }
            }
            try w.start()
            watcher = w
            // What the watcher sees appear or go is what the policy's
            // ledger needs a listing for (PolicyKeeper.syncIfChanged).
            let inventory = dispatcher.inventory
            dispatcher.policy?.outsideChanges.locked {
                $0 = PolicyKeeper.OutsideChanges({ inventory.outsideChanges }, takeUpdated: { inventory.takeUpdatedOutside() })
            }
            let (api, scope) = (self.api, self.scope)
            dispatcher.memoryOwner.locked { $0 = Dispatcher.MemoryOwner { (path: String) throws(LmctfyError) -> String in
                let name = try scope.resolve(path)
                guard try api.exists(name) else { throw .notFound("Container \"\(path)\" does not exist") }
                // An owner at or above the root is "/" here, whose OOMs are
                // not watched (as the machine's root's are not).
                return scope.path(try api.memoryOwner(name)) ?? "/"
            } }
        }
        if settings.statsIntervalMs > 0 {
            let p = StatsPublisher(api: api, scope: scope, inventory: dispatcher.inventory, events: dispatcher.events,
                                   intervalMs: settings.statsIntervalMs)
            p.start()
            statsPublisher = p
        }
        let dir = String(settings.unixSocketPath[..<(settings.unixSocketPath.lastIndex(of: "/")!)])
        if !dir.isEmpty && !Sys.isDirectory(dir) {
            do { try Sys.mkdir(dir, mode: 0o755) } catch { throw error.lmctfy(.failedPrecondition, "Creating the socket directory") }
        }
        // Socket activation: the service manager's socket for the path, kept
        // across restarts (a call made during one waits in its backlog).
        let activated = SocketActivation.takeUnixListener(path: settings.unixSocketPath)
        if activated == nil, !SocketActivation.untaken.isEmpty {
            throw LmctfyError(.failedPrecondition, "Socket activation passed descriptors \(SocketActivation.untaken.joined(separator: ", ")) "
                              + "but none is a listening Unix stream socket at unix_socket_path \(settings.unixSocketPath): make the socket unit's ListenStream that path")
        }
        do {
            let unix: UnixListener
            if let activated {
                // Its mode and group are the socket unit's (SocketMode, SocketGroup).
                unix = try UnixListener.adopt(on: loop, fd: activated, path: settings.unixSocketPath) { [unowned self] c in
                    self.accept(c, tcp: false)
                }
            } else {
                unix = try UnixListener.bind(on: loop, path: settings.unixSocketPath, mode: settings.unixSocketMode) { [unowned self] c in
                    self.accept(c, tcp: false)
                }
                if let gid = settings.allowedGid { _ = chown(settings.unixSocketPath, uid_t.max, gid) }
            }
            listeners.append(unix)
            var port: UInt16?
            if let tcp = settings.tcp {
                let l = try TcpListener.bind(on: loop, host: tcp.host, port: tcp.port) { [unowned self] c in
                    self.accept(c, tcp: true)
                }
                port = l.port
                listeners.append(l)
            }
            for l in listeners {
                l.onAcceptError = { [unowned self] e in
                    self.metrics.connectionRefused()
                    if let more = self.peerFaults.take() { self.log.warning("\(e.acceptFailure)\(more)") }
                }
                l.onNearFileLimit = { [unowned self] line in self.log.warning("\(line)") }
            }
            ticker = try LoopTimer.repeating(on: loop, every: .milliseconds(100)) { [unowned self] _ in self.tick() }
            if settings.controller != nil { dialHome() }
            if settings.reconcileIntervalMs > 0 {
                reconciler = try LoopTimer.repeating(on: loop, every: .milliseconds(settings.reconcileIntervalMs)) { [unowned self] _ in
                    self.reconcile()
                }
            }
            if dispatcher.journal != nil || dispatcher.images != nil {
                // Expired journal entries and idle image transfers go once
                // a minute; the unlinks run on a pool thread, the loop only
                // keeps time.
                let (journal, images) = (dispatcher.journal, dispatcher.images)
                sweeper = try LoopTimer.repeating(on: loop, every: .milliseconds(Self.sweepIntervalMs)) { [unowned self] _ in
                    _ = self.loop.offload({
                        journal?.sweep()
                        images?.sweepIdle()
                    }, then: { _ in })
                }
            }
            if settings.tlsFiles != nil {
                certChecker = try LoopTimer.repeating(on: loop, every: .milliseconds(Self.certCheckIntervalMs)) { [unowned self] _ in
                    _ = self.closePeersWithExpiredCertificates(unixTime: Int64(time(nil)))
                    // Renewal blocks (a TLS call to the controller): on a
                    // pool thread; a failure is logged and tried again at
                    // the next check.
                    if self.settings.renewBeforeExpiryPercent > 0 && !self.stopping {
                        _ = self.loop.offload({ [self] in _ = try? self.renewCertificateIfDue() }, then: { _ in })
                    }
                }
            }
            if handleSignals {
                for s in [SIGTERM, SIGINT] {
                    signals.append(try SignalWatcher.watch(on: loop, signal: s) { [unowned self] sig in
                        self.log.info("signal \(sig): shutting down")
                        self.beginStop(graceMs: 5000)
                    })
                }
                signals.append(try SignalWatcher.watch(on: loop, signal: SIGHUP) { [unowned self] _ in
                    // (Without a tls block there is nothing to read: said so,
                    // not "re-reading the TLS files"; a probe.)
                    guard self.settings.tlsFiles != nil else {
                        self.log.info("signal SIGHUP: no tls block in the config, nothing to re-read")
                        return
                    }
                    self.log.info("signal SIGHUP: re-reading the TLS files")
                    _ = try? self.reloadTlsOnLoop()
                })
                // Their default ends the process at once, without a clean
                // stop (log rotation sends SIGUSR1: the agent probe). It
                // keeps no log file to reopen: logged and ignored.
                for s in [SIGUSR1, SIGUSR2] {
                    signals.append(try SignalWatcher.watch(on: loop, signal: s) { [unowned self] sig in
                        self.log.info("signal \(sig): ignored (only SIGTERM and SIGINT stop it; SIGHUP re-reads the TLS files)")
                    })
                }
            }
            return port
        } catch {
            for l in listeners { l.close() }
            listeners.removeAll()
            throw error.lmctfy("Starting the listeners")
        }
    }

    // MARK: Connections (loop thread)

    /// Connections beyond max_connections that root on the Unix socket may
    /// still open: peers of allowed_group holding every connection (their
    /// hello or not) turned root away ("too many connections"; a probe).
    public static let rootReserve = 8

    /// How a new connection authenticates, and its TLS channel on a TLS
    /// port; nil when neither can be made (no SSL object, no keyring, no
    /// peer credentials).
    private func authentication(_ c: Connection, tcp: Bool) -> (AcceptorAuthentication, TlsChannel?)? {
        if tcp, let server = tlsServer {
            guard let channel = try? TlsChannel(context: server) else { return nil }
            if server.requirePeerCertificate {
                // Replaced once the handshake has verified the certificate.
                return (.certificate(CertIdentity()), channel)
            }
            guard let ring = try? Keyring(settings.keys) else { return nil }
            return (.sharedKey(ring, replay), channel)
        } else if tcp {
            guard let ring = try? Keyring(settings.keys) else { return nil }
            return (.sharedKey(ring, replay), nil)
        }
        guard var creds = c.peerCredentials else { return nil }
        creds.groups = Self.supplementaryGroups(pid: creds.pid)
        return (.peerCredentials(creds, settings.unixPeerPolicy), nil)
    }

    /// At max_connections, the oldest connection still without its hello
    /// after a tenth of the hello timeout (HandshakeBudget's wait) is closed
    /// to make room: 256 Unix peers that connected and said nothing kept
    /// every client out for the whole hello timeout (a probe). Returns
    /// whether one was.
    private func evictSilentConnection(now: UInt64) -> Bool {
        let silent = conns.values.filter { s in
            !s.session.isEstablished && s.id != home.connId && now >= s.startedAt &+ handshaking.evictAfterMs
        }
        guard let o = silent.min(by: { ($0.startedAt, $0.id) < ($1.startedAt, $1.id) }) else { return false }
        metrics.handshakeEvicted()
        if let more = peerFaults.take() {
            log.warning("\(describe(o)): closed without its hello after \(now - o.startedAt) ms to make room for a new connection (limits.max_connections)\(more)")
        }
        o.conn.close()
        drop(o)
        return true
    }

    private func accept(_ c: Connection, tcp: Bool) {
        let root = !tcp && c.peerCredentials?.uid == 0
        var full = conns.count >= settings.maxConnections + (root ? Self.rootReserve : 0)
        if full && !stopping && evictSilentConnection(now: MonotonicClock.milliseconds()) { full = false }
        if stopping || full {
            // PROTOCOL.md section 7: a goaway saying why, then the close. It
            // is written before the peer's hello is read, so it needs no session.
            let why = stopping ? "lmctfy-agent is shutting down" : "too many connections"
            metrics.connectionRefused()
            if let more = peerFaults.take() { log.warning("refusing a connection: \(why)\(more)") }
            // (A TLS port gets no plaintext goaway: its peer could not read it.)
            if !(tcp && settings.tlsServer != nil) {
                c.write(FrameCodec.encode(Frame(kind: .frameGoaway, goaway: GoAway(reason: .goawayNormal, message: why, lastStreamId: 0))))
            }
            c.closeAfterWrites()
            return
        }
        let now = MonotonicClock.milliseconds()
        let id = nextConnId
        nextConnId += 1
        if tcp {
            // Not authenticated yet: a budget of their own (HandshakeBudget),
            // taken before an SSL object is made for them.
            switch handshaking.admit(id, now: now) {
            case .admit:
                break
            case .admitEvicting(let oldest):
                guard let o = conns[oldest] else { break }
                metrics.handshakeEvicted()
                if let more = peerFaults.take() { log.warning("\(describe(o)): \(handshaking.evictionLine(handshakingMs: now - o.startedAt))\(more)") }
                o.conn.close()
                drop(o)
            case .refuse:
                metrics.connectionRefused()
                if let more = peerFaults.take() { log.warning(handshaking.refusalLine + more) }
                // (A TLS port gets no plaintext goaway: its peer could not read it.)
                if tlsServer == nil { c.write(HandshakeBudget.refusal) }
                c.closeAfterWrites()
                return
            }
        }
        guard let (auth, tls) = authentication(c, tcp: tcp) else {
            handshaking.finished(id)
            c.close()
            return
        }
        metrics.connectionAccepted(transport: tcp ? "tcp" : "unix")
        let state = ConnState(id: id, conn: c, session: Session(acceptor: auth, name: "lmctfy-agent", limits: settings.limits, now: now),
                              startedAt: now)
        state.tls = tls
        state.metrics = metrics
        state.awaitingCertificate = tls != nil && tlsServer?.requirePeerCertificate == true
        conns[id] = state
        c.onRead = { [unowned self] _, bytes in
            guard let s = self.conns[id] else { return }
            s.agentNearlyFull = self.nearlyFull
            if let tls = s.tls {
                self.receiveTls(s, tls, bytes)
            } else {
                s.receive(bytes, startNanos: MonotonicClock.nanoseconds()) { self.perform(s, $0) }
            }
            self.countInbound(s)
        }
        c.onEOF = { [unowned self] _ in
            guard let s = self.conns[id] else { return }
            self.perform(s, s.session.receiveEOF(now: MonotonicClock.milliseconds()))
            self.drop(s)
        }
        c.onError = { [unowned self] _, _ in
            if let s = self.conns[id] { self.drop(s) }
        }
        c.resumeReading()
        perform(state, state.session.start(now: now))
    }

    /// A connection as the log names it: the agent's own link to its
    /// controller as such (it was "connection 9 from <the controller's
    /// address>", as if the controller had dialled in), others by the
    /// peer's address.
    private func describe(_ s: ConnState) -> String {
        if s.id == home.connId, let c = settings.controller { return "the link to the controller \(c.host):\(c.port) (connection \(s.id))" }
        return "connection \(s.id) from \(s.conn.remoteAddress?.description ?? "the Unix socket")"
    }

    /// Ciphertext from a TLS peer (PROTOCOL.md section 3.1): the handshake's
    /// answers go back at once; the plaintext goes to the session, which is
    /// made only now, authenticating by certificate, when the listener
    /// requires client certificates. Plaintext on a TLS port is answered by
    /// a plaintext GOAWAY_UNAUTHENTICATED; a failed handshake by OpenSSL's
    /// alert. Either way nothing reaches the session.
    private func receiveTls(_ s: ConnState, _ tls: TlsChannel, _ bytes: [UInt8]) {
        let startNanos = MonotonicClock.nanoseconds()
        if !s.readAny {
            s.readAny = true
            // Every TLS connection starts with a handshake record (type 22).
            if !TlsChannel.opensHandshake(bytes) && s.session.role == .acceptor {
                if let more = peerFaults.take() {
                    log.warning("\(describe(s)): plaintext on a TLS port: refused\(more)")
                }
                s.conn.write(TlsChannel.plaintextRefusal)
                s.conn.closeAfterWrites()
                drop(s)
                return
            }
        }
        let out = tls.feed(bytes)
        send(s, out.send)
        if let failure = tls.failure {
            if let more = peerFaults.take() {
                log.warning("\(describe(s)): TLS handshake or record failed: \(failure)\(more)")
            }
            s.conn.closeAfterWrites()
            drop(s)
            return
        }
        if out.handshakeCompleted && s.awaitingCertificate {
            s.awaitingCertificate = false
            guard let identity = tls.peerIdentity else {
                s.conn.closeAfterWrites()
                drop(s)
                return
            }
            s.session = Session(acceptor: .certificate(identity), name: "lmctfy-agent", limits: settings.limits, now: s.startedAt)
        }
        if !out.plaintext.isEmpty {
            s.receive(out.plaintext, startNanos: startNanos) { perform(s, $0) }
        }
        if tls.peerClosed, conns[s.id] != nil {
            perform(s, s.session.receiveEOF(now: MonotonicClock.milliseconds()))
            drop(s)
        }
    }

    /// Supplementary groups of a Unix peer, for allowed_group / role gids.
    static func supplementaryGroups(pid: pid_t) -> [gid_t] {
        guard let groups = Sys.procStatusField("/proc/\(pid)/status", "Groups") else { return [] }
        return groups.split(separator: " ").compactMap { gid_t($0.trimmingWhitespace) }
    }

    /// Runs a session's actions. Frames collect in the connection's outbox
    /// and leave in one write when the outermost perform returns, so a
    /// batch of requests read together is answered with one syscall.
    /// `batched`: answers a pool or call thread handed the loop (a streamed
    /// response, a call's status): when the loop runs them in one batch of
    /// such work they leave in one write, after it (any other perform or
    /// a drop of the connection writes them out first, in order).
    private func perform(_ s: ConnState, _ actions: [SessionAction], batched: Bool = false) {
        s.depth += 1
        defer {
            s.depth -= 1
            if s.depth == 0 {
                if batched && loop.inBatch {
                    unflushed[s.id] = s
                } else {
                    unflushed[s.id] = nil
                    flush(s)
                    updateFlow(s)
                }
            }
        }
        // Requests whose CANCEL came in the same read (an agent that was
        // stopped reads a request and its caller's CANCEL together): their
        // calls start cancelled, so a pool thread that takes one up before
        // the CANCEL below is handled finds it so and does nothing (it could
        // start on another CPU while the loop was still reading the batch).
        var cancelledInBatch: Set<UInt32> = []
        for action in actions {
            if case .cancelled(let streamId, _) = action { cancelledInBatch.insert(streamId) }
        }
        // Where the last write of this batch starts in the outbox, while it
        // is still there (the handshake's HELLO_ACCEPTED, just before
        // .established).
        var lastWrite: Int?
        for action in actions {
            if case .write(let bytes) = action {
                lastWrite = s.outbox.count
                s.outbox += bytes
                // Large batches go out in slices, so the peer can start on
                // the first answers while we work on the rest.
                if s.outbox.count >= Self.flushBytes {
                    flush(s)
                    lastWrite = nil
                }
                continue
            }
            switch action {
            case .write:
                break
            case .established(let peer):
                handshaking.finished(s.id)
                if s.id == home.connId {
                    // The controller: it drives this host (PROTOCOL.md section 9).
                    s.role = .agentRoleAdmin
                    register(s, controller: peer)
                } else {
                    if peer.credentials == nil {
                        // A TCP peer: one identity holds at most
                        // max_connections_per_peer of them.
                        let who = peer.connectionOwner
                        guard connectionsPerPeer[who, default: 0] < settings.maxConnectionsPerPeer else {
                            if let more = peerFaults.take() {
                                log.warning("connection \(s.id): \(who) holds \(settings.maxConnectionsPerPeer) connections already (limits.max_connections_per_peer); refused\(more)")
                            }
                            // Not accepted, then sent away: the peer hears
                            // only the refusal (its HELLO_ACCEPTED, unsent,
                            // goes).
                            if let at = lastWrite, at <= s.outbox.count { s.outbox.removeSubrange(at...) }
                            perform(s, s.session.goAway(.goawayNormal, message: "too many connections of \(who) (limits.max_connections_per_peer \(settings.maxConnectionsPerPeer))",
                                                        now: MonotonicClock.milliseconds()))
                            return
                        }
                        connectionsPerPeer[who, default: 0] += 1
                        s.countedAs = who
                    }
                    s.role = settings.role(for: peer)
                }
                log.debug("connection \(s.id): \(peer.name) authenticated as \(s.role.protoName)")
            case .deliverRequest(let streamId, let method, let payload, _, let host):
                startCall(s, streamId: streamId, method: method, payload: payload,
                          cancelled: cancelledInBatch.contains(streamId), host: host)
            case .cancelled(let streamId, _):
                metrics.callEnded(conn: s.id, stream: streamId, .cancelled)
                s.calls.removeValue(forKey: streamId)?.cancel()
            case .credit(let streamId, let credit):
                hub.grant(EventHub.Key(conn: s.id, stream: streamId), credit, deliver: deliver, lagged: lagged)
                continueReplays()
            case .input(let streamId, let payload, let end, let window):
                s.calls[streamId]?.deliverInput(payload, end: end, window: window)
            case .inputCredit:
                break  // the agent sends no input on the calls it makes
            case .deliverResponse:
                break  // Register's answer is empty; its status says it all
            case .deliverStatus(let streamId, let status):
                if s.id == home.connId && streamId == home.registerStream { registered(s, status) }
            case .close(let reason):
                // The link home refused at its handshake (a wrong key or
                // certificate) is said where an operator looks: it was at
                // debug, and the host just never appeared.
                let text = "\(reason)"
                if s.id == home.connId, let c = settings.controller,
                   text.contains("UNAUTHENTICATED") || text.contains("PERMISSION_DENIED") {
                    // The hint fits the link's kind: a key's, or a
                    // certificate's (a key id hint was given for an expired
                    // controller certificate; the TLS probe).
                    let hint = c.tls != nil ? "check the tls section's files, and the controller's certificate"
                                            : "check controller_key_id and key_file"
                    log.warning("the link to the controller \(c.host):\(c.port) was refused: \(text) (\(hint))")
                } else if !reason.byPeer && ![.goawayNormal, .goawayIdleTimeout].contains(reason.reason) {
                    // The peer broke the protocol or failed its hello: said
                    // (within the budget), not only at debug.
                    if let more = peerFaults.take() {
                        log.info("\(describe(s)) closed: \(reason)\(more)")
                    }
                } else {
                    log.debug("connection \(s.id) closed: \(reason)")
                }
                flush(s)
                // After the goaway, TLS's close_notify (a truncation can
                // then be told from an orderly close).
                if let tls = s.tls { send(s, tls.shutdown()) }
                s.conn.closeAfterWrites()
                drop(s)
            }
        }
    }

    private func flush(_ s: ConnState) {
        guard !s.outbox.isEmpty else { return }
        if let tls = s.tls {
            let sealed = tls.seal(s.outbox)
            s.outbox.removeAll(keepingCapacity: s.outbox.capacity <= Self.flushBytes * 2)
            send(s, sealed)
            return
        }
        send(s, s.outbox)
        s.outbox.removeAll(keepingCapacity: s.outbox.capacity <= Self.flushBytes * 2)
    }

    /// Writes bytes as they go on the wire (ciphertext under TLS), counted
    /// as the connection's unsent bytes until the write completes.
    private func send(_ s: ConnState, _ bytes: [UInt8]) {
        guard !bytes.isEmpty else { return }
        let n = bytes.count
        s.unsent += n
        totalHeld += n
        // The completion runs once whatever happens (sent, failed, or
        // cancelled by the close), so the count always comes back down.
        s.conn.write(bytes) { [unowned self] _, _ in
            s.unsent -= n
            self.totalHeld -= n
            self.updateFlow(s)
        }
        updateFlow(s)
    }

    // MARK: Flow control (loop thread)

    /// What connection `s` holds of a frame not yet whole, against the
    /// budget over all connections (InboundBudget).
    private func countInbound(_ s: ConnState) {
        guard conns[s.id] != nil else { return }
        let now = MonotonicClock.milliseconds()
        apply(inbound.received(s.id, holds: s.session.bufferedInboundBytes, now: now), reading: s, now: now)
    }

    private func apply(_ a: InboundBudget.Actions, reading s: ConnState? = nil, now: UInt64) {
        if a.pause, let s { s.conn.pauseReading() }
        for id in a.resume {
            if let o = conns[id], !o.throttled { o.conn.resumeReading() }
        }
        for id in a.evict {
            guard let o = conns[id] else { continue }
            metrics.incompleteFrameEvicted()
            if let more = peerFaults.take() { log.warning("\(describe(o)): \(inbound.evictionLine(id, now: now))\(more)") }
            perform(o, o.session.goAway(.goawayIdleTimeout, message: inbound.evictionMessage(id, now: now), now: now))
            if conns[id] != nil { drop(o) }
        }
    }

    /// Stops reading from a peer that holds too much, or that holds anything
    /// while the agent as a whole does; reads again once it (and the agent,
    /// unless it holds nothing) has drained to half. A peer that does not
    /// read its answers thus stalls in its own socket buffers, not in ours.
    private func updateFlow(_ s: ConnState, cascade: Bool = true) {
        guard conns[s.id] != nil else { return }
        let f = settings.flow
        let limit = holdLimit(s)
        if !s.fullStreams.isEmpty && s.held <= limit / 2 {
            for id in s.fullStreams { s.calls[id]?.connectionDrained() }
            s.fullStreams.removeAll()
        }
        // A replay that waited for room goes on (at the next turn: this
        // may run while the hub delivers), once a quarter of the limit is
        // held at most (see `replayRoom`).
        if s.held <= limit / 4, hub.roomCame(conn: s.id) { replayTurn.ask() }
        let holds = s.held > 0 || !s.poolCalls.isEmpty
        let agentDrained = totalHeld <= f.agentBytes / 2 && totalPoolCalls <= f.agentCalls / 2
        if !s.throttled {
            let agentOver = totalHeld > f.agentBytes || totalPoolCalls >= f.agentCalls
            if s.held > f.connectionBytes || s.poolCalls.count >= f.connectionCalls || (agentOver && holds) {
                s.throttled = true
                throttledCount += 1
                s.conn.pauseReading()
                log.debug("connection \(s.id): holds \(s.held) bytes and \(s.poolCalls.count) calls (agent: \(totalHeld), \(totalPoolCalls)): reading paused")
            }
        } else if s.held <= f.connectionBytes / 2, s.poolCalls.count <= f.connectionCalls / 2, agentDrained || !holds {
            s.throttled = false
            throttledCount -= 1
            if !inbound.isPaused(s.id) { s.conn.resumeReading() }
            log.debug("connection \(s.id): drained, reading resumed")
        }
        // Whoever drained the agent may have freed others paused for it.
        if cascade && throttledCount > 0 && agentDrained {
            for other in conns.values where other.throttled && other !== s { updateFlow(other, cascade: false) }
        }
    }

    private func drop(_ s: ConnState) {
        if unflushed.removeValue(forKey: s.id) != nil { flush(s) }
        guard conns.removeValue(forKey: s.id) != nil else { return }
        handshaking.finished(s.id)
        if let who = s.countedAs {
            let n = (connectionsPerPeer[who] ?? 1) - 1
            connectionsPerPeer[who] = n > 0 ? n : nil
            s.countedAs = nil
        }
        apply(inbound.closed(s.id), now: MonotonicClock.milliseconds())
        metrics.connectionClosed(conn: s.id)
        if s.id == home.connId { homeLinkLost() }
        // Unsent bytes come back through their write completions; the pool
        // calls' work may outlive the connection, so their share goes now.
        totalHeld -= s.poolBytes
        totalPoolCalls -= s.poolCalls.count
        s.poolBytes = 0
        s.poolCalls.removeAll()
        if s.throttled {
            s.throttled = false
            throttledCount -= 1
        }
        for (_, call) in s.calls { call.cancel() }
        s.calls.removeAll()
        if !s.conn.isClosing && !s.conn.isClosed { s.conn.closeAfterWrites() }
        checkStopped()
    }

    // MARK: Certificate rotation and revocation (PROTOCOL.md section 3.1)

    /// Re-reads the tls block's files (certificate, key, CA, CRL) into new
    /// contexts for the connections made from now on; established ones keep
    /// theirs, but those whose peer's certificate no longer verifies against
    /// the new files (revoked by the CRL, expired, of another CA) are sent
    /// GOAWAY_UNAUTHENTICATED and closed. A file set that does not load is
    /// refused (logged, thrown) and the contexts in use are kept. What SIGHUP
    /// does; callable from any thread. Returns how many connections closed.
    @discardableResult
    public func reloadTls() throws(LmctfyError) -> Int {
        try loop.runAndWait("The agent") { () throws(LmctfyError) -> Int in try self.reloadTlsOnLoop() }
    }

    /// Renewal (PROTOCOL.md section 3.2), what the minute timer does for an
    /// enrolled agent (renew_before_expiry_percent > 0): when less than that
    /// share of the certificate's lifetime remains at `unixTime` (nil: now),
    /// a new key and certificate from the controller's Renew (on a fresh TLS
    /// connection with the current certificate), written atomically, then
    /// `reloadTls`: connections made from now on present the new
    /// certificate, established ones (the dial-home link among them) are
    /// kept. Returns the new certificate's serial, or nil when not due (or
    /// renewal is off, or one is already under way). Failures are logged
    /// and thrown; the files in use are kept. Blocking: not on the loop
    /// thread.
    @discardableResult
    public func renewCertificateIfDue(unixTime: Int64? = nil) throws(LmctfyError) -> String? {
        let percent = settings.renewBeforeExpiryPercent
        guard percent > 0 else { return nil }
        guard renewing.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged else { return nil }
        defer { renewing.store(false, ordering: .releasing) }
        do throws(LmctfyError) {
            guard let serial = try AgentEnrolment.renewIfDue(settings.config, percent: percent, now: unixTime ?? Int64(time(nil))) else {
                return nil
            }
            log.info("certificate renewed (serial \(serial)); reloading the TLS files")
            _ = try reloadTls()
            return serial
        } catch {
            log.error("certificate renewal failed (tried again at the next check): \(error)")
            throw error
        }
    }

    /// What the minute timer does, at `unixTime` (nil: now): closes, with
    /// GOAWAY_UNAUTHENTICATED, the TLS connections whose peer certificate's
    /// notAfter has passed (a comparison per connection; nothing is
    /// verified again). Returns how many closed. Any thread.
    @discardableResult
    public func checkPeerCertificates(unixTime: Int64? = nil) -> Int {
        let now = unixTime ?? Int64(time(nil))
        return (try? loop.runAndWait { self.closePeersWithExpiredCertificates(unixTime: now) }) ?? 0
    }

    private func reloadTlsOnLoop() throws(LmctfyError) -> Int {
        guard let files = settings.tlsFiles else {
            throw .failedPrecondition("No tls block in the config: nothing to reload")
        }
        let server: TlsContext?
        let client: TlsContext?
        do throws(LmctfyError) {
            server = settings.tlsServer != nil ? try files.context(.server) : nil
            client = settings.tlsClient != nil ? try files.context(.client) : nil
        } catch {
            log.error("TLS reload refused, the files in use are kept: \(error.message)")
            throw error
        }
        tlsServer = server
        tlsClient = client
        let closed = closePeersFailingVerification(unixTime: nil)
        log.info("TLS files reloaded (\(files.certificateFile)\(files.crlFile.map { ", CRL \($0)" } ?? "")); \(closed) connection(s) closed whose peer certificate no longer verifies")
        return closed
    }

    private func closePeersFailingVerification(unixTime: Int64?) -> Int {
        closePeers { tls, role in
            guard let context = role == .acceptor ? self.tlsServer : self.tlsClient else { return nil }
            return tls.recheckPeer(against: context, unixTime: unixTime)
        }
    }

    private func closePeersWithExpiredCertificates(unixTime: Int64) -> Int {
        closePeers { tls, _ in
            guard let notAfter = tls.peerNotAfter, notAfter < unixTime else { return nil }
            return "certificate has expired"
        }
    }

    /// Closes every TLS connection for which `failing` says why.
    private func closePeers(_ failing: (TlsChannel, SessionRole) -> String?) -> Int {
        var closed = 0
        for s in Array(conns.values) {
            guard let tls = s.tls, let why = failing(tls, s.session.role) else { continue }
            log.warning("\(describe(s)): the peer's certificate no longer verifies (\(why)): closing it")
            perform(s, s.session.goAway(.goawayUnauthenticated, message: "certificate no longer valid: \(why)", now: MonotonicClock.milliseconds()))
            guard conns[s.id] != nil else { closed += 1; continue }
            send(s, tls.shutdown())
            s.conn.closeAfterWrites()
            drop(s)
            closed += 1
        }
        return closed
    }

    private func tick() {
        let now = MonotonicClock.milliseconds()
        for s in Array(conns.values) { perform(s, s.session.tick(now: now)) }
        apply(inbound.tick(now: now), now: now)
        thawExpiredLeases(now: now)
        flushEventJournal()
    }

    private lazy var journalReport = EventLog.JournalReport(journal: "the event journal in \(settings.stateDir)/events")

    /// Writes the events the journal could not take yet (a full disk), and
    /// says when it falls behind, catches up or gives up.
    private func flushEventJournal() {
        // A start again writes the whole log: not on the loop.
        let state = dispatcher.events.flushJournal { [loop] work in if !loop.offload(work, then: { _ in }) { work() } }
        for line in journalReport.lines(state) {
            if line.error { log.error("\(line.text)") } else { log.warning("\(line.text)") }
        }
    }

    /// Whether a pool thread is thawing freezes whose lease ran out.
    private var thawingLeases = false

    /// Thaws (on a pool thread) the containers whose freeze lease ran out
    /// (PauseRequest.lease_ms); leases kept by an agent before a restart
    /// count from when they were taken.
    private func thawExpiredLeases(now: UInt64) {
        guard !thawingLeases, !stopping, let next = dispatcher.leases.nextDeadline, next <= now else { return }
        thawingLeases = true
        let dispatcher = self.dispatcher
        let log = self.log
        let started = loop.offload({
            for line in dispatcher.thawExpiredLeases() { log.warning("\(line)") }
        }, then: { [weak self] _ in self?.thawingLeases = false })
        if !started { thawingLeases = false }
    }

    // MARK: Dialling home (PROTOCOL.md section 9)

    /// The link to the controller: the connection's id while there is one,
    /// the Register call on it, and how many attempts failed in a row.
    struct HomeLink {
        var connId = -1
        var registerStream: UInt32 = 0
        var failures = 0
        var timer: LoopTimer?
        var dialling: Connection?
        /// A host name is being resolved for the next dial.
        var resolving = false
    }

    /// Dials the controller (loop thread). A failure schedules the next try.
    /// A host name (controller_address "controller.example:7414") is
    /// resolved off the loop thread at each try, since its address may
    /// change; it was refused as "not a numeric address" at every try, for
    /// ever, although --check-config took it.
    private func dialHome() {
        guard let c = settings.controller, !stopping, home.connId < 0, home.dialling == nil, !home.resolving else { return }
        if (try? SocketAddress(host: c.host, port: c.port)) == nil {
            home.resolving = true
            let host = c.host
            let started = loop.offload({ SocketAddress.resolve(host) }, then: { [weak self] result in
                guard let self else { return }
                self.home.resolving = false
                switch result {
                case .success(let addresses): self.dialHome(c, addresses: addresses[...])
                case .failure(let error): self.dialFailed(c, error)
                }
            })
            if !started { home.resolving = false }
            return
        }
        dialHome(c, addresses: [c.host])
    }

    /// Dials each address in turn (a name's IPv6 and IPv4 ones) until one
    /// answers; all failing is one failed try.
    private func dialHome(_ c: AgentSettings.ControllerLink, addresses: ArraySlice<String>) {
        guard !stopping, home.connId < 0, home.dialling == nil, let address = addresses.first else { return }
        let rest = addresses.dropFirst()
        do {
            home.dialling = try Connection.dialTCP(on: loop, host: address, port: c.port) { [unowned self] result in
                self.home.dialling = nil
                switch result {
                case .success(let conn):
                    self.homeConnected(conn, c)
                case .failure(let error):
                    if rest.isEmpty { self.dialFailed(c, error) } else { self.dialHome(c, addresses: rest) }
                }
            }
        } catch {
            if rest.isEmpty { dialFailed(c, error) } else { dialHome(c, addresses: rest) }
        }
    }

    /// Said once at warning level, then (while it keeps failing) at debug.
    private func dialFailed(_ c: AgentSettings.ControllerLink, _ error: LoopError) {
        let line = "controller \(c.host):\(c.port): \(error) (dialling again with backoff)"
        if home.failures == 0 { log.warning(line) } else { log.debug(line) }
        redialHome()
    }

    private func homeConnected(_ conn: Connection, _ c: AgentSettings.ControllerLink) {
        guard !stopping else { conn.close(); return }
        let now = MonotonicClock.milliseconds()
        let id = nextConnId
        nextConnId += 1
        var tls: TlsChannel?
        let auth: DiallerAuthentication
        if c.tls != nil, let context = tlsClient {
            // The controller's certificate must name the address dialled.
            // Nor may it be one the controller issued to an enrolling agent.
            guard let channel = try? TlsChannel(context: context, serverName: c.host, refusingUnit: Enrolment.enrolledUnit) else {
                conn.close(); redialHome(); return
            }
            tls = channel
            auth = .certificate
        } else {
            auth = .sharedKey(keyId: c.keyId ?? "", key: c.key ?? [])
        }
        let session = Session(dialler: auth, name: c.hostName, limits: settings.limits, now: now)
        let state = ConnState(id: id, conn: conn, session: session, startedAt: now)
        state.tls = tls
        state.readAny = true
        conns[id] = state
        home.connId = id
        conn.onRead = { [unowned self] _, bytes in
            guard let s = self.conns[id] else { return }
            s.agentNearlyFull = self.nearlyFull
            if let tls = s.tls {
                self.receiveTls(s, tls, bytes)
            } else {
                s.receive(bytes, startNanos: MonotonicClock.nanoseconds()) { self.perform(s, $0) }
            }
        }
        conn.onEOF = { [unowned self] _ in
            guard let s = self.conns[id] else { return }
            self.perform(s, s.session.receiveEOF(now: MonotonicClock.milliseconds()))
            self.drop(s)
        }
        conn.onError = { [unowned self] _, _ in
            if let s = self.conns[id] { self.drop(s) }
        }
        conn.resumeReading()
        if let tls { send(state, tls.start()) }
        perform(state, state.session.start(now: now))
    }

    /// The first call on the link: who this host is.
    private func register(_ s: ConnState, controller: PeerInfo) {
        guard let c = settings.controller else { return }
        let info = MachineInfo.collect(cgroupVersion: dispatcher.cgroupVersion, agentVersion: dispatcher.agentVersion,
                                       bootId: dispatcher.events.bootId)
        let identity = HostIdentity(
            hostName: c.hostName, machineId: Self.machineId(), bootId: info.bootId, agentVersion: info.agentVersion,
            cgroupVersion: info.cgroupVersion, cpus: info.cpus, memoryBytes: info.memoryBytes, label: c.labels,
            rootContainer: settings.rootContainer.path, containerCount: dispatcher.inventory.count.map { UInt32($0) })
        let payload = (try? RegisterRequest(identity: identity).serializedBytes()) ?? []
        let (id, actions) = s.session.openStream(method: "Register", payload: payload, deadlineMs: 10_000, now: MonotonicClock.milliseconds())
        home.registerStream = id
        perform(s, actions)
    }

    private func registered(_ s: ConnState, _ status: CallStatus) {
        guard let c = settings.controller else { return }
        if status.code == .ok {
            home.failures = 0
            log.info("registered with the controller \(c.host):\(c.port) as \(c.hostName)")
        } else {
            log.warning("the controller \(c.host):\(c.port) refused host \(c.hostName): \(status.code): \(status.message)")
            perform(s, s.session.goAway(.goawayNormal, message: "registration refused", now: MonotonicClock.milliseconds()))
            s.conn.closeAfterWrites()
            drop(s)
        }
    }

    private func homeLinkLost() {
        home.connId = -1
        home.registerStream = 0
        redialHome()
    }

    /// The next attempt after a random wait in [0, min(max, base * 2^failures)]
    /// ("full jitter"): agents that lost their controller together do not
    /// all come back at once.
    private func redialHome() {
        guard let c = settings.controller, !stopping else { return }
        let ceiling = Self.reconnectCeiling(baseMs: c.reconnectBaseMs, maxMs: c.reconnectMaxMs, failures: home.failures)
        home.failures += 1
        let wait = Int.random(in: 0...max(1, ceiling))
        home.timer?.cancel()
        home.timer = try? LoopTimer.once(on: loop, after: .milliseconds(wait)) { [unowned self] in
            self.home.timer = nil
            self.dialHome()
        }
    }

    /// The longest wait before the next dial after `failures` failed in a
    /// row: base, then doubled each time, never above max.
    static func reconnectCeiling(baseMs: Int, maxMs: Int, failures: Int) -> Int {
        min(maxMs, baseMs << min(failures, 20))
    }

    /// /etc/machine-id, when there is one.
    static func machineId() -> String? {
        guard let text = try? Sys.readFile("/etc/machine-id") else { return nil }
        let id = text.trimmingWhitespace
        return id.isEmpty ? nil : id
    }

    /// Whether the link to the controller is up and registered (tests).
    public var isRegisteredWithController: Bool {
        (try? loop.runAndWait { self.home.connId >= 0 && self.home.failures == 0 && self.home.registerStream != 0 }) ?? false
    }

    // MARK: Calls

    /// Where a call runs: the method table says; an unknown method is
    /// refused from the pool like any call.
    static func scheduling(of route: Dispatcher.Route?) -> MethodScheduling {
        route?.info.scheduling ?? .pool
    }

    /// Unary methods that may send progress responses before their final
    /// one (want_progress; PROTOCOL.md "Progress").
    static let reportsProgress: Set<String> = [AgentMethods.destroy.name, AgentMethods.killAll.name]

    private func startCall(_ s: ConnState, streamId: UInt32, method: String, payload: [UInt8], cancelled: Bool = false,
                           host: String? = nil) {
        let role = s.role
        let dispatcher = self.dispatcher
        let route = Dispatcher.route(method)
        let scheduling = Self.scheduling(of: route)
        metrics.callStarted(conn: s.id, stream: streamId, method: route == nil ? "unknown" : method)
        // A call for a host (Frame.host) is a controller's to route: an
        // agent reached with one (lmctl --controller given an agent's
        // socket) ran it here, whatever host it named (the fleet probe).
        // One naming this agent's own host is its own.
        if let host, !host.isEmpty, host != settings.controller?.hostName {
            perform(s, final(s, streamId, [], CallStatus(.invalidArgument,
                "This is an agent, not a controller: the call is for host \(HostName.quoted(host)), which only a controller routes (is --controller an agent's address?)")))
            return
        }
        if scheduling == .hub {
            subscribe(s, streamId: streamId, route: route, payload: payload)
            return
        }
        if scheduling == .loop {
            // Answered by the loop itself: nothing to block on, and a ping
            // that proves the loop is alive should not wait for a pool thread
            // (nor for two wake-ups of the loop to send its answer). The
            // call ends before the next one starts, so one context serves
            // them all.
            let status = dispatcher.handle(method: method, route: route, payload: payload, role: role, context: loopContext)
            perform(s, final(s, streamId, loopContext.takeResponses(), status))
            return
        }
        if scheduling == .ownThread {
            // A thread each while they last: bounded, so that peers cannot
            // take the agent to a task limit, where a thread it needs for
            // anything else could not be made.
            // Readers get a share of them, so that they cannot keep an
            // admin's foreground Run refused.
            let flow = settings.flow
            let refusal = ownThreadCalls.locked { $0.admit(admin: role == .agentRoleAdmin, flow) }
            if let refusal {
                perform(s, final(s, streamId, [], CallStatus(.resourceExhausted, "\(method): \(refusal)")))
                return
            }
        }
        let run: @Sendable (CallContext) -> CallStatus = { context in
            dispatcher.handle(method: method, route: route, payload: payload, role: role, context: context)
        }
        let connId = s.id
        let streaming = route?.info.shape == .serverStreaming
        // A unary call's response waits for its status and leaves with it
        // (one frame, one wake-up of the loop); a streaming call's responses
        // go as they come, in order through execute's FIFO.
        let context = streaming
            // (The loop takes at most as much again as the connection's
            // limit past it: a stream's emit waits for room.)
            ? CallContext(inFlight: min(256 << 10, settings.flow.connectionBytes)) { [weak self] bytes in
                self?.loop.execute { [weak self] in self?.respond(connId, streamId, bytes) }
            }
            : Self.reportsProgress.contains(method)
                ? CallContext(early: { [weak self] bytes in
                    // Progress: ahead of the final response; one that comes
                    // after the call ended is dropped by respond.
                    _ = self?.loop.execute { [weak self] in self?.respond(connId, streamId, bytes) }
                })
                : CallContext()
        s.calls[streamId] = context
        context.watchPeer(fd: s.conn.socketFd)
        if streaming && method == AgentMethods.run.name, (s.session.peer?.version ?? 0) >= ProtocolVersion.input {
            // Its stdin may be the caller's (attach_input): the grants go
            // out through the loop.
            context.allowInput(inputBudget, terminal: (s.session.peer?.version ?? 0) >= ProtocolVersion.terminal) { [weak self] credit in
                _ = self?.loop.execute { [weak self] in self?.grantInput(connId, streamId, credit) }
            }
        }
        if cancelled { context.cancel() }
        if scheduling == .pool {
            s.poolCalls[streamId] = payload.count
            s.poolBytes += payload.count
            totalHeld += payload.count
            totalPoolCalls += 1
        }
        workers.locked { $0 += 1 }
        let started: Bool
        if scheduling == .pool && !streaming {
            // A unary pool call: its status comes back with the pool's own
            // completion (one wake-up of the loop, not that and an execute).
            started = loop.offload({ run(context) }, then: { [weak self] status in
                self?.finish(connId, streamId, status)
            })
        } else {
            // Through execute's FIFO, the queue of the responses, so the
            // status comes after them.
            let busy = scheduling == .ownThread ? ownThreadCalls : nil
            let admin = role == .agentRoleAdmin
            let work: @Sendable () -> Void = { [weak self] in
                let status = run(context)
                // Its thread is free before the caller hears the status.
                busy?.locked { $0.release(admin: admin) }
                guard let self else { return }
                if !self.loop.execute({ [weak self] in self?.finish(connId, streamId, status) }) {
                    self.workers.locked { $0 -= 1 }
                }
            }
            if scheduling == .ownThread {
                let rc = ownThreads.run(work)
                if rc != 0 {
                    // No thread (a task limit): refused, the agent goes on.
                    busy?.locked { $0.release(admin: admin) }
                    let why = String(cString: strerror(rc))
                    log.warning("no thread for a \(method) call: pthread_create: \(why) (a task limit?); refused with RESOURCE_EXHAUSTED")
                    finish(connId, streamId, CallStatus(.resourceExhausted, "\(method): the agent could not start a thread for the call (\(why))"))
                    return
                }
                started = true
            } else {
                started = loop.offload(work, then: { _ in })
            }
        }
        if !started { workers.locked { $0 -= 1 } }
    }

    // MARK: Subscribe (the event hub)

    /// Starts a subscription: the replay goes now, live events as the hub
    /// publishes them. The stream stays open, holding no thread, until the
    /// caller cancels it, the connection goes, or the subscriber lags.
    private func subscribe(_ s: ConnState, streamId: UInt32, route: Dispatcher.Route?, payload: [UInt8]) {
        let now = MonotonicClock.milliseconds()
        let key = EventHub.Key(conn: s.id, stream: streamId)
        do {
            guard let route, route.info.role.allows(s.role) else {
                throw LmctfyError(.permissionDenied, "Method Subscribe needs the reader role")
            }
            let r = try SubscribeRequest(serializedBytes: payload)
            let filter = try EventFilter(r, resolve: dispatcher.backend.resolve)
            if r.credit != nil, (s.session.peer?.version ?? 0) < ProtocolVersion.credit {
                throw LmctfyError.invalidArgument("credit needs protocol version \(ProtocolVersion.credit) (this connection speaks \(s.session.peer?.version ?? 0))")
            }
            // Every event is offered to every subscriber: their number is
            // bounded, and readers hold at most half (6,000 idle streams of
            // one reader saturated the loop for good; a probe).
            let limit = settings.flow.subscribers
            if hub.subscribers.count >= limit {
                throw LmctfyError(.resourceExhausted, "\(limit) Subscribe streams are open on this agent (limits.max_subscribers)")
            }
            if s.role != .agentRoleAdmin {
                let readers = hub.subscribers.keys.reduce(0) { n, k in self.conns[k.conn]?.role == .agentRoleAdmin ? n : n + 1 }
                if readers >= limit / 2 {
                    throw LmctfyError(.resourceExhausted, "\(limit / 2) Subscribe streams of peers without the admin role are open on this agent (half of limits.max_subscribers)")
                }
            }
            // What was recorded before is handed out first, so the new
            // subscriber's replay ends where its live events begin.
            publishEvents()
            try hub.subscribe(key, r, filter: filter, credit: r.credit.map { Int($0) })
        } catch {
            let status = Dispatcher.status(of: error, method: "Subscribe")
            metrics.callEnded(conn: s.id, stream: streamId, status.code)
            perform(s, s.session.sendStatus(streamId: streamId, status, now: now))
            return
        }
        let context = CallContext()
        context.onCancel { [weak self] in self?.hub.remove(key) }
        s.calls[streamId] = context
        // The replay goes a part at a time, the first now (see
        // EventHub.Replay). Without credit it is bounded like any answer:
        // it waits while the connection holds its limit, and a live event
        // past that ends the stream naming where to resume. With credit
        // it waits for credit like any event.
        continueReplays()
    }

    /// Sends the next part of each replay that can go on now, and goes on
    /// at the loop's next turn while one can (other connections are served
    /// in between).
    private func continueReplays() {
        if hub.advance(deliver: deliver, lagged: lagged, room: replayRoom) { replayTurn.ask() }
    }

    /// What a subscriber's connection takes now, for its replay: up to
    /// half its limit, the other half being for its other streams (filled
    /// to the limit by a replay, the connection ended every live stream
    /// beside it "lagged" while the replay lasted).
    private func replayRoom(_ key: EventHub.Key) -> Int {
        guard let s = conns[key.conn], s.calls[key.stream] != nil else { return 0 }
        return max(0, holdLimit(s) / 2 - s.held)
    }

    /// More than half the agent's limit of unsent answers is held.
    var nearlyFull: Bool { totalHeld > settings.flow.agentBytes / 2 }

    /// What a connection may hold of unsent answers before its streams
    /// wait and its subscribers lag: its limit, or `answerBytesWhileFull`
    /// while the agent as a whole holds more than its own. Each connection
    /// that did not read could hold its whole limit (4 MiB) however many
    /// there were, past the agent's (64 MiB).
    private func holdLimit(_ s: ConnState) -> Int {
        totalHeld > settings.flow.agentBytes ? min(Self.answerBytesWhileFull, settings.flow.connectionBytes) : settings.flow.connectionBytes
    }

    /// The most a connection takes on while the agent is over its limit.
    static let answerBytesWhileFull = 64 << 10

    /// Ends a subscription that fell behind its connection's limit, saying
    /// where to resume (the subscriber is already out of the hub).
    private func endLagged(_ s: ConnState, _ streamId: UInt32, after: UInt64, boot: String, now: UInt64) {
        s.calls[streamId] = nil
        metrics.streamLagged()
        metrics.callEnded(conn: s.id, stream: streamId, .resourceExhausted)
        perform(s, s.session.sendStatus(streamId: streamId, CallStatus(
            .resourceExhausted, "lagged, resume after \(after) (boot \(boot))"), now: now))
    }

    /// Bytes the agent holds for its peers now: unsent answers and the
    /// requests of pool calls (for tests).
    public var heldBytes: Int { (try? loop.runAndWait { self.totalHeld }) ?? -1 }

    /// Bytes waiting for Subscribe callers' credit, over all connections (for tests).
    public var subscriberHeldBytes: Int { (try? loop.runAndWait { self.hub.connectionHeld.values.reduce(0, +) }) ?? -1 }

    /// How many kernel watches Notify calls share now (for tests).
    public var notifyWatchCount: Int { dispatcher.notifyWatches.count }

    /// The metrics endpoint's answer (loop thread): GET or HEAD /metrics.
    private func answerMetrics(_ method: String, _ path: String) -> HttpReply {
        guard method == "GET" || method == "HEAD" else { return HttpReply(status: 405, text: "only GET and HEAD\n") }
        guard path == "/metrics" else { return HttpReply(status: 404, text: "not found: try /metrics\n") }
        return HttpReply(status: 200, contentType: MetricsText.contentType,
                         body: metrics.render(openConnections: conns.count, subscribers: hub.subscribers.count,
                                              events: dispatcher.events, sweeps: statsPublisher?.sweepTiming))
    }

    /// How many Subscribe streams the hub serves now (for tests).
    public var subscriberCount: Int {
        (try? loop.runAndWait { self.hub.subscribers.count }) ?? 0
    }

    private func queuePublish() {
        // Nobody subscribed: no wake-up of the loop per event (a subscriber
        // that comes catches up first, see `subscribe`).
        guard hub.active.load(ordering: .acquiring) else { return }
        if publishQueued.exchange(true, ordering: .acquiringAndReleasing) { return }
        _ = loop.execute { [weak self] in
            guard let self else { return }
            self.publishQueued.store(false, ordering: .releasing)
            self.publishEvents()
        }
    }

    /// Hands newly recorded events to the subscribers (loop thread). A
    /// subscriber whose connection holds more unsent answers than its
    /// limit is ended with RESOURCE_EXHAUSTED naming where to resume.
    private func publishEvents() {
        hub.publish(deliver: deliver, lagged: lagged)
    }

    /// One response on a subscriber's stream; false if its connection holds
    /// more unsent answers than its limit (or the stream is gone).
    private func deliver(_ key: EventHub.Key, _ bytes: [UInt8]) -> Bool {
        guard let s = conns[key.conn], s.calls[key.stream] != nil else { return false }
        if s.held > holdLimit(s) { return false }
        perform(s, s.session.sendResponse(streamId: key.stream, payload: bytes, now: MonotonicClock.milliseconds()))
        return true
    }

    /// A subscriber the hub dropped for lagging: its stream ends naming
    /// where to resume (nothing, if the stream is already gone).
    private func lagged(_ key: EventHub.Key, _ resume: EventHub.ResumePoint) {
        guard let s = conns[key.conn], s.calls[key.stream] != nil else { return }
        endLagged(s, key.stream, after: resume.after, boot: resume.boot, now: MonotonicClock.milliseconds())
    }

    /// A call's end: the responses it kept, the last one with the status.
    private func final(_ s: ConnState, _ streamId: UInt32, _ responses: [[UInt8]], _ status: CallStatus) -> [SessionAction] {
        let now = MonotonicClock.milliseconds()
        var responses = responses, status = status
        // An answer of more than `answerBytesWhileFull` that would take the
        // agent past its limit is not sent: every connection that held
        // nothing could queue one whole answer (4 MiB), so the agent's
        // memory grew with the number of peers that do not read (1.2 GB
        // for 100 Pings of 4 MB; a probe). Such answers are of calls that
        // change nothing (reads, Ping, ExportSnapshot): asked again later.
        let size = responses.reduce(0) { $0 + $1.count }
        if size > Self.answerBytesWhileFull && totalHeld + size > settings.flow.agentBytes {
            responses = []
            status = CallStatus(.resourceExhausted, "the answer (\(size) bytes) was not sent: the agent holds \(totalHeld) bytes "
                                    + "its peers have not read (limits.max_agent_buffered_bytes \(settings.flow.agentBytes)); try again")
        }
        metrics.callEnded(conn: s.id, stream: streamId, status.code)
        guard let last = responses.last else { return s.session.sendStatus(streamId: streamId, status, now: now) }
        var actions: [SessionAction] = []
        for r in responses.dropLast() { actions += s.session.sendResponse(streamId: streamId, payload: r, now: now) }
        actions += s.session.sendFinal(streamId: streamId, payload: last, status, now: now)
        return actions
    }

    /// One response of a streaming call run off the loop. A connection
    /// that then holds more than its limit stops the call's `emit` until it
    /// has drained to half (updateFlow): a caller that does not read its
    /// Notify stream holds its handler's thread, not the agent's memory.
    private func respond(_ connId: Int, _ streamId: UInt32, _ bytes: [UInt8]) {
        guard let s = conns[connId], let context = s.calls[streamId] else { return }
        perform(s, s.session.sendResponse(streamId: streamId, payload: bytes, now: MonotonicClock.milliseconds()), batched: true)
        let full = s.held > holdLimit(s)
        context.taken(bytes.count, full: full)
        if full { s.fullStreams.insert(streamId) }
    }

    /// Grants the caller of a call `credit` more INPUT frames (dropped
    /// when the call or its connection has ended).
    private func grantInput(_ connId: Int, _ streamId: UInt32, _ credit: UInt32) {
        guard let s = conns[connId] else { return }
        perform(s, s.session.sendInputCredit(streamId: streamId, credit, now: MonotonicClock.milliseconds()), batched: true)
    }

    private func finish(_ connId: Int, _ streamId: UInt32, _ status: CallStatus) {
        workers.locked { $0 -= 1 }
        if let s = conns[connId] {
            if let bytes = s.poolCalls.removeValue(forKey: streamId) {
                s.poolBytes -= bytes
                totalHeld -= bytes
                totalPoolCalls -= 1
            }
            if let context = s.calls.removeValue(forKey: streamId) {
                perform(s, final(s, streamId, context.takeResponses(), status), batched: true)
            } else {
                updateFlow(s)
            }
        }
        checkStopped()
    }

    // MARK: Stopping

    /// Stops accepting, says goodbye to every peer (their open calls end),
    /// cancels the work in flight and, once it has finished (or after
    /// `graceMs`), closes every handle. Containers are left running.
    public func beginStop(graceMs: Int) {
        _ = loop.execute { [self] in
            guard !stopping else { return }
            stopping = true
            SdNotify.notify("STOPPING=1")
            for l in listeners { l.close() }
            listeners.removeAll()
            for s in Array(conns.values) {
                perform(s, s.session.goAway(.goawayNormal, message: "lmctfy-agent is shutting down", now: MonotonicClock.milliseconds()))
                for (_, call) in s.calls { call.cancel() }
            }
            _ = try? LoopTimer.once(on: loop, after: .milliseconds(graceMs)) { [self] in finalStop() }
            checkStopped()
        }
    }

    private func checkStopped() {
        guard stopping, conns.isEmpty, workers.locked({ $0 }) == 0 else { return }
        finalStop()
    }

    private var finalized = false
    private func finalStop() {
        guard !finalized else { return }
        finalized = true
        for s in Array(conns.values) { s.conn.close() }
        conns.removeAll()
        ticker?.cancel()
        flushEventJournal()
        metricsServer?.stop()
        certChecker?.cancel()
        sweeper?.cancel()
        reconciler?.cancel()
        watcher?.stop()
        dispatcher.snapshots?.stop()
        statsPublisher?.requestStop()
        evictor?.requestStop()
        home.timer?.cancel()
        home.dialling?.close()
        for w in signals { w.cancel() }
        signals.removeAll()
        // The Unix listener removed its socket file when it closed (only if
        // the file was still its own), so nothing to unlink here.
        finished.signal()
    }

    /// Blocks until the agent has stopped; returns uv_loop_close's result.
    public func waitUntilStopped() -> Int32 {
        finished.wait()
        let rc = loop.shutdown()
        statsPublisher?.stop()
        evictor?.stop()
        // Nothing more is recorded: the journal says this boot ended here
        // (a subscriber carried across the restart is told nothing was lost).
        dispatcher.events.markEnded()
        // Its state is its own until here: another agent may take it now.
        releaseStateDir()
        if let snapshots = dispatcher.snapshots { log.info("snapshots: \(snapshots.costs)") }
        log.info("lmctfy-agent stopped (uv_loop_close \(rc))")
        return rc
    }

    /// beginStop + waitUntilStopped.
    public func stop(graceMs: Int = 5000) -> Int32 {
        beginStop(graceMs: graceMs)
        return waitUntilStopped()
    }
}

/// The agent's log: swift-log, to stderr (the agent runs in the foreground
/// or under a supervisor that collects stderr), at the configured level.
public struct AgentLog: Sendable {
    let logger: Logging.Logger

    /// A logger to stderr at `level` (unspecified: info).
    public init(level: AgentLogLevel) {
        var l = Logging.Logger(label: "lmctfy-agent") { label in StreamLogHandler.standardError(label: label) }
        l.logLevel = switch level {
        case .logTrace: .trace
        case .logDebug: .debug
        case .logWarning: .warning
        case .logError: .error
        default: .info
        }
        logger = l
    }

    /// Logs `m` at debug level; `m` is not built when debug is off.
    public func debug(_ m: @autoclosure () -> String) { logger.debug("\(m())") }
    /// Logs `m` at info level; `m` is not built when info is off.
    public func info(_ m: @autoclosure () -> String) { logger.info("\(m())") }
    /// Logs `m` at warning level; `m` is not built when warnings are off.
    public func warning(_ m: @autoclosure () -> String) { logger.warning("\(m())") }
    /// Logs `m` at error level.
    public func error(_ m: @autoclosure () -> String) { logger.error("\(m())") }
}

/// The calls that hold a thread of their own (Run in the foreground,
/// Notify): all of them within limits.max_call_threads, those of peers
/// without the admin role within limits.max_reader_call_threads.
struct ThreadShare {
    private(set) var all = 0
    private(set) var nonAdmin = 0

    /// Takes a place, or says why there is none.
    mutating func admit(admin: Bool, _ flow: FlowLimits) -> String? {
        guard all < flow.callThreads else {
            return "\(flow.callThreads) calls already hold a thread of their own (limits.max_call_threads)"
        }
        if !admin {
            guard nonAdmin < flow.readerCallThreads else {
                return "\(flow.readerCallThreads) calls of peers without the admin role already hold a thread of their own (limits.max_reader_call_threads)"
            }
            nonAdmin += 1
        }
        all += 1
        return nil
    }

    mutating func release(admin: Bool) {
        all -= 1
        if !admin { nonAdmin -= 1 }
    }
}

extension Agent {
    /// The root_container a state_dir was kept for (`state_dir/root-container`,
    /// written at the first start that can): another one is refused (3). The
    /// snapshots and events name containers relative to it, so a start on
    /// another root took every snapshot for a container destroyed while it
    /// was down, recorded their DESTROYED and removed them all, the
    /// processes they recorded with them (a probe).
    static func checkRootContainer(stateDir: String, root: String) throws(LmctfyError) {
        let file = stateDir + "/root-container"
        if let kept = try? Sys.readRegularFile(file, maxBytes: 8192) {
            let was = String(decoding: kept, as: UTF8.self).trimmingWhitespace
            guard was == root else {
                throw .invalidArgument("state_dir \(stateDir) is kept for root_container \(was), not \(root): give this root "
                                       + "a state_dir of its own (or remove \(file) to let it take this one over: its snapshots and events "
                                       + "of containers below \(was) are then dropped)")
            }
            return
        }
        // (Best effort: a start on a full disk goes on, and the next one
        // records it.)
        try? Sys.writeFileAtomically(file, Array((root + "\n").utf8), mode: 0o600)
    }
}
