// TLS 1.3 under the framing (issue #14, PROTOCOL.md section 3.1): the
// agent's TCP listener with mutual certificates, driven by RpcClient, by the
// built lmctl, and by `openssl s_client` (a client no one here wrote); and the
// refusals: another CA, an expired certificate, no certificate, plaintext on
// a TLS port, a reader creating. The PKI comes from tools/make-test-pki.
import Glibc
import Lmctfy
import LmctfyAgent
import LmctfyProto
import LmctfyRPC
import LmctfySystem
import LmctfyTestSupport
import Testing

/// The repository (this file is Tests/LmctfyAgentTests/TlsTests.swift).
let tlsTestRepo: String = {
    var path = #filePath
    for _ in 0..<3 { path = String(path[..<path.lastIndex(of: "/")!]) }
    return path
}()

/// A fresh test PKI from tools/make-test-pki in a private temp directory.
func makeTestPKI() throws -> String {
    let dir = "/tmp/lmctfy-pki-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    let r = try TestProcess.capture([tlsTestRepo + "/tools/make-test-pki", dir])
    try #require(r.status == 0, "make-test-pki: \(String(decoding: r.stderr, as: UTF8.self))")
    return dir
}

/// The agent's TLS block for a PKI directory.
func tlsBlock(_ pki: String, requireClientCertificate: Bool = true) -> String {
    """
    tcp_address: "127.0.0.1:0"
    tls { certificate_file: "\(pki)/agent.pem" key_file: "\(pki)/agent.key" ca_file: "\(pki)/ca.pem"
          require_client_certificate: \(requireClientCertificate) }
    role { role: AGENT_ROLE_ADMIN certificate_ou: "admins" }
    role { role: AGENT_ROLE_READER certificate_uri: "lmctfy:role:reader" }
    """
}

func clientContext(_ pki: String, _ name: String?, ca: String = "ca.pem") throws -> TlsContext {
    try TlsContext(side: .client, certificateFile: name.map { "\(pki)/\($0).pem" }, keyFile: name.map { "\(pki)/\($0).key" },
                   caFile: "\(pki)/\(ca)")
}

/// TlsChannel alone: two channels in memory, no socket, no agent.
@Suite struct TlsChannelTests {
    @Test func aServerAndAClientShakeHandsInMemoryAndNameEachOther() throws {
        let pki = try makeTestPKI()
        defer { _ = removeTree(pki) }
        let server = try TlsChannel(context: TlsContext(side: .server, certificateFile: "\(pki)/agent.pem",
                                                         keyFile: "\(pki)/agent.key", caFile: "\(pki)/ca.pem"))
        let client = try TlsChannel(context: clientContext(pki, "admin"), serverName: "agent1")
        #expect(client.seal(Array("early".utf8)).isEmpty, "plaintext waits for the handshake")
        var toServer = client.start()
        var atServer: [UInt8] = [], atClient: [UInt8] = []
        for _ in 0..<10 where !(server.isHandshakeDone && client.isHandshakeDone && !atServer.isEmpty) {
            let s = server.feed(toServer)
            atServer += s.plaintext
            let c = client.feed(s.send)
            atClient += c.plaintext
            toServer = c.send
        }
        #expect(server.failure == nil && client.failure == nil)
        #expect(server.protocolVersion == "TLSv1.3")
        #expect(String(decoding: atServer, as: UTF8.self) == "early")
        let id = try #require(server.peerIdentity)
        #expect(id.commonName == "admin" && id.organizationalUnits == ["admins"] && id.uris == ["lmctfy:role:admin"])
        let agent = try #require(client.peerIdentity)
        #expect(agent.dnsNames == ["agent1", "localhost"])
        // Records both ways, then close_notify.
        let sealed = server.seal(Array("answer".utf8))
        #expect(!sealed.isEmpty && !sealed.contains(Array("answer".utf8)))
        #expect(String(decoding: client.feed(sealed).plaintext, as: UTF8.self) == "answer")
        _ = client.feed(server.shutdown())
        #expect(client.peerClosed)
        // A record altered in flight does not decrypt: the channel fails.
        var tampered = client.seal(Array("x".utf8))
        tampered[tampered.count - 1] ^= 1
        _ = server.feed(tampered)
        #expect(server.failure != nil && atClient.isEmpty)
    }

