// `lmctl`: the lmctfy verbs, run by an agent. The same argument syntax,
// output styles and exit codes as lmctfy (it is the same dispatcher with a
// RemoteBackend), plus `info`; the exit status is the status code the agent
// sent (16 when it refuses us).
//
//   lmctl [--agent unix:///run/lmctfy/agent.sock | tcp://HOST:PORT]
//         [--key-file FILE] [--cert FILE --key FILE] [--ca FILE] <lmctfy verb> ...
//
// On TCP, --ca (with --cert and --key: mutual certificates; with --key-file
// alone: a shared key inside TLS) makes the connection TLS 1.3 (PROTOCOL.md
// section 3.1); without --ca it is plaintext, which agents refuse unless
// their config allows it (`info` then warns).
//   lmctl [--agent ...] info
//
// At a controller (lmctfy-controller; PROTOCOL.md section 9) the same verbs
// run on the host a call names (Frame.host):
//
//   lmctl --controller unix://PATH|tcp://HOST:PORT [--key-file FILE] hosts [-o json] [SELECTOR]
//   lmctl --controller ... --host NAME <verb> ...        that host
//   lmctl --controller ... --hosts SELECTOR <verb> ...   every host ListHosts(SELECTOR) returns
//   lmctl --controller ... create --anywhere [--tier T] NAME SPEC   the least committed host that admits it
//
// With --hosts the verb runs on each host in turn (sorted by name): its
// output follows a line `== NAME` (with -o json each JSON object gains a
// "host" field instead), its diagnostics on stderr start with `NAME: `, and
// the exit status is the highest of the hosts' statuses (0 when all
// succeeded). `events -f` (and `stats -f`) follow every host at once
// instead. `events` lines name their host wherever one is named: text lines
// start with it, JSON lines carry "host".
import Glibc
import LmctfyCommands
import LmctfyProto
import LmctfyRPC
import LmctfySystem

/// The `lmctl` command line: the lmctfy verbs (and `info`) run by an agent
/// through a RemoteBackend, directly or routed by a controller; exits with
/// the status code the agent (or the controller) sent.
public enum LmctlCLI {
    /// The agent dialled when neither `--agent` nor `--controller` is given:
    /// the default Unix socket.
    public static let defaultAgent = "unix:///run/lmctfy/agent.sock"

    static let usage = """
        usage: lmctl [--agent unix://PATH|tcp://HOST:PORT] [--key-file FILE] [--cert FILE --key FILE] [--ca FILE]
                     <lmctfy verb> ... | info | events ...
               lmctl [--agent ...] snapshot export NAME [-o FILE] [--text] | snapshot import FILE [--name N] [--start]
               lmctl [--agent ...] migrate NAME --to unix://PATH|tcp://HOST:PORT [--to-key-file FILE] [--timeout S] [--force]
               lmctl [--agent ...] checkpoint NAME DIR [--leave-running] | restore DIR [--name N]
               lmctl [--agent ...] top [--once] [-r] [--sort cpu|mem|procs|name] [NAME]
               lmctl --controller ... migrate NAME --from HOST --to HOST [--timeout S] [--force]
               lmctl --controller unix://PATH|tcp://HOST:PORT [--key-file FILE] hosts [-o json] [SELECTOR]
               lmctl --controller ... (--host NAME | --hosts SELECTOR) <lmctfy verb> ... | info | events ...
        """

    /// The `lmctl` executable: runs the process's arguments against stdout and
    /// stderr (file descriptors 1 and 2), then exits with the status.
    public static func main() -> Never {
        let stdout = FileDescriptorSink(fd: 1), stderr = FileDescriptorSink(fd: 2)
        let status = run(Array(CommandLine.arguments.dropFirst()), stdout: stdout, stderr: stderr)
        exit(FileDescriptorSink.exitStatus(status, program: "lmctl", stdout: stdout, stderr: stderr))
    }

    /// lmctl's own flags, read before the verb (and, for `events`, among its
    /// words too), and the words left for the verb.
    struct Options {
        var agent: String?
        var controller: String?
        var keyFile: String?
        /// `--timeout`: the deadline of each unary call, in ms.
        var timeoutMs: UInt32?
        /// TLS (tcp:// only): our certificate and key, and the CA the peer's must chain to.
        var cert: String?
        var key: String?
        var ca: String?
        var host: String?
        var hosts: String?
        var words: [String] = []
    }

    static let ownFlags: Set<String> = ["--agent", "--controller", "--key-file", "--cert", "--key", "--ca", "--host", "--hosts", "--timeout"]

    /// A `--timeout` value: seconds (`30`, `1.5`), or with a unit (`500ms`,
    /// `30s`, `2m`); at least 1 ms, at most a day.
    static func timeoutMs(_ text: String) throws(LmctfyError) -> UInt32 {
        var number = Substring(text)
        var scale = 1000.0
        for (suffix, s) in [("ms", 1.0), ("s", 1000.0), ("m", 60_000.0)] where number.hasSuffix(suffix) {
            number = number.dropLast(suffix.count)
            scale = s
            break
        }
        guard let v = Double(number), v.isFinite, v > 0, v * scale >= 1, v * scale <= 86_400_000 else {
            throw .invalidArgument("--timeout \"\(text)\": a duration such as 30, 30s, 500ms or 2m (1 ms to a day)")
        }
        return UInt32(v * scale)
    }

