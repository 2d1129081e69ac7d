// NetworkPlan: checking containers.Network before anything is created (no root).
import CLmctfyShims
import Glibc
import Lmctfy
import LmctfyProto
import LmctfySystem
import Testing

private func plan(_ text: String) throws -> NetworkPlan {
    try NetworkPlan(try Network(textFormat: text))
}

private func refusal(_ text: String) throws -> LmctfyError? {
    let network = try Network(textFormat: text)
    do {
        _ = try NetworkPlan(network)
        return nil
    } catch {
        return error
    }
}

@Suite struct NetworkPlanTests {
    @Test func emptyNetworkIsLoopbackOnly() throws {
        #expect(try plan("") == .loopbackOnly)
        #expect(NetworkPlan.loopbackOnly.outside == .none)
    }

    @Test func bridgedVethWithAddress() throws {
        let p = try plan("""
            connection { veth_pair { outside: "veth0o" inside: "eth0" } bridge { name: "br0" type: ETH } }
            virtual_ip { ip: "198.18.0.2" netmask: "255.255.255.0" gateway: "198.18.0.1" mtu: 1400 ip_forward: true }
            """)
        #expect(p.outside == .veth(outside: "veth0o", inside: "eth0", bridge: "br0"))
        #expect(p.insideInterface == "eth0")
        #expect(p.address == NetworkPlan.Address(ip: "198.18.0.2", prefixLength: 24, family: AF_INET))
        #expect(p.gateway == "198.18.0.1")
        #expect(p.mtu == 1400)
        #expect(p.ipForward == true)
    }

