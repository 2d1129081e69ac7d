// Enrolment (issue #14, PROTOCOL.md section 3.2): an agent with a one-time
// bootstrap token and the CA's certificate gets its certificate signed by
// the controller's CA on enroll_address, then registers over mutual TLS;
// tokens are single-use and expire, and one cannot enrol another host.
import Glibc
import LmctfyAgent
import LmctfyController
import LmctfyProto
import LmctfyRPC
import LmctfySystem
import Lmctfy
import LmctfyTestSupport
import Testing

@Suite(.enabled(if: RealCgroups.available, "\(RealCgroups.unavailableReason ?? "")"))
struct EnrolmentTests {
    @Test func anAgentEnrolsOnceWithItsTokenAndThenRegistersOverMutualTls() throws {
        let (dir, pki) = try makeDirWithPki("enrol")
        defer { _ = removeTree(dir) }
        let now = Int(time(nil))
        try Sys.createFile(dir + "/tokens", """
            # token expiry host
            tok-agent7-padding-16 \(now + 3600) agent7
            tok-old-padding-16 \(now - 10) agent7
            tok-any-padding-16 \(now + 3600)
            """, mode: 0o600)
        let settings = try ControllerSettings.parse("""
            unix_socket_path: "\(dir)/controller.sock" agent_address: "127.0.0.1:0" enroll_address: "127.0.0.1:0"
            state_dir: "\(dir)/controller" log_level: LOG_ERROR
            tls { certificate_file: "\(pki)/controller.pem" key_file: "\(pki)/controller.key" ca_file: "\(pki)/ca.pem" }
            signing_ca_certificate_file: "\(pki)/ca.pem" signing_ca_key_file: "\(pki)/ca.key"
            bootstrap_token_file: "\(dir)/tokens" enrolled_certificate_days: 7
            """, source: "test")
        let controller = try LmctfyController.Controller(settings: settings)
        try controller.start(handleSignals: false)
        defer { #expect(controller.stop() == 0) }
        let enrollPort = try #require(controller.enrollPort)

        func agentText(_ name: String, token: String, host: String) throws -> String {
            try Sys.mkdir(dir + "/" + name, mode: 0o700)
            try Sys.createFile("\(dir)/\(name)/token", token + "\n", mode: 0o600)
            return """
                unix_socket_path: "\(dir)/\(name).sock" state_dir: "\(dir)/\(name)/state" log_level: LOG_ERROR
                stats_interval_ms: 0 watch_containers: false reconcile_interval_ms: 0
                controller_address: "127.0.0.1:\(controller.agentPort)" host_name: "\(host)"
                tls { certificate_file: "\(dir)/\(name)/cert.pem" key_file: "\(dir)/\(name)/key.pem" ca_file: "\(pki)/ca.pem" }
                bootstrap_token_file: "\(dir)/\(name)/token" controller_enroll_address: "127.0.0.1:\(enrollPort)"
                reconnect_base_ms: 50 reconnect_max_ms: 200
                """
        }
        func agentConfig(_ name: String, token: String, host: String) throws -> AgentConfig {
            try AgentConfig(textFormat: try agentText(name, token: token, host: host))
        }

        // Enrols: a key (0600) and a certificate for agent7 signed by the CA.
        let configText = try agentText("a7", token: "tok-agent7-padding-16", host: "agent7")
        let config = try AgentConfig(textFormat: configText)
        #expect(AgentEnrolment.isPending(config))
        #expect(try AgentEnrolment.enrollIfNeeded(config, source: "a7"))
        #expect(!AgentEnrolment.isPending(config))
        var st = stat()
        #expect(stat("\(dir)/a7/key.pem", &st) == 0 && st.st_mode & 0o777 == 0o600)
        let text = try TestProcess.capture(["/usr/bin/openssl", "x509", "-in", "\(dir)/a7/cert.pem", "-noout", "-text"])
        let out = String(decoding: text.stdout, as: UTF8.self)
        #expect(out.contains("CN = agent7") && out.contains("DNS:agent7") && out.contains("CA:FALSE")
                && out.contains("TLS Web Client Authentication") && out.contains("Issuer: CN = lmctfy test CA"), "\(out)")
        #expect(try TestProcess.capture(["/usr/bin/openssl", "verify", "-CAfile", "\(pki)/ca.pem", "\(dir)/a7/cert.pem"]).status == 0)
        #expect(try Sys.readFile("\(dir)/controller/enroll-spent").split(separator: "\n").count == 1, "spent durably")

        // Then it starts and registers over mutual TLS with that certificate.
        let agent = Agent(settings: try AgentSettings.parse(configText, source: "a7"), api: try ContainerApi.detect())
        try agent.start(handleSignals: false)
        defer { #expect(agent.stop(graceMs: 1000) == 0) }
        let t0 = MonotonicClock.milliseconds()
        while !agent.isRegisteredWithController && MonotonicClock.milliseconds() - t0 < 10_000 { usleep(20_000) }
        #expect(agent.isRegisteredWithController && controller.hostCount == 1)

        // The same token again (the certificate gone): UNAUTHENTICATED.
        let again = try agentConfig("a7b", token: "tok-agent7-padding-16", host: "agent7")
        #expect { try AgentEnrolment.enrollIfNeeded(again, source: "a7b") }
            throws: { ($0 as? LmctfyError)?.code == .unauthenticated && "\($0)".contains("already used") }
        // An expired token: UNAUTHENTICATED.
        let old = try agentConfig("old", token: "tok-old-padding-16", host: "agent7")
        #expect { try AgentEnrolment.enrollIfNeeded(old, source: "old") }
            throws: { ($0 as? LmctfyError)?.code == .unauthenticated && "\($0)".contains("expired") }
        // A token bound to agent7 cannot enrol agent8: PERMISSION_DENIED.
        try Sys.createFile(dir + "/tokens", try Sys.readFile(dir + "/tokens") + "\ntok-7b-padding-16 \(now + 3600) agent7\n", mode: 0o600)
        let other = try agentConfig("a8", token: "tok-7b-padding-16", host: "agent8")
        #expect { try AgentEnrolment.enrollIfNeeded(other, source: "a8") }
            throws: { ($0 as? LmctfyError)?.code == .permissionDenied }
        #expect(!Sys.exists("\(dir)/a8/cert.pem") && !Sys.exists("\(dir)/a8/key.pem"))

        // A certificate request for another name than the host asked for:
        // PERMISSION_DENIED, and the token stays unspent.
        let client = try RpcClient.connect(host: "127.0.0.1", port: enrollPort,
                                           tls: TlsContext(side: .client, certificateFile: nil, keyFile: nil, caFile: "\(pki)/ca.pem"))
        defer { client.close() }
        let forOther = try Enrolment.makeKeyAndRequest(hostName: "agent10")
        #expect { _ = try client.call(ControllerMethods.enroll, EnrollRequest(token: "tok-any-padding-16", hostName: "agent9", csrPem: forOther.csrPem)) }
            throws: { ($0 as? LmctfyError)?.code == .permissionDenied && "\($0)".contains("another host") }
        #expect { _ = try client.call(ControllerMethods.enroll, EnrollRequest(token: "tok-any-padding-16", hostName: "agent9", csrPem: "junk")) }
            throws: { ($0 as? LmctfyError)?.code == .invalidArgument }
        // Nothing but Enroll on the enrolment port.
        #expect { _ = try client.call(ControllerMethods.listHosts, ListHostsRequest()) }
            throws: { ($0 as? LmctfyError)?.code == .permissionDenied }
        // A token naming no host cannot enrol one that is registered (agent7
        // is): its certificate would let the caller take agent7's place.
        let impostor = try Enrolment.makeKeyAndRequest(hostName: "agent7")
        #expect { _ = try client.call(ControllerMethods.enroll, EnrollRequest(token: "tok-any-padding-16", hostName: "agent7", csrPem: impostor.csrPem)) }
            throws: { ($0 as? LmctfyError)?.code == .permissionDenied && "\($0)".contains("host agent7 is registered already") }
        // Nor under another case: DNS names, and a certificate's check,
        // ignore it (the TLS probe enrolled "Probehost1" this way).
        let shouting = try Enrolment.makeKeyAndRequest(hostName: "Agent7")
        #expect { _ = try client.call(ControllerMethods.enroll, EnrollRequest(token: "tok-any-padding-16", hostName: "Agent7", csrPem: shouting.csrPem)) }
            throws: { ($0 as? LmctfyError)?.code == .permissionDenied && "\($0)".contains("is registered already") }
        // Nor the controller's own names (its certificate's: controller,
        // localhost): signed by the CA agents and lmctl check the controller
        // against, such a certificate let the token's holder stand in for
        // the controller (a probe).
        for own in ["controller", "localhost", "LocalHost"] {
            let req = try Enrolment.makeKeyAndRequest(hostName: own)
            #expect { _ = try client.call(ControllerMethods.enroll, EnrollRequest(token: "tok-any-padding-16", hostName: own, csrPem: req.csrPem)) }
                throws: { ($0 as? LmctfyError)?.code == .permissionDenied && "\($0)".contains("the controller's own") }
        }
        let mine = try Enrolment.makeKeyAndRequest(hostName: "agent9")
        let r = try client.call(ControllerMethods.enroll, EnrollRequest(token: "tok-any-padding-16", hostName: "agent9", csrPem: mine.csrPem))
        #expect(r.certificatePem?.contains("BEGIN CERTIFICATE") == true)
        // Key and certificate paths in a directory that does not exist:
        // refused before the token is sent (it was spent for a certificate
        // the agent could not write; a probe), so it enrols once it exists.
        try Sys.createFile(dir + "/tokens", try Sys.readFile(dir + "/tokens") + "\ntok-dir-padding-16 \(now + 3600) agent11\n", mode: 0o600)
        var missing = try agentConfig("a11", token: "tok-dir-padding-16", host: "agent11")
        missing.tls?.certificateFile = "\(dir)/a11/no/such/cert.pem"
        missing.tls?.keyFile = "\(dir)/a11/no/such/key.pem"
        #expect { try AgentEnrolment.enrollIfNeeded(missing, source: "a11") }
            throws: { ($0 as? LmctfyError)?.code == .failedPrecondition && "\($0)".contains("does not exist or cannot be written") }
        try Sys.mkdir("\(dir)/a11/no", mode: 0o700)
        try Sys.mkdir("\(dir)/a11/no/such", mode: 0o700)
        #expect(try AgentEnrolment.enrollIfNeeded(missing, source: "a11"))
        // Token lines: CRLF endings and tabs parse (a CRLF line bound its
        // token to host "agent12\r\n"); a token on two lines is refused
        // (which host it is for cannot be told); a file others may read is
        // UNAVAILABLE, its path and mode only in the controller's log (an
        // unauthenticated peer was told "Private key <path> is readable").
        try Sys.createFile(dir + "/tokens", try Sys.readFile(dir + "/tokens")
                           + "\ntok-crlf-padding-16 \(now + 3600) agent12\r\ntok-tab-padding-16\t\(now + 3600)\n"
                           + "tok-dup-padding-16 \(now + 3600) agent14\ntok-dup-padding-16 \(now + 3600) agent15\nnot a token line at all\n", mode: 0o600)
        for (token, host) in [("tok-crlf-padding-16", "agent12"), ("tok-tab-padding-16", "agent13")] {
            let req = try Enrolment.makeKeyAndRequest(hostName: host)
            #expect(throws: Never.self, "\(token)") {
                _ = try client.call(ControllerMethods.enroll, EnrollRequest(token: token, hostName: host, csrPem: req.csrPem))
            }
        }
        let dup = try Enrolment.makeKeyAndRequest(hostName: "agent14")
        #expect { _ = try client.call(ControllerMethods.enroll, EnrollRequest(token: "tok-dup-padding-16", hostName: "agent14", csrPem: dup.csrPem)) }
            throws: { ($0 as? LmctfyError)?.code == .unauthenticated }
        chmod(dir + "/tokens", 0o644)
        #expect { _ = try client.call(ControllerMethods.enroll, EnrollRequest(token: "tok-dup-padding-16", hostName: "agent14", csrPem: dup.csrPem)) }
            throws: { ($0 as? LmctfyError)?.code == .unavailable && !"\($0)".contains(dir) }
        chmod(dir + "/tokens", 0o600)
        // And no one without a certificate gets onto the agent port.
        #expect(throws: LmctfyError.self) {
            let c = try RpcClient.connect(host: "127.0.0.1", port: controller.agentPort,
                                          tls: TlsContext(side: .client, certificateFile: nil, keyFile: nil, caFile: "\(pki)/ca.pem"))
            _ = try c.call(ControllerMethods.listHosts, ListHostsRequest())
        }
    }

    /// Connections to the enrolment port are not authenticated by their
    /// hello (only an Enroll's token is), so they count against
    /// max_handshaking_connections for as long as they are open: anyone
    /// who could reach the port could hold any number of them otherwise.
    @Test func enrolmentConnectionsStayWithinTheHandshakeBudget() throws {
        let (dir, pki) = try makeDirWithPki("enrol")
        defer { _ = removeTree(dir) }
        try Sys.createFile(dir + "/tokens", "tok-handshake-budget \(Int(time(nil)) + 3600)\n", mode: 0o600)
        let settings = try ControllerSettings.parse("""
            unix_socket_path: "\(dir)/controller.sock" agent_address: "127.0.0.1:0" enroll_address: "127.0.0.1:0"
            state_dir: "\(dir)/controller" log_level: LOG_ERROR
            tls { certificate_file: "\(pki)/controller.pem" key_file: "\(pki)/controller.key" ca_file: "\(pki)/ca.pem" }
            signing_ca_certificate_file: "\(pki)/ca.pem" signing_ca_key_file: "\(pki)/ca.key"
            bootstrap_token_file: "\(dir)/tokens"
            limits { max_handshaking_connections: 2 hello_timeout_ms: 60000 }
            """, source: "test")
        let controller = try LmctfyController.Controller(settings: settings)
        try controller.start(handleSignals: false)
        defer { #expect(controller.stop() == 0) }
        let port = try #require(controller.enrollPort)
        let tls = try TlsContext(side: .client, certificateFile: nil, keyFile: nil, caFile: "\(pki)/ca.pem")
        let first = try RpcClient.connect(host: "127.0.0.1", port: port, tls: tls)
        let second = try RpcClient.connect(host: "127.0.0.1", port: port, tls: tls)
        defer { second.close() }
        // Two open, both past their hello: a third is refused.
        #expect(throws: LmctfyError.self) { try RpcClient.connect(host: "127.0.0.1", port: port, tls: tls).close() }
        first.close()
        var admitted = false
        for _ in 0..<100 where !admitted {
            if let c = try? RpcClient.connect(host: "127.0.0.1", port: port, tls: tls) {
                admitted = true
                c.close()
            } else {
                usleep(20_000)
            }
        }
        #expect(admitted, "a place again once one closed")
    }

    @Test func enrolmentConfigIsChecked() throws {
        let (dir, pki) = try makeDirWithPki("enrol")
        defer { _ = removeTree(dir) }
        try Sys.createFile(dir + "/tokens", "t 1\n", mode: 0o644)
        let base = """
            unix_socket_path: "\(dir)/c.sock" agent_address: "127.0.0.1:0" enroll_address: "127.0.0.1:0" state_dir: "\(dir)/c"
            tls { certificate_file: "\(pki)/controller.pem" key_file: "\(pki)/controller.key" ca_file: "\(pki)/ca.pem" }
            """
        #expect { _ = try ControllerSettings.parse(base, source: "t") }
            throws: { ($0 as? LmctfyError)?.message.contains("signing_ca_certificate_file") == true }
        #expect { _ = try ControllerSettings.parse(base + " signing_ca_certificate_file: \"\(pki)/ca.pem\" signing_ca_key_file: \"\(pki)/ca.key\" bootstrap_token_file: \"\(dir)/tokens\"", source: "t") }
            throws: { ($0 as? LmctfyError)?.code == .failedPrecondition }  // the token file is readable by others
    }
}

