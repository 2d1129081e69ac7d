// lm_net over real rtnetlink, with root. Every link and address lives in
// network namespaces the test makes: the "host" side is a thread of ours
// that unshared its own namespace (so the machine's namespace is never
// touched, and everything left in it dies with the thread), the "virtual
// host" side is lmctfy-test-helper in `netns` mode, which unshares another
// and runs lm_net_apply_inside and socket commands on request.
//
// Not called *IntegrationTests on purpose: tools/test-v2 runs those in a
// qemu guest whose initramfs has no veth or bridge modules, and nothing
// here depends on the cgroup version.
import Glibc
import Lmctfy
import LmctfyProto
import LmctfySystem
import LmctfyTestSupport
import Testing

private let rootReason: String? = geteuid() == 0 ? nil : "netlink tests need root (CAP_NET_ADMIN; euid is \(geteuid()))"

/// A failed expectation inside the namespace thread, reported by the test.
private struct Mismatch: Error, CustomStringConvertible {
    var description: String
}

private func expectEqual<T: Equatable>(_ got: T, _ want: T, _ what: String) throws {
    if got != want { throw Mismatch(description: "\(what): got \(got), want \(want)") }
}

private final class ResultBox: @unchecked Sendable {
    var error: (any Error)?
}

/// Runs `body` on a new thread inside a new network namespace; the
/// namespace (and every link the body left in it) goes away with the thread.
private func inNewNetworkNamespace(_ body: @escaping @Sendable () throws -> Void) throws {
    let box = ResultBox()
    let t = Threads.start {
        do {
            try Net.enterNewNamespace()
            try body()
        } catch {
            box.error = error
        }
    }
    pthread_join(t, nil)
    if let e = box.error { throw e }
}

/// lmctfy-test-helper netns, driven line by line over pipes.
private final class NetnsPeer {
    let pid: pid_t
    private let toPeer: Int32
    private let fromPeer: Int32
    private var pending: [UInt8] = []

    init() throws {
        (pid, toPeer, fromPeer) = try TestProcess.spawnPiped([testHelperPath, "netns"])
        let ready = try readLine()
        try expectEqual(ready, "ready \(pid)", "helper start")
    }

    deinit {
        close(toPeer)
        close(fromPeer)
        TestProcess.end(pid)
    }

    func send(_ line: String) throws {
        let bytes = Array((line + "\n").utf8)
        let n = bytes.withUnsafeBytes { write(toPeer, $0.baseAddress, $0.count) }
        if n != bytes.count { throw SystemError("write", "helper stdin", errno) }
    }

    /// One answer line, waiting at most 10 s.
    func readLine() throws -> String {
        while true {
            if let nl = pending.firstIndex(of: 10) {
                let line = String(decoding: pending[..<nl], as: UTF8.self)
                pending.removeSubrange(...nl)
                return line
            }
            var p = pollfd(fd: fromPeer, events: Int16(POLLIN), revents: 0)
            let r = poll(&p, 1, 10_000)
            if r == 0 { throw Mismatch(description: "the helper did not answer within 10 s") }
            if r < 0 { if errno == EINTR { continue }; throw SystemError("poll", "helper stdout", errno) }
            var buf = [UInt8](repeating: 0, count: 512)
            let n = buf.withUnsafeMutableBytes { read(fromPeer, $0.baseAddress, $0.count) }
            if n <= 0 { throw Mismatch(description: "the helper went away") }
            pending += buf[0..<n]
        }
    }

    func ask(_ line: String) throws -> String {
        try send(line)
        return try readLine()
    }
}

