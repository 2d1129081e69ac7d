// lmctl top: the containers of an agent, one line each (CPU %, memory and
// its limit, OOMs, frozen, processes), refreshed from the agent's event
// stream (its STATS samples, every stats_interval_ms), sorted.
//
//   lmctl top [--once] [-r] [--sort cpu|mem|procs|name] [NAME]
//   lmctl --controller ADDRESS [--hosts SELECTOR] top ...   every (matching) host
//
// What it asks the agent: ListContainers(NAME, recursive, with_frozen) for
// the names and their freezer state, Spec of each container for its memory
// limit (again when one is created or updated), and one Subscribe from the
// start of what the agent keeps (STATS, OOM, FREEZER, CREATED, UPDATED,
// DESTROYED), then live. CPU % is of one CPU, between a container's last two
// samples; OOM counts the OOM events the agent's log has for it.
//
// At a controller without --host: every connected host (that SELECTOR
// matches), each container named HOST:NAME, from the fleet's event log.
//
// On a terminal (standard input and output both) it is a live view: the
// alternate screen, raw keys (c m p n: sort by cpu, memory, processes,
// name; r: every descendant or only the children; q or Ctrl-C: quit),
// redrawn on every event batch. With --once, or when not on a terminal, it
// prints one table and exits.
import Glibc
import LmctfyCommands
import LmctfyProto
import LmctfyRPC
import LmctfySystem

enum TopCommand {
    static let usage = LmctlCLI.usageLine("top")

    enum SortKey: String, CaseIterable, Sendable {
        case cpu, mem, procs, name
    }

    struct Options {
        var once = false
        var recursive = false
        var sort = SortKey.cpu
        var name: String?
    }

    static func parse(_ words: [String]) throws(LmctfyError) -> Options {
        var o = Options()
        var i = 0
        while i < words.count {
            let w = words[i]
            switch w {
            case "--once": o.once = true
            case "-r", "--recursive": o.recursive = true
            case "--sort":
                i += 1
                guard i < words.count else { throw .invalidArgument("--sort needs a value\n\(usage)") }
                guard let key = SortKey(rawValue: words[i]) else {
                    throw .invalidArgument("--sort takes cpu, mem, procs or name, not \"\(words[i])\"")
                }
                o.sort = key
            default:
                guard !w.hasPrefix("-") else { throw .invalidArgument("Unknown flag \"\(w)\"\n\(usage)") }
                guard o.name == nil else { throw .invalidArgument("top takes one container name\n\(usage)") }
                o.name = w
            }
            i += 1
        }
        return o
    }

    /// One container as top shows it.
    struct Entry: Sendable {
        var cpuNs: UInt64?
        var sampleNs: UInt64?
        var cpuPercent: Double?
        var memory: Int64?
        var procs: Int64?
        var limit: Int64?
        var ooms = 0
        var frozen = false
        /// Its spec (memory limit) is to be read: new, or updated.
        var specWanted = true
    }

    /// What top knows: every container below `base`, from the listing and
    /// then the events. Not thread-safe (the live view locks it).
    struct Model: Sendable {
        let base: String
        var entries: [String: Entry] = [:]
        /// The newest event applied (its timestamp), for the header.
        var lastEventNs: UInt64 = 0

        /// `base` as given: relative names are relative to the agent's `/`
        /// (as every lmctl verb resolves them); trailing slashes dropped.
        init(base: String) {
            let absolute = base.hasPrefix("/") ? base : "/" + base
            let trimmed = String(absolute.reversed().drop { $0 == "/" }.reversed())
            self.base = trimmed.isEmpty ? "/" : trimmed
        }

        /// A row's key: the name, or HOST:NAME for a host's (at a controller).
        static func key(_ host: String?, _ name: String) -> String { host.map { $0 + ":" + name } ?? name }

        /// A key's host (nil at an agent) and container name.
        static func parts(_ key: String) -> (host: String?, name: String) {
            guard !key.hasPrefix("/"), let colon = key.firstIndex(of: ":") else { return (nil, key) }
            return (String(key[..<colon]), String(key[key.index(after: colon)...]))
        }