/// The built lmctfy-agent enrolling on its first start (what an operator
/// runs): it registers over mutual TLS with the certificate it got; started
/// again with a spent token and no certificate, it exits 3 saying why.
@Suite(.enabled(if: RealCgroups.available, "\(RealCgroups.unavailableReason ?? "")"))
struct EnrolmentProcessTests {
    @Test func theAgentBinaryEnrolsOnItsFirstStartAndRefusesASpentToken() throws {
        let (dir, pki) = try makeDirWithPki("enrolp")
        defer { _ = removeTree(dir) }
        try Sys.createFile(dir + "/tokens", "tok-p1-padding-16 \(Int(time(nil)) + 600) procagent1\n", mode: 0o600)
        let controller = try signingController(dir, pki)
        defer { #expect(controller.stop() == 0) }
        let enrollPort = try #require(controller.enrollPort)
        try Sys.mkdir(dir + "/agent", mode: 0o700)
        try Sys.createFile(dir + "/agent/token", "tok-p1-padding-16\n", mode: 0o600)
        try Sys.createFile(dir + "/agent.conf", """
            unix_socket_path: "\(dir)/agent.sock" state_dir: "\(dir)/agent/state" log_level: LOG_WARNING
            stats_interval_ms: 0 watch_containers: false reconcile_interval_ms: 0
            controller_address: "127.0.0.1:\(controller.agentPort)" host_name: "procagent1"
            tls { certificate_file: "\(dir)/agent/cert.pem" key_file: "\(dir)/agent/key.pem" ca_file: "\(pki)/ca.pem" }
            bootstrap_token_file: "\(dir)/agent/token" controller_enroll_address: "127.0.0.1:\(enrollPort)"
            reconnect_base_ms: 50 reconnect_max_ms: 200
            """)
        let check = try TestProcess.capture([builtTool("lmctfy-agent"), "--check-config", "--config", dir + "/agent.conf"])
        #expect(check.status == 0 && String(decoding: check.stdout, as: UTF8.self).contains("it will enrol"))
        let pid = try TestProcess.spawn([builtTool("lmctfy-agent"), "--config", dir + "/agent.conf"])
        var exited = false
        defer {
            if !exited {
                kill(pid, SIGTERM)
                var done = false
                for _ in 0..<500 where !done {
                    done = TestProcess.reapIfExited(pid) != nil
                    if !done { usleep(10_000) }
                }
                if !done { TestProcess.end(pid) }
            }
        }
        let t0 = MonotonicClock.milliseconds()
        while controller.hostCount == 0 && MonotonicClock.milliseconds() - t0 < 10_000 { usleep(20_000) }
        #expect(controller.hostCount == 1, "the agent enrolled and registered")
        #expect(Sys.exists(dir + "/agent/cert.pem") && Sys.exists(dir + "/agent/key.pem"))
        kill(pid, SIGTERM)
        var status: LmctfySystem.ExitStatus?
        for _ in 0..<500 where status == nil {
            status = TestProcess.reapIfExited(pid)
            if status == nil { usleep(10_000) }
        }
        exited = status != nil
        #expect(status == .exited(0))

        // Its certificate gone, the same token: exit 3, UNAUTHENTICATED's message.
        _ = unlink(dir + "/agent/cert.pem")
        let r = try TestProcess.capture([builtTool("lmctfy-agent"), "--config", dir + "/agent.conf"])
        #expect(r.status == 3 && String(decoding: r.stderr, as: UTF8.self).contains("already used"),
                "\(r.status): \(String(decoding: r.stderr, as: UTF8.self))")
    }
}

