// Protocol version 2 (PROTOCOL.md section 4): a unary call's response may
// carry its status and end the stream in one frame; version 1 peers keep
// getting RESPONSE then STATUS, and a version 1 session ignores a status on
// a RESPONSE.
import LmctfyProto
import LmctfyRPC
import LmctfySystem
import Testing

@Suite struct ProtocolV2Tests {
    @Test func bothSidesOfThisImplementationSpeakTheCurrentVersion() {
        for tcp in [false, true] {
            let p = Pair.established(tcp: tcp)
            #expect(p.dialler.peer?.version == ProtocolVersion.current && p.acceptor.peer?.version == ProtocolVersion.current)
        }
    }

    @Test func theFinalResponseIsOneFrameAndEndsTheCall() throws {
        var p = Pair.established()
        let id = p.call("Ping", [10, 0])
        _ = p.take(.acceptor)
        let reply = try PingResponse(data: [7, 7]).serializedBytes()
        let out = p.acceptor.sendFinal(streamId: id, payload: reply, .ok, now: p.now)
        let frames = writtenFrames(out)
        #expect(frames.count == 1)
        #expect(frames.first?.kind == .frameResponse && frames.first?.status?.code == 0 && frames.first?.payload == reply)
        #expect(p.acceptor.openStreamCount == 0)
        p.run(out, from: .acceptor)
        #expect(p.take(.dialler) == [.deliverResponse(streamId: id, payload: reply), .deliverStatus(streamId: id, .ok)])
        #expect(p.dialler.openStreamCount == 0)
        // The stream is over: a late STATUS for it is ignored, not an error.
        _ = p.dialler.receive(frame(Frame(kind: .frameStatus, streamId: id, status: RpcStatus(code: 0))), now: p.now)
        #expect(!p.dialler.isClosed)
    }

    @Test func anErrorStatusTravelsWithTheResponseToo() {
        var p = Pair.established(tcp: true)
        let id = p.call("Create")
        let status = CallStatus(.alreadyExists, "container /x exists")
        p.run(p.acceptor.sendFinal(streamId: id, payload: [], status, now: p.now), from: .acceptor)
        #expect(p.take(.dialler) == [.deliverResponse(streamId: id, payload: []), .deliverStatus(streamId: id, status)])
    }

    /// An acceptor after a version 1 dialler's offer (Unix socket).
    private func acceptorOfAVersion1Peer() -> Session {
        var a = Session(acceptor: .peerCredentials(rootCredentials, UnixPeerPolicy()), name: "agent", now: 0)
        let out = a.receive(frame(Frame(kind: .frameHello, hello: Hello(stage: .helloOffer, minVersion: 1, maxVersion: 1))), now: 0)
        precondition(writtenFrames(out).first?.hello?.version == 1 && a.isEstablished)
        return a
    }

    @Test func aVersion1PeerGetsResponseThenStatus() {
        var a = acceptorOfAVersion1Peer()
        #expect(a.peer?.version == 1)
        _ = a.receive(frame(Frame(kind: .frameRequest, streamId: 1, method: "Ping", payload: [10, 0])), now: 0)
        let frames = writtenFrames(a.sendFinal(streamId: 1, payload: [10, 0], .ok, now: 0))
        #expect(frames.map(\.kind) == [.frameResponse, .frameStatus])
        #expect(frames.first?.status == nil)
        #expect(frames.last?.status?.code == 0)
        #expect(a.openStreamCount == 0)
    }

    /// Found by the session fuzzer: with version 1 an oversize final
    /// response must end the call once (a status), not also report it
    /// cancelled as a lone RESPONSE would.
    @Test func anOversizeFinalResponseToAVersion1PeerEndsTheCallOnce() {
        var a = Session(acceptor: .peerCredentials(rootCredentials, UnixPeerPolicy()), name: "agent", now: 0)
        _ = a.receive(frame(Frame(kind: .frameHello, hello: Hello(stage: .helloOffer, minVersion: 1, maxVersion: 1, maxFrameBytes: 256))), now: 0)
        _ = a.receive(frame(Frame(kind: .frameRequest, streamId: 1, method: "Ping")), now: 0)
        let out = a.sendFinal(streamId: 1, payload: Array(repeating: 1, count: 400), .ok, now: 0)
        #expect(events(out).isEmpty)
        #expect(writtenFrames(out).map(\.kind) == [.frameStatus])
        #expect(writtenFrames(out).first?.status?.code == StatusCode.resourceExhausted.rawValue)
        #expect(a.openStreamCount == 0)
    }