    /// lmctl's verbs besides lmctfy's command tree. The manual (lmctl.1)
    /// and the shell completion are checked against this list and
    /// `ownFlags` by the tests, so a verb added here must be added there.
    static let ownVerbs: [String] = ["info", "events", "hosts", "top"] + MovingCommands.verbs.sorted()

    /// What lmctl's help says of its own verbs, and of its own forms of
    /// lmctfy's `create` and `stats`: the synopsis (without `lmctl`), then
    /// what it does. The root help lists them after lmctfy's verbs; a verb's
    /// own help (`lmctl VERB --help`, `-h`, or `help` right after the verb)
    /// prints its lines.
    static let ownVerbHelp: [(verb: String, synopsis: String, summary: String)] = [
        ("info", "info [-o json]",
         "The agent's machine, version, boot id and warnings, then its policy's capacity and commitments."),
        ("events", "events [-f] [--after BOOT:SEQ] [--kind KIND ...] [-r] [-o json] [NAME]",
         "The agent's event log (-f: and the live events; --after: resume after an event printed earlier)."),
        ("stats", "stats -f [-o json] [NAME]",
         "Follow the STATS samples: cpu time, memory, working set, processes."),
        ("top", "top [--once] [-r] [--sort cpu|mem|procs|name] [NAME]",
         "A live view of the containers below NAME (default /; -r: every descendant)."),
        ("create", "create [--tier TIER] [--dry-run] [--anywhere] [-c <config file>] <container name> [<container spec>]",
         "Create in a tier of the agent's policy (--dry-run: print the admission answer; --anywhere, at a controller: on the least committed host that admits it)."),
        ("snapshot", "snapshot export NAME [-o FILE] [--text]",
         "A container's snapshot: binary, or protobuf text."),
        ("snapshot", "snapshot import FILE [--name N] [--start]",
         "Re-create a container from a snapshot (FILE - is standard input)."),
        ("migrate", "migrate NAME --to unix://PATH|tcp://HOST:PORT [--to-key-file FILE] [--timeout SECONDS] [--force]",
         "Move a container to another agent, within --timeout (30 s) (at a controller: migrate NAME --from HOST --to HOST)."),
        ("checkpoint", "checkpoint NAME DIR [--leave-running]",
         "A CRIU checkpoint of a container's processes."),
        ("restore", "restore DIR [--name N]",
         "Restore a checkpoint."),
        ("hosts", "hosts [-o json] [SELECTOR | --remove NAME]",
         "At a controller: its hosts, with each connected host's policy; --remove takes a disconnected one out."),
    ]

    /// `usage: lmctl SYNOPSIS` of a verb's first line in ownVerbHelp (what
    /// its refusals print, so help and refusal say the same).
    static func usageLine(_ verb: String) -> String {
        "usage: lmctl " + (ownVerbHelp.first { $0.verb == verb }?.synopsis ?? verb)
    }

    /// The root help's part after lmctfy's verbs and flags: lmctl's own
    /// verbs and flags, and what its exit status is.
    static let rootHelpFooter: String = {
        var out = "\nlmctl's own verbs (and forms of create and stats):\n"
        for h in ownVerbHelp { out += "  \(h.synopsis)\n      \(h.summary)\n" }
        out += """

            lmctl's flags, before the verb:
              --agent unix://PATH|tcp://HOST:PORT       the agent (default \(defaultAgent))
              --controller unix://PATH|tcp://HOST:PORT  a controller instead of an agent
              --key-file FILE      on TCP, the shared key to authenticate with
              --cert FILE --key FILE   our TLS certificate and key (mutual certificates; need --ca)
              --ca FILE            the CA the peer's certificate must chain to: TCP becomes TLS 1.3
              --host NAME          at a controller: run the verb on that host
              --hosts SELECTOR     at a controller: on every host whose labels match (k=v,k2=v2), in turn
              --timeout DURATION   each call's deadline, retries included (30, 30s, 500ms, 2m; not a follow's or a run's)

            The exit status is the status code the agent or the controller sent
            (14 when it cannot be reached, 16 when it refuses the caller).

            """
        return out
    }()

    /// The usage of one of lmctl's own verbs (or own forms) when the words
    /// ask for it: `-h` or `--help` after the verb, or `help` right after
    /// it; nil otherwise, and for lmctfy's verbs, whose help lmctfy's
    /// dispatcher gives. `create` and `stats` are lmctfy's verbs too:
    /// their help here adds lmctl's forms to lmctfy's usage.
    static func ownVerbUsage(_ words: [String]) -> String? {
        guard let verb = commandWord(words), let at = words.firstIndex(of: verb) else { return nil }
        let after = words[(at + 1)...]
        // `help` right after the verb, or after its form (`snapshot export
        // help`, `stats -f help`: they asked the agent about "/help").
        let forms: Set<String> = ["export", "import", "-f", "--follow"]
        let firstWord = after.first { !forms.contains($0) }
        guard after.contains("-h") || after.contains("--help") || firstWord == "help" else { return nil }
        var lines = ownVerbHelp.filter { $0.verb == verb }
        // `snapshot export --help`: that form's line alone.
        let named = lines.filter { h in after.contains { h.synopsis.hasPrefix("\(verb) \($0) ") } }
        if !named.isEmpty { lines = named }
        // `stats summary --help` and `stats full --help` are lmctfy's alone.
        guard !lines.isEmpty, verb != "stats" || !after.contains(where: { $0 == "summary" || $0 == "full" }) else { return nil }
        return lines.map { "usage: lmctl \($0.synopsis)\n      \($0.summary)\n" }.joined()
    }

