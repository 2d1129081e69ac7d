// lmctl events: the agent's event log through Subscribe (PROTOCOL.md 6.2),
// one line per event, or one JSON object per line (the proto3 JSON mapping
// of ContainerEvent; a gap as {"gap": {...}}).
//
//   lmctl events [-f] [--after BOOT:SEQ] [--kind K ...] [-r] [-o json] [NAME]
//   lmctl stats -f [-o json] [NAME]     (events --kind STATS -f: the samples)
//   lmctl --controller ADDRESS events --host NAME ...   (a host's, through a controller)
//
// Without -f it prints what the agent keeps (after the resume point, if
// given) and exits; with -f it goes on with the live events until killed.
// A host's events (through a controller) name it: each text line starts
// with the host name, each JSON object has "host" beside the event fields.
import Glibc
import LmctfyCommands
import LmctfyProto
import LmctfyRPC
import LmctfySystem

enum EventsCommand {
    static let usage = LmctlCLI.usageLine("events")
    /// Events a follower lets the agent send ahead of what it has printed.
    static let window: UInt32 = 256

    /// The request and how to print, from the words after `events`.
    struct Options {
        var request = SubscribeRequest()
        var follow = false
        var json = false
        /// `stats -f`: of a container that must exist, and ends (5) when
        /// it is destroyed (it waited on, printing nothing, for a name
        /// that did not exist or a container destroyed; a probe).
        var statsOf = false
    }

    /// The word `stats -f` adds to the words it passes as `events`.
    static let statsFollowWord = "--stats-of-one-container"

    static func parse(_ words: [String]) throws(LmctfyError) -> Options {
        var o = Options()
        var i = 0
        func value(_ flag: String) throws(LmctfyError) -> String {
            i += 1
            guard i < words.count else { throw .invalidArgument("\(flag) needs a value\n\(usage)") }
            return words[i]
        }
        while i < words.count {
            let w = words[i]
            switch w {
            case "-f", "--follow": o.follow = true
            case "-r", "--recursive": o.request.recursive = true
            case "-o":
                let format = try value(w)
                guard format == "json" || format == "text" else { throw .invalidArgument("-o takes json or text, not \"\(format)\"") }
                o.json = format == "json"
            case "--after":
                let v = try value(w)
                // Digits only, as events print them ("+5" was taken as 5).
                guard let colon = v.lastIndex(of: ":"), case let digits = v[v.index(after: colon)...],
                      digits.isDecimalDigits, let seq = UInt64(digits) else {
                    throw .invalidArgument("--after takes BOOT:SEQUENCE (as events print them), not \"\(v)\"")
                }
                // Both halves, as events print them: ":5" was taken as the
                // current boot, whatever boot the 5 came from.
                let boot = String(v[..<colon])
                guard !boot.isEmpty else {
                    throw .invalidArgument("--after takes BOOT:SEQUENCE (as events print them), not \"\(v)\": the boot id is missing")
                }
                // Boot ids are 32 hex digits (an agent's, or a controller's
                // fleet log's): anything else was asked for and answered
                // with a gap, as a boot the log no longer has.
                guard boot.utf8.count == 32, boot.utf8.allSatisfy({ (48...57).contains($0) || (97...102).contains($0) }) else {
                    throw .invalidArgument("--after takes BOOT:SEQUENCE (as events print them), not \"\(v)\": a boot id is 32 hex digits")
                }
                o.request.bootId = boot
                o.request.afterSequence = seq
            case "--kind":
                o.request.kinds.append(try kind(try value(w)))
            case Self.statsFollowWord:
                o.statsOf = true
            default:
                guard !w.hasPrefix("-") || w == "-" else { throw .invalidArgument("Unknown flag \"\(w)\"\n\(usage)") }
                guard o.request.name == nil else {
                    // `stats -f` arrives here as the events it follows.
                    let verb = o.statsOf ? "stats -f" : "events"
                    throw .invalidArgument("\(verb) takes one container name\n\(LmctlCLI.usageLine(verb == "events" ? "events" : "stats"))")
                }
                o.request.name = w
            }
            i += 1
        }
        if o.statsOf {
            o.request.kinds.append(.containerEventDestroyed)
            // Without a name: every container's samples (below lmctl's
            // default container, the root), a container's destroy not
            // ending it (it ended at any container's destroy). The root
            // itself is not sampled: `stats -f /` waited for nothing.
            if o.request.name == nil {
                o.request.name = "/"
                o.request.recursive = true
            } else if o.request.name == "/" && o.request.recursive != true {
                throw .invalidArgument("The agent samples its containers, not its root: give a container's name, or -r / (or no name) for every container")
            }
        }
        // Without -f: what is kept, from the oldest: the agent's boot
        // before this one first, as far as its journal kept it (it showed
        // this boot's only, and an agent restart hid what came before).
        if !o.follow && o.request.afterSequence == nil {
            o.request.afterSequence = 0
            o.request.fromOldest = true
        }
        return o
    }

