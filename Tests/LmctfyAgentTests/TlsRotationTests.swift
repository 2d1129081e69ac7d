// Certificate rotation and revocation (issue #14, PROTOCOL.md section 3.1):
// the agent re-reads its TLS files on SIGHUP (Agent.reloadTls) for new
// connections while established ones keep working; a CRL (tls { crl_file })
// refuses a revoked peer in the handshake and, on reload, closes its
// established connection with GOAWAY_UNAUTHENTICATED; the periodic check
// closes a connection whose peer certificate has expired. And MachineInfo's
// warnings for a plaintext TCP listener (`lmctl info` prints them).
import Glibc
import Lmctfy
import LmctfyAgent
import LmctfyProto
import LmctfyRPC
import LmctfySystem
import LmctfyTestSupport
import Testing

/// Copies `from` over `to` (mode 0600): a certificate or key rotated in place.
func replaceFile(_ from: String, _ to: String) throws {
    try Sys.createFile(to + ".new", try Sys.readFile(from), mode: 0o600)
    guard rename(to + ".new", to) == 0 else { throw LmctfyError.internalError("rename \(to): errno \(errno)") }
}

/// tools/make-test-pki --crl: a CRL of `pki`'s CA revoking `names`.
func makeCRL(_ pki: String, _ out: String, revoking names: [String]) throws {
    let r = try TestProcess.capture([tlsTestRepo + "/tools/make-test-pki", "--crl", pki, out] + names)
    try #require(r.status == 0, "make-test-pki --crl: \(String(decoding: r.stderr, as: UTF8.self))")
}