    /// Reads `--agent`, `--controller`, `--key-file`, `--host` and `--hosts`
    /// (each `--flag VALUE` or `--flag=VALUE`) from the front of `args`.
    static func parseOptions(_ args: [String]) throws(LmctfyError) -> Options {
        var o = Options()
        var rest = args[...]
        var given: Set<String> = []
        func take(_ flag: String, _ value: String) throws(LmctfyError) {
            // Each once: `--host a --host b` ran on b alone, silently.
            guard given.insert(flag).inserted else { throw .invalidArgument("\(flag) is given twice") }
            switch flag {
            case "--agent": o.agent = value
            case "--controller": o.controller = value
            case "--key-file": o.keyFile = value
            case "--cert": o.cert = value
            case "--key": o.key = value
            case "--ca": o.ca = value
            case "--host":
                guard !value.isEmpty else { throw .invalidArgument("--host needs a host name") }
                o.host = value
            case "--timeout": o.timeoutMs = try timeoutMs(value)
            default: o.hosts = value
            }
        }
        // Splits `--flag=value`; nil when `word` is not one of lmctl's flags.
        func split(_ word: String) -> (String, String?)? {
            let flag = word.contains("=") ? String(word.prefix { $0 != "=" }) : word
            guard ownFlags.contains(flag) else { return nil }
            return (flag, word.contains("=") ? String(word.drop { $0 != "=" }.dropFirst()) : nil)
        }
        // lmctl's flags before the verb, among lmctfy's flags there too
        // (`-o json --agent X list`: lmctl took `-o` as the end of its own
        // flags, and `--agent` went to the verb; a probe). lmctfy's are
        // kept, in order, for the verb.
        var kept: [String] = []
        while let first = rest.first {
            if let (flag, inline) = split(first) {
                rest = rest.dropFirst()
                guard let value = inline ?? rest.first else { throw .invalidArgument("\(flag) needs a value") }
                if inline == nil { rest = rest.dropFirst() }
                try take(flag, value)
            } else if let used = LmctfyCLI.wordsOfFlag(Array(rest), at: 0) {
                kept += rest.prefix(used)
                rest = rest.dropFirst(used)
            } else {
                break
            }
        }
        o.words = kept + Array(rest)
        // `events` takes --host and --hosts among its own words too (it has
        // no free-form arguments that could look like them).
        if commandWord(o.words) == "events" {
            var kept: [String] = []
            var i = 0
            while i < o.words.count {
                let w = o.words[i]
                if let (flag, inline) = split(w), flag == "--host" || flag == "--hosts" {
                    guard let value = inline ?? (i + 1 < o.words.count ? o.words[i + 1] : nil) else {
                        throw .invalidArgument("\(flag) needs a value")
                    }
                    if inline == nil { i += 1 }
                    try take(flag, value)
                } else {
                    kept.append(w)
                }
                i += 1
            }
            o.words = kept
        }
        if o.agent != nil && o.controller != nil {
            throw .invalidArgument("--agent and --controller cannot be used together")
        }
        if (o.cert == nil) != (o.key == nil) {
            throw .invalidArgument("--cert and --key go together")
        }
        if o.cert != nil && o.ca == nil {
            throw .invalidArgument("--cert needs --ca (the CA the peer's certificate must chain to)")
        }
        if o.cert != nil || o.ca != nil, (o.controller ?? o.agent ?? defaultAgent).hasPrefix("unix://") {
            // They were ignored: a reader's certificate on the Unix socket
            // ran as the socket's user, an admin (the TLS probe).
            throw .invalidArgument("--cert, --key and --ca are for a tcp:// address (TLS); a unix:// peer is who its socket credentials say")
        }
        if o.host != nil && o.hosts != nil {
            throw .invalidArgument("--host and --hosts cannot be used together")
        }
        if o.controller == nil, let flag = o.host != nil ? "--host" : o.hosts != nil ? "--hosts" : nil {
            throw .invalidArgument("\(flag) names hosts of a controller: give --controller unix://PATH|tcp://HOST:PORT")
        }
        return o
    }

