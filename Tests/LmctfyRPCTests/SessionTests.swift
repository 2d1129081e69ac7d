// The Session state machine: handshake and authentication failures, stream
// rules, limits, deadlines, cancellation, keepalive and goaway. Time is
// injected, so every timer is exercised exactly.
import LmctfyProto
import LmctfyRPC
import LmctfySystem
import Testing

@Suite struct HandshakeTests {
    @Test func unixHandshakeEstablishesBothSides() {
        let p = Pair.established()
        #expect(p.dialler.peer?.name == "agent")
        #expect(p.acceptor.peer?.name == "lmctl")
        #expect(p.acceptor.peer?.credentials == rootCredentials)
        #expect(p.dialler.peer?.version == ProtocolVersion.current && p.acceptor.peer?.version == ProtocolVersion.current)
        #expect(p.dialler.peer?.maxFrameBytes == 4 << 20)
    }

    @Test func tcpHandshakeProvesBothSides() {
        let p = Pair.established(tcp: true)
        #expect(p.acceptor.peer?.keyId == "ops")
        #expect(p.dialler.peer?.keyId == "ops")
    }

    @Test func noHelloTimesOut() {
        var a = Session(acceptor: .peerCredentials(rootCredentials, UnixPeerPolicy()), name: "agent", limits: SessionLimits(helloTimeoutMs: 500), now: 0)
        #expect(a.nextWakeup == 500)
        #expect(a.tick(now: 499).isEmpty)
        let out = a.tick(now: 500)
        #expect(goAway(out)?.reason == .goawayHelloTimeout)
        #expect(closeReason(out)?.reason == .goawayHelloTimeout)
        #expect(a.isClosed && a.nextWakeup == nil)
    }

    @Test func dataBeforeHelloIsRejected() {
        var a = Session(acceptor: .peerCredentials(rootCredentials, UnixPeerPolicy()), name: "agent", now: 0)
        let out = a.receive(Golden["ping-request"], now: 0)
        #expect(goAway(out)?.reason == .goawayProtocolError)
        #expect(events(out).contains { if case .deliverRequest = $0 { true } else { false } } == false)
        #expect(a.isClosed)
        // Nothing more is processed after the close.
        #expect(a.receive(Golden["hello-offer"], now: 1).isEmpty)
    }

    @Test func pingBeforeHelloIsRejected() {
        var a = Session(acceptor: .peerCredentials(rootCredentials, UnixPeerPolicy()), name: "agent", now: 0)
        #expect(goAway(a.receive(frame(Frame(kind: .framePing)), now: 0))?.reason == .goawayProtocolError)
    }

    @Test func wrongKeyIsDetectedByTheDialler() {
        var p = Pair(
            dialler: Session(dialler: .sharedKey(keyId: "ops", key: Array("another-key-of-16+".utf8)), name: "lmctl", nonces: CountingNonces(salt: 1), now: 0),
            acceptor: Session(acceptor: .sharedKey(try! Keyring(["ops": goldenKey]), ReplayCache()), name: "agent", nonces: CountingNonces(salt: 2), now: 0))
        p.run(p.dialler.start(now: 0), from: .dialler)
        #expect(closeReason(p.take(.dialler)) == CloseReason(.goawayUnauthenticated, "acceptor does not hold key ops", byPeer: false))
        #expect(closeReason(p.take(.acceptor))?.byPeer == true)
        #expect(!p.acceptor.isEstablished)
    }

    @Test func wrongProofIsRejectedByTheAcceptor() {
        var a = Session(acceptor: .sharedKey(try! Keyring(["ops": goldenKey]), ReplayCache()), name: "agent", nonces: FixedNonce(from: 32), now: 0)
        _ = a.receive(Golden["hello-offer"], now: 0)
        var bad = Golden["proof-dialler"]
        bad[0] ^= 1
        let out = a.receive(frame(Frame(kind: .frameHello, hello: Hello(stage: .helloProof, proof: bad))), now: 1)
        #expect(goAway(out)?.reason == .goawayUnauthenticated)
        #expect(!a.isEstablished)
    }

