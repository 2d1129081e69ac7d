// lmctfy-controller: agents dial in and register; clients (operators,
// schedulers) call it on a Unix socket or TCP. A client's call that names a
// host (Frame.host) is forwarded over that host's link as a call the
// controller opens on the agent's connection (even stream ids), with the
// caller's remaining deadline, its cancellation and its credit; the agent's
// responses and status come back on the client's stream. Everything here
// runs on one libuv loop thread (PROTOCOL.md section 9).
import Glibc
import LmctfyEvents
import LmctfyHTTP
import LmctfyLoop
import LmctfyProto
import LmctfyRPC
import LmctfySystem
import Logging

final class ControllerPeer {
    /// `enroll`: a connection to enroll_address, which may call Enroll only.
    enum Kind { case client, agent, enroll }
    let id: Int
    let conn: Connection
    let kind: Kind
    var session: Session
    var role: AgentRole = .agentRoleUnspecified
    var keyId: String?
    /// Who it authenticated as, counted against max_connections_per_peer
    /// while it is open (nil: not counted).
    var countedAs: String?
    /// TLS under the framing (PROTOCOL.md section 3.1), and whether the
    /// session waits for the handshake to name the peer's certificate.
    var tls: TlsChannel?
    var awaitingCertificate = false
    var readAny = false
    var certificate: CertIdentity?
    var startedAt: UInt64 = 0
    var outbox: [UInt8] = []
    var depth = 0
    /// Agent link: the controller's calls on it → the client stream each serves.
    var routedOut: [UInt32: (client: Int, stream: UInt32)] = [:]
    /// Agent link: its share of FanOut calls → the fan-out and the response
    /// kept until the status comes.
    var fanned: [UInt32: (fan: Int, response: [UInt8]?)] = [:]
    /// Client: its calls → the agent link and stream each was forwarded to.
    var routedIn: [UInt32: (agent: Int, stream: UInt32)] = [:]
    /// Agent link: the controller's Subscribe to the host's events (0: none)
    /// and the responses taken since credit was last granted.
    var subscription: UInt32 = 0
    var taken: UInt32 = 0
    /// Agent link: its containers changed since they were last counted, and
    /// the ListContainers call that counts them (0: none).
    var countDue = false
    var counting: UInt32 = 0
    var host: String?
    /// Client: its Subscribe streams at the fleet log.
    var fleetStreams: Set<UInt32> = []
    /// Bytes handed to the connection whose write has not completed.
    var unsent = 0
    /// What waits for the peer to take it: unsent, and not yet handed over.
    var waiting: Int { unsent + outbox.count }
    /// Reading is stopped until the peer takes what waits for it (flow).
    var throttled = false
    /// Its fan-outs that call no more hosts until it takes what waits.
    var parkedFans: Set<Int> = []

    init(id: Int, conn: Connection, kind: Kind, session: Session) {
        self.id = id
        self.conn = conn
        self.kind = kind
        self.session = session
    }
}

/// The controller. `start` it, then `waitUntilStopped`, or `stop`.
public final class Controller: @unchecked Sendable {
    // @unchecked: the mutable state is confined to the loop thread.
    public let settings: ControllerSettings
    public let loop: EventLoop
    private let logger: Logging.Logger
    private let replay = ReplayCache()
    private var registry: HostRegistry
    private let fleet: FleetEvents
    /// Credit the controller grants each host's event stream.
    static let hostWindow: UInt32 = 1024
    private var ticks = 0
    private var listeners: [Listener] = []
    private var peers: [Int: ControllerPeer] = [:]
    private var nextId = 1
    /// The next parts of the fleet replays, at the loop's next turn.
    private lazy var replayTurn = NextTurn(on: loop) { [unowned self] in self.continueReplays() }
    /// TCP connections whose handshake (TLS, hello) has not finished.
    private lazy var handshaking = HandshakeBudget(limit: settings.maxHandshakingConnections,
                                                   helloTimeoutMs: settings.limits.helloTimeoutMs)
    /// Bytes received and not yet a whole frame, all connections together.
    private lazy var inbound = InboundBudget(settings.limits)
    /// Log lines about what peers did wrong, at most 10 a second.
    private var peerFaults = LogBudget(perSecond: 10)
    private var ticker: LoopTimer?
    private var signals: [SignalWatcher] = []
    /// The TLS context new connections get (loop thread): the settings' at
    /// start, replaced by `reloadTls` (SIGHUP); a connection keeps its own.
    private var tlsServer: TlsContext?
    /// enroll_address's server-only context (reloaded with `tlsServer`).
    private var enrollTls: TlsContext?
    private let enroller: Enroller?
    /// Ticks (100 ms) between two checks of every TLS peer's certificate.
    static let certCheckTicks = 600
    private var stopping = false
    private let finished = Latch()
    /// FanOut calls in progress: the caller's stream, the hosts called and
    /// still to answer, and those not called yet (a window at a time, and
    /// only while the caller takes its answers).
    private struct Fan {
        let client: Int
        let stream: UInt32
        var waiting: [String: (link: Int, stream: UInt32)]
        /// Every host to call, in order, and how many have been.
        var hosts: [String] = []
        var called = 0
        var method = ""
        var payload: [UInt8] = []
        var deadline: UInt64?
        /// Hosts called at once at most.
        var window = 1
    }
    private var fans: [Int: Fan] = [:]
    private var nextFan = 1
    /// WatchHosts callers: (connection, stream) and their selector.
    private var watchers: [(conn: Int, stream: UInt32, selector: [String: String])] = []

    /// The TCP ports actually bound (a port of 0 in the config picks one).
    public private(set) var agentPort: UInt16 = 0
    public private(set) var clientPort: UInt16?
    /// enroll_address's port as bound; nil: no enrolment listener.
    public private(set) var enrollPort: UInt16?
    /// The metrics endpoint (metrics { address }), its figures, and its TCP
    /// port as bound (nil: none, or a Unix socket).
    private var metricsServer: HttpServer?
    let metrics = ControllerMetrics()
    public private(set) var metricsPort: UInt16?

    /// state_dir/controller.lock, released once stopped (or when a start
    /// fails, or the controller goes).
    private let stateLock: StateDirLock

    public init(settings: ControllerSettings) throws(LmctfyError) {
        self.settings = settings
        self.tlsServer = settings.tlsServer
        self.enrollTls = settings.enroll?.tls
        self.enroller = settings.enroll.map { Enroller($0, stateDir: settings.stateDir) }
        loop = EventLoop(name: "lmctfy-controller")
        var l = Logging.Logger(label: "lmctfy-controller") { label in StreamLogHandler.standardError(label: label) }
        l.logLevel = switch settings.logLevel {
        case .logTrace: .trace
        case .logDebug: .debug
        case .logWarning: .warning
        case .logError: .error
        default: .info
        }
        logger = l
        enroller?.log = { [l] in l.error("\($0)") }
        try settings.prepareStateDir()
        // Before anything in it is read: a second controller on the same
        // state_dir started and rewrote the fleet's sequence (a probe).
        stateLock = try StateDirLock(settings.stateDir, daemon: "controller")
        registry = try HostRegistry(store: FileHostStore(path: settings.stateDir + "/hosts"), maxHosts: settings.maxHosts,
                                    maxHostsPerKey: settings.maxHostsPerKey)
        fleet = try FleetEvents(stateDir: settings.stateDir, capacity: Int(settings.config.eventLogCapacity ?? 65536))
        if let damage = fleet.journalDamage { l.error("fleet event journal: \(damage)") }
    }

