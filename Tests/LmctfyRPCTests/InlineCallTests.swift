// The inline lane (InlineCalls.swift): a session that answers Ping inside
// `receive` must write exactly what a session without it writes when its
// owner answers the delivered Ping at once through the generic codec, and
// report every other action alike -- for the plain requests the lane takes
// and for everything it must leave to the normal path.
import LmctfyProto
import LmctfyRPC
import LmctfySystem
import LmctfyTestSupport
import Testing

/// Answers "Ping" as the agent does (PingWire), counting what it answered.
final class PingResponder: InlineResponder {
    var answered = 0
    func answerInline(method: UnsafeRawBufferPointer, request: UnsafeRawBufferPointer, response: inout [UInt8]) -> Bool {
        guard method.elementsEqual("Ping".utf8), PingWire.answer(request, to: &response) else { return false }
        answered += 1
        return true
    }
}

/// What a session did with some input: the bytes it wrote and, in order,
/// every other action (a delivered Ping is answered at once, generically).
struct Outcome: Equatable, CustomStringConvertible {
    var bytes: [UInt8] = []
    var actions: [String] = []
    var description: String { "\(bytes.count) bytes written, \(actions)" }
}

private func reference(_ s: inout Session, _ actions: [SessionAction], into out: inout Outcome) {
    for action in actions {
        switch action {
        case .write(let b):
            out.bytes += b
        case .deliverRequest(let id, "Ping", let payload, _, _):
            // What the agent's dispatcher does with a Ping.
            let answer: [SessionAction]
            if let r = try? PingRequest(serializedBytes: payload), let bytes = try? PingResponse(data: r.data ?? []).serializedBytes() {
                answer = s.sendFinal(streamId: id, payload: bytes, .ok, now: 0)
            } else {
                answer = s.sendStatus(streamId: id, CallStatus(.invalidArgument, "Malformed Ping request"), now: 0)
            }
            reference(&s, answer, into: &out)
        case .deliverRequest(let id, "Info", _, _, _):
            // Answered at once too; other methods stay open (the stream limit).
            out.actions.append("\(action)")
            reference(&s, s.sendStatus(streamId: id, .ok, now: 0), into: &out)
        default:
            out.actions.append("\(action)")
        }
    }
}

/// Feeds `chunk` to both sessions; the twin with the inline lane.
private func feed(_ plain: inout Session, _ twin: inout Session, _ responder: PingResponder, _ chunk: [UInt8]) -> (Outcome, Outcome) {
    var a = Outcome(), b = Outcome()
    reference(&plain, plain.receive(chunk, now: 0), into: &a)
    reference(&twin, twin.receive(chunk, now: 0, inline: responder), into: &b)
    return (a, b)
}

/// An acceptor after a Unix-socket offer of exactly `version`.
private func acceptor(version: UInt32, maxStreams: UInt32 = 128, peerMaxFrame: UInt32? = nil) -> Session {
    var s = Session(acceptor: .peerCredentials(rootCredentials, UnixPeerPolicy()), name: "agent",
                    limits: SessionLimits(maxStreams: maxStreams), now: 0)
    _ = s.receive(frame(Frame(kind: .frameHello, hello: Hello(
        stage: .helloOffer, minVersion: version, maxVersion: version, maxFrameBytes: peerMaxFrame))), now: 0)
    precondition(s.isEstablished && s.peer?.version == version)
    return s
}

/// Protobuf by hand, so frames can be made that the Frame type cannot say
/// (duplicates, non-minimal varints, unknown fields).
private struct Wire {
    var bytes: [UInt8] = []
    mutating func varint(_ v: UInt64, pad: Int = 0) {
        var v = v
        var n = 0
        while v >= 0x80 || n < pad {
            bytes.append(UInt8(truncatingIfNeeded: v) | 0x80)
            v >>= 7
            n += 1
        }
        bytes.append(UInt8(v))
    }
    mutating func field(_ n: UInt64, varint v: UInt64, pad: Int = 0) { varint(n << 3); varint(v, pad: pad) }
    mutating func field(_ n: UInt64, bytes b: [UInt8]) { varint(n << 3 | 2); varint(UInt64(b.count)); bytes += b }
    var framed: [UInt8] {
        let n = UInt32(bytes.count)
        return [UInt8(n >> 24), UInt8(n >> 16 & 0xff), UInt8(n >> 8 & 0xff), UInt8(n & 0xff)] + bytes
    }
}

