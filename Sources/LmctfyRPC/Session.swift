// One connection of the agent protocol as a pure state machine: bytes and
// calls in, actions out (PROTOCOL.md is the contract). It reads no clock and
// touches no socket: every entry point takes `now` (milliseconds on any
// monotonic clock) and the caller performs the returned actions in order.
// This keeps every rule testable without sockets and lets the libuv glue own
// all I/O on its loop thread.
import LmctfyProto
import LmctfySystem

/// The protocol versions this implementation speaks.
public enum ProtocolVersion {
    /// The newest protocol version this implementation speaks (the top of `supported`).
    public static let current: UInt32 = 5
    /// Every version this side accepts; the handshake picks the highest both speak.
    public static let supported: ClosedRange<UInt32> = 1...5
    /// From this version on a RESPONSE may carry the call's status and end
    /// the stream in one frame (PROTOCOL.md section 4).
    public static let finalResponse: UInt32 = 2
    /// From this version on the caller of a flow-controlled stream grants
    /// its responses with CREDIT frames (PROTOCOL.md section 4.4).
    public static let credit: UInt32 = 3
    /// From this version on a caller may send INPUT frames on its call,
    /// within the CREDIT its callee grants (PROTOCOL.md section 4.5).
    public static let input: UInt32 = 4
    /// From this version on an INPUT frame may carry a terminal's new size
    /// (`window`), and a Run may ask for a terminal (PROTOCOL.md section 4.6).
    public static let terminal: UInt32 = 5
}

/// Limits one side applies to what it receives (announced in its hello) and
/// its timers. Defaults are the agent's (PROTOCOL.md section 7).
public struct SessionLimits: Sendable, Equatable {
    /// The largest frame accepted, in bytes (default 4 MiB).
    public var maxFrameBytes: UInt32 = 4 << 20
    /// The most calls open at once on the connection (default 128).
    public var maxStreams: UInt32 = 128
    /// Milliseconds the handshake may take before the connection is closed
    /// (default 10 s).
    public var helloTimeoutMs: UInt64 = 10_000
    /// 0: never.
    public var idleTimeoutMs: UInt64 = 120_000
    /// 0: never.
    public var keepaliveIntervalMs: UInt64 = 30_000

    /// Limits as given; the defaults are the agent's.
    public init(
        maxFrameBytes: UInt32 = 4 << 20, maxStreams: UInt32 = 128, helloTimeoutMs: UInt64 = 10_000,
        idleTimeoutMs: UInt64 = 120_000, keepaliveIntervalMs: UInt64 = 30_000
    ) {
        self.maxFrameBytes = maxFrameBytes
        self.maxStreams = maxStreams
        self.helloTimeoutMs = helloTimeoutMs
        self.idleTimeoutMs = idleTimeoutMs
        self.keepaliveIntervalMs = keepaliveIntervalMs
    }
}

/// The end of a call: a canonical code and a message for humans.
public struct CallStatus: Error, Sendable, Equatable, CustomStringConvertible {
    /// The call's canonical status code; `.ok` for success.
    public var code: StatusCode
    /// For humans; may be empty.
    public var message: String

    /// A status with this code and message.
    public init(_ code: StatusCode, _ message: String = "") {
        self.code = code
        self.message = message
    }

    /// Success, with no message.
    public static let ok = CallStatus(.ok)

    /// The status an lmctfy error ends a call with (its errno is dropped).
    public init(_ error: LmctfyError) { self.init(error.code, error.message) }

    /// From the wire; a code outside 0...16 becomes UNKNOWN, keeping the number.
    public init(wire: RpcStatus) {
        let raw = wire.code ?? StatusCode.unknown.rawValue
        if let code = StatusCode(rawValue: raw) {
            self.init(code, wire.message ?? "")
        } else {
            self.init(.unknown, "status code \(raw): \(wire.message ?? "")")
        }
    }

    /// The status as sent on the wire (an empty message is left out).
    public var wire: RpcStatus { RpcStatus(code: code.rawValue, message: message.isEmpty ? nil : message) }

    /// The status as an LmctfyError with the same code and message.
    public var error: LmctfyError { LmctfyError(code, message) }

    public var description: String { message.isEmpty ? "\(code)" : "\(code): \(message)" }
}

/// Why a connection closed, and which side said so.
public struct CloseReason: Sendable, Equatable, CustomStringConvertible {
    /// The goaway reason: sent, received, or chosen locally when the
    /// connection was lost.
    public var reason: GoAwayReason
    /// For humans: what went wrong, or why the side closed.
    public var message: String
    /// True when the peer sent the goaway (or just went away).
    public var byPeer: Bool

    /// A close for `reason` with `message`, sent by the peer or by us.
    public init(_ reason: GoAwayReason, _ message: String, byPeer: Bool) {
        self.reason = reason
        self.message = message
        self.byPeer = byPeer
    }

    public var description: String {
        "\(byPeer ? "peer" : "local") \(reason.protoName): \(message)"
    }
}

/// The other side, as the handshake established it.
public struct PeerInfo: Sendable, Equatable {
    /// The name the peer gave in its hello (e.g. "lmctl", "lmctfy-agent").
    public var name: String
    /// The protocol version both sides agreed on.
    public var version: UInt32
    /// TCP: the key id the peer proved it holds (the dialler's, on both sides).
    public var keyId: String?
    /// Unix socket, acceptor side: the peer's kernel credentials.
    public var credentials: PeerCredentials?
    /// TLS with a client certificate, acceptor side: who the certificate
    /// says the peer is (the chain was verified against the CA).
    public var certificate: CertIdentity? = nil
    /// What the peer accepts from us.
    public var maxFrameBytes: UInt32
    /// The most calls the peer accepts open at once (100 when it did not say).
    public var maxStreams: UInt32
    /// Optional features the peer announced.
    public var capabilities: [String]
}

extension PeerInfo {
    /// Who the peer is, for a cap on one peer's connections
    /// (max_connections_per_peer): its certificate's common name, its key
    /// id, or its Unix uid.
    public var connectionOwner: String {
        if let c = certificate { return "certificate \"\(c.commonName ?? c.dnsNames.first ?? "")\"" }
        if let k = keyId { return "key \"\(k)\"" }
        if let u = credentials?.uid { return "uid \(u)" }
        return "an unnamed peer"
    }
}