        /// Whether the container of `key` is below the base.
        func isBelow(_ key: String) -> Bool {
            let name = Self.parts(key).name
            return base == "/" ? name != "/" && name.hasPrefix("/") : name.hasPrefix(base + "/")
        }

        /// Whether the container of `key` is a child of the base (not deeper).
        func isChild(_ key: String) -> Bool {
            guard isBelow(key) else { return false }
            let rest = Self.parts(key).name.dropFirst(base == "/" ? 1 : base.count + 1)
            return !rest.contains("/")
        }

        mutating func list(_ names: [String], frozen: [String], host: String? = nil) {
            let frozenSet = Set(frozen)
            for n in names where isBelow(n) {
                entries[Self.key(host, n), default: Entry()].frozen = frozenSet.contains(n)
            }
        }

        /// At a controller: the hosts whose containers are shown (connected,
        /// and answered the listing); another's events count only from
        /// `shownFromNs` on (a host that connects later). The fleet log's
        /// older events of a host disconnected, removed or not answering
        /// showed its containers all the same (the fleet probe).
        var shownHosts: Set<String>?
        var shownFromNs: UInt64 = 0

        /// Applies one event; returns whether anything top shows changed.
        @discardableResult
        mutating func apply(_ e: ContainerEvent) -> Bool {
            guard let container = e.container, isBelow(container) else { return false }
            if let shown = shownHosts, let host = e.host, !shown.contains(host), (e.timestampNs ?? 0) < shownFromNs { return false }
            let name = Self.key(e.host, container)
            lastEventNs = max(lastEventNs, e.timestampNs ?? 0)
            switch e.kind ?? .containerEventUnspecified {
            case .containerEventStats:
                guard let st = e.stats else { return false }
                var entry = entries[name] ?? Entry()
                let ts = e.timestampNs ?? 0
                if let cpu = st.cpu?.usage?.total {
                    if let last = entry.cpuNs, let lastTs = entry.sampleNs, ts > lastTs, cpu >= last {
                        entry.cpuPercent = Double(cpu - last) / Double(ts - lastTs) * 100
                    }
                    entry.cpuNs = cpu
                    entry.sampleNs = ts
                }
                if let m = st.memory?.usage { entry.memory = m }
                if let p = st.pids?.current { entry.procs = Int64(p) }
                entries[name] = entry
            case .containerEventOom:
                entries[name, default: Entry()].ooms += 1
            case .containerEventFreezer:
                entries[name, default: Entry()].frozen = e.frozen ?? false
            case .containerEventCreated:
                entries[name, default: Entry()].specWanted = true
            case .containerEventUpdated:
                entries[name, default: Entry()].specWanted = true
            case .containerEventDestroyed:
                entries[name] = nil
            default:
                return false
            }
            return true
        }

        /// The names whose spec is wanted, at most `limit` of them.
        func wantingSpec(_ limit: Int) -> [String] {
            Array(entries.lazy.filter { $0.value.specWanted }.map(\.key).prefix(limit))
        }

        mutating func setLimit(_ name: String, _ limit: Int64?) {
            guard entries[name] != nil else { return }
            entries[name]!.limit = limit
            entries[name]!.specWanted = false
        }

        /// The rows shown, sorted (ties by name).
        func rows(recursive: Bool, sort: SortKey) -> [(name: String, entry: Entry)] {
            let shown = entries.filter { recursive ? true : isChild($0.key) }.map { (name: $0.key, entry: $0.value) }
            return shown.sorted { a, b in
                func key(_ e: Entry) -> Double {
                    switch sort {
                    case .cpu: e.cpuPercent ?? -1
                    case .mem: Double(e.memory ?? -1)
                    case .procs: Double(e.procs ?? -1)
                    case .name: 0
                    }
                }
                let (ka, kb) = (key(a.entry), key(b.entry))
                return ka != kb ? ka > kb : a.name < b.name
            }
        }

