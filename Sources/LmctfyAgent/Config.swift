// The agent's configuration: AgentConfig (proto/agent.proto) in protobuf
// text format. Unknown keys and bad values are errors with line:column (the
// text format parser's); the rest is checked here, before anything starts.
import Glibc
import Lmctfy
import LmctfyPolicy
import LmctfyHTTP
import LmctfyProto
import LmctfyRPC
import LmctfySystem

/// The agent's configuration: an AgentConfig (protobuf text format) with
/// its defaults applied and every value checked.
public struct AgentSettings: Sendable {
    /// The config as parsed (role bindings are read from it).
    public var config: AgentConfig
    /// The Unix socket's absolute path (unix_socket_path; default /run/lmctfy/agent.sock).
    public var unixSocketPath: String
    /// The Unix socket file's mode (unix_socket_mode; default 0660).
    public var unixSocketMode: mode_t
    /// The group allowed on the Unix socket besides root (allowed_group,
    /// resolved at load; the socket is chowned to it); nil: none.
    public var allowedGid: gid_t?
    /// The TCP listener's host and port (tcp_address); nil: no TCP listener.
    /// Port 0 picks one (see `Agent.tcpPort`).
    public var tcp: (host: String, port: UInt16)?
    /// The shared keys TCP peers authenticate with, by key id (from key_file,
    /// which must be private); empty without TCP.
    public var keys: [String: [UInt8]]
    /// TLS on the TCP listener (tls): the server side, its files loaded and
    /// checked at load; nil: TCP in the clear (allow_plaintext_tcp) or no TCP.
    public var tlsServer: TlsContext?
    /// TLS on the link to the controller: our certificate as a client.
    public var tlsClient: TlsContext?
    /// The tls block's files: what SIGHUP re-reads (Agent.reloadTls).
    public var tlsFiles: TlsFiles?
    /// Whether a TCP link runs without TLS (allowed only by
    /// allow_plaintext_tcp; logged loudly at start and by lmctl).
    public var plaintextTcp: Bool
    /// Per-connection session limits (frame size, streams, timeouts).
    public var limits: SessionLimits
    /// The most connections open at once (limits.max_connections; default
    /// 256); connections beyond it are refused.
    public var maxConnections: Int
    /// The most TCP connections one authenticated peer (certificate or
    /// key id) holds at once (limits.max_connections_per_peer; default
    /// half of max_connections); more get GOAWAY_NORMAL saying so.
    public var maxConnectionsPerPeer: Int
    /// TCP connections still in their handshake (TLS, hello) at once
    /// (limits.max_handshaking_connections; default 64): HandshakeBudget.
    public var maxHandshakingConnections: Int
    /// The flow-control bounds: what one connection, and the agent as a
    /// whole, may hold before the agent stops reading (limits.max_*_buffered_bytes, max_*_queued_calls).
    public var flow: FlowLimits
    /// The log level (log_level; default info; `--log-level` overrides it).
    public var logLevel: AgentLogLevel
    /// The state directory (state_dir; default /var/lib/lmctfy): created
    /// with mode 0700 at start, and the agent refuses to start unless it is
    /// private (see `checkStateDir`).
    public var stateDir: String
    /// The image store (image_root; default <state_dir>/images).
    public var imageRoot: String
    /// The container the agent serves as "/" (root_container; default /):
    /// every name in its calls and events is relative to it. It must exist
    /// when the agent starts.
    public var rootContainer: ContainerName
    /// How many events the event log keeps for resuming subscribers
    /// (event_log_capacity; default 4096).
    public var eventLogCapacity: Int
    /// How often containers are listed to catch changes made without the
    /// agent (reconcile_interval_ms; default 1000; 0: never).
    public var reconcileIntervalMs: Int
    /// The controller to dial home to (controller_address); nil: none.
    public var controller: ControllerLink?
    /// Certificate renewal (PROTOCOL.md section 3.2): renew once less than
    /// this percentage of the certificate's lifetime remains
    /// (renew_before_expiry_percent; default 33). 0: never, which is also
    /// what an agent without bootstrap_token_file (a certificate not
    /// obtained by enrolment) or without a TLS controller_address gets.
    public var renewBeforeExpiryPercent: Int
    /// The Prometheus endpoint (metrics { address }); nil: none (the default).
    public var metrics: HttpAddress?