    public func start(handleSignals: Bool = true) throws(LmctfyError) {
        // A descriptor per agent: a fleet of thousands needs more than the
        // usual soft limit of 1,024 (it was never raised: past ~1,000 hosts
        // new links were closed at once, silently).
        Sys.raiseFileLimit()
        do { try loop.start() } catch { throw error.lmctfy("Starting the event loop") }
        let result: Result<(UInt16, UInt16?), LmctfyError>
        do {
            result = try loop.runAndWait { () -> Result<(UInt16, UInt16?), LmctfyError> in
                // First: a bad metrics address fails the start before anything runs.
                if let address = self.settings.metrics {
                    do throws(LmctfyError) {
                        let server = try HttpServer(on: self.loop, address: address) { [unowned self] method, path in
                            self.answerMetrics(method, path)
                        }
                        self.metricsServer = server
                        self.metricsPort = server.port
                    } catch {
                        return .failure(error)
                    }
                }
                do throws(LoopError) {
                    return .success(try self.startListeners(handleSignals: handleSignals))
                } catch {
                    self.metricsServer?.stop()
                    return .failure(error.lmctfy("Starting the listeners"))
                }
            }
        } catch {
            _ = loop.shutdown()
            stateLock.release()
            throw .internalError("Starting the controller: \(error)")
        }
        switch result {
        case .success(let (agents, clients)):
            agentPort = agents
            clientPort = clients
        case .failure(let error):
            _ = loop.shutdown()
            // Free for another start at once (a retry on other ports).
            stateLock.release()
            throw error
        }
        logger.info("lmctfy-controller listening: clients on unix:\(settings.unixSocketPath)\(clientPort.map { " and tcp port \($0)" } ?? ""), agents on tcp port \(agentPort)\(enrollPort.map { ", enrolment on tcp port \($0)" } ?? "")")
        if let cert = settings.config.tls?.certificateFile, let warning = Enrolment.certificateWarning(file: cert) { logger.warning("\(warning)") }
    }

    private func startListeners(handleSignals: Bool) throws(LoopError) -> (UInt16, UInt16?) {
        let dir = String(settings.unixSocketPath[..<(settings.unixSocketPath.lastIndex(of: "/")!)])
        if !dir.isEmpty && !Sys.isDirectory(dir) { _ = try? Sys.mkdir(dir, mode: 0o755) }
        do {
            listeners.append(try UnixListener.bind(on: loop, path: settings.unixSocketPath, mode: settings.unixSocketMode) { [unowned self] c in
                self.accept(c, kind: .client, tcp: false)
            })
            if let gid = settings.allowedGid { _ = chown(settings.unixSocketPath, uid_t.max, gid) }
            var clients: UInt16?
            if let t = settings.clientTcp {
                let l = try TcpListener.bind(on: loop, host: t.host, port: t.port) { [unowned self] c in
                    self.accept(c, kind: .client, tcp: true)
                }
                clients = l.port
                listeners.append(l)
            }
            let agents = try TcpListener.bind(on: loop, host: settings.agentTcp.host, port: settings.agentTcp.port) { [unowned self] c in
                self.accept(c, kind: .agent, tcp: true)
            }
            listeners.append(agents)
            if let e = settings.enroll {
                let l = try TcpListener.bind(on: loop, host: e.tcp.host, port: e.tcp.port) { [unowned self] c in
                    self.accept(c, kind: .enroll, tcp: true)
                }
                enrollPort = l.port
                listeners.append(l)
            }
            for l in listeners {
                l.onAcceptError = { [unowned self] e in
                    self.metrics.connectionsRefused += 1
                    if let more = self.peerFaults.take() { self.logger.warning("\(e.acceptFailure)\(more)") }
                }
                l.onNearFileLimit = { [unowned self] line in self.logger.warning("\(line)") }
            }
            ticker = try LoopTimer.repeating(on: loop, every: .milliseconds(100)) { [unowned self] _ in self.tick() }
            if handleSignals {
                for s in [SIGTERM, SIGINT] {
                    signals.append(try SignalWatcher.watch(on: loop, signal: s) { [unowned self] sig in
                        self.logger.info("signal \(sig): shutting down")
                        self.beginStop()
                    })
                }
                signals.append(try SignalWatcher.watch(on: loop, signal: SIGHUP) { [unowned self] _ in
                    guard self.settings.config.tls != nil, self.settings.tlsServer != nil else {
                        self.logger.info("signal SIGHUP: no tls block in the config, nothing to re-read")
                        return
                    }
                    self.logger.info("signal SIGHUP: re-reading the TLS files")
                    _ = try? self.reloadTlsOnLoop()
                })
                // Their default ends the process at once, without a clean
                // stop (log rotation sends SIGUSR1: the agent probe). It
                // keeps no log file to reopen: logged and ignored.
                for s in [SIGUSR1, SIGUSR2] {
                    signals.append(try SignalWatcher.watch(on: loop, signal: s) { [unowned self] sig in
                        self.logger.info("signal \(sig): ignored (only SIGTERM and SIGINT stop it; SIGHUP re-reads the TLS files)")
                    })
                }
            }
            return (agents.port, clients)
        } catch {
            for l in listeners { l.close() }
            listeners.removeAll()
            throw error
        }
    }

    // MARK: Connections

    /// How a new connection authenticates, and its TLS channel on a TLS
    /// port; nil when neither can be made (no SSL object, no keyring).
    private func authentication(_ c: Connection, kind: ControllerPeer.Kind, tcp: Bool) -> (AcceptorAuthentication, TlsChannel?)? {
        if kind == .enroll {
            // Server-only TLS; the hello names no one: the token in Enroll
            // is what authenticates (PROTOCOL.md section 3.2).
            guard let context = enrollTls, let channel = try? TlsChannel(context: context) else { return nil }
            return (.certificate(CertIdentity()), channel)
        } else if tcp, let server = tlsServer {
            guard let channel = try? TlsChannel(context: server) else { return nil }
            if server.requirePeerCertificate {
                return (.certificate(CertIdentity()), channel)  // replaced after the handshake
            }
            guard let ring = try? Keyring(settings.keys) else { return nil }
            return (.sharedKey(ring, replay), channel)
        } else if tcp {
            guard let ring = try? Keyring(settings.keys) else { return nil }
            return (.sharedKey(ring, replay), nil)
        }
        guard let creds = c.peerCredentials else { return nil }
        return (.peerCredentials(creds, settings.rolePolicy.unixPeerPolicy), nil)
    }

    private func accept(_ c: Connection, kind: ControllerPeer.Kind, tcp: Bool) {
        if stopping {
            c.close()
            return
        }
        let now = MonotonicClock.milliseconds()
        let id = nextId
        nextId += 1
        if tcp {
            // Not authenticated yet: a budget of their own (HandshakeBudget),
            // taken before an SSL object is made for them.
            switch handshaking.admit(id, now: now) {
            case .admit:
                break
            case .admitEvicting(let oldest):
                guard let o = peers[oldest] else { break }
                metrics.handshakesEvicted += 1
                if let more = peerFaults.take() {
                    logger.warning("connection \(o.id) from \(o.conn.remoteAddress?.description ?? "tcp"): \(handshaking.evictionLine(handshakingMs: now - o.startedAt, enrolment: o.kind == .enroll))\(more)")
                }
                o.conn.close()
                drop(o)
            case .refuse:
                metrics.connectionsRefused += 1
                if let more = peerFaults.take() { logger.warning("\(handshaking.refusalLine)\(more)") }
                // (A TLS port gets no plaintext goaway: its peer could not read it.)
                if kind != .enroll && tlsServer == nil { c.write(HandshakeBudget.refusal) }
                c.closeAfterWrites()
                return
            }
        }
        guard let (auth, tls) = authentication(c, kind: kind, tcp: tcp) else {
            handshaking.finished(id)
            c.close()
            return
        }
        let p = ControllerPeer(id: id, conn: c, kind: kind,
                               session: Session(acceptor: auth, name: "lmctfy-controller", limits: settings.limits, now: now))
        p.tls = tls
        p.awaitingCertificate = kind != .enroll && tls != nil && tlsServer?.requirePeerCertificate == true
        p.startedAt = now
        peers[id] = p
        c.onRead = { [unowned self] _, bytes in
            guard let p = self.peers[id] else { return }
            if p.kind == .agent { self.registry.heard(conn: id) }
            if let tls = p.tls {
                self.receiveTls(p, tls, bytes)
            } else {
                self.perform(p, p.session.receive(bytes, now: MonotonicClock.milliseconds()))
            }
            self.countInbound(p)
        }
        c.onEOF = { [unowned self] _ in
            guard let p = self.peers[id] else { return }
            self.perform(p, p.session.receiveEOF(now: MonotonicClock.milliseconds()))
            self.drop(p)
        }
        c.onError = { [unowned self] _, _ in
            if let p = self.peers[id] { self.drop(p) }
        }
        c.resumeReading()
        perform(p, p.session.start(now: now))
    }

