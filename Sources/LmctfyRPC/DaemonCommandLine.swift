// The command line the agent and the controller share:
// `PROGRAM [--config FILE] [--check-config] [--log-level LEVEL]`.
import Glibc
import LmctfyProto

public struct DaemonCommandLine: Sendable {
    public var configPath: String
    public var checkOnly = false
    public var logLevel: AgentLogLevel?

    /// Parses `arguments` (without the program name); prints `usage` and
    /// exits 0 for -h/--help, and exits 3 (via `fail`) for anything wrong.
    public static func parse(_ arguments: [String], defaultConfig: String, usage: String,
                             fail: (String) -> Never) -> DaemonCommandLine {
        var line = DaemonCommandLine(configPath: defaultConfig)
        var args = arguments[...]
        while let a = args.popFirst() {
            switch a {
            case "--config":
                guard let v = args.popFirst() else { fail("--config needs a file") }
                line.configPath = v
            case "--check-config": line.checkOnly = true
            case "--log-level":
                guard let v = args.popFirst() else { fail("--log-level needs a level") }
                guard let l = ["trace": AgentLogLevel.logTrace, "debug": .logDebug, "info": .logInfo,
                               "warning": .logWarning, "error": .logError][v] else { fail("unknown log level \"\(v)\"") }
                line.logLevel = l
            case "-h", "--help":
                print(usage, terminator: "")
                exit(0)
            default:
                fail("unknown argument \"\(a)\"\n\(usage)")
            }
        }
        return line
    }
}