/// Minimal TCP for the host side of the tests (IPv4 and IPv6 literals).
private enum TCP {
    static func withAddress<R>(_ ip: String, _ port: UInt16, _ body: (UnsafePointer<sockaddr>, socklen_t, Int32) throws -> R) throws -> R {
        var v4 = sockaddr_in()
        if inet_pton(AF_INET, ip, &v4.sin_addr) == 1 {
            v4.sin_family = sa_family_t(AF_INET)
            v4.sin_port = port.bigEndian
            return try withUnsafePointer(to: &v4) {
                try $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { try body($0, socklen_t(MemoryLayout<sockaddr_in>.size), AF_INET) }
            }
        }
        var v6 = sockaddr_in6()
        guard inet_pton(AF_INET6, ip, &v6.sin6_addr) == 1 else { throw Mismatch(description: "bad address \(ip)") }
        v6.sin6_family = sa_family_t(AF_INET6)
        v6.sin6_port = port.bigEndian
        return try withUnsafePointer(to: &v6) {
            try $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { try body($0, socklen_t(MemoryLayout<sockaddr_in6>.size), AF_INET6) }
        }
    }

    static func listen(_ ip: String, _ port: UInt16) throws -> Int32 {
        try withAddress(ip, port) { sa, len, family in
            let fd = socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0, bind(fd, sa, len) == 0, Glibc.listen(fd, 4) == 0 else {
                let e = errno
                if fd >= 0 { close(fd) }
                throw SystemError("bind/listen", "\(ip):\(port)", e)
            }
            return fd
        }
    }

    static func connect(_ ip: String, _ port: UInt16) throws -> Int32 {
        try withAddress(ip, port) { sa, len, family in
            let fd = socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0, Glibc.connect(fd, sa, len) == 0 else {
                let e = errno
                if fd >= 0 { close(fd) }
                throw SystemError("connect", "\(ip):\(port)", e)
            }
            return fd
        }
    }

    /// Accepts one client (waiting at most 10 s); its fd and address.
    static func accept(_ listener: Int32) throws -> (Int32, String) {
        var p = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
        guard poll(&p, 1, 10_000) == 1 else { throw Mismatch(description: "no client within 10 s") }
        var ss = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let fd = withUnsafeMutablePointer(to: &ss) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.accept(listener, $0, &len) }
        }
        guard fd >= 0 else { throw SystemError("accept", "listener", errno) }
        var text = [CChar](repeating: 0, count: 64)
        let family = ss.ss_family
        withUnsafePointer(to: &ss) { p in
            if family == sa_family_t(AF_INET) {
                p.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { v4 in
                    var a = v4.pointee.sin_addr
                    _ = inet_ntop(AF_INET, &a, &text, 64)
                }
            } else {
                p.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { v6 in
                    var a = v6.pointee.sin6_addr
                    _ = inet_ntop(AF_INET6, &a, &text, 64)
                }
            }
        }
        return (fd, String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
    }

    static func send(_ fd: Int32, _ text: String) throws {
        let bytes = Array(text.utf8)
        guard bytes.withUnsafeBytes({ write(fd, $0.baseAddress, $0.count) }) == bytes.count else {
            throw SystemError("write", "socket", errno)
        }
    }

    /// Reads until end of stream or a newline (at most 10 s).
    static func readLine(_ fd: Int32) throws -> String {
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 256)
        while !out.contains(10) {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, 10_000) == 1 else { throw Mismatch(description: "no data within 10 s") }
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            out += buf[0..<n]
        }
        return String(decoding: out.prefix { $0 != 10 }, as: UTF8.self)
    }
}

private func plan(_ text: String) throws -> NetworkPlan {
    try NetworkPlan(try Network(textFormat: text))
}

