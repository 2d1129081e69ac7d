// Hostile input never crashes a session and always ends in a goaway or a
// close, with nothing left open. 10,000 inputs from a fixed seed: random
// bytes, valid handshakes followed by garbage, and bit-flipped valid streams.
import LmctfyProto
import LmctfyRPC
import LmctfyTestSupport
import Testing

@Suite struct FuzzTests {
    static let validStream: [UInt8] = {
        var out = FrameCodec.encode(Frame(kind: .frameHello, hello: Hello(stage: .helloOffer, minVersion: 1, maxVersion: 1, peerName: "fuzz")))
        out += FrameCodec.encode(Frame(kind: .frameRequest, streamId: 1, method: "Ping", payload: [10, 2, 104, 105], deadlineMs: 50))
        out += FrameCodec.encode(Frame(kind: .framePing, payload: [1, 2]))
        out += FrameCodec.encode(Frame(kind: .frameRequest, streamId: 3, method: "Notify"))
        out += FrameCodec.encode(Frame(kind: .frameCancel, streamId: 3))
        return out
    }()

    static func input(_ i: Int, _ rng: inout SplitMix64) -> [UInt8] {
        switch i % 3 {
        case 0:
            return (0..<Int(rng.next() % 300)).map { _ in UInt8.random(in: 0...255, using: &rng) }
        case 1:
            let junk = (0..<Int(rng.next() % 100)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            return Array(validStream.prefix(Int(rng.next() % UInt64(validStream.count + 1)))) + junk
        default:
            var bytes = validStream
            for _ in 0..<(1 + Int(rng.next() % 4)) {
                bytes[Int(rng.next() % UInt64(bytes.count))] ^= UInt8(1) << (rng.next() % 8)
            }
            return bytes
        }
    }

    @Test func tenThousandHostileInputs() {
        var rng = SplitMix64(seed: 0x1c7f)
        var closedEarly = 0
        for i in 0..<10_000 {
            let bytes = Self.input(i, &rng)
            var s = Session(
                acceptor: .peerCredentials(rootCredentials, UnixPeerPolicy()), name: "agent",
                limits: SessionLimits(maxFrameBytes: 4096, maxStreams: 4), nonces: CountingNonces(salt: 3), now: 0)
            var actions: [SessionAction] = []
            // Random chunking, too.
            var offset = 0
            while offset < bytes.count {
                let end = min(bytes.count, offset + 1 + Int(rng.next() % 64))
                actions += s.receive(bytes[offset..<end], now: UInt64(offset))
                offset = end
            }
            if s.isClosed { closedEarly += 1 }
            actions += s.tick(now: 1_000_000)      // every timer due
            actions += s.receiveEOF(now: 1_000_001)
            #expect(s.isClosed, "input \(i) left the session open")
            #expect(s.openStreamCount == 0, "input \(i) leaked a stream")
            #expect(actions.filter { if case .close = $0 { true } else { false } }.count == 1, "input \(i): exactly one close")
            // Whatever it wrote must itself be valid frames.
            var decoder = FrameDecoder(maxFrameBytes: .max)
            decoder.feed(bytesWritten(actions))
            while true {
                guard let f = try? decoder.next() else { break }
                _ = f
            }
            #expect(decoder.bufferedBytes == 0, "input \(i): wrote a malformed frame")
        }
        // Most hostile inputs are caught by the framing, not the timers.
        #expect(closedEarly > 5_000)
    }
}