/// A fresh directory /tmp/lmctfy-PREFIX-... holding a test PKI in `pki`
/// (tools/make-test-pki); the caller removes it.
/// A started controller that enrols agents (tokens in `dir`/tokens),
/// signing with `pki`/`ca`.pem, with `extra` config.
func signingController(_ dir: String, _ pki: String, ca: String = "ca", extra: String = "") throws -> LmctfyController.Controller {
    let controller = try LmctfyController.Controller(settings: try ControllerSettings.parse("""
        unix_socket_path: "\(dir)/controller.sock" agent_address: "127.0.0.1:0" enroll_address: "127.0.0.1:0"
        state_dir: "\(dir)/controller" log_level: LOG_ERROR
        tls { certificate_file: "\(pki)/controller.pem" key_file: "\(pki)/controller.key" ca_file: "\(pki)/ca.pem" }
        signing_ca_certificate_file: "\(pki)/\(ca).pem" signing_ca_key_file: "\(pki)/\(ca).key" bootstrap_token_file: "\(dir)/tokens"
        \(extra)
        """, source: "test"))
    try controller.start(handleSignals: false)
    return controller
}

func makeDirWithPki(_ prefix: String) throws -> (dir: String, pki: String) {
    let dir = "/tmp/lmctfy-\(prefix)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    try Sys.mkdir(dir, mode: 0o755)
    let pki = dir + "/pki"
    let made = try TestProcess.capture([ControllerTlsTests.repo + "/tools/make-test-pki", pki])
    guard made.status == 0 else {
        _ = removeTree(dir)
        throw LmctfyError(.internal, "make-test-pki failed: \(String(decoding: made.stderr, as: UTF8.self))")
    }
    return (dir, pki)
}

