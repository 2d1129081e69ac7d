// TCP and Unix streams on loopback: echo, many connections, credentials,
// socket-file hygiene, backpressure, pause/resume, failures, leaks.
import CLibUV
import Glibc
import LmctfyLoop
import LmctfySystem
import LmctfyTestSupport
import Testing

/// Server side: writes back every chunk; closes after EOF once flushed.
private func echo(_ c: Connection) {
    c.onRead = { c, bytes in c.write(bytes) }
    c.onEOF = { c in c.closeAfterWrites() }
    c.resumeReading()
}

/// Client side: sends `payload` in random chunk sizes, collects what comes
/// back and closes once it all did; `done` fires when the connection closed.
private func echoClient(_ c: Connection, payload: [UInt8], seed: UInt64,
                        received: LoopBox<[UInt8]>, errors: LoopBox<[String]>, done: Latch) {
    var g = SplitMix64(seed: seed)
    c.onRead = { c, bytes in
        received.value += bytes
        if received.value.count >= payload.count { c.close() }
    }
    c.onError = { _, e in errors.value.append("\(e)") }
    c.onClose = { done.signal() }
    c.resumeReading()
    var offset = 0
    while offset < payload.count {
        let n = min(Int.random(in: 1...65_536, using: &g), payload.count - offset)
        c.write(Array(payload[offset..<offset + n])) { _, e in
            if let e { errors.value.append("write: \(e)") }
        }
        offset += n
    }
}

private func dialed(_ errors: LoopBox<[String]>, _ done: Latch, _ then: @escaping (Connection) -> Void)
    -> (Result<Connection, LoopError>) -> Void {
    { result in
        switch result {
        case .success(let c): then(c)
        case .failure(let e):
            errors.value.append("dial: \(e)")
            done.signal()
        }
    }
}

@Suite struct StreamTests {
    @Test func tcpEchoesOneMegabyteInRandomChunks() throws {
        try withLoop { loop in
            let payload = randomBytes(1 << 20, seed: 0x1_0000)
            let received = LoopBox<[UInt8]>([])
            let errors = LoopBox<[String]>([])
            let peer = LoopBox<SocketAddress?>(nil)
            let done = Latch()
            let port = try loop.runAndWait { () -> UInt16 in
                let l = try TcpListener.bind(on: loop, host: "127.0.0.1", port: 0) { c in
                    peer.value = c.remoteAddress
                    echo(c)
                }
                #expect(l.address.host == "127.0.0.1")
                return l.port
            }
            #expect(port != 0, "port 0 reports the port the kernel chose")
            let local = try loop.runAndWait { () -> SocketAddress? in
                let c = try Connection.dialTCP(on: loop, host: "127.0.0.1", port: port, dialed(errors, done) { c in
                    echoClient(c, payload: payload, seed: 7, received: received, errors: errors, done: done)
                })
                return c.localAddress  // nil until connected
            }
            #expect(local == nil)
            #expect(done.wait())
            let (got, errs, seen) = try loop.runAndWait { (received.value, errors.value, peer.value) }
            #expect(errs.isEmpty)
            #expect(got.count == payload.count)
            #expect(got == payload)
            #expect(seen?.host == "127.0.0.1")
        }
    }

    @Test func hundredConcurrentTcpConnectionsEachEcho() throws {
        try withLoop { loop in
            let n = 100, size = 32 << 10
            let payloads = (0..<n).map { randomBytes(size, seed: UInt64($0)) }
            let received = (0..<n).map { _ in LoopBox<[UInt8]>([]) }
            let errors = LoopBox<[String]>([])
            let peak = LoopBox(0)
            let done = Latch(n)
            let port = try loop.runAndWait {
                try TcpListener.bind(on: loop, host: "127.0.0.1", port: 0) { c in
                    peak.value = max(peak.value, loop.liveConnectionCount)
                    echo(c)
                }.port
            }
            // All dialled in one go: every connection is in flight at once.
            try loop.runAndWait {
                for i in 0..<n {
                    _ = try Connection.dialTCP(on: loop, host: "127.0.0.1", port: port, dialed(errors, done) { c in
                        echoClient(c, payload: payloads[i], seed: UInt64(i), received: received[i], errors: errors, done: done)
                    })
                }
            }
            #expect(done.wait(seconds: 60))
            let (got, errs, most) = try loop.runAndWait { (received.map(\.value), errors.value, peak.value) }
            #expect(errs.isEmpty)
            #expect(got == payloads)
            #expect(most > n, "client and server ends were open together (\(most))")
        }
    }

