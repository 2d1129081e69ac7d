// lmctfy-controller's config (ControllerConfig in proto/controller.proto,
// protobuf text format): where clients and agents connect, the keys, roles,
// limits and the state directory.
import Glibc
import LmctfyHTTP
import LmctfyProto
import LmctfyRPC
import LmctfySystem

public struct ControllerSettings: Sendable {
    public var config: ControllerConfig
    public var unixSocketPath: String
    public var unixSocketMode: mode_t
    public var allowedGid: UInt32?
    /// Clients on TCP; nil: none.
    public var clientTcp: (host: String, port: UInt16)?
    /// Where agents dial in.
    public var agentTcp: (host: String, port: UInt16)
    public var keys: [String: [UInt8]]
    /// TLS on both TCP listeners (tls); nil: plaintext (allow_plaintext_tcp).
    public var tlsServer: TlsContext?
    /// Enrolment (PROTOCOL.md section 3.2): the listener agents without a
    /// certificate call Enroll on, its TLS (server-only), and who signs.
    public var enroll: EnrollSettings?
    public var limits: SessionLimits
    /// TCP connections still in their handshake (TLS, hello) at once
    /// (limits.max_handshaking_connections; default 1024): HandshakeBudget.
    public var maxHandshakingConnections: Int
    /// Connections one authenticated peer may hold (limits.max_connections_per_peer; default 1024).
    public var maxConnectionsPerPeer: Int
    /// ControllerConfig.max_hosts.
    public var maxHosts: Int
    /// ControllerConfig.max_hosts_per_key.
    public var maxHostsPerKey: Int
    public var logLevel: AgentLogLevel
    public var stateDir: String
    /// The Prometheus endpoint (metrics { address }); nil: none (the default).
    public var metrics: HttpAddress?

    /// Parses and checks a config file's text.
    public static func parse(_ text: String, source: String) throws(LmctfyError) -> ControllerSettings {
        let config: ControllerConfig
        do {
            config = try ControllerConfig(textFormat: text)
        } catch {
            throw .invalidArgument("\(source):\(error.description)")
        }
        return try ControllerSettings(config, source: source)
    }

    /// Reads and parses the config file at `path`.
    public static func load(_ path: String) throws(LmctfyError) -> ControllerSettings {
        let text: String
        do { text = try Sys.readFile(path) } catch { throw error.lmctfy(.notFound, "Reading the controller config") }
        return try parse(text, source: path)
    }

    static func address(_ text: String, _ field: String, _ source: String) throws(LmctfyError) -> (String, UInt16) {
        guard let colon = text.lastIndex(of: ":"), let port = UInt16(text[text.index(after: colon)...]) else {
            throw .invalidArgument("\(source): \(field) must be host:port, not \"\(text)\"")
        }
        return (String(text[..<colon]), port)
    }