        /// The table: a column header and one line per row, each at most
        /// `width` columns (names cut from the left), at most `maxRows` rows.
        func table(recursive: Bool, sort: SortKey, width: Int = 100, maxRows: Int = .max) -> [String] {
            let fixed = " " + [pad("CPU%", 7), pad("MEM", 8), pad("LIMIT", 8), pad("OOM", 4), pad("FROZEN", 6), pad("PROCS", 6)]
                .joined(separator: " ")
            let nameWidth = max(12, width - fixed.count)
            var lines = [padRight("NAME", nameWidth) + fixed]
            for (name, e) in rows(recursive: recursive, sort: sort).prefix(maxRows) {
                let shownName = name.count > nameWidth ? ".." + name.suffix(nameWidth - 2) : name
                let cpu = e.cpuPercent.map { formatPercent($0) } ?? "-"
                let cols = [pad(cpu, 7), pad(bytes(e.memory), 8), pad(bytes(e.limit), 8), pad(String(e.ooms), 4),
                            pad(e.frozen ? "yes" : "no", 6), pad(e.procs.map(String.init) ?? "-", 6)]
                lines.append(padRight(shownName, nameWidth) + " " + cols.joined(separator: " "))
            }
            return lines
        }
    }

    static func pad(_ s: String, _ w: Int) -> String { String(repeating: " ", count: max(0, w - s.count)) + s }
    static func padRight(_ s: String, _ w: Int) -> String { s + String(repeating: " ", count: max(0, w - s.count)) }

    /// (A peer's figures can make any Double: beyond what an Int holds,
    /// `Int(_:)` trapped; shown as "-" then.)
    static func formatPercent(_ v: Double) -> String {
        guard v.isFinite, abs(v) < 1e15 else { return "-" }
        let tenths = Int((v * 10).rounded())
        return "\(tenths / 10).\(tenths % 10)"
    }

    /// 123, 4.5K, 104.9M, 2.0G; "-" for none, and for "unlimited".
    static func bytes(_ v: Int64?) -> String {
        guard let v, v >= 0, v < (1 << 60) else { return "-" }
        if v < 1024 { return "\(v)" }
        let units = ["K", "M", "G", "T", "P"]
        var value = Double(v) / 1024
        var i = 0
        while value >= 1024 && i < units.count - 1 {
            value /= 1024
            i += 1
        }
        return formatPercent(value) + units[i]
    }

    static let kinds: [ContainerEventKind] = [.containerEventStats, .containerEventOom, .containerEventFreezer,
                                              .containerEventCreated, .containerEventUpdated, .containerEventDestroyed]

    /// `lmctl top ...`: `words` without the verb.
    /// `fleet`: at a controller, the hosts' selector ("" for every host).
    static func run(_ words: [String], dial: @escaping @Sendable () throws(LmctfyError) -> RpcClient, fleet: String? = nil,
                    stdout: any ByteSink, stderr: any ByteSink) -> Int32 {
        do throws(LmctfyError) {
            let o = try parse(words)
            let live = !o.once && stdout is FileDescriptorSink && Terminal.isTerminal(0) && Terminal.isTerminal(1)
            let calls = try Calls(dial: dial, fleet: fleet != nil)
            defer { calls.close() }
            var model = Model(base: o.name ?? "/")
            if let fleet {
                let hosts = try allHosts(calls.main, selector: fleet.isEmpty ? nil : fleet)
                calls.selector = fleet
                calls.hosts = hosts.filter { $0.state == .hostConnected }.compactMap { $0.identity?.hostName }.sorted()
                guard !calls.hosts.isEmpty else {
                    throw LmctfyError.notFound(fleet.isEmpty ? "no host is connected" : "no connected host matches \"\(fleet)\"")
                }
            }
            try load(&model, calls: calls)
            if fleet != nil {
                model.shownHosts = Set(calls.hosts).subtracting(calls.away.map(\.0))
                model.shownFromNs = WallClock.nanosecondsSinceEpoch()
            }
            for (host, error) in calls.away {
                stderr.write(Array("lmctl: top: host \(host) did not answer (\(error.code.rawValue): \(error.message)); its containers are not shown\n".utf8))
            }
            if live { return try runLive(o, model: model, calls: calls, dial: dial, stdout: stdout) }
            // Once: what the agent keeps, up to now.
            let stream = try dial()
            defer { stream.close() }
            try stream.stream(AgentMethods.subscribe, request(model, afterStart: true, hosts: calls.selectedHosts)) { (r: SubscribeResponse) throws(LmctfyError) -> Bool in
                if r.caughtUp != nil { return false }
                if let e = r.event { model.apply(e) }
                return true
            }
            try fetchSpecs(&model, calls: calls, limit: .max)
            let width = Terminal.size(1)?.columns ?? 100
            stdout.write(Array(model.table(recursive: o.recursive, sort: o.sort, width: width).map { $0 + "\n" }.joined().utf8))
            // The table of those that answered, and the worst status of
            // those that did not, as `--hosts` verbs end.
            return calls.away.map(\.1.code.rawValue).max() ?? 0
        } catch {
            stderr.write(Array("Command exited with error message: \(error.code.rawValue): \(error.message)\n".utf8))
            return error.code.rawValue
        }
    }