    /// Runs one command line (without the program name): lmctl's flags
    /// first, then an lmctfy verb, `info`, `events` or (at a controller)
    /// `hosts`. Returns the exit status: 3 for a bad flag; otherwise as
    /// lmctfy's dispatcher decides, with the status code the agent (or the
    /// controller) sent for a call that failed.
    public static func run(_ args: [String], stdout: any ByteSink, stderr: any ByteSink) -> Int32 {
        let o: Options
        do {
            o = try parseOptions(args)
        } catch {
            stderr.write(Array("lmctl: \(error.message)\n\(usage)\n".utf8))
            return StatusCode.invalidArgument.rawValue
        }
        let (address, keys) = (o.controller ?? o.agent ?? defaultAgent, o.keyFile)
        let flag = o.controller != nil ? "--controller" : "--agent"
        let tls = o.ca.map { TlsFlags(cert: o.cert, key: o.key, ca: $0) }
        let timeout = o.timeoutMs
        let dialPeer: @Sendable () throws(LmctfyError) -> RpcClient = { () throws(LmctfyError) in
            let client = try dial(address, keyFile: keys, tls: tls, flag: flag)
            client.unaryDeadlineMs = timeout
            return client
        }
        let verb = commandWord(o.words)
        // Help that was asked for goes to stdout, succeeds and calls no one
        // (lmctfy-behaviour.md D2), wherever the verb would run.
        if let help = ownVerbUsage(o.words) {
            // `stats`: lmctfy's stats verbs first, then lmctl's -f.
            if verb == "stats" {
                _ = runVerb(["stats", "--help"], dial: dialPeer, host: nil, stdout: stdout, stderr: stderr)
                stdout.write(Array("\n".utf8))
            }
            stdout.write(Array(help.utf8))
            return 0
        }
        guard o.controller != nil else {
            if verb == "hosts" {
                return usageError("hosts lists a controller's hosts: give --controller unix://PATH|tcp://HOST:PORT", stderr)
            }
            return runVerb(o.words, dial: dialPeer, host: nil, stdout: stdout, stderr: stderr)
        }
        if verb == "hosts" {
            if o.host != nil { return usageError("hosts takes a selector (--hosts SELECTOR or hosts SELECTOR), not --host", stderr) }
            return HostsCommand.run(o.words, selector: o.hosts, dial: dialPeer, stdout: stdout, stderr: stderr)
        }
        // top without --host: every (matching) host's containers at once.
        if verb == "top" && o.host == nil {
            guard let w = ownVerbWords(o.words, stderr) else { return StatusCode.invalidArgument.rawValue }
            return TopCommand.run(Array(w.dropFirst()), dial: dialPeer, fleet: o.hosts ?? "", stdout: stdout, stderr: stderr)
        }
        if let host = o.host {
            // The controller chooses the host of --anywhere ("give
            // --controller" was said to a caller who had given it).
            if verb == "create" && o.words.contains("--anywhere") {
                return usageError("create --anywhere lets the controller choose the host: give --host or --anywhere, not both", stderr)
            }
            return runVerb(o.words, dial: routed(dialPeer, to: host), host: host, stdout: stdout, stderr: stderr)
        }
        if let selector = o.hosts {
            return fanOut(o.words, selector: selector, dial: dialPeer, stdout: stdout, stderr: stderr)
        }
        // `events` without a host: the fleet's event stream, every host's
        // events stored once by the controller (each line names its host).
        if let events = eventsWords(o.words) {
            return EventsCommand.run(events, dial: dialPeer, host: nil, stdout: stdout, stderr: stderr)
        }
        // Placement by the hosts' policies (README "Policy").
        if verb == "create" && o.words.contains("--anywhere") {
            return PolicyCommands.createAnywhere(o.words, dial: dialPeer, stdout: stdout, stderr: stderr)
        }
        // Migration between two hosts: lmctl drives it through the controller.
        if verb == "migrate" && o.host == nil && o.hosts == nil {
            guard let w = ownVerbWords(o.words, stderr) else { return StatusCode.invalidArgument.rawValue }
            return MovingCommands.migrateThroughController(w, dial: dialPeer, stdout: stdout, stderr: stderr)
        }
        // Help and version never call anyone; every other verb is a host's.
        let helpWords: Set<String> = ["help", "-h", "--help", "-V", "--version"]
        if verb == nil || o.words.contains(where: { helpWords.contains($0) }) {
            return runVerb(o.words, dial: dialPeer, host: nil, stdout: stdout, stderr: stderr)
        }
        // A verb neither lmctfy nor lmctl has: said so, as at an agent
        // (it was told to give --host, and then that the verb is unknown).
        if let verb, !LmctfyCLI.verbs.contains(verb), !ownVerbHelp.contains(where: { $0.verb == verb }) {
            return runVerb(o.words, dial: dialPeer, host: nil, stdout: stdout, stderr: stderr)
        }
        return usageError("\(verb!) at a controller runs on a host: give --host NAME or --hosts SELECTOR "
                              + "(`lmctl --controller \(address) hosts` lists them)", stderr)
    }

    static func usageError(_ message: String, _ stderr: any ByteSink) -> Int32 {
        stderr.write(Array("lmctl: \(message)\n".utf8))
        return StatusCode.invalidArgument.rawValue
    }

    /// The verb: the first word that is neither a flag nor a flag's value.
    static func commandWord(_ words: [String]) -> String? {
        commandIndex(words).map { words[$0] }
    }

    /// Where the verb is in the words.
    static func commandIndex(_ words: [String]) -> Int? {
        var i = 0
        while i < words.count {
            let w = words[i]
            if w == "--" { return i + 1 < words.count ? i + 1 : nil }
            if ["-o", "-c", "--lmctfy_output_style", "--lmctfy_config", "--create", "--lmctfy_create", "--tier"].contains(w) {
                i += 2
                continue
            }
            if w.hasPrefix("-") && w.count > 1 {
                i += 1
                continue
            }
            return i
        }
        return nil
    }

    /// The words from one of lmctl's own verbs on (top, snapshot, migrate,
    /// checkpoint, restore), which print text and take none of lmctfy's
    /// flags: nil, after a usage error, when such a flag comes before the
    /// verb (`lmctl -o json snapshot export` was read as a restore).
    static func ownVerbWords(_ words: [String], _ stderr: any ByteSink) -> [String]? {
        guard let at = commandIndex(words) else { return words }
        guard at > 0 && words[..<at] != ["--"] else { return Array(words[at...]) }
        let before = words[..<at].joined(separator: " ")
        _ = usageError("\(words[at]) prints text and takes none of lmctfy's flags: drop \"\(before)\" before it", stderr)
        return nil
    }

