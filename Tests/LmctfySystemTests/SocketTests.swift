// The Unix-address builder, the SO_PEERCRED reader and the SIGPIPE guard.
import Glibc
import LmctfySystem
import Testing

@Suite struct UnixSocketAddressTests {
    @Test func refusesATooLongPathNamingCallPathAndLimit() {
        let path = "/tmp/" + String(repeating: "x", count: 120)
        #expect(UnixSocketAddress.maxPathBytes == 107)
        do {
            _ = try UnixSocketAddress(path, for: "bind")
            Issue.record("a \(path.utf8.count)-byte path was accepted")
        } catch {
            #expect(error.errno == ENAMETOOLONG)
            #expect(error.call == "bind")
            #expect(error.description == "bind(\(path): socket paths are 1 to 107 bytes): File name too long")
        }
    }

    @Test func refusesAnEmptyPath() {
        #expect(throws: SystemError("connect", ": socket paths are 1 to 107 bytes", EINVAL)) {
            try UnixSocketAddress("", for: "connect")
        }
    }

    @Test func theLongestPathFitsWithItsNUL() throws {
        let path = "/" + String(repeating: "y", count: UnixSocketAddress.maxPathBytes - 1)
        let address = try UnixSocketAddress(path, for: "bind")
        #expect(address.path == path)
        address.withSockaddr { sa, length in
            #expect(Int(length) == MemoryLayout<sa_family_t>.size + path.utf8.count + 1)
            #expect(Int32(sa.pointee.sa_family) == AF_UNIX)
            sa.withMemoryRebound(to: sockaddr_un.self, capacity: 1) { un in
                var p = un.pointee
                let stored = withUnsafeBytes(of: &p.sun_path) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
                #expect(stored == path)
            }
        }
    }

    @Test func bindsAndConnectsAtThePath() throws {
        var template = Array("/tmp/lmctfy-sys-XXXXXX".utf8CString)
        try #require(mkdtemp(&template) != nil)
        let dir = template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        let path = dir + "/s.sock"
        defer { unlink(path); rmdir(dir) }
        #expect(try Sys.unixSocketAccepts(path) == false, "nothing there yet")
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        try #require(fd >= 0)
        defer { close(fd) }
        let address = try UnixSocketAddress(path, for: "bind")
        #expect(address.withSockaddr { bind(fd, $0, $1) } == 0)
        #expect(listen(fd, 4) == 0)
        #expect(try Sys.unixSocketAccepts(path) == true)
    }
}

@Suite struct PeerCredentialsTests {
    @Test func ofASocketPairIsThisProcess() throws {
        var fds: [Int32] = [0, 0]
        try #require(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
        defer { close(fds[0]); close(fds[1]) }
        let c = try Sys.peerCredentials(fds[1])
        #expect(c == PeerCredentials(pid: getpid(), uid: getuid(), gid: getgid()))
    }

    @Test func ofANonSocketIsAnErrorNamingTheCall() throws {
        let (r, w) = try Sys.pipe()
        defer { close(r); close(w) }
        #expect(throws: SystemError("getsockopt(SO_PEERCRED)", "fd \(r)", ENOTSOCK)) { try Sys.peerCredentials(r) }
    }
}

@Suite struct SigpipeTests {
    @Test func ignoredOnceFromAnyNumberOfCallers() throws {
        let threads = (0..<8).map { _ in Threads.start { for _ in 0..<100 { Sys.ignoreSIGPIPE() } } }
        for t in threads { pthread_join(t, nil) }
        Sys.ignoreSIGPIPE()

        // The disposition is SIG_IGN, the cast macro ((__sighandler_t) 1).
        var current = sigaction()
        try #require(sigaction(SIGPIPE, nil, &current) == 0)
        #expect(unsafeBitCast(current.__sigaction_handler.sa_handler, to: Int.self) == 1)

        // So a write to a peer that went away fails with EPIPE instead of
        // killing the test process.
        var fds: [Int32] = [0, 0]
        try #require(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
        close(fds[1])
        defer { close(fds[0]) }
        #expect(throws: SystemError("write", "fd \(fds[0])", EPIPE)) { try Sys.writeAll(fds[0], [1, 2, 3]) }
    }
}