    /// Dialling home (PROTOCOL.md section 9): where, with which key, as whom.
    public struct ControllerLink: Sendable {
        public var host: String
        public var port: UInt16
        /// The shared key (controller_key_id of key_file); nil under TLS,
        /// where the agent's certificate authenticates it.
        public var keyId: String?
        public var key: [UInt8]?
        /// TLS to the controller (tls): our certificate, the CA it must chain to.
        public var tls: TlsContext?
        /// host_name; default the machine's hostname.
        public var hostName: String
        public var labels: [HostLabel]
        public var reconnectBaseMs: Int
        public var reconnectMaxMs: Int
    }

    static func controllerLink(_ c: AgentConfig, keys: [String: [UInt8]], tls: TlsContext?, source: String) throws(LmctfyError) -> ControllerLink? {
        guard let address = c.controllerAddress else {
            if c.controllerKeyId != nil { throw .invalidArgument("\(source): controller_key_id without controller_address") }
            return nil
        }
        guard let colon = address.lastIndex(of: ":"), let port = UInt16(address[address.index(after: colon)...]), port > 0 else {
            throw .invalidArgument("\(source): controller_address must be host:port, not \"\(address)\"")
        }
        var keyId: String?
        var key: [UInt8]?
        if tls == nil {
            guard c.allowPlaintextTcp == true else {
                throw .invalidArgument("\(source): controller_address without tls would carry frames in the clear; configure tls { ... } or set allow_plaintext_tcp: true")
            }
            guard c.keyFile != nil else {
                throw .invalidArgument("\(source): controller_address needs key_file (the agent authenticates with a shared key)")
            }
            guard let id = c.controllerKeyId else {
                throw .invalidArgument("\(source): controller_address needs controller_key_id (which key of key_file to use)")
            }
            guard let k = keys[id] else {
                throw .invalidArgument("\(source): controller_key_id \"\(id)\" is not in key_file")
            }
            keyId = id
            key = k
        }
        var hostName = c.hostName ?? ""
        if hostName.isEmpty {
            var u = utsname()
            uname(&u)
            hostName = withUnsafeBytes(of: u.nodename) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        }
        guard HostName.isValid(hostName) else {
            throw .invalidArgument("\(source): host_name \"\(hostName)\" must be \(HostName.rule)")
        }
        // The controller admits a certificate for the host it names only
        // (PROTOCOL.md 3.1): a host_name that is not one of its DNS names
        // was refused at every Register, the agent otherwise running fine.
        if let own = tls?.ownIdentity, !own.dnsNames.contains(hostName) {
            let names = own.dnsNames.isEmpty ? "none" : own.dnsNames.joined(separator: ", ")
            throw .invalidArgument("\(source): host_name \"\(hostName)\" is not a DNS name of the tls certificate (its DNS names: \(names)): the controller would refuse its Register; set host_name to one of them, or use a certificate for this host")
        }
        if let problem = HostIdentityRules.problem(labels: c.label) {
            throw .invalidArgument("\(source): \(problem)")
        }
        let base = Int(c.reconnectBaseMs ?? 500), cap = Int(c.reconnectMaxMs ?? 30_000)
        guard base >= 1, cap >= base else {
            throw .invalidArgument("\(source): reconnect_base_ms must be at least 1 and reconnect_max_ms at least reconnect_base_ms")
        }
        return ControllerLink(host: String(address[..<colon]), port: port, keyId: keyId, key: key, tls: tls, hostName: hostName,
                              labels: c.label, reconnectBaseMs: base, reconnectMaxMs: cap)
    }

    /// Whether every container is watched (watch_containers; default true).
    public var watchContainers: Bool
    /// How often a STATS event is published per container
    /// (stats_interval_ms; default 10000; 0: never).
    public var statsIntervalMs: Int
    /// Events held for a flow-controlled subscriber without credit
    /// (subscriber_buffer; default 1024).
    public var subscriberBuffer: Int
    /// CL2: tiers, admission, overcommit, eviction (`policy { }`; README
    /// "Policy"). Absent: the defaults (admission on, no overcommit, no
    /// eviction).
    public var policy: Policy

