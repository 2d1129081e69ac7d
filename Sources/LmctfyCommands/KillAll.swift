// `lmctfy killall [-r] <name>`: kills every process of the container (D9:
// freeze, kill, thaw, until empty; works when paused); -r also kills the
// processes of every subcontainer, deepest first.
import LmctfyBackend
import LmctfySystem

enum KillAllCommand {
    static let leaf = Leaf(
        name: "killall",
        synopsis: "[-r] <container name>",
        summary: "Kill every process in a container (-r: and in its subcontainers).",
        minArguments: 1, maxArguments: 1,
        action: .withApi(run))

    @Sendable
    static func run(_ api: any ContainerBackend, _ call: Invocation) throws -> CommandOutput {
        try api.killAll(call.arguments[0], recursive: call.flags.recursive)
        return .none
    }
}