    /// Many records at once and records split across feeds come through
    /// whole: a channel decrypts through a buffer of the call's own and
    /// lets OpenSSL free its record buffers between records
    /// (SSL_MODE_RELEASE_BUFFERS), which a partial record must survive.
    @Test func largeMessagesInOddPiecesComeThroughWhole() throws {
        let pki = try makeTestPKI()
        defer { _ = removeTree(pki) }
        let server = try TlsChannel(context: TlsContext(side: .server, certificateFile: "\(pki)/agent.pem",
                                                         keyFile: "\(pki)/agent.key", caFile: "\(pki)/ca.pem"))
        let client = try TlsChannel(context: clientContext(pki, "admin"), serverName: "agent1")
        var toServer = client.start()
        for _ in 0..<10 where !(server.isHandshakeDone && client.isHandshakeDone) {
            let s = server.feed(toServer)
            toServer = client.feed(s.send).send
        }
        #expect(server.isHandshakeDone && client.isHandshakeDone)
        var rng = SystemRandomNumberGenerator()
        let message = (0..<300_000).map { _ in UInt8.random(in: 0...255, using: &rng) }
        let sealed = client.seal(message)
        var received: [UInt8] = []
        var offset = 0
        for size in [1, 5, 4_000, 16_411, 7, 70_000, 33_333] {
            let end = min(sealed.count, offset + size)
            received += server.feed(Array(sealed[offset..<end])).plaintext
            offset = end
        }
        received += server.feed(Array(sealed[offset...])).plaintext
        #expect(server.failure == nil)
        #expect(received.count == message.count && received == message)
        // And back, in one piece.
        let answer = Array(message.reversed())
        #expect(client.feed(server.seal(answer)).plaintext == answer)
    }

    @Test func aClientRefusesAServerNamedOtherwiseOrOfAnotherCA() throws {
        let pki = try makeTestPKI()
        defer { _ = removeTree(pki) }
        let serverContext = try TlsContext(side: .server, certificateFile: "\(pki)/agent.pem",
                                           keyFile: "\(pki)/agent.key", caFile: "\(pki)/ca.pem")
        for (name, ca) in [("agent2", "ca.pem"), ("agent1", "other-ca.pem")] {
            let server = try TlsChannel(context: serverContext)
            let client = try TlsChannel(context: clientContext(pki, "admin", ca: ca), serverName: name)
            _ = client.feed(server.feed(client.start()).send)
            #expect(client.failure?.contains("certificate verification failed") == true, "\(name), \(ca): \(client.failure ?? "nil")")
            // Another CA says so (a CA rotated on one side read
            // "self-signed certificate in chain" alone).
            #expect(client.failure?.contains("does not chain to this side's CA file") == (ca == "other-ca.pem"), "\(client.failure ?? "nil")")
        }
    }

    @Test func aKeyOthersCanReadIsRefused() throws {
        let pki = try makeTestPKI()
        defer { _ = removeTree(pki) }
        chmod("\(pki)/agent.key", 0o644)
        #expect { _ = try TlsContext(side: .server, certificateFile: "\(pki)/agent.pem", keyFile: "\(pki)/agent.key", caFile: "\(pki)/ca.pem") }
            throws: { ($0 as? LmctfyError)?.code == .failedPrecondition }
    }