/// What the owner of a session must do, in order.
public enum SessionAction: Sendable, Equatable {
    /// Write these bytes to the connection.
    case write([UInt8])
    /// The handshake succeeded.
    case established(PeerInfo)
    /// The peer called us. `deadline` is absolute on the session's clock.
    /// Answer with `sendResponse` / `sendStatus`.
    /// `host`: at a controller, the host the call is for (Frame.host).
    case deliverRequest(streamId: UInt32, method: String, payload: [UInt8], deadline: UInt64?, host: String? = nil)
    /// One response message for a call we made.
    case deliverResponse(streamId: UInt32, payload: [UInt8])
    /// A call we made has ended (from the peer, or locally: deadline,
    /// oversize request, too many streams, connection closed).
    case deliverStatus(streamId: UInt32, CallStatus)
    /// Stop working on a call the peer made: it cancelled, its deadline
    /// passed, or the connection is closing. Anything sent on it is dropped.
    case cancelled(streamId: UInt32, CallStatus)
    /// The caller of a call the peer made grants `credit` more responses
    /// (version 3; only flow-controlled calls use it).
    case credit(streamId: UInt32, UInt32)
    /// The caller of a call the peer made sent input on it (version 4):
    /// `end` says none follows. Only ever within the credit granted with
    /// `sendInputCredit`.
    /// `window` (version 5): the caller's terminal has this size now,
    /// before the payload.
    case input(streamId: UInt32, payload: [UInt8], end: Bool, window: TerminalWindow? = nil)
    /// The callee of a call we made grants `credit` more INPUT frames
    /// (version 4); `sendInput` takes them.
    case inputCredit(streamId: UInt32, UInt32)
    /// Close the connection after performing the actions before this one.
    case close(CloseReason)
}

extension SessionLimits {
    /// The session limits of a config's AgentLimits (the agent's and the
    /// controller's); INVALID_ARGUMENT naming `source` for a frame limit
    /// under 1024 bytes.
    public init(_ l: AgentLimits, source: String) throws(LmctfyError) {
        self.init()
        if let v = l.maxFrameBytes {
            guard v >= 1024 else { throw .invalidArgument("\(source): limits.max_frame_bytes must be at least 1024") }
            maxFrameBytes = v
        }
        if let v = l.maxStreamsPerConnection { maxStreams = max(1, v) }
        if let v = l.helloTimeoutMs { helloTimeoutMs = UInt64(v) }
        if let v = l.idleTimeoutMs { idleTimeoutMs = UInt64(v) }
        if let v = l.keepaliveIntervalMs { keepaliveIntervalMs = UInt64(v) }
    }
}

/// Which side of the connection a session is.
public enum SessionRole: Sendable, Equatable {
    /// The dialler connected and speaks first; the acceptor answers (the agent).
    case dialler, acceptor
}

/// One connection. Not thread-safe: one owner (the loop thread) drives it.
public struct Session: Sendable {
    /// Which side this session is.
    public let role: SessionRole
    /// What this side accepts and its timers (announced in its hello).
    public let limits: SessionLimits
    /// This side's name, sent as `peer_name` in its hello (e.g. "lmctl").
    public let name: String
    /// The other side, once the handshake succeeded; nil before.
    public private(set) var peer: PeerInfo?
    /// Whether the session has closed; it then ignores input.
    public private(set) var isClosed = false
    /// Why the session closed; nil while it is open.
    public private(set) var closeReason: CloseReason?
    /// Whether the handshake succeeded and the session is not closed: calls may flow.
    public var isEstablished: Bool { peer != nil && !isClosed }

    private enum Handshake: Sendable {
        case diallerIdle(DiallerAuthentication)
        case diallerOffered(DiallerAuthentication, clientNonce: [UInt8]?, versions: ClosedRange<UInt32>)
        case diallerProved(keyId: String, versions: ClosedRange<UInt32>)
        case acceptorWaiting(AcceptorAuthentication)
        case acceptorChallenged(Challenge)
        case done
    }

    private struct Challenge: Sendable {
        var key: [UInt8]
        var keyId: String
        var clientNonce: [UInt8]
        var serverNonce: [UInt8]
        var version: UInt32
        var offer: Hello
    }

    /// A call opened before the handshake finished; sent once it has.
    private struct PendingCall: Sendable {
        var streamId: UInt32
        var method: String
        var payload: [UInt8]
        var deadlineMs: UInt32?
        var deadline: UInt64?
        var host: String?
    }

    private var handshake: Handshake
    private let nonces: any NonceSource
    private var decoder: FrameDecoder
    /// Bytes received that are not a whole frame yet (after `receive`, an
    /// incomplete frame's: InboundBudget).
    public var bufferedInboundBytes: Int { decoder.bufferedBytes }
    private let startedAt: UInt64
    private var lastReceived: UInt64
    private var lastPingSent: UInt64
    private var pingCounter: UInt64 = 0
    /// The inline lane's response message, reused from call to call.
    private var inlineScratch: [UInt8] = []

    /// Calls we made: stream id -> absolute deadline.
    private var outgoing: [UInt32: UInt64?] = [:]
    /// Calls the peer made: stream id -> absolute deadline.
    private var incoming: [UInt32: UInt64?] = [:]
    /// Input on calls the peer made (version 4): the INPUT frames granted
    /// and not yet received, and whether its end came. An entry only while
    /// the call is open and after a grant.
    private var inputIn: [UInt32: (credit: UInt32, ended: Bool)] = [:]
    /// Input on calls we made: the INPUT frames the callee granted and we
    /// have not sent, and whether we sent the end.
    private var inputOut: [UInt32: (credit: UInt32, ended: Bool)] = [:]
    private var pending: [PendingCall] = []
    private var lastLocalId: UInt32 = 0
    /// The versions a dialler offers (all it speaks, but for tests).
    private var offered = ProtocolVersion.supported
    private var lastPeerId: UInt32 = 0

    /// A dialling side (we called connect). Call `start(now:)` to send the offer.
    public init(
        dialler auth: DiallerAuthentication, name: String, limits: SessionLimits = SessionLimits(),
        nonces: any NonceSource = SystemNonceSource(), now: UInt64
    ) {
        self.init(role: .dialler, handshake: .diallerIdle(auth), name: name, limits: limits, nonces: nonces, now: now)
    }

    /// A dialling side that offers only `versions` (within the supported
    /// ones): a peer as an older implementation would be (tests).
    public init(
        dialler auth: DiallerAuthentication, name: String, offering versions: ClosedRange<UInt32>, now: UInt64
    ) {
        self.init(dialler: auth, name: name, now: now)
        offered = versions.clamped(to: ProtocolVersion.supported)
    }

