// `lmctfy pause <name>` / `lmctfy resume <name>`: the freezer, waiting until
// the kernel reports the new state; subcontainers follow (the kernel's
// freezers are hierarchical). The root is refused (D7).
import LmctfyBackend

enum FreezeCommand {
    static let pause = leaf("pause", "Freeze every task in a container and its subcontainers.", frozen: true)
    static let resume = leaf("resume", "Thaw a paused container.", frozen: false)

    static func leaf(_ name: String, _ summary: String, frozen: Bool) -> Leaf {
        Leaf(name: name, synopsis: "<container name>", summary: summary, minArguments: 1, maxArguments: 1,
             action: .withApi { api, call in
                 try api.setPaused(call.arguments[0], frozen)
                 return .none
             })
    }
}