/// The TLS probe's enrolment and renewal findings.
@Suite struct EnrolmentTrustTests {
    /// A certificate the controller gives that does not chain to the
    /// agent's ca_file (a controller signing with another CA) is not
    /// installed: it was, and no peer accepted it.
    @Test func anEnrolledCertificateThatDoesNotChainToTheCaIsNotInstalled() throws {
        let (dir, pki) = try makeDirWithPki("enrolca")
        defer { _ = removeTree(dir) }
        try Sys.createFile(dir + "/tokens", "tok-ca-padding-16 \(Int(time(nil)) + 600) caagent1\n", mode: 0o600)
        let controller = try signingController(dir, pki, ca: "other-ca")
        defer { #expect(controller.stop() == 0) }
        let enrollPort = try #require(controller.enrollPort)
        try Sys.mkdir(dir + "/a", mode: 0o700)
        try Sys.createFile(dir + "/a/token", "tok-ca-padding-16\n", mode: 0o600)
        let config = try AgentConfig(textFormat: """
            unix_socket_path: "\(dir)/a.sock" state_dir: "\(dir)/a/state" log_level: LOG_ERROR
            controller_address: "127.0.0.1:\(controller.agentPort)" host_name: "caagent1"
            tls { certificate_file: "\(dir)/a/cert.pem" key_file: "\(dir)/a/key.pem" ca_file: "\(pki)/ca.pem" }
            bootstrap_token_file: "\(dir)/a/token" controller_enroll_address: "127.0.0.1:\(enrollPort)"
            """)
        #expect { try AgentEnrolment.enrollIfNeeded(config, source: "a") }
            throws: { ($0 as? LmctfyError)?.code == .failedPrecondition && "\($0)".contains("does not chain to") }
        #expect(!Sys.exists(dir + "/a/cert.pem") && !Sys.exists(dir + "/a/key.pem"), "installed")
    }

    /// Renew refuses a certificate a role binding makes a reader's, as
    /// Register does: it gave one an agent certificate (OU=agents) for its
    /// name, which then registered that host.
    @Test func renewRefusesAReadersCertificate() throws {
        let (dir, pki) = try makeDirWithPki("renewreader")
        defer { _ = removeTree(dir) }
        // A reader's certificate that names a host (DNS), signed by the CA.
        let req = try TestProcess.capture(["/usr/bin/openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                                           "-keyout", dir + "/mon.key", "-out", dir + "/mon.csr", "-subj", "/CN=monitor/OU=readers"])
        try #require(req.status == 0, "\(String(decoding: req.stderr, as: UTF8.self))")
        try Sys.createFile(dir + "/ext", "subjectAltName=DNS:monitor-box\nextendedKeyUsage=clientAuth\n")
        let sign = try TestProcess.capture(["/usr/bin/openssl", "x509", "-req", "-in", dir + "/mon.csr", "-CA", pki + "/ca.pem", "-CAkey", pki + "/ca.key",
                                            "-CAcreateserial", "-days", "2", "-extfile", dir + "/ext", "-out", dir + "/mon.pem"])
        try #require(sign.status == 0, "\(String(decoding: sign.stderr, as: UTF8.self))")
        chmod(dir + "/mon.key", 0o600)
        try Sys.createFile(dir + "/tokens", "tok-unused-padding-16 \(Int(time(nil)) + 600) nobody\n", mode: 0o600)
        let controller = try signingController(dir, pki, extra: "role { role: AGENT_ROLE_READER certificate_ou: \"readers\" }")
        defer { #expect(controller.stop() == 0) }
        let client = try RpcClient.connect(host: "127.0.0.1", port: controller.agentPort,
                                           tls: TlsContext(side: .client, certificateFile: dir + "/mon.pem", keyFile: dir + "/mon.key", caFile: pki + "/ca.pem"))
        defer { client.close() }
        let csr = try Enrolment.makeKeyAndRequest(hostName: "monitor-box")
        #expect { _ = try client.call(ControllerMethods.renew, RenewRequest(csrPem: csr.csrPem)) }
            throws: { ($0 as? LmctfyError)?.code == .permissionDenied && "\($0)".contains("reader role") }
    }
}
