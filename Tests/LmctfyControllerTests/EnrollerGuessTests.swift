// Wrong bootstrap tokens (PROTOCOL.md section 3.2): a peer that keeps
// guessing is refused for a while, and a token short enough to guess is
// not taken at all.
import Glibc
@testable import LmctfyController
import LmctfyLoop
import LmctfyProto
import LmctfySystem
import LmctfyTestSupport
import Testing

struct EnrollerGuessTests {
    final class Clock: @unchecked Sendable { var now: Int64 = 1_000_000 }

    func enroller(_ dir: String, _ pki: String, tokens: String) throws -> (Enroller, Mutexed<[String]>) {
        try Sys.createFile(dir + "/tokens", tokens, mode: 0o600)
        let settings = try ControllerSettings.parse("""
            unix_socket_path: "\(dir)/c.sock" agent_address: "127.0.0.1:0" enroll_address: "127.0.0.1:0"
            state_dir: "\(dir)/c" log_level: LOG_ERROR
            tls { certificate_file: "\(pki)/controller.pem" key_file: "\(pki)/controller.key" ca_file: "\(pki)/ca.pem" }
            signing_ca_certificate_file: "\(pki)/ca.pem" signing_ca_key_file: "\(pki)/ca.key"
            bootstrap_token_file: "\(dir)/tokens"
            """, source: "test")
        try Sys.mkdir(dir + "/c", mode: 0o700)
        let e = Enroller(try #require(settings.enroll), stateDir: dir + "/c")
        let said = Mutexed<[String]>([])
        e.log = { line in said.locked { $0.append(line) } }
        return (e, said)
    }

    @Test func aPeerGuessingTokensIsRefusedForAWhile() throws {
        let (dir, pki) = try makeDirWithPki("guess")
        defer { _ = removeTree(dir) }
        let good = "good-token-0123456789"
        let (e, said) = try enroller(dir, pki, tokens: "\(good) \(Int(time(nil)) + 3600)\n")
        let clock = Clock()
        e.clock = { clock.now }
        let a = try SocketAddress(host: "192.0.2.7", port: 4000)
        let b = try SocketAddress(host: "192.0.2.8", port: 4000)
        func code(_ token: String, _ peer: SocketAddress) -> StatusCode? {
            do {
                _ = try e.enroll(EnrollRequest(token: token, hostName: "agent1", csrPem: "junk"), peer: peer)
                return nil
            } catch { return error.code }
        }
        for i in 0..<Enroller.failuresAllowed {
            #expect(code("wrong-guess-\(i)-padding", a) == .unauthenticated)
        }
        // Refused now, the right token too (the tokens are not looked at).
        #expect(code(good, a) == .resourceExhausted)
        #expect(said.locked { $0 }.contains { $0.contains("192.0.2.7 sent 5 wrong bootstrap tokens") })
        // Another peer is not.
        #expect(code("wrong-guess-b-padding", b) == .unauthenticated)
        // After the block: looked at again (the request's junk is next).
        clock.now += Enroller.blockMs + 1
        #expect(code(good, a) == .invalidArgument)
        // Failures spread wider than the window do not add up.
        for _ in 0..<(Enroller.failuresAllowed * 2) {
            #expect(code("wrong-guess-slow-padding", a) == .unauthenticated)
            clock.now += Enroller.failureWindowMs / Int64(Enroller.failuresAllowed - 1) + 1
        }
        #expect(code(good, a) == .invalidArgument)
        // An IPv6 peer counts by its /64; an IPv4-mapped one as its IPv4.
        #expect(Enroller.peerKey(try SocketAddress(host: "2001:db8:1:2:aaaa::1", port: 1))
                == Enroller.peerKey(try SocketAddress(host: "2001:db8:1:2:bbbb::9", port: 2)))
        #expect(Enroller.peerKey(try SocketAddress(host: "2001:db8:1:3::1", port: 1)) == "2001:db8:1:3::/64")
        #expect(Enroller.peerKey(try SocketAddress(host: "::ffff:192.0.2.7", port: 1)) == "192.0.2.7")
    }

    @Test func aTokenShortEnoughToGuessIsNotTaken() throws {
        let (dir, pki) = try makeDirWithPki("guess")
        defer { _ = removeTree(dir) }
        let expiry = Int(time(nil)) + 3600
        let (e, said) = try enroller(dir, pki, tokens: "abc \(expiry)\nlong-enough-token-1 \(expiry)\n")
        let tokens = try e.tokens()
        #expect(tokens["abc"] == nil && tokens["long-enough-token-1"] != nil)
        #expect(said.locked { $0 }.contains { $0.contains("line 1's token is shorter than 16 characters") })
    }
}
