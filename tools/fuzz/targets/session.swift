// Session (Sources/LmctfyRPC/Session.swift) driven by a script of
// operations taken from the input: bytes from the peer in chunks, timer
// ticks, answers to the peer's calls, calls of our own and cancels.
//
// Input: 1 byte of mode (bit 0: dialler, else acceptor; bit 1: shared key,
// else Unix peer credentials; bit 2: Ping answered in the inline lane, as
// the agent does), then operations, each one byte `op`:
//   op%8 in 0...3: receive the next 1 + (next byte) input bytes
//   op%8 == 4: advance the clock by 10 * (next 2 bytes) ms and tick
//   op%8 == 5: answer the oldest open incoming call (response if op&8, else
//              status); with op&64, grant it 2 INPUT frames instead
//   op%8 == 6: open a call ("Ping"; deadline 100 ms if op&16)
//   op%8 == 7: cancel the oldest open outgoing call; with op&64, send input
//              on it instead (its end if op&128; with a terminal size of
//              op%32 rows if op&32, version 5)
// Then every timer fires and the peer hangs up.
// Properties (checked against a model of the open streams kept here):
//  - calls are delivered once, with the peer's parity, never more than
//    maxStreams at a time; a response or status is only for a call we made
//    and still have open; a cancel only for a call the peer made and we hold;
//  - input (version 4) is delivered only for a call the peer made, within
//    the INPUT frames granted on it and never after its end; input credit
//    only for a call we made;
//  - openStreamCount equals the model's count after every operation;
//  - exactly one close, nothing after it but the refusal of new calls;
//  - every write is whole frames; requests and responses fit the peer's limit;
//  - at the end the session is closed and every call has ended.
import LmctfyProto
import LmctfyRPC
import LmctfySystem

struct FixedNonces: NonceSource {
    let first: UInt8
    func nonce() -> [UInt8] { (0..<32).map { first &+ UInt8($0) } }
}

/// The key of docs/PROTOCOL.md's golden vectors, so seeds can carry a valid proof.
let goldenKey = Array("lmctfy-golden-key".utf8)
let limits = SessionLimits(maxFrameBytes: 4096, maxStreams: 4)

/// The agent's inline Ping (InlineCalls.swift).
final class InlinePing: InlineResponder {
    func answerInline(method: UnsafeRawBufferPointer, request: UnsafeRawBufferPointer, response: inout [UInt8]) -> Bool {
        method.elementsEqual("Ping".utf8) && PingWire.answer(request, to: &response)
    }
}

struct Model {
    let role: SessionRole
    var incoming: [UInt32] = []
    var outgoing: [UInt32] = []
    var closes = 0
    var established = false
    var peerMax: UInt32 = FrameCodec.helloMaxFrameBytes
    /// INPUT frames granted on the peer's calls and not yet received; -1:
    /// its end came.
    var inputGranted: [UInt32: Int] = [:]

    func peerOpened(_ id: UInt32) -> Bool { role == .acceptor ? id % 2 == 1 : id % 2 == 0 }