    /// Whether the words ask for JSON output (`-o json`, `--lmctfy_output_style[=]json`).
    static func wantsJSON(_ words: [String]) -> Bool {
        for (i, w) in words.enumerated() {
            if w == "--lmctfy_output_style=json" { return true }
            if (w == "-o" || w == "--lmctfy_output_style") && i + 1 < words.count && words[i + 1] == "json" { return true }
        }
        return false
    }

    /// The words of `events`, or of `stats -f` as the events it follows
    /// (its STATS samples); nil for any other verb.
    static func eventsWords(_ words: [String]) -> [String]? {
        switch commandWord(words) {
        case "events":
            var w = words
            w.remove(at: w.firstIndex(of: "events")!)
            return w
        case "stats" where words.contains("-f") || words.contains("--follow"):
            var w = words.filter { $0 != "-f" && $0 != "--follow" }
            w.remove(at: w.firstIndex(of: "stats")!)
            return ["-f", "--kind", "STATS", EventsCommand.statsFollowWord] + w
        default:
            return nil
        }
    }

    /// A dialler whose connections send every call to `host`.
    static func routed(_ dial: @escaping @Sendable () throws(LmctfyError) -> RpcClient, to host: String)
        -> @Sendable () throws(LmctfyError) -> RpcClient {
        { () throws(LmctfyError) in
            let client = try dial()
            client.host = host
            return client
        }
    }

    /// One verb on one peer: an agent, or the host `host` through a
    /// controller (then `events` lines name it).
    static func runVerb(_ words: [String], dial: @escaping @Sendable () throws(LmctfyError) -> RpcClient, host: String?,
                        oneOfMany: Bool = false, stdout: any ByteSink, stderr: any ByteSink) -> Int32 {
        let warnings = SendableSink(stderr)
        let out = SendableSink(stdout)
        // A call that loses its agent (UNAVAILABLE) is retried once on a new
        // connection where that is safe (RemoteBackend; PROTOCOL.md 6.1).
        let connect: @Sendable () throws(LmctfyError) -> RemoteBackend = { () throws(LmctfyError) in
            let backend = RemoteBackend(client: try RemoteBackend.dialWaitingForRestart(dial), reconnect: dial) { why in
                warnings.sink.write(Array("lmctl: \(why)\n".utf8))
            }
            // A foreground run's output comes back, as at a terminal.
            backend.output = { stream, bytes in
                let sink = stream == 1 ? out.sink : warnings.sink
                sink.write(bytes)
                return !sink.isBroken
            }
            backend.oneOfMany = oneOfMany
            return backend
        }
        if let events = eventsWords(words) {
            return EventsCommand.run(events, dial: dial, host: host, stdout: stdout, stderr: stderr)
        }
        if commandWord(words) == "info" {
            return info(words, connect: connect, stdout: stdout, stderr: stderr)
        }
        if PolicyCommands.handles(words) {
            return PolicyCommands.create(words, connect: connect, stdout: stdout, stderr: stderr)
        }
        if commandWord(words) == "top" {
            guard let w = ownVerbWords(words, stderr) else { return StatusCode.invalidArgument.rawValue }
            return TopCommand.run(Array(w.dropFirst()), dial: dial, stdout: stdout, stderr: stderr)
        }
        if let verb = commandWord(words), MovingCommands.verbs.contains(verb) {
            guard let w = ownVerbWords(words, stderr) else { return StatusCode.invalidArgument.rawValue }
            return MovingCommands.run(w, dial: dial, stdout: stdout, stderr: stderr)
        }
        // The agent's machine is the one every verb acts on, `init` included.
        var environment = CLIEnvironment(
            makeBackend: { () throws(LmctfyError) in try connect() },
            initMachine: { (spec: InitSpec) throws(LmctfyError) in try connect().initMachine(spec) })
        // Its help and usage lines name lmctl, with lmctl's forms, verbs and flags.
        environment.programName = "lmctl"
        environment.rootHelpHeader = usage + "\n"
        environment.rootHelpFooter = rootHelpFooter
        // An agent that cannot be reached is a failure like any other here,
        // reported as lmctl's own verbs report it.
        environment.reportsInstanceFailure = false
        // `image ...`: the agent's image store, archives streamed in chunks.
        environment.makeImages = { () throws(LmctfyError) in RemoteImages(client: try dial()) }
        return LmctfyCLI.run(arguments: words, stdout: stdout, stderr: stderr, environment: environment)
    }