@Suite(.serialized, .enabled(if: rootReason == nil, "\(rootReason ?? "")"))
struct NetlinkRootTests {
    /// The whole path of a bridged virtual host: veth pair with the peer in
    /// the child, bridge port, mtu, up; inside address, route, mtu and
    /// ip_forward; TCP both ways (the inside dials an address reachable only
    /// through its default route); delete leaves no link on either side.
    @Test func bridgedVethCarriesTCPBothWaysAndDeletesCleanly() throws {
        try inNewNetworkNamespace {
            let peer = try NetnsPeer()
            try Net.loopbackUp()
            try Net.createBridge("lmbr0")
            try Net.addAddress("lmbr0", "198.18.7.1", prefixLength: 24)
            try Net.addAddress("lmbr0", "198.19.7.1", prefixLength: 32)  // outside the inside's subnet
            try Net.setUp("lmbr0")
            let p = try plan("""
                connection { veth_pair { outside: "lmvo0" inside: "lmvi0" } bridge { name: "lmbr0" type: ETH } }
                virtual_ip { ip: "198.18.7.2" netmask: "255.255.255.0" gateway: "198.18.7.1" mtu: 1400 ip_forward: true }
                """)
            try p.applyOutside(childPid: peer.pid)
            guard let out = try Net.link("lmvo0"), let br = try Net.link("lmbr0") else {
                throw Mismatch(description: "lmvo0 or lmbr0 missing after applyOutside")
            }
            try expectEqual(out.mtu, 1400, "outside mtu")
            try expectEqual(out.isUp, true, "outside up")
            try expectEqual(out.kind, "veth", "outside kind")
            try expectEqual(out.masterIndex, br.index, "outside's bridge")
            try expectEqual(br.kind, "bridge", "bridge kind")
            try expectEqual(try Net.link("lmvi0"), nil, "inside end is not on the host side")

            try expectEqual(try peer.ask("apply lmvi0 198.18.7.2 24 198.18.7.1 1400 1"), "ok", "apply inside")
            try expectEqual(try peer.ask("link lmvi0"), "ok mtu=1400 up=1 kind=veth", "inside link")
            try expectEqual(try peer.ask("link lo"), "ok mtu=65536 up=1 kind=", "inside loopback")
            try expectEqual(try peer.ask("read /proc/sys/net/ipv4/ip_forward"), "ok 1", "inside ip_forward")

            // Inside → outside through the default route.
            let listener = try TCP.listen("198.19.7.1", 7100)
            defer { close(listener) }
            try expectEqual(try peer.ask("dial 198.19.7.1 7100 hello-inside"), "ok", "dial out")
            let (client, from) = try TCP.accept(listener)
            defer { close(client) }
            try expectEqual(from, "198.18.7.2", "client address")
            try expectEqual(try TCP.readLine(client), "hello-inside", "data from inside")

            // Outside → inside across the bridge.
            try expectEqual(try peer.ask("listen 7101"), "ok", "listen inside")
            try peer.send("accept")
            let conn = try TCP.connect("198.18.7.2", 7101)
            defer { close(conn) }
            try TCP.send(conn, "ping\n")
            try expectEqual(try TCP.readLine(conn), "echo:ping", "echo from inside")
            try expectEqual(try peer.readLine(), "ok ::ffff:198.18.7.1", "inside saw the bridge's address")

            // Delete: both ends go.
            try Net.deleteLink("lmvo0")
            try expectEqual(try Net.link("lmvo0"), nil, "outside end after delete")
            try expectEqual(try peer.ask("link lmvi0"), "err 19", "inside end after delete (ENODEV)")
            try Net.deleteLink("lmbr0")
            try expectEqual(try Net.link("lmbr0"), nil, "bridge after delete")
        }
    }

    /// IPv6 inside: address without DAD, default route, TCP to the gateway's side.
    @Test func ipv6AddressAndRouteWork() throws {
        try inNewNetworkNamespace {
            let peer = try NetnsPeer()
            try Net.loopbackUp()
            let p = try plan("""
                connection { veth_pair { outside: "lmv6o" inside: "lmv6i" } }
                virtual_ip { ip: "fd42:7::2" netmask: "64" gateway: "fd42:7::1" }
                """)
            try p.applyOutside(childPid: peer.pid)
            try Net.addAddress("lmv6o", "fd42:7::1", prefixLength: 64)
            try Net.addAddress("lmv6o", "fd42:8::1", prefixLength: 128)  // reachable via the route only
            try expectEqual(try peer.ask("apply lmv6i fd42:7::2 64 fd42:7::1 0 -"), "ok", "apply inside v6")
            let listener = try TCP.listen("fd42:8::1", 7102)
            defer { close(listener) }
            try expectEqual(try peer.ask("dial fd42:8::1 7102 v6-hello"), "ok", "dial out v6")
            let (client, from) = try TCP.accept(listener)
            defer { close(client) }
            try expectEqual(from, "fd42:7::2", "v6 client address")
            try expectEqual(try TCP.readLine(client), "v6-hello", "v6 data")
            try Net.deleteLink("lmv6o")
            try expectEqual(try peer.ask("link lmv6i"), "err 19", "v6 inside end after delete")
        }
    }