    @Test func unixEchoCarriesOurCredentials() throws {
        let dir = try makeTempDir()
        defer { rmdir(dir) }
        let path = dir + "/echo.sock"
        try withLoop { loop in
            let payload = randomBytes(256 << 10, seed: 3)
            let received = LoopBox<[UInt8]>([])
            let errors = LoopBox<[String]>([])
            let serverSaw = LoopBox<PeerCredentials?>(nil)
            let clientSaw = LoopBox<PeerCredentials?>(nil)
            let done = Latch()
            try loop.runAndWait {
                _ = try UnixListener.bind(on: loop, path: path, mode: 0o660) { c in
                    serverSaw.value = c.peerCredentials
                    echo(c)
                }
            }
            #expect(fileMode(path).map { $0 & S_IFMT } == S_IFSOCK)
            #expect(fileMode(path).map { $0 & 0o777 } == 0o660)
            try loop.runAndWait {
                _ = try Connection.dialUnix(on: loop, path: path, dialed(errors, done) { c in
                    clientSaw.value = c.peerCredentials
                    echoClient(c, payload: payload, seed: 4, received: received, errors: errors, done: done)
                })
            }
            #expect(done.wait())
            let (got, errs, server, client) = try loop.runAndWait {
                (received.value, errors.value, serverSaw.value, clientSaw.value)
            }
            let me = PeerCredentials(pid: getpid(), uid: getuid(), gid: getgid())
            #expect(errs.isEmpty)
            #expect(got == payload)
            #expect(server == me, "the listener sees the dialling process")
            #expect(client == me, "the dialler sees the listening process")
        }
        #expect(fileMode(path) == nil, "closing the listener removed its socket file")
    }

    @Test func staleSocketIsReplacedButALiveOneOrAFileIsNot() throws {
        let dir = try makeTempDir()
        let path = dir + "/agent.sock"
        let plain = dir + "/not-a-socket"
        defer {
            unlink(plain)
            rmdir(dir)
        }
        try makeStaleSocket(path)
        #expect(fileMode(path).map { $0 & S_IFMT } == S_IFSOCK)
        try Sys.createFile(plain, "keep me\n")

        try withLoop { loop in
            let accepted = LoopBox(0)
            try loop.runAndWait {
                _ = try UnixListener.bind(on: loop, path: path) { c in
                    accepted.value += 1
                    c.onEOF = { $0.close() }
                    c.resumeReading()
                }
            }
            func bindError(_ p: String) throws -> LoopError? {
                try loop.runAndWait { () -> LoopError? in
                    do throws(LoopError) {
                        _ = try UnixListener.bind(on: loop, path: p) { _ in }
                        return nil
                    } catch {
                        return error
                    }
                }
            }
            let live = try bindError(path)
            #expect(live?.code == UV_EADDRINUSE.rawValue, "\(String(describing: live))")
            #expect(fileMode(path).map { $0 & S_IFMT } == S_IFSOCK, "the live socket file is still there")

            let notSocket = try bindError(plain)
            #expect(notSocket?.code == UV_EADDRINUSE.rawValue)
            #expect(try Sys.readFile(plain) == "keep me\n")

            // The live listener still answers.
            let errors = LoopBox<[String]>([])
            let done = Latch()
            try loop.runAndWait {
                _ = try Connection.dialUnix(on: loop, path: path, dialed(errors, done) { c in
                    c.onClose = { done.signal() }
                    c.close()
                    c.close()
                })
            }
            #expect(done.wait())
            let errs = try loop.runAndWait { errors.value }
            #expect(errs.isEmpty)
        }
        #expect(fileMode(path) == nil)
    }