/// A plain Ping request, the lane's case.
private func ping(_ id: UInt32, _ data: [UInt8]?) -> [UInt8] {
    var w = Wire()
    w.field(1, varint: 2)
    w.field(2, varint: UInt64(id))
    w.field(3, bytes: Array("Ping".utf8))
    if let data {
        var p = Wire()
        p.field(1, bytes: data)
        w.field(4, bytes: p.bytes)
    }
    return w.framed
}

@Suite struct InlineCallTests {
    @Test(arguments: [UInt32(1), 2, 3])
    func theLaneWritesWhatTheNormalPathWrites(version: UInt32) {
        var plain = acceptor(version: version), twin = acceptor(version: version)
        let responder = PingResponder()
        var id: UInt32 = 1
        var answered = 0
        for size in [nil, 0, 1, 127, 128, 300, 20_000] as [Int?] {
            for _ in 0..<3 {
                let data = size.map { n in (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(id)) } }
                let (a, b) = feed(&plain, &twin, responder, ping(id, data))
                #expect(a == b, "version \(version), stream \(id), \(size.map(String.init) ?? "no") data")
                #expect(!a.bytes.isEmpty && a.actions.isEmpty)
                answered += 1
                // Stream ids whose varints take 1 to 5 bytes.
                id = id < 1 << 28 ? id * 131 | 1 : id + 2
            }
        }
        #expect(responder.answered == answered)
        #expect(twin.openStreamCount == 0 && plain.openStreamCount == 0)
    }

    @Test func manyRequestsInOneReadAreAnsweredInOneWrite() {
        var plain = acceptor(version: 3), twin = acceptor(version: 3)
        let responder = PingResponder()
        let chunk = (0..<64).flatMap { ping(UInt32(2 * $0 + 1), [UInt8($0)]) }
        var b = Outcome()
        let actions = twin.receive(chunk, now: 0, inline: responder)
        #expect(actions.count == 1)
        reference(&twin, actions, into: &b)
        var a = Outcome()
        reference(&plain, plain.receive(chunk, now: 0), into: &a)
        #expect(a == b)
        #expect(responder.answered == 64)
    }

    /// Every frame the lane must leave alone still gets the normal path's
    /// outcome (delivered, refused, or closing the connection).
    @Test func whatTheLaneLeavesTakesTheNormalPath() {
        let cases: [(String, [UInt8])] = {
            var out: [(String, [UInt8])] = []
            func add(_ name: String, _ build: (inout Wire) -> Void) {
                var w = Wire()
                build(&w)
                out.append((name, w.framed))
            }
            let pingName = Array("Ping".utf8)
            add("another method") { $0.field(1, varint: 2); $0.field(2, varint: 1); $0.field(3, bytes: Array("Info".utf8)) }
            add("a method with a NUL") { $0.field(1, varint: 2); $0.field(2, varint: 1); $0.field(3, bytes: pingName + [0, 65]) }
            add("an empty method") { $0.field(1, varint: 2); $0.field(2, varint: 1); $0.field(3, bytes: []) }
            add("no method") { $0.field(1, varint: 2); $0.field(2, varint: 1) }
            add("stream 0") { $0.field(1, varint: 2); $0.field(2, varint: 0); $0.field(3, bytes: pingName) }
            add("our parity") { $0.field(1, varint: 2); $0.field(2, varint: 2); $0.field(3, bytes: pingName) }
            add("no stream id") { $0.field(1, varint: 2); $0.field(3, bytes: pingName) }
            add("a duplicate method") { $0.field(1, varint: 2); $0.field(2, varint: 1); $0.field(3, bytes: pingName); $0.field(3, bytes: pingName) }
            add("a duplicate id") { $0.field(1, varint: 2); $0.field(2, varint: 3); $0.field(2, varint: 1); $0.field(3, bytes: pingName) }
            add("a host") { $0.field(1, varint: 2); $0.field(2, varint: 1); $0.field(3, bytes: pingName); $0.field(10, bytes: Array("h".utf8)) }
            add("a status") { $0.field(1, varint: 2); $0.field(2, varint: 1); $0.field(3, bytes: pingName); $0.field(6, bytes: [8, 0]) }
            add("an unknown field") { $0.field(1, varint: 2); $0.field(2, varint: 1); $0.field(3, bytes: pingName); $0.field(99, varint: 1) }
            add("a non-minimal id") { $0.field(1, varint: 2); $0.field(2, varint: 1, pad: 3); $0.field(3, bytes: pingName) }
            add("a six-byte id varint") { $0.field(1, varint: 2); $0.field(2, varint: 1, pad: 5); $0.field(3, bytes: pingName) }
            add("an id over 32 bits") { $0.field(1, varint: 2); $0.field(2, varint: 1 << 32 | 1); $0.field(3, bytes: pingName) }
            add("the method as a varint") { $0.field(1, varint: 2); $0.field(2, varint: 1); $0.field(3, varint: 5) }
            add("a payload with an unknown field") {
                $0.field(1, varint: 2); $0.field(2, varint: 1); $0.field(3, bytes: pingName); $0.field(4, bytes: [8, 1])
            }
            add("a payload that is not a message") {
                $0.field(1, varint: 2); $0.field(2, varint: 1); $0.field(3, bytes: pingName); $0.field(4, bytes: [0x0a, 5, 1])
            }
            add("a cancel") { $0.field(1, varint: 5); $0.field(2, varint: 1) }
            add("a truncated field") { $0.field(1, varint: 2); $0.field(2, varint: 1); $0.bytes += [0x1a, 9, 80] }
            add("a deadline and data twice") {
                $0.field(1, varint: 2); $0.field(2, varint: 1); $0.field(3, bytes: pingName); $0.field(5, varint: 100)
                $0.field(4, bytes: [0x0a, 1, 7, 0x0a, 2, 8, 9])
            }
            return out
        }()
        for (name, bytes) in cases {
            var plain = acceptor(version: 3), twin = acceptor(version: 3)
            let responder = PingResponder()
            // A call first, so the rising-id rule has something to compare with.
            _ = feed(&plain, &twin, responder, ping(1, [1]))
            let (a, b) = feed(&plain, &twin, responder, bytes)
            #expect(a == b, "\(name)")
        }
    }

    @Test func aReusedIdAndTheStreamLimitAreTheNormalPathsToRefuse() {
        var plain = acceptor(version: 3, maxStreams: 1), twin = acceptor(version: 3, maxStreams: 1)
        let responder = PingResponder()
        _ = feed(&plain, &twin, responder, ping(5, [1]))
        var (a, b) = feed(&plain, &twin, responder, ping(3, [1]))
        #expect(a == b && twin.isClosed, "a lower id closes the connection")
        plain = acceptor(version: 3, maxStreams: 1)
        twin = acceptor(version: 3, maxStreams: 1)
        // One call held open (not Ping), then a Ping over the limit.
        var w = Wire()
        w.field(1, varint: 2); w.field(2, varint: 1); w.field(3, bytes: Array("Create".utf8))
        (a, b) = feed(&plain, &twin, responder, w.framed + ping(3, [1]))
        #expect(a == b)
        #expect(a.actions.count == 1 && a.bytes.count > 0, "Create delivered, the Ping refused: \(a)")
    }

    @Test func aResponseOverThePeersFrameLimitIsTheNormalPathsToRefuse() {
        var plain = acceptor(version: 3, peerMaxFrame: 1024), twin = acceptor(version: 3, peerMaxFrame: 1024)
        let responder = PingResponder()
        let (a, b) = feed(&plain, &twin, responder, ping(1, [UInt8](repeating: 1, count: 2000)))
        #expect(a == b)
        #expect(writtenFrames([.write(a.bytes)]).first?.status?.code == StatusCode.resourceExhausted.rawValue)
    }

    /// Random frames, cut at random but with at most one frame ending in a
    /// read (the owner answers a delivered Ping after the read, the lane at
    /// once: with two frames in one read a later error or the stream limit
    /// would see the difference, which is the lane's point, not a fault):
    /// both sessions stay in step.
    @Test func randomFramesGiveTheSameOutcome() {
        var rng = SplitMix64(seed: 0x1_0c_a1)
        var answered = 0
        for round in 0..<300 {
            let version = UInt32(1 + rng.next() % 3)
            var plain = acceptor(version: version, maxStreams: 4), twin = acceptor(version: version, maxStreams: 4)
            let responder = PingResponder()
            var chunks: [[UInt8]] = []
            var carry: [UInt8] = []
            var id: UInt64 = 1
            for _ in 0..<(1 + rng.next() % 80) {
                var w = Wire()
                let fields = [1, 2, 3, 4, 5, 3, 4, 1, 2, 6, 9, 10, 7, 5, 4, 3]
                // Half are plain requests (kind, id, method, payload), the rest
                // have one or two more fields of any kind.
                let n = rng.next() % 2 == 0 ? 4 : 4 + Int(rng.next() % 3)
                for i in 0..<n {
                    let f = i < 4 && rng.next() % 100 != 0 ? [1, 2, 3, 4][i] : fields[Int(rng.next() % UInt64(fields.count))]
                    switch f {
                    case 1: w.field(1, varint: rng.next() % 100 == 0 ? rng.next() % 12 : 2, pad: rng.next() % 20 == 0 ? 2 : 0)
                    case 2:
                        id += rng.next() % 60 == 0 ? 1 : 2
                        w.field(2, varint: rng.next() % 60 == 0 ? id &- 4 : id)
                    case 3:
                        let methods = ["Ping", "Ping", "Ping", "Ping", "Ping", "Info", "Info", "Info", "Pin", "Pingg"]
                        let method = rng.next() % 100 == 0 ? "" : methods[Int(rng.next() % 10)]
                        w.field(3, bytes: Array(method.utf8))
                    case 4:
                        let data = (0..<(rng.next() % 20)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
                        switch rng.next() % 6 {
                        case 0, 4, 5: var p = Wire(); p.field(1, bytes: data); w.field(4, bytes: p.bytes)
                        case 1: w.field(4, bytes: [])
                        case 2: w.field(4, bytes: data)
                        default: var p = Wire(); p.field(1, bytes: data); p.field(1, bytes: [1]); w.field(4, bytes: p.bytes)
                        }
                    case 5: w.field(5, varint: rng.next() % 1000)
                    case 6: w.field(6, bytes: [8, 0])
                    case 9: w.field(9, varint: 1)
                    case 10: w.field(10, bytes: Array("h".utf8))
                    default: w.field(UInt64(f), bytes: [])
                    }
                }
                var framed = w.framed
                // A flipped bit in the body (the length prefix stays right).
                if rng.next() % 60 == 0 { framed[4 + Int(rng.next() % UInt64(framed.count - 4))] ^= UInt8(truncatingIfNeeded: rng.next() | 1) }
                // A read ends inside each frame (so at most one frame ends in a read).
                let cut = Int(rng.next() % UInt64(framed.count))
                chunks.append(carry + framed[..<cut])
                carry = Array(framed[cut...])
            }
            chunks.append(carry)
            for (i, chunk) in chunks.enumerated() where !plain.isClosed {
                let (a, b) = feed(&plain, &twin, responder, chunk)
                if a != b {
                    Issue.record("round \(round) (version \(version)) read \(i): plain \(a), inline \(b)")
                    return
                }
            }
            #expect(plain.isClosed == twin.isClosed && plain.openStreamCount == twin.openStreamCount)
            answered += responder.answered
        }
        #expect(answered > 500, "the lane answered only \(answered) of the random requests")
    }
}
