// Shared test machinery: the golden vectors read from docs/PROTOCOL.md, fixed
// nonces, a seeded random generator and a pair of sessions wired together.
import Foundation
import LmctfyProto
import LmctfyRPC
import LmctfySystem
import Synchronization
import LmctfyTestSupport
import Testing

enum Repo {
    static let root = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
}

/// The ```hex golden:NAME blocks of docs/PROTOCOL.md, whitespace removed.
enum Golden {
    static let vectors: [String: [UInt8]] = {
        let path = Repo.root.appendingPathComponent("docs/PROTOCOL.md").path
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return [:] }
        var out: [String: [UInt8]] = [:]
        var name: String?
        var hex = ""
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            if let current = name {
                if line.hasPrefix("```") {
                    out[current] = bytes(hex)
                    name = nil
                } else {
                    hex += line.filter { !$0.isWhitespace }
                }
            } else if line.hasPrefix("```hex golden:") {
                name = String(line.dropFirst("```hex golden:".count)).trimmingCharacters(in: .whitespaces)
                hex = ""
            }
        }
        return out
    }()

    static func bytes(_ hex: String) -> [UInt8] {
        var out: [UInt8] = []
        var i = hex.startIndex
        while i < hex.endIndex, let j = hex.index(i, offsetBy: 2, limitedBy: hex.endIndex) {
            out.append(UInt8(hex[i..<j], radix: 16)!)
            i = j
        }
        return out
    }

    static subscript(_ name: String) -> [UInt8] {
        guard let v = vectors[name] else {
            Issue.record("docs/PROTOCOL.md has no golden:\(name) block")
            return []
        }
        return v
    }
}

struct FixedNonce: NonceSource {
    let value: [UInt8]
    init(_ value: [UInt8]) { self.value = value }
    init(from start: UInt8) { self.value = (0..<32).map { start &+ UInt8($0) } }
    func nonce() -> [UInt8] { value }
}

/// Distinct nonces, deterministic.
final class CountingNonces: NonceSource {
    private let counter = Mutex<UInt64>(0)
    private let salt: UInt8
    init(salt: UInt8) { self.salt = salt }
    func nonce() -> [UInt8] {
        let n = counter.locked { c in c += 1; return c }
        return [salt] + (0..<8).map { UInt8(truncatingIfNeeded: n >> ($0 * 8)) } + [UInt8](repeating: 7, count: 23)
    }
}


let goldenKey = Array("lmctfy-golden-key".utf8)
let rootCredentials = PeerCredentials(pid: 42, uid: 0, gid: 0)

func frame(_ f: Frame) -> [UInt8] { FrameCodec.encode(f) }

/// Frames written by these actions, decoded.
func writtenFrames(_ actions: [SessionAction]) -> [Frame] {
    var decoder = FrameDecoder(maxFrameBytes: .max)
    for case .write(let bytes) in actions { decoder.feed(bytes) }
    var out: [Frame] = []
    while let f = try? decoder.next() { out.append(f) }
    return out
}

/// Everything but writes.
func events(_ actions: [SessionAction]) -> [SessionAction] {
    actions.filter { if case .write = $0 { false } else { true } }
}

func closeReason(_ actions: [SessionAction]) -> CloseReason? {
    for case .close(let r) in actions { return r }
    return nil
}

/// The goaway a side wrote, if any.
func goAway(_ actions: [SessionAction]) -> GoAway? {
    writtenFrames(actions).first { $0.kind == .frameGoaway }?.goaway
}

/// A dialler and an acceptor with their writes delivered to each other.
struct Pair {
    enum Side { case dialler, acceptor }
    var dialler: Session
    var acceptor: Session
    var now: UInt64 = 1_000
    /// Non-write actions seen by each side since the last `take`.
    var diallerEvents: [SessionAction] = []
    var acceptorEvents: [SessionAction] = []

    init(dialler: Session, acceptor: Session) {
        self.dialler = dialler
        self.acceptor = acceptor
    }

    /// A pair over a "Unix socket" (peer credentials) or "TCP" (shared key),
    /// handshake done.
    static func established(tcp: Bool = false, diallerLimits: SessionLimits = SessionLimits(), acceptorLimits: SessionLimits = SessionLimits()) -> Pair {
        var p = tcp
            ? Pair(
                dialler: Session(dialler: .sharedKey(keyId: "ops", key: goldenKey), name: "lmctl", limits: diallerLimits, nonces: CountingNonces(salt: 1), now: 1_000),
                acceptor: Session(acceptor: .sharedKey(try! Keyring(["ops": goldenKey]), ReplayCache()), name: "agent", limits: acceptorLimits, nonces: CountingNonces(salt: 2), now: 1_000))
            : Pair(
                dialler: Session(dialler: .peerCredentials, name: "lmctl", limits: diallerLimits, nonces: CountingNonces(salt: 1), now: 1_000),
                acceptor: Session(acceptor: .peerCredentials(rootCredentials, UnixPeerPolicy()), name: "agent", limits: acceptorLimits, nonces: CountingNonces(salt: 2), now: 1_000))
        p.run(p.dialler.start(now: p.now), from: .dialler)
        precondition(p.dialler.isEstablished && p.acceptor.isEstablished, "handshake failed")
        _ = p.take(.dialler)
        _ = p.take(.acceptor)
        return p
    }

    /// Delivers `actions`' writes to the other side, recursively.
    mutating func run(_ actions: [SessionAction], from side: Side) {
        for action in actions {
            if case .write(let bytes) = action {
                switch side {
                case .dialler: run(acceptor.receive(bytes, now: now), from: .acceptor)
                case .acceptor: run(dialler.receive(bytes, now: now), from: .dialler)
                }
            } else {
                switch side {
                case .dialler: diallerEvents.append(action)
                case .acceptor: acceptorEvents.append(action)
                }
            }
        }
    }

    mutating func take(_ side: Side) -> [SessionAction] {
        switch side {
        case .dialler: defer { diallerEvents = [] }; return diallerEvents
        case .acceptor: defer { acceptorEvents = [] }; return acceptorEvents
        }
    }

    /// Opens a call from the dialler and delivers it.
    mutating func call(_ method: String, _ payload: [UInt8] = [], deadlineMs: UInt32? = nil) -> UInt32 {
        let (id, actions) = dialler.openStream(method: method, payload: payload, deadlineMs: deadlineMs, now: now)
        run(actions, from: .dialler)
        return id
    }

    mutating func tick(_ side: Side) {
        switch side {
        case .dialler: run(dialler.tick(now: now), from: .dialler)
        case .acceptor: run(acceptor.tick(now: now), from: .acceptor)
        }
    }
}

/// All bytes these actions write, concatenated.
func bytesWritten(_ actions: [SessionAction]) -> [UInt8] {
    var out: [UInt8] = []
    for case .write(let bytes) in actions { out += bytes }
    return out
}