    /// An accepting side (we called accept). It waits for the peer's offer.
    public init(
        acceptor auth: AcceptorAuthentication, name: String, limits: SessionLimits = SessionLimits(),
        nonces: any NonceSource = SystemNonceSource(), now: UInt64
    ) {
        self.init(role: .acceptor, handshake: .acceptorWaiting(auth), name: name, limits: limits, nonces: nonces, now: now)
    }

    private init(
        role: SessionRole, handshake: Handshake, name: String, limits: SessionLimits,
        nonces: any NonceSource, now: UInt64
    ) {
        self.role = role
        self.handshake = handshake
        self.name = name
        self.limits = limits
        self.nonces = nonces
        self.decoder = FrameDecoder(maxFrameBytes: min(limits.maxFrameBytes, FrameCodec.helloMaxFrameBytes))
        self.startedAt = now
        self.lastReceived = now
        self.lastPingSent = now
    }

    /// Calls (ours and the peer's) that have not ended.
    public var openStreamCount: Int { outgoing.count + incoming.count + pending.count }

    // MARK: Entry points

    /// Dialler: sends the offer. Acceptor: nothing to do.
    public mutating func start(now: UInt64) -> [SessionAction] {
        guard !isClosed, case .diallerIdle(let auth) = handshake else { return [] }
        let versions = offered
        var hello = Hello(
            stage: .helloOffer, minVersion: versions.lowerBound, maxVersion: versions.upperBound,
            peerName: name, maxFrameBytes: limits.maxFrameBytes, maxStreams: limits.maxStreams)
        var clientNonce: [UInt8]?
        if case .sharedKey(let keyId, _) = auth {
            let n = nonces.nonce()
            hello.keyId = keyId
            hello.nonce = n
            clientNonce = n
        }
        handshake = .diallerOffered(auth, clientNonce: clientNonce, versions: versions)
        return [.write(FrameCodec.encode(Frame(kind: .frameHello, hello: hello)))]
    }

    // Concrete overloads, so callers in other modules get the specialised code.
    /// Bytes read from the connection: returns the actions they call for,
    /// to perform in order. `now` is milliseconds on the session's clock.
    public mutating func receive(_ bytes: [UInt8], now: UInt64) -> [SessionAction] {
        receiveBytes(bytes, now: now)
    }

    /// `receive` for a slice of a read buffer.
    public mutating func receive(_ bytes: ArraySlice<UInt8>, now: UInt64) -> [SessionAction] {
        receiveBytes(bytes, now: now)
    }

    /// `receive` for any collection of bytes.
    public mutating func receive(_ bytes: some Collection<UInt8>, now: UInt64) -> [SessionAction] {
        receiveBytes(bytes, now: now)
    }

    /// `receive`, answering the plainest unary requests for the methods
    /// `inline` takes at once (InlineCalls.swift): their answers come back
    /// as `.write` actions, in order with the rest, one per run of them.
    public mutating func receive(_ bytes: [UInt8], now: UInt64, inline: any InlineResponder) -> [SessionAction] {
        receiveBytes(bytes, now: now, inline: inline)
    }

    private mutating func receiveBytes(_ bytes: some Collection<UInt8>, now: UInt64,
                                       inline: (any InlineResponder)? = nil) -> [SessionAction] {
        guard !isClosed else { return [] }
        lastReceived = now
        decoder.feed(bytes)
        var actions: [SessionAction] = []
        var answers: [UInt8] = []
        while !isClosed {
            let body: Range<Int>?
            do {
                body = try decoder.nextBody()
            } catch {
                if !answers.isEmpty { actions.append(.write(answers)); answers = [] }
                actions += closeLocally(error.goAwayReason, error.description)
                break
            }
            guard let body else { break }
            if let inline, answerInline(body, inline, into: &answers) {
                decoder.skip(body)
                continue
            }
            if !answers.isEmpty { actions.append(.write(answers)); answers = [] }
            let frame: Frame
            do {
                frame = try decoder.decode(body)
            } catch {
                actions += closeLocally(error.goAwayReason, error.description)
                break
            }
            actions += handle(frame, now: now)
        }
        if !answers.isEmpty { actions.append(.write(answers)) }
        return actions
    }

    /// The inline lane: true when the frame was a plain request `inline`
    /// answered (its answer appended to `out`), false when it takes the
    /// normal path -- also for every request the normal path would refuse,
    /// which then refuses it exactly as before.
    private mutating func answerInline(_ body: Range<Int>, _ inline: any InlineResponder,
                                       into out: inout [UInt8]) -> Bool {
        guard let version = peer?.version, let maxFrame = peer?.maxFrameBytes, !isClosed,
              incoming.count < Int(limits.maxStreams) else { return false }
        let lastPeer = lastPeerId
        let dialler = role == .dialler
        let combined = version >= ProtocolVersion.finalResponse
        var scratch: [UInt8] = []
        swap(&scratch, &inlineScratch)
        defer {
            // Kept for the next small answer; a big one's room goes (each
            // connection kept its largest echo, 4 MiB, for good).
            if scratch.capacity > 65536 { scratch = [] }
            swap(&scratch, &inlineScratch)
        }
        let answered: UInt32? = decoder.withBody(body) { p in
            guard let r = InlineWire.scanRequest(p) else { return nil }
            // The normal path's stream-id rules: the peer's parity, rising.
            guard r.streamId != 0, (r.streamId % 2 == 1) != dialler, r.streamId > lastPeer else { return nil }
            scratch.removeAll(keepingCapacity: true)
            guard inline.answerInline(method: UnsafeRawBufferPointer(rebasing: p[r.method]),
                                      request: UnsafeRawBufferPointer(rebasing: p[r.payload]),
                                      response: &scratch) else { return nil }
            guard InlineWire.appendResponse(id: r.streamId, message: scratch, combined: combined,
                                            maxFrameBytes: maxFrame, to: &out) else { return nil }
            return r.streamId
        }
        guard let answered else { return false }
        lastPeerId = answered
        return true
    }

    /// The peer closed its side (read returned 0) or the connection broke.
    public mutating func receiveEOF(now: UInt64) -> [SessionAction] {
        guard !isClosed else { return [] }
        do {
            try decoder.finish()
        } catch {
            return shutDown(CloseReason(.goawayTruncated, error.description, byPeer: true), sendGoAway: false)
        }
        return shutDown(CloseReason(.goawayUnspecified, "connection closed by peer without goaway", byPeer: true), sendGoAway: false)
    }