    @Test func netmaskForms() throws {
        let base = #"connection { veth_pair { outside: "o" inside: "i" } } virtual_ip { ip: "198.18.0.2" "#
        #expect(try plan(base + "}").address?.prefixLength == 32)
        #expect(try plan(base + #"netmask: "16" }"#).address?.prefixLength == 16)
        #expect(try plan(base + #"netmask: "/20" }"#).address?.prefixLength == 20)
        #expect(try plan(base + #"netmask: "255.255.255.252" }"#).address?.prefixLength == 30)
        #expect(try plan(base + #"netmask: "0.0.0.0" }"#).address?.prefixLength == 0)
        #expect(try plan(base + #"netmask: "255.255.255.255" }"#).address?.prefixLength == 32)
        #expect(try refusal(base + #"netmask: "255.0.255.0" }"#)?.code == .invalidArgument)
        #expect(try refusal(base + #"netmask: "33" }"#)?.code == .invalidArgument)
        #expect(try refusal(base + #"netmask: "lots" }"#)?.code == .invalidArgument)
        let v6 = try plan(#"connection { veth_pair { outside: "o" inside: "i" } } virtual_ip { ip: "FD00:0::2" netmask: "64" gateway: "fd00::1" }"#)
        #expect(v6.address == NetworkPlan.Address(ip: "fd00::2", prefixLength: 64, family: AF_INET6))
        #expect(v6.gateway == "fd00::1")
        #expect(try refusal(#"connection { veth_pair { outside: "o" inside: "i" } } virtual_ip { ip: "fd00::2" netmask: "255.255.0.0" }"#)?.code == .invalidArgument)
    }

    @Test func gatewayMustBeInTheSubnet() throws {
        let base = #"connection { veth_pair { outside: "o" inside: "i" } } virtual_ip { ip: "198.18.0.2" netmask: "24" "#
        #expect(try plan(base + #"gateway: "198.18.0.254" }"#).gateway == "198.18.0.254")
        let outside = try refusal(base + #"gateway: "198.18.1.1" }"#)
        #expect(outside?.code == .invalidArgument)
        #expect(outside?.message.contains("gateway 198.18.1.1 is outside 198.18.0.2/24") == true)
        #expect(try refusal(base + #"gateway: "198.18.0.2" }"#)?.code == .invalidArgument)
        #expect(try refusal(base + #"gateway: "fd00::1" }"#)?.code == .invalidArgument)
        #expect(try refusal(base + #"gateway: "nonsense" }"#)?.code == .invalidArgument)
        // A host address (/32) has no gateway in its subnet.
        #expect(try refusal(#"interface: "eth1" virtual_ip { ip: "198.18.0.2" gateway: "198.18.0.1" }"#)?.code == .invalidArgument)
    }

    @Test func interfaceAndConnectionAreExclusive() throws {
        let e = try refusal(#"interface: "eth1" connection { veth_pair { outside: "o" inside: "i" } }"#)
        #expect(e?.code == .invalidArgument)
        #expect(e?.message.contains("exclusive") == true)
        #expect(try plan(#"interface: "eth1""#).outside == .move(interface: "eth1"))
    }

    @Test func ovsIsUnimplementedNamingTheField() throws {
        let e = try refusal(#"connection { veth_pair { outside: "o" inside: "i" } bridge { name: "ovsbr" type: OVS } }"#)
        #expect(e?.code == .unimplemented)
        #expect(e?.message.contains("network.connection.bridge.type") == true)
    }

    @Test func namesAreChecked() throws {
        for bad in ["", "sixteen-chars-xx", "a/b", "a b", "a:1", ".", ".."] {
            let text = "connection { veth_pair { outside: \"\(bad)\" inside: \"i\" } }"
            #expect(try refusal(text)?.code == .invalidArgument, "outside '\(bad)'")
        }
        #expect(try refusal(#"interface: "bad/name""#)?.code == .invalidArgument)
        #expect(try refusal(#"connection { veth_pair { outside: "o" inside: "i" } bridge { name: "no good" } }"#)?.code == .invalidArgument)
        #expect(try refusal(#"connection { veth_pair { outside: "o" inside: "i" } bridge { type: ETH } }"#)?.code == .invalidArgument)
        #expect(try refusal(#"connection { veth_pair { outside: "o" } }"#)?.code == .invalidArgument)
        #expect(try refusal(#"connection { bridge { name: "br0" } }"#)?.code == .invalidArgument)
        #expect(try plan(#"connection { veth_pair { outside: "fifteen-chars-x" inside: "eth0" } }"#).insideInterface == "eth0")
    }

    @Test func virtualIpNeedsALinkAndSaneValues() throws {
        #expect(try refusal(#"virtual_ip { ip: "198.18.0.2" }"#)?.code == .invalidArgument)
        let base = #"interface: "eth1" virtual_ip { "#
        #expect(try refusal(base + #"ip: "300.1.1.1" }"#)?.code == .invalidArgument)
        #expect(try refusal(base + #"netmask: "24" }"#)?.code == .invalidArgument)
        #expect(try refusal(base + #"ip: "198.18.0.2" mtu: 67 }"#)?.code == .invalidArgument)
        #expect(try refusal(base + #"ip: "198.18.0.2" mtu: 65536 }"#)?.code == .invalidArgument)
        #expect(try refusal(base + #"ip: "198.18.0.2" mtu: -1 }"#)?.code == .invalidArgument)
        #expect(try refusal(base + #"ip: "fd00::2" mtu: 1000 }"#)?.code == .invalidArgument)
        // No host's address (the probe: accepted, and 0.0.0.0/0 gave none).
        #expect(try refusal(base + #"ip: "0.0.0.0" netmask: "0" }"#)?.code == .invalidArgument)
        #expect(try refusal(base + #"ip: "::" netmask: "64" }"#)?.code == .invalidArgument)
        #expect(try refusal(base + #"ip: "10.231.77.0" netmask: "24" }"#)?.code == .invalidArgument)
        #expect(try refusal(base + #"ip: "10.231.77.255" netmask: "255.255.255.0" }"#)?.code == .invalidArgument)
        #expect(try refusal(base + #"ip: "10.231.77.3" netmask: "30" }"#)?.code == .invalidArgument)
        #expect(try plan(base + #"ip: "10.231.77.0" netmask: "31" }"#).address?.prefixLength == 31, "a /31 has no broadcast")
        #expect(try plan(base + #"ip: "10.231.77.255" }"#).address?.prefixLength == 32)
        #expect(try plan(base + #"ip: "10.231.77.254" netmask: "24" }"#).address?.prefixLength == 24)
        #expect(try plan(base + #"ip: "198.18.0.2" mtu: 0 }"#).mtu == nil)
        #expect(try plan(base + #"mtu: 9000 ip_forward: false }"#).mtu == 9000)
        #expect(try plan(base + #"mtu: 9000 ip_forward: false }"#).ipForward == false)
    }

    /// The C side refuses bad arguments before opening a socket (no root needed).
    @Test func cLibraryRefusesBadArgumentsItself() {
        #expect(lm_net_link_up("a/b") == -EINVAL)
        #expect(lm_net_link_up("") == -EINVAL)
        #expect(lm_net_link_up("sixteen-chars-xx") == -EINVAL)
        #expect(lm_net_link_up("..") == -EINVAL)
        #expect(lm_net_veth_create("o", "i", 0, 0) == -EINVAL)
        #expect(lm_net_link_to_netns("eth0", -1) == -EINVAL)
        #expect(lm_net_link_set_mtu("eth0", 0) == -EINVAL)
        #expect(lm_net_addr_add("eth0", "300.1.1.1", 24) == -EINVAL)
        #expect(lm_net_addr_add("eth0", "198.18.0.1", 33) == -EINVAL)
        #expect(lm_net_addr_add("eth0", "fd00::1", 129) == -EINVAL)
        #expect(lm_net_route_add_default("eth0", "nonsense") == -EINVAL)
        #expect(Net.isValidName("eth0") && Net.isValidName("fifteen-chars-x"))
        #expect(!Net.isValidName("tab\there"))
        #expect(!Net.isValidName("a:b"))
    }

    @Test func insideArgumentsReachC() throws {
        let p = try plan(#"connection { veth_pair { outside: "o" inside: "eth0" } } virtual_ip { ip: "198.18.0.2" netmask: "24" gateway: "198.18.0.1" mtu: 1400 }"#)
        p.withInside { n in
            #expect(String(cString: n.pointee.ifname) == "eth0")
            #expect(String(cString: n.pointee.ip) == "198.18.0.2")
            #expect(n.pointee.prefixlen == 24)
            #expect(String(cString: n.pointee.gateway) == "198.18.0.1")
            #expect(n.pointee.mtu == 1400)
            #expect(n.pointee.ip_forward == -1)
        }
        NetworkPlan.loopbackOnly.withInside { n in
            #expect(n.pointee.ifname == nil)
            #expect(n.pointee.ip == nil)
        }
        #expect(p.describeInsideStep(5) == "add default route via 198.18.0.1 dev eth0")
    }
}
