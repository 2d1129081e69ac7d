// The handshake's authentication pieces that need no socket: the MAC over
// the transcript, key rings, the replay cache and the Unix peer policy.
// PROTOCOL.md section 3 is the contract.
import LmctfySystem
import Synchronization

/// The transcript MAC of PROTOCOL.md section 3.
public enum HandshakeMAC {
    /// Size of each handshake nonce, client's and server's, in bytes.
    public static let nonceBytes = 32
    /// The shortest shared key accepted, in bytes.
    public static let minimumKeyBytes = 16
    /// Distinct labels per direction, so a proof can never be reflected.
    public static let acceptorLabel = "lmctfy-v1 acceptor"
    /// The label of the dialler's proof (the acceptor's is `acceptorLabel`).
    public static let diallerLabel = "lmctfy-v1 dialler"

    /// HMAC-SHA256(key, label ‖ 0 ‖ u32be(version) ‖ u16be(len keyId) ‖ keyId ‖ Nc ‖ Ns).
    public static func proof(
        key: [UInt8], label: String, version: UInt32, keyId: String,
        clientNonce: [UInt8], serverNonce: [UInt8]
    ) -> [UInt8] {
        var data = Array(label.utf8)
        data.append(0)
        data += [UInt8(version >> 24), UInt8(version >> 16 & 0xff), UInt8(version >> 8 & 0xff), UInt8(version & 0xff)]
        let id = Array(keyId.utf8.prefix(Int(UInt16.max)))
        data += [UInt8(id.count >> 8), UInt8(id.count & 0xff)]
        data += id
        data += clientNonce
        data += serverNonce
        return Crypto.hmacSHA256(key: key, data: data)
    }
}

/// Shared keys by key id, for an acceptor on TCP.
public struct Keyring: Sendable {
    /// The shared keys by key id, each at least `HandshakeMAC.minimumKeyBytes` long.
    public private(set) var keys: [String: [UInt8]]

    /// Keys shorter than `HandshakeMAC.minimumKeyBytes` are refused: a short
    /// shared key can be guessed from one recorded handshake.
    public init(_ keys: [String: [UInt8]]) throws(LmctfyError) {
        for (id, key) in keys where key.count < HandshakeMAC.minimumKeyBytes {
            throw LmctfyError(.invalidArgument, "key \(id) has \(key.count) bytes; at least \(HandshakeMAC.minimumKeyBytes) are needed")
        }
        self.keys = keys
    }

    /// The key with this id; nil for an unknown id.
    public func key(_ id: String) -> [UInt8]? { keys[id] }
}

/// Client nonces seen recently, shared by every session of one listener.
/// A handshake that reuses a nonce is a replay and is rejected. The server's
/// fresh nonce already makes a replayed proof useless; this cache rejects the
/// replay before any work and makes it visible in the logs.
/// Thread-safe: sessions on any thread may share one cache.
public final class ReplayCache: Sendable {
    private struct State {
        var seen: Set<[UInt8]> = []
        var ring: [[UInt8]] = []
        var next = 0
    }
    private let state = Mutex(State())
    /// How many recent nonces are remembered; the oldest is forgotten first.
    public let capacity: Int

    /// Remembers the last `capacity` nonces (memory: about 80 bytes each).
    public init(capacity: Int = 65536) {
        precondition(capacity > 0, "a replay cache needs room for one nonce")
        self.capacity = capacity
    }

    /// Records `nonce`; false if it was already there (a replay).
    public func insert(_ nonce: [UInt8]) -> Bool {
        state.locked { s in
            if s.seen.contains(nonce) { return false }
            if s.ring.count < capacity {
                s.ring.append(nonce)
            } else {
                s.seen.remove(s.ring[s.next])
                s.ring[s.next] = nonce
                s.next = (s.next + 1) % capacity
            }
            s.seen.insert(nonce)
            return true
        }
    }
}

/// Who may connect over the Unix socket: root always, plus these.
public struct UnixPeerPolicy: Sendable, Equatable {
    /// Users allowed besides root.
    public var allowedUids: Set<UInt32>
    /// Groups allowed: the peer's primary group or any supplementary one.
    public var allowedGids: Set<UInt32>

    /// A policy allowing root and the given users and groups (by default root only).
    public init(allowedUids: Set<UInt32> = [], allowedGids: Set<UInt32> = []) {
        self.allowedUids = allowedUids
        self.allowedGids = allowedGids
    }

    /// Whether the peer may connect: it is root, an allowed user, or in an
    /// allowed group (primary or supplementary).
    public func allows(_ c: PeerCredentials) -> Bool {
        c.uid == 0 || allowedUids.contains(c.uid) || allowedGids.contains(c.gid)
            || c.groups.contains(where: allowedGids.contains)
    }
}

/// How a dialler proves itself.
public enum DiallerAuthentication: Sendable {
    /// Unix socket: the acceptor reads our credentials from the kernel.
    case peerCredentials
    /// TCP: HMAC-SHA256 challenge–response with a shared key.
    case sharedKey(keyId: String, key: [UInt8])
    /// TCP under TLS with a client certificate: the acceptor knows us from
    /// the certificate the TLS handshake verified, so the hello carries no
    /// key (PROTOCOL.md section 3.1).
    case certificate
}

/// How an acceptor checks the dialler.
public enum AcceptorAuthentication: Sendable {
    /// Unix socket: the peer's `SO_PEERCRED` credentials, checked against a policy.
    case peerCredentials(PeerCredentials, UnixPeerPolicy)
    /// TCP: shared keys, and the listener's replay cache.
    case sharedKey(Keyring, ReplayCache)
    /// TCP under TLS: the dialler's certificate, verified by the TLS
    /// handshake against the configured CA before the hello was read.
    case certificate(CertIdentity)
}