    @Test func writeQueueShowsBackpressureUntilThePeerReads() throws {
        try withLoop { loop in
            let total = 16 << 20, chunk = 64 << 10
            let server = LoopBox<Connection?>(nil)
            let client = LoopBox<Connection?>(nil)
            let received = LoopBox(0)
            let completed = LoopBox(0)
            let errors = LoopBox<[String]>([])
            let connected = Latch(2), drained = Latch(), allIn = Latch()
            try loop.runAndWait {
                let l = try TcpListener.bind(on: loop, host: "127.0.0.1", port: 0) { c in
                    // Not reading yet.
                    c.onRead = { _, bytes in
                        received.value += bytes.count
                        if received.value == total { allIn.signal() }
                    }
                    server.value = c
                    connected.signal()
                }
                _ = try Connection.dialTCP(on: loop, host: "127.0.0.1", port: l.port, dialed(errors, connected) { c in
                    client.value = c
                    connected.signal()
                })
            }
            #expect(connected.wait())
            let (queued, pending) = try loop.runAndWait { () -> (Int, Int) in
                guard let c = client.value else { return (-1, -1) }
                c.onDrain = { _ in drained.signal() }
                for _ in 0..<(total / chunk) {
                    c.write([UInt8](repeating: 1, count: chunk)) { _, e in
                        if let e { errors.value.append("\(e)") } else { completed.value += 1 }
                    }
                }
                return (c.bytesQueued, c.pendingWriteCount)
            }
            #expect(queued > 0, "the kernel cannot take 16 MB while the peer does not read")
            #expect(pending > 0)
            usleep(20_000)
            let stillQueued = try loop.runAndWait { client.value?.bytesQueued ?? 0 }
            #expect(stillQueued > 0, "still queued: nobody reads")

            try loop.runAndWait { server.value?.resumeReading() }
            #expect(drained.wait())
            #expect(allIn.wait())
            let (done, sent, left, errs) = try loop.runAndWait { () -> (Int, UInt64, Int, [String]) in
                let c = client.value!
                defer {
                    c.close()
                    client.value = nil
                    server.value = nil
                }
                return (completed.value, c.bytesSent, c.bytesQueued, errors.value)
            }
            #expect(errs.isEmpty)
            #expect(done == total / chunk)
            #expect(sent == UInt64(total))
            #expect(left == 0)
        }
    }

    @Test func pausedReadingDeliversNothingUntilResumed() throws {
        try withLoop { loop in
            let server = LoopBox<Connection?>(nil)
            let client = LoopBox<Connection?>(nil)
            let received = LoopBox(0)
            let errors = LoopBox<[String]>([])
            let connected = Latch(2), first = Latch(), rest = Latch()
            try loop.runAndWait {
                let l = try TcpListener.bind(on: loop, host: "127.0.0.1", port: 0) { c in
                    c.onRead = { c, bytes in
                        received.value += bytes.count
                        if received.value == 100 {
                            c.pauseReading()
                            first.signal()
                        }
                        if received.value == 300 { rest.signal() }
                    }
                    c.resumeReading()
                    server.value = c
                    connected.signal()
                }
                _ = try Connection.dialTCP(on: loop, host: "127.0.0.1", port: l.port, dialed(errors, connected) { c in
                    client.value = c
                    connected.signal()
                })
            }
            #expect(connected.wait())
            try loop.runAndWait { client.value?.write([UInt8](repeating: 1, count: 100)) }
            #expect(first.wait())
            try loop.runAndWait { client.value?.write([UInt8](repeating: 2, count: 200)) }
            usleep(50_000)
            let (count, reading) = try loop.runAndWait { (received.value, server.value?.isReading) }
            #expect(count == 100)
            #expect(reading == false)
            try loop.runAndWait { server.value?.resumeReading() }
            #expect(rest.wait())
            try loop.runAndWait {
                client.value = nil
                server.value = nil
            }
        }
    }

