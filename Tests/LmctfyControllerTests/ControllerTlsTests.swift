// The controller over TLS (issue #14, PROTOCOL.md section 3.1): agents dial
// home with their certificates, the host name each registers under must be
// a DNS name of its certificate, and operators reach the controller's TCP
// port with theirs.
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
struct ControllerTlsTests {
    static var repo: String {
        var path = #filePath
        for _ in 0..<3 { path = String(path[..<path.lastIndex(of: "/")!]) }
        return path
    }

    /// The tls block of certificate `name` of the test PKI `pki`.
    static func tls(_ pki: String, _ name: String) -> String {
        "tls { certificate_file: \"\(pki)/\(name).pem\" key_file: \"\(pki)/\(name).key\" ca_file: \"\(pki)/ca.pem\" }"
    }

    /// A started controller in `dir` serving with certificate `cert`, its
    /// TCP client port taking admins by OU.
    static func controller(_ dir: String, _ pki: String, cert: String) throws -> LmctfyController.Controller {
        let settings = try ControllerSettings.parse("""
            unix_socket_path: "\(dir)/controller.sock" agent_address: "127.0.0.1:0" tcp_address: "127.0.0.1:0"
            state_dir: "\(dir)/controller" log_level: LOG_ERROR \(tls(pki, cert))
            role { role: AGENT_ROLE_ADMIN certificate_ou: "admins" }
            """, source: "test")
        #expect(settings.keys.isEmpty, "no key_file needed with client certificates")
        let controller = try LmctfyController.Controller(settings: settings)
        try controller.start(handleSignals: false)
        return controller
    }

