// The network of a virtual host (`containers.Network`), checked once into a
// plan before anything is created: the outside steps run in the parent
// (a veth pair with its peer in the child's namespace, a bridge port, or an
// existing interface moved in), the inside steps in the clone child through
// lm_net_apply_inside. Everything over rtnetlink (lm_net.h); no ip/brctl.
import CLmctfyShims
import Glibc
import LmctfyProto
import LmctfySystem

/// A validated `containers.Network`.
public struct NetworkPlan: Sendable, Equatable {
    /// What the parent does before the child goes on.
    public enum Outside: Sendable, Equatable {
        /// Nothing: the namespace has only a loopback.
        case none
        /// A veth pair, `outside` on the host (a port of `bridge` if set),
        /// `inside` in the child's namespace.
        case veth(outside: String, inside: String, bridge: String?)
        /// Move this existing host interface into the child's namespace.
        case move(interface: String)
    }

    /// An address of the inside interface.
    public struct Address: Sendable, Equatable {
        /// The address as text (normalised: "198.18.0.2", "fd00::2").
        public var ip: String
        /// Prefix length (32 or 128 when the spec gives no netmask).
        public var prefixLength: Int
        /// AF_INET or AF_INET6.
        public var family: Int32

        public init(ip: String, prefixLength: Int, family: Int32) {
            self.ip = ip
            self.prefixLength = prefixLength
            self.family = family
        }
    }

    public var outside: Outside
    /// The interface configured inside (veth inside end or moved interface).
    public var insideInterface: String?
    public var address: Address?
    /// Default route via this gateway (same family as the address, inside its subnet).
    public var gateway: String?
    /// MTU for both veth ends / the moved interface; nil keeps the kernel's.
    public var mtu: UInt32?
    /// net.ipv4.ip_forward inside; nil leaves the namespace's default (0).
    public var ipForward: Bool?

    /// Only a loopback (an empty `Network`).
    public static let loopbackOnly = NetworkPlan()

    private init() {
        outside = .none
    }

    /// Checks `network` (INVALID_ARGUMENT naming the field for anything
    /// malformed or contradictory; UNIMPLEMENTED for an OVS bridge).
    public init(_ network: Network) throws(LmctfyError) {
        self = .loopbackOnly
        if let iface = network.interface, network.connection != nil {
            throw .invalidArgument("network: interface (\(iface)) and connection are exclusive")
        }
        if let iface = network.interface {
            try Self.checkName(iface, "network.interface")
            outside = .move(interface: iface)
            insideInterface = iface
        } else if let connection = network.connection {
            guard let pair = connection.vethPair else {
                throw .invalidArgument("network.connection.veth_pair is required")
            }
            guard let out = pair.outside, let inside = pair.inside else {
                throw .invalidArgument("network.connection.veth_pair needs both outside and inside")
            }
            try Self.checkName(out, "network.connection.veth_pair.outside")
            try Self.checkName(inside, "network.connection.veth_pair.inside")
            // Every new network namespace has its loopback: the veth's
            // create then failed with "File exists" (6), naming nothing
            // that exists on the host.
            if inside == "lo" {
                throw .invalidArgument("network.connection.veth_pair.inside \"lo\" is the virtual host's loopback, which it always has: name the veth's inside end otherwise (eth0)")
            }
            var bridgeName: String?
            if let bridge = connection.bridge {
                if bridge.type == .ovs {
                    throw .unimplemented("network.connection.bridge.type OVS is not supported (no Open vSwitch); use ETH (a Linux bridge)")
                }
                guard let name = bridge.name else { throw .invalidArgument("network.connection.bridge.name is required") }
                try Self.checkName(name, "network.connection.bridge.name")
                bridgeName = name
            }
            outside = .veth(outside: out, inside: inside, bridge: bridgeName)
            insideInterface = inside
        }
        guard let vip = network.virtualIp else { return }
        guard insideInterface != nil else {
            throw .invalidArgument("network.virtual_ip needs an interface or a connection to configure")
        }
        if let m = vip.mtu, m != 0 {
            guard (68...65535).contains(m) else {
                throw .invalidArgument("network.virtual_ip.mtu \(m) is outside 68..65535")
            }
            mtu = UInt32(m)
        }
        if let f = vip.ipForward { ipForward = f }
        guard let ipText = vip.ip, !ipText.isEmpty else {
            if vip.netmask != nil || vip.gateway != nil {
                throw .invalidArgument("network.virtual_ip: netmask and gateway need an ip")
            }
            return
        }
        guard let ip = IPAddress(ipText) else {
            throw .invalidArgument("network.virtual_ip.ip '\(ipText)' is not an IPv4 or IPv6 address")
        }
        let prefix = try Self.prefixLength(vip.netmask, for: ip)
        // Addresses no host can have (they were accepted: 0.0.0.0/0 gave
        // no address at all, a subnet's own or broadcast address a host
        // nothing could reach; the virtual-host probe).
        if ip.bytes.allSatisfy({ $0 == 0 }) {
            throw .invalidArgument("network.virtual_ip.ip \(ip.text) is the unspecified address, not a host's")
        }
        if ip.family == AF_INET && prefix <= 30 {
            if ip.masked(prefix) == ip.bytes {
                throw .invalidArgument("network.virtual_ip.ip \(ip.text) is the address of the subnet \(ip.text)/\(prefix) itself, not a host's")
            }
            if ip.hostBitsSet(prefix) {
                throw .invalidArgument("network.virtual_ip.ip \(ip.text) is the broadcast address of its /\(prefix) subnet, not a host's")
            }
        }
        if ip.family == AF_INET6, let m = mtu, m < 1280 {
            throw .invalidArgument("network.virtual_ip.mtu \(m) is below 1280, the IPv6 minimum")
        }
        address = Address(ip: ip.text, prefixLength: prefix, family: ip.family)
        if let gwText = vip.gateway, !gwText.isEmpty {
            guard let gw = IPAddress(gwText), gw.family == ip.family else {
                throw .invalidArgument("network.virtual_ip.gateway '\(gwText)' is not an address of the ip's family")
            }
            guard gw.bytes != ip.bytes else {
                throw .invalidArgument("network.virtual_ip.gateway \(gw.text) is the host's own address")
            }
            guard gw.masked(prefix) == ip.masked(prefix) else {
                throw .invalidArgument("network.virtual_ip.gateway \(gw.text) is outside \(ip.text)/\(prefix)")
            }
            gateway = gw.text
        }
    }

