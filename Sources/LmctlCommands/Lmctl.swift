// `lmctl`: the lmctfy verbs, run by an agent. The same argument syntax,
// output styles and exit codes as lmctfy (it is the same dispatcher with a
// RemoteBackend), plus `info`; the exit status is the status code the agent
// sent (16 when it refuses to authenticate us).
//
//   lmctl [--agent unix:///run/lmctfy/agent.sock | tcp://HOST:PORT]
//         [--key-file FILE] <lmctfy verb> ...
//   lmctl [--agent ...] info
import Glibc
import LmctfyCommands
import LmctfyProto
import LmctfyRPC
import LmctfySystem

/// The `lmctl` command line: the lmctfy verbs (and `info`) run by an agent
/// through a RemoteBackend; exits with the status code the agent sent.
public enum LmctlCLI {
    /// The agent dialled when `--agent` is not given: the default Unix socket.
    public static let defaultAgent = "unix:///run/lmctfy/agent.sock"

    /// The `lmctl` executable: runs the process's arguments against stdout and
    /// stderr (file descriptors 1 and 2), then exits with the status.
    public static func main() -> Never {
        let status = run(Array(CommandLine.arguments.dropFirst()),
                         stdout: FileDescriptorSink(fd: 1), stderr: FileDescriptorSink(fd: 2))
        exit(status)
    }

    /// Runs one command line (without the program name): `--agent` and
    /// `--key-file` first, then an lmctfy verb or `info`. Returns the exit
    /// status: 3 for a bad flag; otherwise as lmctfy's dispatcher decides, with
    /// the status code the agent sent for a call that failed.
    public static func run(_ args: [String], stdout: any ByteSink, stderr: any ByteSink) -> Int32 {
        var agent = defaultAgent
        var keyFile: String?
        var rest = args[...]
        while let first = rest.first, first.hasPrefix("--agent") || first.hasPrefix("--key-file") {
            let (flag, inline) = first.contains("=")
                ? (String(first.prefix { $0 != "=" }), String(first.drop { $0 != "=" }.dropFirst()))
                : (first, nil)
            rest = rest.dropFirst()
            guard let value = inline ?? rest.first.map({ String($0) }) else {
                stderr.write(Array("\(flag) needs a value\n".utf8))
                return StatusCode.invalidArgument.rawValue
            }
            if inline == nil { rest = rest.dropFirst() }
            if flag == "--agent" { agent = value } else if flag == "--key-file" { keyFile = value } else {
                stderr.write(Array("Unknown flag \"\(flag)\"\n".utf8))
                return StatusCode.invalidArgument.rawValue
            }
        }
        let (agentAddress, keys) = (agent, keyFile)
        // A call that loses its agent (UNAVAILABLE) is retried once on a new
        // connection where that is safe (RemoteBackend; PROTOCOL.md 6.1).
        let dialAgent: @Sendable () throws(LmctfyError) -> RpcClient = { () throws(LmctfyError) in
            try dial(agentAddress, keyFile: keys)
        }
        let warnings = SendableSink(stderr)
        let connect: @Sendable () throws(LmctfyError) -> RemoteBackend = { () throws(LmctfyError) in
            RemoteBackend(client: try dialAgent(), reconnect: dialAgent) { why in
                warnings.sink.write(Array("lmctl: \(why)\n".utf8))
            }
        }
        let words = Array(rest)
        if words.first(where: { !$0.hasPrefix("-") }) == "info" {
            return info(words, connect: connect, stdout: stdout, stderr: stderr)
        }
        if words.first == "events" {
            return EventsCommand.run(Array(words.dropFirst()), dial: dialAgent, stdout: stdout, stderr: stderr)
        }
        if words.first == "stats", words.contains("-f") || words.contains("--follow") {
            // Following a container's stats: its STATS events.
            let rest = words.dropFirst().filter { $0 != "-f" && $0 != "--follow" }
            return EventsCommand.run(["-f", "--kind", "STATS"] + rest, dial: dialAgent, stdout: stdout, stderr: stderr)
        }
        // The agent's machine is the one every verb acts on, `init` included.
        let environment = CLIEnvironment(
            makeBackend: { () throws(LmctfyError) in try connect() },
            initMachine: { (spec: InitSpec) throws(LmctfyError) in try connect().initMachine(spec) })
        return LmctfyCLI.run(arguments: words, stdout: stdout, stderr: stderr, environment: environment)
    }

    /// The caller's stderr, for the retry notice (lmctl runs one verb on one
    /// thread, so the sink is never written from two at once).
    struct SendableSink: @unchecked Sendable {
        let sink: any ByteSink
        init(_ sink: any ByteSink) { self.sink = sink }
    }

    /// unix:///path or tcp://host:port (with a key file: its first key).
    static func dial(_ agent: String, keyFile: String?) throws(LmctfyError) -> RpcClient {
        if agent.hasPrefix("unix://") {
            return try RpcClient.connect(unixPath: String(agent.dropFirst("unix://".count)), name: "lmctl")
        }
        if agent.hasPrefix("tcp://") {
            let hostPort = agent.dropFirst("tcp://".count)
            guard let colon = hostPort.lastIndex(of: ":"), let port = UInt16(hostPort[hostPort.index(after: colon)...]) else {
                throw .invalidArgument("--agent \(agent): expected tcp://HOST:PORT")
            }
            guard let keyFile else { throw .invalidArgument("--agent \(agent) needs --key-file") }
            let keys = try KeyFile.load(keyFile, requirePrivate: false)
            let (id, key) = keys.sorted { $0.key < $1.key }[0]
            return try RpcClient.connect(host: String(hostPort[..<colon]), port: port, keyId: id, key: key, name: "lmctl")
        }
        throw .invalidArgument("--agent \(agent): expected unix:///PATH or tcp://HOST:PORT")
    }

    static func info(_ words: [String], connect: () throws(LmctfyError) -> RemoteBackend,
                     stdout: any ByteSink, stderr: any ByteSink) -> Int32 {
        let json = words.contains("json") && words.contains("-o")
        do {
            let i = try connect().machineInfo()
            if json {
                stdout.write(Array((i.jsonString() + "\n").utf8))
            } else {
                let pairs: [(String, String)] = [
                    ("hostname", i.hostname ?? ""), ("kernel", i.kernel ?? ""),
                    ("cgroup_version", String(i.cgroupVersion ?? 0)), ("cpus", String(i.cpus ?? 0)),
                    ("memory_bytes", String(i.memoryBytes ?? 0)), ("agent_version", i.agentVersion ?? ""),
                    ("boot_id", i.bootId ?? ""),
                ]
                stdout.write(Array(pairs.map { "\($0.0)=\"\(TextFormat.cEscape(Array($0.1.utf8)))\"\n" }.joined().utf8))
            }
            return 0
        } catch {
            stderr.write(Array("Command exited with error message: \(error.code.rawValue): \(error.message)\n".utf8))
            return error.code.rawValue
        }
    }
}
