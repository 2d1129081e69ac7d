// A small blocking client over a connected socket: handshake, unary calls and
// server-streaming calls, one at a time. It drives a dialler Session with
// poll/recv/send, so it needs no event loop (lmctl, tests, scripts).
import Glibc
import LmctfyProto
import LmctfySystem

/// A blocking agent-protocol client.
/// Ownership: it owns the socket and closes it in `close()` or on deinit.
/// Threads: not thread-safe; use one client from one thread at a time.
public final class RpcClient {
    private enum Event {
        case response([UInt8])
        case status(CallStatus)
    }

    private let fd: Int32
    private var session: Session
    private var inbox: [UInt32: [Event]] = [:]
    private var fdClosed = false
    private var readBuffer = [UInt8](repeating: 0, count: 65536)
    /// TLS under the framing (PROTOCOL.md section 3.1): what the session
    /// writes is sealed, what is read is opened, before anything else.
    private let tls: TlsChannel?
    /// Why TLS failed (a certificate the other side refused, or that we
    /// refused); the handshake's error is then UNAUTHENTICATED.
    private var tlsFailure: String?

    /// The acceptor, as the handshake established it.
    public private(set) var peer: PeerInfo

    /// Talking to a controller: the host every call from now on is for
    /// (Frame.host; PROTOCOL.md section 9). nil: the peer itself.
    public var host: String?

    /// The deadline of every unary call (`call`) that gives none: lmctl's
    /// `--timeout`. Streaming calls (a follow, a foreground Run) have none
    /// from it: they last as long as they are meant to.
    public var unaryDeadlineMs: UInt32?

    /// Performs the handshake on a connected socket `fd` (taking ownership of
    /// it) and returns once it succeeded. Throws UNAUTHENTICATED,
    /// PERMISSION_DENIED, DEADLINE_EXCEEDED (hello timeout) or UNAVAILABLE.
    public init(
        fd: Int32, authentication: DiallerAuthentication = .peerCredentials, name: String = "lmctfy-client",
        limits: SessionLimits = SessionLimits(), nonces: any NonceSource = SystemNonceSource(), tls: TlsChannel? = nil
    ) throws(LmctfyError) {
        self.fd = fd
        self.tls = tls
        if tls == nil, case .sharedKey = authentication { isPlaintextTcp = true }
        // A blocking client makes no background progress between calls, so
        // keepalive and idle timers only run while it waits for a call.
        self.session = Session(dialler: authentication, name: name, limits: limits, nonces: nonces, now: MonotonicClock.milliseconds())
        self.peer = PeerInfo(name: "", version: 0, keyId: nil, credentials: nil, maxFrameBytes: 0, maxStreams: 0, capabilities: [])
        if let tls { sendRaw(tls.start()) }
        perform(session.start(now: MonotonicClock.milliseconds()))
        while !session.isEstablished {
            if session.isClosed {
                let reason = session.closeReason
                close()
                if let tlsFailure { throw LmctfyError(.unauthenticated, "TLS: \(tlsFailure)") }
                throw Self.error(for: reason)
            }
            pumpOnce()
        }
        peer = session.peer!
    }

    /// Connects to the agent's Unix socket and authenticates by credentials.
    public static func connect(unixPath: String, name: String = "lmctfy-client", limits: SessionLimits = SessionLimits()) throws(LmctfyError) -> RpcClient {
        let fd = try RpcSocket.connectUnix(path: unixPath)
        return try RpcClient(fd: fd, authentication: .peerCredentials, name: name, limits: limits)
    }

    /// Connects over TCP and authenticates with a shared key.
    public static func connect(
        host: String, port: UInt16, keyId: String, key: [UInt8], name: String = "lmctfy-client",
        limits: SessionLimits = SessionLimits()
    ) throws(LmctfyError) -> RpcClient {
        try Crypto.loadOpenSSL()
        let fd = try RpcSocket.connectTCP(host: host, port: port)
        return try RpcClient(fd: fd, authentication: .sharedKey(keyId: keyId, key: key), name: name, limits: limits)
    }