    mutating func absorb(_ actions: [SessionAction], _ what: String) {
        for action in actions {
            require(closes == 0, "\(what): \(action) after the close")
            switch action {
            case .write(let bytes):
                var decoder = FrameDecoder(maxFrameBytes: .max)
                decoder.feed(bytes)
                var frames: [Frame] = []
                do {
                    while let f = try decoder.next() { frames.append(f) }
                } catch {
                    require(false, "\(what): wrote bytes that are not frames: \(error)")
                }
                require(decoder.bufferedBytes == 0, "\(what): wrote a partial frame")
                for f in frames where established && (f.kind == .frameRequest || f.kind == .frameResponse) {
                    let size = (try? f.serializedBytes().count) ?? 0
                    require(size <= Int(peerMax), "\(what): \(f.kind!) of \(size) bytes over the peer's limit \(peerMax)")
                }
            case .established(let info):
                require(!established, "\(what): established twice")
                established = true
                peerMax = info.maxFrameBytes
            case .deliverRequest(let id, _, _, _, _):
                require(peerOpened(id), "\(what): request on stream \(id) with our parity")
                require(!incoming.contains(id), "\(what): stream \(id) delivered twice")
                incoming.append(id)
                require(incoming.count <= Int(limits.maxStreams), "\(what): \(incoming.count) concurrent incoming calls")
            case .deliverResponse(let id, _):
                require(outgoing.contains(id), "\(what): response on stream \(id), not an open call of ours")
            case .deliverStatus(let id, _):
                require(outgoing.contains(id), "\(what): status on stream \(id), not an open call of ours")
                outgoing.removeAll { $0 == id }
            case .cancelled(let id, _):
                require(incoming.contains(id), "\(what): cancel of stream \(id), not an open call of the peer's")
                incoming.removeAll { $0 == id }
            case .credit(let id, let n):
                require(incoming.contains(id), "\(what): credit for stream \(id), not an open call of the peer's")
                require(n > 0, "\(what): a credit of 0 delivered")
            case .input(let id, let payload, let end, let window):
                require(incoming.contains(id), "\(what): input on stream \(id), not an open call of the peer's")
                require(payload.count <= Session.maxInputBytes, "\(what): input of \(payload.count) bytes")
                require(window.map { $0.rows > 0 && $0.cols > 0 } ?? true, "\(what): a window of \(String(describing: window))")
                let left = inputGranted[id] ?? 0
                require(left > 0, "\(what): input on stream \(id) beyond its credit (or after its end: \(left))")
                inputGranted[id] = end ? -1 : left - 1
            case .inputCredit(let id, let n):
                require(outgoing.contains(id), "\(what): input credit for stream \(id), not an open call of ours")
                require(n > 0, "\(what): an input credit of 0 delivered")
            case .close:
                closes += 1
            }
        }
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzSession(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    var input = Choices(inputBytes(data, size))
    let mode = input.byte()
    let sharedKey = mode & 2 != 0
    var session: Session
    if mode & 1 == 0 {
        let auth: AcceptorAuthentication = sharedKey
            ? .sharedKey(try! Keyring(["ops": goldenKey]), ReplayCache())
            : .peerCredentials(PeerCredentials(pid: 42, uid: 0, gid: 0), UnixPeerPolicy())
        session = Session(acceptor: auth, name: "agent", limits: limits, nonces: FixedNonces(first: 0x20), now: 0)
    } else {
        let auth: DiallerAuthentication = sharedKey ? .sharedKey(keyId: "ops", key: goldenKey) : .peerCredentials
        session = Session(dialler: auth, name: "lmctl", limits: limits, nonces: FixedNonces(first: 0), now: 0)
    }
    let inline: InlinePing? = mode & 4 != 0 ? InlinePing() : nil
    var model = Model(role: session.role)
    var now: UInt64 = 0
    model.absorb(session.start(now: now), "start")

    var step = 0
    while !input.isAtEnd {
        step += 1
        let op = input.byte()
        let closed = session.isClosed
        let actions: [SessionAction]
        switch op % 8 {
        case 0...3:
            let n = 1 + Int(input.byte())
            var chunk: [UInt8] = []
            for _ in 0..<n where !input.isAtEnd { chunk.append(input.byte()) }
            actions = inline.map { session.receive(chunk, now: now, inline: $0) } ?? session.receive(chunk, now: now)
        case 4:
            now += 10 * UInt64(input.uint16())
            actions = session.tick(now: now)
        case 5:
            guard let id = model.incoming.first else { continue }
            if op & 64 != 0 {
                actions = session.sendInputCredit(streamId: id, 2, now: now)
                let left = model.inputGranted[id] ?? 0
                if !actions.isEmpty && left >= 0 { model.inputGranted[id] = left + 2 }
            } else if op & 8 != 0 {
                actions = session.sendResponse(streamId: id, payload: [10, 2, 104, 105], now: now)
            } else if op & 32 != 0 {
                // The last response with the status (one frame in version 2).
                actions = session.sendFinal(streamId: id, payload: [10, 2, 104, 105], .ok, now: now)
                if !closed { model.incoming.removeFirst() }
            } else {
                actions = session.sendStatus(streamId: id, .ok, now: now)
                if !closed { model.incoming.removeFirst() }
            }
        case 6:
            let (id, opened) = session.openStream(method: "Ping", payload: [10, 0], deadlineMs: op & 16 != 0 ? 100 : nil, now: now)
            if closed {
                require(opened == [.deliverStatus(streamId: id, CallStatus(.unavailable, "connection closed: \(session.closeReason?.description ?? "")"))]
                        || opened.count == 1, "step \(step): a call on a closed session got \(opened)")
                continue
            }
            if id != 0 { model.outgoing.append(id) }
            actions = opened
        default:
            guard let id = model.outgoing.first else { continue }
            if op & 64 != 0 {
                let window = op & 32 != 0 ? TerminalWindow(rows: UInt16(op % 32), cols: 80) : nil
                actions = session.sendInput(streamId: id, [1, 2, 3], end: op & 128 != 0, window: window, now: now).actions
                break
            }
            actions = session.cancel(streamId: id, now: now)
            if !closed { model.outgoing.removeFirst() }
        }
        require(!closed || actions.isEmpty, "step \(step): actions \(actions) from a closed session")
        model.absorb(actions, "step \(step) (op \(op % 8))")
        if !session.isClosed {
            require(session.openStreamCount == model.incoming.count + model.outgoing.count,
                    "step \(step): openStreamCount \(session.openStreamCount), model \(model.incoming) \(model.outgoing)")
        }
    }
    if !session.isClosed {
        model.absorb(session.tick(now: now + 1_000_000_000), "final tick")
        model.absorb(session.receiveEOF(now: now + 1_000_000_001), "eof")
    }
    require(session.isClosed, "the session is still open after the peer hung up")
    require(model.closes == 1, "\(model.closes) closes")
    require(session.openStreamCount == 0, "\(session.openStreamCount) streams left open")
    require(model.incoming.isEmpty && model.outgoing.isEmpty,
            "calls never ended: incoming \(model.incoming), outgoing \(model.outgoing)")
    return 0
}
