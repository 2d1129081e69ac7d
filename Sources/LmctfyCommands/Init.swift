// `lmctfy init [-c <file>] [<InitSpec>]`
import LmctfyProto

enum InitCommand {
    static let leaf = Leaf(
        name: "init",
        synopsis: "[-c <config file>] [<init spec>]",
        summary: "Mount the cgroup hierarchies an InitSpec names and prepare the machine (\"\" if already mounted).",
        minArguments: 0, maxArguments: 1,
        action: .withoutApi(run))

    @Sendable
    static func run(_ call: Invocation) throws -> CommandOutput {
        let spec = try call.spec(InitSpec.self, inlineAt: 0, what: "config", reportTextError: true)
        // Through an agent (lmctl), the agent's machine is the one prepared.
        try call.environment.initMachine(spec)
        return .none
    }
}
