// Renewal (issue #14, PROTOCOL.md section 3.2): an enrolled agent renews its
// certificate before it expires, with Renew on the controller's agent port
// authenticated by its current certificate; the new key and certificate are
// written atomically and reloaded, and the established dial-home link is
// kept while new connections see the new certificate.
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
struct CertificateRenewalTests {
    @Test func theRenewalThresholdIsAShareOfTheLifetime() {
        #expect(!Enrolment.isRenewalDue(notBefore: 0, notAfter: 300, now: 100, percent: 33))
        #expect(!Enrolment.isRenewalDue(notBefore: 0, notAfter: 300, now: 200, percent: 33), "a third left: not yet")
        #expect(Enrolment.isRenewalDue(notBefore: 0, notAfter: 300, now: 202, percent: 33))
        #expect(Enrolment.isRenewalDue(notBefore: 0, notAfter: 300, now: 400, percent: 33), "expired: due")
        #expect(!Enrolment.isRenewalDue(notBefore: 0, notAfter: 300, now: 299, percent: 0), "0: never")
        #expect(Enrolment.isRenewalDue(notBefore: 0, notAfter: 300, now: 1, percent: 100), "100: always")
    }

    @Test func anEnrolledAgentRenewsItsCertificateKeepingItsLink() throws {
        let (dir, pki) = try makeDirWithPki("renew")
        defer { _ = removeTree(dir) }
        try Sys.createFile(dir + "/tokens", "tok-r1-padding-16 \(Int(time(nil)) + 3600) renew1\n", mode: 0o600)
        let controller = try LmctfyController.Controller(settings: try ControllerSettings.parse("""
            unix_socket_path: "\(dir)/controller.sock" agent_address: "127.0.0.1:0" enroll_address: "127.0.0.1:0"
            state_dir: "\(dir)/controller" log_level: LOG_ERROR
            tls { certificate_file: "\(pki)/controller.pem" key_file: "\(pki)/controller.key" ca_file: "\(pki)/ca.pem" }
            signing_ca_certificate_file: "\(pki)/ca.pem" signing_ca_key_file: "\(pki)/ca.key"
            bootstrap_token_file: "\(dir)/tokens" enrolled_certificate_days: 3
            """, source: "test"))
        try controller.start(handleSignals: false)
        defer { #expect(controller.stop() == 0) }
        let enrollPort = try #require(controller.enrollPort)
        try Sys.mkdir(dir + "/a", mode: 0o700)
        try Sys.createFile(dir + "/a/token", "tok-r1-padding-16\n", mode: 0o600)
        let base = """
            unix_socket_path: "\(dir)/a.sock" state_dir: "\(dir)/a/state" log_level: LOG_ERROR
            stats_interval_ms: 0 watch_containers: false reconcile_interval_ms: 0
            controller_address: "127.0.0.1:\(controller.agentPort)" host_name: "renew1" tcp_address: "127.0.0.1:0"
            tls { certificate_file: "\(dir)/a/cert.pem" key_file: "\(dir)/a/key.pem" ca_file: "\(pki)/ca.pem" }
            bootstrap_token_file: "\(dir)/a/token" controller_enroll_address: "127.0.0.1:\(enrollPort)"
            reconnect_base_ms: 50 reconnect_max_ms: 200
            """
        // The threshold at 100%: the certificate is due as soon as it is valid.
        let configText = base + " renew_before_expiry_percent: 100"
        let config = try AgentConfig(textFormat: configText)
        #expect(try AgentEnrolment.enrollIfNeeded(config, source: "a"))
        let first = try Enrolment.certificateInfo(file: dir + "/a/cert.pem")
        #expect(first.notAfter - first.notBefore == 3 * 86400 + 300)
        // The default third: a fresh certificate is not due (nothing is called).
        #expect(try AgentEnrolment.renewIfDue(config, percent: 33, now: Int64(time(nil))) == nil)
        #expect(try AgentSettings.parse(base, source: "a").renewBeforeExpiryPercent == 33)
        #expect(try AgentSettings.parse(configText, source: "a").renewBeforeExpiryPercent == 100)
        #expect { _ = try AgentSettings.parse(base + " renew_before_expiry_percent: 101", source: "a") }
            throws: { ($0 as? LmctfyError)?.message.contains("renew_before_expiry_percent") == true }

        let agent = Agent(settings: try AgentSettings.parse(configText, source: "a"), api: try ContainerApi.detect())
        try agent.start(handleSignals: false)
        defer { #expect(agent.stop(graceMs: 1000) == 0) }
        let t0 = MonotonicClock.milliseconds()
        while !agent.isRegisteredWithController && MonotonicClock.milliseconds() - t0 < 10_000 { usleep(20_000) }
        try #require(agent.isRegisteredWithController && controller.hostCount == 1)
        let agentPort = try #require(agent.tcpPort)
        func dialAgent() throws -> RpcClient {
            try RpcClient.connect(host: "127.0.0.1", port: agentPort,
                                  tls: TlsContext(side: .client, certificateFile: "\(pki)/admin.pem", keyFile: "\(pki)/admin.key", caFile: "\(pki)/ca.pem"),
                                  serverName: "renew1")
        }
        let before = try dialAgent()
        defer { before.close() }
        #expect(before.peerCertificateSerial == first.serial)
        let operatorClient = try RpcClient.connect(unixPath: dir + "/controller.sock")
        defer { operatorClient.close() }
        let hostsBefore = try operatorClient.call(ControllerMethods.listHosts, ListHostsRequest()).hosts

        // Renewed: a new serial in the file, the key still private.
        let serial = try #require(try agent.renewCertificateIfDue())
        let renewed = try Enrolment.certificateInfo(file: dir + "/a/cert.pem")
        #expect(serial == renewed.serial && serial != first.serial)
        var st = stat()
        #expect(stat("\(dir)/a/key.pem", &st) == 0 && st.st_mode & 0o777 == 0o600)
        #expect(!Sys.exists("\(dir)/a/key.pem.enrol") && !Sys.exists("\(dir)/a/cert.pem.enrol"))
        #expect(try TestProcess.capture(["/usr/bin/openssl", "verify", "-CAfile", "\(pki)/ca.pem", "\(dir)/a/cert.pem"]).status == 0)

        // The dial-home link stayed up: still registered, the same host
        // entry (not a re-registration), and a routed call works.
        usleep(200_000)
        #expect(agent.isRegisteredWithController && controller.hostCount == 1)
        let hostsAfter = try operatorClient.call(ControllerMethods.listHosts, ListHostsRequest()).hosts
        #expect(hostsAfter.count == 1 && hostsAfter.first?.state == .hostConnected)
        #expect(hostsAfter.first?.stateSinceNs == hostsBefore.first?.stateSinceNs, "the link was not replaced")
        let routed = try RpcClient.connect(unixPath: dir + "/controller.sock")
        defer { routed.close() }
        routed.host = "renew1"
        _ = try routed.call(AgentMethods.ping, PingRequest())
        // The connection made before still works; a new one sees the new certificate.
        _ = try before.call(AgentMethods.ping, PingRequest())
        let after = try dialAgent()
        defer { after.close() }
        #expect(after.peerCertificateSerial == renewed.serial)

        // Renew with the agent's certificate for another host: PERMISSION_DENIED.
        let asAgent = try RpcClient.connect(host: "127.0.0.1", port: controller.agentPort,
                                            tls: TlsContext(side: .client, certificateFile: "\(dir)/a/cert.pem", keyFile: "\(dir)/a/key.pem",
                                                            caFile: "\(pki)/ca.pem"))
        defer { asAgent.close() }
        let other = try Enrolment.makeKeyAndRequest(hostName: "renew2")
        #expect { _ = try asAgent.call(ControllerMethods.renew, RenewRequest(csrPem: other.csrPem)) }
            throws: { ($0 as? LmctfyError)?.code == .permissionDenied && "\($0)".contains("another host") }
        // For its own host: a certificate.
        let mine = try Enrolment.makeKeyAndRequest(hostName: "renew1")
        #expect(try asAgent.call(ControllerMethods.renew, RenewRequest(csrPem: mine.csrPem)).certificatePem?.contains("BEGIN CERTIFICATE") == true)
        // Without a client certificate: the agent port's handshake refuses
        // it, and the enrolment port serves Enroll only.
        #expect(throws: LmctfyError.self) {
            let c = try RpcClient.connect(host: "127.0.0.1", port: controller.agentPort,
                                          tls: TlsContext(side: .client, certificateFile: nil, keyFile: nil, caFile: "\(pki)/ca.pem"))
            defer { c.close() }
            _ = try c.call(ControllerMethods.renew, RenewRequest(csrPem: mine.csrPem))
        }
        let anonymous = try RpcClient.connect(host: "127.0.0.1", port: enrollPort,
                                              tls: TlsContext(side: .client, certificateFile: nil, keyFile: nil, caFile: "\(pki)/ca.pem"))
        defer { anonymous.close() }
        #expect { _ = try anonymous.call(ControllerMethods.renew, RenewRequest(csrPem: mine.csrPem)) }
            throws: { ($0 as? LmctfyError)?.code == .permissionDenied }
    }
}
