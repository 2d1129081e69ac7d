// Protocol version 5 (PROTOCOL.md section 4.6): an INPUT frame may carry
// the caller's terminal size (`window`), for a Run on a terminal. A size
// outside 1...65535, or one in an older version, is a malformed frame; a
// sender on an older connection drops it (the keys still go).
import LmctfyProto
import LmctfyRPC
import LmctfySystem
import Testing

@Suite struct ProtocolV5Tests {
    /// A pair at the newest version with a call open from the dialler and
    /// `credit` input frames granted.
    private func withInput(credit: UInt32) -> (Pair, UInt32) {
        var p = Pair.established()
        let id = p.call("Run")
        _ = p.take(.acceptor)
        p.run(p.acceptor.sendInputCredit(streamId: id, credit, now: p.now), from: .acceptor)
        _ = p.take(.dialler)
        return (p, id)
    }

    @Test func theHandshakeSettlesOnVersion5AndAWindowReachesTheCalleeBeforeItsKeys() {
        var (p, id) = withInput(credit: 2)
        #expect(p.dialler.peer?.version == 5 && p.acceptor.peer?.version == 5)
        let resize = p.dialler.sendInput(streamId: id, [], end: false, window: TerminalWindow(rows: 40, cols: 120), now: p.now)
        #expect(resize.sent)
        #expect(writtenFrames(resize.actions).first?.window == TerminalSize(rows: 40, cols: 120))
        // As documented (PROTOCOL.md section 8), and read back.
        let documented = p.dialler.sendInput(streamId: id, [], end: false, window: TerminalWindow(rows: 24, cols: 80), now: p.now)
        #expect(documented.actions == [.write(Golden["input-window"])])
        #expect(p.acceptor.receive(Golden["input-window"], now: p.now)
                == [.input(streamId: id, payload: [], end: false, window: TerminalWindow(rows: 24, cols: 80))])
        p.run(resize.actions, from: .dialler)
        #expect(p.take(.acceptor) == [.input(streamId: id, payload: [], end: false, window: TerminalWindow(rows: 40, cols: 120))])
        // Keys and a size in one frame; each frame takes one credit.
        p.run(p.acceptor.sendInputCredit(streamId: id, 1, now: p.now), from: .acceptor)
        _ = p.take(.dialler)
        let both = p.dialler.sendInput(streamId: id, Array("ls\n".utf8), end: true, window: TerminalWindow(rows: 1, cols: 65535), now: p.now)
        p.run(both.actions, from: .dialler)
        #expect(p.take(.acceptor) == [.input(streamId: id, payload: Array("ls\n".utf8), end: true, window: TerminalWindow(rows: 1, cols: 65535))])
        #expect(p.dialler.inputCredit(streamId: id) == 0)
        #expect(!p.acceptor.isClosed && !p.dialler.isClosed)
    }

    @Test(arguments: [(0, 80), (24, 0), (65536, 80), (24, 70000)] as [(UInt32, UInt32)])
    func aWindowOutsideItsRangeIsMalformed(_ rows: UInt32, _ cols: UInt32) {
        var (p, id) = withInput(credit: 1)
        let bad = p.acceptor.receive(frame(Frame(kind: .frameInput, streamId: id, payload: [1], window: TerminalSize(rows: rows, cols: cols))), now: p.now)
        #expect(goAway(bad)?.reason == .goawayMalformedFrame)
        // One with a side missing too.
        var (q, qid) = withInput(credit: 1)
        let half = q.acceptor.receive(frame(Frame(kind: .frameInput, streamId: qid, window: TerminalSize(rows: 24))), now: q.now)
        #expect(goAway(half)?.reason == .goawayMalformedFrame)
    }

    @Test func aVersion4PeerNeitherSendsNorAcceptsAWindow() {
        var a = Session(acceptor: .peerCredentials(rootCredentials, UnixPeerPolicy()), name: "agent", now: 0)
        let hello = a.receive(frame(Frame(kind: .frameHello, hello: Hello(stage: .helloOffer, minVersion: 1, maxVersion: 4))), now: 0)
        #expect(writtenFrames(hello).first?.hello?.version == 4)
        _ = a.receive(frame(Frame(kind: .frameRequest, streamId: 1, method: "Run", payload: [])), now: 0)
        _ = a.sendInputCredit(streamId: 1, 4, now: 0)
        #expect(a.receive(frame(Frame(kind: .frameInput, streamId: 1, payload: [1])), now: 0).count == 1, "plain input is fine in 4")
        let sized = a.receive(frame(Frame(kind: .frameInput, streamId: 1, payload: [1], window: TerminalSize(rows: 24, cols: 80))), now: 0)
        #expect(goAway(sized)?.reason == .goawayMalformedFrame)
        // A dialler on a version 4 connection sends the keys without the size.
        var d = Session(dialler: .peerCredentials, name: "lmctl", now: 0)
        _ = d.start(now: 0)
        _ = d.receive(frame(Frame(kind: .frameHello, hello: Hello(stage: .helloAccepted, version: 4, maxFrameBytes: 65536, maxStreams: 8))), now: 0)
        let (id, _) = d.openStream(method: "Run", payload: [], deadlineMs: nil, host: nil, now: 0)
        _ = d.receive(frame(Frame(kind: .frameCredit, streamId: id, credit: 1)), now: 0)
        let sent = d.sendInput(streamId: id, [7], end: false, window: TerminalWindow(rows: 24, cols: 80), now: 0)
        #expect(sent.sent)
        let f = writtenFrames(sent.actions).first
        #expect(f?.window == nil && f?.payload == [7])
    }
}
