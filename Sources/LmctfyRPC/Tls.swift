// TLS 1.3 under the framing (PROTOCOL.md section 3.1), through OpenSSL 3 with
// two memory BIOs: the owner moves ciphertext between its socket and the
// channel, so OpenSSL never owns a socket, never blocks and needs no thread
// of its own. The agent and the controller drive a channel from their libuv
// callbacks on the loop thread; RpcClient from its poll loop.
import COpenSSL
import LmctfyProto
import Glibc
import LmctfySystem

/// Who a peer is according to its certificate, once the TLS handshake has
/// verified the chain against the configured CA: the subject's common name
/// and organizational units, and the subjectAltName DNS names and URIs.
public struct CertIdentity: Sendable, Equatable, CustomStringConvertible {
    /// The subject's CN, if any.
    public var commonName: String?
    /// The subject's OU entries, in order.
    public var organizationalUnits: [String]
    /// subjectAltName DNS entries: the host names the certificate is for.
    public var dnsNames: [String]
    /// subjectAltName URI entries (e.g. "lmctfy:role:admin").
    public var uris: [String]

    /// An identity with these names (tests build them by hand).
    public init(commonName: String? = nil, organizationalUnits: [String] = [], dnsNames: [String] = [], uris: [String] = []) {
        self.commonName = commonName
        self.organizationalUnits = organizationalUnits
        self.dnsNames = dnsNames
        self.uris = uris
    }

    public var description: String {
        var parts: [String] = []
        if let commonName { parts.append("CN=\(commonName)") }
        parts += organizationalUnits.map { "OU=\($0)" }
        parts += dnsNames.map { "DNS:\($0)" }
        parts += uris.map { "URI:\($0)" }
        return parts.isEmpty ? "(empty certificate subject)" : parts.joined(separator: ",")
    }
}

/// The configuration every TLS connection of one listener (or one dialler)
/// shares: our certificate and key, the CA peers must chain to, TLS 1.3 only.
/// Thread-safety: immutable once made; OpenSSL's SSL_CTX may be shared by
/// connections on any thread.
public final class TlsContext: @unchecked Sendable {
    // @unchecked: `ctx` is never changed after init (SSL_new only reads it
    // and takes its own reference).

    /// Which end of the TLS handshake a context makes channels for.
    public enum Side: Sendable { case server, client }

    let ctx: OpaquePointer
    /// Server or client.
    public let side: Side
    /// Server: whether a client without a certificate is refused.
    public let requirePeerCertificate: Bool
    /// The CRL file (PEM) peers' certificates are checked against, if any.
    public let crlFile: String?

