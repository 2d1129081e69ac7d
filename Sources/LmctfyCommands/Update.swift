// `lmctfy update diff|replace [-c <file>] <name> [<spec>]`
import LmctfyBackend
import LmctfyProto

enum UpdateCommand {
    static let diff = leaf("diff", .diff, "Write the fields the ContainerSpec gives; keep the rest.")
    static let replace = leaf(
        "replace", .replace, "Make the ContainerSpec the whole state: every isolated resource, omitted fields reset.")

    private static func leaf(_ name: String, _ policy: UpdatePolicy, _ summary: String) -> Leaf {
        Leaf(
            name: name,
            synopsis: "[-c <config file>] <container name> [<container spec>]",
            summary: summary,
            minArguments: 1, maxArguments: 2,
            action: .withApi { api, call in
                // The spec is parsed before the container is looked up, as in
                // the original: a bad spec is reported even for a missing name.
                let spec = try call.spec(ContainerSpec.self, inlineAt: 1, what: "container config", reportTextError: false)
                try api.update(call.arguments[0], spec: spec, policy: policy)
                return .none
            })
    }
}
