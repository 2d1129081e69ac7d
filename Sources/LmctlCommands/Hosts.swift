// lmctl hosts: the controller's inventory (ListHosts, PROTOCOL.md section 9),
// one line per host, sorted by name:
//
//   lmctl --controller ADDRESS hosts [-o json] [SELECTOR]
//   lmctl --controller ADDRESS --hosts SELECTOR hosts [-o json]
//
// A line is key="value" pairs as `info` prints them: name, state
// (connected or disconnected), since (when it last changed, UTC), cgroup
// version, cpus, memory_bytes and labels (k=v,k=v), then, for a connected
// host, its policy: capacity, committed memory, each tier's commitment and
// what is free (asked of the host with MachineInfo). With -o json each line
// is the proto3 JSON of a HostInfo. SELECTOR ("k=v,k2=v2") keeps the hosts
// whose labels match every pair.
//
//   lmctl --controller ADDRESS hosts --remove NAME [-o json]
//
// takes a disconnected host out of the inventory, its name's key binding
// with it (RemoveHost, admin), and prints it as it was.
import LmctfyCommands
import LmctfyProto
import LmctfyRPC
import LmctfySystem

enum HostsCommand {
    static let usage = "usage: lmctl --controller ADDRESS hosts [-o json] [SELECTOR]\n       lmctl --controller ADDRESS hosts --remove NAME [-o json]"

    static func run(_ words: [String], selector: String?, dial: () throws(LmctfyError) -> RpcClient,
                    stdout: any ByteSink, stderr: any ByteSink) -> Int32 {
        do throws(LmctfyError) {
            var json = false
            var selector = selector
            var positional = false
            var remove: String?
            var i = 0
            while i < words.count {
                let w = words[i]
                switch w {
                case "hosts" where !positional:
                    positional = true
                case "-o", "--lmctfy_output_style":
                    i += 1
                    guard i < words.count, ["json", "text", "pairs"].contains(words[i]) else {
                        throw LmctfyError.invalidArgument("\(w) takes json or text\n\(usage)")
                    }
                    json = words[i] == "json"
                case "--lmctfy_output_style=json": json = true
                case "--remove":
                    i += 1
                    guard i < words.count, !words[i].isEmpty, !words[i].hasPrefix("-"), remove == nil else {
                        throw LmctfyError.invalidArgument("--remove takes one host name\n\(usage)")
                    }
                    remove = words[i]
                default:
                    guard !w.hasPrefix("-") else { throw LmctfyError.invalidArgument("Unknown flag \"\(w)\"\n\(usage)") }
                    guard selector == nil else { throw LmctfyError.invalidArgument("hosts takes one selector\n\(usage)") }
                    selector = w
                }
                i += 1
            }
            if let remove {
                guard selector == nil else { throw LmctfyError.invalidArgument("--remove takes a host name, not a selector\n\(usage)") }
                let client = try dial()
                defer { client.close() }
                let removed = try client.call(ControllerMethods.removeHost, RemoveHostRequest(hostName: remove)).host ?? HostInfo()
                stdout.write(Array(((json ? removed.jsonString() : line(removed)) + "\n").utf8))
                return 0
            }
            let client = try dial()
            defer { client.close() }
            let hosts = try allHosts(client, selector: selector)
            // Each connected host's policy (capacity, commitment per tier,
            // free), asked of the host through the controller, within
            // `hostDeadlineMs`: one host that does not answer (stopped,
            // hung) kept the whole inventory from printing, and `create
            // --anywhere` from placing (a probe). The calls are pipelined:
            // one at a time, ten thousand hosts were ten thousand round
            // trips, and each hung host two seconds more.
            let asked = hosts.indices.filter { hosts[$0].state == .hostConnected && hosts[$0].identity?.hostName != nil }
            let answers = client.callMany(AgentMethods.machineInfo, asked.map { _ in MachineInfoRequest() },
                                          hosts: asked.map { hosts[$0].identity?.hostName }, deadlineMs: Self.hostDeadlineMs)
            var answerOf: [Int: Result<MachineInfoResponse, LmctfyError>] = [:]
            for (i, a) in zip(asked, answers) { answerOf[i] = a }
            var text = ""
            for (i, h) in hosts.enumerated() {
                var h = h
                var unanswered: String?
                switch answerOf[i] {
                case .success(let r)?: h.policy = r.policy
                case .failure(let error)?: unanswered = error.message
                case nil: break
                }
                text += (json ? h.jsonString() : line(h, policy: h.policy) + (unanswered.map { " policy=\"unknown: \(TextFormat.cEscape(Array($0.utf8)))\"" } ?? "")) + "\n"
            }
            stdout.write(Array(text.utf8))
            return 0
        } catch {
            stderr.write(Array("Command exited with error message: \(error.code.rawValue): \(error.message)\n".utf8))
            return error.code.rawValue
        }
    }

    /// How long lmctl waits for one host's answer at a controller where
    /// the other hosts' wait behind it: `hosts`' policies (MachineInfo),
    /// `create --anywhere`'s admissions, `top`'s listing and specs (one
    /// stopped host kept them all waiting for its link's two minutes).
    static let hostDeadlineMs: UInt32 = 2000

    /// One host as key="value" pairs.
    static func line(_ h: HostInfo, policy: PolicyReport? = nil) -> String {
        let id = h.identity ?? HostIdentity()
        let state = switch h.state ?? .hostStateUnspecified {
        case .hostConnected: "connected"
        case .hostDisconnected: "disconnected"
        default: "unknown"
        }
        let pairs: [(String, String)] = [
            ("name", id.hostName ?? ""), ("state", state),
            ("since", h.stateSinceNs.map { EventsCommand.timestamp($0) } ?? ""),
            ("cgroup_version", String(id.cgroupVersion ?? 0)), ("cpus", String(id.cpus ?? 0)),
            ("memory_bytes", String(id.memoryBytes ?? 0)),
            ("labels", id.label.map { "\($0.key ?? "")=\($0.value ?? "")" }.joined(separator: ",")),
        ] + LmctlCLI.policyPairs(policy)
        return pairs.map { "\($0.0)=\"\(TextFormat.cEscape(Array($0.1.utf8)))\"" }.joined(separator: " ")
    }
}

/// Every host the controller knows (matching `selector`), a page of 1,000
/// at a time: one answer holding them all does not fit in a frame beyond
/// some ten thousand hosts. A controller without pages answers them all at
/// once, and no token.
func allHosts(_ client: RpcClient, selector: String?) throws(LmctfyError) -> [HostInfo] {
    var hosts: [HostInfo] = []
    var token: String?
    repeat {
        let page = try client.call(ControllerMethods.listHosts, ListHostsRequest(selector: selector, pageSize: 1000, pageToken: token))
        hosts += page.hosts
        guard let next = page.nextPageToken else { break }
        guard next > (token ?? "") else { throw LmctfyError(.internal, "ListHosts: the controller's next page token \(HostName.quoted(next)) does not move on") }
        token = next
    } while true
    return hosts
}
