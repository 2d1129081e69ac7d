// `lmctfy run [-n] <name> <command...>`: one word with a space runs through
// /bin/sh -c (as the original); otherwise the words are argv, found in PATH
// (D16). Everything after the container name is the command (D1), flags too
// (a `--` first is dropped).
// Without -n lmctfy becomes the command (its exit status is the command's);
// with -n the command runs detached (D6) and its pid is printed.
// `run --create SPEC [--rm] <name> ...` makes the container for the command
// first (SPEC as create takes it, inline) and, when the command cannot be
// started, destroys it again; with --rm it is destroyed when the command
// ends, as `docker run --rm` (with --create, lmctfy waits for the command
// instead of becoming it, to be there to destroy it). Through an agent
// (lmctl) the three are one call, and --rm works with -n too: the agent
// destroys the container when it sees the command end.
import LmctfyBackend
import LmctfyProto
import LmctfySystem

enum RunCommand {
    static let leaf = Leaf(
        name: "run",
        synopsis: "[-n | -i | -t] [--create <container spec> [--tier <tier>] [--rm]] <container name> [--] <command> [<arguments>...]",
        summary: "Run a command in a container (-n: in the background, printing its pid; -i: reading this stdin, through an agent too; -t: on a terminal, through an agent one it makes, with this terminal's keys and size; --create: in a new container, made with the spec; --rm: destroyed when the command ends).",
        minArguments: 2, maxArguments: nil,
        action: .withApi(run))

    /// The command's argv from the words after the container name. A `--`
    /// first is dropped (`run c -- ls -l`, as other tools take it): no
    /// program is named `--`.
    static func argv(_ words: [String]) -> [String] {
        let words = words.first == "--" && words.count > 1 ? Array(words.dropFirst()) : words
        if words.count == 1 && words[0].contains(" ") { return ["/bin/sh", "-c", words[0]] }
        return words
    }

    @Sendable
    static func run(_ api: any ContainerBackend, _ call: Invocation) throws -> CommandOutput {
        let command = argv(Array(call.arguments.dropFirst()))
        // A detached command's pid is its only handle: where it could not be
        // printed, nothing is started (it ran on, unreported, exit 15).
        if call.flags.noWait, let sink = call.stdout as? FileDescriptorSink, let why = sink.unwritable {
            throw LmctfyError.failedPrecondition("the pid of a detached run could not be printed (\(why)): nothing was started")
        }
        if call.flags.stdin {
            guard !call.flags.noWait else {
                throw LmctfyError.invalidArgument("-i gives a foreground command this stdin: a detached one (-n) reads /dev/null")
            }
            try api.attachStdin()
        }
        if call.flags.tty {
            guard !call.flags.noWait else {
                throw LmctfyError.invalidArgument("-t runs a foreground command on a terminal: a detached one (-n) has none")
            }
            try api.attachTerminal()
        }
        let outcome: RunOutcome
        if let text = call.flags.createSpec {
            let spec = try SpecParser.parse(ContainerSpec.self, Array(text.utf8), what: "container spec of --create")
            outcome = try api.runInNewContainer(call.arguments[0], spec: spec, tier: call.flags.tier, argv: command,
                                                detached: call.flags.noWait, remove: call.flags.remove)
        } else {
            if call.flags.remove {
                throw LmctfyError.invalidArgument("--rm removes the container a run made for its command: give --create SPEC too")
            }
            if call.flags.tier != nil {
                throw LmctfyError.invalidArgument("--tier is the tier of the container a run makes for its command: give --create SPEC too")
            }
            outcome = try api.run(call.arguments[0], argv: command, detached: call.flags.noWait)
        }
        switch outcome {
        case .started(let pid):
            var out = CommandOutput(entries: [.pair(key: "pid", value: String(pid))], json: "{\"pid\":\(pid)}")
            // Its pid lost in the writing (a full disk): the command ran on,
            // unreported (the CLI probe). Killed where this machine can.
            out.undoIfUnwritten = {
                api.abandonDetached(pid) ? "the pid of the detached run could not be printed: the command (pid \(pid)) was killed\n" : nil
            }
            return out
        case .exited, .killed:
            var out = CommandOutput.none
            out.exitStatus = outcome.shellStatus ?? 0
            return out
        }
    }
}