    /// A kind by its short name (OOM, memory_threshold) or its full one.
    static func kind(_ text: String) throws(LmctfyError) -> ContainerEventKind {
        let upper = text.uppercased()
        for k in ContainerEventKind.allCases where k != .containerEventUnspecified {
            if k.protoName == upper || k.protoName == "CONTAINER_EVENT_" + upper { return k }
        }
        let names = ContainerEventKind.allCases.dropFirst().map { $0.protoName.replacingPrefix("CONTAINER_EVENT_") }
        throw .invalidArgument("Unknown event kind \"\(text)\" (one of \(names.joined(separator: ", ")))")
    }

    /// One line for an event: BOOT:SEQ, the time, the kind, the container and
    /// what the kind carries.
    static func line(_ e: ContainerEvent) -> String {
        var parts = ["\(e.bootId ?? ""):\(e.sequence ?? 0)", timestamp(e.timestampNs ?? 0),
                     (e.kind ?? .containerEventUnspecified).protoName.replacingPrefix("CONTAINER_EVENT_"), e.container ?? ""]
        // From a controller's fleet log: the host, and the host's own numbering.
        if let host = e.host {
            parts.insert(host, at: 2)
            parts.append("host_event=\(e.hostBootId ?? ""):\(e.hostSequence ?? 0)")
        }
        if let v = e.memoryThreshold { parts.append("threshold=\(v)") }
        if let v = e.frozen { parts.append("frozen=\(v)") }
        if let v = e.pid { parts.append("pid=\(v)") }
        if let v = e.exitCode { parts.append("exit_code=\(v)") }
        if let v = e.termSignal { parts.append("signal=\(v)") }
        if e.kind == .containerEventEvicted {
            if let v = e.memoryUsage { parts.append("memory_usage=\(v)") }
            if let v = e.reason { parts.append("reason=\"\(TextFormat.cEscape(Array(v.utf8)))\"") }
        }
        if let st = e.stats {
            if let v = st.cpu?.usage?.total { parts.append("cpu_ns=\(v)") }
            if let v = st.memory?.usage { parts.append("memory=\(v)") }
            if let v = st.memory?.workingSet { parts.append("working_set=\(v)") }
            if let v = st.pids?.current { parts.append("pids=\(v)") }
        }
        return parts.joined(separator: " ")
    }

    /// A request without a boot id asked about the agent's current boot,
    /// which the gap names (`events` without --after: "after BOOT:0",
    /// not "after :0").
    static func gapLine(_ g: EventGap) -> String {
        if g.bootEnded == true {
            // A clean restart of the agent: nothing is missing.
            // (`after_sequence` is where this subscriber got to, not where
            // the boot ended: "ended at" named it, a different number for
            // each follower; a probe.)
            return "restart: boot \(g.requestedBootId ?? "") ended cleanly, nothing lost after \(g.requestedBootId ?? ""):\(g.afterSequence ?? 0); "
                + "continuing from \(g.bootId ?? ""):\(g.firstSequence ?? 0)"
        }
        return "gap: events after \(g.requestedBootId ?? g.bootId ?? ""):\(g.afterSequence ?? 0) are not kept; "
            + "continuing from \(g.bootId ?? ""):\(g.firstSequence ?? 0)"
    }

