// Command-line flags (D1): the original's letters and `--lmctfy_*` long
// forms, but read only before a command's positional arguments, so that
// whatever follows a container name (a spec, later a command for `run`) is
// never mistaken for a flag. Every flag is accepted by every command, as in
// the original; a command ignores the ones it has no use for.

/// A mistake in the command line itself: exit 3 with the usage line.
struct UsageError: Error {
    let message: String
}

struct Flags: Sendable {
    var configFile: String?
    var force = false
    var recursive = false
    var binary = false
    var noWait = false
    var style = OutputStyle.pairs
    var help = false
    var version = false
    /// `--lmctfy_version_long`: the version with what this build is.
    var versionLong = false
    /// `--lmctfy_print_cmd_tree[_long]`: the command tree (long: with each
    /// verb's synopsis and summary) instead of running anything.
    var commandTree: CommandTreeStyle?
    /// `--lmctfy_output_fd=N`: a command's output (and asked-for help) goes
    /// to descriptor N instead of standard output.
    var outputFd: Int32?
    /// `run --create SPEC`: a container made for the command, with this
    /// spec (text format, inline). `run --rm`: destroyed when it ends.
    /// Flags of `run` only (other verbs refuse them).
    var createSpec: String?
    var remove = false
    /// `run -i` (`--stdin`): the command reads this process's stdin; lmctl
    /// sends it to the agent (a local run inherits it anyway).
    var stdin = false
    /// `run -t` (`--tty`): the command runs on a terminal (lmctl: one the
    /// agent makes, this one's keys and size passed on; implies -i).
    var tty = false
    /// `run --create SPEC --tier T`: the new container's tier in the
    /// agent's policy (lmctl).
    var tier: String?

    enum CommandTreeStyle: Sendable { case short, long }

    /// The original's flags for its namespace helpers and its kill loop,
    /// which this implementation has no use for (no nscon or nsinit
    /// binaries; killall freezes, kills and thaws in bounded rounds of its
    /// own, D9): checked and accepted, so that scripts written for the
    /// original keep working, and otherwise without effect (README
    /// "Flags").
    static let acceptedWithoutEffect: [String: Accepted] = [
        "lmctfy_use_namespaces": .bool,
        "nscon_path": .path, "nsinit_path": .path,
        "nsinit_uid": .count, "nsinit_gid": .count,
        "lmctfy_num_tries_for_unkillable": .count, "lmctfy_ms_delay_between_kills": .count,
    ]

    enum Accepted: Sendable { case bool, path, count }

    /// Parses the flag at `args[i]` (which starts with `-` and is not `--`);
    /// returns how many arguments it used (a value may be the next one).
    mutating func parse(_ args: [String], at i: Int) throws(UsageError) -> Int {
        let arg = args[i]
        if arg.hasPrefix("--") { return try parseLong(args, at: i) }
        switch arg {
        case "-b": binary = true
        case "-f": force = true
        case "-h": help = true
        case "-l": style = .long
        // For `run -n` (next issue); accepted by every verb, as in the original.
        case "-n": noWait = true
        case "-i": stdin = true
        case "-t": tty = true
        // The usual spelling of both (docker, kubectl): unambiguous, unlike
        // other combined short flags.
        case "-it", "-ti":
            stdin = true
            tty = true
        case "-p": style = .pairs
        case "-r": recursive = true
        case "-v": style = .values
        case "-V": version = true
        case "-c":
            guard i + 1 < args.count else { throw UsageError(message: "Config file not specified with -c flag.") }
            configFile = args[i + 1]
            return 2
        case "-o":
            guard i + 1 < args.count else { throw UsageError(message: "Output style not specified with -o flag.") }
            style = try Self.style(args[i + 1])
            return 2
        default:
            // The original read `-rf` as `-r` and dropped the rest; guessing
            // either way could turn a careful destroy into a forced one.
            // The hint only where the flag looks like combined short flags.
            let combined = arg.utf8.count > 2 && !arg.hasPrefix("--") && arg.dropFirst().allSatisfy { "bcfhlnoprvV".contains($0) }
            throw UsageError(message: "Unknown flag \"\(arg)\"" + (combined ? " (short flags cannot be combined; use e.g. -r -f)" : ""))
        }
        return 1
    }

