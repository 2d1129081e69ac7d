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
        try api.create(call.arguments[0], spec: spec)
        // The original printed init_pid for virtual hosts; the library
        // refuses virtual_host until it is implemented, so there is none yet.
        return .none
    }
}