@Suite(.enabled(if: RealCgroups.available, "\(RealCgroups.unavailableReason ?? "")"))
struct AgentTlsRotationTests {
    @Test func aReloadKeepsEstablishedConnectionsAndNewOnesSeeTheNewCertificate() throws {
        let pki = try makeTestPKI()
        defer { _ = removeTree(pki) }
        try withAgent(tlsBlock(pki)) { agent, _ in
            let port = try #require(agent.tcpPort)
            let before = try RpcClient.connect(host: "127.0.0.1", port: port, tls: clientContext(pki, "admin"))
            defer { before.close() }
            #expect(before.peerCertificate?.commonName == "agent1")
            #expect(try before.call("Ping", PingRequest(data: [1]), as: PingResponse.self).data == [1])

            // A bad file set is refused and the context in use is kept.
            try Sys.createFile(pki + "/broken.pem", "not a certificate\n", mode: 0o600)
            try replaceFile(pki + "/agent.pem", pki + "/agent1.pem.saved")
            try replaceFile(pki + "/broken.pem", pki + "/agent.pem")
            #expect { try agent.reloadTls() } throws: { ($0 as? LmctfyError)?.code == .invalidArgument }
            let stillOld = try RpcClient.connect(host: "127.0.0.1", port: port, tls: clientContext(pki, "admin"))
            #expect(stillOld.peerCertificate?.commonName == "agent1", "the old context is kept after a refused reload")
            stillOld.close()

            // Rotated: agent2's certificate and key in agent.pem/agent.key.
            try replaceFile(pki + "/agent2.pem", pki + "/agent.pem")
            try replaceFile(pki + "/agent2.key", pki + "/agent.key")
            #expect(try agent.reloadTls() == 0, "no established connection is closed by a rotation")
            #expect(try before.call("Ping", PingRequest(data: [2]), as: PingResponse.self).data == [2],
                    "the connection established before the reload still works")
            let after = try RpcClient.connect(host: "127.0.0.1", port: port, tls: clientContext(pki, "admin"))
            #expect(after.peerCertificate?.commonName == "agent2", "a new connection gets the new certificate")
            #expect(try after.call("Ping", PingRequest(data: [3]), as: PingResponse.self).data == [3])
            after.close()
            #expect(try before.call("Ping", PingRequest(data: [4]), as: PingResponse.self).data == [4])
        }
    }

    @Test func aRevokedClientIsClosedWithGoawayUnauthenticatedAndRefusedAfterwards() throws {
        let pki = try makeTestPKI()
        defer { _ = removeTree(pki) }
        try makeCRL(pki, pki + "/crl.pem", revoking: [])
        let config = tlsBlock(pki).replacingOccurrences(of: "ca_file: \"\(pki)/ca.pem\"",
                                                        with: "ca_file: \"\(pki)/ca.pem\" crl_file: \"\(pki)/crl.pem\"")
        try withAgent(config) { agent, _ in
            let port = try #require(agent.tcpPort)
            let admin = try RpcClient.connect(host: "127.0.0.1", port: port, tls: clientContext(pki, "admin"))
            let reader = try RpcClient.connect(host: "127.0.0.1", port: port, tls: clientContext(pki, "reader"))
            defer { reader.close() }
            #expect(try admin.call("Ping", PingRequest(data: [1]), as: PingResponse.self).data == [1])
            #expect(try reader.call("Ping", PingRequest(data: [1]), as: PingResponse.self).data == [1])

            try makeCRL(pki, pki + "/crl.pem", revoking: ["admin"])
            #expect(try agent.reloadTls() == 1, "the admin's connection is closed")
            // The call in flight when the goaway arrives ends as every call
            // cut by a goaway does (UNAVAILABLE), naming the goaway's reason.
            #expect { _ = try admin.call("Ping", PingRequest(data: [2]), as: PingResponse.self) }
                throws: { "\($0)".contains("GOAWAY_UNAUTHENTICATED: certificate no longer valid: certificate revoked") }
            #expect(admin.isClosed)
            admin.close()
            #expect(try reader.call("Ping", PingRequest(data: [3]), as: PingResponse.self).data == [3], "a peer not revoked keeps its connection")
            // A new handshake with the revoked certificate is refused.
            #expect(throws: LmctfyError.self) {
                let c = try RpcClient.connect(host: "127.0.0.1", port: port, tls: clientContext(pki, "admin"))
                _ = try c.call("Ping", PingRequest(data: [4]), as: PingResponse.self)
            }
            let again = try RpcClient.connect(host: "127.0.0.1", port: port, tls: clientContext(pki, "reader"))
            #expect(try again.call("Ping", PingRequest(data: [5]), as: PingResponse.self).data == [5])
            again.close()
            // A CRL that does not load is refused; the one in use stays.
            try Sys.createFile(pki + "/crl.pem", "garbage\n", mode: 0o600)
            #expect { try agent.reloadTls() } throws: { ($0 as? LmctfyError)?.message.contains("CRL") == true }
            #expect(try reader.call("Ping", PingRequest(data: [6]), as: PingResponse.self).data == [6])
        }
    }

    @Test func thePeriodicCheckClosesAConnectionWhosePeerCertificateExpired() throws {
        let pki = try makeTestPKI()
        defer { _ = removeTree(pki) }
        try withAgent(tlsBlock(pki)) { agent, _ in
            let port = try #require(agent.tcpPort)
            let admin = try RpcClient.connect(host: "127.0.0.1", port: port, tls: clientContext(pki, "admin"))
            #expect(try admin.call("Ping", PingRequest(data: [1]), as: PingResponse.self).data == [1])
            #expect(agent.checkPeerCertificates() == 0, "valid now")
            // 400 days from now every make-test-pki leaf (365 days) has expired.
            let later = Int64(time(nil)) + 400 * 86400
            #expect(agent.checkPeerCertificates(unixTime: later) == 1)
            #expect { _ = try admin.call("Ping", PingRequest(data: [2]), as: PingResponse.self) }
                throws: { "\($0)".contains("GOAWAY_UNAUTHENTICATED: certificate no longer valid: certificate has expired") }
            #expect(admin.isClosed)
            admin.close()
        }
    }
}

/// MachineInfo's warnings through the built lmctl (spawns it: ROOT_ONLY in tools/test).
@Suite(.enabled(if: RealCgroups.available, "\(RealCgroups.unavailableReason ?? "")"))
struct AgentInfoWarningTests {
    @Test func infoWarnsAboutAPlaintextTcpListener() throws {
        let pki = try makeTestPKI()
        defer { _ = removeTree(pki) }
        let key = (0..<32).map { UInt8($0) }
        try Sys.createFile(pki + "/keys", "ops \(JSONFormat.base64Encoded(key))\n", mode: 0o600)
        try withAgent("tcp_address: \"127.0.0.1:0\" allow_plaintext_tcp: true key_file: \"\(pki)/keys\"") { agent, socket in
            let local = try RpcClient.connect(unixPath: socket)
            let info = try local.call("MachineInfo", MachineInfoRequest(), as: MachineInfoResponse.self)
            local.close()
            #expect(info.warnings.count == 1 && info.warnings[0].contains("PLAINTEXT TCP") && info.warnings[0].contains("127.0.0.1"))
            // lmctl over the Unix socket: its connection is not plaintext TCP,
            // but the agent's listener is, and it says so loudly.
            let r = try TestProcess.capture([builtTool("lmctl"), "--agent", "unix://" + socket, "info"])
            let out = String(decoding: r.stdout, as: UTF8.self), err = String(decoding: r.stderr, as: UTF8.self)
            #expect(r.status == 0 && out.contains("warning=\"PLAINTEXT TCP: the TCP listener"), "\(out)")
            #expect(err.contains("WARNING: agent: PLAINTEXT TCP"), "\(err)")
        }
        // With TLS: no warning.
        try withAgent(tlsBlock(pki)) { _, socket in
            let local = try RpcClient.connect(unixPath: socket)
            #expect(try local.call("MachineInfo", MachineInfoRequest(), as: MachineInfoResponse.self).warnings.isEmpty)
            local.close()
        }
    }
}

