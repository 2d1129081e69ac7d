// Numeric IPv4/IPv6 socket addresses. Names are not resolved here: a DNS
// lookup blocks, and the loop thread must not (resolve with `offload`).
import CLibUV
import Glibc

/// An IP address and port, as given to bind/connect or read back from a
/// socket.
public struct SocketAddress: Sendable, Hashable, CustomStringConvertible {
    /// IPv4 or IPv6.
    public enum Family: Sendable, Hashable { case ipv4, ipv6 }

    /// Whether `host` is an IPv4 or an IPv6 address.
    public let family: Family
    /// The numeric address, e.g. "127.0.0.1" or "::1".
    public let host: String
    /// The port, in host byte order (0: any, when binding).
    public let port: UInt16

    /// Parses a numeric address; throws EINVAL for anything else (names too).
    public init(host: String, port: UInt16) throws(LoopError) {
        var storage = sockaddr_storage()
        if Self.fill(&storage, host: host, port: port, ipv6: false) == 0 {
            family = .ipv4
        } else if Self.fill(&storage, host: host, port: port, ipv6: true) == 0 {
            family = .ipv6
        } else {
            throw LoopError("uv_ip_addr", "\(host): not a numeric IPv4 or IPv6 address", UV_EINVAL.rawValue)
        }
        self.host = host
        self.port = port
    }

    /// The addresses of `host` (a name, or already numeric) as numeric
    /// text, in getaddrinfo's order, each once. Blocks on DNS: call it off
    /// the loop thread (`offload`).
    public static func resolve(_ host: String) -> Result<[String], LoopError> {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_family = AF_UNSPEC
        hints.ai_flags = AI_ADDRCONFIG
        var list: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, nil, &hints, &list)
        guard rc == 0, let first = list else {
            return .failure(LoopError("getaddrinfo", "\(host): \(String(cString: gai_strerror(rc)))", UV_EAI_NONAME.rawValue))
        }
        defer { freeaddrinfo(first) }
        var out: [String] = []
        var next: UnsafeMutablePointer<addrinfo>? = first
        while let ai = next {
            next = ai.pointee.ai_next
            var name = [CChar](repeating: 0, count: Int(NI_MAXHOST))
            guard getnameinfo(ai.pointee.ai_addr, ai.pointee.ai_addrlen, &name, socklen_t(name.count), nil, 0, NI_NUMERICHOST) == 0 else { continue }
            let text = String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            if !out.contains(text) { out.append(text) }
        }
        guard !out.isEmpty else { return .failure(LoopError("getnameinfo", host, UV_EAI_FAIL.rawValue)) }
        return .success(out)
    }

    /// Reads back what the kernel filled in (getsockname/getpeername).
    init?(_ storage: sockaddr_storage) {
        var s = storage
        var name = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
        switch Int32(s.ss_family) {
        case AF_INET:
            let (rc, port) = withUnsafePointer(to: &s) {
                $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) {
                    (uv_ip4_name($0, &name, name.count), UInt16(bigEndian: $0.pointee.sin_port))
                }
            }
            guard rc == 0 else { return nil }
            family = .ipv4
            self.port = port
        case AF_INET6:
            let (rc, port) = withUnsafePointer(to: &s) {
                $0.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) {
                    (uv_ip6_name($0, &name, name.count), UInt16(bigEndian: $0.pointee.sin6_port))
                }
            }
            guard rc == 0 else { return nil }
            family = .ipv6
            self.port = port
        default:
            return nil
        }
        host = String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    public var description: String {
        family == .ipv6 ? "[\(host)]:\(port)" : "\(host):\(port)"
    }

    /// Calls `body` with the address as a sockaddr for libuv.
    func withSockaddr<R>(_ body: (UnsafePointer<sockaddr>) -> R) -> R {
        var storage = sockaddr_storage()
        let rc = Self.fill(&storage, host: host, port: port, ipv6: family == .ipv6)
        precondition(rc == 0, "\(host) parsed before but not now")
        return withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1, body)
        }
    }

    private static func fill(_ storage: inout sockaddr_storage, host: String, port: UInt16, ipv6: Bool) -> Int32 {
        withUnsafeMutablePointer(to: &storage) { p in
            ipv6
                ? p.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { uv_ip6_addr(host, Int32(port), $0) }
                : p.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { uv_ip4_addr(host, Int32(port), $0) }
        }
    }

    /// getsockname/getpeername of a TCP handle.
    static func of(_ tcp: UnsafePointer<uv_tcp_t>, peer: Bool) -> SocketAddress? {
        var storage = sockaddr_storage()
        var len = Int32(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                peer ? uv_tcp_getpeername(tcp, $0, &len) : uv_tcp_getsockname(tcp, $0, &len)
            }
        }
        return rc == 0 ? SocketAddress(storage) : nil
    }
}