    /// `--hosts SELECTOR`: the verb on every matching host in turn, or, for
    /// `events -f`, on all of them at once.
    static func fanOut(_ words: [String], selector: String, dial: @escaping @Sendable () throws(LmctfyError) -> RpcClient,
                       stdout: any ByteSink, stderr: any ByteSink) -> Int32 {
        let names: [String]
        do {
            let client = try dial()
            defer { client.close() }
            names = try allHosts(client, selector: selector.isEmpty ? nil : selector).compactMap { $0.identity?.hostName }
        } catch {
            stderr.write(Array("Command exited with error message: \(error.code.rawValue): ListHosts: \(error.message)\n".utf8))
            return error.code.rawValue
        }
        guard !names.isEmpty else {
            stderr.write(Array("Command exited with error message: \(StatusCode.notFound.rawValue): no host matches \"\(selector)\"\n".utf8))
            return StatusCode.notFound.rawValue
        }
        let events = eventsWords(words)
        if let events {
            // Events name their host on every line: no header lines. Bad
            // arguments are reported once, not once per host.
            let options: EventsCommand.Options
            do { options = try EventsCommand.parse(events) } catch {
                stderr.write(Array("Command exited with error message: \(error.code.rawValue): \(error.message)\n".utf8))
                return error.code.rawValue
            }
            if options.follow {
                return followAll(events, names: names, selector: selector, dial: dial, stdout: stdout, stderr: stderr)
            }
        }
        let json = wantsJSON(words)
        if events == nil, let verb = commandWord(words), fanOutTogether.contains(verb), !words.contains("-") {
            return fanOutTogether(words, names: names, json: json, dial: dial, stdout: stdout, stderr: stderr)
        }
        var worst: Int32 = 0
        for name in names {
            if events == nil && !json { stdout.write(Array("== \(name)\n".utf8)) }
            worst = max(worst, runOnHost(words, name, json: events == nil && json, dial: dial, stdout: stdout, stderr: stderr))
        }
        return worst
    }

    /// The verb on host `name` for `--hosts`: its diagnostics start with
    /// `NAME: `, and with `json` each document it prints gains "host".
    static func runOnHost(_ words: [String], _ name: String, json: Bool, dial: @escaping @Sendable () throws(LmctfyError) -> RpcClient,
                          stdout: any ByteSink, stderr: any ByteSink) -> Int32 {
        let err = LinePrefixSink(stderr) { Array("\(name): ".utf8) + $0 }
        let out = json ? LinePrefixSink(stdout) { Array(withHost($0, name)) } : nil
        let status = runVerb(words, dial: routed(dial, to: name), host: name, oneOfMany: true, stdout: out ?? stdout, stderr: err)
        out?.flush()
        err.flush()
        return status
    }

    /// The verbs `--hosts` runs on several hosts at once: each a call or a
    /// few that end by themselves and read no standard input. The others
    /// (a foreground `run`, `notify`, `enter`, moving verbs) go a host at a
    /// time, their output as it comes.
    static let fanOutTogether: Set<String> = [
        "create", "destroy", "update", "list", "stats", "spec", "pause", "resume", "killall", "info", "detect",
    ]

    /// How many hosts `--hosts` runs a verb on at once.
    static let fanOutWidth = 16

    /// `--hosts SELECTOR VERB` for a verb of `fanOutTogether`: up to
    /// `fanOutWidth` hosts at a time, each on a thread and connection of its
    /// own (one at a time, a fleet-wide verb took as long as the fleet was
    /// large). What each host printed is kept and printed in the hosts'
    /// order as soon as that host and those before it are done, so the
    /// output is what one at a time printed.
    static func fanOutTogether(_ words: [String], names: [String], json: Bool,
                               dial: @escaping @Sendable () throws(LmctfyError) -> RpcClient,
                               stdout: any ByteSink, stderr: any ByteSink) -> Int32 {
        struct Done: Sendable {
            var out: [UInt8]
            var err: [UInt8]
            var status: Int32
        }
        let results = Mutexed([Done?](repeating: nil, count: names.count))
        let nextHost = Mutexed(0)
        let finished = names.map { _ in Latch() }
        let workers = (0..<min(fanOutWidth, names.count)).map { _ in
            Threads.start {
                while true {
                    let i = nextHost.locked { n -> Int in
                        defer { n += 1 }
                        return n
                    }
                    guard i < names.count else { return }
                    let out = BufferSink(), err = BufferSink()
                    let status = runOnHost(words, names[i], json: json, dial: dial, stdout: out, stderr: err)
                    let done = Done(out: out.bytes, err: err.bytes, status: status)
                    results.locked { $0[i] = done }
                    finished[i].signal()
                }
            }
        }
        var worst: Int32 = 0
        for (i, name) in names.enumerated() {
            finished[i].wait()
            let done = results.locked { r -> Done in
                defer { r[i] = nil }
                return r[i]!
            }
            if !json { stdout.write(Array("== \(name)\n".utf8)) }
            if !done.out.isEmpty { stdout.write(done.out) }
            if !done.err.isEmpty { stderr.write(done.err) }
            worst = max(worst, done.status)
        }
        for w in workers { pthread_join(w, nil) }
        return worst
    }

    /// How often `--hosts SELECTOR events -f` asks the controller for the
    /// hosts matching its selector again, to follow those that came since.
    static let rescanMs: UInt64 = 5000

