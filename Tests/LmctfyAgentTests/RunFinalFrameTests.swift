// A Run's last response (RUN_EXITED) leaves with its status: one RESPONSE
// frame carrying the status from protocol version 2 on (PROTOCOL.md
// section 4), RESPONSE then STATUS for a version 1 peer; RUN_STARTED still
// goes on its own, as soon as the command starts.
import Glibc
import Lmctfy
import LmctfyAgent
import LmctfyProto
import LmctfyRPC
import LmctfySystem
import LmctfyTestSupport
import Testing

@Suite(.enabled(if: RealCgroups.available, "\(RealCgroups.unavailableReason ?? "")"))
struct RunFinalFrameTests {
    /// The frames of one attached Run of /bin/true, read off the wire, on
    /// a connection speaking `version`.
    func runFrames(_ socket: String, _ name: String, version: UInt32) throws -> [Frame] {
        let fd = try RpcSocket.connectUnix(path: socket)
        defer { close(fd) }
        func send(_ f: Frame) {
            let bytes = FrameCodec.encode(f)
            _ = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        }
        var decoder = FrameDecoder(maxFrameBytes: FrameCodec.helloMaxFrameBytes)
        var buffer = [UInt8](repeating: 0, count: 65536)
        func next() throws -> Frame? {
            let deadline = MonotonicClock.milliseconds() + 10_000
            while MonotonicClock.milliseconds() < deadline {
                if let f = try decoder.next() { return f }
                var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                guard poll(&p, 1, 100) > 0 else { continue }
                let got = recv(fd, &buffer, buffer.count, 0)
                guard got > 0 else { return nil }
                decoder.feed(buffer[0..<got])
            }
            return nil
        }
        send(Frame(kind: .frameHello, streamId: 0, hello: Hello(stage: .helloOffer, minVersion: version, maxVersion: version, peerName: "t")))
        let accepted = try #require(try next())
        #expect(accepted.hello?.stage == .helloAccepted && accepted.hello?.version == version)
        let request = try RunRequest(name: name, argv: ["/bin/true"]).serializedBytes()
        send(Frame(kind: .frameRequest, streamId: 1, method: "Run", payload: request))
        var frames: [Frame] = []
        while let f = try next() {
            guard f.kind == .frameResponse || f.kind == .frameStatus else { continue }  // keepalives
            frames.append(f)
            if f.kind == .frameStatus || (version >= 2 && f.status != nil) { break }
        }
        return frames
    }

    @Test func runExitedCarriesTheStatusFromVersion2AndPrecedesItBefore() throws {
        try withAgent { _, socket in
            let name = RealCgroups.uniqueName("runfinal")
            let admin = try RpcClient.connect(unixPath: socket)
            defer {
                _ = try? admin.call(AgentMethods.destroy, DestroyRequest(name: name, force: true))
                admin.close()
            }
            _ = try admin.call(AgentMethods.create, CreateRequest(name: name, spec: ContainerSpec()))
            for version: UInt32 in [1, 2] {
                let frames = try runFrames(socket, name, version: version)
                let kinds = try frames.map { f -> String in
                    let r = f.kind == .frameResponse ? try RunResponse(serializedBytes: f.payload ?? []) : nil
                    return "\(f.kind == .frameResponse ? "RESPONSE" : "STATUS") \(r?.kind?.protoName ?? "")\(f.status.map { " status \($0.code ?? -1)" } ?? "")"
                }
                let want = version >= 2
                    ? ["RESPONSE RUN_STARTED", "RESPONSE RUN_EXITED status 0"]
                    : ["RESPONSE RUN_STARTED", "RESPONSE RUN_EXITED", "STATUS  status 0"]
                #expect(kinds == want, "version \(version): \(kinds)")
            }
        }
    }
}