    @Test func goldenProofIsAccepted() {
        var a = Session(acceptor: .sharedKey(try! Keyring(["ops": goldenKey]), ReplayCache()), name: "agent", nonces: FixedNonce(from: 32), now: 0)
        _ = a.receive(Golden["hello-offer"], now: 0)
        let out = a.receive(frame(Frame(kind: .frameHello, hello: Hello(stage: .helloProof, proof: Golden["proof-dialler"]))), now: 1)
        #expect(writtenFrames(out).first?.hello?.stage == .helloAccepted)
        #expect(a.isEstablished && a.peer?.keyId == "ops")
    }

    @Test func replayedNonceIsRejected() {
        let cache = ReplayCache()
        let keyring = try! Keyring(["ops": goldenKey])
        var first = Session(acceptor: .sharedKey(keyring, cache), name: "agent", nonces: FixedNonce(from: 32), now: 0)
        #expect(writtenFrames(first.receive(Golden["hello-offer"], now: 0)).first?.hello?.stage == .helloChallenge)
        // The same offer again, on another connection to the same listener.
        var second = Session(acceptor: .sharedKey(keyring, cache), name: "agent", nonces: FixedNonce(from: 64), now: 0)
        let out = second.receive(Golden["hello-offer"], now: 0)
        #expect(goAway(out)?.reason == .goawayUnauthenticated)
        #expect(closeReason(out)?.message == "client nonce replayed")
    }

    @Test func replayCacheForgetsOnlyBeyondCapacity() {
        let cache = ReplayCache(capacity: 2)
        #expect(cache.insert([1]) && cache.insert([2]))
        #expect(!cache.insert([1]))
        #expect(cache.insert([3]))     // evicts [1]
        #expect(!cache.insert([2]) && !cache.insert([3]))
        #expect(cache.insert([1]))
    }

    @Test func unknownKeyIdAndShortNonce() {
        var a = Session(acceptor: .sharedKey(try! Keyring(["ops": goldenKey]), ReplayCache()), name: "agent", now: 0)
        let out = a.receive(frame(Frame(kind: .frameHello, hello: Hello(stage: .helloOffer, keyId: "nobody", nonce: [UInt8](repeating: 1, count: 32)))), now: 0)
        #expect(goAway(out)?.reason == .goawayUnauthenticated)
        var b = Session(acceptor: .sharedKey(try! Keyring(["ops": goldenKey]), ReplayCache()), name: "agent", now: 0)
        let short = b.receive(frame(Frame(kind: .frameHello, hello: Hello(stage: .helloOffer, keyId: "ops", nonce: [1, 2, 3]))), now: 0)
        #expect(goAway(short)?.reason == .goawayUnauthenticated)
    }

    /// A refusal quoting the peer's key id does not echo all of it: the
    /// GOAWAY fits the smallest frame a peer may accept (it carried a
    /// 60 KB key id back, over a pre-hello peer's limit), and the reason
    /// kept (and logged) is bounded too.
    @Test func aHugeUnknownKeyIdIsNotEchoed() {
        var a = Session(acceptor: .sharedKey(try! Keyring(["ops": goldenKey]), ReplayCache()), name: "agent", now: 0)
        let id = String(repeating: "é", count: 30_000)
        let out = a.receive(frame(Frame(kind: .frameHello, hello: Hello(stage: .helloOffer, keyId: id, nonce: [UInt8](repeating: 1, count: 32)))), now: 0)
        #expect(goAway(out)?.reason == .goawayUnauthenticated)
        let sent = out.reduce(0) { if case .write(let b) = $1 { $0 + b.count } else { $0 } }
        #expect(sent <= Int(Session.minPeerFrameBytes), "a \(sent)-byte GOAWAY")
        let message = goAway(out)?.message ?? ""
        #expect(message.hasPrefix("unknown or missing key id éé") && message.hasSuffix("é..."), "\(message)")
        #expect((closeReason(out)?.message.utf8.count ?? .max) <= 1024)
    }

