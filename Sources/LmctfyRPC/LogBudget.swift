import LmctfySystem

/// Lines about what peers did wrong (connections refused, failed
/// handshakes, protocol errors): at most `perSecond` in a second, so that a
/// peer cannot flood the log (3,000 refused connections in 0.06 s wrote
/// 2,750 lines: a probe); the next line logged says how many were left out.
/// The metrics endpoints count every refusal. Loop thread (the agent's,
/// the controller's).
public struct LogBudget: Sendable {
    public let perSecond: Int
    private var second: UInt64 = 0
    private var used = 0
    private var skipped = 0

    public init(perSecond: Int) { self.perSecond = perSecond }

    /// The suffix of a line that may be logged now ("" or what was left
    /// out before it), or nil when this second's lines are spent.
    public mutating func take(nowMs: UInt64 = MonotonicClock.milliseconds()) -> String? {
        if nowMs / 1000 != second {
            second = nowMs / 1000
            used = 0
        }
        guard used < perSecond else {
            skipped += 1
            return nil
        }
        used += 1
        defer { skipped = 0 }
        return skipped > 0 ? " (\(skipped) more such lines left out before this one)" : ""
    }
}
