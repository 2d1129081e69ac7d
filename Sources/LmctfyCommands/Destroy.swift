// `lmctfy destroy [-f] <name>`
import Lmctfy
import LmctfySystem

enum DestroyCommand {
    static let leaf = Leaf(
        name: "destroy",
        synopsis: "[-f] <container name>",
        summary: "Destroy an empty container; with -f, its subcontainers and processes too.",
        minArguments: 1, maxArguments: 1,
        action: .withApi(run))

    @Sendable
    static func run(_ api: ContainerApi, _ call: Invocation) throws -> CommandOutput {
        let container = try api.get(call.arguments[0])
        // D7: the root holds every task on the machine; never destroy it,
        // with or without -f (the library refuses too; say so up front).
        if container.name.isRoot {
            throw LmctfyError.failedPrecondition("Destroying the root container \"/\" is not allowed")
        }
        if !call.flags.force {
            // Without -f, only an empty container goes: the recursive
            // destroy below would otherwise kill what is running in it.
            let name = container.name
            if !(try container.subcontainers(recursive: false)).isEmpty {
                throw LmctfyError.failedPrecondition(
                    "Subcontainers found in \"\(name)\"; use -f to destroy them too")
            }
            if !(try container.processes(recursive: false)).isEmpty {
                throw LmctfyError.failedPrecondition(
                    "Processes found in \"\(name)\"; use -f to kill them")
            }
            if !(try container.threads(recursive: false)).isEmpty {
                throw LmctfyError.failedPrecondition(
                    "Tourist threads found in \"\(name)\"; use -f to kill them")
            }
        }
        try api.destroy(container.name)
        return .none
    }
}
