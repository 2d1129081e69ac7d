// Enrolment, the agent's side (PROTOCOL.md section 3.2; kubelet's TLS
// bootstrap is the model): started with a one-time bootstrap token and the
// CA's certificate but no certificate of its own, the agent makes its key,
// asks the controller's enroll_address to sign a request for its host name,
// and writes the key and the certificate where tls { } says, before the
// settings (which load them) are made.
import Glibc
import LmctfyProto
import LmctfyRPC
import LmctfySystem

public enum AgentEnrolment {
    /// Whether `c` asks to enrol now: bootstrap_token_file is set and
    /// tls.certificate_file does not exist yet.
    public static func isPending(_ c: AgentConfig) -> Bool {
        guard c.bootstrapTokenFile != nil, let cert = c.tls?.certificateFile else { return false }
        return !Sys.exists(cert)
    }

    /// Enrols when `isPending`: a new EC P-256 key, a certificate request
    /// for host_name (default: the machine's), Enroll on
    /// controller_enroll_address over TLS verified against tls.ca_file with
    /// the token (the first word of bootstrap_token_file, which must be
    /// private), then the key (0600) and the certificate written atomically
    /// to tls.key_file and tls.certificate_file. Returns whether it enrolled.
    /// Throws INVALID_ARGUMENT for a config lacking what enrolment needs, and
    /// the controller's refusal (UNAUTHENTICATED for a bad token,
    /// PERMISSION_DENIED for another host's) as it comes.
    @discardableResult
    public static func enrollIfNeeded(_ c: AgentConfig, source: String) throws(LmctfyError) -> Bool {
        guard isPending(c), let tokenFile = c.bootstrapTokenFile else { return false }
        guard let t = c.tls, let certFile = t.certificateFile, let keyFile = t.keyFile, let caFile = t.caFile else {
            throw .invalidArgument("\(source): bootstrap_token_file needs tls { certificate_file key_file ca_file }")
        }
        guard let address = c.controllerEnrollAddress, let colon = address.lastIndex(of: ":"),
              let port = UInt16(address[address.index(after: colon)...]) else {
            throw .invalidArgument("\(source): bootstrap_token_file needs controller_enroll_address (host:port)")
        }
        let host = String(address[..<colon])
        try checkWritable(keyFile: keyFile, certFile: certFile, source: source)
        try TlsContext.checkPrivate(tokenFile, what: "Bootstrap token file")
        let text: String
        do { text = try Sys.readFile(tokenFile) } catch { throw error.lmctfy(.notFound, "Reading bootstrap_token_file") }
        guard let token = text.split(whereSeparator: \.isWhitespace).first.map(String.init) else {
            throw .invalidArgument("\(source): bootstrap_token_file \(tokenFile) holds no token")
        }
        let hostName = Self.hostName(c)
        let (keyPem, csrPem) = try Enrolment.makeKeyAndRequest(hostName: hostName)
        let client = try RpcClient.connect(host: host, port: port,
                                           tls: TlsContext(side: .client, certificateFile: nil, keyFile: nil, caFile: caFile),
                                           name: "lmctfy-agent-enrol", refusingUnit: Enrolment.enrolledUnit)
        defer { client.close() }
        let response = try client.call(ControllerMethods.enroll, EnrollRequest(token: token, hostName: hostName, csrPem: csrPem),
                                       deadlineMs: 30_000)
        guard let certPem = response.certificatePem, !certPem.isEmpty else {
            throw .internalError("The controller's Enroll answer holds no certificate")
        }
        try install(keyPem: keyPem, certPem: certPem, keyFile: keyFile, certFile: certFile, caFile: caFile, what: "enrolled")
        return true
    }

    /// host_name, default the machine's.
    static func hostName(_ c: AgentConfig) -> String {
        var hostName = c.hostName ?? ""
        if hostName.isEmpty {
            var u = utsname()
            uname(&u)
            hostName = withUnsafeBytes(of: u.nodename) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        }
        return hostName
    }

