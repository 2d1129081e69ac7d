// Virtual host networking over rtnetlink (lm_net.h): one wrapper per
// lm_net_ call, throwing a SystemError that names the call and the link.
// Every call acts in the network namespace of the calling thread. The
// inside steps for a clone child are lm_net_apply_inside, called from C;
// the Swift forms here serve the parent and the tests.
import CLmctfyShims
import Glibc

/// One network link as the kernel reports it.
public struct NetLink: Sendable, Equatable {
    /// The interface index in its namespace.
    public var index: Int32
    /// The MTU in bytes.
    public var mtu: UInt32
    /// IFF_UP is set (administratively up).
    public var isUp: Bool
    /// The index of the bridge it is a port of, or nil.
    public var masterIndex: Int32?
    /// The link kind ("veth", "bridge"); empty for physical and loopback.
    public var kind: String
}

/// rtnetlink operations (`ip link`, `ip addr`, `ip route`, `brctl addif`
/// without the binaries).
public enum Net {
    /// Longest interface name the kernel accepts (IFNAMSIZ - 1).
    public static let maxNameLength = 15

    @inline(__always)
    private static func check(_ rc: Int32, _ call: String, _ what: String) throws(SystemError) {
        if rc < 0 { throw SystemError(call, what, -rc) }
    }

    /// Creates a veth pair: `outside` here, `inside` in the network
    /// namespace of `pid`; both with `mtu` unless it is 0. Both ends are down.
    public static func createVethPair(outside: String, inside: String, peerNetnsOf pid: pid_t, mtu: UInt32 = 0) throws(SystemError) {
        try check(lm_net_veth_create(outside, inside, pid, mtu), "rtnetlink(veth)", "\(outside)/\(inside) pid \(pid)")
    }

    /// Moves an existing link into the network namespace of `pid`.
    public static func moveLink(_ name: String, toNetnsOf pid: pid_t) throws(SystemError) {
        try check(lm_net_link_to_netns(name, pid), "rtnetlink(setns)", "\(name) to pid \(pid)")
    }

    /// Makes `name` a port of the Linux bridge `bridge` (EINVAL: not a bridge).
    public static func attach(_ name: String, toBridge bridge: String) throws(SystemError) {
        try check(lm_net_bridge_attach(name, bridge), "rtnetlink(master)", "\(name) to \(bridge)")
    }

    /// Creates a Linux bridge (down).
    public static func createBridge(_ name: String) throws(SystemError) {
        try check(lm_net_bridge_create(name), "rtnetlink(bridge)", name)
    }

    /// Sets the link up.
    public static func setUp(_ name: String) throws(SystemError) {
        try check(lm_net_link_up(name), "rtnetlink(up)", name)
    }

    /// Sets the link's MTU.
    public static func setMTU(_ name: String, _ mtu: UInt32) throws(SystemError) {
        try check(lm_net_link_set_mtu(name, mtu), "rtnetlink(mtu)", "\(name) \(mtu)")
    }

    /// Deletes the link (a veth's peer goes with it).
    public static func deleteLink(_ name: String) throws(SystemError) {
        try check(lm_net_link_delete(name), "rtnetlink(dellink)", name)
    }

    /// The link called `name`, or nil if there is none (ENODEV).
    public static func link(_ name: String) throws(SystemError) -> NetLink? {
        var info = lm_net_link_info()
        let rc = lm_net_link_get(name, &info)
        if rc == -ENODEV { return nil }
        try check(rc, "rtnetlink(getlink)", name)
        let kind = withUnsafeBytes(of: info.kind) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
        return NetLink(index: info.ifindex, mtu: info.mtu, isUp: info.flags & 0x1 != 0 /* IFF_UP */,
                       masterIndex: info.master_ifindex == 0 ? nil : info.master_ifindex, kind: kind)
    }

    /// Brings the loopback interface up.
    public static func loopbackUp() throws(SystemError) {
        try check(lm_net_loopback_up(), "rtnetlink(up)", "lo")
    }

    /// Adds `ip`/`prefixLength` (IPv4 or IPv6) to the link.
    public static func addAddress(_ name: String, _ ip: String, prefixLength: Int) throws(SystemError) {
        try check(lm_net_addr_add(name, ip, UInt32(clamping: prefixLength)), "rtnetlink(newaddr)", "\(ip)/\(prefixLength) on \(name)")
    }

    /// Adds a default route via `gateway` out of the link.
    public static func addDefaultRoute(_ name: String, via gateway: String) throws(SystemError) {
        try check(lm_net_route_add_default(name, gateway), "rtnetlink(newroute)", "default via \(gateway) dev \(name)")
    }

    /// Sets net.ipv4.ip_forward of the calling task's network namespace.
    public static func setIPForward(_ on: Bool) throws(SystemError) {
        try check(lm_net_set_ip_forward(on ? 1 : 0), "write", "/proc/sys/net/ipv4/ip_forward")
    }

    /// Moves the calling thread (only) into a new, empty network namespace.
    /// For tests and tools that run their outside half on a thread of their own.
    public static func enterNewNamespace() throws(SystemError) {
        try check(lm_net_unshare_thread(), "unshare", "CLONE_NEWNET")
    }

    /// A valid interface name: 1...15 bytes, no '/', ':', white space or
    /// control characters, and not "." or "..".
    public static func isValidName(_ name: String) -> Bool {
        let bytes = Array(name.utf8)
        guard !bytes.isEmpty, bytes.count <= maxNameLength, name != ".", name != ".." else { return false }
        return bytes.allSatisfy { $0 > 0x20 && $0 != 0x7f && $0 != UInt8(ascii: "/") && $0 != UInt8(ascii: ":") }
    }
}
