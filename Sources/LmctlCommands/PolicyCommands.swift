// lmctl create with the agent's policy (README "Policy"):
//
//   lmctl ... create [--tier TIER] [--dry-run] [-c FILE] NAME [SPEC]
//   lmctl --controller ADDRESS create --anywhere [--tier TIER] [--dry-run] [-c FILE] NAME [SPEC]
//
// --tier puts the container in a tier of the agent's policy; --dry-run asks
// CheckAdmission instead of creating (prints admitted, tier and the
// arithmetic; exit 0 when it would be admitted, 8 when not). --anywhere asks
// every connected host of the controller, creates on the least committed
// one that admits it (memory committed over capacity), tries the next if
// that one refuses after all (another create won the room), and prints
// host="NAME". No host with room: exit 8 with each host's answer. The
// output flags (-o STYLE, --lmctfy_output_style, -p, -l, -v) are taken as
// by every verb; with -o json the dry run prints CheckAdmissionResponse.
import LmctfyCommands
import LmctfyProto
import LmctfyRPC
import LmctfySystem

enum PolicyCommands {
    static let usage = "usage: lmctl ... create [--tier TIER] [--dry-run] [--anywhere] [-c FILE] NAME [SPEC]"

    /// Whether `words` are a create this file handles (one with a policy flag).
    static func handles(_ words: [String]) -> Bool {
        LmctlCLI.commandWord(words) == "create"
            && words.contains { $0 == "--tier" || $0.hasPrefix("--tier=") || $0 == "--dry-run" || $0 == "--anywhere" }
    }

    struct CreateArguments {
        var name = ""
        var spec = ContainerSpec()
        var tier: String?
        var dryRun = false
        var anywhere = false
        var style = OutputStyle.pairs
    }

    static func parse(_ words: [String], readFile: (String) throws(LmctfyError) -> [UInt8]) throws(LmctfyError) -> CreateArguments {
        var a = CreateArguments()
        var positional: [String] = []
        var configFile: String?
        var seenVerb = false
        var i = 0
        while i < words.count {
            let w = words[i]
            switch w {
            case "create" where !seenVerb: seenVerb = true
            case "--dry-run": a.dryRun = true
            case "--anywhere": a.anywhere = true
            case "-p": a.style = .pairs
            case "-l": a.style = .long
            case "-v": a.style = .values
            case "--tier", "-c", "-o", "--lmctfy_output_style":
                i += 1
                guard i < words.count, !words[i].isEmpty else { throw .invalidArgument("\(w) needs a value\n\(usage)") }
                switch w {
                case "-c": configFile = words[i]
                case "--tier":
                    // Given twice, the second silently won.
                    guard a.tier == nil else { throw .invalidArgument("--tier given twice\n\(usage)") }
                    a.tier = words[i]
                default: a.style = try style(words[i])
                }
            default:
                if w.hasPrefix("--tier=") {
                    let v = String(w.dropFirst("--tier=".count))
                    guard !v.isEmpty else { throw .invalidArgument("--tier needs a value\n\(usage)") }
                    guard a.tier == nil else { throw .invalidArgument("--tier given twice\n\(usage)") }
                    a.tier = v
                } else if w.hasPrefix("--lmctfy_output_style=") {
                    a.style = try style(String(w.dropFirst("--lmctfy_output_style=".count)))
                } else if w.hasPrefix("-") && w.count > 1 {
                    throw .invalidArgument("Unknown flag \"\(w)\" for create\n\(usage)")
                } else {
                    positional.append(w)
                }
            }
            i += 1
        }
        guard (1...2).contains(positional.count) else { throw .invalidArgument("create takes a name and a spec\n\(usage)") }
        a.name = positional[0]
        let bytes: [UInt8]
        switch (positional.count == 2 ? positional[1] : nil, configFile) {
        case (let inline?, nil): bytes = Array(inline.utf8)
        case (nil, let file?): bytes = try readFile(file)
        case (.some, .some): throw .invalidArgument("Both an inline container config and a config file (-c) were given; use one")
        case (nil, nil): throw .invalidArgument("No container config given: pass it as an argument or with -c <file>")
        }
        if let text = String(validating: bytes, as: UTF8.self), let spec = try? ContainerSpec(textFormat: text) {
            a.spec = spec
        } else if let spec = try? ContainerSpec(serializedBytes: bytes) {
            a.spec = spec
        } else {
            throw .invalidArgument("Failed to parse the container config")
        }
        return a
    }

    static func style(_ name: String) throws(LmctfyError) -> OutputStyle {
        guard let s = OutputStyle(rawValue: name) else {
            throw .invalidArgument("Unknown output style \"\(name)\" (pairs, values, long, json)\n\(usage)")
        }
        return s
    }

    /// The answer in `style`: pairs on one line, as lmctl has always
    /// printed it; the other styles as lmctfy's verbs print theirs.
    static func output(_ p: [(String, String)], json: String, style: OutputStyle) -> [UInt8] {
        if style == .pairs {
            return p.isEmpty ? [] : Array((p.map { "\($0.0)=\"\(TextFormat.cEscape(Array($0.1.utf8)))\"" }.joined(separator: " ") + "\n").utf8)
        }
        return renderOutput(p, json: json, style: style)
    }

    static func readFile(_ path: String) throws(LmctfyError) -> [UInt8] {
        do { return Array(try Sys.readFile(path).utf8) } catch { throw .invalidArgument("Reading \(path): \(error)") }
    }