    /// Ciphertext from a TLS peer: as the agent's (Agent.receiveTls).
    private func receiveTls(_ p: ControllerPeer, _ tls: TlsChannel, _ bytes: [UInt8]) {
        if !p.readAny {
            p.readAny = true
            if !TlsChannel.opensHandshake(bytes) {
                if let more = peerFaults.take() { logger.warning("\(describe(p)): plaintext on a TLS port: refused\(more)") }
                p.conn.write(TlsChannel.plaintextRefusal)
                p.conn.closeAfterWrites()
                drop(p)
                return
            }
        }
        let out = tls.feed(bytes)
        sendRaw(p, out.send)
        if let failure = tls.failure {
            if let more = peerFaults.take() { logger.warning("\(describe(p)): TLS handshake or record failed: \(failure)\(more)") }
            p.conn.closeAfterWrites()
            drop(p)
            return
        }
        if out.handshakeCompleted && p.awaitingCertificate {
            p.awaitingCertificate = false
            guard let identity = tls.peerIdentity else { p.conn.closeAfterWrites(); drop(p); return }
            p.certificate = identity
            p.session = Session(acceptor: .certificate(identity), name: "lmctfy-controller", limits: settings.limits, now: p.startedAt)
        }
        if !out.plaintext.isEmpty { perform(p, p.session.receive(out.plaintext, now: MonotonicClock.milliseconds())) }
        if tls.peerClosed, peers[p.id] != nil {
            perform(p, p.session.receiveEOF(now: MonotonicClock.milliseconds()))
            drop(p)
        }
    }

    private func sendRaw(_ p: ControllerPeer, _ bytes: [UInt8]) {
        guard !bytes.isEmpty, !p.conn.isClosing else { return }
        p.unsent += bytes.count
        p.conn.write(bytes) { [unowned self] _, _ in
            p.unsent -= bytes.count
            self.updateFlow(p)
            if p.waiting <= Self.subscriberBytes / 4, self.fleet.hub.roomCame(conn: p.id) { self.replayTurn.ask() }
            if !p.parkedFans.isEmpty && p.waiting <= Self.subscriberBytes / 2 {
                let parked = p.parkedFans
                p.parkedFans = []
                for id in parked.sorted() { self.callFanHosts(id) }
            }
        }
        updateFlow(p)
    }

    /// What peer `p` holds of a frame not yet whole, against the budget
    /// over all connections (InboundBudget).
    private func countInbound(_ p: ControllerPeer) {
        guard peers[p.id] != nil else { return }
        let now = MonotonicClock.milliseconds()
        apply(inbound.received(p.id, holds: p.session.bufferedInboundBytes, now: now), reading: p, now: now)
    }

    private func apply(_ a: InboundBudget.Actions, reading p: ControllerPeer? = nil, now: UInt64) {
        if a.pause, let p { p.conn.pauseReading() }
        for id in a.resume {
            if let o = peers[id], !o.throttled { o.conn.resumeReading() }
        }
        for id in a.evict {
            guard let o = peers[id] else { continue }
            metrics.framesEvicted += 1
            if let more = peerFaults.take() {
                logger.warning("connection \(o.id) from \(o.conn.remoteAddress?.description ?? "unix"): \(inbound.evictionLine(id, now: now))\(more)")
            }
            perform(o, o.session.goAway(.goawayIdleTimeout, message: inbound.evictionMessage(id, now: now), now: now))
            if peers[id] != nil { drop(o) }
        }
    }

    /// Flow control: a peer that does not read what it is sent is not read
    /// from once more than `subscriberBytes` wait for it, until half of that
    /// has gone, so its requests wait in its own socket buffers. Without
    /// it, a client that pipelined ListHosts and read nothing took the
    /// controller to 2 GB in 25 s (a probe, thirty-second sitting).
    private func updateFlow(_ p: ControllerPeer) {
        guard peers[p.id] != nil else { return }
        let held = p.waiting
        if !p.throttled && held > Self.subscriberBytes {
            p.throttled = true
            p.conn.pauseReading()
        } else if p.throttled && held <= Self.subscriberBytes / 2 {
            p.throttled = false
            if !inbound.isPaused(p.id) { p.conn.resumeReading() }
        }
    }

    /// A request read in the same batch as others whose answers already
    /// exceed twice the flow limit: refused rather than answered, so one
    /// read of small requests cannot make the controller hold their
    /// answers without bound (ListHosts of a large fleet is large).
    private func refusedForFlow(_ p: ControllerPeer, _ stream: UInt32) -> Bool {
        let held = p.waiting
        guard held > 2 * Self.subscriberBytes else { return false }
        perform(p, p.session.sendStatus(streamId: stream, CallStatus(
            .resourceExhausted, "\(held) bytes of answers wait for this connection to read them; read them, then call again"),
            now: MonotonicClock.milliseconds()))
        return true
    }