    /// Parses and checks a config file's text.
    public static func parse(_ text: String, source: String) throws(LmctfyError) -> AgentSettings {
        let config: AgentConfig
        do {
            config = try AgentConfig(textFormat: text)
        } catch {
            throw .invalidArgument("\(source):\(error.description)")
        }
        return try AgentSettings(config, source: source)
    }

    /// Reads and parses the config file at `path`; NOT_FOUND when it cannot be
    /// read, INVALID_ARGUMENT (naming the file and line:column) when it is wrong.
    public static func load(_ path: String) throws(LmctfyError) -> AgentSettings {
        let text: String
        do { text = try Sys.readFile(path) } catch { throw error.lmctfy(.notFound, "Cannot read the agent config") }
        return try parse(text, source: path)
    }

    init(_ c: AgentConfig, source: String) throws(LmctfyError) {
        config = c
        unixSocketPath = c.unixSocketPath ?? "/run/lmctfy/agent.sock"
        unixSocketMode = try UnixSocketAddress.checkConfigured(path: unixSocketPath, mode: c.unixSocketMode ?? 0o660, source: source)
        if let group = c.allowedGroup {
            guard let g = getgrnam(group) else { throw .invalidArgument("\(source): allowed_group \"\(group)\" does not exist") }
            allowedGid = g.pointee.gr_gid
        }
        var tlsFiles: TlsFiles?
        if let t = c.tls { tlsFiles = try TlsFiles(t, source: source) }
        self.tlsFiles = tlsFiles
        if let address = c.tcpAddress {
            guard let colon = address.lastIndex(of: ":"), let port = UInt16(address[address.index(after: colon)...]) else {
                throw .invalidArgument("\(source): tcp_address must be host:port, not \"\(address)\"")
            }
            tcp = (String(address[..<colon]), port)
            if let tlsFiles {
                tlsServer = try tlsFiles.context(.server)
            } else if c.allowPlaintextTcp != true {
                throw .invalidArgument("\(source): tcp_address without tls would carry frames in the clear; configure tls { ... } or set allow_plaintext_tcp: true")
            }
            if tlsServer?.requirePeerCertificate != true {
                // Without client certificates peers prove a shared key.
                guard let keyFile = c.keyFile else {
                    throw .invalidArgument("\(source): tcp_address needs key_file (TCP peers authenticate with a shared key) unless tls requires client certificates")
                }
                keys = try KeyFile.load(keyFile, requirePrivate: true)
            } else {
                keys = [:]
            }
        } else if let keyFile = c.keyFile, c.controllerAddress != nil, c.tls == nil {
            keys = try KeyFile.load(keyFile, requirePrivate: true)
        } else {
            keys = [:]
        }
        plaintextTcp = (c.tcpAddress != nil || c.controllerAddress != nil) && c.tls == nil
        if c.controllerAddress != nil, let tlsFiles { tlsClient = try tlsFiles.context(.client) }
        controller = try Self.controllerLink(c, keys: keys, tls: tlsClient, source: source)
        let percent = c.renewBeforeExpiryPercent ?? 33
        guard percent <= 100 else {
            throw .invalidArgument("\(source): renew_before_expiry_percent must be 0 to 100, not \(percent)")
        }
        renewBeforeExpiryPercent = c.bootstrapTokenFile != nil && controller?.tls != nil ? Int(percent) : 0
        let l = c.limits ?? AgentLimits()
        limits = try SessionLimits(l, source: source)
        maxConnections = Int(l.maxConnections ?? 256)
        // TCP peers only (the Unix socket keeps a reserve for root): one
        // reader's certificate holding all 256 shut every admin out of the
        // TCP port (the TLS probe).
        maxConnectionsPerPeer = Int(l.maxConnectionsPerPeer ?? UInt32(max(1, maxConnections / 2)))
        guard maxConnectionsPerPeer >= 1 else {
            throw .invalidArgument("\(source): limits.max_connections_per_peer must be at least 1")
        }
        maxHandshakingConnections = try HandshakeBudget.limit(l.maxHandshakingConnections, default: HandshakeBudget.agentDefault, source: source)
        flow = FlowLimits()
        if let v = l.maxConnectionBufferedBytes { flow.connectionBytes = Int(max(1, v)) }
        if let v = l.maxConnectionQueuedCalls { flow.connectionCalls = Int(max(1, v)) }
        if let v = l.maxAgentBufferedBytes { flow.agentBytes = Int(max(1, v)) }
        if let v = l.maxAgentQueuedCalls { flow.agentCalls = Int(max(1, v)) }
        if let v = l.maxCallThreads { flow.callThreads = Int(max(1, v)) }
        flow.readerCallThreads = max(1, flow.callThreads / 2)
        if let v = l.maxReaderCallThreads {
            guard v >= 1 && Int(v) <= flow.callThreads else {
                throw .invalidArgument("\(source): limits.max_reader_call_threads must be 1 to max_call_threads (\(flow.callThreads)), not \(v)")
            }
            flow.readerCallThreads = Int(v)
        }
        if let v = l.maxSubscribers {
            guard v >= 2 && v <= 1 << 20 else {
                throw .invalidArgument("\(source): limits.max_subscribers must be 2 to 1048576, not \(v)")
            }
            flow.subscribers = Int(v)
        }
        logLevel = c.logLevel ?? .logInfo
        stateDir = c.stateDir ?? "/var/lib/lmctfy"
        imageRoot = c.imageRoot ?? stateDir + "/images"
        rootContainer = try Self.rootContainer(c.rootContainer, source: source)
        let capacity = c.eventLogCapacity ?? 4096
        guard (1...1_048_576).contains(capacity) else {
            throw .invalidArgument("\(source): event_log_capacity must be 1 to 1048576, not \(capacity)")
        }
        eventLogCapacity = Int(capacity)
        reconcileIntervalMs = Int(c.reconcileIntervalMs ?? 1000)
        watchContainers = c.watchContainers ?? true
        statsIntervalMs = Int(c.statsIntervalMs ?? 10000)
        guard statsIntervalMs == 0 || statsIntervalMs >= 100 else {
            throw .invalidArgument("\(source): stats_interval_ms must be 0 (off) or at least 100, not \(statsIntervalMs)")
        }
        subscriberBuffer = Int(max(1, c.subscriberBuffer ?? 1024))
        do {
            policy = try Policy(config: c.policy)
        } catch {
            throw .invalidArgument("\(source): \(error.message)")
        }
        metrics = try Self.metricsAddress(c.metrics, group: allowedGid, source: source)
        for binding in c.role where binding.role == nil || binding.role == .agentRoleUnspecified {
            throw .invalidArgument("\(source): every role binding needs role: AGENT_ROLE_ADMIN or AGENT_ROLE_READER")
        }
    }