    /// The connections for unary calls: one to the agent, or at a
    /// controller one routed to each host (made when first needed).
    final class Calls {
        let main: RpcClient
        let dial: @Sendable () throws(LmctfyError) -> RpcClient
        let fleet: Bool
        /// At a controller: the hosts shown.
        var hosts: [String] = []
        /// At a controller: the hosts that did not answer the listing, and why.
        var away: [(String, LmctfyError)] = []
        private var routed: [String: RpcClient] = [:]

        init(dial: @escaping @Sendable () throws(LmctfyError) -> RpcClient, fleet: Bool) throws(LmctfyError) {
            self.dial = dial
            self.fleet = fleet
            main = try dial()
        }

        /// At a controller: the selector ("": every host).
        var selector = ""
        /// The hosts a fleet subscription keeps to: those selected, or none
        /// named (every host, one that connects later too).
        var selectedHosts: [String] { fleet && !selector.isEmpty ? hosts : [] }

        func client(_ host: String?) throws(LmctfyError) -> RpcClient {
            guard let host else { return main }
            if let c = routed[host] { return c }
            let c = try dial()
            c.host = host
            // Each host's answer within HostsCommand.hostDeadlineMs: a host
            // that stopped answering (SIGSTOPped, its link not yet timed
            // out) held the whole table for two minutes and then failed it
            // (a probe).
            c.unaryDeadlineMs = HostsCommand.hostDeadlineMs
            routed[host] = c
            return c
        }

        func close() {
            main.close()
            for c in routed.values { c.close() }
        }
    }

    /// The names and freezer states below the base (on every host), and
    /// their limits.
    static func load(_ model: inout Model, calls: Calls) throws(LmctfyError) {
        var missing = 0
        var away: [(String, LmctfyError)] = []
        for host in calls.fleet ? calls.hosts.map(Optional.some) : [nil] {
            let listed: (names: [String], frozen: [String])
            do {
                let client = try calls.client(host)
                listed = try RemoteBackend.listAll(ListContainersRequest(name: model.base, recursive: true, withFrozen: true)) {
                    (r: ListContainersRequest) throws(LmctfyError) in try client.call(AgentMethods.listContainers, r)
                }
            } catch where host != nil && error.code == .notFound {
                missing += 1
                continue  // this host has no such container
            } catch where host != nil && (error.code == .unavailable || error.code == .deadlineExceeded) {
                // Not answering (or gone since the list of hosts): the
                // others are shown, this one said on stderr.
                away.append((host!, error))
                continue
            }
            model.list(listed.names, frozen: listed.frozen, host: host)
        }
        calls.away = away
        if calls.fleet && !away.isEmpty && away.count == calls.hosts.count { throw away[0].1 }
        // At a controller, a container no host has is NOT_FOUND, as at one
        // agent (it was an empty table and 0).
        if calls.fleet && missing > 0 && missing + away.count == calls.hosts.count {
            throw .notFound("Container \"\(model.base)\" does not exist on any host")
        }
        try fetchSpecs(&model, calls: calls, limit: .max)
    }