    /// Connects over TCP under TLS 1.3 (PROTOCOL.md section 3.1), verifying
    /// that the agent's certificate chains to `tls`'s CA and names
    /// `serverName` (default: `host`). With `keyId` and `key` the hello
    /// proves that shared key inside TLS (a listener not requiring client
    /// certificates); without, `tls`'s certificate is who we are.
    public static func connect(
        host: String, port: UInt16, tls context: TlsContext, serverName: String? = nil,
        keyId: String? = nil, key: [UInt8]? = nil, name: String = "lmctfy-client",
        limits: SessionLimits = SessionLimits(), refusingUnit: String? = nil
    ) throws(LmctfyError) -> RpcClient {
        let channel = try TlsChannel(context: context, serverName: serverName ?? host, refusingUnit: refusingUnit)
        let fd = try RpcSocket.connectTCP(host: host, port: port)
        let auth: DiallerAuthentication
        if let keyId, let key { auth = .sharedKey(keyId: keyId, key: key) } else { auth = .certificate }
        return try RpcClient(fd: fd, authentication: auth, name: name, limits: limits, tls: channel)
    }

    /// Whether the connection runs under TLS.
    public var isTls: Bool { tls != nil }
    /// Under TLS: who the acceptor's certificate says it is.
    public var peerCertificate: CertIdentity? { tls?.peerIdentity }
    /// Under TLS: the acceptor's certificate's serial (upper-case hex).
    public var peerCertificateSerial: String? { tls?.peerSerial }
    /// Whether this is TCP without TLS (a shared-key hello, then frames in the clear).
    public private(set) var isPlaintextTcp = false

    deinit { close() }

    /// Sends GOAWAY_NORMAL (if the connection is still up) and closes the
    /// socket (under TLS, after our close_notify).
    public func close() {
        perform(session.goAway(.goawayNormal, message: "client closing", now: MonotonicClock.milliseconds()))
        if let tls, !fdClosed { sendRaw(tls.shutdown()) }
        if !fdClosed {
            fdClosed = true
            Glibc.close(fd)
        }
    }

    /// Sends a request and returns without waiting for anything: what a
    /// caller leaves that is killed after its write (with `drop`). Its
    /// answer, if one comes, is never read.
    public func sendOnly(_ method: String, _ request: [UInt8]) {
        perform(session.openStream(method: method, payload: request, deadlineMs: nil, host: host,
                                   now: MonotonicClock.milliseconds()).actions)
    }

    /// Ends the connection at once, without GOAWAY or TLS close_notify: as a
    /// killed caller's connection ends. The socket is shut down before its
    /// descriptor is closed: in a process with other threads, a child one of
    /// them is spawning holds a copy of the descriptor until its exec, and
    /// a close alone ends nothing while that copy is open (the peer saw the
    /// connection live on; a test's "hung-up" caller had its change made).
    public func drop() {
        if !fdClosed {
            fdClosed = true
            _ = Glibc.shutdown(fd, Int32(SHUT_RDWR))
            Glibc.close(fd)
        }
    }

    /// A second descriptor of the connection's socket (close-on-exec), the
    /// caller's to close; nil once closed. What a child being spawned holds
    /// for a moment (tests of `drop`).
    public func descriptorCopy() -> Int32? {
        guard !fdClosed else { return nil }
        let copy = fcntl(fd, F_DUPFD_CLOEXEC, 0)
        return copy >= 0 ? copy : nil
    }

    /// Whether the connection is closed (by `close()`, a goaway, or an error);
    /// calls then fail.
    public var isClosed: Bool { session.isClosed }

    /// The protocol version agreed in the handshake.
    public var version: UInt32? { session.peer?.version }

    /// A unary call with serialized messages. Throws the call's non-OK status.
    public func call(_ method: String, _ request: [UInt8], deadlineMs: UInt32? = nil) throws(LmctfyError) -> [UInt8] {
        var last: [UInt8] = []
        try stream(method, request, deadlineMs: deadlineMs ?? unaryDeadlineMs) { payload in
            last = payload
            return true
        }
        return last
    }