    @Test func writingToAPeerThatLeftFailsInsteadOfKillingUs() throws {
        try withLoop { loop in
            let errors = LoopBox<[Int32]>([])
            let completionErrors = LoopBox(0)
            let closed = Latch()
            try loop.runAndWait {
                let l = try TcpListener.bind(on: loop, host: "127.0.0.1", port: 0) { c in c.close() }
                _ = try Connection.dialTCP(on: loop, host: "127.0.0.1", port: l.port) { r in
                    guard case .success(let c) = r else { return closed.signal() }
                    c.onError = { _, e in errors.value.append(e.code) }
                    c.onClose = { closed.signal() }
                    // Keep writing until the kernel reports the peer gone: the
                    // first write after its close draws an RST, a later one
                    // EPIPE, which raises SIGPIPE unless it is ignored.
                    func again(_ c: Connection, _ n: Int) {
                        guard n < 1_000 else { return }
                        c.write([UInt8](repeating: 0, count: 4096)) { c, e in
                            if e == nil { again(c, n + 1) } else { completionErrors.value += 1 }
                        }
                    }
                    again(c, 0)
                }
            }
            #expect(closed.wait())
            let (codes, failedWrites) = try loop.runAndWait { (errors.value, completionErrors.value) }
            #expect(codes.count == 1, "onError runs once: \(codes)")
            #expect(codes.allSatisfy { $0 == UV_EPIPE.rawValue || $0 == UV_ECONNRESET.rawValue }, "\(codes)")
            #expect(failedWrites == 1)
        }
    }

    @Test func dialFailuresArriveAsErrors() throws {
        try withLoop { loop in
            // A port that was just free: bind, note, close.
            let port = try loop.runAndWait { () -> UInt16 in
                let l = try TcpListener.bind(on: loop, host: "127.0.0.1", port: 0) { _ in }
                defer { l.close() }
                return l.port
            }
            let codes = LoopBox<[Int32]>([])
            let done = Latch(2)
            try loop.runAndWait {
                let record: (Result<Connection, LoopError>) -> Void = { r in
                    if case .failure(let e) = r { codes.value.append(e.code) }
                    done.signal()
                }
                _ = try Connection.dialTCP(on: loop, host: "127.0.0.1", port: port, record)
                _ = try Connection.dialUnix(on: loop, path: "/nonexistent-lmctfy-dir/agent.sock", record)
            }
            #expect(done.wait())
            let failed = try loop.runAndWait { codes.value.sorted() }
            #expect(failed == [UV_ECONNREFUSED.rawValue, UV_ENOENT.rawValue].sorted())

            // Names are not resolved on the loop; over-long socket paths are
            // refused rather than truncated.
            let longPath = "/tmp/" + String(repeating: "x", count: 120)
            let thrown = try loop.runAndWait { () -> [Int32] in
                var found: [Int32] = []
                do throws(LoopError) {
                    _ = try Connection.dialTCP(on: loop, host: "localhost", port: 1) { _ in }
                } catch { found.append(error.code) }
                do throws(LoopError) {
                    _ = try Connection.dialUnix(on: loop, path: longPath) { _ in }
                } catch { found.append(error.code) }
                do throws(LoopError) {
                    _ = try UnixListener.bind(on: loop, path: longPath) { _ in }
                } catch { found.append(error.code) }
                return found
            }
            #expect(thrown == [UV_EINVAL.rawValue, UV_ENAMETOOLONG.rawValue, UV_ENAMETOOLONG.rawValue])
        }
    }

    @Test func closedConnectionsLeaveNothingBehind() throws {
        let loop = EventLoop()
        try loop.start()
        let n = 50
        let done = Latch(n)
        let closes = LoopBox(0)
        let port = try loop.runAndWait {
            try TcpListener.bind(on: loop, host: "127.0.0.1", port: 0) { echo($0) }.port
        }
        try loop.runAndWait {
            for _ in 0..<n {
                _ = try Connection.dialTCP(on: loop, host: "127.0.0.1", port: port) { r in
                    guard case .success(let c) = r else { return done.signal() }
                    // A cycle through the callbacks on purpose: close must break it.
                    c.onRead = { _, _ in
                        c.close()
                        c.close()
                    }
                    c.onClose = {
                        closes.value += 1
                        done.signal()
                    }
                    c.resumeReading()
                    c.write([1, 2, 3])
                }
            }
        }
        #expect(done.wait())
        // The server ends close on EOF, a loop iteration or two later.
        var left = -1
        for _ in 0..<200 {
            left = try loop.runAndWait { loop.liveConnectionCount }
            if left == 0 { break }
            usleep(10_000)
        }
        #expect(left == 0)
        let handles = try loop.runAndWait { loop.liveHandleCount }
        #expect(handles == 1, "only the listener")
        expectCleanShutdown(loop)
        #expect(closes.value == n, "each onClose ran once")
        #expect(loop.liveObjectCount == 0, "no connection object survives its close")
    }
}