    /// A valid kernel interface name, or INVALID_ARGUMENT naming `field`.
    static func checkName(_ name: String, _ field: String) throws(LmctfyError) {
        guard Net.isValidName(name) else {
            throw .invalidArgument("\(field) '\(name)' is not a valid interface name (1..\(Net.maxNameLength) bytes, no '/', ':' or spaces)")
        }
    }

    /// The prefix length of `netmask`: absent means a host address (32/128);
    /// "24" or "/24"; or, for IPv4, a dotted mask with contiguous ones.
    static func prefixLength(_ netmask: String?, for ip: IPAddress) throws(LmctfyError) -> Int {
        let bits = ip.bytes.count * 8
        guard var text = netmask, !text.isEmpty else { return bits }
        if text.hasPrefix("/") { text.removeFirst() }
        if let n = Int(text) {
            guard (0...bits).contains(n) else {
                throw .invalidArgument("network.virtual_ip.netmask /\(n) is outside 0..\(bits)")
            }
            return n
        }
        guard ip.family == AF_INET, let mask = IPAddress(text), mask.family == AF_INET else {
            throw .invalidArgument("network.virtual_ip.netmask '\(netmask!)' is neither a prefix length nor an IPv4 mask")
        }
        let value = mask.bytes.reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
        let ones = (~value).leadingZeroBitCount
        guard value == (ones == 0 ? 0 : UInt32.max << (32 - ones)) else {
            throw .invalidArgument("network.virtual_ip.netmask \(mask.text) has non-contiguous ones")
        }
        return ones
    }

    /// What lm_net_apply_inside needs, valid during `body` (the strings are
    /// copied onto the heap here, before any fork, and freed after `body`).
    public func withInside<R>(_ body: (UnsafePointer<lm_net_inside>) throws -> R) rethrows -> R {
        let strings = [insideInterface, address?.ip, gateway].map { $0.map { strdup($0) } ?? nil }
        defer { for s in strings { free(s) } }
        var n = lm_net_inside()
        n.ifname = UnsafePointer(strings[0])
        n.ip = UnsafePointer(strings[1])
        n.prefixlen = UInt32(address?.prefixLength ?? 0)
        n.gateway = UnsafePointer(strings[2])
        n.mtu = mtu ?? 0
        n.ip_forward = ipForward.map { $0 ? 1 : 0 } ?? -1
        return try withUnsafePointer(to: &n) { try body($0) }
    }