    /// Unary calls of one method, pipelined on the connection: up to
    /// `inFlight` (and never more than the peer's stream limit) open at once,
    /// the requests opened together written in one send. The results come
    /// in the requests' order, each its own answer or status; a connection
    /// that closes ends every call not yet answered with its reason.
    /// (`lmctl top` read 3,000 containers' specs one round trip at a time.)
    /// `hosts`: at a controller, the host each request is for (PROTOCOL.md
    /// section 9); nil, every request goes to `host`.
    public func callMany(_ method: String, _ requests: [[UInt8]], hosts: [String?]? = nil, inFlight: Int = 64,
                         deadlineMs: UInt32? = nil) -> [Result<[UInt8], LmctfyError>] {
        precondition(hosts == nil || hosts!.count == requests.count, "callMany: one host per request")
        var results = [Result<[UInt8], LmctfyError>?](repeating: nil, count: requests.count)
        var open: [UInt32: (index: Int, last: [UInt8])] = [:]
        let limit = max(1, min(inFlight, Int(peer.maxStreams > 0 ? peer.maxStreams : 1)))
        var next = 0
        while next < requests.count || !open.isEmpty {
            var writes: [UInt8] = []
            while next < requests.count, open.count < limit {
                let (id, actions) = session.openStream(method: method, payload: requests[next], deadlineMs: deadlineMs ?? unaryDeadlineMs,
                                                       host: hosts.map { $0[next] } ?? host, now: MonotonicClock.milliseconds())
                open[id] = (next, [])
                next += 1
                for action in actions {
                    if case .write(let bytes) = action { writes += bytes } else { perform([action]) }
                }
            }
            if !writes.isEmpty { perform([.write(writes)]) }
            for id in Array(open.keys) {
                while let event = inbox[id]?.first {
                    inbox[id]!.removeFirst()
                    switch event {
                    case .response(let payload):
                        open[id]!.last = payload
                    case .status(let status):
                        let entry = open.removeValue(forKey: id)!
                        inbox[id] = nil
                        results[entry.index] = status.code == .ok ? .success(entry.last) : .failure(status.error)
                    }
                }
            }
            if open.isEmpty { continue }
            if session.isClosed {
                // The session ends every open call when it closes: what is
                // left was never answered.
                for (id, entry) in open {
                    inbox[id] = nil
                    results[entry.index] = .failure(Self.error(for: session.closeReason))
                }
                open.removeAll()
                continue
            }
            pumpOnce()
        }
        return results.map { $0! }
    }

    /// A unary call with typed messages.
    public func call<Request: ProtoMessage, Response: ProtoMessage>(
        _ method: String, _ request: Request, as: Response.Type = Response.self, deadlineMs: UInt32? = nil
    ) throws(LmctfyError) -> Response {
        let bytes = try call(method, try encode(request), deadlineMs: deadlineMs)
        return try decode(bytes)
    }

    /// A server-streaming call: `onResponse` sees each response in order and
    /// returns false to cancel the call (then this returns normally). Returns
    /// when the call ends with OK; throws its status otherwise.
    /// `window`: the call is flow-controlled (protocol version 3) and its
    /// request granted this many responses; each one handled is granted
    /// again, half a window at a time, so at most `window` wait here.
    /// `giveUp`: looked at at least every `everyMs` while the call waits,
    /// and between responses; true cancels the call as `onResponse`
    /// returning false does (a follower whose reader went away while no
    /// event came: `lmctl events -f | head -1` waited for the next event
    /// to notice).
    /// `input`: a descriptor read (up to its end) and sent on the call as
    /// INPUT frames as the callee grants them (protocol version 4; a Run
    /// with attach_input); a read error ends the input as its end does.
    public func stream(
        _ method: String, _ request: [UInt8], deadlineMs: UInt32? = nil, window: UInt32? = nil,
        giveUp: (everyMs: Int32, when: () -> Bool)? = nil, input: Int32? = nil, terminal: (any TerminalWatch)? = nil,
        onResponse: ([UInt8]) throws(LmctfyError) -> Bool
    ) throws(LmctfyError) {
        let (id, actions) = session.openStream(method: method, payload: request, deadlineMs: deadlineMs, host: host,
                                               now: MonotonicClock.milliseconds())
        perform(actions)
        var inputOpen = input != nil
        var resized: TerminalWindow?
        inputFailure = nil
        var handled: UInt32 = 0
        var looked = MonotonicClock.milliseconds()
        while true {
            while let event = inbox[id]?.first {
                inbox[id]!.removeFirst()
                switch event {
                case .response(let payload):
                    if try !onResponse(payload) {
                        inbox[id] = nil
                        perform(session.cancel(streamId: id, now: MonotonicClock.milliseconds()))
                        return
                    }
                    if let window {
                        handled += 1
                        if handled >= max(1, window / 2) {
                            perform(session.sendCredit(streamId: id, handled, now: MonotonicClock.milliseconds()))
                            handled = 0
                        }
                    }
                case .status(let status):
                    inbox[id] = nil
                    if status.code == .ok { return }
                    throw status.error
                }
            }
            // The session ends every open call when it closes, so a status
            // is always queued before this could spin.
            guard !session.isClosed else {
                inbox[id] = nil
                throw Self.error(for: session.closeReason)
            }
            if let giveUp, MonotonicClock.milliseconds() - looked >= UInt64(max(0, giveUp.everyMs)) {
                looked = MonotonicClock.milliseconds()
                if giveUp.when() {
                    inbox[id] = nil
                    perform(session.cancel(streamId: id, now: MonotonicClock.milliseconds()))
                    return
                }
            }
            // Input is read only while the callee has room for it; the
            // terminal is watched throughout (what it says may end this
            // process), its last size sent when there is room.
            var watched: [Int32] = []
            if let input, inputOpen && session.inputCredit(streamId: id) > 0 { watched.append(input) }
            if let terminal, terminal.fd >= 0 { watched.append(terminal.fd) }
            let ready = pumpOnce(atMostMs: giveUp?.everyMs, watching: watched)
            if let terminal, ready.contains(terminal.fd), let size = terminal.changed() { resized = size }
            if let size = resized, inputOpen, session.inputCredit(streamId: id) > 0 {
                perform(session.sendInput(streamId: id, [], end: false, window: size, now: MonotonicClock.milliseconds()).actions)
                resized = nil
            }
            if let input, ready.contains(input), session.inputCredit(streamId: id) > 0 {
                inputOpen = sendInput(from: input, on: id)
            }
        }
    }