    /// Reads the memory limit of (at most `limit`) containers that want it;
    /// one gone meanwhile is skipped.
    static func fetchSpecs(_ model: inout Model, calls: Calls, limit: Int) throws(LmctfyError) {
        // One host's calls pipelined on its connection (one round trip at a
        // time took 2.85 s over 3,000 containers).
        var byHost: [String?: [(key: String, name: String)]] = [:]
        var hostOrder: [String?] = []
        for key in model.wantingSpec(limit) {
            let (host, name) = Model.parts(key)
            if byHost[host] == nil { hostOrder.append(host) }
            byHost[host, default: []].append((key, name))
        }
        for host in hostOrder {
            let wanted = byHost[host]!
            let client: RpcClient
            do { client = try calls.client(host) } catch where error.code == .unavailable || error.code == .deadlineExceeded {
                for w in wanted { model.setLimit(w.key, nil) }
                continue
            }
            let answers = client.callMany(AgentMethods.spec, wanted.map { SpecRequest(name: $0.name) })
            for (w, answer) in zip(wanted, answers) {
                switch answer {
                case .success(let r):
                    model.setLimit(w.key, r.spec?.memory?.limit)
                case .failure(let error) where error.code == .notFound || error.code == .unavailable || error.code == .deadlineExceeded:
                    model.setLimit(w.key, nil)
                case .failure(let error):
                    throw error
                }
            }
        }
    }

    static func request(_ model: Model, afterStart: Bool, hosts: [String] = []) -> SubscribeRequest {
        var r = SubscribeRequest()
        r.hosts = hosts
        if model.base != "/" {
            r.name = model.base
            r.recursive = true
        }
        r.kinds = kinds
        if afterStart { r.afterSequence = 0 }
        return r
    }

    // MARK: The live view

    /// The model and the reader thread's news, shared with the screen.
    final class Shared: @unchecked Sendable {
        // @unchecked: `model`, `failure` and `dirty` are only touched with `lock` held.
        let lock = Lock()
        var model: Model
        var failure: LmctfyError?
        var dirty = true
        var quit = false
        /// Written to (one byte) when something happened; the screen polls it.
        let wake: (read: Int32, write: Int32)

        init(_ model: Model) throws(LmctfyError) {
            self.model = model
            do { wake = try Sys.pipe() } catch { throw LmctfyError(.internal, "pipe: \(error)") }
        }

        func poke() {
            var b: UInt8 = 1
            _ = Glibc.write(wake.write, &b, 1)
        }
    }