    @Test func plaintextTcpNeedsToBeAllowedAndTheTlsExampleParses() throws {
        let pki = try makeTestPKI()
        defer { _ = removeTree(pki) }
        let key = (0..<32).map { UInt8($0) }
        try Sys.createFile(pki + "/keys", "ops \(JSONFormat.base64Encoded(key))\n", mode: 0o600)
        #expect { _ = try AgentSettings.parse("tcp_address: \"127.0.0.1:0\" key_file: \"\(pki)/keys\"", source: "t") }
            throws: { ($0 as? LmctfyError)?.message.contains("allow_plaintext_tcp") == true }
        #expect { _ = try AgentSettings.parse("controller_address: \"127.0.0.1:1\" controller_key_id: \"ops\" key_file: \"\(pki)/keys\"", source: "t") }
            throws: { ($0 as? LmctfyError)?.message.contains("allow_plaintext_tcp") == true }
        #expect(try AgentSettings.parse("tcp_address: \"127.0.0.1:0\" allow_plaintext_tcp: true key_file: \"\(pki)/keys\"", source: "t").plaintextTcp)
        let tls = try AgentSettings.parse(tlsBlock(pki), source: "t")
        #expect(!tls.plaintextTcp && tls.tlsServer?.requirePeerCertificate == true && tls.keys.isEmpty)
        #expect { _ = try AgentSettings.parse("tcp_address: \"127.0.0.1:0\" tls { ca_file: \"\(pki)/ca.pem\" }", source: "t") }
            throws: { ($0 as? LmctfyError)?.code == .invalidArgument }
        // agent-config/agent-tls.conf, its /etc/lmctfy/pki made by make-test-pki.
        var text = try Sys.readFile(tlsTestRepo + "/agent-config/agent-tls.conf")
        for p in ["/etc/lmctfy/pki", "/run/lmctfy", "/var/lib/lmctfy"] {
            text = text.replacingOccurrences(of: "\"\(p)", with: "\"\(pki)\(p == "/etc/lmctfy/pki" ? "" : p)")
        }
        let example = try AgentSettings.parse(text, source: "agent-tls.conf")
        #expect(example.tlsServer != nil && !example.plaintextTcp && example.tcp?.port == 7411)
        #expect(example.config.role.first?.certificateOu == ["admins"] && example.config.role.first?.role == .agentRoleAdmin)
    }
}

extension String {
    func replacingOccurrences(of a: String, with b: String) -> String {
        var out = ""
        var rest = self[...]
        while let r = rest.firstRange(of: a) {
            out += rest[..<r.lowerBound]
            out += b
            rest = rest[r.upperBound...]
        }
        return out + rest
    }
}

@Suite(.enabled(if: RealCgroups.available, "\(RealCgroups.unavailableReason ?? "")"))
struct AgentTlsTests {
    @Test func certificatesAuthenticateAndGiveTheRole() throws {
        let pki = try makeTestPKI()
        defer { _ = removeTree(pki) }
        try withAgent(tlsBlock(pki)) { agent, _ in
            let port = try #require(agent.tcpPort)
            let admin = try RpcClient.connect(host: "127.0.0.1", port: port, tls: clientContext(pki, "admin"))
            #expect(admin.isTls && !admin.isPlaintextTcp)
            #expect(try admin.call("Ping", PingRequest(data: [7]), as: PingResponse.self).data == [7])
            // An answer larger than one TLS record (16 KiB): every container.
            #expect(try admin.call("ListContainers", ListContainersRequest(name: "/", recursive: true), as: ListContainersResponse.self).names.count >= 0)
            admin.close()

            // lmctl with certificates: admin creates and destroys, reader may read but not create.
            let name = RealCgroups.uniqueName("tls")
            func lmctl(_ who: String, _ args: String...) throws -> ChildResult {
                try TestProcess.capture([builtTool("lmctl"), "--agent", "tcp://127.0.0.1:\(port)", "--cert", "\(pki)/\(who).pem",
                                         "--key", "\(pki)/\(who).key", "--ca", "\(pki)/ca.pem"] + args)
            }
            defer { _ = try? lmctl("admin", "destroy", "-f", name) }
            var r = try lmctl("reader", "create", name, "memory:{limit:100000000}")
            #expect(r.status == 7, "reader create: \(String(decoding: r.stderr, as: UTF8.self))")
            #expect(try !ContainerApi.detect().exists(try ContainerName.resolve(name, relativeTo: .root)), "nothing created")
            r = try lmctl("reader", "info")
            #expect(r.status == 0 && String(decoding: r.stdout, as: UTF8.self).contains("agent_version="))
            #expect(!String(decoding: r.stderr, as: UTF8.self).contains("PLAINTEXT"))
            r = try lmctl("admin", "create", name, "memory:{limit:100000000}")
            #expect(r.status == 0, "admin create: \(String(decoding: r.stderr, as: UTF8.self))")
            #expect(try lmctl("admin", "destroy", name).status == 0)
        }
    }