    static func fail(_ error: LmctfyError, _ stderr: any ByteSink) -> Int32 {
        stderr.write(Array("Command exited with error message: \(error.code.rawValue): \(error.message)\n".utf8))
        return error.code.rawValue
    }

    /// create --tier / --dry-run on one agent (or one host through a
    /// controller), on a backend that waits for a restarting agent and
    /// sends the call once more if it loses its agent, as every verb's
    /// (the create carries a request_id): these failed with 14 at once,
    /// also when the agent had made the container (the policy probe).
    static func create(_ words: [String], connect: () throws(LmctfyError) -> RemoteBackend, stdout: any ByteSink,
                       stderr: any ByteSink) -> Int32 {
        do throws(LmctfyError) {
            let a = try parse(words, readFile: readFile)
            if a.anywhere { throw .invalidArgument("--anywhere places a container through a controller: give --controller") }
            let backend = try connect()
            defer { backend.client.close() }
            if a.dryRun {
                let r = try backend.checkAdmission(CheckAdmissionRequest(name: a.name, spec: a.spec, tier: a.tier))
                stdout.write(output([("admitted", r.admitted == true ? "true" : "false"), ("tier", r.tier ?? ""),
                                           ("message", r.message ?? "")], json: r.jsonString(), style: a.style))
                return r.admitted == true ? 0 : StatusCode.resourceExhausted.rawValue
            }
            try backend.create(a.name, spec: a.spec, tier: a.tier)
            stdout.write(output([], json: "{}", style: a.style))
            return 0
        } catch {
            return fail(error, stderr)
        }
    }

    /// create --anywhere through a controller.
    static func createAnywhere(_ words: [String], dial: () throws(LmctfyError) -> RpcClient, stdout: any ByteSink,
                               stderr: any ByteSink) -> Int32 {
        do throws(LmctfyError) {
            let a = try parse(words, readFile: readFile)
            let client = try dial()
            defer { client.close() }
            let hosts = try allHosts(client, selector: nil)
                .filter { $0.state == .hostConnected }.compactMap { $0.identity?.hostName }
            guard !hosts.isEmpty else { throw .unavailable("The controller has no connected host") }
            var admitted: [(host: String, load: Double, answer: CheckAdmissionResponse)] = []
            var refusals: [String] = []
            var errorCodes: [StatusCode] = []
            // Every host asked at once (pipelined); a host that does not
            // answer in time is passed over (one stopped host kept every
            // placement waiting, and asking one host at a time made a
            // placement as slow as the fleet was large).
            let request = CheckAdmissionRequest(name: a.name, spec: a.spec, tier: a.tier)
            let answers = client.callMany(AgentMethods.checkAdmission, hosts.map { _ in request }, hosts: hosts,
                                          deadlineMs: HostsCommand.hostDeadlineMs)
            for (h, answer) in zip(hosts, answers) {
                do throws(LmctfyError) {
                    let r = try answer.get()
                    if r.admitted == true {
                        admitted.append((h, load(r.policy), r))
                    } else {
                        refusals.append("\(h): \(r.message ?? "refused")")
                    }
                } catch where error.code == .alreadyExists {
                    // A second container of that name elsewhere is not what
                    // was asked: it went to the next host.
                    throw LmctfyError(.alreadyExists, "\"\(a.name)\" exists on host \(h) already")
                } catch {
                    refusals.append("\(h): \(error.code.rawValue): \(error.message)")
                    errorCodes.append(error.code)
                }
            }
            // Every host refused the request itself (an unknown tier, a bad
            // name) for one reason: that reason's code, not "no room" (8).
            func noHost() -> LmctfyError {
                if errorCodes.count == hosts.count, let code = errorCodes.first, errorCodes.allSatisfy({ $0 == code }) {
                    return LmctfyError(code, "Every host refused \"\(a.name)\": " + refusals.joined(separator: " | "))
                }
                return LmctfyError(.resourceExhausted, "No host admits \"\(a.name)\": " + refusals.joined(separator: " | "))
            }
            // Least committed first; the name breaks ties (stable output).
            admitted.sort { ($0.load, $0.host) < ($1.load, $1.host) }
            if a.dryRun {
                client.host = nil
                guard let best = admitted.first else { throw noHost() }
                // As a dry run on one agent prints its answer, with the host
                // it came from (only `admitted` and `host` were printed).
                let r = best.answer
                let json = String(decoding: LmctlCLI.withHost(Array(r.jsonString().utf8), best.host), as: UTF8.self)
                stdout.write(output([("admitted", "true"), ("host", best.host), ("tier", r.tier ?? ""), ("message", r.message ?? "")],
                                    json: json, style: a.style))
                return 0
            }
            for candidate in admitted {
                client.host = candidate.host
                do throws(LmctfyError) {
                    _ = try client.call(AgentMethods.create, CreateRequest(
                        name: a.name, spec: a.spec, requestId: RemoteBackend.newRequestId(), tier: a.tier))
                    stdout.write(output([("host", candidate.host)], json: "{\"host\":\(JSONFormat.quote(candidate.host))}",
                                              style: a.style))
                    return 0
                } catch where error.code == .resourceExhausted {
                    refusals.append("\(candidate.host): \(error.message)")
                }
            }
            throw noHost()
        } catch {
            return fail(error, stderr)
        }
    }

    /// How full a host is: memory committed (every tier) over capacity.
    static func load(_ p: PolicyReport?) -> Double {
        guard let p, let cap = p.capacityMemory, cap > 0 else { return .infinity }
        return Double(LmctlCLI.committedMemory(p)) / Double(cap)
    }
}
