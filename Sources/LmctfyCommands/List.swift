// `lmctfy list containers [-r] [<name>]`. `list pids|tids` join this menu
// with the next issue.
import LmctfyBackend

enum ListContainersCommand {
    static let leaf = Leaf(
        name: "containers",
        synopsis: "[-r] [<container name>]",
        summary: "List subcontainers, sorted (-r: all descendants; default: the calling shell's container).",
        minArguments: 0, maxArguments: 1,
        action: .withApi(run))

    @Sendable
    static func run(_ api: any ContainerBackend, _ call: Invocation) throws -> CommandOutput {
        let names = try api.listContainers(call.argument(0), recursive: call.flags.recursive)
        return .list(key: "name", jsonKey: "containers", names)
    }
}