    /// Writes a new key and certificate: checked first (as temp files: the
    /// pair loads and chains to ca_file), then each atomically (temp, fsync,
    /// rename), the key first: the certificate's presence is what says
    /// "enrolled".
    /// FAILED_PRECONDITION unless the directories of tls.key_file and
    /// tls.certificate_file exist and can be written: checked before the
    /// token is sent. A directory that did not exist failed the write after
    /// the controller had spent the token and signed a certificate no one
    /// kept (a probe). `--check-config` checks it too.
    public static func checkWritable(keyFile: String, certFile: String, source: String) throws(LmctfyError) {
        for (field, file) in [("tls.key_file", keyFile), ("tls.certificate_file", certFile)] {
            let dir = file.lastIndex(of: "/").map { i in i == file.startIndex ? "/" : String(file[..<i]) } ?? "."
            guard Sys.isDirectory(dir), access(dir, W_OK) == 0 else {
                throw .failedPrecondition("\(source): \(field) \(file): its directory \(dir) does not exist or cannot be written; "
                                          + "enrolment would spend the bootstrap token for a certificate it could not keep")
            }
        }
    }

    static func install(keyPem: String, certPem: String, keyFile: String, certFile: String, caFile: String,
                        what: String) throws(LmctfyError) {
        let keyTemp = keyFile + ".enrol", certTemp = certFile + ".enrol"
        defer { try? Sys.unlink(keyTemp); try? Sys.unlink(certTemp) }
        do {
            try Sys.writeFileAtomically(keyTemp, Array(keyPem.utf8), mode: 0o600)
            try Sys.writeFileAtomically(certTemp, Array(certPem.utf8), mode: 0o644)
        } catch {
            throw error.lmctfy(.failedPrecondition, "Writing the \(what) key and certificate")
        }
        // It must chain to the CA file (PROTOCOL.md 3.2): only its loading
        // and its key were checked, and a controller signing with another CA
        // had one installed that no peer accepted (the enrolment token spent,
        // a working certificate replaced at renewal; the TLS probe).
        if let problem = try TlsContext(side: .client, certificateFile: certTemp, keyFile: keyTemp, caFile: caFile).ownCertificateProblem {
            throw .failedPrecondition("The \(what) certificate the controller gave does not chain to \(caFile) (\(problem)): "
                                      + "not installed; the controller's signing CA must be one tls.ca_file trusts")
        }
        do {
            try Sys.writeFileAtomically(keyFile, Array(keyPem.utf8), mode: 0o600)
            try Sys.writeFileAtomically(certFile, Array(certPem.utf8), mode: 0o644)
        } catch {
            throw error.lmctfy(.failedPrecondition, "Installing the \(what) key and certificate")
        }
    }

    /// Renewal (PROTOCOL.md section 3.2), blocking: when less than
    /// `percent` percent of tls.certificate_file's lifetime remains at
    /// `now`, a new EC P-256 key and a request for host_name, Renew on
    /// controller_address over TLS with the current certificate and key,
    /// then the new key (0600) and certificate written as enrolment writes
    /// them. Returns the new certificate's serial, or nil when not due.
    /// The caller reloads the TLS contexts. Throws the controller's refusal
    /// or the connection's failure as it comes; nothing is written then.
    public static func renewIfDue(_ c: AgentConfig, percent: Int, now: Int64) throws(LmctfyError) -> String? {
        guard let t = c.tls, let certFile = t.certificateFile, let keyFile = t.keyFile, let caFile = t.caFile else {
            throw .invalidArgument("renewal needs tls { certificate_file key_file ca_file }")
        }
        guard let address = c.controllerAddress, let colon = address.lastIndex(of: ":"),
              let port = UInt16(address[address.index(after: colon)...]) else {
            throw .invalidArgument("renewal needs controller_address (host:port)")
        }
        let current = try Enrolment.certificateInfo(file: certFile)
        guard Enrolment.isRenewalDue(notBefore: current.notBefore, notAfter: current.notAfter, now: now, percent: percent) else {
            return nil
        }
        let (keyPem, csrPem) = try Enrolment.makeKeyAndRequest(hostName: hostName(c))
        let client = try RpcClient.connect(host: String(address[..<colon]), port: port,
                                           tls: TlsContext(side: .client, certificateFile: certFile, keyFile: keyFile, caFile: caFile),
                                           name: "lmctfy-agent-renew", refusingUnit: Enrolment.enrolledUnit)
        defer { client.close() }
        let response = try client.call(ControllerMethods.renew, RenewRequest(csrPem: csrPem), deadlineMs: 30_000)
        guard let certPem = response.certificatePem, !certPem.isEmpty else {
            throw .internalError("The controller's Renew answer holds no certificate")
        }
        try install(keyPem: keyPem, certPem: certPem, keyFile: keyFile, certFile: certFile, caFile: caFile, what: "renewed")
        return try Enrolment.certificateInfo(file: certFile).serial
    }
}
