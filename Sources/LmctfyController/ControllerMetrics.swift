// The controller's Prometheus figures (README "Prometheus metrics"): the
// fleet as the controller sees it (hosts known and connected, calls routed
// to hosts and how they ended, host events relayed into the fleet log, its
// subscribers), counted on the loop thread as they happen.
import LmctfyEvents
import LmctfyHTTP
import LmctfyProto
import LmctfyRPC
import LmctfySystem

/// Loop thread only.
final class ControllerMetrics {
    /// Calls forwarded to a host, by method (only methods of the agent's
    /// table are forwarded, so the label set is bounded).
    var routed: [String: UInt64] = [:]
    /// Forwarded calls that ended, by status (a lost link ends them UNAVAILABLE).
    var routedEnded: [StatusCode: UInt64] = [:]
    /// Host events taken into the fleet log.
    var eventsRelayed: UInt64 = 0
    /// TCP connections refused because too many were in their handshake,
    /// and handshaking ones closed to admit a new one (HandshakeBudget).
    var connectionsRefused: UInt64 = 0
    var handshakesEvicted: UInt64 = 0
    /// Connections closed because their incomplete frame stalled (InboundBudget).
    var framesEvicted: UInt64 = 0
    private var scrapes: UInt64 = 0

    func render(knownHosts: Int, connectedHosts: Int, connections: [String: Int], subscribers: Int, log: EventLog) -> [UInt8] {
        scrapes += 1
        var t = MetricsText()
        t.family("lmctfy_controller_info", .gauge, "The controller's version and fleet log id (always 1).")
        t.sample("lmctfy_controller_info", ["version": LmctfyVersion.string, "log_id": log.bootId], Int64(1))
        t.processFamilies()
        t.family("lmctfy_controller_hosts", .gauge, "Hosts the controller knows, by state.")
        t.sample("lmctfy_controller_hosts", ["state": "connected"], Int64(connectedHosts))
        t.sample("lmctfy_controller_hosts", ["state": "disconnected"], Int64(max(0, knownHosts - connectedHosts)))
        t.family("lmctfy_controller_connections", .gauge, "Connections open now, by kind (agent links, clients, enrolments).")
        for kind in ["agent", "client", "enroll"] {
            t.sample("lmctfy_controller_connections", ["kind": kind], Int64(connections[kind] ?? 0))
        }
        t.family("lmctfy_controller_connections_refused_total", .counter, "TCP connections refused: too many in their handshake (limits.max_handshaking_connections).")
        t.sample("lmctfy_controller_connections_refused_total", connectionsRefused)
        t.family("lmctfy_controller_handshakes_evicted_total", .counter, "TCP connections closed in their handshake to admit a new one.")
        t.sample("lmctfy_controller_handshakes_evicted_total", handshakesEvicted)
        t.family("lmctfy_controller_incomplete_frames_evicted_total", .counter, "Connections closed because their incomplete frame stalled while incomplete frames took the whole budget for them.")
        t.sample("lmctfy_controller_incomplete_frames_evicted_total", framesEvicted)
        t.family("lmctfy_controller_calls_routed_total", .counter, "Client calls forwarded to a host, by method.")
        for method in routed.keys.sorted() { t.sample("lmctfy_controller_calls_routed_total", ["method": method], routed[method]!) }
        t.family("lmctfy_controller_routed_calls_ended_total", .counter, "Forwarded calls that ended, by status code.")
        for (code, n) in routedEnded.sorted(by: { $0.key.rawValue < $1.key.rawValue }) {
            t.sample("lmctfy_controller_routed_calls_ended_total", ["code": code.description], n)
        }
        t.family("lmctfy_controller_events_relayed_total", .counter, "Host events taken into the fleet log.")
        t.sample("lmctfy_controller_events_relayed_total", eventsRelayed)
        let kinds = log.metricsSnapshot.kinds
        t.family("lmctfy_controller_events_total", .counter, "Events in the fleet log, by kind.")
        for kind in ContainerEventKind.allCases where kind != .containerEventUnspecified {
            let name = String(kind.protoName.dropFirst("CONTAINER_EVENT_".count)).lowercased()
            t.sample("lmctfy_controller_events_total", ["kind": name], kinds[kind] ?? 0)
        }
        t.family("lmctfy_controller_subscribers", .gauge, "Subscribe streams open at the fleet log.")
        t.sample("lmctfy_controller_subscribers", Int64(subscribers))
        t.family("lmctfy_controller_metrics_scrapes_total", .counter, "Requests for /metrics answered (this one included).")
        t.sample("lmctfy_controller_metrics_scrapes_total", scrapes)
        return t.bytes
    }
}