    /// Makes a call. The id is returned at once; the outcome arrives as
    /// `.deliverResponse` / `.deliverStatus` actions (possibly among these).
    /// Calls made before the handshake is done are sent when it is.
    public mutating func openStream(
        method: String, payload: [UInt8], deadlineMs: UInt32? = nil, host: String? = nil, now: UInt64
    ) -> (streamId: UInt32, actions: [SessionAction]) {
        let base: UInt32 = role == .dialler ? 1 : 2
        guard lastLocalId <= UInt32.max - 2 else {
            return (0, [.deliverStatus(streamId: 0, CallStatus(.resourceExhausted, "stream ids exhausted on this connection"))])
        }
        let id = lastLocalId == 0 ? base : lastLocalId + 2
        lastLocalId = id
        if isClosed {
            return (id, [.deliverStatus(streamId: id, CallStatus(.unavailable, "connection closed: \(closeReason?.description ?? "")"))])
        }
        let deadline = deadlineMs.flatMap { $0 > 0 ? now + UInt64($0) : nil }
        let call = PendingCall(streamId: id, method: method, payload: payload, deadlineMs: deadlineMs, deadline: deadline, host: host)
        if peer == nil {
            pending.append(call)
            return (id, [])
        }
        return (id, send(call))
    }

    /// One response message on a call the peer made. Dropped if the call has
    /// already ended (cancelled or past its deadline): handlers race those.
    public mutating func sendResponse(streamId: UInt32, payload: [UInt8], now: UInt64) -> [SessionAction] {
        guard !isClosed, incoming[streamId] != nil, let peer else { return [] }
        let frame = FrameCodec.encode(Frame(kind: .frameResponse, streamId: streamId, payload: payload))
        guard frame.count - FrameCodec.headerBytes <= Int(peer.maxFrameBytes) else {
            let status = CallStatus(.resourceExhausted, "response of \(frame.count - FrameCodec.headerBytes) bytes exceeds the peer's frame limit of \(peer.maxFrameBytes)")
            endIncoming(streamId)
            return [.write(statusFrame(streamId, status)), .cancelled(streamId: streamId, status)]
        }
        return [.write(frame)]
    }

    /// The last response of a call the peer made and its status: one frame
    /// (a RESPONSE carrying the status) when the peer speaks version 2 or
    /// later, RESPONSE then STATUS (in one write) with version 1. Dropped if
    /// the call has already ended. A response too large for the peer ends
    /// the call with RESOURCE_EXHAUSTED instead. Either way the call is over.
    public mutating func sendFinal(streamId: UInt32, payload: [UInt8], _ status: CallStatus, now: UInt64) -> [SessionAction] {
        guard !isClosed, endIncoming(streamId), let peer else { return [] }
        let combined = peer.version >= ProtocolVersion.finalResponse
        var bytes: [UInt8] = []
        FrameCodec.append(Frame(kind: .frameResponse, streamId: streamId, payload: payload,
                                status: combined ? status.wire : nil), to: &bytes)
        guard bytes.count - FrameCodec.headerBytes <= Int(peer.maxFrameBytes) else {
            let status = CallStatus(.resourceExhausted, "response of \(bytes.count - FrameCodec.headerBytes) bytes exceeds the peer's frame limit of \(peer.maxFrameBytes)")
            return [.write(statusFrame(streamId, status))]
        }
        if !combined { bytes += statusFrame(streamId, status) }
        return [.write(bytes)]
    }

    /// Ends a call the peer made. Dropped if it has already ended.
    public mutating func sendStatus(streamId: UInt32, _ status: CallStatus, now: UInt64) -> [SessionAction] {
        guard !isClosed, endIncoming(streamId) else { return [] }
        return [.write(statusFrame(streamId, status))]
    }

    /// Abandons a call we made. No status is delivered for it afterwards.
    public mutating func cancel(streamId: UInt32, now: UInt64) -> [SessionAction] {
        if let i = pending.firstIndex(where: { $0.streamId == streamId }) {
            pending.remove(at: i)
            return []
        }
        guard !isClosed, endOutgoing(streamId) else { return [] }
        return [.write(FrameCodec.encode(Frame(kind: .frameCancel, streamId: streamId)))]
    }

    /// Grants `credit` more responses on a call we made (version 3; dropped
    /// for an older peer, a call already over, or 0).
    public mutating func sendCredit(streamId: UInt32, _ credit: UInt32, now: UInt64) -> [SessionAction] {
        guard !isClosed, credit > 0, outgoing[streamId] != nil, let peer, peer.version >= ProtocolVersion.credit else { return [] }
        return [.write(FrameCodec.encode(Frame(kind: .frameCredit, streamId: streamId, credit: credit)))]
    }

    /// Grants the caller of a call the peer made `credit` more INPUT frames
    /// (version 4; dropped for an older peer, a call already over, one
    /// whose input has ended, or 0).
    public mutating func sendInputCredit(streamId: UInt32, _ credit: UInt32, now: UInt64) -> [SessionAction] {
        guard !isClosed, credit > 0, incoming[streamId] != nil, let peer, peer.version >= ProtocolVersion.input else { return [] }
        var state = inputIn[streamId] ?? (0, false)
        guard !state.ended else { return [] }
        state.credit = Self.adding(state.credit, credit)
        inputIn[streamId] = state
        return [.write(FrameCodec.encode(Frame(kind: .frameCredit, streamId: streamId, credit: credit)))]
    }

    /// How many INPUT frames a call we made may send now (the callee's
    /// grants less what was sent); 0 once its end was sent or the call is over.
    public func inputCredit(streamId: UInt32) -> UInt32 {
        guard let state = inputOut[streamId], !state.ended, outgoing[streamId] != nil else { return 0 }
        return state.credit
    }

