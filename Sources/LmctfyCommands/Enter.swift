// `lmctfy enter <name> [<tid>...]`: moves the given tasks, or the calling
// shell (lmctfy's parent), into the container.
import Glibc
import LmctfyBackend
import LmctfySystem

enum EnterCommand {
    static let leaf = Leaf(
        name: "enter",
        synopsis: "<container name> [<tid>...]",
        summary: "Move tasks (default: the calling shell) into a container.",
        minArguments: 1, maxArguments: nil,
        action: .withApi(run))

    @Sendable
    static func run(_ api: any ContainerBackend, _ call: Invocation) throws -> CommandOutput {
        var tids: [pid_t] = []
        for word in call.arguments.dropFirst() {
            // The original reports a bad TID as FAILED_PRECONDITION. Digits
            // only ("+5" was taken as 5, " 5" refused).
            guard word.isDecimalDigits, let tid = pid_t(word), tid > 0 else {
                throw LmctfyError.failedPrecondition("\"\(word)\" is not a valid TID")
            }
            tids.append(tid)
        }
        // Ctrl-C (SIGTERM, SIGHUP) waits for the moves to end, then ends
        // lmctfy as it would have: between two of a task's writes it left
        // the task half in (the CLI probe; the tree's journal completes a
        // move that SIGKILL cuts short).
        let interrupted = try InterruptWatch.around { (interrupted: () -> Bool) throws(LmctfyError) -> Bool in
            try api.enter(call.arguments[0], tids: tids)
            return interrupted()
        }
        if interrupted { InterruptWatch.dieOfInterrupt() }
        return .none
    }
}