    private func perform(_ p: ControllerPeer, _ actions: [SessionAction]) {
        p.depth += 1
        defer {
            p.depth -= 1
            if p.depth == 0 { flush(p) }
        }
        for action in actions {
            switch action {
            case .write(let bytes):
                p.outbox += bytes
            case .established(let info):
                // The enrolment port's hello names no one (the token of its
                // one call does): those connections stay counted while open.
                if p.kind != .enroll { handshaking.finished(p.id) }
                p.keyId = info.keyId
                // One peer's connections are capped: a peer holding them by
                // the thousand reached the descriptor limit and shut every
                // client and redialling agent out (a probe).
                if p.kind == .client {
                    let who = info.connectionOwner
                    guard connectionsPerPeer[who, default: 0] < settings.maxConnectionsPerPeer else {
                        if let more = peerFaults.take() { logger.warning("\(describe(p)): \(who) holds \(settings.maxConnectionsPerPeer) connections already (limits.max_connections_per_peer); refused\(more)") }
                        perform(p, p.session.goAway(.goawayNormal, message: "too many connections of \(who) (limits.max_connections_per_peer \(settings.maxConnectionsPerPeer))",
                                                    now: MonotonicClock.milliseconds()))
                        return
                    }
                    connectionsPerPeer[who, default: 0] += 1
                    p.countedAs = who
                }
                p.role = switch p.kind {
                case .client: settings.rolePolicy.role(for: info)
                case .agent: .agentRoleAdmin
                case .enroll: .agentRoleUnspecified
                }
                logger.debug("\(describe(p)): \(info.name) (\(p.kind)) authenticated")
            case .deliverRequest(let stream, let method, let payload, let deadline, let host):
                if p.kind != .agent && refusedForFlow(p, stream) { continue }
                if p.kind == .agent {
                    agentCalled(p, stream, method, payload)
                } else if p.kind == .enroll {
                    enrollCalled(p, stream, method, payload)
                } else if let host {
                    route(p, stream, method, payload, deadline, host)
                } else {
                    localCall(p, stream, method, payload, deadline)
                }
            case .deliverResponse(let stream, let payload):
                if p.kind == .agent && stream == p.subscription && stream != 0 {
                    hostEvent(p, payload)
                    continue
                }
                if p.fanned[stream] != nil {
                    p.fanned[stream]?.response = payload
                    continue
                }
                if p.kind == .agent && stream == p.counting && stream != 0 {
                    if let host = p.host, let r = try? ListContainersResponse(serializedBytes: payload) {
                        registry.setContainerCount(host, r.total.map(Int.init) ?? r.names.count)
                    }
                    continue
                }
                guard let to = p.routedOut[stream], let client = peers[to.client] else { continue }
                let now = MonotonicClock.milliseconds()
                if client.waiting > Self.subscriberBytes {
                    // The caller does not read what its host sends: the call
                    // ends rather than pile up here (credit avoids this).
                    p.routedOut[stream] = nil
                    client.routedIn[to.stream] = nil
                    perform(p, p.session.cancel(streamId: stream, now: now))
                    perform(client, client.session.sendStatus(streamId: to.stream, CallStatus(
                        .resourceExhausted, "the caller holds more than \(Self.subscriberBytes) bytes unread; the call was cancelled at the host"), now: now))
                    continue
                }
                perform(client, client.session.sendResponse(streamId: to.stream, payload: payload, now: now))
            case .deliverStatus(let stream, let status):
                if p.kind == .agent && stream == p.subscription && stream != 0 {
                    // The host's stream ended (it lagged, or its agent is
                    // stopping): subscribe again from the cursor, shortly.
                    p.subscription = 0
                    logger.debug("host \(p.host ?? ""): event stream ended: \(status)")
                    let id = p.id
                    _ = try? LoopTimer.once(on: loop, after: .milliseconds(100)) { [unowned self] in
                        if let link = self.peers[id], link.subscription == 0 { self.subscribeHost(link) }
                    }
                    continue
                }
                if p.kind == .agent && stream == p.counting && stream != 0 {
                    p.counting = 0
                    continue
                }
                if let f = p.fanned.removeValue(forKey: stream) {
                    fanAnswered(f.fan, host: p.host ?? "", response: f.response, status)
                    continue
                }
                guard let to = p.routedOut.removeValue(forKey: stream) else { continue }
                metrics.routedEnded[status.code, default: 0] += 1
                guard let client = peers[to.client] else { continue }
                client.routedIn[to.stream] = nil
                // The host's link closing ends its calls with the session's
                // "connection closed": said of the host (it read as the
                // caller's own connection).
                var forwarded = status
                if status.code == .unavailable && p.session.isClosed {
                    forwarded.message = "host \(p.host ?? "?")'s link to the controller was lost (\(status.message))"
                }
                perform(client, client.session.sendStatus(streamId: to.stream, forwarded, now: MonotonicClock.milliseconds()))
            case .cancelled(let stream, _):
                watchers.removeAll { $0.conn == p.id && $0.stream == stream }
                if let id = fans.first(where: { $0.value.client == p.id && $0.value.stream == stream })?.key { cancelFan(id) }
                if p.fleetStreams.remove(stream) != nil { fleet.hub.remove(EventHub.Key(conn: p.id, stream: stream)) }
                // A client cancelled (or its deadline passed): so does the agent's call.
                guard let to = p.routedIn.removeValue(forKey: stream) else { continue }
                // Ended by its caller (a CANCEL, which its deadline passing
                // sends too): CANCELLED among the others (routed calls so
                // ended were counted as routed, never as ended; a probe).
                metrics.routedEnded[.cancelled, default: 0] += 1
                guard let link = peers[to.agent] else { continue }
                link.routedOut[to.stream] = nil
                perform(link, link.session.cancel(streamId: to.stream, now: MonotonicClock.milliseconds()))
            case .credit(let stream, let credit):
                if p.fleetStreams.contains(stream) {
                    fleet.hub.grant(EventHub.Key(conn: p.id, stream: stream), credit, deliver: deliver, lagged: lagged)
                    continueReplays()
                    continue
                }
                guard let to = p.routedIn[stream], let link = peers[to.agent] else { continue }
                perform(link, link.session.sendCredit(streamId: to.stream, credit, now: MonotonicClock.milliseconds()))
            case .input(let stream, let payload, let end, let window):
                // A routed call's input (version 4; its terminal's size,
                // version 5): on to its agent, within the credit it granted
                // (passed on below, so never more).
                guard let to = p.routedIn[stream], let link = peers[to.agent] else { continue }
                perform(link, link.session.sendInput(streamId: to.stream, payload, end: end, window: window,
                                                     now: MonotonicClock.milliseconds()).actions)
            case .inputCredit(let stream, let credit):
                // An agent grants input on a routed call: so does its caller's.
                guard let to = p.routedOut[stream], let client = peers[to.client] else { continue }
                perform(client, client.session.sendInputCredit(streamId: to.stream, credit, now: MonotonicClock.milliseconds()))
            case .close(let reason):
                logger.debug("connection \(p.id) closed: \(reason)")
                flush(p)
                if let tls = p.tls { sendRaw(p, tls.shutdown()) }
                p.conn.closeAfterWrites()
                drop(p)
            }
        }
    }

    private func flush(_ p: ControllerPeer) {
        guard !p.outbox.isEmpty, !p.conn.isClosing else { return }
        var bytes = p.outbox
        p.outbox = []
        if let tls = p.tls { bytes = tls.seal(bytes) }
        sendRaw(p, bytes)
    }

    /// A connection as the log names it: its id and where it comes from
    /// (TLS failures and refused registrations named no address; a probe).
    private func describe(_ p: ControllerPeer) -> String {
        "connection \(p.id) from \(p.conn.remoteAddress?.description ?? "the Unix socket")"
    }

    /// Connections open per authenticated client peer (`connectionOwner`).
    private var connectionsPerPeer: [String: Int] = [:]

    private func drop(_ p: ControllerPeer) {
        guard peers.removeValue(forKey: p.id) != nil else { return }
        handshaking.finished(p.id)
        if let who = p.countedAs {
            let n = (connectionsPerPeer[who] ?? 1) - 1
            connectionsPerPeer[who] = n > 0 ? n : nil
            p.countedAs = nil
        }
        let now = MonotonicClock.milliseconds()
        apply(inbound.closed(p.id), now: now)
        watchers.removeAll { $0.conn == p.id }
        for stream in p.fleetStreams { fleet.hub.remove(EventHub.Key(conn: p.id, stream: stream)) }
        p.fleetStreams.removeAll()
        if p.kind == .agent, let host = registry.disconnected(conn: p.id) {
            logger.info("host \(host) disconnected")
            hostChanged(host, .hostDown)
        }
        // Calls forwarded over a lost link end for their callers; calls of a
        // lost client end at their agents.
        for (_, to) in p.routedOut {
            metrics.routedEnded[.unavailable, default: 0] += 1
            guard let client = peers[to.client] else { continue }
            client.routedIn[to.stream] = nil
            perform(client, client.session.sendStatus(streamId: to.stream, CallStatus(.unavailable, "the host's link to the controller was lost"), now: now))
        }
        for (_, to) in p.routedIn {
            metrics.routedEnded[.cancelled, default: 0] += 1  // its caller went
            guard let link = peers[to.agent] else { continue }
            link.routedOut[to.stream] = nil
            perform(link, link.session.cancel(streamId: to.stream, now: now))
        }
        p.routedOut.removeAll()
        p.routedIn.removeAll()
        // A lost link: its hosts' shares of fan-outs end UNAVAILABLE; a lost
        // client: its fan-outs are cancelled at the hosts.
        for (_, f) in p.fanned {
            fanAnswered(f.fan, host: p.host ?? "", response: nil, CallStatus(.unavailable, "the host's link to the controller was lost"))
        }
        p.fanned.removeAll()
        for id in fans.filter({ $0.value.client == p.id }).map(\.key) { cancelFan(id) }
        if !p.conn.isClosing && !p.conn.isClosed { p.conn.closeAfterWrites() }
        checkStopped()
    }

    // MARK: Certificate rotation and revocation (PROTOCOL.md section 3.1)

    /// Re-reads the tls block's files (certificate, key, CA, CRL) into a
    /// new context for the connections made from now on; established ones
    /// keep theirs, but those whose peer's certificate no longer verifies
    /// against the new files (revoked, expired, another CA) get
    /// GOAWAY_UNAUTHENTICATED and are closed. Files that do not load are
    /// refused (logged, thrown) and the context in use is kept. What SIGHUP
    /// does; callable from any thread. Returns how many connections closed.
    @discardableResult
    public func reloadTls() throws(LmctfyError) -> Int {
        try loop.runAndWait("The controller") { () throws(LmctfyError) -> Int in try self.reloadTlsOnLoop() }
    }

