// The dispatcher: flags, the walk down the command tree, help and usage,
// argument counts, and turning a verb's result or error into output and an
// exit status (lmctfy-behaviour.md §1.1-1.2, D1, D2, D15).
//
// Hand-written rather than swift-argument-parser: the original's contract
// (exit status = canonical code, usage errors 3, unknown command 5 with the
// deepest menu's usage on stderr, `<leaf> help`, one flag set shared by every
// verb) is not what that library produces, and bending it costs more code
// than this walk.
import Glibc
import LmctfyBackend
import LmctfySystem

/// The `lmctfy` command line: flags, the command tree, help, and the mapping
/// of a verb's result or error onto output and an exit status (the canonical
/// status code; usage errors 3, an unknown command 5).
public enum LmctfyCLI {
    /// The verbs at the top of the command tree (lmctl tells a verb it does
    /// not know from one that needs a host).
    public static let verbs: Set<String> = Set(CommandTree.root.children.map(\.name))

    /// The `lmctfy` executable: the process's arguments and streams, then
    /// exit. `environment` is the machine (the executable wires CL1 in).
    public static func main(environment: CLIEnvironment) -> Never {
        // Arguments as bytes: an inline spec may be binary protobuf, which
        // CommandLine.arguments would repair into different bytes.
        var raw: [[UInt8]] = []
        for i in 1..<Int(CommandLine.argc) {
            guard let p = CommandLine.unsafeArgv[i] else { continue }
            raw.append(Array(UnsafeBufferPointer(start: UnsafeRawPointer(p).assumingMemoryBound(to: UInt8.self),
                                                 count: strlen(p))))
        }
        let stdout = FileDescriptorSink(fd: 1), stderr = FileDescriptorSink(fd: 2)
        let status = run(rawArguments: raw, stdout: stdout, stderr: stderr, environment: environment)
        exit(FileDescriptorSink.exitStatus(status, program: "lmctfy", stdout: stdout, stderr: stderr))
    }

    /// Runs one command line (without the program name) and returns the exit
    /// status. Output goes to `stdout` only on success; diagnostics to `stderr`.
    public static func run(
        arguments: [String], stdout: any ByteSink, stderr: any ByteSink, environment: CLIEnvironment
    ) -> Int32 {
        run(rawArguments: arguments.map { Array($0.utf8) }, stdout: stdout, stderr: stderr, environment: environment)
    }

