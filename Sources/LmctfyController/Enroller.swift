// Enrolment (PROTOCOL.md section 3.2): an agent without a certificate
// presents a one-time bootstrap token and a certificate request on the
// controller's enroll_address; the token is checked (known, unspent,
// unexpired, bound to the host asked for), spent durably, and the request
// signed by the controller's CA. Loop thread only.
import Glibc
import LmctfyLoop
import LmctfyProto
import LmctfyRPC
import LmctfySystem

/// The bootstrap tokens and the CA that signs for them.
final class Enroller {
    let settings: ControllerSettings.EnrollSettings
    /// state_dir/enroll-spent: SHA-256 (hex) of every token spent, a line each.
    let spentPath: String

    init(_ settings: ControllerSettings.EnrollSettings, stateDir: String) {
        self.settings = settings
        spentPath = stateDir + "/enroll-spent"
    }

    /// One line of the token file: "TOKEN EXPIRY_UNIX_SECONDS [HOST_NAME]".
    struct Token {
        var expiry: Int64
        var hostName: String?
    }

    /// Told (a line for the controller's log) what the token file holds
    /// that is not a token: unreadable, or lines that do not parse.
    var log: ((String) -> Void)?
    /// The token file's text when its lines were last said to be wrong
    /// (each Enroll re-reads it: said once per content, not per call).
    private var toldFor: String?

    /// The shortest token taken: a shorter one is refused (said in the
    /// log), as guessable (a token of one character was taken).
    static let minimumTokenLength = 16

    /// Failed guesses (an unknown, spent or expired token) by peer (an
    /// IPv4 address, an IPv6 /64): past `failuresAllowed` within
    /// `failureWindowMs`, the peer's Enrolls are refused
    /// (RESOURCE_EXHAUSTED, tokens unchecked) until `blockMs` after the
    /// last. Wrong guesses were answered as fast as they came. At most
    /// `maxPeersTracked` peers are kept (the oldest goes first).
    struct Failures {
        var count = 0
        var since: Int64 = 0
        var last: Int64 = 0
    }
    private var failures: [String: Failures] = [:]
    static let failuresAllowed = 5
    static let failureWindowMs: Int64 = 60_000
    static let blockMs: Int64 = 60_000
    static let maxPeersTracked = 4096
    /// Milliseconds, monotonic (a test's own clock).
    var clock: () -> Int64 = { Int64(MonotonicClock.milliseconds()) }

