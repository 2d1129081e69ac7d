// The golden vectors of docs/PROTOCOL.md, byte for byte: produced by the
// real session code paths, and decoded back to the documented fields.
import LmctfyProto
import LmctfyRPC
import LmctfySystem
import Testing

@Suite struct GoldenTests {
    @Test func docHasEveryVector() {
        for name in ["hello-offer", "ping-request", "ping-response", "status-ok", "status-deadline", "ping-final", "goaway", "credit", "input", "input-window", "proof-acceptor", "proof-dialler"] {
            #expect(Golden.vectors[name]?.isEmpty == false, "golden:\(name)")
        }
    }

    @Test func helloOfferIsWhatADiallerSends() {
        var dialler = Session(dialler: .sharedKey(keyId: "ops", key: goldenKey), name: "lmctl", nonces: FixedNonce(from: 0), now: 0)
        let actions = dialler.start(now: 0)
        #expect(actions == [.write(Golden["hello-offer"])])

        var decoder = FrameDecoder(maxFrameBytes: FrameCodec.helloMaxFrameBytes)
        decoder.feed(Golden["hello-offer"])
        let f = try? decoder.next()
        #expect(f?.kind == .frameHello)
        #expect(f?.hello?.stage == .helloOffer)
        #expect(f?.hello?.minVersion == 1 && f?.hello?.maxVersion == 5)
        #expect(f?.hello?.peerName == "lmctl" && f?.hello?.keyId == "ops")
        #expect(f?.hello?.nonce == Array(0..<32))
        #expect(f?.hello?.maxFrameBytes == 4_194_304 && f?.hello?.maxStreams == 128)
    }

    @Test func acceptorProofMatchesTheDocument() {
        var acceptor = Session(
            acceptor: .sharedKey(try! Keyring(["ops": goldenKey]), ReplayCache()), name: "agent",
            nonces: FixedNonce(from: 32), now: 0)
        let challenge = writtenFrames(acceptor.receive(Golden["hello-offer"], now: 0))
        #expect(challenge.count == 1)
        #expect(challenge.first?.hello?.stage == .helloChallenge)
        #expect(challenge.first?.hello?.nonce == Array(32..<64))
        #expect(challenge.first?.hello?.proof == Golden["proof-acceptor"])
    }

    @Test func proofsMatchTheDocument() {
        let nc = [UInt8](0..<32), ns = [UInt8](32..<64)
        #expect(HandshakeMAC.proof(key: goldenKey, label: HandshakeMAC.acceptorLabel, version: 5, keyId: "ops", clientNonce: nc, serverNonce: ns) == Golden["proof-acceptor"])
        #expect(HandshakeMAC.proof(key: goldenKey, label: HandshakeMAC.diallerLabel, version: 5, keyId: "ops", clientNonce: nc, serverNonce: ns) == Golden["proof-dialler"])
    }

    @Test func pingCallFramesMatchTheDocument() throws {
        var p = Pair.established(tcp: true)
        let request = try PingRequest(data: Array("hi".utf8)).serializedBytes()
        let (id, out) = p.dialler.openStream(method: "Ping", payload: request, deadlineMs: 5000, now: p.now)
        #expect(id == 1)
        #expect(out == [.write(Golden["ping-request"])])
        p.run(out, from: .dialler)
        #expect(p.take(.acceptor) == [.deliverRequest(streamId: 1, method: "Ping", payload: request, deadline: p.now + 5000)])

        let response = try PingResponse(data: Array("hi".utf8)).serializedBytes()
        let r = p.acceptor.sendResponse(streamId: 1, payload: response, now: p.now)
        #expect(r == [.write(Golden["ping-response"])])
        let s = p.acceptor.sendStatus(streamId: 1, .ok, now: p.now)
        #expect(s == [.write(Golden["status-ok"])])
        p.run(r + s, from: .acceptor)
        #expect(p.take(.dialler) == [.deliverResponse(streamId: 1, payload: response), .deliverStatus(streamId: 1, .ok)])
    }

    @Test func deadlineStatusMatchesTheDocument() {
        var p = Pair.established()
        _ = p.call("Ping")
        _ = p.dialler.cancel(streamId: 1, now: p.now)   // so stream 3 is the one expiring
        _ = p.take(.acceptor)
        let (id, out) = p.dialler.openStream(method: "Ping", payload: [], deadlineMs: 10, now: p.now)
        #expect(id == 3)
        for case .write(let bytes) in out { _ = p.acceptor.receive(bytes, now: p.now) }
        let expired = p.acceptor.tick(now: p.now + 10)
        #expect(expired.first == .write(Golden["status-deadline"]))
    }

    @Test func goAwayFrameMatchesTheDocument() throws {
        let g = GoAway(reason: .goawayFrameTooLarge, message: "frame too large", lastStreamId: 1)
        #expect(FrameCodec.encode(Frame(kind: .frameGoaway, goaway: g)) == Golden["goaway"])
        var decoder = FrameDecoder(maxFrameBytes: 100)
        decoder.feed(Golden["goaway"])
        #expect(try decoder.next()?.goaway == g)
    }

    @Test func statusFramesDecode() throws {
        var decoder = FrameDecoder(maxFrameBytes: 100)
        decoder.feed(Golden["status-ok"] + Golden["status-deadline"])
        let ok = try #require(try decoder.next())
        #expect(ok.streamId == 1 && CallStatus(wire: ok.status!) == .ok)
        let late = try #require(try decoder.next())
        #expect(late.streamId == 3 && CallStatus(wire: late.status!) == CallStatus(.deadlineExceeded, "deadline exceeded"))
    }
}