    /// Sends input on a call we made (version 4), at most
    /// `maxInputBytes`, within the callee's credit; `end`: the last.
    /// Dropped (false) when there is no credit or the call is over.
    /// `window` (version 5; dropped before): the caller's terminal's new size.
    public mutating func sendInput(streamId: UInt32, _ payload: [UInt8], end: Bool, window: TerminalWindow? = nil,
                                   now: UInt64) -> (sent: Bool, actions: [SessionAction]) {
        guard !isClosed, outgoing[streamId] != nil, payload.count <= Self.maxInputBytes,
              var state = inputOut[streamId], !state.ended, state.credit > 0 else { return (false, []) }
        let size = window.flatMap { (peer?.version ?? 0) >= ProtocolVersion.terminal ? $0 : nil }
        state.credit -= 1
        state.ended = end
        inputOut[streamId] = state
        return (true, [.write(FrameCodec.encode(Frame(kind: .frameInput, streamId: streamId, payload: payload,
                                                      inputEnd: end ? true : nil,
                                                      window: size.map { TerminalSize(rows: UInt32($0.rows), cols: UInt32($0.cols)) })))])
    }

    /// The most bytes one INPUT frame carries (PROTOCOL.md section 4.5).
    public static let maxInputBytes = 65_536

    /// Ends a call the peer made, with its input; false when it was not open.
    @discardableResult
    private mutating func endIncoming(_ id: UInt32) -> Bool {
        guard incoming.removeValue(forKey: id) != nil else { return false }
        // (Only touched when it holds something: a unary call's end
        // would otherwise hash its id once more.)
        if !inputIn.isEmpty { inputIn[id] = nil }
        return true
    }

    /// Ends a call we made, with its input; false when it was not open.
    @discardableResult
    private mutating func endOutgoing(_ id: UInt32) -> Bool {
        guard outgoing.removeValue(forKey: id) != nil else { return false }
        if !inputOut.isEmpty { inputOut[id] = nil }
        return true
    }

    /// Input credit granted so far plus `more`, at most UInt32.max.
    private static func adding(_ credit: UInt32, _ more: UInt32) -> UInt32 {
        let (sum, overflow) = credit.addingReportingOverflow(more)
        return overflow ? .max : sum
    }

    /// Closes the connection in order: goaway, then every open call ends.
    public mutating func goAway(_ reason: GoAwayReason = .goawayNormal, message: String, now: UInt64) -> [SessionAction] {
        guard !isClosed else { return [] }
        return closeLocally(reason, message)
    }

    /// Timers: deadlines, hello timeout, idle timeout, keepalive. Call it at
    /// `nextWakeup` (calling it more often is harmless).
    public mutating func tick(now: UInt64) -> [SessionAction] {
        guard !isClosed else { return [] }
        if peer == nil && now >= startedAt + limits.helloTimeoutMs {
            return closeLocally(.goawayHelloTimeout, "handshake not done within \(limits.helloTimeoutMs) ms")
        }
        if peer != nil && limits.idleTimeoutMs > 0 && now >= lastReceived + limits.idleTimeoutMs {
            return closeLocally(.goawayIdleTimeout, "nothing received for \(limits.idleTimeoutMs) ms")
        }
        var actions: [SessionAction] = []
        if !pending.isEmpty {
            for call in pending where call.deadline.map({ now >= $0 }) ?? false {
                actions.append(.deliverStatus(streamId: call.streamId, deadlineStatus(call.deadlineMs)))
            }
            pending.removeAll { $0.deadline.map { now >= $0 } ?? false }
        }
        // Only the streams past their deadline, in id order (a controller
        // ticks thousands of sessions: nothing is copied or sorted for a
        // session with nothing due).
        let dueOut = outgoing.compactMap { id, d in d.map { now >= $0 } == true ? id : nil }
        for id in dueOut.sorted() {
            endOutgoing(id)
            actions.append(.write(FrameCodec.encode(Frame(kind: .frameCancel, streamId: id))))
            actions.append(.deliverStatus(streamId: id, CallStatus(.deadlineExceeded, "deadline exceeded")))
        }
        let dueIn = incoming.compactMap { id, d in d.map { now >= $0 } == true ? id : nil }
        for id in dueIn.sorted() {
            endIncoming(id)
            let status = CallStatus(.deadlineExceeded, "deadline exceeded")
            actions.append(.write(statusFrame(id, status)))
            actions.append(.cancelled(streamId: id, status))
        }
        if peer != nil && limits.keepaliveIntervalMs > 0
            && now >= lastReceived + limits.keepaliveIntervalMs
            && now >= lastPingSent + limits.keepaliveIntervalMs {
            lastPingSent = now
            pingCounter += 1
            actions.append(.write(FrameCodec.encode(Frame(kind: .framePing, payload: bigEndian(pingCounter)))))
        }
        return actions
    }

    /// When `tick` next has something to do; nil when closed.
    public var nextWakeup: UInt64? {
        guard !isClosed else { return nil }
        var times: [UInt64] = []
        if peer == nil {
            times.append(startedAt + limits.helloTimeoutMs)
        } else {
            if limits.idleTimeoutMs > 0 { times.append(lastReceived + limits.idleTimeoutMs) }
            if limits.keepaliveIntervalMs > 0 {
                times.append(max(lastReceived, lastPingSent) + limits.keepaliveIntervalMs)
            }
        }
        times += pending.compactMap(\.deadline)
        times += outgoing.values.compactMap { $0 }
        times += incoming.values.compactMap { $0 }
        return times.min()
    }

    // MARK: Frames in

