// The handshake's cryptography, through Debian's libcrypto (DESIGN.md:
// swift-crypto would rebuild BoringSSL in every CI run). Four primitives
// only: HMAC-SHA256, SHA-256, a constant-time comparison, and the CSPRNG
// (getrandom(2), through LmctfySystem).
import CLmctfyOpenSSL
import COpenSSL
import LmctfySystem

/// The handshake's cryptography through OpenSSL's libcrypto: HMAC-SHA256,
/// SHA-256 and constant-time comparison; the CSPRNG is the kernel's.
public enum Crypto {
    /// Loads OpenSSL now. CLmctfyOpenSSL loads it at the first call of any
    /// OpenSSL function and aborts the program when it cannot (a machine
    /// without libssl3): the daemons call this at start, and a TCP or TLS
    /// client before it dials, to fail with FAILED_PRECONDITION and the
    /// reason instead.
    public static func loadOpenSSL() throws(LmctfyError) {
        var buf = [CChar](repeating: 0, count: 512)
        guard lm_openssl_load(&buf, buf.count) == 0 else {
            throw .failedPrecondition(String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }
    }

    /// HMAC-SHA256 of `data` under `key` (32 bytes).
    public static func hmacSHA256(key: [UInt8], data: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
        var length: UInt32 = 0
        let ok = key.withUnsafeBytes { k in
            data.withUnsafeBufferPointer { d in
                out.withUnsafeMutableBufferPointer { o in
                    // HMAC() wants a non-null data pointer even for 0 bytes.
                    var empty: UInt8 = 0
                    return withUnsafePointer(to: &empty) { e in
                        HMAC(EVP_sha256(), k.baseAddress, Int32(k.count),
                             d.baseAddress ?? e, d.count, o.baseAddress, &length)
                    }
                }
            }
        }
        // Only fails on allocation failure inside libcrypto: nothing to recover.
        precondition(ok != nil && length == 32, "HMAC-SHA256 failed in libcrypto")
        return Array(out[0..<32])
    }

    /// SHA-256's implementation, fetched once: EVP_sha256() makes every
    /// digest look its provider up again (OpenSSL 3), and the agent hashes
    /// each snapshot record it writes. Immutable once fetched; shared by
    /// every thread, as OpenSSL allows.
    private nonisolated(unsafe) static let sha256Method: OpaquePointer? = EVP_MD_fetch(nil, "SHA256", nil)

    /// SHA-256 of `data` (32 bytes): the agent's request journal keeps it to
    /// tell a retried request from a different one under the same id.
    public static func sha256(_ data: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 32)
        var length: UInt32 = 0
        let ok = data.withUnsafeBufferPointer { d in
            out.withUnsafeMutableBufferPointer { o in
                var empty: UInt8 = 0
                return withUnsafePointer(to: &empty) { e in
                    EVP_Digest(d.baseAddress ?? e, d.count, o.baseAddress, &length, sha256Method ?? EVP_sha256(), nil)
                }
            }
        }
        precondition(ok == 1 && length == 32, "SHA-256 failed in libcrypto")
        return out
    }

    /// Equal lengths and equal bytes, in time independent of where they
    /// differ, so a peer cannot learn a valid proof byte by byte.
    public static func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        if a.isEmpty { return true }
        return a.withUnsafeBytes { x in
            b.withUnsafeBytes { y in CRYPTO_memcmp(x.baseAddress, y.baseAddress, x.count) == 0 }
        }
    }

    /// `count` bytes from the kernel's CSPRNG (getrandom(2)). Not OpenSSL's
    /// RAND_bytes: its first call loads openssl.cnf and seeds a DRBG, which
    /// was most of what a request id cost a short-lived `lmctl`.
    public static func randomBytes(_ count: Int) -> [UInt8] {
        do throws(SystemError) {
            return try Sys.randomBytes(count)
        } catch {
            // A nonce we cannot make securely must never be replaced by a weak one.
            preconditionFailure("getrandom failed: no secure randomness (\(error))")
        }
    }
}

/// Where a session gets its 32-byte handshake nonces. Injected so tests are
/// deterministic; production uses `SystemNonceSource`.
public protocol NonceSource: Sendable {
    /// A fresh `HandshakeMAC.nonceBytes`-byte nonce; unpredictable in production.
    func nonce() -> [UInt8]
}

/// Nonces from the kernel's CSPRNG.
public struct SystemNonceSource: NonceSource {
    /// The system CSPRNG source (stateless).
    public init() {}
    /// 32 bytes from the kernel's CSPRNG.
    public func nonce() -> [UInt8] { Crypto.randomBytes(HandshakeMAC.nonceBytes) }
}