    static func runLive(_ o: Options, model: Model, calls: Calls, dial: @escaping @Sendable () throws(LmctfyError) -> RpcClient,
                        stdout: any ByteSink) throws(LmctfyError) -> Int32 {
        let shared = try Shared(model)
        let subscribe = request(model, afterStart: true, hosts: calls.selectedHosts)
        // The reader, on a connection of its own (a client is one thread's):
        // events into the model, a byte into the pipe. It ends with the
        // process (lmctl exits after top returns).
        _ = Threads.start {
            do throws(LmctfyError) {
                let stream = try dial()
                try stream.stream(AgentMethods.subscribe, subscribe, window: (stream.version ?? 0) >= ProtocolVersion.credit ? 256 : nil) {
                    (r: SubscribeResponse) throws(LmctfyError) -> Bool in
                    // The screen is woken once per batch: when the model
                    // turns dirty, not for every event.
                    let (quit, wake) = shared.lock.locked { () -> (Bool, Bool) in
                        let was = shared.dirty
                        if let e = r.event, shared.model.apply(e) { shared.dirty = true }
                        if r.caughtUp != nil { shared.dirty = true }
                        return (shared.quit, !was && shared.dirty)
                    }
                    if wake { shared.poke() }
                    return !quit
                }
                shared.lock.locked { shared.failure = LmctfyError(.unavailable, "the agent ended the event stream") }
            } catch {
                shared.lock.locked { shared.failure = error }
            }
            shared.poke()
        }

        let saved: Terminal.Saved
        do { saved = try Terminal.enterRaw(0) } catch { throw LmctfyError(.failedPrecondition, "raw terminal: \(error)") }
        // Alternate screen, cursor hidden.
        stdout.write(Array("\u{1b}[?1049h\u{1b}[?25l".utf8))
        defer {
            stdout.write(Array("\u{1b}[?25h\u{1b}[?1049l".utf8))
            Terminal.restore(saved)
        }
        var sort = o.sort
        var recursive = o.recursive
        var redraw = true
        // Events are drawn at most every `minFrameMs` (a sweep of 1,000
        // STATS events arrives over a few milliseconds: one frame, not 1,000).
        let minFrameMs: UInt64 = 100
        var lastDraw: UInt64 = 0
        var eventsPending = false
        while true {
            if eventsPending && MonotonicClock.milliseconds() - lastDraw >= minFrameMs {
                eventsPending = false
                redraw = true
            }
            if redraw {
                // Limits of new or updated containers, a few per round so
                // keys stay answered.
                var m = shared.lock.locked { shared.model }
                if !m.wantingSpec(1).isEmpty {
                    try fetchSpecs(&m, calls: calls, limit: 200)
                    let fetched = m
                    shared.lock.locked {
                        for (name, e) in fetched.entries where !e.specWanted { shared.model.setLimit(name, e.limit) }
                    }
                }
                draw(shared, sort: sort, recursive: recursive, stdout: stdout)
                lastDraw = MonotonicClock.milliseconds()
                redraw = false
            }
            if let failure = shared.lock.locked({ shared.failure }) { throw failure }
            let timeout = eventsPending ? Int32(minFrameMs - min(minFrameMs, MonotonicClock.milliseconds() - lastDraw)) : 1000
            let ready = Terminal.waitReadable([0, shared.wake.read], timeoutMs: timeout)
            if ready.isEmpty {
                if !eventsPending { redraw = true }  // the clock, and a resized window
                continue
            }
            if ready.contains(shared.wake.read) {
                var buf = [UInt8](repeating: 0, count: 256)
                _ = Glibc.read(shared.wake.read, &buf, buf.count)
                let (dirty, failed) = shared.lock.locked { () -> (Bool, Bool) in
                    defer { shared.dirty = false }
                    return (shared.dirty, shared.failure != nil)
                }
                if dirty { eventsPending = true }
                if failed { redraw = true }
            }
            if ready.contains(0) {
                var keys = [UInt8](repeating: 0, count: 64)
                let n = Glibc.read(0, &keys, keys.count)
                if n == 0 { return 0 }  // the terminal went away
                for k in keys.prefix(max(0, n)) {
                    switch k {
                    case UInt8(ascii: "q"), 3, 4:
                        shared.lock.locked { shared.quit = true }
                        return 0
                    case UInt8(ascii: "c"): sort = .cpu
                    case UInt8(ascii: "m"): sort = .mem
                    case UInt8(ascii: "p"): sort = .procs
                    case UInt8(ascii: "n"): sort = .name
                    case UInt8(ascii: "r"): recursive.toggle()
                    default: continue
                    }
                    redraw = true
                }
            }
        }
    }

    /// One frame: a status line, the table, the rest of the screen cleared.
    static func draw(_ shared: Shared, sort: SortKey, recursive: Bool, stdout: any ByteSink) {
        let (rows, columns) = Terminal.size(1) ?? (24, 80)
        let m = shared.lock.locked { shared.model }
        let shownCount = m.rows(recursive: recursive, sort: sort).count
        let when = m.lastEventNs > 0 ? EventsCommand.timestamp(m.lastEventNs) : "waiting for samples"
        var status = "lmctl top \(m.base) (\(recursive ? "all below" : "children")): \(shownCount) containers, sort \(sort.rawValue), \(when)"
        let help = "  keys: c m p n sort, r recursive, q quit"
        if status.count + help.count <= columns { status += help }
        var lines = [String(status.prefix(columns))]
        lines += m.table(recursive: recursive, sort: sort, width: columns, maxRows: max(0, rows - 2))
        var out = "\u{1b}[H"
        for (i, line) in lines.prefix(rows).enumerated() {
            out += String(line.prefix(columns)) + "\u{1b}[K" + (i + 1 < min(lines.count, rows) ? "\r\n" : "")
        }
        out += "\u{1b}[J"
        stdout.write(Array(out.utf8))
    }
}