    /// `events -f` on several hosts: one connection and thread per host,
    /// lines interleaved as they come (each names its host). A host that
    /// registers later and matches `selector` is followed too, from the
    /// first event of its agent's boot, once the controller's list has it (every
    /// `rescanMs`): the followers were those of the start, and a host that
    /// joined was never followed (a probe). Returns when every host's
    /// stream has ended: the highest of their statuses.
    static func followAll(_ words: [String], names: [String], selector: String,
                          dial: @escaping @Sendable () throws(LmctfyError) -> RpcClient,
                          stdout: any ByteSink, stderr: any ByteSink) -> Int32 {
        let out = LockedSink(stdout), err = LockedSink(stderr)
        let statuses = StatusBox()
        var following = Set<String>()
        // Followers that ended (their host removed, say): a host of that
        // name that comes back is followed again, once connected. It was
        // never followed again (the fleet probe).
        let ended = Mutexed<[String]>([])
        var followedBefore = Set<String>()
        func follow(_ name: String, words: [String]) {
            following.insert(name)
            followedBefore.insert(name)
            statuses.begin()
            Threads.detach {
                let prefixed = LinePrefixSink(err) { Array("\(name): ".utf8) + $0 }
                let status = EventsCommand.run(words, dial: routed(dial, to: name), host: name, stdout: out, stderr: prefixed)
                prefixed.flush()
                statuses.add(status)
                ended.locked { $0.append(name) }
                statuses.end()
            }
        }
        for name in names { follow(name, words: words) }
        var scanned = MonotonicClock.milliseconds()
        while statuses.running > 0 {
            usleep(250_000)
            guard MonotonicClock.milliseconds() - scanned >= Self.rescanMs else { continue }
            scanned = MonotonicClock.milliseconds()
            guard let client = try? dial() else { continue }
            let hosts = (try? allHosts(client, selector: selector.isEmpty ? nil : selector)) ?? []
            client.close()
            for name in ended.locked({ e -> [String] in defer { e = [] }; return e }) { following.remove(name) }
            for host in hosts {
                guard let name = host.identity?.hostName, !following.contains(name) else { continue }
                if followedBefore.contains(name) && host.state != .hostConnected { continue }
                // New since the start: its agent's events of this boot from
                // the first (what it did before the rescan found it too).
                let boot = host.identity?.bootId ?? ""
                let words = boot.utf8.count == 32 && !words.contains("--after") ? words + ["--after", boot + ":0"] : words
                follow(name, words: words)
            }
        }
        return statuses.worst
    }

    /// A JSON object line (`{...}`, with or without its newline) with a
    /// "host" field first; other lines as they are.
    static func withHost(_ line: [UInt8], _ host: String) -> [UInt8] {
        guard line.first == UInt8(ascii: "{") else { return line }
        let rest = line.dropFirst()
        let empty = rest.first == UInt8(ascii: "}")
        return Array("{\"host\":\(JSONFormat.quote(host))\(empty ? "" : ",")".utf8) + rest
    }

    /// The caller's stderr, for the retry notice (lmctl runs one verb on one
    /// thread, so the sink is never written from two at once).
    struct SendableSink: @unchecked Sendable {
        let sink: any ByteSink
        init(_ sink: any ByteSink) { self.sink = sink }
    }

    /// A sink several threads write whole lines to.
    final class LockedSink: ByteSink, @unchecked Sendable {
        // @unchecked: `sink` is only written with `lock` held.
        private let sink: any ByteSink
        private let lock = Lock()
        init(_ sink: any ByteSink) { self.sink = sink }
        func write(_ bytes: [UInt8]) { lock.locked { sink.write(bytes) } }
        var isBroken: Bool { lock.locked { sink.isBroken } }
    }

    /// The statuses of several threads.
    final class StatusBox: @unchecked Sendable {
        // @unchecked: `value` is only touched with `lock` held.
        private let lock = Lock()
        private var value: Int32 = 0
        private var count = 0
        func add(_ status: Int32) { lock.locked { value = max(value, status) } }
        var worst: Int32 { lock.locked { value } }
        func begin() { lock.locked { count += 1 } }
        func end() { lock.locked { count -= 1 } }
        /// Threads begun and not ended.
        var running: Int { lock.locked { count } }
    }

    /// Rewrites what is written line by line (a line is written once it is
    /// whole; `flush` writes a last unterminated one).
    final class LinePrefixSink: ByteSink {
        private let sink: any ByteSink
        private let transform: ([UInt8]) -> [UInt8]
        private var pending: [UInt8] = []
        init(_ sink: any ByteSink, _ transform: @escaping ([UInt8]) -> [UInt8]) {
            self.sink = sink
            self.transform = transform
        }
        func write(_ bytes: [UInt8]) {
            pending += bytes
            var out: [UInt8] = []
            while let nl = pending.firstIndex(of: 10) {
                out += transform(Array(pending[...nl]))
                pending.removeSubrange(...nl)
            }
            if !out.isEmpty { sink.write(out) }
        }
        func flush() {
            guard !pending.isEmpty else { return }
            sink.write(transform(pending))
            pending = []
        }
    }

    /// unix:///path or tcp://host:port (with a key file: its first key by id).
    /// --cert, --key and --ca: TLS on a tcp:// address.
    struct TlsFlags: Sendable {
        var cert: String?
        var key: String?
        var ca: String
    }