    /// Names the failed step of lm_net_apply_inside for an error message.
    public func describeInsideStep(_ step: Int32) -> String {
        let iface = insideInterface ?? "?"
        switch UInt32(bitPattern: step) {
        case LM_NET_STEP_LOOPBACK.rawValue: return "bring lo up"
        case LM_NET_STEP_MTU.rawValue: return "set mtu \(mtu ?? 0) on \(iface)"
        case LM_NET_STEP_LINK_UP.rawValue: return "bring \(iface) up"
        case LM_NET_STEP_ADDRESS.rawValue: return "add \(address?.ip ?? "")/\(address?.prefixLength ?? 0) to \(iface)"
        case LM_NET_STEP_ROUTE.rawValue: return "add default route via \(gateway ?? "") dev \(iface)"
        case LM_NET_STEP_IP_FORWARD.rawValue: return "set net.ipv4.ip_forward"
        default: return "configure the network"
        }
    }

    /// Runs the outside steps for the child `pid` (whose network namespace
    /// already exists): creates the veth pair (peer in the child), makes the
    /// outside end a bridge port, sets it up; or moves the interface in. A
    /// failure part way deletes what it made and throws: ALREADY_EXISTS for
    /// a name in use, NOT_FOUND for a missing interface or bridge,
    /// INVALID_ARGUMENT for a bridge that is not a Linux bridge.
    public func applyOutside(childPid pid: pid_t) throws(LmctfyError) {
        switch outside {
        case .none:
            return
        case .move(let iface):
            do {
                try Net.moveLink(iface, toNetnsOf: pid)
            } catch {
                throw Self.mapped(error, "network: move interface \(iface) into the virtual host")
            }
        case .veth(let out, let inside, let bridge):
            do {
                try Net.createVethPair(outside: out, inside: inside, peerNetnsOf: pid, mtu: mtu ?? 0)
            } catch {
                throw Self.mapped(error, "network: create veth pair \(out)/\(inside)")
            }
            do throws(LmctfyError) {
                if let bridge {
                    do {
                        try Net.attach(out, toBridge: bridge)
                    } catch where error.errno == EINVAL {
                        throw LmctfyError.invalidArgument("network: \(bridge) is not a Linux bridge")
                    } catch {
                        throw Self.mapped(error, "network: attach \(out) to bridge \(bridge)")
                    }
                }
                do {
                    try Net.setUp(out)
                } catch {
                    throw Self.mapped(error, "network: bring \(out) up")
                }
            } catch {
                try? Net.deleteLink(out)
                throw error
            }
        }
    }

    static func mapped(_ error: SystemError, _ context: String) -> LmctfyError {
        switch error.errno {
        case EEXIST: return error.lmctfy(.alreadyExists, context)
        case ENODEV, ENOENT: return error.lmctfy(.notFound, context)
        case EPERM, EACCES: return error.lmctfy(.permissionDenied, context)
        case EINVAL, ERANGE: return error.lmctfy(.invalidArgument, context)
        default: return error.lmctfy(.internal, context)
        }
    }
}

/// An IPv4 or IPv6 address parsed with inet_pton.
struct IPAddress: Equatable {
    var family: Int32
    var bytes: [UInt8]

    init?(_ text: String) {
        var buf = [UInt8](repeating: 0, count: 16)
        if inet_pton(AF_INET, text, &buf) == 1 {
            family = AF_INET
            bytes = Array(buf[0..<4])
        } else if inet_pton(AF_INET6, text, &buf) == 1 {
            family = AF_INET6
            bytes = buf
        } else {
            return nil
        }
    }

    /// Normalised text (inet_ntop).
    var text: String {
        var out = [CChar](repeating: 0, count: 64)
        _ = bytes.withUnsafeBytes { inet_ntop(family, $0.baseAddress, &out, socklen_t(out.count)) }
        return String(decoding: out.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// The address with every bit after the first `prefix` cleared.
    func masked(_ prefix: Int) -> [UInt8] {
        bytes.enumerated().map { i, b in
            let keep = max(0, min(8, prefix - i * 8))
            return keep == 8 ? b : b & UInt8(truncatingIfNeeded: 0xff << (8 - keep))
        }
    }

    /// Whether every bit after the first `prefix` is set.
    func hostBitsSet(_ prefix: Int) -> Bool {
        bytes.enumerated().allSatisfy { i, b in
            let keep = max(0, min(8, prefix - i * 8))
            let hostMask = UInt8(truncatingIfNeeded: 0xff >> keep)
            return b & hostMask == hostMask
        }
    }
}
