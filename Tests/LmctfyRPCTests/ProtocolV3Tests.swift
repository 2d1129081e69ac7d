// Protocol version 3 (PROTOCOL.md section 4.4): the caller of a
// flow-controlled stream grants responses with CREDIT frames. A CREDIT in
// an older version is a malformed frame; one for a stream already over is
// ignored; one for a stream never opened is a protocol error.
import LmctfyProto
import LmctfyRPC
import LmctfySystem
import Testing

@Suite struct ProtocolV3Tests {
    @Test func aCreditIsOneFrameAsDocumentedAndReachesTheCallee() {
        var p = Pair.established()
        let id = p.call("Subscribe")
        _ = p.take(.acceptor)
        let out = p.dialler.sendCredit(streamId: id, 64, now: p.now)
        #expect(out == [.write(Golden["credit"])])
        p.run(out, from: .dialler)
        #expect(p.take(.acceptor) == [.credit(streamId: id, 64)])
        #expect(!p.acceptor.isClosed)
    }

    @Test func creditIsOnlyForAnOpenCallOfOurs() {
        var p = Pair.established()
        #expect(p.dialler.sendCredit(streamId: 1, 5, now: p.now).isEmpty, "no such call")
        let id = p.call("Subscribe")
        #expect(p.dialler.sendCredit(streamId: id, 0, now: p.now).isEmpty, "nothing to grant")
        // The stream ended on the callee's side first: a late CREDIT is ignored.
        _ = p.take(.acceptor)
        p.run(p.acceptor.sendStatus(streamId: id, .ok, now: p.now), from: .acceptor)
        _ = p.take(.dialler)
        _ = p.acceptor.receive(frame(Frame(kind: .frameCredit, streamId: id, credit: 3)), now: p.now)
        #expect(!p.acceptor.isClosed)
    }

    @Test func aCreditForAStreamNeverOpenedOrWithoutAnAmountClosesTheConnection() {
        var p = Pair.established()
        let never = p.acceptor.receive(frame(Frame(kind: .frameCredit, streamId: 99, credit: 1)), now: p.now)
        #expect(goAway(never)?.reason == .goawayProtocolError)
        var q = Pair.established()
        let id = q.call("Subscribe")
        _ = q.take(.acceptor)
        let empty = q.acceptor.receive(frame(Frame(kind: .frameCredit, streamId: id)), now: q.now)
        #expect(goAway(empty)?.reason == .goawayMalformedFrame)
    }

    @Test func aVersion2PeerNeitherSendsNorAcceptsCredit() {
        var a = Session(acceptor: .peerCredentials(rootCredentials, UnixPeerPolicy()), name: "agent", now: 0)
        let hello = a.receive(frame(Frame(kind: .frameHello, hello: Hello(stage: .helloOffer, minVersion: 1, maxVersion: 2))), now: 0)
        #expect(writtenFrames(hello).first?.hello?.version == 2)
        _ = a.receive(frame(Frame(kind: .frameRequest, streamId: 1, method: "Subscribe", payload: [])), now: 0)
        let out = a.receive(frame(Frame(kind: .frameCredit, streamId: 1, credit: 8)), now: 0)
        #expect(goAway(out)?.reason == .goawayMalformedFrame, "an unknown frame kind in version 2")
    }
}
