// RpcClient over a real socket pair, against an acceptor Session driven by a
// small blocking server on another thread (what the agent does on its loop).
import Foundation
import Glibc
import LmctfyProto
import LmctfyRPC
import LmctfySystem
import Testing

/// Serves Ping (echo), Count (n responses), Hang (never answers) and Fail
/// (NOT_FOUND) on `fd` until the connection closes. Returns when done.
func serve(fd: Int32, auth: AcceptorAuthentication) {
    var session = Session(acceptor: auth, name: "test-agent", limits: SessionLimits(helloTimeoutMs: 5000), now: MonotonicClock.milliseconds())
    var buffer = [UInt8](repeating: 0, count: 65536)
    var gathered: [(UInt32, [UInt8])] = []
    func perform(_ actions: [SessionAction]) {
        for action in actions {
            switch action {
            case .write(let bytes):
                _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            case .deliverRequest(let id, let method, let payload, _, _):
                let now = MonotonicClock.milliseconds()
                switch method {
                case "Ping":
                    let request = (try? PingRequest(serializedBytes: payload)) ?? PingRequest()
                    perform(session.sendResponse(streamId: id, payload: (try? PingResponse(data: request.data).serializedBytes()) ?? [], now: now))
                    perform(session.sendStatus(streamId: id, .ok, now: now))
                case "Count":
                    for i in 0..<Int(payload.first ?? 0) { perform(session.sendResponse(streamId: id, payload: [UInt8(i)], now: now)) }
                    perform(session.sendStatus(streamId: id, .ok, now: now))
                case "Hang":
                    break
                case "Gather":
                    // Answered only once eight wait: calls made one at a
                    // time never are.
                    gathered.append((id, payload))
                    if gathered.count == 8 {
                        for (gid, gp) in gathered.reversed() {
                            perform(session.sendResponse(streamId: gid, payload: gp, now: now))
                            perform(session.sendStatus(streamId: gid, .ok, now: now))
                        }
                        gathered = []
                    }
                case "Fail":
                    perform(session.sendStatus(streamId: id, CallStatus(.notFound, "container /nope does not exist"), now: now))
                default:
                    perform(session.sendStatus(streamId: id, CallStatus(.unimplemented, method), now: now))
                }
            default:
                break
            }
        }
    }
    while !session.isClosed {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let now = MonotonicClock.milliseconds()
        let wait = session.nextWakeup.map { $0 <= now ? 0 : Int32(clamping: $0 - now) } ?? -1
        if poll(&p, 1, wait) > 0 {
            let n = recv(fd, &buffer, buffer.count, 0)
            let at = MonotonicClock.milliseconds()
            perform(n <= 0 ? session.receiveEOF(now: at) : session.receive(buffer[0..<n], now: at))
        }
        perform(session.tick(now: MonotonicClock.milliseconds()))
    }
    close(fd)
}

/// A connected pair: the client's end and a server thread on the other.
func withServer(_ auth: AcceptorAuthentication, _ body: (Int32) throws -> Void) rethrows {
    var fds: [Int32] = [0, 0]
    precondition(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0)
    let serverFd = fds[1]
    let done = DispatchSemaphore(value: 0)
    let thread = Thread {
        serve(fd: serverFd, auth: auth)
        done.signal()
    }
    thread.start()
    defer { done.wait() }
    try body(fds[0])
}

@Suite struct ClientTests {
    static let me = PeerCredentials(pid: getpid(), uid: getuid(), gid: getgid())
    static let unix = AcceptorAuthentication.peerCredentials(me, UnixPeerPolicy(allowedUids: [getuid()]))

    @Test func unaryStreamingErrorsAndDeadlines() throws {
        try withServer(Self.unix) { fd in
            let client = try RpcClient(fd: fd, name: "lmctl")
            defer { client.close() }
            #expect(client.peer.name == "test-agent")

            let pong = try client.call("Ping", PingRequest(data: Array("hi".utf8)), as: PingResponse.self)
            #expect(pong.data == Array("hi".utf8))

            var seen: [UInt8] = []
            try client.stream("Count", [5]) { payload in
                seen += payload
                return true
            }
            #expect(seen == [0, 1, 2, 3, 4])

            #expect(throws: LmctfyError(.notFound, "container /nope does not exist")) {
                try client.call("Fail", [])
            }
            #expect(throws: LmctfyError(.unimplemented, "Nope")) { try client.call("Nope", []) }

            let start = MonotonicClock.milliseconds()
            #expect(throws: LmctfyError(.deadlineExceeded, "deadline exceeded")) {
                try client.call("Hang", [], deadlineMs: 50)
            }
            #expect(MonotonicClock.milliseconds() - start >= 50)