    private mutating func handle(_ frame: Frame, now: UInt64) -> [SessionAction] {
        // decodeBody guarantees a known kind.
        let kind = frame.kind ?? .frameKindUnspecified
        switch kind {
        case .frameGoaway:
            guard let g = frame.goaway else { return closeLocally(.goawayMalformedFrame, "GOAWAY frame without goaway") }
            return shutDown(CloseReason(g.reason ?? .goawayUnspecified, g.message ?? "", byPeer: true), sendGoAway: false)
        case .frameHello, .framePing, .framePong:
            // The connection's own frames are on stream 0 (one on a call's
            // stream was taken as the connection's: a probe).
            if let id = frame.streamId, id != 0 {
                return closeLocally(.goawayProtocolError, "\(kind.protoName) on stream \(id): it is the connection's, on stream 0")
            }
            guard kind == .frameHello else { break }
            guard let hello = frame.hello else { return closeLocally(.goawayMalformedFrame, "HELLO frame without hello") }
            guard peer == nil else { return closeLocally(.goawayProtocolError, "HELLO after the handshake") }
            return handleHello(hello, now: now)
        default:
            break
        }
        guard peer != nil else {
            return closeLocally(.goawayProtocolError, "\(kind.protoName) before the handshake is done")
        }
        let id = frame.streamId ?? 0
        switch kind {
        case .frameRequest:
            return handleRequest(frame, id: id, now: now)
        case .frameResponse, .frameStatus:
            guard id != 0 else { return closeLocally(.goawayProtocolError, "\(kind.protoName) on stream 0") }
            guard isLocal(id) else {
                return closeLocally(.goawayProtocolError, "\(kind.protoName) on stream \(id), which the peer opened")
            }
            if kind == .frameStatus && frame.status?.code == nil {
                return closeLocally(.goawayMalformedFrame, "STATUS frame without a code on stream \(id)")
            }
            // Version 2: a RESPONSE carrying a status is also the end of the
            // stream (version 1 ignores the field on a RESPONSE).
            let ends = kind == .frameResponse && frame.status != nil
                && (peer?.version ?? 0) >= ProtocolVersion.finalResponse
            if ends && frame.status?.code == nil {
                return closeLocally(.goawayMalformedFrame, "RESPONSE frame with a status without a code on stream \(id)")
            }
            guard outgoing[id] != nil else {
                // Ended locally (deadline, cancel) while this was in flight.
                if id <= lastLocalId { return [] }
                return closeLocally(.goawayProtocolError, "\(kind.protoName) on stream \(id), which was never opened")
            }
            if ends {
                endOutgoing(id)
                return [.deliverResponse(streamId: id, payload: frame.payload ?? []),
                        .deliverStatus(streamId: id, CallStatus(wire: frame.status!))]
            }
            if kind == .frameResponse {
                return [.deliverResponse(streamId: id, payload: frame.payload ?? [])]
            }
            endOutgoing(id)
            return [.deliverStatus(streamId: id, CallStatus(wire: frame.status!))]
        case .frameCancel:
            guard id != 0, !isLocal(id) else {
                return closeLocally(.goawayProtocolError, "CANCEL on stream \(id), which the peer did not open")
            }
            guard endIncoming(id) else {
                if id <= lastPeerId { return [] }
                return closeLocally(.goawayProtocolError, "CANCEL on stream \(id), which was never opened")
            }
            return [.cancelled(streamId: id, CallStatus(.cancelled, "cancelled by the caller"))]
        case .framePing:
            let payload = frame.payload ?? []
            guard payload.count <= 64 else {
                return closeLocally(.goawayProtocolError, "PING payload of \(payload.count) bytes exceeds 64")
            }
            return [.write(FrameCodec.encode(Frame(kind: .framePong, payload: payload)))]
        case .framePong:
            return []
        case .frameCredit:
            let version = peer?.version ?? 0
            guard version >= ProtocolVersion.credit else {
                return closeLocally(.goawayMalformedFrame, "CREDIT frame in protocol version \(version)")
            }
            // Version 4: from the callee of a call we made, input credit;
            // otherwise only the caller of the peer's call grants.
            let forInput = id != 0 && isLocal(id) && version >= ProtocolVersion.input
            guard forInput || (id != 0 && !isLocal(id)) else {
                return closeLocally(.goawayProtocolError, "CREDIT on stream \(id), which the peer did not open")
            }
            guard let credit = frame.credit, credit > 0 else {
                return closeLocally(.goawayMalformedFrame, "CREDIT frame without a credit on stream \(id)")
            }
            if forInput {
                guard outgoing[id] != nil else {
                    if id <= lastLocalId { return [] }  // the call is over
                    return closeLocally(.goawayProtocolError, "CREDIT on stream \(id), which was never opened")
                }
                var state = inputOut[id] ?? (0, false)
                if state.ended { return [] }
                state.credit = Self.adding(state.credit, credit)
                inputOut[id] = state
                return [.inputCredit(streamId: id, credit)]
            }
            guard incoming[id] != nil else {
                if id <= lastPeerId { return [] }  // the call is over
                return closeLocally(.goawayProtocolError, "CREDIT on stream \(id), which was never opened")
            }
            return [.credit(streamId: id, credit)]
        case .frameInput:
            let version = peer?.version ?? 0
            guard version >= ProtocolVersion.input else {
                return closeLocally(.goawayMalformedFrame, "INPUT frame in protocol version \(version)")
            }
            guard id != 0, !isLocal(id) else {
                return closeLocally(.goawayProtocolError, "INPUT on stream \(id), which the peer did not open")
            }
            let payload = frame.payload ?? []
            guard payload.count <= Self.maxInputBytes else {
                return closeLocally(.goawayMalformedFrame, "INPUT of \(payload.count) bytes on stream \(id) exceeds \(Self.maxInputBytes)")
            }
            guard incoming[id] != nil else {
                if id <= lastPeerId { return [] }  // the call is over
                return closeLocally(.goawayProtocolError, "INPUT on stream \(id), which was never opened")
            }
            guard var state = inputIn[id], !state.ended, state.credit > 0 else {
                let why = inputIn[id]?.ended == true ? "after its end" : "beyond the credit granted"
                return closeLocally(.goawayProtocolError, "INPUT on stream \(id) \(why)")
            }
            var window: TerminalWindow?
            if let w = frame.window {
                guard version >= ProtocolVersion.terminal else {
                    return closeLocally(.goawayMalformedFrame, "INPUT with a window in protocol version \(version)")
                }
                guard let size = TerminalWindow(rows: w.rows, cols: w.cols) else {
                    return closeLocally(.goawayMalformedFrame,
                                        "INPUT on stream \(id) with a window of \(w.rows ?? 0)x\(w.cols ?? 0) (each 1 to 65535)")
                }
                window = size
            }
            let end = frame.inputEnd == true
            state.credit -= 1
            state.ended = end
            inputIn[id] = state
            return [.input(streamId: id, payload: payload, end: end, window: window)]
        case .frameHello, .frameGoaway, .frameKindUnspecified:
            return []
        }
    }

    private mutating func handleRequest(_ frame: Frame, id: UInt32, now: UInt64) -> [SessionAction] {
        guard id != 0, !isLocal(id) else {
            return closeLocally(.goawayProtocolError, "REQUEST on stream \(id): wrong parity for the peer")
        }
        guard id > lastPeerId else {
            return closeLocally(.goawayProtocolError, "REQUEST reuses stream \(id) (last was \(lastPeerId))")
        }
        guard let method = frame.method, !method.isEmpty else {
            return closeLocally(.goawayMalformedFrame, "REQUEST on stream \(id) without a method")
        }
        lastPeerId = id
        guard incoming.count < Int(limits.maxStreams) else {
            return [.write(statusFrame(id, CallStatus(.resourceExhausted, "more than \(limits.maxStreams) concurrent streams")))]
        }
        let deadline = frame.deadlineMs.flatMap { $0 > 0 ? now + UInt64($0) : nil }
        incoming[id] = .some(deadline)
        return [.deliverRequest(streamId: id, method: method, payload: frame.payload ?? [], deadline: deadline, host: frame.host)]
    }