    /// What the minute check does, at `unixTime` (nil: now): closes, with
    /// GOAWAY_UNAUTHENTICATED, the TLS connections whose peer certificate's
    /// notAfter has passed (nothing is verified again). Returns how many
    /// closed. Any thread.
    @discardableResult
    public func checkPeerCertificates(unixTime: Int64? = nil) -> Int {
        let now = unixTime ?? Int64(time(nil))
        return (try? loop.runAndWait { self.closePeersWithExpiredCertificates(unixTime: now) }) ?? 0
    }

    private func reloadTlsOnLoop() throws(LmctfyError) -> Int {
        guard let t = settings.config.tls, settings.tlsServer != nil else {
            throw .failedPrecondition("No tls block in the config: nothing to reload")
        }
        do throws(LmctfyError) {
            let server = try ControllerSettings.tlsContext(t, source: "tls")
            if settings.enroll != nil {
                var serverOnly = t
                serverOnly.requireClientCertificate = false
                enrollTls = try ControllerSettings.tlsContext(serverOnly, source: "tls")
            }
            tlsServer = server
        } catch {
            logger.error("TLS reload refused, the files in use are kept: \(error.message)")
            throw error
        }
        let closed = closePeersFailingVerification(unixTime: nil)
        logger.info("TLS files reloaded; \(closed) connection(s) closed whose peer certificate no longer verifies")
        return closed
    }

    @discardableResult
    private func closePeersFailingVerification(unixTime: Int64?) -> Int {
        guard let context = tlsServer else { return 0 }
        return closePeers { $0.recheckPeer(against: context, unixTime: unixTime) }
    }

    @discardableResult
    private func closePeersWithExpiredCertificates(unixTime: Int64) -> Int {
        closePeers { tls in
            guard let notAfter = tls.peerNotAfter, notAfter < unixTime else { return nil }
            return "certificate has expired"
        }
    }

    /// Closes every TLS connection for which `failing` says why.
    private func closePeers(_ failing: (TlsChannel) -> String?) -> Int {
        var closed = 0
        for p in Array(peers.values) {
            guard let tls = p.tls, let why = failing(tls) else { continue }
            logger.warning("connection \(p.id) (\(p.host ?? "\(p.kind)")): the peer's certificate no longer verifies (\(why)): closing it")
            perform(p, p.session.goAway(.goawayUnauthenticated, message: "certificate no longer valid: \(why)", now: MonotonicClock.milliseconds()))
            closed += 1
            guard peers[p.id] != nil else { continue }
            sendRaw(p, tls.shutdown())
            p.conn.closeAfterWrites()
            drop(p)
        }
        return closed
    }

    private func tick() {
        let now = MonotonicClock.milliseconds()
        for p in Array(peers.values) { perform(p, p.session.tick(now: now)) }
        apply(inbound.tick(now: now), now: now)
        ticks += 1
        if ticks % Self.certCheckTicks == 0 { closePeersWithExpiredCertificates(unixTime: Int64(time(nil))) }
        if ticks % 10 == 0 {
            flushFleetLog()
            registry.flush()
            for p in peers.values where p.kind == .agent && p.countDue && p.counting == 0 { countContainers(p) }
        }
    }

    // MARK: The fleet's events

    private lazy var journalReport = EventLog.JournalReport(journal: "the fleet log's journal in \(settings.stateDir)/fleet")

    /// The fleet log's journal and cursors to disk, and a line when the
    /// journal falls behind, catches up or gives up (a full disk).
    private func flushFleetLog() {
        // A start again writes the whole log (up to 256 MiB): not on the loop.
        let state = fleet.flushCursors { [loop] work in if !loop.offload(work, then: { _ in }) { work() } }
        for line in journalReport.lines(state) {
            if line.error { logger.error("\(line.text)") } else { logger.warning("\(line.text)") }
        }
    }

    /// Subscribes to a registered host's events from its cursor, with credit
    /// where the agent speaks version 3.
    private func subscribeHost(_ link: ControllerPeer) {
        guard let host = link.host, link.subscription == 0, peers[link.id] != nil else { return }
        let credit: UInt32? = (link.session.peer?.version ?? 0) >= ProtocolVersion.credit ? Self.hostWindow : nil
        let r = fleet.subscribeRequest(for: host, credit: credit)
        guard let payload = try? r.serializedBytes() else { return }
        let (stream, actions) = link.session.openStream(method: AgentMethods.subscribe.name, payload: payload, now: MonotonicClock.milliseconds())
        link.subscription = stream
        link.taken = 0
        perform(link, actions)
    }

    /// Asks a host how many containers it has now (after it reported some
    /// made or destroyed), for the inventory.
    private func countContainers(_ link: ControllerPeer) {
        link.countDue = false
        // One name and the whole count (paged): every name of a host with
        // more than 4 MiB of them was past the frame limit, and its count
        // was never had. An agent from before paging sends every name.
        guard let payload = try? ListContainersRequest(name: "/", recursive: true, pageSize: 1).serializedBytes() else { return }
        let (stream, actions) = link.session.openStream(method: AgentMethods.listContainers.name, payload: payload,
                                                        deadlineMs: 10_000, now: MonotonicClock.milliseconds())
        link.counting = stream
        perform(link, actions)
    }

    /// One response of a host's event stream: stored (once), handed to the
    /// fleet's subscribers, and granted again half a window at a time.
    private func hostEvent(_ link: ControllerPeer, _ payload: [UInt8]) {
        guard let host = link.host, let r = try? SubscribeResponse(serializedBytes: payload) else { return }
        let taken = fleet.take(r, from: host, bytes: payload.count)
        if taken != nil { metrics.eventsRelayed += 1 }
        if let e = taken, e.kind == .containerEventCreated || e.kind == .containerEventDestroyed {
            link.countDue = true
        }
        fleet.hub.publish(deliver: deliver, lagged: lagged)
        link.taken += 1
        if link.taken >= Self.hostWindow / 2 {
            perform(link, link.session.sendCredit(streamId: link.subscription, link.taken, now: MonotonicClock.milliseconds()))
            link.taken = 0
        }
    }

    /// A client's Subscribe at the controller: the fleet log, filtered by
    /// host, container and kind, from its cursor, with credit (version 3).
    private func subscribeFleet(_ p: ControllerPeer, _ stream: UInt32, _ payload: [UInt8]) {
        let key = EventHub.Key(conn: p.id, stream: stream)
        do {
            let r = try SubscribeRequest(serializedBytes: payload)
            let filter = try EventFilter(r) { (name: String) throws(LmctfyError) -> String in
                // Names are each host's own: absolute, as its agent reports them.
                guard name.hasPrefix("/") else { throw .invalidArgument("at the controller a container name is absolute, not \"\(name)\"") }
                return name
            }
            if r.credit != nil, (p.session.peer?.version ?? 0) < ProtocolVersion.credit {
                throw LmctfyError.invalidArgument("credit needs protocol version \(ProtocolVersion.credit)")
            }
            try fleet.hub.subscribe(key, r, filter: filter, credit: r.credit.map { Int($0) })
        } catch {
            answer(p, stream, .failure(error))
            return
        }
        p.fleetStreams.insert(stream)
        // The replay goes a part at a time, the first now, the rest while
        // the connection (or the credit) takes it (see EventHub.Replay).
        continueReplays()
    }

    /// Sends the next part of each fleet replay that can go on now, and
    /// goes on at the loop's next turn while one can.
    private func continueReplays() {
        if fleet.hub.advance(deliver: deliver, lagged: lagged, room: replayRoom) { replayTurn.ask() }
    }

    /// What a fleet subscriber's connection takes now, for its replay: up
    /// to half its limit, the other half being for its other streams (as
    /// the agent's `replayRoom`).
    private func replayRoom(_ key: EventHub.Key) -> Int {
        guard let p = peers[key.conn], p.fleetStreams.contains(key.stream) else { return 0 }
        return max(0, Self.subscriberBytes / 2 - p.waiting)
    }