    init(_ c: ControllerConfig, source: String) throws(LmctfyError) {
        config = c
        unixSocketPath = c.unixSocketPath ?? "/run/lmctfy/controller.sock"
        unixSocketMode = try UnixSocketAddress.checkConfigured(path: unixSocketPath, mode: c.unixSocketMode ?? 0o660, source: source)
        if let group = c.allowedGroup {
            guard let g = getgrnam(group) else { throw .invalidArgument("\(source): allowed_group \"\(group)\" does not exist") }
            allowedGid = g.pointee.gr_gid
        }
        guard let agents = c.agentAddress else {
            throw .invalidArgument("\(source): agent_address is required (where agents dial in, host:port)")
        }
        agentTcp = try Self.address(agents, "agent_address", source)
        if let t = c.tcpAddress { clientTcp = try Self.address(t, "tcp_address", source) }
        if let t = c.tls {
            tlsServer = try Self.tlsContext(t, source: source)
        } else if c.allowPlaintextTcp != true {
            throw .invalidArgument("\(source): TCP listeners without tls would carry frames in the clear; configure tls { ... } or set allow_plaintext_tcp: true")
        }
        if let address = c.enrollAddress {
            guard let t = c.tls, tlsServer != nil else {
                throw .invalidArgument("\(source): enroll_address needs tls (agents check the controller's certificate before sending a token)")
            }
            guard let caCert = c.signingCaCertificateFile, let caKey = c.signingCaKeyFile, let tokens = c.bootstrapTokenFile else {
                throw .invalidArgument("\(source): enroll_address needs signing_ca_certificate_file, signing_ca_key_file and bootstrap_token_file")
            }
            try TlsContext.checkPrivate(caKey)
            try TlsContext.checkPrivate(tokens, what: "Bootstrap token file")
            let days = Int(c.enrolledCertificateDays ?? 30)
            guard (1...3650).contains(days) else { throw .invalidArgument("\(source): enrolled_certificate_days must be 1 to 3650, not \(days)") }
            var serverOnly = t
            serverOnly.requireClientCertificate = false
            enroll = EnrollSettings(tcp: try Self.address(address, "enroll_address", source),
                                    tls: try Self.tlsContext(serverOnly, source: source),
                                    caCertificateFile: caCert, caKeyFile: caKey, tokenFile: tokens, days: days,
                                    controllerCertificateFile: t.certificateFile ?? "")
        }
        if let keyFile = c.keyFile {
            keys = try KeyFile.load(keyFile, requirePrivate: true)
        } else if tlsServer?.requirePeerCertificate == true {
            keys = [:]
        } else {
            throw .invalidArgument("\(source): key_file is required (agents authenticate with a shared key) unless tls requires client certificates")
        }
        if let l = c.limits {
            // An agent's limits the controller has nothing to apply to: said,
            // not silently ignored (the example config calls the block "the
            // same limits as an agent's").
            let agentOnly: [(String, Bool)] = [
                ("max_connections", l.maxConnections != nil),
                ("max_connection_buffered_bytes", l.maxConnectionBufferedBytes != nil),
                ("max_connection_queued_calls", l.maxConnectionQueuedCalls != nil),
                ("max_agent_buffered_bytes", l.maxAgentBufferedBytes != nil),
                ("max_agent_queued_calls", l.maxAgentQueuedCalls != nil),
                ("max_call_threads", l.maxCallThreads != nil),
                ("max_reader_call_threads", l.maxReaderCallThreads != nil),
                ("max_subscribers", l.maxSubscribers != nil),
            ]
            if let name = agentOnly.first(where: { $0.1 })?.0 {
                throw .invalidArgument("\(source): limits.\(name) is an agent's limit, which a controller does not apply; a controller takes max_frame_bytes, max_streams_per_connection, max_handshaking_connections, max_connections_per_peer, hello_timeout_ms, idle_timeout_ms and keepalive_interval_ms")
            }
        }
        limits = try SessionLimits(c.limits ?? AgentLimits(), source: source)
        maxHandshakingConnections = try HandshakeBudget.limit(c.limits?.maxHandshakingConnections, default: HandshakeBudget.controllerDefault, source: source)
        maxConnectionsPerPeer = Int(c.limits?.maxConnectionsPerPeer ?? 1024)
        guard (1...(1 << 20)).contains(maxConnectionsPerPeer) else {
            throw .invalidArgument("\(source): limits.max_connections_per_peer must be 1 to 1048576, not \(maxConnectionsPerPeer)")
        }
        logLevel = c.logLevel ?? .logInfo
        maxHosts = Int(c.maxHosts ?? UInt32(HostRegistry.defaultMaxHosts))
        guard (1...(1 << 20)).contains(maxHosts) else { throw .invalidArgument("\(source): max_hosts must be 1 to 1048576") }
        maxHostsPerKey = Int(c.maxHostsPerKey ?? 1)
        guard (1...(1 << 20)).contains(maxHostsPerKey) else { throw .invalidArgument("\(source): max_hosts_per_key must be 1 to 1048576") }
        // As the agent's: 0 was taken, and the fleet log then kept nothing
        // (every subscriber got only a gap).
        if let capacity = c.eventLogCapacity, !(1...(1 << 20)).contains(capacity) {
            throw .invalidArgument("\(source): event_log_capacity must be 1 to 1048576, not \(capacity)")
        }
        stateDir = c.stateDir ?? "/var/lib/lmctfy-controller"
        if let m = c.metrics {
            guard let address = m.address else {
                throw .invalidArgument("\(source): metrics needs an address (\"127.0.0.1:9103\" or \"unix:/path\")")
            }
            metrics = try HttpAddress.parse(address, unixMode: mode_t(m.unixSocketMode ?? 0o660), unixGroup: allowedGid,
                                            allowNonLoopback: m.allowNonLoopback == true, what: "\(source): metrics address")
        }
        guard stateDir.hasPrefix("/") else { throw .invalidArgument("\(source): state_dir \"\(stateDir)\" must be absolute") }
        for binding in c.role where binding.role == nil || binding.role == .agentRoleUnspecified {
            throw .invalidArgument("\(source): every role binding needs role: AGENT_ROLE_ADMIN or AGENT_ROLE_READER")
        }
    }

    /// The server context of a tls block (its files read now): at start,
    /// and again on SIGHUP (Controller.reloadTls).
    static func tlsContext(_ t: TlsConfig, source: String) throws(LmctfyError) -> TlsContext {
        guard let cert = t.certificateFile, let key = t.keyFile, let ca = t.caFile else {
            throw .invalidArgument("\(source): tls needs certificate_file, key_file and ca_file")
        }
        return try TlsContext(side: .server, certificateFile: cert, keyFile: key, caFile: ca,
                              requirePeerCertificate: t.requireClientCertificate ?? true, crlFile: t.crlFile)
    }

    /// The enrolment listener's settings (enroll_address and its fields).
    public struct EnrollSettings: Sendable {
        public var tcp: (host: String, port: UInt16)
        /// Server-only TLS: the controller's certificate, no client's.
        public var tls: TlsContext
        public var caCertificateFile: String
        public var caKeyFile: String
        public var tokenFile: String
        /// How long an enrolled certificate is valid.
        public var days: Int
        /// The controller's own certificate (tls.certificate_file): the
        /// names it holds are never signed for an agent.
        public var controllerCertificateFile: String
    }

    var rolePolicy: RolePolicy { RolePolicy(bindings: config.role, allowedGid: allowedGid) }

    /// Makes the state directory (0700; parents 0755) if absent; refuses
    /// one that is not a private directory of this user (as the agent's).
    func prepareStateDir() throws(LmctfyError) {
        try Sys.checkPrivateDirectory(stateDir, create: true, what: "state_dir")
    }
}