    @Test func unixOfferWithoutKeyIsRejectedOnTcp() {
        var p = Pair(
            dialler: Session(dialler: .peerCredentials, name: "lmctl", now: 0),
            acceptor: Session(acceptor: .sharedKey(try! Keyring(["ops": goldenKey]), ReplayCache()), name: "agent", now: 0))
        p.run(p.dialler.start(now: 0), from: .dialler)
        #expect(closeReason(p.take(.acceptor))?.reason == .goawayUnauthenticated)
        #expect(closeReason(p.take(.dialler)) == CloseReason(.goawayUnauthenticated, "unknown or missing key id ", byPeer: true))
    }

    @Test func acceptingWithoutChallengeIsRejectedByAKeyedDialler() {
        var d = Session(dialler: .sharedKey(keyId: "ops", key: goldenKey), name: "lmctl", now: 0)
        _ = d.start(now: 0)
        let out = d.receive(frame(Frame(kind: .frameHello, hello: Hello(stage: .helloAccepted, version: 1))), now: 0)
        #expect(goAway(out)?.reason == .goawayUnauthenticated)
    }

    @Test func unixPolicy() {
        let policy = UnixPeerPolicy(allowedUids: [1000], allowedGids: [50])
        #expect(policy.allows(PeerCredentials(pid: 1, uid: 0, gid: 0)))
        #expect(policy.allows(PeerCredentials(pid: 1, uid: 1000, gid: 1000)))
        #expect(policy.allows(PeerCredentials(pid: 1, uid: 1001, gid: 50)))
        #expect(policy.allows(PeerCredentials(pid: 1, uid: 1001, gid: 1001, groups: [50])))
        #expect(!policy.allows(PeerCredentials(pid: 1, uid: 1001, gid: 1001, groups: [51])))

        var p = Pair(
            dialler: Session(dialler: .peerCredentials, name: "lmctl", now: 0),
            acceptor: Session(acceptor: .peerCredentials(PeerCredentials(pid: 9, uid: 1001, gid: 1001), policy), name: "agent", now: 0))
        p.run(p.dialler.start(now: 0), from: .dialler)
        #expect(closeReason(p.take(.acceptor))?.reason == .goawayUnauthenticated)
        #expect(closeReason(p.take(.dialler))?.reason == .goawayUnauthenticated)
    }

    @Test func versionMismatch() {
        var a = Session(acceptor: .peerCredentials(rootCredentials, UnixPeerPolicy()), name: "agent", now: 0)
        let out = a.receive(frame(Frame(kind: .frameHello, hello: Hello(stage: .helloOffer, minVersion: 6, maxVersion: 7))), now: 0)
        #expect(goAway(out)?.reason == .goawayVersionMismatch)
        var d = Session(dialler: .peerCredentials, name: "lmctl", now: 0)
        _ = d.start(now: 0)
        #expect(goAway(d.receive(frame(Frame(kind: .frameHello, hello: Hello(stage: .helloAccepted, version: 8))), now: 0))?.reason == .goawayVersionMismatch)
    }

    @Test func offerWithARangeGetsTheHighestCommonVersion() {
        var a = Session(acceptor: .peerCredentials(rootCredentials, UnixPeerPolicy()), name: "agent", now: 0)
        let out = a.receive(frame(Frame(kind: .frameHello, hello: Hello(stage: .helloOffer, minVersion: 1, maxVersion: 9))), now: 0)
        #expect(writtenFrames(out).first?.hello?.version == ProtocolVersion.current)
        #expect(a.isEstablished)
    }

    @Test func helloAfterHandshakeIsAProtocolError() {
        var p = Pair.established()
        let out = p.acceptor.receive(Golden["hello-offer"], now: p.now)
        #expect(goAway(out)?.reason == .goawayProtocolError)
    }