    /// Runs one command line given as raw bytes (without the program name),
    /// so an inline binary protobuf spec arrives unchanged, and returns the exit
    /// status. Output goes to `stdout` only on success; diagnostics to `stderr`.
    public static func run(
        rawArguments: [[UInt8]], stdout standardOutput: any ByteSink, stderr: any ByteSink, environment: CLIEnvironment
    ) -> Int32 {
        let args = rawArguments.map { String(decoding: $0, as: UTF8.self) }
        var flags = Flags()
        var menu = CommandTree.root
        var path: [String] = []
        var leaf: Leaf?
        var firstPositional = args.count
        var optionsEnded = false
        var unknownWord: String?
        var helpWord = false

        // Flags are read until the first positional argument of the verb
        // (D1), interleaved with the words that lead to it.
        var i = 0
        scan: while i < args.count {
            let arg = args[i]
            if !optionsEnded && arg.hasPrefix("-") && arg.utf8.count >= 2 {
                if arg == "--" {
                    optionsEnded = true
                    i += 1
                    continue
                }
                do {
                    i += try flags.parse(args, at: i)
                } catch {
                    stderr.write(error.message + "\n")
                    stderr.write(leaf.map { usageLine(environment, path, $0) } ?? "usage: " + commandLine(environment, path) + " <command> [<arguments>]\n")
                    return StatusCode.invalidArgument.rawValue
                }
                continue
            }
            if leaf != nil {
                firstPositional = i
                break scan
            }
            if arg == "help" {
                helpWord = true
                break scan
            }
            guard let child = menu.child(arg) else {
                unknownWord = arg
                break scan
            }
            path.append(arg)
            switch child {
            case .menu(let m): menu = m
            case .leaf(let l): leaf = l
            }
            i += 1
        }

        // --lmctfy_output_fd=N: output to that descriptor, which must be open.
        let stdout: any ByteSink
        var outputFd: FileDescriptorSink?
        if let fd = flags.outputFd {
            guard fcntl(fd, F_GETFD) != -1 else {
                stderr.write("Flag --lmctfy_output_fd=\(fd): descriptor \(fd) is not open\n")
                return StatusCode.invalidArgument.rawValue
            }
            outputFd = FileDescriptorSink(fd: fd)
            stdout = outputFd!
        } else {
            stdout = standardOutput
        }
        func command() -> Int32 {
            // -h and -V win over everything else, as in the original (D2: help
            // that was asked for goes to stdout and succeeds).
            if flags.help {
                stdout.write(leaf.map { usageLine(environment, path, $0) } ?? usage(environment, menu, path))
                return 0
            }
            if flags.version || flags.versionLong {
                stdout.write("\(environment.programName) version \(LmctfyVersion.string)\n")
                if flags.versionLong { stdout.write(LmctfyVersion.details) }
                return 0
            }
            if let style = flags.commandTree {
                stdout.write(commandTree(CommandTree.root, style))
                return 0
            }
            guard let leaf else {
                if helpWord {
                    stdout.write(usage(environment, menu, path))
                    return 0
                }
                // Bare `lmctfy`, a bare menu, or a word that matches nothing.
                if let unknownWord { stderr.write("Unknown command \"\(unknownWord)\"\n") }
                stderr.write(usage(environment, menu, path))
                return StatusCode.notFound.rawValue
            }

            if (flags.createSpec != nil || flags.remove || flags.tier != nil || flags.stdin || flags.tty) && leaf.name != RunCommand.leaf.name {
                stderr.write("Flags --create, --rm, --tier, -i and -t are run's (run [-i] [-t] --create SPEC [--tier T] [--rm] NAME COMMAND...)\n")
                stderr.write(usageLine(environment, path, leaf))
                return StatusCode.invalidArgument.rawValue
            }
            let arguments = Array(args[firstPositional...])
            if arguments.first == "help" {
                stdout.write(usageLine(environment, path, leaf))
                return 0
            }
            if arguments.count < leaf.minArguments || arguments.count > (leaf.maxArguments ?? Int.max) {
                stderr.write(arguments.count < leaf.minArguments ? "Missing arguments\n" : "Extraneous arguments\n")
                stderr.write(usageLine(environment, path, leaf))
                return StatusCode.invalidArgument.rawValue
            }

            let call = Invocation(
                arguments: arguments, rawArguments: Array(rawArguments[firstPositional...]),
                flags: flags, environment: environment, stdout: stdout, stderr: stderr)
            let output: CommandOutput
            do {
                switch leaf.action {
                case .withoutApi(let body):
                    // (image import and export report progress too)
                    output = try ProgressLine.around(stderr: stderr) { try body(call) }
                case .withApi(let body):
                    let api: any ContainerBackend
                    do {
                        api = try environment.makeBackend()
                    } catch {
                        stderr.write(environment.reportsInstanceFailure
                            ? "Failed to create a lmctfy instance with error '\(error.message)'\n"
                            : "Command exited with error message: \(error.code.rawValue): \(error.message)\n")
                        return error.code.rawValue
                    }
                    output = try ProgressLine.around(stderr: stderr) { try body(api, call) }
                }
            } catch {
                let failure = statusError(error)
                stderr.write("Command exited with error message: \(failure.code.rawValue): \(failure.message)\n")
                return failure.code.rawValue
            }
            stdout.write(output.render(flags.style))
            if let undo = output.undoIfUnwritten, (stdout as? FileDescriptorSink)?.failure != nil, let said = undo() {
                stderr.write(said)
            }
            return output.exitStatus
        }
        let status = command()
        // Output that could not be written to --lmctfy_output_fd is lost as
        // surely as on a full stdout (which `main` checks): 15, said on stderr.
        guard let outputFd else { return status }
        return FileDescriptorSink.exitStatus(status, program: environment.programName, stdout: outputFd, stderr: stderr)
    }

    /// Library failures keep their code; anything else (a bug, an encoder
    /// error) is UNKNOWN, so the exit status is always a canonical code.
    static func statusError(_ error: any Error) -> LmctfyError {
        error as? LmctfyError ?? LmctfyError(.unknown, String(describing: error))
    }