    /// OpenSSL is loaded on first use (CLmctfyOpenSSL), not at start-up:
    /// lmctl over the Unix socket never maps libssl; over TLS it loads it
    /// (ld.so's LD_DEBUG=files names every library it maps and who asked).
    @Test func lmctlLoadsOpenSSLOnlyForATcpLink() throws {
        let pki = try makeTestPKI()
        defer { _ = removeTree(pki) }
        try withAgent(tlsBlock(pki)) { agent, socket in
            let port = try #require(agent.tcpPort)
            let unix = try TestProcess.capture(["/usr/bin/env", "LD_DEBUG=files", builtTool("lmctl"), "--agent", "unix://\(socket)", "info"])
            let unixErr = String(decoding: unix.stderr, as: UTF8.self)
            #expect(unix.status == 0 && String(decoding: unix.stdout, as: UTF8.self).contains("agent_version="), "\(unixErr)")
            #expect(unixErr.contains("file=libc.so"), "LD_DEBUG=files printed nothing: \(unixErr.prefix(300))")
            #expect(!unixErr.contains("libssl") && !unixErr.contains("libcrypto"), "lmctl over the Unix socket loaded OpenSSL")
            let tls = try TestProcess.capture(["/usr/bin/env", "LD_DEBUG=files", builtTool("lmctl"), "--agent", "tcp://127.0.0.1:\(port)",
                                               "--cert", "\(pki)/reader.pem", "--key", "\(pki)/reader.key", "--ca", "\(pki)/ca.pem", "info"])
            let tlsErr = String(decoding: tls.stderr, as: UTF8.self)
            #expect(tls.status == 0 && String(decoding: tls.stdout, as: UTF8.self).contains("agent_version="), "\(tlsErr.suffix(500))")
            #expect(tlsErr.contains("file=libssl.so") && tlsErr.contains("dynamically loaded by"), "lmctl over TLS did not dlopen libssl")
        }
    }