    /// root_container: an absolute container name (absent: /). Whether it
    /// exists is the agent's start's to check (it may be made later).
    static func rootContainer(_ value: String?, source: String) throws(LmctfyError) -> ContainerName {
        guard let value else { return .root }
        guard value.hasPrefix("/") else {
            throw .invalidArgument("\(source): root_container must be an absolute container name, not \"\(value)\"")
        }
        do {
            return try ContainerName.resolve(value, relativeTo: .root)
        } catch {
            throw .invalidArgument("\(source): root_container \"\(value)\": \(error.message)")
        }
    }

    /// The policy's reservations against this machine (`memory` bytes,
    /// `cpus`): a reservation of all of it or more leaves no capacity, so
    /// that every Create would be refused (RESOURCE_EXHAUSTED) on an agent
    /// that seemed to start fine. FAILED_PRECONDITION saying which.
    /// `root`: the root container's spec when there is one: the capacity
    /// is its memory limit and CPU when set, so the reservation must be
    /// below those too (a reservation of a 64 MiB root's whole memory was
    /// accepted, and the agent started with no capacity; the policy probe).
    public func checkPolicyFits(memory: UInt64?, cpus: Int?, root: ContainerSpec? = nil) throws(LmctfyError) {
        let r = policy.reserved
        if let memory, r.memory > 0, UInt64(r.memory) >= memory {
            throw .failedPrecondition("policy.reserved_memory_bytes \(r.memory) is not below this machine's memory (\(memory) bytes, MemTotal): no container could be admitted")
        }
        if let cpus, r.milliCpu > 0, r.milliCpu >= Int64(cpus) * 1000 {
            throw .failedPrecondition("policy.reserved_milli_cpu \(r.milliCpu) is not below this machine's \(cpus) CPUs (\(cpus * 1000) milli-CPU): no container could be admitted")
        }
        guard let root else { return }
        if let limit = Policy.boundedBytes(root.memory?.limit), r.memory > 0, r.memory >= limit {
            throw .failedPrecondition("policy.reserved_memory_bytes \(r.memory) is not below the root container \(rootContainer)'s memory limit (\(limit) bytes): no container could be admitted")
        }
        if let milli = Policy.milliCpu(of: root), r.milliCpu > 0, r.milliCpu >= milli {
            throw .failedPrecondition("policy.reserved_milli_cpu \(r.milliCpu) is not below the root container \(rootContainer)'s CPU (\(milli) milli-CPU): no container could be admitted")
        }
    }

