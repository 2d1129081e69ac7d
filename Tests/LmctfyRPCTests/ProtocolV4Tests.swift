// Protocol version 4 (PROTOCOL.md section 4.5): a caller's INPUT frames on
// its call, within the CREDIT its callee grants. Input beyond the credit,
// after its end, on a stream never opened or of the wrong side is a
// protocol error; an oversize one a malformed frame; one that crossed the
// call's end on the wire is ignored; an older version knows no INPUT.
import LmctfyProto
import LmctfyRPC
import LmctfySystem
import Testing

@Suite struct ProtocolV4Tests {
    /// A pair with a call open from the dialler and `credit` input frames
    /// granted by the acceptor (0: none).
    private func withInput(credit: UInt32) -> (Pair, UInt32) {
        var p = Pair.established()
        let id = p.call("Run")
        _ = p.take(.acceptor)
        if credit > 0 {
            p.run(p.acceptor.sendInputCredit(streamId: id, credit, now: p.now), from: .acceptor)
            #expect(p.take(.dialler) == [.inputCredit(streamId: id, credit)])
        }
        return (p, id)
    }

    @Test func inputIsOneFrameAsDocumentedAndReachesTheCalleeWithinItsCredit() {
        var (p, id) = withInput(credit: 2)
        #expect(p.dialler.inputCredit(streamId: id) == 2)
        let first = p.dialler.sendInput(streamId: id, Array("hi".utf8), end: true, now: p.now)
        #expect(first.sent && first.actions == [.write(Golden["input"])])
        p.run(first.actions, from: .dialler)
        #expect(p.take(.acceptor) == [.input(streamId: id, payload: Array("hi".utf8), end: true)])
        // After the end: nothing more is sent, nor granted.
        #expect(p.dialler.inputCredit(streamId: id) == 0)
        #expect(!p.dialler.sendInput(streamId: id, [1], end: false, now: p.now).sent)
        #expect(p.acceptor.sendInputCredit(streamId: id, 1, now: p.now).isEmpty)
        #expect(!p.acceptor.isClosed && !p.dialler.isClosed)
    }

    @Test func aCallerSendsNothingWithoutCreditAndTheCalleeRefusesInputBeyondIt() {
        var (p, id) = withInput(credit: 1)
        let one = p.dialler.sendInput(streamId: id, [1, 2, 3], end: false, now: p.now)
        #expect(one.sent)
        p.run(one.actions, from: .dialler)
        #expect(p.take(.acceptor) == [.input(streamId: id, payload: [1, 2, 3], end: false)])
        #expect(!p.dialler.sendInput(streamId: id, [4], end: false, now: p.now).sent, "the credit is used")
        // A peer that sends anyway is closed.
        let over = p.acceptor.receive(frame(Frame(kind: .frameInput, streamId: id, payload: [4])), now: p.now)
        #expect(goAway(over)?.reason == .goawayProtocolError)
        // None granted at all (a call that takes no input).
        var (q, qid) = withInput(credit: 0)
        let unasked = q.acceptor.receive(frame(Frame(kind: .frameInput, streamId: qid, payload: [1])), now: q.now)
        #expect(goAway(unasked)?.reason == .goawayProtocolError)
    }

    @Test func inputAfterItsEndOrOnAStreamNeverOpenedOrOfTheWrongSideClosesTheConnection() {
        var (p, id) = withInput(credit: 4)
        p.run(p.dialler.sendInput(streamId: id, [], end: true, now: p.now).actions, from: .dialler)
        _ = p.take(.acceptor)
        let after = p.acceptor.receive(frame(Frame(kind: .frameInput, streamId: id, payload: [1])), now: p.now)
        #expect(goAway(after)?.reason == .goawayProtocolError)
        var q = Pair.established()
        let never = q.acceptor.receive(frame(Frame(kind: .frameInput, streamId: 99, payload: [1])), now: q.now)
        #expect(goAway(never)?.reason == .goawayProtocolError)
        var r = Pair.established()
        let ours = r.acceptor.receive(frame(Frame(kind: .frameInput, streamId: 2, payload: [1])), now: r.now)
        #expect(goAway(ours)?.reason == .goawayProtocolError, "an even stream is the acceptor's own")
    }

    @Test func anOversizeInputIsMalformed() {
        var (p, id) = withInput(credit: 1)
        #expect(!p.dialler.sendInput(streamId: id, [UInt8](repeating: 7, count: Session.maxInputBytes + 1), end: false, now: p.now).sent)
        let big = p.acceptor.receive(frame(Frame(kind: .frameInput, streamId: id, payload: [UInt8](repeating: 7, count: Session.maxInputBytes + 1))), now: p.now)
        #expect(goAway(big)?.reason == .goawayMalformedFrame)
    }

    @Test func inputAndCreditThatCrossTheEndOfTheCallAreIgnored() {
        var (p, id) = withInput(credit: 2)
        let late = p.dialler.sendInput(streamId: id, [1], end: false, now: p.now)
        // The callee ends the call before the input arrives.
        p.run(p.acceptor.sendStatus(streamId: id, .ok, now: p.now), from: .acceptor)
        _ = p.take(.dialler)
        #expect(p.acceptor.receive(late.actions.compactMap { if case .write(let b) = $0 { b } else { nil } }.first!, now: p.now).isEmpty)
        #expect(p.dialler.receive(frame(Frame(kind: .frameCredit, streamId: id, credit: 1)), now: p.now).isEmpty)
        #expect(!p.acceptor.isClosed && !p.dialler.isClosed)
        #expect(p.dialler.inputCredit(streamId: id) == 0)
        // A callee's credit for a call the dialler never opened.
        var q = Pair.established()
        let never = q.dialler.receive(frame(Frame(kind: .frameCredit, streamId: 41, credit: 1)), now: q.now)
        #expect(goAway(never)?.reason == .goawayProtocolError)
    }

    @Test func aVersion3PeerNeitherSendsNorAcceptsInput() {
        var a = Session(acceptor: .peerCredentials(rootCredentials, UnixPeerPolicy()), name: "agent", now: 0)
        let hello = a.receive(frame(Frame(kind: .frameHello, hello: Hello(stage: .helloOffer, minVersion: 1, maxVersion: 3))), now: 0)
        #expect(writtenFrames(hello).first?.hello?.version == 3)
        _ = a.receive(frame(Frame(kind: .frameRequest, streamId: 1, method: "Run", payload: [])), now: 0)
        #expect(a.sendInputCredit(streamId: 1, 4, now: 0).isEmpty, "no input credit in version 3")
        let out = a.receive(frame(Frame(kind: .frameInput, streamId: 1, payload: [1])), now: 0)
        #expect(goAway(out)?.reason == .goawayMalformedFrame, "an unknown frame kind in version 3")
        // And a CREDIT from the callee is still the wrong side's in version 3.
        var d = Session(dialler: .peerCredentials, name: "lmctl", now: 0)
        _ = d.start(now: 0)
        _ = d.receive(frame(Frame(kind: .frameHello, hello: Hello(stage: .helloAccepted, version: 3, maxFrameBytes: 65536, maxStreams: 8))), now: 0)
        let (id, _) = d.openStream(method: "Run", payload: [], deadlineMs: nil, host: nil, now: 0)
        let credit = d.receive(frame(Frame(kind: .frameCredit, streamId: id, credit: 1)), now: 0)
        #expect(goAway(credit)?.reason == .goawayProtocolError)
    }
}