    /// The token file as it is now (re-read at each Enroll: tokens are
    /// added without a restart). A line that does not parse (fields
    /// separated by spaces or tabs, a CR before the newline ignored) is
    /// skipped and said in the log, as is a token on two lines (refused:
    /// which host it is for cannot be told). A file that cannot be read is
    /// UNAVAILABLE for the caller, whom its path and mode do not concern
    /// (the log has them; an unauthenticated peer was told "Private key
    /// /etc/... is readable by others").
    func tokens() throws(LmctfyError) -> [String: Token] {
        let text: String
        do {
            try TlsContext.checkPrivate(settings.tokenFile, what: "Bootstrap token file")
            text = try Sys.readFile(settings.tokenFile)
        } catch {
            log?("bootstrap_token_file: \(error)")
            throw LmctfyError(.unavailable, "the controller cannot read its bootstrap tokens now (its log says why)")
        }
        var out: [String: Token] = [:]
        var twice = Set<String>()
        var wrong: [String] = []
        // By Character: "\r\n" is one, which a split on "\n" kept inside
        // the host name (a CRLF file bound its token to "web7\r\n").
        for (i, line) in text.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline).enumerated() {
            let content = line.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false)[0]
            let words = content.split(whereSeparator: \.isWhitespace)
            if words.isEmpty { continue }
            guard words.count == 2 || words.count == 3, let expiry = Int64(words[1]),
                  words.count == 2 || Enrolment.isDnsName(String(words[2])) else {
                wrong.append("line \(i + 1) is not \"TOKEN EXPIRY_UNIX_SECONDS [HOST_NAME]\"")
                continue
            }
            let token = String(words[0])
            guard token.count >= Self.minimumTokenLength else {
                wrong.append("line \(i + 1)'s token is shorter than \(Self.minimumTokenLength) characters (refused: it could be guessed)")
                continue
            }
            if out[token] != nil { twice.insert(token) }
            out[token] = Token(expiry: expiry, hostName: words.count == 3 ? String(words[2]) : nil)
        }
        for token in twice {
            out[token] = nil
            wrong.append("a token is on more than one line (refused until one is left)")
        }
        if !wrong.isEmpty, toldFor != text {
            toldFor = text
            log?("bootstrap_token_file \(settings.tokenFile): " + wrong.joined(separator: "; "))
        }
        return out
    }

    static func digest(_ token: String) -> String {
        Sys.hex(Crypto.sha256(Array(token.utf8)))
    }

    func spent() -> Set<String> {
        guard let text = try? Sys.readFile(spentPath) else { return [] }
        return Set(text.split(separator: "\n").map(String.init))
    }

    /// Enroll: UNAUTHENTICATED for an unknown, spent or expired token,
    /// PERMISSION_DENIED for a host other than the token's (or a request
    /// for another name than the host's), INVALID_ARGUMENT for a bad
    /// request. The token is spent (fsynced) before the certificate is
    /// returned; a refused request leaves it unspent.
    /// A token that names no host may not enrol one the controller knows
    /// already (`isKnown`): its certificate would let the caller register
    /// as that host, and take its routed calls and events from it (every
    /// certificate host binds to the same key id). Enrolling a known host
    /// again (a lost certificate) takes a token that names it.
    /// `peer` is the caller's address (nil: not counted, see `Failures`).
    func enroll(_ r: EnrollRequest, peer: SocketAddress? = nil, now: Int64 = Int64(time(nil)),
                isKnown: (String) -> Bool = { _ in false }) throws(LmctfyError) -> EnrollResponse {
        let who = peer.map(Self.peerKey)
        if let who { try refuseIfGuessing(who) }
        guard let token = r.token, !token.isEmpty else { throw LmctfyError(.unauthenticated, "Enroll needs a bootstrap token") }
        let known = try tokens()
        let digest = Self.digest(token)
        // Unknown and spent look the same from outside.
        guard let t = known[token], !spent().contains(digest) else {
            if let who { failed(who) }
            throw LmctfyError(.unauthenticated, "unknown or already used bootstrap token")
        }
        guard t.expiry > now else {
            if let who { failed(who) }
            throw LmctfyError(.unauthenticated, "the bootstrap token expired")
        }
        guard let host = r.hostName, Enrolment.isDnsName(host) else {
            throw LmctfyError.invalidArgument("Enroll needs host_name, a DNS name")
        }
        if let bound = t.hostName, bound != host {
            throw LmctfyError(.permissionDenied, "this bootstrap token is for host \(bound), not \(host)")
        }
        try refuseReserved(host)
        if t.hostName == nil && isKnown(host) {
            throw LmctfyError(.permissionDenied, "host \(host) is registered already: enrolling it again takes a bootstrap token that names it")
        }
        let pem = try Enrolment.sign(csrPem: r.csrPem ?? "", hostName: host, caCertificateFile: settings.caCertificateFile,
                                     caKeyFile: settings.caKeyFile, days: settings.days)
        let lines = (spent().sorted() + [digest]).joined(separator: "\n") + "\n"
        do {
            try Sys.writeFileAtomically(spentPath, Array(lines.utf8), mode: 0o600)
        } catch {
            throw error.lmctfy(error.isNoSpace ? .resourceExhausted : .unavailable, "Recording the spent bootstrap token")
        }
        return EnrollResponse(certificatePem: pem)
    }

    /// RESOURCE_EXHAUSTED while `who` has failed too often (`Failures`).
    private func refuseIfGuessing(_ who: String) throws(LmctfyError) {
        guard let f = failures[who], f.count >= Self.failuresAllowed else { return }
        let left = f.last + Self.blockMs - clock()
        guard left > 0 else {
            failures[who] = nil
            return
        }
        throw LmctfyError(.resourceExhausted, "too many Enrolls with a wrong bootstrap token from \(who): "
                          + "refused for \((left + 999) / 1000) s more")
    }

    /// Counts a wrong token from `who`.
    private func failed(_ who: String) {
        let now = clock()
        var f = failures[who] ?? Failures()
        if f.count == 0 || now - f.since > Self.failureWindowMs { f = Failures(count: 0, since: now) }
        f.count += 1
        f.last = now
        if failures[who] == nil && failures.count >= Self.maxPeersTracked {
            failures = failures.filter { now - $0.value.last <= max(Self.failureWindowMs, Self.blockMs) }
            if failures.count >= Self.maxPeersTracked, let oldest = failures.min(by: { $0.value.last < $1.value.last })?.key {
                failures[oldest] = nil
            }
        }
        failures[who] = f
        if f.count == Self.failuresAllowed {
            log?("\(who) sent \(f.count) wrong bootstrap tokens within \(Self.failureWindowMs / 1000) s: "
                 + "its Enrolls are refused for \(Self.blockMs / 1000) s")
        }
    }

    /// Whose failures an address counts as: an IPv4 address, or the /64
    /// of an IPv6 one (one host holds many).
    static func peerKey(_ a: SocketAddress) -> String {
        guard a.family == .ipv6 else { return a.host }
        var bytes = [UInt8](repeating: 0, count: 16)
        guard inet_pton(AF_INET6, a.host, &bytes) == 1 else { return a.host }
        // An IPv4-mapped address is that IPv4 address.
        if bytes[0..<10].allSatisfy({ $0 == 0 }) && bytes[10] == 0xff && bytes[11] == 0xff {
            return bytes[12...].map { String($0) }.joined(separator: ".")
        }
        return stride(from: 0, to: 8, by: 2).map { String(UInt16(bytes[$0]) << 8 | UInt16(bytes[$0 + 1]), radix: 16) }
            .joined(separator: ":") + "::/64"
    }

    /// Renew (PROTOCOL.md section 3.2): `identity` is the certificate the
    /// caller presented on agent_address (verified by the handshake, so
    /// still valid); the request must be for the one host it names.
    /// UNAUTHENTICATED without a certificate, PERMISSION_DENIED for a
    /// certificate naming no host or several, or a request for another
    /// host, INVALID_ARGUMENT for a bad request.
    func renew(_ r: RenewRequest, identity: CertIdentity?) throws(LmctfyError) -> (host: String, response: RenewResponse) {
        guard let identity else { throw LmctfyError(.unauthenticated, "Renew needs the caller's certificate (mutual TLS on agent_address)") }
        guard identity.dnsNames.count == 1, let host = identity.dnsNames.first, Enrolment.isDnsName(host) else {
            throw LmctfyError(.permissionDenied, "Renew needs a certificate naming exactly one host (subjectAltName DNS), not \(identity)")
        }
        try refuseReserved(host)
        let pem = try Enrolment.sign(csrPem: r.csrPem ?? "", hostName: host, caCertificateFile: settings.caCertificateFile,
                                     caKeyFile: settings.caKeyFile, days: settings.days)
        return (host, RenewResponse(certificatePem: pem))
    }

    /// PERMISSION_DENIED for a name no agent's certificate may hold: one
    /// of the controller's own certificate (read now: a SIGHUP may have
    /// replaced it) and `localhost`. Signed by the CA agents and lmctl
    /// check the controller against, such a certificate let whoever held
    /// a token that names no host stand in for the controller (a probe:
    /// an agent registered with the impostor, which then made containers
    /// on it). Agents and lmctl also refuse a controller certificate with
    /// the enrolled OU (TlsChannel's refusingUnit).
    func refuseReserved(_ host: String) throws(LmctfyError) {
        let own = CertIdentity(certificateFile: settings.controllerCertificateFile)?.dnsNames ?? []
        let reserved = (own + ["localhost"]).map { $0.lowercased() }
        let asked = host.lowercased()
        // (A wildcard of the controller's covers names it does not stand
        // for: a client dials the controller by its own name.)
        if reserved.contains(asked) {
            throw LmctfyError(.permissionDenied, "host name \(host) is the controller's own (or localhost): no agent's certificate may name it")
        }
    }
}