    // MARK: Usage

    static func commandLine(_ environment: CLIEnvironment, _ path: [String]) -> String {
        ([environment.programName] + path).joined(separator: " ")
    }

    /// `usage: lmctfy list containers [-r] [<container name>]`
    static func usageLine(_ environment: CLIEnvironment, _ path: [String], _ leaf: Leaf) -> String {
        "usage: \(commandLine(environment, path)) \(leaf.synopsis)\n"
    }

    /// A menu's usage: every verb below it with its synopsis and summary;
    /// the root adds the flags and what the exit status means (and what
    /// the environment adds: lmctl's forms, verbs and flags).
    static func usage(_ environment: CLIEnvironment, _ menu: Menu, _ path: [String]) -> String {
        var out = path.isEmpty ? environment.rootHelpHeader ?? "" : ""
        if !path.isEmpty || environment.rootHelpHeader == nil {
            out += "usage: \(commandLine(environment, path)) <command> [<arguments>]\n"
        }
        out += "\nCommands:\n"
        func add(_ node: CommandNode, _ prefix: [String]) {
            switch node {
            case .menu(let m):
                for child in m.children { add(child, prefix + [m.name]) }
            case .leaf(let l):
                out += "  \((prefix + [l.name]).joined(separator: " ")) \(l.synopsis)\n      \(l.summary)\n"
            }
        }
        for child in menu.children { add(child, []) }
        if path.isEmpty {
            out += globalHelp(programName: environment.programName)
            out += environment.rootHelpFooter
        }
        return out
    }

    /// `--lmctfy_print_cmd_tree`: every command word, indented by its
    /// depth; `_long`: each verb with its synopsis and summary too.
    static func commandTree(_ root: Menu, _ style: Flags.CommandTreeStyle) -> String {
        var out = ""
        func add(_ node: CommandNode, _ depth: Int) {
            let indent = String(repeating: "  ", count: depth)
            switch node {
            case .menu(let m):
                out += indent + m.name + "\n"
                for child in m.children { add(child, depth + 1) }
            case .leaf(let l):
                out += indent + l.name + (style == .long ? " \(l.synopsis)\n\(indent)    \(l.summary)\n" : "\n")
            }
        }
        for child in root.children { add(child, 0) }
        return out
    }

    /// lmctfy's flags and exit statuses, as its root help gives them.
    static var globalHelp: String { globalHelp(programName: "lmctfy") }

    static func globalHelp(programName: String) -> String {
        """

        Flags go before a command's arguments (anywhere between the command
        words and the first argument); `--` ends them:
          -b             binary protobuf output (spec, stats)     --lmctfy_binary
          -c <file>      read the spec from a file                --lmctfy_config=<file>
          -f             force: destroy what is inside too        --lmctfy_force
          -n             run in the background                    --lmctfy_no_wait
          -r             recursive (list, killall)                --lmctfy_recursive
          -p             output key="value" lines (the default)   --lmctfy_output_style=pairs
          -v             output values only                       --lmctfy_output_style=values
          -l             output a long table                      --lmctfy_output_style=long
          -o json        output one JSON document                 --lmctfy_output_style=json
          -h, --help     this help (`\(programName) <command> help`: one command's usage)  --lmctfy_print_help
          -V, --version  print the version                        --lmctfy_version, --lmctfy_version_long
          --lmctfy_output_fd=<n>  output to descriptor n instead of standard output
          --lmctfy_print_cmd_tree, --lmctfy_print_cmd_tree_long  every command
        The original's other flags (--nscon_path, ...) are taken and ignored: see lmctfy(1).

        Specs are protobuf text format (e.g. "pids:{limit:100}") or binary.
        Exit status: 0 on success, otherwise the canonical status code
        (3 INVALID_ARGUMENT, 5 NOT_FOUND, 6 ALREADY_EXISTS, 7 PERMISSION_DENIED,
        8 RESOURCE_EXHAUSTED, 9 FAILED_PRECONDITION, 12 UNIMPLEMENTED, 13 INTERNAL,
        14 UNAVAILABLE, ...).

        """
    }
}