    private mutating func parseLong(_ args: [String], at i: Int) throws(UsageError) -> Int {
        let body = args[i].dropFirst(2)
        let name: Substring
        let inlineValue: String?
        if let eq = body.firstIndex(of: "=") {
            name = body[..<eq]
            inlineValue = String(body[body.index(after: eq)...])
        } else {
            name = body
            inlineValue = nil
        }
        // gflags style: a valued flag takes `=value` or the next argument.
        func value() throws(UsageError) -> (String, Int) {
            if let inlineValue { return (inlineValue, 1) }
            guard i + 1 < args.count else { throw UsageError(message: "Flag --\(name) needs a value") }
            return (args[i + 1], 2)
        }
        func bool() throws(UsageError) -> Bool {
            switch inlineValue {
            case nil, "true", "1": return true
            case "false", "0": return false
            default: throw UsageError(message: "Flag --\(name) takes true or false, not \"\(inlineValue!)\"")
            }
        }
        switch name {
        case "help", "lmctfy_print_help": help = try bool()
        case "version", "lmctfy_version": version = try bool()
        case "lmctfy_force": force = try bool()
        case "lmctfy_recursive": recursive = try bool()
        case "lmctfy_binary": binary = try bool()
        case "lmctfy_no_wait": noWait = try bool()
        case "lmctfy_config":
            let (v, used) = try value()
            configFile = v
            return used
        case "lmctfy_output_style":
            let (v, used) = try value()
            style = try Self.style(v)
            return used
        case "create", "lmctfy_create":
            let (v, used) = try value()
            createSpec = v
            return used
        case "rm", "lmctfy_rm": remove = try bool()
        case "stdin", "lmctfy_stdin": stdin = try bool()
        case "tty", "lmctfy_tty": tty = try bool()
        case "tier":
            let (v, used) = try value()
            guard !v.isEmpty else { throw UsageError(message: "Flag --tier needs a value") }
            guard tier == nil else { throw UsageError(message: "Flag --tier given twice") }
            tier = v
            return used
        case "lmctfy_version_long": versionLong = try bool()
        case "lmctfy_print_cmd_tree": if try bool() { commandTree = .short }
        case "lmctfy_print_cmd_tree_long": if try bool() { commandTree = .long }
        case "lmctfy_output_fd":
            let (v, used) = try value()
            guard let fd = Int32(v), fd >= 0 else { throw UsageError(message: "Flag --lmctfy_output_fd takes a descriptor number, not \"\(v)\"") }
            outputFd = fd
            return used
        default:
            guard let kind = Self.acceptedWithoutEffect[String(name)] else {
                throw UsageError(message: "Unknown flag \"\(args[i])\"")
            }
            switch kind {
            case .bool:
                _ = try bool()
            case .path:
                let (v, used) = try value()
                guard v.hasPrefix("/") else { throw UsageError(message: "Flag --\(name) takes an absolute path, not \"\(v)\"") }
                return used
            case .count:
                let (v, used) = try value()
                guard let n = Int64(v), n >= 0 else { throw UsageError(message: "Flag --\(name) takes a number, not \"\(v)\"") }
                return used
            }
        }
        return 1
    }

    private static func style(_ name: String) throws(UsageError) -> OutputStyle {
        guard let style = OutputStyle(rawValue: name) else {
            throw UsageError(message: "invalid style \"\(name)\" (pairs, values, long or json)")
        }
        return style
    }
}

extension LmctfyCLI {
    /// How many words lmctfy's flag at `args[i]` takes (1, or 2 with its
    /// value), nil when it is not one of lmctfy's flags (or is malformed:
    /// the verb's own parse then says why). For a client that reads its
    /// own flags from among lmctfy's (lmctl: `-o json --agent X list`).
    public static func wordsOfFlag(_ args: [String], at i: Int) -> Int? {
        guard i < args.count, args[i].hasPrefix("-"), args[i] != "--", args[i] != "-" else { return nil }
        var scratch = Flags()
        return try? scratch.parse(args, at: i)
    }
}