    /// A machine whose libssl cannot be loaded (here: /dev/null bound over
    /// it in a private mount namespace): lmctl over the Unix socket works,
    /// a TCP dial is FAILED_PRECONDITION (9) naming OpenSSL, not an abort;
    /// the agent and the controller refuse to start with 9.
    @Test func withoutOpenSSLTcpIsAClearErrorAndTheUnixSocketStillWorks() throws {
        let libssl = "/usr/lib/x86_64-linux-gnu/libssl.so.3"
        guard access(libssl, F_OK) == 0, access("/usr/bin/unshare", X_OK) == 0 else {
            Issue.record("this test needs \(libssl) and /usr/bin/unshare (util-linux) to hide it")
            return
        }
        try withAgent { _, socket in
            func hidden(_ argv: [String]) throws -> ChildResult {
                #expect(!argv.joined().contains("'"))
                let quoted = argv.map { "'\($0)'" }.joined(separator: " ")
                return try TestProcess.capture(["/usr/bin/unshare", "--mount", "--propagation", "private", "/bin/sh", "-c",
                                                "mount --bind /dev/null \(libssl) && exec \(quoted)"])
            }
            let unix = try hidden([builtTool("lmctl"), "--agent", "unix://\(socket)", "info"])
            #expect(unix.status == 0, "\(String(decoding: unix.stderr, as: UTF8.self))")
            let keys = socket + ".keys"
            try Sys.createFile(keys, "ops \(JSONFormat.base64Encoded((0..<32).map { UInt8($0) }))\n", mode: 0o600)
            let tcp = try hidden([builtTool("lmctl"), "--agent", "tcp://127.0.0.1:1", "--key-file", keys, "info"])
            let tcpErr = String(decoding: tcp.stderr, as: UTF8.self)
            #expect(tcp.status == 9 && tcpErr.contains("cannot load OpenSSL"), "status \(tcp.status): \(tcpErr)")
            for daemon in ["lmctfy-agent", "lmctfy-controller"] {
                let r = try hidden([builtTool(daemon), "--config", "/nonexistent/\(daemon).conf"])
                let err = String(decoding: r.stderr, as: UTF8.self)
                #expect(r.status == 9 && err.contains("cannot load OpenSSL"), "\(daemon): status \(r.status): \(err)")
            }
        }
    }