    @Test func aVersion1DiallerIgnoresAStatusOnAResponse() {
        var d = Session(dialler: .peerCredentials, name: "lmctl", now: 0)
        _ = d.start(now: 0)
        _ = d.receive(frame(Frame(kind: .frameHello, hello: Hello(stage: .helloAccepted, version: 1))), now: 0)
        #expect(d.peer?.version == 1)
        let (id, _) = d.openStream(method: "Ping", payload: [], now: 0)
        let out = d.receive(frame(Frame(kind: .frameResponse, streamId: id, payload: [1], status: RpcStatus(code: 0))), now: 0)
        #expect(out == [.deliverResponse(streamId: id, payload: [1])])
        #expect(d.openStreamCount == 1)
        #expect(d.receive(frame(Frame(kind: .frameStatus, streamId: id, status: RpcStatus(code: 0))), now: 0)
                == [.deliverStatus(streamId: id, .ok)])
    }

    @Test func aFinalResponseWithoutACodeIsMalformed() {
        var p = Pair.established()
        let id = p.call("Ping")
        let out = p.dialler.receive(frame(Frame(kind: .frameResponse, streamId: id, payload: [], status: RpcStatus(message: "no code"))), now: p.now)
        #expect(goAway(out)?.reason == .goawayMalformedFrame)
    }

    @Test func anOversizeFinalResponseEndsTheCallWithResourceExhausted() {
        var p = Pair.established(diallerLimits: SessionLimits(maxFrameBytes: 256))
        let id = p.call("Ping")
        let out = p.acceptor.sendFinal(streamId: id, payload: Array(repeating: 1, count: 400), .ok, now: p.now)
        let frames = writtenFrames(out)
        #expect(frames.map(\.kind) == [.frameStatus])
        #expect(frames.first?.status?.code == StatusCode.resourceExhausted.rawValue)
        #expect(p.acceptor.openStreamCount == 0)
    }

    @Test func theFinalFrameMatchesTheDocument() throws {
        var p = Pair.established()
        let id = p.call("Ping", try PingRequest(data: Array("hi".utf8)).serializedBytes())
        let out = p.acceptor.sendFinal(streamId: id, payload: try PingResponse(data: Array("hi".utf8)).serializedBytes(), .ok, now: p.now)
        #expect(out == [.write(Golden["ping-final"])])
    }
}

/// The fast frame codec against the generic one (the reference): same bytes
/// out, same frames or errors in.
@Suite struct FrameWireTests {
    static let samples: [Frame] = [
        Frame(kind: .frameRequest, streamId: 1, method: "Ping", payload: [10, 2, 104, 105], deadlineMs: 5000),
        Frame(kind: .frameRequest, streamId: 7, method: "Créate ✓", payload: []),
        Frame(kind: .frameRequest, streamId: 3, method: ""),
        Frame(kind: .frameResponse, streamId: 1, payload: [10, 2, 104, 105]),
        Frame(kind: .frameResponse, streamId: 9, payload: Array(repeating: 0xff, count: 70_000), status: RpcStatus(code: 0)),
        Frame(kind: .frameResponse, streamId: 9, status: RpcStatus(code: 5, message: "")),
        Frame(kind: .frameStatus, streamId: 3, status: RpcStatus(code: 4, message: "deadline exceeded")),
        Frame(kind: .frameStatus, streamId: 3, status: RpcStatus()),
        Frame(kind: .frameCancel, streamId: 11),
        Frame(kind: .framePing, payload: [0, 0, 0, 0, 0, 0, 0, 1]),
        Frame(kind: .framePong, streamId: 0, payload: []),
        Frame(kind: .frameHello, hello: Hello(stage: .helloOffer, minVersion: 1, maxVersion: 2, peerName: "x")),
        Frame(kind: .frameGoaway, goaway: GoAway(reason: .goawayNormal, message: "bye", lastStreamId: 5)),
        Frame(kind: .frameStatus, streamId: 1, status: RpcStatus(code: 0), goaway: GoAway(reason: .goawayNormal)),
        Frame(streamId: 1),
    ]

    @Test func encodesAsTheGenericCodec() {
        for f in Self.samples {
            #expect(FrameCodec.encode(f) == FrameCodec.encodeGeneric(f), "\(f)")
        }
    }

    @Test func decodesAsTheGenericCodec() throws {
        var bodies: [[UInt8]] = Self.samples.map { Array(FrameCodec.encodeGeneric($0).dropFirst(4)) }
        bodies += [[], [0x08], [0x08, 0x63], [0x08, 0x7f], [0x10, 0x01], [0xff, 0xff], [0x08, 0x02, 0x1a, 0x05, 0x61],
                   [0x08, 0x03, 0x32, 0x02, 0x08], [0x08, 0x02, 0x1a, 0x02, 0xc3, 0x28]]
        for body in bodies {
            let fast = Result { () throws(FrameError) in try FrameCodec.decodeBody(body[...]) }
            let generic = Result { () throws(FrameError) in try FrameCodec.decodeGeneric(body) }
            #expect(fast == generic, "\(body)")
        }
        // Every sample comes back as itself (the kindless one as an error).
        for f in Self.samples where f.kind != nil {
            #expect(try FrameCodec.decodeBody(FrameCodec.encode(f).dropFirst(4)) == f)
        }
    }
}
