// FrameDecoder: arbitrary chunking, every malformed-input class, the limit
// checked from the header alone.
import LmctfyProto
import LmctfyRPC
import LmctfyTestSupport
import Testing

@Suite struct FramingTests {
    static func sampleFrames(_ rng: inout SplitMix64, count: Int) -> [Frame] {
        (0..<count).map { i in
            switch rng.next() % 5 {
            case 0:
                Frame(kind: .frameRequest, streamId: UInt32(2 * i + 1), method: "Stats",
                      payload: (0..<Int(rng.next() % 3000)).map { _ in UInt8.random(in: 0...255, using: &rng) },
                      deadlineMs: UInt32(rng.next() % 100_000))
            case 1:
                Frame(kind: .frameResponse, streamId: UInt32(i), payload: (0..<Int(rng.next() % 200)).map { UInt8(truncatingIfNeeded: $0) })
            case 2:
                Frame(kind: .frameStatus, streamId: UInt32(i), status: RpcStatus(code: Int32(rng.next() % 17), message: "m\(i)"))
            case 3:
                Frame(kind: .framePing, payload: [1, 2, 3])
            default:
                Frame(kind: .frameCancel, streamId: UInt32(i))
            }
        }
    }

    /// Property: however the bytes are cut, the same frames come out.
    @Test(arguments: 0..<20)
    func randomChunkingsYieldTheSameFrames(seed: UInt64) throws {
        var rng = SplitMix64(seed: seed)
        let frames = Self.sampleFrames(&rng, count: 30)
        let bytes = frames.flatMap(FrameCodec.encode)
        var decoder = FrameDecoder(maxFrameBytes: 1 << 20)
        var out: [Frame] = []
        var offset = 0
        while offset < bytes.count {
            let n = Int(rng.next() % 4 == 0 ? rng.next() % 5 : rng.next() % 700)
            let end = min(bytes.count, offset + n)
            decoder.feed(bytes[offset..<end])
            offset = end
            while let f = try decoder.next() { out.append(f) }
        }
        #expect(out == frames)
        #expect(decoder.bufferedBytes == 0)
        try decoder.finish()
    }

    /// A large frame's memory goes with it when the next frame has begun:
    /// the connection's budget counts what is buffered, so what is held
    /// must not stay at the large frame's size (it did: removeFirst kept
    /// the capacity, ~8 MiB held for 1 byte counted).
    @Test func aConsumedLargeFrameDoesNotStayHeld() throws {
        let large = FrameCodec.encode(Frame(kind: .framePong, payload: [UInt8](repeating: 9, count: 4 << 20)))
        let next = FrameCodec.encode(Frame(kind: .framePing, payload: [1]))
        var decoder = FrameDecoder(maxFrameBytes: 8 << 20)
        var offset = 0
        while offset < large.count {  // as the loop reads: 64 KiB at a time
            let end = min(large.count, offset + 65536)
            decoder.feed(large[offset..<end])
            offset = end
        }
        decoder.feed(next.prefix(1))
        #expect(try decoder.next()?.kind == .framePong)
        #expect(decoder.bufferedBytes == 1)
        #expect(decoder.heldBytes <= 65536, "\(decoder.heldBytes) bytes held for \(decoder.bufferedBytes) buffered")
        decoder.feed(next.dropFirst())
        #expect(try decoder.next()?.kind == .framePing)
        #expect(decoder.bufferedBytes == 0)
    }

    @Test func oneByteAtATime() throws {
        let bytes = Golden["hello-offer"] + Golden["ping-request"]
        var decoder = FrameDecoder(maxFrameBytes: 65536)
        var n = 0
        for b in bytes {
            decoder.feed([b])
            while try decoder.next() != nil { n += 1 }
        }
        #expect(n == 2)
    }

    @Test func oversizeIsRejectedFromTheHeaderAlone() {
        var decoder = FrameDecoder(maxFrameBytes: 1000)
        decoder.feed([0, 0, 0x03, 0xe9])   // 1001, no body at all
        #expect(throws: FrameError.oversize(length: 1001, max: 1000)) { try decoder.next() }
        var huge = FrameDecoder(maxFrameBytes: 4 << 20)
        huge.feed([0xff, 0xff, 0xff, 0xff])
        #expect(throws: FrameError.oversize(length: .max, max: 4 << 20)) { try huge.next() }
    }

    @Test func exactlyTheLimitIsAccepted() throws {
        let f = FrameCodec.encode(Frame(kind: .frameResponse, streamId: 1, payload: [UInt8](repeating: 9, count: 500)))
        var decoder = FrameDecoder(maxFrameBytes: UInt32(f.count - 4))
        decoder.feed(f)
        #expect(try decoder.next()?.payload?.count == 500)
    }

    @Test func truncatedHeaderAndBody() {
        var a = FrameDecoder(maxFrameBytes: 100)
        a.feed([0, 0, 0])
        #expect((try? a.next()) == .some(nil))
        #expect(throws: FrameError.truncated(needed: 4, have: 3)) { try a.finish() }
        var b = FrameDecoder(maxFrameBytes: 100)
        b.feed([0, 0, 0, 10, 8, 2])
        #expect((try? b.next()) == .some(nil))
        #expect(throws: FrameError.truncated(needed: 14, have: 6)) { try b.finish() }
    }

    @Test func garbageBody() {
        var d = FrameDecoder(maxFrameBytes: 100)
        d.feed([0, 0, 0, 3, 0xff, 0xff, 0xff])
        #expect(throws: FrameError.garbage(length: 3)) { try d.next() }
    }

    /// A length prefix shorter than the frame it announces cuts the protobuf.
    @Test func shortLengthPrefix() {
        var bytes = Golden["ping-request"]
        bytes[3] = 3
        var d = FrameDecoder(maxFrameBytes: 100)
        d.feed(bytes)
        #expect(throws: FrameError.garbage(length: 3)) { try d.next() }
    }

    @Test func unknownAndMissingKinds() {
        var d = FrameDecoder(maxFrameBytes: 100)
        d.feed([0, 0, 0, 2, 0x08, 99])
        #expect(throws: FrameError.unknownKind(99)) { try d.next() }
        var e = FrameDecoder(maxFrameBytes: 100)
        e.feed([0, 0, 0, 0])
        #expect(throws: FrameError.unknownKind(nil)) { try e.next() }
        var z = FrameDecoder(maxFrameBytes: 100)
        z.feed([0, 0, 0, 2, 0x08, 0])
        #expect(throws: FrameError.unknownKind(0)) { try z.next() }
    }

    @Test func unknownFieldsAreIgnored() throws {
        // kind RESPONSE, stream 1, plus field 99 (varint 5) from a newer peer.
        var d = FrameDecoder(maxFrameBytes: 100)
        d.feed([0, 0, 0, 7, 0x08, 3, 0x10, 1, 0x98, 0x06, 5])
        let f = try #require(try d.next())
        #expect(f.kind == .frameResponse && f.streamId == 1)
    }

    @Test func errorsNameTheirGoAwayReason() {
        #expect(FrameError.truncated(needed: 4, have: 1).goAwayReason == .goawayTruncated)
        #expect(FrameError.oversize(length: 2, max: 1).goAwayReason == .goawayFrameTooLarge)
        #expect(FrameError.garbage(length: 1).goAwayReason == .goawayMalformedFrame)
        #expect(FrameError.unknownKind(9).goAwayReason == .goawayMalformedFrame)
    }
}
