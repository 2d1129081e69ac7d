// Enrolment (PROTOCOL.md section 3.2): an agent's key and certificate
// request, and the controller's CA signing it, through OpenSSL 3 (the
// COpenSSL shim's lm_make_key_and_csr and lm_sign_csr).
import COpenSSL
import Glibc
import LmctfyProto
import LmctfySystem

/// Certificates issued to enrolling agents.
public enum Enrolment {
    /// The subject OU of every certificate the controller signs for an
    /// enrolling agent (COpenSSL's lm_sign_csr writes it).
    public static let enrolledUnit = "agents"

    /// Whether `name` can be a certificate's DNS name (letters, digits,
    /// '-' and '.', at most 253).
    public static func isDnsName(_ name: String) -> Bool { lm_is_dns_name(name) == 1 }

    /// A new EC P-256 private key (PEM) and a certificate request (PEM) for
    /// CN=`hostName` whose only subjectAltName is DNS:`hostName`.
    public static func makeKeyAndRequest(hostName: String) throws(LmctfyError) -> (keyPem: String, csrPem: String) {
        guard isDnsName(hostName) else { throw .invalidArgument("host name \"\(hostName)\" is not a DNS name") }
        var key = [CChar](repeating: 0, count: 4096)
        var csr = [CChar](repeating: 0, count: 8192)
        guard lm_make_key_and_csr(hostName, &key, key.count, &csr, csr.count) == 1 else {
            throw .internalError("Making a key and certificate request failed: \(TlsContext.takeError())")
        }
        return (text(key), text(csr))
    }

    /// Signs `csrPem` for `hostName` with the CA of `caCertificateFile` and
    /// `caKeyFile` (which only its owner may read), valid `days` days.
    /// Returns the certificate then the CA's (PEM). PERMISSION_DENIED when
    /// the request is for another name than `hostName` (or names more than
    /// it), INVALID_ARGUMENT for a request that does not parse or verify,
    /// FAILED_PRECONDITION for a CA that does not load.
    public static func sign(csrPem: String, hostName: String, caCertificateFile: String, caKeyFile: String,
                            days: Int) throws(LmctfyError) -> String {
        try TlsContext.checkPrivate(caKeyFile)
        var out = [CChar](repeating: 0, count: 16384)
        var err = [CChar](repeating: 0, count: 256)
        let csr = Array(csrPem.utf8)
        let n = csr.withUnsafeBufferPointer { c in
            c.withMemoryRebound(to: CChar.self) {
                lm_sign_csr($0.baseAddress, $0.count, caCertificateFile, caKeyFile, hostName, Int32(clamping: days),
                            &out, out.count, &err, err.count)
            }
        }
        ERR_clear_error()
        if n == -2 { throw LmctfyError(.permissionDenied, "Certificate request refused: \(text(err))") }
        if n < 0 {
            let why = text(err)
            if why.hasPrefix("cannot load the signing CA") { throw .failedPrecondition(why) }
            throw .invalidArgument("Certificate request refused: \(why)")
        }
        return text(out)
    }

    /// What renewal needs of a certificate file (its first certificate).
    public struct CertificateInfo: Sendable, Equatable {
        /// The serial, upper-case hex.
        public var serial: String
        /// Validity, seconds since the epoch.
        public var notBefore: Int64
        public var notAfter: Int64
    }

    /// The first certificate of the PEM file at `path`; NOT_FOUND when it
    /// does not hold one.
    public static func certificateInfo(file path: String) throws(LmctfyError) -> CertificateInfo {
        var notBefore: Int64 = 0, notAfter: Int64 = 0
        var serial = [CChar](repeating: 0, count: 128)
        let ok = lm_cert_file_info(path, &notBefore, &notAfter, &serial, serial.count)
        ERR_clear_error()
        guard ok == 1 else { throw LmctfyError(.notFound, "\(path) holds no PEM certificate") }
        return CertificateInfo(serial: text(serial), notBefore: notBefore, notAfter: notAfter)
    }

