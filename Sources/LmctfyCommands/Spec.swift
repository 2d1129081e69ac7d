// `lmctfy spec [-b] [<name>]`
import LmctfyBackend
import LmctfySystem

enum SpecCommand {
    static let leaf = Leaf(
        name: "spec",
        synopsis: "[-b] [<container name>]",
        summary: "Print a container's ContainerSpec as the kernel has it (default: the calling shell's container).",
        minArguments: 0, maxArguments: 1,
        action: .withApi(run))

    @Sendable
    static func run(_ api: any ContainerBackend, _ call: Invocation) throws -> CommandOutput {
        try call.checkBinaryOrJSON()
        return try .message(try api.spec(call.argument(0)), binary: call.flags.binary)
    }
}

extension Invocation {
    /// -b and -o json both choose the whole output; refuse the ambiguity.
    func checkBinaryOrJSON() throws(LmctfyError) {
        if flags.binary && flags.style == .json {
            throw .invalidArgument("-b (binary) and -o json cannot be used together")
        }
    }
}