/// The built lmctfy-agent as a process: a real SIGHUP rotates its certificate.
@Suite(.enabled(if: RealCgroups.available, "\(RealCgroups.unavailableReason ?? "")"))
struct AgentTlsSighupTests {
    /// A TCP port free right now (bound, read, released).
    static func freePort() throws -> UInt16 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { Glibc.close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) == 0 && getsockname(fd, $0, &len) == 0 }
        }
        try #require(bound)
        return UInt16(bigEndian: addr.sin_port)
    }

    @Test func sighupRotatesTheCertificateOfARunningAgent() throws {
        let pki = try makeTestPKI()
        defer { _ = removeTree(pki) }
        let port = try Self.freePort()
        let agent = try AgentProcess(config: tlsBlock(pki).replacingOccurrences(of: "127.0.0.1:0", with: "127.0.0.1:\(port)"))
        defer { agent.stop() }
        var before: RpcClient?
        for _ in 0..<100 where before == nil {
            before = try? RpcClient.connect(host: "127.0.0.1", port: port, tls: clientContext(pki, "admin"))
            if before == nil { usleep(20_000) }
        }
        let old = try #require(before)
        defer { old.close() }
        #expect(old.peerCertificate?.commonName == "agent1")
        try replaceFile(pki + "/agent2.pem", pki + "/agent.pem")
        try replaceFile(pki + "/agent2.key", pki + "/agent.key")
        #expect(kill(agent.pid, SIGHUP) == 0)
        var seen: String?
        let t0 = MonotonicClock.milliseconds()
        while seen != "agent2" && MonotonicClock.milliseconds() - t0 < 5000 {
            let c = try RpcClient.connect(host: "127.0.0.1", port: port, tls: clientContext(pki, "admin"))
            seen = c.peerCertificate?.commonName
            c.close()
            if seen != "agent2" { usleep(20_000) }
        }
        #expect(seen == "agent2", "after SIGHUP new connections get the new certificate")
        #expect(try old.call("Ping", PingRequest(data: [9]), as: PingResponse.self).data == [9], "the old connection survived the SIGHUP")
        #expect(TestProcess.reapIfExited(agent.pid) == nil, "the agent is still running")
    }
}

/// A CRL that parses but cannot serve the CA (another CA's, past its
/// nextUpdate, or revoking our own certificate) is refused when the
/// context loads (at start, and at a SIGHUP, which then keeps the old
/// one): it was taken as a success and then refused every peer; a
/// controller so dropped every agent (a probe).
@Suite struct CrlLoadTests {
    @Test func aCrlThatCannotServeTheCaIsRefusedAtLoad() throws {
        let pki = try makeTestPKI()
        defer { _ = removeTree(pki) }
        let other = try makeTestPKI()
        defer { _ = removeTree(other) }
        try makeCRL(pki, pki + "/good.pem", revoking: ["reader"])
        try makeCRL(other, pki + "/other.pem", revoking: [])
        try makeCRL(pki, pki + "/own.pem", revoking: ["agent"])
        // One a second long, expired by the time it is loaded.
        let db = pki + "/crldb"
        try Sys.mkdir(db, mode: 0o700)
        try Sys.createFile(db + "/index.txt", "", mode: 0o600)
        try Sys.createFile(db + "/crlnumber", "01\n", mode: 0o600)
        try Sys.createFile(db + "/ca.cnf", "[ ca ]\ndefault_ca = t\n[ t ]\ndatabase = \(db)/index.txt\ncrlnumber = \(db)/crlnumber\ndefault_md = sha256\n",
                           mode: 0o600)
        let gen = try TestProcess.capture(["/usr/bin/openssl", "ca", "-config", db + "/ca.cnf", "-cert", pki + "/ca.pem",
                                           "-keyfile", pki + "/ca.key", "-gencrl", "-crlsec", "1", "-out", pki + "/expired-crl.pem"])
        try #require(gen.status == 0, "\(String(decoding: gen.stderr, as: UTF8.self))")
        usleep(2_100_000)
        func load(_ crl: String) throws -> TlsContext {
            try TlsContext(side: .server, certificateFile: pki + "/agent.pem", keyFile: pki + "/agent.key",
                           caFile: pki + "/ca.pem", crlFile: crl)
        }
        _ = try load(pki + "/good.pem")
        for (crl, why) in [("other.pem", "another CA's"), ("expired-crl.pem", "expired"), ("own.pem", "revoking our own")] {
            #expect("\(why)") { _ = try load(pki + "/" + crl) } throws: { error in
                let e = error as? LmctfyError
                return e?.code == .invalidArgument && e?.message.contains("does not serve") == true
            }
        }
    }
}