    /// The state directory must be private to the agent: a directory (not a
    /// symlink) owned by the agent's user, with no access for group or
    /// others, since what is kept there decides what the agent re-creates.
    /// `create`: make it (mode 0700; missing parents 0755) if it is absent.
    /// Throws FAILED_PRECONDITION naming the directory and what is wrong.
    public func checkStateDir(create: Bool) throws(LmctfyError) {
        try Sys.checkPrivateDirectory(stateDir, create: create, what: "state_dir")
    }

    /// Who the Unix socket admits (PROTOCOL.md section 3): root, the
    /// allowed_group, and every uid and gid a role binding names.
    public var unixPeerPolicy: UnixPeerPolicy { rolePolicy.unixPeerPolicy }

    /// The role of an authenticated peer (RolePolicy).
    public func role(for peer: PeerInfo) -> AgentRole { rolePolicy.role(for: peer) }

    var rolePolicy: RolePolicy { RolePolicy(bindings: config.role, allowedGid: allowedGid) }
}

/// The files of a `tls` block, checked to be all there; `context` loads them.
public struct TlsFiles: Sendable {
    public var certificateFile: String
    public var keyFile: String
    public var caFile: String
    public var requireClientCertificate: Bool
    /// crl_file: revoked certificates (PEM CRL); nil: none checked.
    public var crlFile: String?

    /// INVALID_ARGUMENT naming `source` when a file is not given.
    public init(_ t: TlsConfig, source: String) throws(LmctfyError) {
        guard let cert = t.certificateFile, let key = t.keyFile, let ca = t.caFile else {
            throw .invalidArgument("\(source): tls needs certificate_file, key_file and ca_file")
        }
        certificateFile = cert
        keyFile = key
        caFile = ca
        requireClientCertificate = t.requireClientCertificate ?? true
        crlFile = t.crlFile
    }

    /// The files loaded for one side (a bad or unreadable file, or a key
    /// others can read, is an error naming it).
    public func context(_ side: TlsContext.Side) throws(LmctfyError) -> TlsContext {
        try TlsContext(side: side, certificateFile: certificateFile, keyFile: keyFile, caFile: caFile,
                       requirePeerCertificate: requireClientCertificate, crlFile: crlFile)
    }
}

/// What the agent lets its peers make it hold (AgentLimits, PROTOCOL.md
/// section 7). Past a limit it stops reading from the peers that hold
/// something, and reads again once they have drained to half of it.
public struct FlowLimits: Sendable, Equatable {
    /// Per connection: unsent answers plus requests of queued pool calls.
    public var connectionBytes = 4 << 20
    /// Per connection: calls waiting for or running on a pool thread.
    public var connectionCalls = 32
    /// The whole agent: the sum of every connection's bytes.
    public var agentBytes = 64 << 20
    /// The whole agent: every connection's queued calls.
    public var agentCalls = 1024
    /// The whole agent: calls running on a thread of their own (Run,
    /// Notify); one more is refused (RESOURCE_EXHAUSTED), not queued.
    public var callThreads = 1024
    /// Of those, calls of peers without the admin role (readers' Notify
    /// streams); the rest stay for admins.
    public var readerCallThreads = 512
    /// The whole agent: Subscribe streams open at once; readers hold at
    /// most half.
    public var subscribers = 1024

    public init() {}
}