    @Test func goAwayWithoutItsFieldIsMalformed() {
        var p = Pair.established()
        let out = p.acceptor.receive(frame(Frame(kind: .frameGoaway)), now: p.now)
        #expect(goAway(out)?.reason == .goawayMalformedFrame)
        #expect(closeReason(out) == CloseReason(.goawayMalformedFrame, "GOAWAY frame without goaway", byPeer: false))
    }

    @Test func oversizeBeforeHelloUsesTheSmallLimit() {
        var a = Session(acceptor: .peerCredentials(rootCredentials, UnixPeerPolicy()), name: "agent", now: 0)
        let out = a.receive([0, 1, 0, 1], now: 0)   // 65537
        #expect(goAway(out)?.reason == .goawayFrameTooLarge)
    }

    @Test func callsMadeBeforeTheHandshakeAreSentAfterIt() {
        var p = Pair(
            dialler: Session(dialler: .peerCredentials, name: "lmctl", now: 0),
            acceptor: Session(acceptor: .peerCredentials(rootCredentials, UnixPeerPolicy()), name: "agent", now: 0))
        let (id, early) = p.dialler.openStream(method: "Ping", payload: [], now: 0)
        #expect(early.isEmpty && id == 1)
        p.run(p.dialler.start(now: 0), from: .dialler)
        #expect(p.take(.acceptor).contains(.deliverRequest(streamId: 1, method: "Ping", payload: [], deadline: nil)))
    }

    @Test func keyringRefusesShortKeys() {
        #expect(throws: LmctfyError.self) { try Keyring(["k": [1, 2, 3]]) }
    }
}