    /// One response on a fleet subscriber's stream; false when its
    /// connection holds more unsent than its limit (it lags).
    private func deliver(_ key: EventHub.Key, _ bytes: [UInt8]) -> Bool {
        guard let p = peers[key.conn], p.fleetStreams.contains(key.stream) else { return false }
        if p.waiting > Self.subscriberBytes { return false }
        perform(p, p.session.sendResponse(streamId: key.stream, payload: bytes, now: MonotonicClock.milliseconds()))
        return true
    }

    /// How much a fleet subscriber's connection may hold unsent (and a
    /// host's link: `notTaking`).
    static let subscriberBytes = 4 << 20

    /// A call for a host whose link holds more than `subscriberBytes`
    /// unwritten (its agent stopped, or a peer that never reads) is refused:
    /// queued, a reader's routed Pings of 3 MB took the controller from 75
    /// to 733 MB (a probe).
    static func notTaking(_ link: ControllerPeer, _ host: String, adding bytes: Int) -> LmctfyError? {
        let waiting = link.waiting
        guard waiting > 0, waiting + bytes > subscriberBytes else { return nil }
        return LmctfyError(.resourceExhausted, "host \(host) is not taking its calls: \(waiting) bytes wait to be written to it; try again later")
    }

    private func lagged(_ key: EventHub.Key, _ resume: EventHub.ResumePoint) {
        guard let p = peers[key.conn], p.fleetStreams.remove(key.stream) != nil else { return }
        perform(p, p.session.sendStatus(streamId: key.stream, CallStatus(
            .resourceExhausted, "lagged, resume after \(resume.after) (boot \(resume.boot))"), now: MonotonicClock.milliseconds()))
    }

    // MARK: Calls

    private func status(_ error: Error) -> CallStatus {
        if let e = error as? LmctfyError { return CallStatus(e.code, e.message) }
        return CallStatus(.invalidArgument, "\(error)")
    }

    private func answer(_ p: ControllerPeer, _ stream: UInt32, _ response: Result<[UInt8], Error>) {
        let now = MonotonicClock.milliseconds()
        switch response {
        case .success(let bytes): perform(p, p.session.sendFinal(streamId: stream, payload: bytes, .ok, now: now))
        case .failure(let error): perform(p, p.session.sendStatus(streamId: stream, status(error), now: now))
        }
    }

    /// A call an agent makes on its link: Register, or Renew.
    private func agentCalled(_ p: ControllerPeer, _ stream: UInt32, _ method: String, _ payload: [UInt8]) {
        if method == ControllerMethods.renew.name {
            renewCalled(p, stream, payload)
            return
        }
        guard method == ControllerMethods.register.name else {
            answer(p, stream, .failure(LmctfyError(.unimplemented, "an agent link may call only Register and Renew, not \(method)")))
            return
        }
        do {
            let request = try RegisterRequest(serializedBytes: payload)
            guard let identity = request.identity, let keyId = p.keyId ?? p.certificate.map({ _ in HostRegistry.certificateKeyId }) else {
                throw LmctfyError.invalidArgument("Register needs an identity")
            }
            // One host per link: a second Register left the first name
            // "connected" for good, its link gone to the second.
            if let host = p.host {
                throw LmctfyError.failedPrecondition("this link registered host \(host) already: one host per link")
            }
            // A key (or certificate) a role binding gives the reader role
            // is a client's: it registered as an agent, could claim any
            // name not yet bound and write that host's events.
            if let peer = p.session.peer, settings.rolePolicy.boundRole(for: peer) == .agentRoleReader {
                throw LmctfyError(.permissionDenied, "key \(keyId) is bound to the reader role: a client's key cannot register a host")
            }
            if let cert = p.certificate {
                // PROTOCOL.md 3.1: the certificate names the host; a host's
                // certificate cannot register another host.
                guard let name = identity.hostName, cert.dnsNames.contains(name) else {
                    throw LmctfyError(.permissionDenied, "host name \"\(identity.hostName ?? "")\" is not in the certificate (\(cert))")
                }
            }
            let before = registry.hosts[identity.hostName ?? ""]
            let previous = try registry.register(identity, keyId: keyId, conn: p.id)
            if let previous, let old = peers[previous] {
                // The same host again (it reconnected before the old link was
                // seen to drop): the new link replaces the old one.
                perform(old, old.session.goAway(.goawayNormal, message: "replaced by a newer connection of the same host", now: MonotonicClock.milliseconds()))
                drop(old)
            }
            logger.info("host \(identity.hostName ?? "") registered (key \(keyId), cgroup v\(identity.cgroupVersion ?? 0), \(identity.cpus ?? 0) cpus)")
            answer(p, stream, .success(try RegisterResponse().serializedBytes()))
            p.host = identity.hostName
            fleet.readmit(identity.hostName ?? "", bootId: identity.bootId)
            subscribeHost(p)
            let changed = before?.state == .hostConnected && before?.identity != identity
            hostChanged(identity.hostName ?? "", changed ? .hostChanged : .hostUp)
        } catch {
            logger.warning("\(describe(p)): registration refused: \(error)")
            answer(p, stream, .failure(error))
            perform(p, p.session.goAway(.goawayPermissionDenied, message: "registration refused", now: MonotonicClock.milliseconds()))
        }
    }

    /// Renew on agent_address (PROTOCOL.md section 3.2): the certificate
    /// the connection's handshake verified is what authenticates it; a
    /// connection that authenticated otherwise (a shared key) is refused.
    private func renewCalled(_ p: ControllerPeer, _ stream: UInt32, _ payload: [UInt8]) {
        do {
            guard let enroller else {
                throw LmctfyError.failedPrecondition("this controller does not sign certificates (no enroll_address and signing CA)")
            }
            // As for Register: a certificate a role binding makes a
            // reader's is a client's. Renew gave it an agent certificate
            // (OU=agents) for its name, which then registered that host
            // (the TLS probe).
            if let peer = p.session.peer, settings.rolePolicy.boundRole(for: peer) == .agentRoleReader {
                throw LmctfyError(.permissionDenied, "this certificate is bound to the reader role: a client's certificate is not renewed as a host's")
            }
            let request = try RenewRequest(serializedBytes: payload)
            let (host, response) = try enroller.renew(request, identity: p.certificate)
            logger.info("\(describe(p)): renewed the certificate of host \(host) (valid \(enroller.settings.days) days)")
            answer(p, stream, .success(try response.serializedBytes()))
        } catch {
            logger.warning("\(describe(p)): Renew refused: \(error)")
            answer(p, stream, .failure(error))
        }
    }

    /// A call on enroll_address: Enroll only (PROTOCOL.md section 3.2).
    private func enrollCalled(_ p: ControllerPeer, _ stream: UInt32, _ method: String, _ payload: [UInt8]) {
        guard method == ControllerMethods.enroll.name, let enroller else {
            answer(p, stream, .failure(LmctfyError(.permissionDenied, "only Enroll may be called on the enrolment port, not \(method)")))
            return
        }
        do {
            let request = try EnrollRequest(serializedBytes: payload)
            // Known but for case is known: DNS names ignore case.
            let response = try enroller.enroll(request, peer: p.conn.remoteAddress) { [registry] in registry.knownHost(caseInsensitively: $0) != nil }
            logger.info("\(describe(p)): enrolled host \(request.hostName ?? "") (certificate valid \(enroller.settings.days) days)")
            answer(p, stream, .success(try response.serializedBytes()))
        } catch {
            logger.warning("\(describe(p)): Enroll refused: \(error)")
            answer(p, stream, .failure(error))
        }
    }

    /// Tells every WatchHosts caller whose selector matches.
    private func hostChanged(_ name: String, _ change: HostChange) {
        guard let info = registry.hosts[name] else { return }
        hostChanged(info, change)
    }

