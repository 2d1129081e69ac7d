// `lmctfy detect [<pid/tid>]`
import Glibc
import LmctfyBackend
import LmctfyProto
import LmctfySystem

enum DetectCommand {
    static let leaf = Leaf(
        name: "detect",
        synopsis: "[<pid/tid>]",
        summary: "Print the container a task is in (default: the calling shell).",
        minArguments: 0, maxArguments: 1,
        action: .withApi(run))

    @Sendable
    static func run(_ api: any ContainerBackend, _ call: Invocation) throws -> CommandOutput {
        var pid: pid_t?
        if let arg = call.argument(0) {
            guard let parsed = pid_t(arg), parsed >= 0 else {
                throw LmctfyError.invalidArgument("\"\(arg)\" is not a PID or TID")
            }
            pid = parsed
        }
        let name = try api.detect(pid)
        return CommandOutput(
            entries: [.pair(key: "name", value: name)],
            json: "{\"name\":\(JSONFormat.quote(name))}")
    }
}