    // MARK: Handshake

    private mutating func handleHello(_ hello: Hello, now: UInt64) -> [SessionAction] {
        if let m = hello.maxFrameBytes, m < Self.minPeerFrameBytes {
            return closeLocally(.goawayProtocolError, "max_frame_bytes \(m) is below the protocol's minimum of \(Self.minPeerFrameBytes)")
        }
        switch (handshake, hello.stage) {
        case (.acceptorWaiting(let auth), .helloOffer?):
            return acceptOffer(hello, auth: auth)
        case (.acceptorChallenged(let c), .helloProof?):
            let expected = HandshakeMAC.proof(
                key: c.key, label: HandshakeMAC.diallerLabel, version: c.version, keyId: c.keyId,
                clientNonce: c.clientNonce, serverNonce: c.serverNonce)
            guard Crypto.constantTimeEqual(expected, hello.proof ?? []) else {
                return closeLocally(.goawayUnauthenticated, "wrong proof for key \(c.keyId)")
            }
            return accept(c.offer, version: c.version, keyId: c.keyId, credentials: nil)
        case (.diallerOffered(.sharedKey(let keyId, let key), let clientNonce?, let versions), .helloChallenge?):
            let version = hello.version ?? 0
            guard versions.contains(version) else {
                return closeLocally(.goawayVersionMismatch, "acceptor chose version \(version), outside \(versions)")
            }
            let serverNonce = hello.nonce ?? []
            guard serverNonce.count == HandshakeMAC.nonceBytes, serverNonce != clientNonce else {
                return closeLocally(.goawayUnauthenticated, "acceptor nonce is not 32 fresh bytes")
            }
            let expected = HandshakeMAC.proof(
                key: key, label: HandshakeMAC.acceptorLabel, version: version, keyId: keyId,
                clientNonce: clientNonce, serverNonce: serverNonce)
            guard Crypto.constantTimeEqual(expected, hello.proof ?? []) else {
                return closeLocally(.goawayUnauthenticated, "acceptor does not hold key \(keyId)")
            }
            let proof = HandshakeMAC.proof(
                key: key, label: HandshakeMAC.diallerLabel, version: version, keyId: keyId,
                clientNonce: clientNonce, serverNonce: serverNonce)
            handshake = .diallerProved(keyId: keyId, versions: versions)
            return [.write(FrameCodec.encode(Frame(kind: .frameHello, hello: Hello(stage: .helloProof, proof: proof))))]
        case (.diallerOffered(.peerCredentials, _, let versions), .helloAccepted?),
             (.diallerOffered(.certificate, _, let versions), .helloAccepted?):
            return established(by: hello, versions: versions, keyId: nil)
        case (.diallerProved(let keyId, let versions), .helloAccepted?):
            return established(by: hello, versions: versions, keyId: keyId)
        case (.diallerOffered(.sharedKey, _, _), .helloAccepted?):
            // Accepting without a challenge would skip the acceptor's proof.
            return closeLocally(.goawayUnauthenticated, "acceptor accepted without proving it holds the key")
        default:
            return closeLocally(.goawayProtocolError, "unexpected hello stage \(hello.stage?.protoName ?? "none")")
        }
    }

    private mutating func acceptOffer(_ offer: Hello, auth: AcceptorAuthentication) -> [SessionAction] {
        let low = offer.minVersion ?? 1
        let high = offer.maxVersion ?? low
        guard low <= high, high >= ProtocolVersion.supported.lowerBound, low <= ProtocolVersion.supported.upperBound else {
            return closeLocally(.goawayVersionMismatch, "no common version: peer speaks \(low)...\(high), we speak \(ProtocolVersion.supported)")
        }
        let version = min(high, ProtocolVersion.supported.upperBound)
        switch auth {
        case .peerCredentials(let credentials, let policy):
            guard policy.allows(credentials) else {
                // A peer the socket does not admit is not authenticated at all
                // (issue #5): it learns nothing beyond UNAUTHENTICATED.
                return closeLocally(.goawayUnauthenticated, "uid \(credentials.uid) gid \(credentials.gid) may not use this socket")
            }
            return accept(offer, version: version, keyId: nil, credentials: credentials)
        case .certificate(let identity):
            // The TLS handshake verified the chain; the certificate is the
            // identity (a key id in the offer proves nothing here and is ignored).
            return accept(offer, version: version, keyId: nil, credentials: nil, certificate: identity)
        case .sharedKey(let keyring, let replays):
            guard let keyId = offer.keyId, let key = keyring.key(keyId) else {
                return closeLocally(.goawayUnauthenticated, "unknown or missing key id \(offer.keyId ?? "")")
            }
            let clientNonce = offer.nonce ?? []
            guard clientNonce.count == HandshakeMAC.nonceBytes else {
                return closeLocally(.goawayUnauthenticated, "client nonce must be \(HandshakeMAC.nonceBytes) bytes")
            }
            guard replays.insert(clientNonce) else {
                return closeLocally(.goawayUnauthenticated, "client nonce replayed")
            }
            var serverNonce = nonces.nonce()
            if serverNonce == clientNonce { serverNonce = nonces.nonce() }
            let proof = HandshakeMAC.proof(
                key: key, label: HandshakeMAC.acceptorLabel, version: version, keyId: keyId,
                clientNonce: clientNonce, serverNonce: serverNonce)
            handshake = .acceptorChallenged(Challenge(
                key: key, keyId: keyId, clientNonce: clientNonce, serverNonce: serverNonce,
                version: version, offer: offer))
            let hello = Hello(stage: .helloChallenge, version: version, nonce: serverNonce, proof: proof)
            return [.write(FrameCodec.encode(Frame(kind: .frameHello, hello: hello)))]
        }
    }

