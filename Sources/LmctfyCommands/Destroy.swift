// `lmctfy destroy [-f] <name>`
import LmctfyBackend
import LmctfySystem

enum DestroyCommand {
    static let leaf = Leaf(
        name: "destroy",
        synopsis: "[-f] <container name>",
        summary: "Destroy an empty container; with -f, its subcontainers and processes too.",
        minArguments: 1, maxArguments: 1,
        action: .withApi(run))

    @Sendable
    static func run(_ api: any ContainerBackend, _ call: Invocation) throws -> CommandOutput {
        try api.destroy(call.arguments[0], force: call.flags.force)
        return .none
    }
}