@Suite struct StreamTests {
    @Test func serverStreamingDeliversInOrder() {
        var p = Pair.established()
        let id = p.call("Notify", [1])
        #expect(p.take(.acceptor) == [.deliverRequest(streamId: id, method: "Notify", payload: [1], deadline: nil)])
        for i in 0..<3 { p.run(p.acceptor.sendResponse(streamId: id, payload: [UInt8(i)], now: p.now), from: .acceptor) }
        p.run(p.acceptor.sendStatus(streamId: id, CallStatus(.notFound, "container /x destroyed"), now: p.now), from: .acceptor)
        #expect(p.take(.dialler) == [
            .deliverResponse(streamId: id, payload: [0]), .deliverResponse(streamId: id, payload: [1]),
            .deliverResponse(streamId: id, payload: [2]), .deliverStatus(streamId: id, CallStatus(.notFound, "container /x destroyed")),
        ])
        #expect(p.dialler.openStreamCount == 0 && p.acceptor.openStreamCount == 0)
        // Late sends on an ended stream are dropped, not errors.
        #expect(p.acceptor.sendResponse(streamId: id, payload: [9], now: p.now).isEmpty)
    }

    @Test func bothSidesMayCallWithTheirOwnParity() {
        var p = Pair.established()
        let a = p.call("Ping")
        let (b, out) = p.acceptor.openStream(method: "MachineInfo", payload: [], now: p.now)
        p.run(out, from: .acceptor)
        #expect(a == 1 && b == 2)
        #expect(p.take(.dialler) == [.deliverRequest(streamId: 2, method: "MachineInfo", payload: [], deadline: nil)])
        p.run(p.dialler.sendStatus(streamId: 2, .ok, now: p.now), from: .dialler)
        #expect(p.take(.acceptor).contains(.deliverStatus(streamId: 2, .ok)))
        #expect(p.dialler.openStream(method: "Ping", payload: [], now: p.now).streamId == 3)
    }

    @Test func streamIdReuseIsAProtocolError() {
        var p = Pair.established()
        let id = p.call("Ping")
        p.run(p.acceptor.sendStatus(streamId: id, .ok, now: p.now), from: .acceptor)
        let out = p.acceptor.receive(frame(Frame(kind: .frameRequest, streamId: id, method: "Ping")), now: p.now)
        #expect(goAway(out)?.reason == .goawayProtocolError)
        #expect(goAway(out)?.lastStreamId == 1)
    }

    @Test func lowerStreamIdIsAProtocolError() {
        var p = Pair.established()
        _ = p.acceptor.receive(frame(Frame(kind: .frameRequest, streamId: 5, method: "Ping")), now: p.now)
        #expect(goAway(p.acceptor.receive(frame(Frame(kind: .frameRequest, streamId: 3, method: "Ping")), now: p.now))?.reason == .goawayProtocolError)
    }

    @Test func wrongParityIsAProtocolError() {
        var p = Pair.established()
        #expect(goAway(p.acceptor.receive(frame(Frame(kind: .frameRequest, streamId: 2, method: "Ping")), now: p.now))?.reason == .goawayProtocolError)
        var q = Pair.established()
        #expect(goAway(q.acceptor.receive(frame(Frame(kind: .frameRequest, streamId: 0, method: "Ping")), now: q.now))?.reason == .goawayProtocolError)
    }

    /// HELLO, PING and PONG are the connection's: on a call's stream id
    /// they are a protocol error (a PING on stream 7 was answered), before
    /// the handshake and after it; stream 0 given explicitly is fine.
    @Test func connectionFramesOnAStreamAreAProtocolError() {
        for kind in [FrameKind.framePing, .framePong, .frameHello] {
            var p = Pair.established()
            let out = p.acceptor.receive(frame(Frame(kind: kind, streamId: 7, payload: [1])), now: p.now)
            #expect(goAway(out)?.reason == .goawayProtocolError, "\(kind)")
            #expect(goAway(out)?.message?.contains("on stream 7") == true, "\(kind): \(String(describing: goAway(out)?.message))")
            #expect(!writtenFrames(out).contains { $0.kind == .framePong }, "\(kind) answered")
        }
        var q = Pair.established()
        let pong = q.acceptor.receive(frame(Frame(kind: .framePing, streamId: 0, payload: [1])), now: q.now)
        #expect(goAway(pong) == nil && !q.acceptor.isClosed)
        #expect(writtenFrames(pong).contains { $0.kind == .framePong })
        var a = Session(acceptor: .peerCredentials(rootCredentials, UnixPeerPolicy()), name: "agent", now: 0)
        var offer = try! FrameCodec.decodeBody(Golden["hello-offer"].dropFirst(4))
        offer.streamId = 1
        #expect(goAway(a.receive(frame(offer), now: 0))?.reason == .goawayProtocolError)
    }

    @Test func requestWithoutMethodIsMalformed() {
        var p = Pair.established()
        #expect(goAway(p.acceptor.receive(frame(Frame(kind: .frameRequest, streamId: 1)), now: p.now))?.reason == .goawayMalformedFrame)
    }

    @Test func responseForAStreamNeverOpenedIsAProtocolError() {
        var p = Pair.established()
        #expect(goAway(p.dialler.receive(frame(Frame(kind: .frameResponse, streamId: 7)), now: p.now))?.reason == .goawayProtocolError)
        var q = Pair.established()
        #expect(goAway(q.dialler.receive(frame(Frame(kind: .frameStatus, streamId: 2, status: RpcStatus(code: 0))), now: q.now))?.reason == .goawayProtocolError)
        var r = Pair.established()
        _ = r.call("Ping")
        #expect(goAway(r.dialler.receive(frame(Frame(kind: .frameStatus, streamId: 1)), now: r.now))?.reason == .goawayMalformedFrame)
    }

    @Test func unknownStatusCodeBecomesUnknown() {
        var p = Pair.established()
        let id = p.call("Ping")
        p.run([.write(frame(Frame(kind: .frameStatus, streamId: id, status: RpcStatus(code: 99, message: "x"))))], from: .acceptor)
        #expect(p.take(.dialler) == [.deliverStatus(streamId: id, CallStatus(.unknown, "status code 99: x"))])
    }

    @Test func tooManyStreamsGetResourceExhausted() {
        var p = Pair.established(acceptorLimits: SessionLimits(maxStreams: 2))
        // Raw frames straight into the acceptor (the dialler would refuse the third itself).
        var out: [SessionAction] = []
        for id: UInt32 in [1, 3, 5] {
            out += p.acceptor.receive(frame(Frame(kind: .frameRequest, streamId: id, method: "Ping")), now: p.now)
        }
        #expect(events(out).count == 2)
        let refused = writtenFrames(out)
        #expect(refused.count == 1 && refused.first?.streamId == 5)
        #expect(refused.first?.status?.code == StatusCode.resourceExhausted.rawValue)
        #expect(!p.acceptor.isClosed)
        // The dialler also refuses locally once it knows the peer's limit.
        var q = Pair.established(acceptorLimits: SessionLimits(maxStreams: 1))
        _ = q.call("Ping")
        let (id, local) = q.dialler.openStream(method: "Ping", payload: [], now: q.now)
        #expect(local == [.deliverStatus(streamId: id, CallStatus(.resourceExhausted, "the peer serves at most 1 concurrent streams"))])
    }

    @Test func oversizeRequestFailsLocally() {
        var p = Pair.established(acceptorLimits: SessionLimits(maxFrameBytes: 1000))
        let (id, out) = p.dialler.openStream(method: "Create", payload: [UInt8](repeating: 0, count: 2000), now: p.now)
        #expect(out.count == 1)
        guard case .deliverStatus(id, let status)? = out.first else { Issue.record("no status"); return }
        #expect(status.code == .resourceExhausted)
    }

    @Test func oversizeResponseEndsTheStream() {
        var p = Pair.established(diallerLimits: SessionLimits(maxFrameBytes: 1000))
        let id = p.call("Stats")
        let out = p.acceptor.sendResponse(streamId: id, payload: [UInt8](repeating: 0, count: 2000), now: p.now)
        guard case .cancelled(id, let status)? = out.last else { Issue.record("not cancelled"); return }
        #expect(status.code == .resourceExhausted)
        p.run(out, from: .acceptor)
        #expect(p.take(.dialler) == [.deliverStatus(streamId: id, status)])
    }

    /// A status echoing a peer's long method name went out larger than the
    /// peer's limit (a probe: 1,027 bytes to a peer that announced 1,000,
    /// 4 MiB + 17 to one that announced 4 MiB): its message is cut to fit.
    @Test func aStatusIsCutToThePeersFrameLimit() {
        var p = Pair.established(diallerLimits: SessionLimits(maxFrameBytes: 300))
        let id = p.call("Ping")
        let message = "unknown method " + String(repeating: "é", count: 400)
        let out = p.acceptor.sendStatus(streamId: id, CallStatus(.unimplemented, message), now: p.now)
        var total = 0
        for case .write(let bytes) in out { total += bytes.count }
        #expect(total - FrameCodec.headerBytes <= 300 && total - FrameCodec.headerBytes > 250, "\(total)")
        p.run(out, from: .acceptor)
        guard case .deliverStatus(id, let status)? = p.take(.dialler).first else { Issue.record("no status"); return }
        #expect(status.code == .unimplemented && status.message.hasPrefix("unknown method éé") && status.message.hasSuffix("é..."))
    }

    /// A peer announcing less than the protocol's own frames need is refused
    /// at the hello (a status could not reach it).
    @Test func aTinyAnnouncedFrameLimitIsRefused() {
        var d = Session(dialler: .peerCredentials, name: "lmctl", limits: SessionLimits(maxFrameBytes: 100), now: 1_000)
        var a = Session(acceptor: .peerCredentials(rootCredentials, UnixPeerPolicy()), name: "agent", now: 1_000)
        var out: [SessionAction] = []
        for case .write(let bytes) in d.start(now: 1_000) { out += a.receive(bytes, now: 1_000) }
        #expect(goAway(out)?.reason == .goawayProtocolError)
        #expect(goAway(out)?.message?.contains("max_frame_bytes 100 is below the protocol's minimum of 256") == true)
        #expect(!a.isEstablished)
    }

    @Test func oversizeFrameAfterHandshakeClosesWithGoAway() {
        var p = Pair.established(acceptorLimits: SessionLimits(maxFrameBytes: 1000))
        let out = p.acceptor.receive(frame(Frame(kind: .frameRequest, streamId: 1, method: "Create", payload: [UInt8](repeating: 0, count: 1000))), now: p.now)
        #expect(goAway(out)?.reason == .goawayFrameTooLarge)
    }
}