    /// UTC, to the millisecond, ISO 8601.
    static func timestamp(_ ns: UInt64) -> String {
        var t = time_t(ns / 1_000_000_000)
        var tm = Glibc.tm()
        gmtime_r(&t, &tm)
        func pad(_ v: Int32, _ w: Int) -> String { String(repeating: "0", count: max(0, w - String(v).count)) + String(v) }
        return "\(pad(tm.tm_year + 1900, 4))-\(pad(tm.tm_mon + 1, 2))-\(pad(tm.tm_mday, 2))T"
            + "\(pad(tm.tm_hour, 2)):\(pad(tm.tm_min, 2)):\(pad(tm.tm_sec, 2)).\(pad(Int32(ns / 1_000_000 % 1000), 3))Z"
    }

    /// One subscription on `client`, printing; each event printed moves the
    /// request's resume point past it, and so does `caught_up` before any
    /// (with the boot it names: an agent's log, or a controller's fleet log).
    static func follow(_ o: inout Options, client: RpcClient, host: String?,
                       stdout: any ByteSink) throws(LmctfyError) {
        // Flow control where the agent speaks it: at most `window`
        // events in flight, granted again as they are printed.
        var window: UInt32?
        if (client.version ?? 0) >= ProtocolVersion.credit {
            window = Self.window
            o.request.credit = Self.window
        } else {
            o.request.credit = nil
        }
        let follow = o.follow, json = o.json
        var resume: (boot: String, sequence: UInt64)?
        defer { if let resume { o.request.bootId = resume.boot; o.request.afterSequence = resume.sequence } }
        // A reader gone while no event comes is noticed within a second
        // (as `lmctfy notify -f` notices it), not at the next event.
        try client.stream(AgentMethods.subscribe, o.request, window: window,
                          giveUp: (1000, { stdout.isBroken })) { (r: SubscribeResponse) throws(LmctfyError) -> Bool in
            if let n = r.caughtUp {
                if resume == nil, o.request.afterSequence == nil, let boot = r.caughtUpBootId { resume = (boot, n) }
                return follow
            }
            var text: String
            if let e = r.event, o.statsOf, e.kind == .containerEventDestroyed {
                // Its own end, or (with -r) one below it going.
                if o.request.recursive != true || e.container == o.request.name {
                    throw .notFound("Container \"\(e.container ?? "")\" was destroyed")
                }
                if let b = e.bootId, let q = e.sequence { resume = (b, q) }
                return true
            }
            if let e = r.event {
                text = json ? e.jsonString() : line(e)
                if let b = e.bootId, let q = e.sequence { resume = (b, q) }
            } else if let g = r.gap {
                text = json ? "{\"gap\":\(g.jsonString())}" : gapLine(g)
                if let b = g.bootId, let first = g.firstSequence, first > 0 { resume = (b, first - 1) }
            } else {
                return true
            }
            if let host {
                text = json ? String(decoding: LmctlCLI.withHost(Array(text.utf8), host), as: UTF8.self) : host + " " + text
            }
            text += "\n"
            stdout.write(Array(text.utf8))
            return !stdout.isBroken
        }
    }

    /// Whether `error` says the agent (or the way to it) is gone or not
    /// answering, for now: UNAVAILABLE, or DEADLINE_EXCEEDED (a Subscribe
    /// has no deadline of its own: a hello not answered in time, by an
    /// agent stopped or overloaded). A follower ended with 4 when its
    /// agent, SIGSTOPped or just restarted and slow, did not answer a
    /// reconnect's hello within 10 s (a probe).
    static func lostTheAgent(_ error: LmctfyError) -> Bool {
        error.code == .unavailable || error.code == .deadlineExceeded
    }