    /// Acceptor: the dialler passed; send ACCEPTED and open for business.
    private mutating func accept(_ offer: Hello, version: UInt32, keyId: String?, credentials: PeerCredentials?,
                                 certificate: CertIdentity? = nil) -> [SessionAction] {
        let reply = Hello(
            stage: .helloAccepted, version: version, peerName: name,
            maxFrameBytes: limits.maxFrameBytes, maxStreams: limits.maxStreams)
        let info = PeerInfo(
            name: offer.peerName ?? "", version: version, keyId: keyId, credentials: credentials, certificate: certificate,
            maxFrameBytes: offer.maxFrameBytes ?? UInt32(FrameCodec.helloMaxFrameBytes),
            maxStreams: offer.maxStreams ?? 100, capabilities: offer.capabilities)
        return [.write(FrameCodec.encode(Frame(kind: .frameHello, hello: reply)))] + becomeEstablished(info)
    }

    /// Dialler: the acceptor's ACCEPTED arrived.
    private mutating func established(by hello: Hello, versions: ClosedRange<UInt32>, keyId: String?) -> [SessionAction] {
        let version = hello.version ?? 0
        guard versions.contains(version) else {
            return closeLocally(.goawayVersionMismatch, "acceptor chose version \(version), outside \(versions)")
        }
        let info = PeerInfo(
            name: hello.peerName ?? "", version: version, keyId: keyId, credentials: nil,
            maxFrameBytes: hello.maxFrameBytes ?? UInt32(FrameCodec.helloMaxFrameBytes),
            maxStreams: hello.maxStreams ?? 100, capabilities: hello.capabilities)
        return becomeEstablished(info)
    }

    private mutating func becomeEstablished(_ info: PeerInfo) -> [SessionAction] {
        handshake = .done
        peer = info
        decoder.maxFrameBytes = limits.maxFrameBytes
        var actions: [SessionAction] = [.established(info)]
        let calls = pending
        pending = []
        for call in calls { actions += send(call) }
        return actions
    }

    // MARK: Frames out

    private mutating func send(_ call: PendingCall) -> [SessionAction] {
        guard let peer else { return [] }
        guard outgoing.count < Int(peer.maxStreams) else {
            return [.deliverStatus(streamId: call.streamId, CallStatus(.resourceExhausted, "the peer serves at most \(peer.maxStreams) concurrent streams"))]
        }
        let frame = FrameCodec.encode(Frame(
            kind: .frameRequest, streamId: call.streamId, method: call.method, payload: call.payload,
            deadlineMs: call.deadlineMs.flatMap { $0 > 0 ? $0 : nil }, host: call.host))
        guard frame.count - FrameCodec.headerBytes <= Int(peer.maxFrameBytes) else {
            return [.deliverStatus(streamId: call.streamId, CallStatus(.resourceExhausted, "request of \(frame.count - FrameCodec.headerBytes) bytes exceeds the peer's frame limit of \(peer.maxFrameBytes)"))]
        }
        outgoing[call.streamId] = .some(call.deadline)
        return [.write(frame)]
    }

    /// A STATUS frame, its message cut (on a character boundary, "..."
    /// appended) so that the frame fits the peer's limit: a status echoing
    /// a peer's 4 MiB method name went out larger than the peer took.
    private func statusFrame(_ id: UInt32, _ status: CallStatus) -> [UInt8] {
        let frame = FrameCodec.encode(Frame(kind: .frameStatus, streamId: id, status: status.wire))
        let limit = Int(peer?.maxFrameBytes ?? UInt32(FrameCodec.helloMaxFrameBytes))
        let over = frame.count - FrameCodec.headerBytes - limit
        guard over > 0 else { return frame }
        // Each byte cut shortens the frame by one (the message's length
        // prefix may shrink by a byte or two more: never grow).
        let cut = CallStatus(status.code, Self.bounded(status.message, status.message.utf8.count - over))
        return FrameCodec.encode(Frame(kind: .frameStatus, streamId: id, status: cut.wire))
    }

    /// The smallest frame limit a peer may announce: the protocol's own
    /// frames (a hello, a status) must reach it.
    public static let minPeerFrameBytes: UInt32 = 256

    private func deadlineStatus(_ ms: UInt32?) -> CallStatus {
        CallStatus(.deadlineExceeded, "deadline exceeded")
    }

    private func isLocal(_ id: UInt32) -> Bool {
        (id % 2 == 1) == (role == .dialler)
    }

    // MARK: Closing

    /// We close: goaway with the reason, then end every call.
    private mutating func closeLocally(_ reason: GoAwayReason, _ message: String) -> [SessionAction] {
        shutDown(CloseReason(reason, message, byPeer: false), sendGoAway: true)
    }

    /// The most of a GOAWAY's message sent, in UTF-8 bytes: the frame then
    /// fits the smallest frame limit a peer may ask for (`minPeerFrameBytes`)
    /// however much of the peer's own input (a key id of up to a frame's
    /// size) the message quotes.
    static let maxGoAwayMessageBytes = 160
    /// The most of a close's message kept (and so logged).
    static let maxCloseMessageBytes = 1024

    /// `message` cut to at most `max` UTF-8 bytes, at a character, with "..."
    /// when cut.
    static func bounded(_ message: String, _ max: Int) -> String {
        guard message.utf8.count > max else { return message }
        var out = String.UnicodeScalarView()
        var bytes = 3
        for scalar in message.unicodeScalars {
            bytes += UTF8.width(scalar)
            if bytes > max { break }
            out.append(scalar)
        }
        return String(out) + "..."
    }

    private mutating func shutDown(_ reason: CloseReason, sendGoAway: Bool) -> [SessionAction] {
        var reason = reason
        reason.message = Self.bounded(reason.message, Self.maxCloseMessageBytes)
        var actions: [SessionAction] = []
        if sendGoAway {
            let g = GoAway(reason: reason.reason, message: Self.bounded(reason.message, Self.maxGoAwayMessageBytes), lastStreamId: lastPeerId)
            actions.append(.write(FrameCodec.encode(Frame(kind: .frameGoaway, goaway: g))))
        }
        let unavailable = CallStatus(.unavailable, "connection closed (\(reason))")
        let ours = (outgoing.keys + pending.map(\.streamId)).sorted()
        for id in ours { actions.append(.deliverStatus(streamId: id, unavailable)) }
        for id in incoming.keys.sorted() { actions.append(.cancelled(streamId: id, unavailable)) }
        outgoing = [:]
        incoming = [:]
        inputIn = [:]
        inputOut = [:]
        pending = []
        isClosed = true
        closeReason = reason
        actions.append(.close(reason))
        return actions
    }
}

private func bigEndian(_ v: UInt64) -> [UInt8] {
    (0..<8).reversed().map { UInt8(truncatingIfNeeded: v >> (UInt64($0) * 8)) }
}