@Suite struct TimerTests {
    @Test func deadlineExceededOnBothSides() {
        var p = Pair.established()
        let id = p.call("Run", deadlineMs: 100)
        #expect(p.take(.acceptor) == [.deliverRequest(streamId: id, method: "Run", payload: [], deadline: p.now + 100)])
        #expect(p.dialler.nextWakeup == p.now + 100)
        p.now += 99
        p.tick(.acceptor)
        p.tick(.dialler)
        #expect(p.take(.acceptor).isEmpty && p.take(.dialler).isEmpty)
        p.now += 1
        // The callee notices first: status 4 to the caller, the handler is told to stop.
        p.tick(.acceptor)
        let exceeded = CallStatus(.deadlineExceeded, "deadline exceeded")
        #expect(p.take(.acceptor) == [.cancelled(streamId: id, exceeded)])
        #expect(p.take(.dialler) == [.deliverStatus(streamId: id, exceeded)])
        // The caller's own timer then has nothing left to do.
        p.tick(.dialler)
        #expect(p.take(.dialler).isEmpty && p.take(.acceptor).isEmpty)
    }

    @Test func callerDeadlineSendsCancel() {
        var p = Pair.established()
        let id = p.call("Run", deadlineMs: 100)
        _ = p.take(.acceptor)
        p.now += 100
        p.tick(.dialler)
        #expect(p.take(.dialler) == [.deliverStatus(streamId: id, CallStatus(.deadlineExceeded, "deadline exceeded"))])
        #expect(p.take(.acceptor) == [.cancelled(streamId: id, CallStatus(.cancelled, "cancelled by the caller"))])
        // The callee's late answer is ignored by the caller.
        let late = frame(Frame(kind: .frameStatus, streamId: id, status: RpcStatus(code: 0)))
        #expect(p.dialler.receive(late, now: p.now).isEmpty)
        #expect(!p.dialler.isClosed)
    }