    /// Loads `certificateFile` (PEM; a chain, leaf first) and `keyFile` (PEM,
    /// refused unless only its owner can read it) when given, and trusts only
    /// `caFile`'s certificates for the peer's chain. A server with
    /// `requirePeerCertificate` refuses clients without one (a TLS alert,
    /// before any frame); a client always verifies the server's.
    /// Throws INVALID_ARGUMENT or NOT_FOUND naming the file and OpenSSL's reason,
    /// FAILED_PRECONDITION for a key others can read. With `crlFile` (PEM,
    /// one or more CRLs of the CA), a peer whose certificate it revokes is
    /// refused in the handshake (X509_V_FLAG_CRL_CHECK; a CRL past its
    /// nextUpdate fails every peer, so it must be renewed and reloaded).
    public init(side: Side, certificateFile: String?, keyFile: String?, caFile: String,
                requirePeerCertificate: Bool = true, crlFile: String? = nil) throws(LmctfyError) {
        try Crypto.loadOpenSSL()
        guard let ctx = SSL_CTX_new(side == .server ? TLS_server_method() : TLS_client_method()) else {
            throw .internalError("SSL_CTX_new failed: \(Self.takeError())")
        }
        self.ctx = ctx
        self.side = side
        self.requirePeerCertificate = requirePeerCertificate
        self.crlFile = crlFile
        guard lm_ssl_ctx_require_tls13(ctx) == 1 else { throw .internalError("TLS 1.3 unavailable: \(Self.takeError())") }
        // Idle links keep no record buffers (a controller with 10,000
        // TLS links held ~17 KB each way for each).
        lm_ssl_ctx_release_buffers(ctx)
        if let certificateFile {
            guard SSL_CTX_use_certificate_chain_file(ctx, certificateFile) == 1 else {
                throw .invalidArgument("Cannot load the certificate \(certificateFile): \(Self.takeError())")
            }
        }
        if let keyFile {
            try Self.checkPrivate(keyFile)
            guard SSL_CTX_use_PrivateKey_file(ctx, keyFile, SSL_FILETYPE_PEM) == 1 else {
                throw .invalidArgument("Cannot load the private key \(keyFile): \(Self.takeError())")
            }
            guard SSL_CTX_check_private_key(ctx) == 1 else {
                throw .invalidArgument("The private key \(keyFile) does not match the certificate \(certificateFile ?? ""): \(Self.takeError())")
            }
        }
        guard SSL_CTX_load_verify_locations(ctx, caFile, nil) == 1 else {
            throw .invalidArgument("Cannot load the CA file \(caFile): \(Self.takeError())")
        }
        if let crlFile {
            guard lm_ssl_ctx_load_crl(ctx, crlFile) > 0 else {
                throw .invalidArgument("Cannot load the CRL file \(crlFile): \(Self.takeError())")
            }
            // A CRL that parses but is not this CA's, or is past its
            // nextUpdate, was taken (at start and at a SIGHUP, said to have
            // worked) and then refused every peer: a controller dropped its
            // whole fleet (a probe). Checked on our own certificate, when
            // it chains to this CA.
            var why = [CChar](repeating: 0, count: 256)
            if lm_ssl_ctx_crl_problem(ctx, &why, why.count) == 1 {
                ERR_clear_error()
                let reason = String(decoding: why.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
                throw .invalidArgument("The CRL file \(crlFile) does not serve \(caFile) now (\(reason)): every peer would be refused; "
                                       + "it must be a current CRL of that CA (nextUpdate in the future), and not revoke our own certificate")
            }
            ERR_clear_error()
        }
        var mode = SSL_VERIFY_PEER
        if side == .server {
            // Not requiring one: not asking for one either (the hello's
            // shared key is then who the client is).
            mode = requirePeerCertificate ? SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT : SSL_VERIFY_NONE
            if let names = SSL_load_client_CA_file(caFile) { SSL_CTX_set_client_CA_list(ctx, names) }
            // No session tickets: each handshake is a full one with the
            // client's certificate (nothing to resume, nothing to revoke late).
            SSL_CTX_set_num_tickets(ctx, 0)
        }
        SSL_CTX_set_verify(ctx, mode, nil)
    }

    deinit { SSL_CTX_free(ctx) }

    /// Why our own certificate does not chain to the CA file (its
    /// validity dates included), nil when it does or none is loaded.
    public var ownCertificateProblem: String? {
        var why = [CChar](repeating: 0, count: 256)
        let ok = lm_ssl_ctx_verify_own(ctx, &why, why.count)
        ERR_clear_error()
        guard ok == 0 else { return nil }
        return String(decoding: why.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// The names of our own certificate (nil: none loaded).
    public var ownIdentity: CertIdentity? {
        guard let cert = SSL_CTX_get0_certificate(ctx) else { return nil }
        return CertIdentity(of: cert)
    }

    /// A private file (a key, a token file) others can read is refused:
    /// FAILED_PRECONDITION; NOT_FOUND when it cannot be stat()ed.
    /// `what`: the file's kind in the messages ("Private key", "Bootstrap
    /// token file").
    public static func checkPrivate(_ path: String, what: String = "Private key") throws(LmctfyError) {
        var st = stat()
        guard stat(path, &st) == 0 else {
            throw SystemError("stat", path, errno).lmctfy(.notFound, "Cannot read the \(what.lowercased())")
        }
        if st.st_mode & 0o077 != 0 {
            throw .failedPrecondition("\(what) \(path) is readable by others (mode \(String(st.st_mode & 0o777, radix: 8))); chmod 600 it")
        }
    }

    /// OpenSSL's oldest queued error, as text (the queue is emptied).
    static func takeError() -> String {
        var buf = [CChar](repeating: 0, count: 256)
        lm_ssl_take_error(&buf, buf.count)
        let text = String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return text.isEmpty ? "no OpenSSL error queued" : text
    }
}

/// One TLS connection over memory BIOs: ciphertext in, plaintext out, and
/// back. It never touches a socket; whatever it returns to send, its owner
/// sends, in order.
/// Ownership: owns its SSL (and the BIOs, through it); freed on deinit.
/// Threads: not thread-safe; one owner (the loop thread) drives it.
public final class TlsChannel {
    /// What one `feed` produced.
    public struct Output {
        /// Decrypted application bytes, in order.
        public var plaintext: [UInt8] = []
        /// Ciphertext to send to the peer (handshake messages, alerts, and
        /// the sealed bytes that waited for the handshake).
        public var send: [UInt8] = []
        /// The handshake completed during this feed (the peer's identity is
        /// known from now on).
        public var handshakeCompleted = false
    }

    private let ssl: OpaquePointer
    private let input: OpaquePointer
    private let output: OpaquePointer
    private let context: TlsContext
    private let refusingUnit: String?
    private var waiting: [UInt8] = []

    /// Whether the handshake has completed (application data flows).
    public private(set) var isHandshakeDone = false
    /// Why the channel failed (a bad certificate, a record that does not
    /// decrypt, an alert from the peer); nil while it is healthy. Nothing is
    /// decrypted once it is set.
    public private(set) var failure: String?
    /// The peer sent close_notify: it will send nothing more.
    public private(set) var peerClosed = false
    /// The peer's verified certificate, once the handshake is done (nil
    /// when it sent none, which only a server not requiring one allows).
    public private(set) var peerIdentity: CertIdentity?
    /// The peer certificate's notAfter (seconds since the epoch), once the
    /// handshake is done; nil without a peer certificate. The periodic
    /// expiry check compares it, without verifying anything again.
    public private(set) var peerNotAfter: Int64?
    /// The peer certificate's serial (upper-case hex), once the handshake
    /// is done; nil without a peer certificate.
    public private(set) var peerSerial: String?

    /// A channel of `context`'s side. A client verifies that the server's
    /// certificate names `serverName` (a DNS name, or an IP address when it
    /// parses as one) and sends it as SNI when it is a name.
    ///
    /// `refusingUnit`: a client refuses a server whose certificate has this
    /// subject OU (the controller's dialers refuse `Enrolment.enrolledUnit`:
    /// a certificate the controller signed for an enrolling agent, with the
    /// controller's own CA, named what the token's holder asked, its own
    /// name included, and it was taken for the controller's; a probe).
    public init(context: TlsContext, serverName: String? = nil, refusingUnit: String? = nil) throws(LmctfyError) {
        self.refusingUnit = refusingUnit
        guard let ssl = SSL_new(context.ctx) else { throw .internalError("SSL_new failed: \(TlsContext.takeError())") }
        guard let input = BIO_new(BIO_s_mem()), let output = BIO_new(BIO_s_mem()) else {
            SSL_free(ssl)
            throw .internalError("BIO_new failed")
        }
        lm_bio_mem_retry_when_empty(input)
        lm_bio_mem_retry_when_empty(output)
        SSL_set_bio(ssl, input, output)  // the SSL owns both from here
        self.ssl = ssl
        self.input = input
        self.output = output
        self.context = context
        if context.side == .server {
            SSL_set_accept_state(ssl)
        } else {
            SSL_set_connect_state(ssl)
            if let serverName, !serverName.isEmpty {
                if Self.isIPAddress(serverName) {
                    guard X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), serverName) == 1 else {
                        throw .invalidArgument("Cannot verify the server as \(serverName): \(TlsContext.takeError())")
                    }
                } else {
                    _ = lm_ssl_set_sni(ssl, serverName)
                    guard SSL_set1_host(ssl, serverName) == 1 else {
                        throw .invalidArgument("Cannot verify the server as \(serverName): \(TlsContext.takeError())")
                    }
                }
            }
        }
    }

    deinit { SSL_free(ssl) }

    static func isIPAddress(_ s: String) -> Bool {
        var v4 = in_addr(), v6 = in6_addr()
        return inet_pton(AF_INET, s, &v4) == 1 || inet_pton(AF_INET6, s, &v6) == 1
    }

    /// Client: the first flight (ClientHello). Server: nothing.
    public func start() -> [UInt8] {
        guard context.side == .client, !isHandshakeDone, failure == nil else { return [] }
        var out = Output()
        advanceHandshake(&out)
        drainOutput(into: &out.send)
        return out.send
    }

    /// Ciphertext from the peer: decrypts what it can, advances the
    /// handshake, and returns what to hand up and what to send back. After
    /// a failure (see `failure`) it only returns the alert to send.
    public func feed(_ bytes: [UInt8]) -> Output {
        var out = Output()
        guard failure == nil, !peerClosed else { return out }
        bytes.withUnsafeBytes { b in
            if let base = b.baseAddress, b.count > 0 { _ = BIO_write(input, base, Int32(b.count)) }
        }
        if !isHandshakeDone {
            advanceHandshake(&out)
        }
        if isHandshakeDone && failure == nil {
            readPlaintext(into: &out.plaintext)
        }
        drainOutput(into: &out.send)
        return out
    }

    /// Plaintext to send: the ciphertext for it (empty while the handshake
    /// runs: it waits, and leaves with the handshake's completion in `feed`).
    public func seal(_ plaintext: [UInt8]) -> [UInt8] {
        guard failure == nil, !plaintext.isEmpty else { return [] }
        guard isHandshakeDone else {
            waiting += plaintext
            return []
        }
        var out: [UInt8] = []
        write(plaintext)
        drainOutput(into: &out)
        return out
    }

    /// Our close_notify (sent before the socket closes, after a GOAWAY);
    /// empty before the handshake completed or after a failure.
    public func shutdown() -> [UInt8] {
        guard isHandshakeDone, failure == nil else { return [] }
        _ = SSL_shutdown(ssl)
        var out: [UInt8] = []
        drainOutput(into: &out)
        return out
    }

    /// Verifies the peer's certificate (the one of the handshake) again,
    /// against `context`'s CA and CRLs (a context reloaded since: see
    /// PROTOCOL.md section 3.1, rotation) at `unixTime` (nil: now). Returns
    /// why it no longer verifies (revoked, expired, another CA), or nil when
    /// it still does, or when there is nothing to check (no handshake yet,
    /// no peer certificate, a context of the other side).
    public func recheckPeer(against context: TlsContext, unixTime: Int64? = nil) -> String? {
        guard isHandshakeDone, failure == nil, context.side == self.context.side else { return nil }
        var buf = [CChar](repeating: 0, count: 256)
        let rc = lm_ssl_recheck_peer(ssl, context.ctx, unixTime ?? 0, &buf, buf.count)
        guard rc == 0 else { return nil }
        let text = String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return text.isEmpty ? "the certificate no longer verifies" : text
    }

    /// The negotiated protocol ("TLSv1.3").
    public var protocolVersion: String { String(cString: SSL_get_version(ssl)) }

    // MARK: Internals

    private func advanceHandshake(_ out: inout Output) {
        ERR_clear_error()
        let rc = SSL_do_handshake(ssl)
        if rc == 1 {
            let identity = readPeerIdentity()
            if let unit = refusingUnit, identity?.organizationalUnits.contains(unit) == true {
                failure = "the server's certificate (\(identity!)) has OU=\(unit): one issued to an enrolling agent, not the controller's"
                return
            }
            isHandshakeDone = true
            out.handshakeCompleted = true
            peerIdentity = identity
            var notAfter: Int64 = 0
            if lm_ssl_peer_not_after(ssl, &notAfter) == 1 { peerNotAfter = notAfter }
            var serial = [CChar](repeating: 0, count: 128)
            if lm_ssl_peer_serial(ssl, &serial, serial.count) == 1 {
                peerSerial = String(decoding: serial.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            }
            if !waiting.isEmpty {
                let w = waiting
                waiting = []
                write(w)
            }
            return
        }
        let error = SSL_get_error(ssl, rc)
        if error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE { return }
        failure = describe(error)
    }

    /// Decrypts into `plaintext` through a buffer of the call's own (a
    /// 16 KB buffer kept by every channel was more than a quarter of what
    /// an idle link cost).
    private func readPlaintext(into plaintext: inout [UInt8]) {
        withUnsafeTemporaryAllocation(byteCount: Self.readChunk, alignment: 1) { buffer in
            readPlaintext(into: &plaintext, through: buffer)
        }
    }

    /// One TLS record's plaintext at most.
    static let readChunk = 16384

    private func readPlaintext(into plaintext: inout [UInt8], through buffer: UnsafeMutableRawBufferPointer) {
        while true {
            ERR_clear_error()
            var n = 0
            let rc = SSL_read_ex(ssl, buffer.baseAddress, buffer.count, &n)
            if rc == 1 {
                plaintext.append(contentsOf: UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
                continue
            }
            let error = SSL_get_error(ssl, 0)
            switch error {
            case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE: return
            case SSL_ERROR_ZERO_RETURN: peerClosed = true; return
            default: failure = describe(error); return
            }
        }
    }

    private func write(_ plaintext: [UInt8]) {
        ERR_clear_error()
        var written = 0
        let rc = plaintext.withUnsafeBytes { SSL_write_ex(ssl, $0.baseAddress, $0.count, &written) }
        // A memory BIO takes everything: a short write is a failed channel.
        if rc != 1 || written != plaintext.count { failure = describe(SSL_get_error(ssl, rc)) }
    }

    private func drainOutput(into send: inout [UInt8]) {
        let pending = Int(BIO_ctrl_pending(output))
        guard pending > 0 else { return }
        let start = send.count
        send.append(contentsOf: repeatElement(0, count: pending))
        let n = send.withUnsafeMutableBytes { BIO_read(output, $0.baseAddress! + start, Int32(pending)) }
        if n < pending { send.removeLast(pending - max(0, Int(n))) }
    }

    private func describe(_ error: Int32) -> String {
        let queued = TlsContext.takeError()
        let verify = SSL_get_verify_result(ssl)
        if verify != Int(X509_V_OK) {
            let reason = String(cString: X509_verify_cert_error_string(verify))
            // 18-21: self-signed (leaf or in the chain), no local issuer,
            // cannot verify the leaf: after a CA rotation on one side the
            // refusal read "self-signed certificate in chain" alone (the
            // TLS probe).
            guard (18...21).contains(verify) else { return "certificate verification failed: \(reason)" }
            return "certificate verification failed: \(reason): the peer's certificate does not chain to this side's "
                + "CA file (signed by another CA: was the CA rotated on one side only?)"
        }
        if error == SSL_ERROR_SYSCALL || error == SSL_ERROR_SSL { return queued }
        return "SSL error \(error): \(queued)"
    }

    private func readPeerIdentity() -> CertIdentity? {
        guard let cert = SSL_get1_peer_certificate(ssl) else { return nil }
        defer { X509_free(cert) }
        return CertIdentity(of: cert)
    }
}

extension CertIdentity {
    /// The names of the first certificate of the PEM file at `path`; nil
    /// when it holds none.
    public init?(certificateFile path: String) {
        guard let cert = lm_cert_file_x509(path) else {
            ERR_clear_error()
            return nil
        }
        defer { X509_free(cert) }
        self.init(of: cert)
    }

    /// The names of an X509 certificate.
    init(of cert: OpaquePointer) {
        var id = CertIdentity()
        var buf = [CChar](repeating: 0, count: 1024)
        func strings(_ fetch: (Int32, UnsafeMutablePointer<CChar>, Int) -> Int32) -> [String] {
            var out: [String] = []
            var i: Int32 = 0
            while true {
                let n = buf.withUnsafeMutableBufferPointer { fetch(i, $0.baseAddress!, $0.count) }
                if n == -1 { return out }
                // -2: too long or holding a NUL: skipped, never cut short.
                if n >= 0 { out.append(String(decoding: buf.prefix(Int(n)).map { UInt8(bitPattern: $0) }, as: UTF8.self)) }
                i += 1
                if i > 64 { return out }
            }
        }
        id.commonName = strings { lm_x509_subject_entry(cert, NID_commonName, $0, $1, $2) }.first
        id.organizationalUnits = strings { lm_x509_subject_entry(cert, NID_organizationalUnitName, $0, $1, $2) }
        id.dnsNames = strings { lm_x509_san(cert, 0, $0, $1, $2) }
        id.uris = strings { lm_x509_san(cert, 1, $0, $1, $2) }
        self = id
    }
}

extension TlsChannel {
    /// Whether the first bytes read on a TLS port can open a TLS connection:
    /// every one starts with a handshake record (content type 22).
    public static func opensHandshake(_ firstBytes: [UInt8]) -> Bool { firstBytes.first == 0x16 }

    /// What a TLS port answers plaintext with, before closing (PROTOCOL.md
    /// section 3.1): a plaintext GOAWAY_UNAUTHENTICATED saying why.
    public static let plaintextRefusal: [UInt8] = FrameCodec.encode(Frame(
        kind: .frameGoaway,
        goaway: GoAway(reason: .goawayUnauthenticated, message: "this port requires TLS 1.3 (PROTOCOL.md section 3.1)", lastStreamId: 0)))
}
