// The listening socket's path and mode in the agent's and the controller's
// configurations, checked alike (UnixSocketAddress.checkConfigured), so
// --check-config says what bind or chmod would only say at start.
import Glibc
import LmctfyAgent
import LmctfyController
import LmctfyProto
import LmctfyRPC
import LmctfySystem
import Testing

@Suite struct SocketSettingsTests {
    static let tooLong = "/tmp/" + String(repeating: "s", count: UnixSocketAddress.maxPathBytes)

    func refusals(_ parse: (String) throws(LmctfyError) -> Void) {
        for (value, expected) in [
            ("unix_socket_path: \"relative.sock\"", "unix_socket_path \"relative.sock\" must be absolute"),
            ("unix_socket_path: \"\(Self.tooLong)\"",
             "unix_socket_path is \(Self.tooLong.utf8.count) bytes; a Unix socket's path holds at most \(UnixSocketAddress.maxPathBytes)"),
            ("unix_socket_mode: 01777", "unix_socket_mode 1777 is not a file mode"),
        ] {
            do {
                try parse(value)
                Issue.record("\(value) was accepted")
            } catch {
                #expect(error.code == .invalidArgument && error.message == "t: \(expected)", "\(value): \(error.message)")
            }
        }
    }

    @Test func theAgentsSocketIsChecked() throws {
        refusals { (v: String) throws(LmctfyError) in _ = try AgentSettings.parse(v + " state_dir: \"/tmp/x\"", source: "t") }
        let longest = "/" + String(repeating: "s", count: UnixSocketAddress.maxPathBytes - 1)
        #expect(try AgentSettings.parse("unix_socket_path: \"\(longest)\" unix_socket_mode: 0600", source: "t").unixSocketMode == 0o600)
    }

    @Test func theControllersSocketIsChecked() throws {
        let keys = "/tmp/lmctfy-socket-settings-keys-\(getpid())"
        try Sys.createFile(keys, "k \(JSONFormat.base64Encoded(Crypto.randomBytes(32)))\n", mode: 0o600)
        defer { unlink(keys) }
        let base = "agent_address: \"127.0.0.1:0\" allow_plaintext_tcp: true key_file: \"\(keys)\" "
        refusals { (v: String) throws(LmctfyError) in _ = try ControllerSettings.parse(base + v, source: "t") }
        #expect(try ControllerSettings.parse(base + "unix_socket_mode: 0640", source: "t").unixSocketMode == 0o640)
    }

    /// An agent's limits in a controller's config were silently ignored;
    /// the ones a controller applies are taken.
    @Test func theControllerRefusesAnAgentsLimits() throws {
        let keys = "/tmp/lmctfy-controller-limits-keys-\(getpid())"
        try Sys.createFile(keys, "k \(JSONFormat.base64Encoded(Crypto.randomBytes(32)))\n", mode: 0o600)
        defer { unlink(keys) }
        let base = "agent_address: \"127.0.0.1:0\" allow_plaintext_tcp: true key_file: \"\(keys)\" "
        for field in ["max_connections", "max_connection_buffered_bytes", "max_connection_queued_calls", "max_agent_buffered_bytes",
                      "max_agent_queued_calls", "max_call_threads", "max_reader_call_threads"] {
            #expect { _ = try ControllerSettings.parse(base + "limits { \(field): 9 }", source: "c.conf") } throws: { error in
                let e = error as? LmctfyError
                return e?.code == .invalidArgument && e?.message.hasPrefix("c.conf: limits.\(field) is an agent's limit") == true
            }
        }
        let s = try ControllerSettings.parse(base + """
            limits { max_frame_bytes: 65536 max_streams_per_connection: 7 max_handshaking_connections: 9 hello_timeout_ms: 1000
                     idle_timeout_ms: 2000 keepalive_interval_ms: 3000 }
            """, source: "t")
        #expect(s.limits.maxFrameBytes == 65536 && s.limits.maxStreams == 7 && s.maxHandshakingConnections == 9)
        #expect(s.limits.helloTimeoutMs == 1000 && s.limits.idleTimeoutMs == 2000 && s.limits.keepaliveIntervalMs == 3000)
        #expect(try ControllerSettings.parse(base, source: "t").maxHandshakingConnections == 1024)
    }
}