    @Test func everyoneWithoutAGoodCertificateIsRefusedAndNothingRuns() throws {
        let pki = try makeTestPKI()
        defer { _ = removeTree(pki) }
        let key = (0..<32).map { UInt8($0) }
        try Sys.createFile(pki + "/keys", "ops \(JSONFormat.base64Encoded(key))\n", mode: 0o600)
        try withAgent(tlsBlock(pki) + " key_file: \"\(pki)/keys\"") { agent, _ in
            let port = try #require(agent.tcpPort)
            func refused(_ what: String, _ dial: () throws -> RpcClient) {
                #expect(throws: LmctfyError.self, "\(what)") {
                    let c = try dial()
                    // TLS 1.3: a client may finish its side before the server
                    // has judged its certificate; its first call then fails.
                    _ = try c.call("Ping", PingRequest(data: [1]), as: PingResponse.self)
                }
            }
            for who in ["rogue", "expired"] {
                refused(who) { try RpcClient.connect(host: "127.0.0.1", port: port, tls: clientContext(pki, who)) }
            }
            // No client certificate at all.
            refused("no certificate") { try RpcClient.connect(host: "127.0.0.1", port: port, tls: clientContext(pki, nil)) }
            // The client does not trust the agent (another CA), or dialled another name.
            refused("client of another CA") { try RpcClient.connect(host: "127.0.0.1", port: port, tls: clientContext(pki, "admin", ca: "other-ca.pem")) }
            refused("agent2's name") { try RpcClient.connect(host: "127.0.0.1", port: port, tls: clientContext(pki, "admin"), serverName: "agent2") }
            // Plaintext, even with a valid shared key: GOAWAY_UNAUTHENTICATED in the clear.
            #expect { _ = try RpcClient.connect(host: "127.0.0.1", port: port, keyId: "ops", key: key) }
                throws: { ($0 as? LmctfyError)?.code == .unauthenticated && "\($0)".contains("requires TLS") }
            // The refusal's own error codes: UNAUTHENTICATED for a certificate problem.
            #expect { _ = try RpcClient.connect(host: "127.0.0.1", port: port, tls: clientContext(pki, "admin", ca: "other-ca.pem")) }
                throws: { ($0 as? LmctfyError)?.code == .unauthenticated }
            #expect(agent.activeCalls == 0)
            // The agent still serves a good client.
            let admin = try RpcClient.connect(host: "127.0.0.1", port: port, tls: clientContext(pki, "admin"))
            #expect(try admin.call("Ping", PingRequest(data: [2]), as: PingResponse.self).data == [2])
            admin.close()
        }
    }

    @Test func aSharedKeyInsideTlsWhenClientCertificatesAreNotRequired() throws {
        let pki = try makeTestPKI()
        defer { _ = removeTree(pki) }
        let key = (0..<32).map { UInt8($0) }
        try Sys.createFile(pki + "/keys", "ops \(JSONFormat.base64Encoded(key))\n", mode: 0o600)
        try withAgent(tlsBlock(pki, requireClientCertificate: false) + " key_file: \"\(pki)/keys\"") { agent, _ in
            let port = try #require(agent.tcpPort)
            let c = try RpcClient.connect(host: "127.0.0.1", port: port, tls: clientContext(pki, nil), keyId: "ops", key: key)
            #expect(try c.call("Ping", PingRequest(data: [3]), as: PingResponse.self).data == [3])
            c.close()
            #expect { _ = try RpcClient.connect(host: "127.0.0.1", port: port, tls: clientContext(pki, nil), keyId: "ops", key: key.reversed()) }
                throws: { ($0 as? LmctfyError)?.code == .unauthenticated }
        }
    }

    /// openssl s_client: TLS 1.3, the agent's certificate, and a hello plus
    /// a Ping sent through it answered as PROTOCOL.md says.
    @Test func opensslSClientTalksToTheAgent() throws {
        let pki = try makeTestPKI()
        defer { _ = removeTree(pki) }
        try withAgent(tlsBlock(pki)) { agent, _ in
            let port = try #require(agent.tcpPort)
            let marker = Array("s_client says hi".utf8)
            let frames = FrameCodec.encode(Frame(kind: .frameHello, hello: Hello(stage: .helloOffer, minVersion: 1, maxVersion: 3, peerName: "openssl")))
                + FrameCodec.encode(Frame(kind: .frameRequest, streamId: 1, method: "Ping", payload: try PingRequest(data: marker).serializedBytes()))
            try Sys.createFile(pki + "/frames", "", mode: 0o600)
            let fd = open(pki + "/frames", O_WRONLY | O_TRUNC)
            _ = frames.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            Glibc.close(fd)
            let script = "(cat '\(pki)/frames'; sleep 1) | timeout 20 openssl s_client -connect 127.0.0.1:\(port) -tls1_3 "
                + "-cert '\(pki)/admin.pem' -key '\(pki)/admin.key' -CAfile '\(pki)/ca.pem' -verify_return_error -no_ign_eof"
            let r = try TestProcess.capture(["/bin/bash", "-c", script])
            let out = r.stdout
            let text = String(decoding: out, as: UTF8.self)
            #expect(text.contains("TLSv1.3"), "\(text)")
            #expect(text.contains("CN = agent1") && text.contains("OU = agents"))
            #expect(text.contains("Verify return code: 0 (ok)"))
            // Find the frames in what s_client printed: ACCEPTED, then the
            // Ping's answer on stream 1 carrying the data and status OK.
            var accepted = false, answered = false
            var i = 0
            while i + 4 <= out.count {
                let n = Int(out[i]) << 24 | Int(out[i + 1]) << 16 | Int(out[i + 2]) << 8 | Int(out[i + 3])
                if n > 0, n < 4096, i + 4 + n <= out.count, let f = try? Frame(serializedBytes: Array(out[(i + 4)..<(i + 4 + n)])) {
                    if f.kind == .frameHello && f.hello?.stage == .helloAccepted && f.hello?.version == 3 { accepted = true }
                    if f.kind == .frameResponse && f.streamId == 1, let p = f.payload,
                       (try? PingResponse(serializedBytes: p))?.data == marker, f.status?.code == 0 { answered = true }
                    if f.kind != nil && f.kind != .frameKindUnspecified { i += 4 + n; continue }
                }
                i += 1
            }
            #expect(accepted && answered, "\(text)")
        }
    }
}
