// `lmctfy stats summary|full [-b] [<name>]`
import LmctfyBackend

enum StatsCommand {
    static let summary = leaf("summary", .summary, "Print a container's ContainerStats: the usual fields")
    static let full = leaf("full", .full, "Print a container's ContainerStats: every field")

    private static func leaf(_ name: String, _ type: StatsType, _ summary: String) -> Leaf {
        Leaf(
            name: name,
            synopsis: "[-b] [<container name>]",
            summary: summary + " (default: the calling shell's container).",
            minArguments: 0, maxArguments: 1,
            action: .withApi { api, call in
                try call.checkBinaryOrJSON()
                return try .message(try api.stats(call.argument(0), type: type), binary: call.flags.binary)
            })
    }
}