    static func dial(_ address: String, keyFile: String?, tls: TlsFlags? = nil, flag: String = "--agent") throws(LmctfyError) -> RpcClient {
        if address.hasPrefix("unix://") {
            do {
                return try RpcClient.connect(unixPath: String(address.dropFirst("unix://".count)), name: "lmctl")
            } catch where flag == "--controller" {
                // Say which peer could not be reached (it said "the agent").
                throw LmctfyError(error.code, error.message.replacing("cannot connect to the agent", with: "cannot connect to the controller"),
                                  errno: error.errno)
            }
        }
        if address.hasPrefix("tcp://") {
            let hostPort = address.dropFirst("tcp://".count)
            guard let colon = hostPort.lastIndex(of: ":"), let port = UInt16(hostPort[hostPort.index(after: colon)...]) else {
                throw .invalidArgument("\(flag) \(address): expected tcp://HOST:PORT")
            }
            // An IPv6 literal in brackets (tcp://[::1]:7411) is its address
            // without them: "cannot resolve [::1]" otherwise.
            var host = String(hostPort[..<colon])
            if host.hasPrefix("["), host.hasSuffix("]"), host.count > 2 { host = String(host.dropFirst().dropLast()) }
            if let tls {
                let context = try TlsContext(side: .client, certificateFile: tls.cert, keyFile: tls.key, caFile: tls.ca)
                var keyId: String?
                var key: [UInt8]?
                if tls.cert == nil {
                    // No certificate of ours: a shared key, inside TLS.
                    guard let keyFile else { throw .invalidArgument("\(flag) \(address) with --ca needs --cert and --key, or --key-file") }
                    (keyId, key) = try KeyFile.load(keyFile, requirePrivate: true).sorted { $0.key < $1.key }[0]
                }
                // A controller's certificate is never one it issued to an
                // enrolling agent (Enrolment.enrolledUnit).
                return try RpcClient.connect(host: host, port: port, tls: context,
                                             keyId: keyId, key: key, name: "lmctl",
                                             refusingUnit: flag == "--controller" ? Enrolment.enrolledUnit : nil)
            }
            guard let keyFile else {
                // migrate's target takes its key with --to-key-file (and no TLS flags).
                throw .invalidArgument(flag == "--to" ? "--to \(address) needs --to-key-file"
                                       : "\(flag) \(address) needs --key-file (or --cert, --key and --ca for TLS)")
            }
            let keys = try KeyFile.load(keyFile, requirePrivate: true)
            let (id, key) = keys.sorted { $0.key < $1.key }[0]
            return try RpcClient.connect(host: host, port: port, keyId: id, key: key, name: "lmctl")
        }
        throw .invalidArgument("\(flag) \(address): expected unix:///PATH or tcp://HOST:PORT")
    }

    /// Every tier's memory commitment, summed exactly (each tier's sum is
    /// an Int64, their total need not be: CLI-made containers near 1 EiB,
    /// or a peer's figures, trapped an Int64 sum and killed lmctl).
    static func committedMemory(_ p: PolicyReport) -> Int128 {
        p.tier.reduce(Int128(0)) { $0 + Int128($1.memory ?? 0) }
    }

    /// The policy's capacity, commitment per tier and what is free, as
    /// `info` and `hosts` print them.
    static func policyPairs(_ p: PolicyReport?) -> [(String, String)] {
        guard let p else { return [] }
        let committed = committedMemory(p)
        return [("capacity_memory", String(p.capacityMemory ?? 0)), ("capacity_milli_cpu", String(p.capacityMilliCpu ?? 0)),
                ("committed_memory", String(committed))]
            + p.tier.map { ("committed_\($0.tier ?? "")", "\($0.memory ?? 0) bytes \($0.milliCpu ?? 0) milliCPU \($0.containers ?? 0) containers") }
            + [("free_memory", String(p.freeMemory ?? 0)), ("free_milli_cpu", String(p.freeMilliCpu ?? 0)),
               ("overcommit_percent", String(p.overcommitPercent ?? 0))]
    }

    static func info(_ words: [String], connect: () throws(LmctfyError) -> RemoteBackend,
                     stdout: any ByteSink, stderr: any ByteSink) -> Int32 {
        let json = wantsJSON(words)
        // `info [-o json]` and nothing else (`info --bogus extra` was taken).
        var i = 0
        while i < words.count {
            let w = words[i]
            if w == "info" || w == "-p" || w.hasPrefix("--lmctfy_output_style=") {
                i += 1
            } else if (w == "-o" || w == "--lmctfy_output_style") && i + 1 < words.count {
                i += 2
            } else {
                return usageError("info takes no arguments but -o json, not \"\(w)\"", stderr)
            }
        }
        do {
            let backend = try connect()
            let i = try backend.machineInfo()
            if backend.client.isPlaintextTcp {
                stderr.write(Array("lmctl: WARNING: PLAINTEXT TCP: this connection has no TLS; its frames are neither encrypted nor integrity-protected (the agent's allow_plaintext_tcp)\n".utf8))
            }
            // The agent's own warnings (its plaintext links), whatever this
            // connection is.
            for w in i.warnings {
                stderr.write(Array("lmctl: WARNING: agent: \(w)\n".utf8))
            }
            if json {
                stdout.write(Array((i.jsonString() + "\n").utf8))
            } else {
                let pairs: [(String, String)] = [
                    ("hostname", i.hostname ?? ""), ("kernel", i.kernel ?? ""),
                    ("cgroup_version", String(i.cgroupVersion ?? 0)), ("cpus", String(i.cpus ?? 0)),
                    ("memory_bytes", String(i.memoryBytes ?? 0)), ("agent_version", i.agentVersion ?? ""),
                    ("boot_id", i.bootId ?? ""),
                ] + (i.criu.map { c in
                    [("criu_usable", c.usable == true ? "true" : "false"), ("criu_version", c.version ?? ""),
                     ("criu_reason", c.reason ?? "")]
                } ?? []) + policyPairs(i.policy) + i.warnings.map { ("warning", $0) }
                stdout.write(Array(pairs.map { "\($0.0)=\"\(TextFormat.cEscape(Array($0.1.utf8)))\"\n" }.joined().utf8))
            }
            return 0
        } catch {
            stderr.write(Array("Command exited with error message: \(error.code.rawValue): \(error.message)\n".utf8))
            return error.code.rawValue
        }
    }
}
