// The agent's Prometheus figures (README "Prometheus metrics"): its own
// counters, kept on the loop thread as calls and connections come and go,
// and the containers' figures, which come from the event log's newest
// STATS sample of each container (the stats sweep's): a scrape reads no
// cgroup file. Container families use cAdvisor's names; each series is
// labelled with the container's name as the agent's clients know it, as
// `id` and `name`.
import Glibc
import LmctfyEvents
import LmctfyHTTP
import LmctfyProto
import LmctfySystem

/// Loop thread only (the agent calls it from its loop callbacks; the
/// endpoint renders on the loop too).
final class AgentMetrics {
    struct CallKey: Hashable {
        var conn: Int
        var stream: UInt32
    }

    private var pending: [CallKey: (method: String, start: Double)] = [:]
    private var calls: [String: [StatusCode: UInt64]] = [:]
    private var latency: [String: Histogram] = [:]
    private var accepted: [String: UInt64] = [:]
    private var refused: UInt64 = 0
    private var evicted: UInt64 = 0
    private var framesEvicted: UInt64 = 0
    private var lagged: UInt64 = 0
    private var scrapes: UInt64 = 0
    private var renderTimes = Histogram(bounds: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25])

    /// A call began (`method`: its name if the table knows it, else "unknown").
    func callStarted(conn: Int, stream: UInt32, method: String) {
        pending[CallKey(conn: conn, stream: stream)] = (method, MonotonicClock.microseconds())
    }

    /// A call ended with `code` (a call ended twice counts once).
    func callEnded(conn: Int, stream: UInt32, _ code: StatusCode) {
        guard let p = pending.removeValue(forKey: CallKey(conn: conn, stream: stream)) else { return }
        calls[p.method, default: [:]][code, default: 0] += 1
        latency[p.method, default: Histogram(bounds: Histogram.latencyBounds)]
            .observe((MonotonicClock.microseconds() - p.start) / 1e6)
    }

    /// `n` pings answered inline by the session in one read batch, each
    /// taking the batch's time (its answer left with the batch's); the RPC
    /// hot path: two plain fields, merged into the Ping series when rendered.
    func pingsAnsweredInline(_ n: UInt64, seconds: Double) {
        inlinePings &+= n
        inlinePingLatency.observe(seconds, times: n)
    }
    private var inlinePings: UInt64 = 0
    private var inlinePingLatency = Histogram(bounds: Histogram.latencyBounds)

    /// A connection went: its calls still open end CANCELLED.
    func connectionClosed(conn: Int) {
        for key in pending.keys where key.conn == conn { callEnded(conn: conn, stream: key.stream, .cancelled) }
    }

    func connectionAccepted(transport: String) { accepted[transport, default: 0] += 1 }
    func connectionRefused() { refused += 1 }
    func handshakeEvicted() { evicted += 1 }
    func incompleteFrameEvicted() { framesEvicted += 1 }
    func streamLagged() { lagged += 1 }

    /// The text exposition of everything: the daemon's figures, then every
    /// container's, sorted by name.
    func render(openConnections: Int, subscribers: Int, events: EventLog,
                sweeps: (durations: Histogram, lastSampled: Int)?) -> [UInt8] {
        scrapes += 1
        let start = MonotonicClock.microseconds()
        let snapshot = events.metricsSnapshot
        var t = MetricsText(reserving: 4096 + snapshot.stats.count * 1400)

        t.family("lmctfy_agent_info", .gauge, "The agent's version and boot id (always 1).")
        t.sample("lmctfy_agent_info", ["version": LmctfyVersion.string, "boot_id": events.bootId], Int64(1))
        t.processFamilies()
        t.family("lmctfy_agent_connections", .gauge, "RPC connections open now.")
        t.sample("lmctfy_agent_connections", Int64(openConnections))
        t.family("lmctfy_agent_connections_accepted_total", .counter, "RPC connections accepted, by transport.")
        for transport in ["tcp", "unix"] {
            t.sample("lmctfy_agent_connections_accepted_total", ["transport": transport], accepted[transport] ?? 0)
        }
        t.family("lmctfy_agent_connections_refused_total", .counter, "RPC connections refused (too many, too many in their handshake, or the agent stopping).")
        t.sample("lmctfy_agent_connections_refused_total", refused)
        t.family("lmctfy_agent_handshakes_evicted_total", .counter, "TCP connections closed in their handshake to admit a new one (limits.max_handshaking_connections).")
        t.sample("lmctfy_agent_handshakes_evicted_total", evicted)
        t.family("lmctfy_agent_incomplete_frames_evicted_total", .counter, "Connections closed because their incomplete frame stalled while incomplete frames took the whole budget for them (PROTOCOL.md section 7).")
        t.sample("lmctfy_agent_incomplete_frames_evicted_total", framesEvicted)
        var calls = self.calls
        var latency = self.latency
        if inlinePings > 0 {
            calls["Ping", default: [:]][.ok, default: 0] += inlinePings
            latency["Ping", default: Histogram(bounds: Histogram.latencyBounds)].merge(inlinePingLatency)
        }
        t.family("lmctfy_agent_calls_total", .counter, "RPC calls ended, by method and status code.")
        for method in calls.keys.sorted() {
            for (code, n) in calls[method]!.sorted(by: { $0.key.rawValue < $1.key.rawValue }) {
                t.sample("lmctfy_agent_calls_total", ["method": method, "code": code.description], n)
            }
        }
        t.family("lmctfy_agent_call_duration_seconds", .histogram,
                 "From a call's request to its final status (for a stream: its lifetime), by method.")
        for method in latency.keys.sorted() {
            t.histogram("lmctfy_agent_call_duration_seconds", ["method": method], latency[method]!)
        }
        t.family("lmctfy_agent_events_total", .counter, "Events recorded in the event log, by kind.")
        for kind in ContainerEventKind.allCases where kind != .containerEventUnspecified {
            t.sample("lmctfy_agent_events_total", ["kind": Self.kindName(kind)], snapshot.kinds[kind] ?? 0)
        }
        t.family("lmctfy_agent_subscribers", .gauge, "Subscribe streams open now.")
        t.sample("lmctfy_agent_subscribers", Int64(subscribers))
        t.family("lmctfy_agent_lagged_streams_total", .counter, "Subscribe streams ended for lagging (RESOURCE_EXHAUSTED).")
        t.sample("lmctfy_agent_lagged_streams_total", lagged)
        if let sweeps {
            t.family("lmctfy_agent_stats_sweep_duration_seconds", .histogram, "How long each stats sweep took.")
            t.histogram("lmctfy_agent_stats_sweep_duration_seconds", [:], sweeps.durations)
            t.family("lmctfy_agent_stats_sweep_containers", .gauge, "Containers sampled by the last stats sweep.")
            t.sample("lmctfy_agent_stats_sweep_containers", Int64(sweeps.lastSampled))
        }
        t.family("lmctfy_agent_metrics_scrapes_total", .counter, "Requests for /metrics answered (this one included).")
        t.sample("lmctfy_agent_metrics_scrapes_total", scrapes)
        t.family("lmctfy_agent_metrics_render_seconds", .histogram, "How long writing /metrics took (the scrapes before this one).")
        t.histogram("lmctfy_agent_metrics_render_seconds", [:], renderTimes)

        Self.containers(&t, snapshot.stats, ooms: snapshot.ooms)
        renderTimes.observe((MonotonicClock.microseconds() - start) / 1e6)
        return t.bytes
    }

    /// One container's figures, taken out of its sample once per scrape
    /// (walking the samples themselves family after family would copy
    /// each nested message nine times).
    struct Row {
        var labels: [UInt8]
        var cpuNs: Int64?
        var usage: Int64?
        var workingSet: Int64?
        var failcnt: Int64?
        var ooms: UInt64
        var processes: Int64?
        var periods: Int64?
        var throttled: Int64?
        var throttledNs: Int64?
    }

    /// The cAdvisor families, from each container's newest sample: the
    /// containers sorted once and their labels written once, then each
    /// family walks them.
    static func containers(_ t: inout MetricsText, _ stats: [String: ContainerStats], ooms: [String: UInt64]) {
        var rows: [Row] = []
        rows.reserveCapacity(stats.count)
        for (name, s) in stats {
            let throttling = s.cpu?.throttlingData
            rows.append(Row(labels: MetricsText.labels(["id": name, "name": name]),
                            cpuNs: s.cpu?.usage?.total.map { Int64(clamping: $0) }, usage: s.memory?.usage,
                            workingSet: s.memory?.workingSet, failcnt: s.memory?.failCount, ooms: ooms[name] ?? 0,
                            processes: s.pids?.current, periods: throttling?.periods, throttled: throttling?.throttledPeriods,
                            throttledNs: throttling?.throttledTime))
        }
        // A stable order, by the label bytes (the escaped name).
        rows.sort { $0.labels.lexicographicallyPrecedes($1.labels) }
        func seconds(_ name: String, _ help: String, _ value: (Row) -> Int64?) {
            t.family(name, .counter, help)
            for r in rows {
                if let v = value(r) { t.sample(name, rendered: r.labels, Double(v) / 1e9) }
            }
        }
        func integer(_ name: String, _ type: MetricType, _ help: String, _ value: (Row) -> Int64?) {
            t.family(name, type, help)
            for r in rows {
                if let v = value(r) { t.sample(name, rendered: r.labels, v) }
            }
        }
        seconds("container_cpu_usage_seconds_total", "Cumulative CPU time consumed, in seconds.") { $0.cpuNs }
        integer("container_memory_usage_bytes", .gauge, "Current memory usage, in bytes (page cache included).") { $0.usage }
        integer("container_memory_working_set_bytes", .gauge, "Current working set, in bytes (usage less inactive file pages).") { $0.workingSet }
        integer("container_memory_failcnt", .counter, "Times memory usage hit the limit.") { $0.failcnt }
        t.family("container_oom_events_total", .counter, "OOM kills the agent saw in the container since it saw the container.")
        for r in rows { t.sample("container_oom_events_total", rendered: r.labels, r.ooms) }
        integer("container_processes", .gauge, "Processes (tasks counted by pids.current) in the container.") { $0.processes }
        integer("container_cpu_cfs_periods_total", .counter, "Elapsed CFS enforcement periods.") { $0.periods }
        integer("container_cpu_cfs_throttled_periods_total", .counter, "CFS periods in which the container was throttled.") { $0.throttled }
        seconds("container_cpu_cfs_throttled_seconds_total", "Total time the container was throttled, in seconds.") { $0.throttledNs }
    }

    /// "CONTAINER_EVENT_OOM" -> "oom".
    static func kindName(_ kind: ContainerEventKind) -> String {
        String(kind.protoName.dropFirst("CONTAINER_EVENT_".count)).lowercased()
    }
}

extension AgentSettings {
    /// metrics { address unix_socket_mode allow_non_loopback }: nil when
    /// there is no block or no address.
    static func metricsAddress(_ m: MetricsEndpointConfig?, group: gid_t?, source: String) throws(LmctfyError) -> HttpAddress? {
        guard let m else { return nil }
        guard let address = m.address else {
            throw .invalidArgument("\(source): metrics needs an address (\"127.0.0.1:9102\" or \"unix:/path\")")
        }
        return try HttpAddress.parse(address, unixMode: mode_t(m.unixSocketMode ?? 0o660), unixGroup: group,
                                     allowNonLoopback: m.allowNonLoopback == true, what: "\(source): metrics address")
    }
}