    @Test func deadlineOfACallStillWaitingForTheHandshake() {
        var d = Session(dialler: .peerCredentials, name: "lmctl", now: 0)
        let (id, _) = d.openStream(method: "Ping", payload: [], deadlineMs: 50, now: 0)
        #expect(d.nextWakeup == 50)
        #expect(d.tick(now: 50) == [.deliverStatus(streamId: id, CallStatus(.deadlineExceeded, "deadline exceeded"))])
    }

    @Test func cancellation() {
        var p = Pair.established()
        let id = p.call("Notify")
        _ = p.take(.acceptor)
        p.run(p.dialler.cancel(streamId: id, now: p.now), from: .dialler)
        #expect(p.take(.acceptor) == [.cancelled(streamId: id, CallStatus(.cancelled, "cancelled by the caller"))])
        // The handler's racing response is dropped; the caller sees nothing.
        #expect(p.acceptor.sendResponse(streamId: id, payload: [1], now: p.now).isEmpty)
        #expect(p.acceptor.sendStatus(streamId: id, .ok, now: p.now).isEmpty)
        #expect(p.take(.dialler).isEmpty)
        // A duplicate cancel for a finished stream is ignored.
        #expect(p.acceptor.receive(frame(Frame(kind: .frameCancel, streamId: id)), now: p.now).isEmpty)
        // A cancel for a stream never opened is not.
        #expect(goAway(p.acceptor.receive(frame(Frame(kind: .frameCancel, streamId: 99)), now: p.now))?.reason == .goawayProtocolError)
    }

