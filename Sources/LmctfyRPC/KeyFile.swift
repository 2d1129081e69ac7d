// Shared-key files for TCP authentication: one "key_id base64-key" per line,
// '#' comments. The agent refuses a file other users can read.
import Glibc
import LmctfySystem

/// Shared-key files for TCP authentication: one "key_id base64-key" per
/// line, `#` comments, blank lines ignored.
public enum KeyFile {
    /// Reads and parses a key file; with `private`, refuses one that group or
    /// others can read (it holds secrets).
    public static func load(_ path: String, requirePrivate: Bool) throws(LmctfyError) -> [String: [UInt8]] {
        if requirePrivate {
            var st = stat()
            guard stat(path, &st) == 0 else {
                throw SystemError("stat", path, errno).lmctfy(.notFound, "Cannot read the key file")
            }
            if st.st_mode & 0o077 != 0 {
                throw .failedPrecondition("Key file \(path) is readable by others (mode \(String(st.st_mode & 0o777, radix: 8))); chmod 600 it")
            }
        }
        let text: String
        do { text = try Sys.readFile(path) } catch { throw error.lmctfy(.notFound, "Cannot read the key file") }
        return try parse(text, source: path)
    }

    /// Parses a key file's text (`source` names it in errors). INVALID_ARGUMENT,
    /// with file:line, for a malformed line or a key shorter than
    /// `HandshakeMAC.minimumKeyBytes`, and for a file with no key.
    public static func parse(_ text: String, source: String) throws(LmctfyError) -> [String: [UInt8]] {
        var keys: [String: [UInt8]] = [:]
        for (n, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first?.trimmingWhitespace ?? ""
            if line.isEmpty { continue }
            let parts = line.split(separator: " ", omittingEmptySubsequences: true)
            guard parts.count == 2, let key = base64Decode(String(parts[1])) else {
                throw .invalidArgument("\(source):\(n + 1): expected \"key_id base64-key\"")
            }
            guard key.count >= HandshakeMAC.minimumKeyBytes else {
                throw .invalidArgument("\(source):\(n + 1): key \(parts[0]) is shorter than \(HandshakeMAC.minimumKeyBytes) bytes")
            }
            keys[String(parts[0])] = key
        }
        guard !keys.isEmpty else { throw .invalidArgument("\(source) holds no key") }
        return keys
    }

    /// Standard base64 with padding; nil on anything else.
    public static func base64Decode(_ s: String) -> [UInt8]? {
        var table = [Int8](repeating: -1, count: 256)
        for (i, c) in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8.enumerated() {
            table[Int(c)] = Int8(i)
        }
        let bytes = Array(s.utf8)
        guard bytes.count % 4 == 0 else { return nil }
        var out: [UInt8] = []
        var i = 0
        while i < bytes.count {
            var v: UInt32 = 0
            var pad = 0
            for k in 0..<4 {
                let c = bytes[i + k]
                if c == UInt8(ascii: "=") && k >= 2 && i + 4 == bytes.count {
                    pad += 1
                    v <<= 6
                    continue
                }
                guard pad == 0, table[Int(c)] >= 0 else { return nil }
                v = (v << 6) | UInt32(table[Int(c)])
            }
            out.append(UInt8(v >> 16))
            if pad < 2 { out.append(UInt8((v >> 8) & 0xFF)) }
            if pad < 1 { out.append(UInt8(v & 0xFF)) }
            i += 4
        }
        return out
    }
}