    /// How often `-f`, waiting for an agent it lost, says it still waits.
    /// It waits for as long as it takes, as `tail -F` does (it gave up
    /// after a minute: an agent down longer, an upgrade, ended every
    /// follower feeding a log collector); `timeout(1)` bounds it.
    static let followNoticeMs: UInt64 = 60_000

    /// Subscribes and prints; `host`: the events are that host's (through a
    /// controller) and every line says so.
    static func run(_ words: [String], dial: () throws(LmctfyError) -> RpcClient, host: String? = nil,
                    stdout: any ByteSink, stderr: any ByteSink) -> Int32 {
        do {
            var o = try parse(words)
            // `-f` outlives its agent: when the stream is lost (the agent
            // restarting, or its host's link at a controller), it dials
            // again and resumes after the last event it printed, so nothing
            // is missed or printed twice. It ended with 14.
            var lost: UInt64?
            var noticed: UInt64 = 0
            // A stream lost again at once, with nothing printed (a host not
            // connected at its controller, which takes the dial and refuses
            // the call), is asked for again after a pause that doubles to
            // 2 s, and said once a minute: it was asked for again at once,
            // some 2,500 times a second, each a line (a probe).
            var pauseMs: UInt32 = 0
            // Once a minute while not following: that it still tries.
            func sayStillTrying(_ why: LmctfyError) {
                let now = MonotonicClock.milliseconds()
                guard let lost, now - noticed >= Self.followNoticeMs, now - lost >= Self.followNoticeMs else { return }
                stderr.write(Array("lmctl: events: not following for \((now - lost) / 1000) s (\(why.message)); still trying\n".utf8))
                noticed = now
            }
            // Where the last "lagged" ended the stream (RESOURCE_EXHAUSTED
            // "lagged, resume after N": it fell behind what its connection
            // may hold, or an agent before the thirty-sixth sitting cut a
            // replay longer than that): it goes on from what was printed.
            // The same point twice is no progress.
            var laggedAt: (String?, UInt64?)?
            while true {
                let client: RpcClient
                do {
                    client = try dial()
                } catch where Self.lostTheAgent(error) && lost != nil {
                    sayStillTrying(error)
                    usleep(250_000)
                    continue
                }
                defer { client.close() }
                let started = MonotonicClock.milliseconds()
                let from = (o.request.bootId, o.request.afterSequence)
                do {
                    if o.statsOf {
                        // NOT_FOUND (5) for a container that is not there.
                        let _: StatsResponse = try client.call(AgentMethods.stats, StatsRequest(name: o.request.name ?? "/", kind: .statsSummary))
                    }
                    try follow(&o, client: client, host: host, stdout: stdout)
                    return 0
                } catch where error.code == .resourceExhausted && error.message.hasPrefix("lagged, resume after ")
                            && o.request.afterSequence != nil
                            && (laggedAt.map { $0.0 != o.request.bootId || $0.1 != o.request.afterSequence } ?? true) {
                    laggedAt = (o.request.bootId, o.request.afterSequence)
                    if o.request.bootId != nil { o.request.fromOldest = nil }
                } catch where o.follow && Self.lostTheAgent(error) {
                    let now = MonotonicClock.milliseconds()
                    let progressed = from != (o.request.bootId, o.request.afterSequence) || now - started >= 5_000
                    if lost == nil || progressed {
                        let after = o.request.afterSequence.map { " after \(o.request.bootId ?? ""):\($0)" }
                            ?? " from now (what happened meanwhile is not known)"
                        stderr.write(Array("lmctl: events: \(error.message); following again\(after)\n".utf8))
                        lost = now
                        noticed = now
                        pauseMs = 0
                    } else {
                        sayStillTrying(error)
                        pauseMs = min(2000, max(250, pauseMs * 2))
                        usleep(pauseMs * 1000)
                    }
                }
            }
        } catch {
            stderr.write(Array("Command exited with error message: \(error.code.rawValue): \(error.message)\n".utf8))
            return error.code.rawValue
        }
    }
}

extension String {
    func replacingPrefix(_ prefix: String) -> String {
        hasPrefix(prefix) ? String(dropFirst(prefix.count)) : self
    }
}
