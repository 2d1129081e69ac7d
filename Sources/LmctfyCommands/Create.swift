// `lmctfy create [-c <file>] <name> [<spec>]`
import LmctfyBackend
import LmctfyProto

enum CreateCommand {
    static let leaf = Leaf(
        name: "create",
        synopsis: "[-c <config file>] <container name> [<container spec>]",
        summary: "Create a container isolating what its ContainerSpec names.",
        minArguments: 1, maxArguments: 2,
        action: .withApi(run))

    @Sendable
    static func run(_ api: any ContainerBackend, _ call: Invocation) throws -> CommandOutput {
        let spec = try call.spec(ContainerSpec.self, inlineAt: 1, what: "container config", reportTextError: true)
        let outcome = try api.createReportingInit(call.arguments[0], spec: spec)
        // As the original: a virtual host's init pid, nothing otherwise.
        guard let pid = outcome.initPid else { return .none }
        return CommandOutput(entries: [.pair(key: "init_pid", value: String(pid))], json: "{\"init_pid\":\(pid)}")
    }
}
