// The method table (AgentMethods) against docs/PROTOCOL.md §6, row by row:
// the contract other languages read and the code the agent and lmctl run
// cannot drift apart.
import Foundation
import LmctfyProto
import LmctfyRPC
import Testing

@Suite struct AgentMethodsTests {
    /// The rows of §6's table: method, request → response, kind, role, runs on.
    static let documented: [[String]] = {
        let path = Repo.root.appendingPathComponent("docs/PROTOCOL.md").path
        guard let text = try? String(contentsOfFile: path, encoding: .utf8),
              let start = text.range(of: "## 6. Methods"),
              let end = text.range(of: "## 7.", range: start.upperBound..<text.endIndex) else { return [] }
        return text[start.upperBound..<end.lowerBound].split(separator: "\n")
            .filter { $0.hasPrefix("| ") && !$0.hasPrefix("| method") }
            .map { $0.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) } }
    }()

    static func kind(_ m: AgentMethodInfo) -> String { m.shape == .unary ? "unary" : "server streaming" }
    static func role(_ m: AgentMethodInfo) -> String { m.role == .admin ? "admin" : "reader" }
    static func runsOn(_ m: AgentMethodInfo) -> String {
        switch m.scheduling {
        case .loop: "loop"
        case .pool: "pool"
        case .ownThread: "own thread"
        case .hub: "hub"
        }
    }

    @Test func theTableIsTheDocumentsTable() {
        #expect(Self.documented.count == AgentMethods.all.count)
        for (row, m) in zip(Self.documented, AgentMethods.all) {
            let streams = m.shape == .serverStreaming ? "…" : ""
            #expect(row == [m.name, "\(m.request) → \(m.response)\(streams)", Self.kind(m), Self.role(m), Self.runsOn(m)])
        }
    }

    @Test func namesAreTheRequestNamesWithoutRequestAndUnique() {
        for m in AgentMethods.all {
            #expect(m.request == m.name + "Request")
            #expect(m.response == m.name + "Response" || m.response == "MachineInfoResponse")
            #expect(AgentMethods.named(m.name)?.name == m.name)
        }
        #expect(Set(AgentMethods.all.map(\.name)).count == AgentMethods.all.count)
        #expect(AgentMethods.named("Frobnicate") == nil)
        #expect(AgentMethods.named("create") == nil)
    }

    @Test func streamingMethodsGetTheirOwnThreadOrTheHubAndOnlyPingRunsOnTheLoop() {
        for m in AgentMethods.all {
            #expect((m.shape == .serverStreaming) == (m.scheduling == .ownThread || m.scheduling == .hub), "\(m.name)")
        }
        #expect(AgentMethods.all.filter { $0.scheduling == .hub }.map(\.name) == [AgentMethods.subscribe.name])
        #expect(AgentMethods.all.filter { $0.scheduling == .loop }.map(\.name) == [AgentMethods.ping.name])
    }

    @Test func adminIncludesReaderAndNoRoleAllowsNothing() {
        for m in AgentMethods.all {
            #expect(m.role.allows(.agentRoleAdmin))
            #expect(m.role.allows(.agentRoleReader) == (m.role == .reader))
            #expect(!m.role.allows(.agentRoleUnspecified))
        }
    }
}