    private func hostChanged(_ info: HostInfo, _ change: HostChange) {
        guard !watchers.isEmpty, let bytes = try? WatchHostsResponse(change: change, host: info).serializedBytes() else { return }
        let now = MonotonicClock.milliseconds()
        var ended: [(conn: Int, stream: UInt32)] = []
        for w in watchers where HostRegistry.matches(info, w.selector) {
            guard let p = peers[w.conn] else { continue }
            // A watcher that does not read its changes is ended rather than
            // queued for without end (each host's coming and going, for as
            // long as it keeps the stream open); watching again lists every
            // host first, so nothing is lost to one that reads again.
            if p.waiting > Self.watcherBacklogBytes {
                ended.append((w.conn, w.stream))
                perform(p, p.session.sendStatus(streamId: w.stream, CallStatus(.resourceExhausted,
                    "WatchHosts ended: more than \(Self.watcherBacklogBytes) bytes wait for this caller unread; watch again (it lists every host first)"), now: now))
                continue
            }
            perform(p, p.session.sendResponse(streamId: w.stream, payload: bytes, now: now))
        }
        for e in ended { watchers.removeAll { $0.conn == e.conn && $0.stream == e.stream } }
    }

    /// What may wait unread for a WatchHosts caller before a change ends
    /// its watch (its first listing of every host may be larger).
    static let watcherBacklogBytes = 16 << 20

    /// WatchHosts: every matching host now, then the changes (the stream
    /// stays open, holding no thread, until the caller cancels).
    private func watchHosts(_ p: ControllerPeer, _ stream: UInt32, _ payload: [UInt8]) {
        let now = MonotonicClock.milliseconds()
        do {
            let r = try WatchHostsRequest(serializedBytes: payload)
            let selector = try HostRegistry.parse(r.selector)
            let listed = try registry.list(selector: r.selector).map { try WatchHostsResponse(change: .hostListed, host: $0).serializedBytes() }
            // Watching before the listing goes: a response that ends the
            // stream (over the caller's frame limit) ends the watch too (added
            // after, it stayed until the connection closed).
            watchers.append((p.id, stream, selector))
            for bytes in listed {
                guard watchers.contains(where: { $0.conn == p.id && $0.stream == stream }) else { return }
                perform(p, p.session.sendResponse(streamId: stream, payload: bytes, now: now))
            }
        } catch {
            answer(p, stream, .failure(error))
        }
    }

    /// A client's call for the controller itself.
    private func localCall(_ p: ControllerPeer, _ stream: UInt32, _ method: String, _ payload: [UInt8], _ deadline: UInt64?) {
        // Every local method's role, from the table, before anything else
        // (a routed call's is checked in `route`).
        if let info = ControllerMethods.local(method), !info.role.allows(p.role) {
            answer(p, stream, .failure(LmctfyError(.permissionDenied, "Method \(method) needs the \(info.role) role")))
            return
        }
        if method == ControllerMethods.watchHosts.name {
            watchHosts(p, stream, payload)
            return
        }
        if method == AgentMethods.subscribe.name {
            subscribeFleet(p, stream, payload)
            return
        }
        if method == ControllerMethods.fanOut.name {
            fanOut(p, stream, payload, deadline)
            return
        }
        let result: Result<[UInt8], Error>
        do {
            switch method {
            case ControllerMethods.listHosts.name:
                let r = try ListHostsRequest(serializedBytes: payload)
                // What one answer may hold: the caller's frame, less the
                // frame's own fields.
                let limit = Int(p.session.peer?.maxFrameBytes ?? FrameCodec.helloMaxFrameBytes) - 1024
                if let size = r.pageSize, size > 0 {
                    let (hosts, next) = try registry.page(selector: r.selector, after: r.pageToken, size: Int(size), maxBytes: limit)
                    result = .success(try ListHostsResponse(hosts: hosts, nextPageToken: next).serializedBytes())
                } else {
                    let hosts = try registry.list(selector: r.selector)
                    let bytes = try ListHostsResponse(hosts: hosts).serializedBytes()
                    guard bytes.count <= limit else {
                        throw LmctfyError(.resourceExhausted, "the \(hosts.count) hosts take \(bytes.count) bytes, more than one answer can (\(limit)): "
                                          + "ask for them in pages (page_size; lmctl does)")
                    }
                    result = .success(bytes)
                }
            case ControllerMethods.removeHost.name:
                let r = try RemoveHostRequest(serializedBytes: payload)
                guard let name = r.hostName, !name.isEmpty else { throw LmctfyError.invalidArgument("RemoveHost needs a host_name") }
                let removed = try registry.remove(name)
                fleet.forget(name)
                // Watchers hear of it as the inventory last had it.
                hostChanged(removed, .hostRemoved)
                logger.info("host \(name) removed from the inventory (by \(p.keyId ?? "a local caller"))")
                result = .success(try RemoveHostResponse(host: removed).serializedBytes())
            case AgentMethods.ping.name:
                let r = try PingRequest(serializedBytes: payload)
                result = .success(try PingResponse(data: r.data).serializedBytes())
            default:
                if AgentMethods.named(method) != nil {
                    throw LmctfyError.invalidArgument("\(method) is an agent's method: name the host the call is for (Frame.host; lmctl --host)")
                }
                if [ControllerMethods.register.name, ControllerMethods.renew.name, ControllerMethods.enroll.name].contains(method) {
                    throw LmctfyError.failedPrecondition("\(method) is an agent's call to the controller: it is served where agents connect (agent_address, enroll_address), not to clients")
                }
                throw LmctfyError(.unimplemented, "unknown method \(method)")
            }
        } catch {
            result = .failure(error)
        }
        answer(p, stream, result)
    }

    /// A client's call for a host: forwarded over the host's link.
    private func route(_ p: ControllerPeer, _ stream: UInt32, _ method: String, _ payload: [UInt8], _ deadline: UInt64?, _ host: String) {
        guard let info = AgentMethods.named(method) else {
            let error = ControllerMethods.local(method) != nil
                ? LmctfyError(.invalidArgument, "\(method) is the controller's own method: call it without a host")
                : LmctfyError(.unimplemented, "unknown method \(method)")
            answer(p, stream, .failure(error))
            return
        }
        guard info.role.allows(p.role) else {
            answer(p, stream, .failure(LmctfyError(.permissionDenied, "Method \(method) needs the admin role")))
            return
        }
        guard let linkId = registry.links[host], let link = peers[linkId] else {
            let known = registry.hosts[host] != nil
            answer(p, stream, .failure(LmctfyError(known ? .unavailable : .notFound,
                                                   known ? "host \(host) is not connected" : "no host named \(host)")))
            return
        }
        if let refusal = Self.notTaking(link, host, adding: payload.count) {
            answer(p, stream, .failure(refusal))
            return
        }
        // Input crosses both connections: a client older than version 4
        // could never send it, and the agent (on a link that speaks 4)
        // would wait on its command's stdin (a probe); an agent older than
        // that would not know the field and run the command on /dev/null.
        // So does a terminal (version 5): its window sizes would not pass.
        let client = p.session.peer?.version ?? 0, agent = link.session.peer?.version ?? 0
        if method == AgentMethods.run.name, min(client, agent) < ProtocolVersion.terminal,
           let run = try? RunRequest(serializedBytes: payload) {
            let (field, needs, what) = run.tty == true ? ("tty", ProtocolVersion.terminal, "terminal sizes in INPUT frames")
                                                       : ("attach_input", ProtocolVersion.input, "INPUT frames")
            if (run.tty == true || run.attachInput == true) && min(client, agent) < needs {
                let who = client < needs ? "this connection speaks \(client)" : "host \(host)'s agent speaks \(agent)"
                answer(p, stream, .failure(LmctfyError.invalidArgument("\(field) needs protocol version \(needs) (\(what)): \(who)")))
                return
            }
        }
        let now = MonotonicClock.milliseconds()
        // What is left of the caller's deadline goes with the call.
        let remaining: UInt32? = deadline.map { $0 > now ? UInt32(clamping: $0 - now) : 1 }
        let (agentStream, actions) = link.session.openStream(method: method, payload: payload, deadlineMs: remaining, now: now)
        link.routedOut[agentStream] = (p.id, stream)
        p.routedIn[stream] = (link.id, agentStream)
        metrics.routed[method, default: 0] += 1
        perform(link, actions)
    }