    /// Why the input of the last streaming call could not be read to its
    /// end (its end was sent there); nil when it could.
    public private(set) var inputFailure: String?

    /// One read of `fd` sent on call `id` as an INPUT frame (its end, at
    /// the end of `fd` or a read error: `inputFailure`); false once the
    /// end was sent.
    private func sendInput(from fd: Int32, on id: UInt32) -> Bool {
        var n: Int
        repeat {
            n = readBuffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, min($0.count, Session.maxInputBytes)) }
        } while n < 0 && errno == EINTR
        if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { return true }
        if n < 0 { inputFailure = "read of descriptor \(fd): \(String(cString: strerror(errno)))" }
        let bytes = n > 0 ? Array(readBuffer[0..<n]) : []
        perform(session.sendInput(streamId: id, bytes, end: n <= 0, now: MonotonicClock.milliseconds()).actions)
        return n > 0
    }

    /// A server-streaming call with typed messages.
    public func stream<Request: ProtoMessage, Response: ProtoMessage>(
        _ method: String, _ request: Request, as: Response.Type = Response.self, deadlineMs: UInt32? = nil,
        window: UInt32? = nil, giveUp: (everyMs: Int32, when: () -> Bool)? = nil, input: Int32? = nil,
        terminal: (any TerminalWatch)? = nil, onResponse: (Response) throws(LmctfyError) -> Bool
    ) throws(LmctfyError) {
        try stream(method, try encode(request), deadlineMs: deadlineMs, window: window, giveUp: giveUp, input: input, terminal: terminal) { (payload: [UInt8]) throws(LmctfyError) -> Bool in
            try onResponse(try decode(payload))
        }
    }

    // MARK: Driving the session

    /// Waits for input or the session's next timer (or `atMostMs`), then
    /// feeds it. Waits for the descriptors `watching` too: returns those
    /// readable (the caller reads them).
    @discardableResult
    private func pumpOnce(atMostMs: Int32? = nil, watching: [Int32] = []) -> [Int32] {
        guard !session.isClosed else { return [] }
        let now = MonotonicClock.milliseconds()
        var timeout: Int32 = -1
        if let wake = session.nextWakeup {
            timeout = wake <= now ? 0 : Int32(clamping: wake - now)
        }
        if let atMostMs, timeout < 0 || timeout > atMostMs { timeout = max(0, atMostMs) }
        var fds = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0)]
        for w in watching { fds.append(pollfd(fd: w, events: Int16(POLLIN), revents: 0)) }
        do {
            let (n, e) = Sys.retry { poll(&fds, nfds_t(fds.count), timeout) }
            if n < 0 { throw SystemError("poll", "fd \(fd)", e) }
            if fds[0].revents != 0 {
                let n = try RpcSocket.receive(fd, into: &readBuffer)
                ingest(n)
            }
        } catch {
            perform(session.receiveEOF(now: MonotonicClock.milliseconds()))
        }
        perform(session.tick(now: MonotonicClock.milliseconds()))
        return fds.dropFirst().filter { $0.revents != 0 }.map(\.fd)
    }

    private func perform(_ actions: [SessionAction]) {
        for action in actions {
            switch action {
            case .write(let plain):
                guard !fdClosed else { continue }
                let bytes = tls.map { $0.seal(plain) } ?? plain
                if bytes.isEmpty { continue }  // under TLS: waits for the handshake
                do {
                    try RpcSocket.sendAll(fd, bytes)
                } catch {
                    // The peer is gone: end every call now rather than at the
                    // next read. What it sent before it went (a goaway saying
                    // why, e.g. "too many connections") is read first.
                    while !session.isClosed, (try? RpcSocket.waitReadable(fd, timeoutMs: 0)) == true,
                          let n = try? RpcSocket.receive(fd, into: &readBuffer), n > 0 {
                        ingest(n)
                    }
                    perform(session.receiveEOF(now: MonotonicClock.milliseconds()))
                }
            case .deliverRequest(let id, let method, _, _, _):
                // The acceptor may call us (both sides may open streams), but
                // this client serves nothing.
                perform(session.sendStatus(streamId: id, CallStatus(.unimplemented, "\(method): this client serves no methods"), now: MonotonicClock.milliseconds()))
            case .deliverResponse(let id, let payload):
                inbox[id, default: []].append(.response(payload))
            case .deliverStatus(let id, let status):
                inbox[id, default: []].append(.status(status))
            case .established, .cancelled, .close, .credit, .input, .inputCredit:
                break
            }
        }
    }

    /// `n` bytes just read into readBuffer (0: end of stream): through TLS
    /// if there is one, then to the session.
    private func ingest(_ n: Int) {
        let at = MonotonicClock.milliseconds()
        guard n > 0 else {
            perform(session.receiveEOF(now: at))
            return
        }
        guard let tls else {
            perform(session.receive(readBuffer[0..<n], now: at))
            return
        }
        let out = tls.feed(Array(readBuffer[0..<n]))
        sendRaw(out.send)
        if !out.plaintext.isEmpty { perform(session.receive(out.plaintext, now: at)) }
        if let failure = tls.failure {
            if tlsFailure == nil { tlsFailure = failure }
            perform(session.receiveEOF(now: at))
        } else if tls.peerClosed {
            perform(session.receiveEOF(now: at))
        }
    }

    /// Bytes as they go on the wire (TLS handshake records, close_notify).
    private func sendRaw(_ bytes: [UInt8]) {
        guard !bytes.isEmpty, !fdClosed else { return }
        try? RpcSocket.sendAll(fd, bytes)
    }

    private static func error(for reason: CloseReason?) -> LmctfyError {
        guard let reason else { return LmctfyError(.unavailable, "connection closed") }
        let code: StatusCode = switch reason.reason {
        case .goawayUnauthenticated: .unauthenticated
        case .goawayPermissionDenied: .permissionDenied
        case .goawayHelloTimeout: .deadlineExceeded
        case .goawayVersionMismatch: .failedPrecondition
        default: .unavailable
        }
        return LmctfyError(code, "connection closed (\(reason))")
    }
}

/// A request as it goes on the wire (INVALID_ARGUMENT when it cannot be).
func encode(_ message: some ProtoMessage) throws(LmctfyError) -> [UInt8] {
    do {
        return try message.serializedBytes()
    } catch {
        throw LmctfyError(.invalidArgument, "cannot encode request: \(error)")
    }
}

/// An answer read from the wire (INTERNAL when the peer's does not decode).
func decode<M: ProtoMessage>(_ bytes: [UInt8]) throws(LmctfyError) -> M {
    do {
        return try M(serializedBytes: bytes)
    } catch {
        throw LmctfyError(.internal, "undecodable \(M.protoDescriptor.fullName) from the peer: \(error)")
    }
}

/// The caller's terminal, whose size `RpcClient.stream(terminal:)` sends
/// on the call (INPUT frames with a window, protocol version 5) as it
/// changes.
public protocol TerminalWatch: AnyObject {
    /// Polls readable when the terminal may have changed size.
    var fd: Int32 { get }
    /// Takes what made `fd` readable; the terminal's size now, or nil when
    /// there is nothing to send.
    func changed() -> TerminalWindow?
}
