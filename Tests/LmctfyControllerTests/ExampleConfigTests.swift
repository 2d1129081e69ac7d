// The example configs of agent-config/ parse (no root needed): the
// controller's, relocated by rewriting its three path prefixes into a temp
// directory (the example keeps every file under /run/lmctfy,
// /var/lib/lmctfy or /etc/lmctfy so that this works), and the agent's with
// its commented dial-home keys switched on, dialling that controller.
import Foundation
import Glibc
import LmctfyAgent
import LmctfyController
import LmctfyPolicy
import LmctfyProto
import LmctfyRPC
import LmctfySystem
import LmctfyTestSupport
import Testing

struct ExampleConfigTests {
    static let repo = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static let prefixes = ["/run/lmctfy", "/var/lib/lmctfy", "/etc/lmctfy"]

    /// The example at agent-config/NAME with every prefix moved under `dir`.
    static func relocated(_ name: String, into dir: String) throws -> String {
        var text = try String(contentsOf: repo.appendingPathComponent("agent-config/" + name), encoding: .utf8)
        for p in prefixes { text = text.replacingOccurrences(of: "\"\(p)", with: "\"\(dir)\(p)") }
        return text
    }

    /// A private key file (0600) with these key ids.
    static func writeKeys(_ path: String, _ ids: [String]) throws {
        try FileManager.default.createDirectory(atPath: String(path[..<path.lastIndex(of: "/")!]), withIntermediateDirectories: true)
        let lines = ids.map { "\($0) \(JSONFormat.base64Encoded(Crypto.randomBytes(32)))\n" }.joined()
        try Sys.createFile(path, lines, mode: 0o600)
    }

    @Test func theControllerExampleParsesAndKeepsItsFilesUnderThreePrefixes() throws {
        let original = try String(contentsOf: Self.repo.appendingPathComponent("agent-config/controller.conf"), encoding: .utf8)
        // Every absolute path of a setting (not of the comments) is under a prefix.
        let settingLines = original.split(separator: "\n").filter { !$0.trimmingCharacters(in: .whitespaces).hasPrefix("#") }
        let paths = settingLines.flatMap { line in
            line.split(separator: "\"", omittingEmptySubsequences: false).enumerated()
                .filter { $0.offset % 2 == 1 && $0.element.hasPrefix("/") }.map { String($0.element) }
        }
        #expect(paths.count >= 3, "\(paths)")
        for p in paths { #expect(Self.prefixes.contains { p.hasPrefix($0 + "/") }, "\(p)") }

        let dir = "/tmp/lmctfy-example-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { removeTree(dir) }
        let text = try Self.relocated("controller.conf", into: dir)
        // The key file must exist and be private for the config to parse.
        #expect(throws: LmctfyError.self) { _ = try ControllerSettings.parse(text, source: "controller.conf") }
        try Self.writeKeys(dir + "/etc/lmctfy/controller.keys", ["alpha", "monitoring", "ops"])
        let s = try ControllerSettings.parse(text, source: "controller.conf")
        #expect(s.unixSocketPath == dir + "/run/lmctfy/controller.sock")
        #expect(s.stateDir == dir + "/var/lib/lmctfy/controller")
        #expect(s.config.keyFile == dir + "/etc/lmctfy/controller.keys")
        #expect(s.agentTcp.port == 7412 && s.clientTcp?.port == 7413)
        #expect(s.config.role.count == 2)
        #expect(s.keys.keys.sorted() == ["alpha", "monitoring", "ops"])
    }

    @Test func theAgentExampleParsesWithAndWithoutItsDialHomeKeys() throws {
        let dir = "/tmp/lmctfy-example-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { removeTree(dir) }
        let text = try Self.relocated("agent.conf", into: dir)
        let plain = try AgentSettings.parse(text, source: "agent.conf")
        #expect(plain.controller == nil)
        #expect(plain.unixSocketPath == dir + "/run/lmctfy/agent.sock")
        #expect(plain.policy == Policy(), "the example's policy block spells out the defaults")

        // Switch on key_file and the dial-home keys (the commented lines of
        // the dial-home block, and key_file and allow_plaintext_tcp, which
        // it needs without tls).
        let keys = ["key_file", "allow_plaintext_tcp", "controller_address", "controller_key_id", "host_name", "label", "reconnect_base_ms", "reconnect_max_ms"]
        var switched = 0
        let dialling = text.split(separator: "\n", omittingEmptySubsequences: false).map { line -> String in
            guard line.hasPrefix("# "), let word = line.dropFirst(2).split(whereSeparator: { $0 == ":" || $0 == " " }).first,
                  keys.contains(String(word)) else { return String(line) }
            switched += 1
            return String(line.dropFirst(2))
        }.joined(separator: "\n")
        #expect(switched == 9)
        try Self.writeKeys(dir + "/etc/lmctfy/agent.keys", ["alpha"])
        let s = try AgentSettings.parse(dialling, source: "agent.conf")
        let link = try #require(s.controller)
        // It dials the example controller's agent_address, on this machine.
        let controller = try String(contentsOf: Self.repo.appendingPathComponent("agent-config/controller.conf"), encoding: .utf8)
        #expect(controller.contains("agent_address: \"0.0.0.0:\(link.port)\""))
        #expect(link.host == "127.0.0.1" && link.keyId == "alpha" && link.hostName == "alpha")
        #expect(link.labels.map { "\($0.key ?? "")=\($0.value ?? "")" } == ["zone=z1", "tier=web"])
        #expect(link.reconnectBaseMs == 500 && link.reconnectMaxMs == 30_000)
        // Labels within the controller's bounds (HostIdentityRules): 65 are
        // refused here, not at every Register.
        let tooMany = dialling + "\n" + (0..<63).map { "label { key: \"x\($0)\" value: \"v\" }" }.joined(separator: "\n")
        #expect { _ = try AgentSettings.parse(tooMany, source: "agent.conf") }
            throws: { ($0 as? LmctfyError)?.message.contains("65 labels, more than 64") == true }
        // One value per key: a selector matched the first of two.
        let twice = dialling + "\nlabel { key: \"zone\" value: \"z2\" }"
        #expect { _ = try AgentSettings.parse(twice, source: "agent.conf") }
            throws: { ($0 as? LmctfyError)?.message.contains("label \"zone\" is given twice") == true }
    }
}