    // MARK: Fan-out

    /// FanOut: a unary agent method on every matching host (a window at a
    /// time); each host's answer goes back as it comes, then OK.
    private func fanOut(_ p: ControllerPeer, _ stream: UInt32, _ payload: [UInt8], _ deadline: UInt64?) {
        let r: FanOutRequest
        let hosts: [HostInfo]
        do {
            r = try FanOutRequest(serializedBytes: payload)
            guard let method = r.method, let info = AgentMethods.named(method) else {
                throw LmctfyError(.unimplemented, "FanOut: unknown method \(r.method ?? "(none)")")
            }
            guard info.shape == .unary else { throw LmctfyError.invalidArgument("FanOut takes unary methods only, not \(method)") }
            guard info.role.allows(p.role) else { throw LmctfyError(.permissionDenied, "Method \(method) needs the admin role") }
            hosts = try registry.list(selector: r.selector)
        } catch {
            answer(p, stream, .failure(error))
            return
        }
        let id = nextFan
        nextFan += 1
        let body = r.payload ?? []
        // Each host's answer lands in the caller's outbox: the window keeps
        // what can be in flight to ~16 MiB by the request's size (a Ping's
        // answer is as large as its request), and no host is called while
        // the caller holds more than `subscriberBytes` unread. Every host
        // was called at once: a reader's FanOut of a 4 MiB Ping to a
        // thousand hosts had the controller hold 4 GB for a caller that
        // did not read.
        fans[id] = Fan(client: p.id, stream: stream, waiting: [:], hosts: hosts.compactMap { $0.identity?.hostName },
                       method: r.method ?? "", payload: body, deadline: deadline,
                       window: max(1, min(Self.fanWindow, (16 << 20) / max(64 << 10, body.count))))
        callFanHosts(id)
    }

    /// Hosts a fan-out calls at once at most.
    static let fanWindow = 256

    /// Calls the next hosts of fan-out `id`, within its window and while
    /// its caller takes its answers; ends it when every host has answered.
    private func callFanHosts(_ id: Int) {
        // Not again from within (an answer sent below can complete a write).
        guard !callingFans.contains(id), var fan = fans[id], let client = peers[fan.client] else { return }
        callingFans.insert(id)
        defer { callingFans.remove(id) }
        let now = MonotonicClock.milliseconds()
        while fan.called < fan.hosts.count && fan.waiting.count < fan.window && client.waiting <= Self.subscriberBytes {
            let name = fan.hosts[fan.called]
            fan.called += 1
            fans[id] = fan
            // An answer sent here can end the fan-out (its stream cancelled:
            // over the caller's frame limit): then it calls no more hosts
            // (it went on, and came back, after the caller was told it ended).
            guard let linkId = registry.links[name], let link = peers[linkId] else {
                send(fan, FanOutResponse(host: name, status: CallStatus(.unavailable, "host \(name) is not connected").wire))
                guard fans[id] != nil else { return }
                continue
            }
            if let refusal = Self.notTaking(link, name, adding: fan.payload.count) {
                send(fan, FanOutResponse(host: name, status: CallStatus(refusal).wire))
                guard fans[id] != nil else { return }
                continue
            }
            if let d = fan.deadline, d <= now {
                send(fan, FanOutResponse(host: name, status: CallStatus(.deadlineExceeded, "the fan-out's deadline passed before host \(name) was called").wire))
                guard fans[id] != nil else { return }
                continue
            }
            let remaining: UInt32? = fan.deadline.map { UInt32(clamping: $0 - now) }
            let (agentStream, actions) = link.session.openStream(method: fan.method, payload: fan.payload, deadlineMs: remaining, now: now)
            link.fanned[agentStream] = (id, nil)
            fan.waiting[name] = (link.id, agentStream)
            fans[id] = fan
            perform(link, actions)
            guard let again = fans[id] else { return }
            fan = again
        }
        guard fans[id] != nil else { return }
        fans[id] = fan
        if fan.called < fan.hosts.count && client.waiting > Self.subscriberBytes { client.parkedFans.insert(id) }
        finishFanIfDone(id)
    }

    private var callingFans: Set<Int> = []

    private func send(_ fan: Fan, _ response: FanOutResponse) {
        guard let p = peers[fan.client], let bytes = try? response.serializedBytes() else { return }
        perform(p, p.session.sendResponse(streamId: fan.stream, payload: bytes, now: MonotonicClock.milliseconds()))
    }

    /// One host's share of a fan-out is over.
    private func fanAnswered(_ id: Int, host: String, response: [UInt8]?, _ status: CallStatus) {
        guard var fan = fans[id], fan.waiting.removeValue(forKey: host) != nil else { return }
        fans[id] = fan
        send(fan, FanOutResponse(host: host, payload: status.code == .ok ? (response ?? []) : nil, status: status.wire))
        callFanHosts(id)
    }

    private func finishFanIfDone(_ id: Int) {
        guard let fan = fans[id], fan.waiting.isEmpty, fan.called == fan.hosts.count else { return }
        fans[id] = nil
        guard let p = peers[fan.client] else { return }
        perform(p, p.session.sendStatus(streamId: fan.stream, .ok, now: MonotonicClock.milliseconds()))
    }

    /// The caller went: every host's share is cancelled.
    private func cancelFan(_ id: Int) {
        guard let fan = fans.removeValue(forKey: id) else { return }
        let now = MonotonicClock.milliseconds()
        for (_, w) in fan.waiting {
            guard let link = peers[w.link] else { continue }
            link.fanned[w.stream] = nil
            perform(link, link.session.cancel(streamId: w.stream, now: now))
        }
    }

    /// The metrics endpoint's answer (loop thread): GET or HEAD /metrics.
    private func answerMetrics(_ method: String, _ path: String) -> HttpReply {
        guard method == "GET" || method == "HEAD" else { return HttpReply(status: 405, text: "only GET and HEAD\n") }
        guard path == "/metrics" else { return HttpReply(status: 404, text: "not found: try /metrics\n") }
        var kinds: [String: Int] = [:]
        for p in peers.values { kinds["\(p.kind)", default: 0] += 1 }
        return HttpReply(status: 200, contentType: MetricsText.contentType,
                         body: metrics.render(knownHosts: registry.hosts.count, connectedHosts: registry.links.count,
                                              connections: kinds, subscribers: fleet.hub.subscribers.count, log: fleet.log))
    }

    // MARK: Stopping

    public func beginStop() {
        _ = loop.execute { [self] in
            guard !stopping else { return }
            stopping = true
            SdNotify.notify("STOPPING=1")
            for l in listeners { l.close() }
            listeners.removeAll()
            for p in Array(peers.values) {
                perform(p, p.session.goAway(.goawayNormal, message: "lmctfy-controller is shutting down", now: MonotonicClock.milliseconds()))
                drop(p)
            }
            checkStopped()
        }
    }

    private var finalized = false

    private func checkStopped() {
        guard stopping, peers.isEmpty, !finalized else { return }
        finalized = true
        metricsServer?.stop()
        flushFleetLog()
        registry.flush()
        ticker?.cancel()
        for s in signals { s.cancel() }
        signals.removeAll()
        finished.signal()
    }

    public func waitUntilStopped() -> Int32 {
        finished.wait()
        let rc = loop.shutdown()
        // Its state is its own until here: another controller may take it now.
        stateLock.release()
        return rc
    }

    public func stop() -> Int32 {
        beginStop()
        return waitUntilStopped()
    }

    /// The hosts and their state (tests).
    public var hostCount: Int { (try? loop.runAndWait { self.registry.links.count }) ?? 0 }

    /// WatchHosts streams and fan-outs under way (tests).
    public var streamsUnderWay: (watchers: Int, fanOuts: Int) {
        (try? loop.runAndWait { (self.watchers.count, self.fans.count) }) ?? (-1, -1)
    }

    /// The fleet log's id and newest sequence (tests).
    public var fleetLog: (id: String, newest: UInt64) {
        (fleet.log.bootId, (try? loop.runAndWait { self.fleet.log.newest }) ?? 0)
    }
}