    @Test func agentsDialHomeOverTlsAndCannotClaimAnotherHostName() throws {
        let (dir, pki) = try makeDirWithPki("ctls")
        defer { _ = removeTree(dir) }
        let tls = { (name: String) in Self.tls(pki, name) }
        let controller = try Self.controller(dir, pki, cert: "controller")
        defer { #expect(controller.stop() == 0) }
        func agent(_ name: String, _ hostName: String, _ cert: String) throws -> Agent {
            let s = try AgentSettings.parse("""
                unix_socket_path: "\(dir)/\(name).sock" state_dir: "\(dir)/\(name)" log_level: LOG_ERROR
                stats_interval_ms: 0 watch_containers: false reconcile_interval_ms: 0
                controller_address: "127.0.0.1:\(controller.agentPort)" host_name: "\(hostName)" \(tls(cert))
                reconnect_base_ms: 50 reconnect_max_ms: 200
                """, source: name)
            #expect(!s.plaintextTcp && s.controller?.keyId == nil)
            let a = Agent(settings: s, api: try ContainerApi.detect())
            try a.start(handleSignals: false)
            return a
        }
        // agent2's certificate claiming host agent1: the agent's config is
        // refused (a host_name that is not in its certificate)...
        #expect { _ = try agent("impostor", "agent1", "agent2") } throws: { error in
            let e = error as? LmctfyError
            return e?.code == .invalidArgument && e?.message.contains("host_name \"agent1\" is not a DNS name of the tls certificate") == true
        }
        // ...and a peer that registers so all the same is refused at Register.
        let impostor = try RpcClient.connect(host: "127.0.0.1", port: controller.agentPort,
                                             tls: try TlsContext(side: .client, certificateFile: "\(pki)/agent2.pem",
                                                                 keyFile: "\(pki)/agent2.key", caFile: "\(pki)/ca.pem"),
                                             name: "impostor")
        defer { impostor.close() }
        #expect { _ = try impostor.call(ControllerMethods.register, RegisterRequest(identity: HostIdentity(hostName: "agent1"))) }
            throws: { ($0 as? LmctfyError)?.code == .permissionDenied }
        let good = try agent("good", "agent1", "agent")
        defer { #expect(good.stop(graceMs: 1000) == 0) }
        let t0 = MonotonicClock.milliseconds()
        while !good.isRegisteredWithController && MonotonicClock.milliseconds() - t0 < 10_000 { usleep(20_000) }
        #expect(good.isRegisteredWithController)
        #expect(controller.hostCount == 1)

        // An operator with the admin certificate, through the controller's TCP port.
        let port = try #require(controller.clientPort)
        let lmctl = [builtTool("lmctl"), "--controller", "tcp://127.0.0.1:\(port)", "--cert", "\(pki)/admin.pem",
                     "--key", "\(pki)/admin.key", "--ca", "\(pki)/ca.pem"]
        var r = try TestProcess.capture(lmctl + ["hosts"])
        let out = String(decoding: r.stdout, as: UTF8.self)
        #expect(r.status == 0 && out.contains("name=\"agent1\"") && out.split(separator: "\n").count == 1, "\(out)")
        r = try TestProcess.capture(lmctl + ["--host", "agent1", "info"])
        #expect(r.status == 0 && String(decoding: r.stdout, as: UTF8.self).contains("agent_version="))
        // Plaintext on the controller's TLS port: GOAWAY_UNAUTHENTICATED.
        #expect { _ = try RpcClient.connect(host: "127.0.0.1", port: port, keyId: "x", key: Array(repeating: 1, count: 32)) }
            throws: { ($0 as? LmctfyError)?.code == .unauthenticated }
    }

    /// A controller serving a certificate the CA issued to an agent (OU
    /// agents, as every enrolled one): agents do not register with it and
    /// lmctl refuses it (16), though it chains to their CA and names the
    /// address dialled. An enrolled certificate for the controller's name
    /// let its holder stand in for the controller (a probe).
    @Test func aControllerWithAnAgentsCertificateIsRefusedByAgentsAndLmctl() throws {
        let (dir, pki) = try makeDirWithPki("ctls-ou")
        defer { _ = removeTree(dir) }
        // agent2's certificate: OU=agents, names agent2, localhost, 127.0.0.1.
        let controller = try Self.controller(dir, pki, cert: "agent2")
        defer { #expect(controller.stop() == 0) }
        let s = try AgentSettings.parse("""
            unix_socket_path: "\(dir)/a.sock" state_dir: "\(dir)/a" log_level: LOG_ERROR
            stats_interval_ms: 0 watch_containers: false reconcile_interval_ms: 0
            controller_address: "127.0.0.1:\(controller.agentPort)" host_name: "agent1" \(Self.tls(pki, "agent"))
            reconnect_base_ms: 50 reconnect_max_ms: 200
            """, source: "a")
        let agent = Agent(settings: s, api: try ContainerApi.detect())
        try agent.start(handleSignals: false)
        defer { #expect(agent.stop(graceMs: 1000) == 0) }
        usleep(1_500_000)  // many redials (50-200 ms apart)
        #expect(!agent.isRegisteredWithController && controller.hostCount == 0)
        let port = try #require(controller.clientPort)
        let r = try TestProcess.capture([builtTool("lmctl"), "--controller", "tcp://127.0.0.1:\(port)", "--cert", "\(pki)/admin.pem",
                                         "--key", "\(pki)/admin.key", "--ca", "\(pki)/ca.pem", "hosts"])
        let err = String(decoding: r.stderr, as: UTF8.self)
        #expect(r.status == 16 && err.contains("OU=agents"), "\(r.status): \(err)")
    }

    /// Rotation and revocation on the controller (Controller.reloadTls, what
    /// SIGHUP does): a rotated certificate is what new connections get while
    /// the registered agent's link stays; a CRL naming the agent's
    /// certificate closes its link (GOAWAY_UNAUTHENTICATED) and refuses its
    /// next handshakes.
    @Test func aReloadRotatesTheCertificateAndARevokedAgentIsCutOff() throws {
        let dir = "/tmp/lmctfy-ctls-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try Sys.mkdir(dir, mode: 0o755)
        defer { _ = removeTree(dir) }
        let pki = dir + "/pki"
        try #require(try TestProcess.capture([Self.repo + "/tools/make-test-pki", pki]).status == 0)
        try #require(try TestProcess.capture([Self.repo + "/tools/make-test-pki", "--crl", pki, pki + "/crl.pem"]).status == 0)
        let settings = try ControllerSettings.parse("""
            unix_socket_path: "\(dir)/controller.sock" agent_address: "127.0.0.1:0" tcp_address: "127.0.0.1:0"
            state_dir: "\(dir)/controller" log_level: LOG_ERROR
            tls { certificate_file: "\(pki)/controller.pem" key_file: "\(pki)/controller.key" ca_file: "\(pki)/ca.pem"
                  crl_file: "\(pki)/crl.pem" }
            role { role: AGENT_ROLE_ADMIN certificate_ou: "admins" }
            """, source: "test")
        let controller = try LmctfyController.Controller(settings: settings)
        try controller.start(handleSignals: false)
        defer { #expect(controller.stop() == 0) }
        let s = try AgentSettings.parse("""
            unix_socket_path: "\(dir)/a.sock" state_dir: "\(dir)/a" log_level: LOG_ERROR
            stats_interval_ms: 0 watch_containers: false reconcile_interval_ms: 0
            controller_address: "127.0.0.1:\(controller.agentPort)" host_name: "agent1"
            tls { certificate_file: "\(pki)/agent.pem" key_file: "\(pki)/agent.key" ca_file: "\(pki)/ca.pem" }
            reconnect_base_ms: 50 reconnect_max_ms: 200
            """, source: "a")
        let agent = Agent(settings: s, api: try ContainerApi.detect())
        try agent.start(handleSignals: false)
        defer { #expect(agent.stop(graceMs: 1000) == 0) }
        func wait(_ registered: Bool) -> Bool {
            let t0 = MonotonicClock.milliseconds()
            while agent.isRegisteredWithController != registered && MonotonicClock.milliseconds() - t0 < 10_000 { usleep(20_000) }
            return agent.isRegisteredWithController == registered
        }
        #expect(wait(true))
        let port = try #require(controller.clientPort)
        let admin = { try RpcClient.connect(host: "127.0.0.1", port: port, tls: TlsContext(
            side: .client, certificateFile: "\(pki)/admin.pem", keyFile: "\(pki)/admin.key", caFile: "\(pki)/ca.pem")) }
        let before = try admin()
        defer { before.close() }
        #expect(before.peerCertificate?.commonName == "controller")

        // Rotation (agent2's certificate names 127.0.0.1 too).
        try Sys.createFile(pki + "/controller.pem", try Sys.readFile(pki + "/agent2.pem"), mode: 0o600)
        try Sys.createFile(pki + "/controller.key", try Sys.readFile(pki + "/agent2.key"), mode: 0o600)
        #expect(try controller.reloadTls() == 0)
        let after = try admin()
        #expect(after.peerCertificate?.commonName == "agent2")
        after.close()
        #expect(try before.call(ControllerMethods.listHosts, ListHostsRequest()).hosts.count == 1, "the old connection still works")
        #expect(agent.isRegisteredWithController, "the agent's link was not dropped by the rotation")

        // Revocation of the agent's certificate: its link closes and its
        // redials are refused in the handshake.
        try #require(try TestProcess.capture([Self.repo + "/tools/make-test-pki", "--crl", pki, pki + "/crl.pem", "agent"]).status == 0)
        #expect(try controller.reloadTls() == 1)
        #expect(wait(false), "the revoked agent's link is closed")
        usleep(500_000)
        #expect(!agent.isRegisteredWithController && controller.hostCount == 0, "and it cannot register again")
        #expect(try before.call(ControllerMethods.listHosts, ListHostsRequest()).hosts.first?.state == .hostDisconnected)
    }

    /// The built lmctfy-controller: a real SIGHUP rotates its certificate
    /// without dropping an established client, and does not stop it.
    @Test func sighupRotatesTheCertificateOfARunningController() throws {
        let dir = "/tmp/lmctfy-ctls-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try Sys.mkdir(dir, mode: 0o755)
        defer { _ = removeTree(dir) }
        let pki = dir + "/pki"
        try #require(try TestProcess.capture([Self.repo + "/tools/make-test-pki", pki]).status == 0)
        let port = try freePort()
        try Sys.createFile(dir + "/controller.conf", """
            unix_socket_path: "\(dir)/controller.sock" agent_address: "127.0.0.1:0" tcp_address: "127.0.0.1:\(port)"
            state_dir: "\(dir)/controller" log_level: LOG_WARNING
            tls { certificate_file: "\(pki)/controller.pem" key_file: "\(pki)/controller.key" ca_file: "\(pki)/ca.pem" }
            role { role: AGENT_ROLE_ADMIN certificate_ou: "admins" }
            """, mode: 0o600)
        let pid = try TestProcess.spawn([builtTool("lmctfy-controller"), "--config", dir + "/controller.conf"])
        defer { TestProcess.end(pid) }
        let context = try TlsContext(side: .client, certificateFile: "\(pki)/admin.pem", keyFile: "\(pki)/admin.key", caFile: "\(pki)/ca.pem")
        var first: RpcClient?
        for _ in 0..<250 where first == nil {
            first = try? RpcClient.connect(host: "127.0.0.1", port: port, tls: context)
            if first == nil { usleep(20_000) }
        }
        let old = try #require(first)
        defer { old.close() }
        #expect(old.peerCertificate?.commonName == "controller")
        try Sys.createFile(pki + "/controller.pem", try Sys.readFile(pki + "/agent2.pem"), mode: 0o600)
        try Sys.createFile(pki + "/controller.key", try Sys.readFile(pki + "/agent2.key"), mode: 0o600)
        #expect(kill(pid, SIGHUP) == 0)
        var seen: String?
        let t0 = MonotonicClock.milliseconds()
        while seen != "agent2" && MonotonicClock.milliseconds() - t0 < 5000 {
            let c = try RpcClient.connect(host: "127.0.0.1", port: port, tls: context)
            seen = c.peerCertificate?.commonName
            c.close()
            if seen != "agent2" { usleep(20_000) }
        }
        #expect(seen == "agent2", "after SIGHUP new connections get the new certificate")
        #expect(try old.call(ControllerMethods.listHosts, ListHostsRequest()).hosts.isEmpty, "the old connection survived")
        #expect(TestProcess.reapIfExited(pid) == nil, "the controller is still running")
    }
}