    /// `interface`: an existing host link moves into the child.
    @Test func existingInterfaceMovesIntoTheChild() throws {
        try inNewNetworkNamespace {
            let peer = try NetnsPeer()
            // A veth pair whose peer is already inside; its outside end is
            // the "existing interface" to move.
            try Net.createVethPair(outside: "lmmv0", inside: "lmmv1", peerNetnsOf: peer.pid)
            let p = try plan(#"interface: "lmmv0" virtual_ip { ip: "198.18.9.1" netmask: "/30" mtu: 1300 }"#)
            try p.applyOutside(childPid: peer.pid)
            try expectEqual(try Net.link("lmmv0"), nil, "moved interface left the host side")
            try expectEqual(try peer.ask("link lmmv0"), "ok mtu=1500 up=0 kind=veth", "moved interface inside")
            try expectEqual(try peer.ask("apply lmmv0 198.18.9.1 30 - 1300 0"), "ok", "apply on the moved interface")
            try expectEqual(try peer.ask("link lmmv0"), "ok mtu=1300 up=1 kind=veth", "configured inside")
            try expectEqual(try peer.ask("read /proc/sys/net/ipv4/ip_forward"), "ok 0", "ip_forward 0")
        }
    }

    /// Failures part way leave nothing behind and map to the right codes.
    @Test func failuresLeaveNoLinkBehind() throws {
        try inNewNetworkNamespace {
            let peer = try NetnsPeer()
            func code(_ text: String) throws -> StatusCode? {
                let p = try plan(text)
                do {
                    try p.applyOutside(childPid: peer.pid)
                    return nil
                } catch {
                    return error.code
                }
            }
            // Missing bridge: NOT_FOUND, and the veth made before is deleted.
            try expectEqual(try code(#"connection { veth_pair { outside: "lmfo0" inside: "lmfi0" } bridge { name: "lmnobr" } }"#),
                            .notFound, "missing bridge")
            try expectEqual(try Net.link("lmfo0"), nil, "veth after a missing bridge")
            try expectEqual(try peer.ask("link lmfi0"), "err 19", "peer after a missing bridge")
            // A "bridge" that is a veth: INVALID_ARGUMENT, nothing left.
            try Net.createVethPair(outside: "lmnotbr", inside: "lmnotbr1", peerNetnsOf: peer.pid)
            try expectEqual(try code(#"connection { veth_pair { outside: "lmfo0" inside: "lmfi0" } bridge { name: "lmnotbr" } }"#),
                            .invalidArgument, "not a bridge")
            try expectEqual(try Net.link("lmfo0"), nil, "veth after a non-bridge")
            // A name in use: ALREADY_EXISTS, the existing link untouched.
            try expectEqual(try code(#"connection { veth_pair { outside: "lmnotbr" inside: "lmfi0" } }"#),
                            .alreadyExists, "outside name in use")
            try expectEqual(try Net.link("lmnotbr")?.kind, "veth", "existing link kept")
            // Moving a link that does not exist: NOT_FOUND.
            try expectEqual(try code(#"interface: "lmnothere""#), .notFound, "missing interface")
            // The inside steps name the failing step: a gateway the kernel
            // cannot reach (the link has no address in its subnet).
            try expectEqual(try peer.ask("apply lmnotbr1 - 0 198.18.10.1 0 -"), "err 101 5", "route without an address (ENETUNREACH, step route)")
            try Net.deleteLink("lmnotbr")
        }
    }
}