/// One TCP peer's connections are capped (limits.max_connections_per_peer,
/// default half of max_connections): one more is refused in its handshake
/// saying why (it was accepted, then sent away),
/// others still get in, and one closed makes room. A reader's certificate
/// holding all 256 shut every admin out of the TCP port (the TLS probe).
@Suite(.enabled(if: RealCgroups.available, "\(RealCgroups.unavailableReason ?? "")"))
struct AgentPeerCapTests {
    @Test func oneTcpPeersConnectionsAreCapped() throws {
        let pki = try makeTestPKI()
        defer { _ = removeTree(pki) }
        #expect(try AgentSettings.parse("", source: "t").maxConnectionsPerPeer == 128)
        try withAgent(tlsBlock(pki) + " limits { max_connections_per_peer: 2 }") { agent, _ in
            let port = try #require(agent.tcpPort)
            func connect(_ who: String) throws -> RpcClient { try RpcClient.connect(host: "127.0.0.1", port: port, tls: clientContext(pki, who)) }
            func ping(_ c: RpcClient) throws { _ = try c.call("Ping", PingRequest(data: [1]), as: PingResponse.self) }
            var held = try (0..<2).map { _ in try connect("reader") }
            for c in held { try ping(c) }
            // Refused in the handshake: never accepted, then sent away.
            #expect { let c = try connect("reader"); c.close() } throws: { error in
                "\(error)".contains("too many connections of certificate \"reader\" (limits.max_connections_per_peer 2)")
            }
            let admin = try connect("admin")
            defer { admin.close() }
            try ping(admin)
            held.removeFirst().close()
            var again: RpcClient?
            for _ in 0..<100 where again == nil {
                again = try? connect("reader")
                if let c = again, (try? ping(c)) == nil { c.close(); again = nil; usleep(20_000) }
            }
            #expect(again != nil, "a connection closed made room")
            again?.close()
            for c in held { c.close() }
        }
    }
}

/// A daemon's own certificate is looked at when it starts: one expired (or
/// not yet valid, or with less than a tenth of its lifetime and a week
/// left) is a warning in its log. An agent started with an expired one said
/// nothing, and every peer refused it (the TLS probe).
@Suite struct OwnCertificateWarningTests {
    @Test func anExpiredOrExpiringCertificateIsWarnedAbout() throws {
        let pki = try makeTestPKI()
        defer { _ = removeTree(pki) }
        #expect(Enrolment.certificateWarning(file: pki + "/agent.pem") == nil)
        let expired = try #require(Enrolment.certificateWarning(file: pki + "/expired.pem"))
        #expect(expired.contains("expired") && expired.contains("every peer refuses it"), "\(expired)")
        let info = try Enrolment.certificateInfo(file: pki + "/agent.pem")
        let soon = try #require(Enrolment.certificateWarning(file: pki + "/agent.pem", now: info.notAfter - 3600))
        #expect(soon.contains("expires in 1 h 0 min"), "\(soon)")
        let early = try #require(Enrolment.certificateWarning(file: pki + "/agent.pem", now: info.notBefore - 10))
        #expect(early.contains("not valid for another 10 s"), "\(early)")
        #expect(Enrolment.certificateWarning(file: pki + "/no-such.pem") == nil)
    }
}
