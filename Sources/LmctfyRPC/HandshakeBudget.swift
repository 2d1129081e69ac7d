// The budget of accepted TCP connections whose handshake (TLS, then the
// hello) has not finished (limits.max_handshaking_connections; PROTOCOL.md
// section 7). Their peers are not authenticated yet: without a budget of
// their own, anyone who can reach the port could hold every connection slot
// with sockets that never finish a handshake (the agent's max_connections
// covers its Unix socket too, which was then refused to root), or, where
// nothing bounds the count (the controller), make the daemon hold an SSL
// object and a session for each until its file descriptors run out.
//
// At the budget, a new connection takes the place of the oldest one if that
// has been handshaking for `evictAfterMs` or more: a handshake takes
// milliseconds, so what old ones hold the budget are peers that stall on
// purpose (a slowloris), and they can then keep it only by opening new
// connections faster than that, every second, no longer by trickling bytes.
// Otherwise (a burst of fresh handshakes, a fleet reconnecting at once) the
// new one is refused, and a dialler retries with its backoff.

import LmctfyProto
import LmctfySystem

/// Handshaking connections by id, with when each began. Not thread-safe:
/// the loop thread owns it.
public struct HandshakeBudget: Sendable {
    /// What `admit` decided.
    public enum Admission: Sendable, Equatable {
        case admit
        /// Admitted; the connection with this id, the oldest handshaking
        /// one, is to be closed.
        case admitEvicting(Int)
        case refuse
    }

    public let limit: Int
    /// How long the oldest must have been handshaking to give its place.
    public let evictAfterMs: UInt64
    private var started: [Int: UInt64] = [:]

    /// The default budget: 64 for an agent (its callers are operators and a
    /// controller), 1,024 for a controller (a fleet reconnecting).
    public static let agentDefault = 64
    public static let controllerDefault = 1024

    /// `evictAfterMs`: a tenth of the hello timeout, at least 1 ms.
    public init(limit: Int, helloTimeoutMs: UInt64) {
        self.limit = max(1, limit)
        self.evictAfterMs = max(1, helloTimeoutMs / 10)
    }

    /// How many are handshaking.
    public var count: Int { started.count }

    /// A new connection `id`, accepted at `now` (ms, monotonic).
    public mutating func admit(_ id: Int, now: UInt64) -> Admission {
        var evicted: Int?
        if started.count >= limit {
            // The oldest; ids grow with time, so they break ties.
            guard let oldest = started.min(by: { ($0.value, $0.key) < ($1.value, $1.key) }),
                  now >= oldest.value &+ evictAfterMs else { return .refuse }
            started[oldest.key] = nil
            evicted = oldest.key
        }
        started[id] = now
        return evicted.map { .admitEvicting($0) } ?? .admit
    }

    /// Connection `id` finished its handshake or closed (no-op if it was not
    /// counted).
    public mutating func finished(_ id: Int) {
        started[id] = nil
    }

    /// Whether connection `id` is counted.
    public func contains(_ id: Int) -> Bool { started[id] != nil }

    /// What a refused connection is sent before it is closed, when its
    /// port is not TLS (a TLS peer could not read it): GOAWAY_NORMAL.
    public static let refusal = FrameCodec.encode(Frame(kind: .frameGoaway, goaway: GoAway(
        reason: .goawayNormal, message: "too many connections in their handshake", lastStreamId: 0)))

    /// The log line of a refusal (before a LogBudget's suffix).
    public var refusalLine: String {
        "refusing a connection: \(count) TCP connections are in their handshake (limits.max_handshaking_connections)"
    }

    /// The log line of an eviction, after the evicted connection's name.
    /// `enrolment`: a controller's enrolment connection, counted for as
    /// long as it is open (its hello names no one), whose handshake may
    /// well be done ("its handshake not done after 93584 ms" was said of
    /// such connections, a probe).
    public func evictionLine(handshakingMs: UInt64, enrolment: Bool = false) -> String {
        enrolment
            ? "closed, an enrolment connection open \(handshakingMs) ms (counted until it closes), for a new connection (limits.max_handshaking_connections: \(limit))"
            : "closed, its handshake not done after \(handshakingMs) ms, for a new connection (limits.max_handshaking_connections: \(limit))"
    }

    /// The limit a config gives (`max_handshaking_connections`), checked:
    /// INVALID_ARGUMENT naming `source` outside 1 to 65536.
    public static func limit(_ configured: UInt32?, default value: Int, source: String) throws(LmctfyError) -> Int {
        guard let configured else { return value }
        guard (1...65_536).contains(configured) else {
            throw .invalidArgument("\(source): limits.max_handshaking_connections must be 1 to 65536, not \(configured)")
        }
        return Int(configured)
    }
}
