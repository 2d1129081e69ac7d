// The budget of bytes received and not yet a whole frame, over every
// connection of a daemon (PROTOCOL.md section 7). A frame may be up to
// `max_frame_bytes` (4 MiB) and is buffered until it is whole: without a
// budget over all connections, peers that each sent most of a large frame
// and stopped held that much of the daemon's memory apiece for as long as
// they liked (a probe: 200 Unix-socket connections took an agent from 21 MB
// to 846 MB).
//
// Over the budget, the connection whose read took it there stops being
// read (what it sends waits in its socket buffers), and once a tick finds
// it still over, the connections whose incomplete frame has not grown for
// `evictAfterMs` are closed, the longest-stalled first, until it is back
// under: a peer sending a frame at any useful rate never stalls that long,
// one holding a frame half-sent on purpose loses it. Those paused are read
// again once the total is back under.

/// Not thread-safe: the loop thread owns it.
public struct InboundBudget: Sendable {
    /// Incomplete frames' bytes, all connections together.
    public let limit: Int
    /// How long an incomplete frame may stall before it can be closed to
    /// make room.
    public let evictAfterMs: UInt64
    private var held: [Int: (bytes: Int, grewAt: UInt64)] = [:]
    /// Connections not read for the budget's sake, in the order they were
    /// paused.
    private var paused: [Int] = []
    /// Bytes held, all connections together.
    public private(set) var total = 0

    /// The default: 64 MiB, and at least four frames of the largest size.
    public static func defaultLimit(maxFrameBytes: UInt32) -> Int { max(64 << 20, 4 * Int(maxFrameBytes)) }

    public init(limit: Int, evictAfterMs: UInt64 = 1_000) {
        self.limit = max(1, limit)
        self.evictAfterMs = evictAfterMs
    }

    /// A daemon's: `defaultLimit` of its frame size, and a tenth of its
    /// hello timeout to stall (as HandshakeBudget's eviction).
    public init(_ limits: SessionLimits) {
        self.init(limit: Self.defaultLimit(maxFrameBytes: limits.maxFrameBytes), evictAfterMs: max(1, limits.helloTimeoutMs / 10))
    }

    /// What a read, a close or a tick asks of the daemon.
    public struct Actions: Sendable, Equatable {
        /// Stop reading the connection just read.
        public var pause = false
        /// Read these again.
        public var resume: [Int] = []
        /// Close these (their incomplete frames stalled), with `evictionLine`.
        public var evict: [Int] = []
        public init(pause: Bool = false, resume: [Int] = [], evict: [Int] = []) {
            self.pause = pause
            self.resume = resume
            self.evict = evict
        }
    }

    /// Connection `id` was read: it now holds `bytes` that are not a whole
    /// frame yet.
    public mutating func received(_ id: Int, holds bytes: Int, now: UInt64) -> Actions {
        let before = held[id]
        if bytes == 0 {
            held[id] = nil
        } else {
            held[id] = (bytes, bytes > (before?.bytes ?? 0) ? now : before?.grewAt ?? now)
        }
        total += bytes - (before?.bytes ?? 0)
        var a = Actions()
        if total > limit && bytes > 0 {
            a.pause = true
            if !paused.contains(id) { paused.append(id) }
        } else if bytes < (before?.bytes ?? 0) {
            a.resume = resumable()
        }
        return a
    }

    /// Connection `id` closed.
    public mutating func closed(_ id: Int) -> Actions {
        paused.removeAll { $0 == id }
        guard let h = held.removeValue(forKey: id) else { return Actions() }
        total -= h.bytes
        return Actions(resume: resumable())
    }

    /// Whether connection `id` is paused for the budget.
    public func isPaused(_ id: Int) -> Bool { paused.contains(id) }

    /// Bytes connection `id` holds.
    public func holds(_ id: Int) -> Int { held[id]?.bytes ?? 0 }

    /// How long connection `id`'s incomplete frame has not grown.
    public func stalledMs(_ id: Int, now: UInt64) -> UInt64 { held[id].map { now &- $0.grewAt } ?? 0 }

    /// On the daemon's timer: over the budget, the connections whose frame
    /// stalled for `evictAfterMs`, longest first, until the rest fit (they
    /// are still counted until `closed`); under it, those paused.
    public mutating func tick(now: UInt64) -> Actions {
        guard total > limit else { return Actions(resume: resumable()) }
        var over = total - limit
        var evict: [Int] = []
        for (id, h) in held.sorted(by: { ($0.value.grewAt, $0.key) < ($1.value.grewAt, $1.key) }) {
            guard over > 0, now &- h.grewAt >= evictAfterMs else { break }
            evict.append(id)
            over -= h.bytes
        }
        return Actions(evict: evict)
    }

    private mutating func resumable() -> [Int] {
        guard total <= limit, !paused.isEmpty else { return [] }
        defer { paused = [] }
        return paused
    }

    /// The log line of an eviction (before a LogBudget's suffix).
    public func evictionLine(_ id: Int, now: UInt64) -> String {
        "an incomplete frame of \(holds(id)) bytes, not grown for \(stalledMs(id, now: now)) ms, closed: incomplete frames "
            + "of all connections held \(total) bytes, over the budget of \(limit)"
    }

    /// What an evicted peer is told (GOAWAY_IDLE_TIMEOUT).
    public func evictionMessage(_ id: Int, now: UInt64) -> String {
        "your incomplete frame of \(holds(id)) bytes did not grow for \(stalledMs(id, now: now)) ms while incomplete frames "
            + "took the whole budget for them (\(limit) bytes)"
    }
}