            // Cancelling from the handler ends the call; the connection stays usable.
            var first: [UInt8] = []
            try client.stream("Count", [100]) { payload in
                first = payload
                return false
            }
            #expect(first == [0])
            #expect(try client.call("Ping", PingRequest(), as: PingResponse.self) == PingResponse())
        }
    }

    @Test func pipelinedCallsAnswerInRequestOrder() throws {
        try withServer(Self.unix) { fd in
            let client = try RpcClient(fd: fd, name: "lmctl")
            defer { client.close() }
            let pings = (0..<300).map { PingRequest(data: Array("p\($0)".utf8)) }
            let answers = client.callMany(AgentMethods.ping, pings, inFlight: 64)
            #expect(answers.count == 300)
            for (i, a) in answers.enumerated() {
                #expect((try? a.get())?.data == Array("p\(i)".utf8))
            }
            // Eight in flight at once, or the server never answers (it
            // answers a batch of eight, last first). The deadline only
            // keeps a broken client from hanging the suite: under TSan, on
            // a loaded machine, 5 s ran out with the server still sending
            // its first batch's answers.
            let gathered = client.callMany("Gather", (0..<16).map { [UInt8($0)] }, inFlight: 8, deadlineMs: 120_000)
            #expect(gathered.map { try? $0.get() } == (0..<16).map { [UInt8($0)] })
            // Each call its own status; the last response of a stream is its answer.
            let mixed = client.callMany("Count", [[3], [0], [1]])
            #expect(mixed.map { try? $0.get() } == [[2], [], [0]])
            let failing = client.callMany("Fail", [[], []])
            for f in failing {
                #expect(throws: LmctfyError(.notFound, "container /nope does not exist")) { try f.get() }
            }
            #expect(client.callMany("Ping", []).isEmpty)
            // Closed: every call fails, none hangs.
            client.close()
            for a in client.callMany("Ping", [[], [], []]) {
                #expect(throws: LmctfyError.self) { try a.get() }
                if case .failure(let e) = a { #expect(e.code == .unavailable) }
            }
        }
    }

    @Test func sharedKeyOverASocket() throws {
        let key = Array("0123456789abcdef0123".utf8)
        let acceptor = AcceptorAuthentication.sharedKey(try Keyring(["lmctl": key]), ReplayCache())
        try withServer(acceptor) { fd in
            let client = try RpcClient(fd: fd, authentication: .sharedKey(keyId: "lmctl", key: key))
            #expect(client.peer.keyId == "lmctl")
            #expect(try client.call("Ping", PingRequest(data: [7]), as: PingResponse.self).data == [7])
            client.close()
        }
        withServer(acceptor) { fd in
            #expect(throws: LmctfyError.self) {
                _ = try RpcClient(fd: fd, authentication: .sharedKey(keyId: "lmctl", key: Array("wrong-key-wrong-key".utf8)))
            }
        }
    }

    @Test func deniedPeerIsToldWhy() {
        let nobody = AcceptorAuthentication.peerCredentials(PeerCredentials(pid: 1, uid: 4242, gid: 4242), UnixPeerPolicy())
        withServer(nobody) { fd in
            do {
                _ = try RpcClient(fd: fd)
                Issue.record("connected without permission")
            } catch let error as LmctfyError {
                #expect(error.code == .unauthenticated)
                #expect(error.message.contains("uid 4242"))
            } catch {
                Issue.record("unexpected error \(error)")
            }
        }
    }

    @Test func peerCredentialsOfASocketPair() throws {
        var fds: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
        defer { close(fds[0]); close(fds[1]) }
        let c = try Sys.peerCredentials(fds[0])
        #expect(c.pid == getpid() && c.uid == getuid() && c.gid == getgid())
    }

    @Test func connectToAMissingSocketIsUnavailable() {
        #expect(throws: LmctfyError.self) { try RpcClient.connect(unixPath: "/nonexistent/lmctfy-test.sock") }
    }
}