    /// A warning for a daemon's own certificate at start: expired, not
    /// valid yet, or with less than a tenth of its lifetime (and less than
    /// a week) left; nil when it is fine or cannot be read (the TLS setup
    /// says so). A daemon started with an expired certificate said nothing,
    /// and every peer refused it (the TLS probe).
    public static func certificateWarning(file path: String, now: Int64 = Int64(time(nil))) -> String? {
        guard let c = try? certificateInfo(file: path) else { return nil }
        if now >= c.notAfter {
            return "the certificate \(path) expired \(now - c.notAfter) s ago: every peer refuses it (renew it, then SIGHUP)"
        }
        if now < c.notBefore {
            return "the certificate \(path) is not valid for another \(c.notBefore - now) s: peers refuse it until then"
        }
        let left = c.notAfter - now
        if left < 7 * 86_400 && left * 10 < max(c.notAfter - c.notBefore, 1) {
            return "the certificate \(path) expires in \(left / 3600) h \(left % 3600 / 60) min: renew it, then SIGHUP"
        }
        return nil
    }

    /// Whether a certificate valid from `notBefore` to `notAfter` is due
    /// for renewal at `now`: less than `percent` percent of its lifetime
    /// remains (100: always, once valid; 0: never). An expired one is due.
    public static func isRenewalDue(notBefore: Int64, notAfter: Int64, now: Int64, percent: Int) -> Bool {
        guard percent > 0 else { return false }
        let lifetime = max(notAfter - notBefore, 1)
        let remaining = notAfter - now
        return remaining * 100 < lifetime * Int64(min(percent, 100))
    }

    private static func text(_ buf: [CChar]) -> String {
        String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

/// What a host may be called (an agent's host_name, a Register's): 1 to
/// 253 bytes of [A-Za-z0-9._-]. Checked where an agent reads its config
/// and where the controller takes a Register: a name with a newline forged
/// the controller's log lines, "/" or "../etc" were kept in its inventory.
public enum HostName {
    public static let rule = "1 to 253 of [A-Za-z0-9._-]"

    public static func isValid(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.count <= 253 && name.utf8.allSatisfy {
            ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x41 && $0 <= 0x5A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2D || $0 == 0x2E || $0 == 0x5F
        }
    }

    /// A name as an error message may quote it: escaped, at most 64
    /// characters.
    public static func quoted(_ name: String) -> String {
        String(reflecting: name.count > 64 ? String(name.prefix(64)) + "..." : name)
    }
}

/// What a host's identity may hold beyond its name (a Register's; an
/// agent's `label`s, checked where it reads its config). The controller
/// keeps every identity, writes them all to its inventory and answers
/// ListHosts with them: unbounded, one key registering a thousand names
/// with 64 KiB of labels each took it 140 MB, a 66 MB inventory rewritten
/// every second, and a ListHosts no frame could carry (a probe).
public enum HostIdentityRules {
    public static let maxLabels = 64
    public static let maxLabelKeyBytes = 128
    public static let maxLabelValueBytes = 256
    /// machine_id, boot_id, agent_version.
    public static let maxFieldBytes = 256
    /// root_container (a container name is at most 3,072 bytes).
    public static let maxRootContainerBytes = 4096

    /// What is wrong with `labels` (nil: nothing).
    public static func problem(labels: [HostLabel]) -> String? {
        if labels.count > maxLabels { return "\(labels.count) labels, more than \(maxLabels)" }
        var keys = Set<String>()
        for l in labels {
            let key = l.key ?? "", value = l.value ?? ""
            // (A selector is key=value pairs separated by commas: a value
            // may hold "=", as `a=b=c` selects a="b=c".)
            if key.isEmpty || key.contains(",") || key.contains("=") || value.contains(",") {
                return "a label needs a key without \",\" or \"=\", and a value without \",\" (\(HostName.quoted(key))=\(HostName.quoted(value)))"
            }
            // Two values for one key: a selector matched the first only.
            if !keys.insert(key).inserted { return "label \(HostName.quoted(key)) is given twice" }
            if key.utf8.count > maxLabelKeyBytes || value.utf8.count > maxLabelValueBytes {
                return "label \(HostName.quoted(key)) is longer than \(maxLabelKeyBytes) bytes of key or \(maxLabelValueBytes) of value"
            }
        }
        return nil
    }

    /// What is wrong with `identity` besides its name (nil: nothing).
    public static func problem(_ identity: HostIdentity) -> String? {
        for (field, value) in [("machine_id", identity.machineId), ("boot_id", identity.bootId), ("agent_version", identity.agentVersion)]
        where (value?.utf8.count ?? 0) > maxFieldBytes {
            return "\(field) is longer than \(maxFieldBytes) bytes"
        }
        if (identity.rootContainer?.utf8.count ?? 0) > maxRootContainerBytes {
            return "root_container is longer than \(maxRootContainerBytes) bytes"
        }
        return problem(labels: identity.label)
    }
}