    @Test func keepalivePingAndIdleTimeout() {
        var p = Pair.established(diallerLimits: SessionLimits(idleTimeoutMs: 1000, keepaliveIntervalMs: 300))
        let start = p.now
        #expect(p.dialler.nextWakeup == start + 300)
        p.now = start + 300
        let ping = p.dialler.tick(now: p.now)
        #expect(writtenFrames(ping).map(\.kind) == [.framePing])
        // The acceptor answers with the same payload; the answer counts as traffic.
        let pong = p.acceptor.receive(bytesWritten(ping), now: p.now)
        #expect(writtenFrames(pong).first?.kind == .framePong)
        #expect(writtenFrames(pong).first?.payload == writtenFrames(ping).first?.payload)
        #expect(p.dialler.receive(bytesWritten(pong), now: p.now + 10).isEmpty)
        #expect(p.dialler.nextWakeup == p.now + 10 + 300)
        // Silence past the idle timeout: goaway and close.
        p.now += 10 + 1000
        let out = p.dialler.tick(now: p.now)
        #expect(goAway(out)?.reason == .goawayIdleTimeout)
        #expect(p.dialler.isClosed)
    }

    @Test func oversizedPingIsAProtocolError() {
        var p = Pair.established()
        #expect(goAway(p.acceptor.receive(frame(Frame(kind: .framePing, payload: [UInt8](repeating: 0, count: 65))), now: p.now))?.reason == .goawayProtocolError)
    }
}

@Suite struct GoAwayTests {
    @Test func goAwayFailsEveryOpenCallOnBothSides() {
        var p = Pair.established()
        let mine = p.call("Notify")
        let (theirs, out) = p.acceptor.openStream(method: "Ping", payload: [], now: p.now)
        p.run(out, from: .acceptor)
        _ = p.take(.dialler)
        _ = p.take(.acceptor)
        p.run(p.acceptor.goAway(.goawayNormal, message: "agent shutting down", now: p.now), from: .acceptor)
        let local = p.take(.acceptor)
        #expect(local.contains(.cancelled(streamId: mine, CallStatus(.unavailable, "connection closed (local GOAWAY_NORMAL: agent shutting down)"))))
        #expect(local.contains(.deliverStatus(streamId: theirs, CallStatus(.unavailable, "connection closed (local GOAWAY_NORMAL: agent shutting down)"))))
        let remote = p.take(.dialler)
        #expect(remote.contains(.deliverStatus(streamId: mine, CallStatus(.unavailable, "connection closed (peer GOAWAY_NORMAL: agent shutting down)"))))
        #expect(remote.contains(.cancelled(streamId: theirs, CallStatus(.unavailable, "connection closed (peer GOAWAY_NORMAL: agent shutting down)"))))
        #expect(remote.last == .close(CloseReason(.goawayNormal, "agent shutting down", byPeer: true)))
        #expect(p.dialler.isClosed && p.acceptor.isClosed)
        #expect(p.dialler.openStreamCount == 0 && p.acceptor.openStreamCount == 0)
        // A call on a closed session fails at once.
        let (id, late) = p.dialler.openStream(method: "Ping", payload: [], now: p.now)
        guard case .deliverStatus(id, let s)? = late.first else { Issue.record("no status"); return }
        #expect(s.code == .unavailable)
    }

    @Test func eofMidFrameAndCleanEof() {
        var p = Pair.established()
        let id = p.call("Ping")
        _ = p.dialler.receive([0, 0, 0, 9, 8], now: p.now)
        let out = p.dialler.receiveEOF(now: p.now)
        #expect(out.first == .deliverStatus(streamId: id, CallStatus(.unavailable, "connection closed (peer GOAWAY_TRUNCATED: stream ended inside a frame (5 of 13 bytes))")))
        #expect(closeReason(out)?.reason == .goawayTruncated)
        var q = Pair.established()
        #expect(closeReason(q.acceptor.receiveEOF(now: q.now))?.reason == .goawayUnspecified)
    }
}
