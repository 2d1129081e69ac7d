// What gives way when the machine runs short of memory: the decision only
// (who next, and whether to go on); the agent measures and acts.
import LmctfyProto

/// A container that might be evicted, as the agent last saw it.
public struct EvictionCandidate: Sendable, Equatable {
    public var name: String
    public var tier: String
    /// Arrival order (higher is newer).
    public var order: UInt64
    /// Whether it (or a container below it) has processes.
    public var hasProcesses: Bool
    public var frozen: Bool

    public init(name: String, tier: String, order: UInt64, hasProcesses: Bool, frozen: Bool) {
        self.name = name
        self.tier = tier
        self.order = order
        self.hasProcesses = hasProcesses
        self.frozen = frozen
    }
}

/// Hysteresis over the root container's memory usage: eviction starts when
/// usage goes above `high` and, once started, goes on until usage is below
/// `low`; between the two marks nothing changes, so it does not flap.
public struct PressureGate: Sendable, Equatable {
    public let high: Int64
    public let low: Int64
    public private(set) var active = false

    /// The marks for `policy` on `capacity` bytes; nil when eviction is off.
    public init?(policy: Policy, capacity: Int64) {
        guard policy.evictAbovePercent > 0 else { return nil }
        high = Self.percent(capacity, policy.evictAbovePercent)
        low = min(high, Self.percent(capacity, policy.evictUntilPercent))
    }

    /// `percent` of `capacity`, rounded down once (dividing first lost up
    /// to 99 bytes: 50% of 128 MiB was 67108850; the policy probe).
    static func percent(_ capacity: Int64, _ percent: Int) -> Int64 {
        Int64(clamping: Int128(capacity) * Int128(percent) / 100)
    }

    public init(high: Int64, low: Int64) {
        self.high = high
        self.low = min(low, high)
    }

    /// Takes a new usage figure; returns whether to evict (one more) now.
    public mutating func update(usage: Int64) -> Bool {
        if usage > high { active = true } else if usage < low { active = false }
        return active
    }
}

extension Policy {
    /// The next container to evict and how, or nil when none may be: the
    /// lowest tier first (the tier list's last), newest first inside a
    /// tier; a tier whose action is `never` is never chosen; a container
    /// without processes (none made yet, or killed already) is not chosen
    /// for any action, nor a frozen one to be frozen: evicting it frees
    /// nothing (the page cache it charged stays charged above it when it
    /// goes), and empty best-effort containers were destroyed one after
    /// another, new ones within 100 ms of their create, while usage stayed
    /// up (a probe).
    public func nextVictim(_ candidates: [EvictionCandidate]) -> (EvictionCandidate, EvictionAction)? {
        var best: (EvictionCandidate, EvictionAction, Int)?
        for c in candidates where c.hasProcesses {
            let rank = self.rank(of: c.tier)
            let action = rank < tiers.count ? tiers[rank].eviction : (tiers.first { $0.name == defaultTier }?.eviction ?? .never)
            switch action {
            case .never: continue
            case .kill, .destroy: break
            case .freeze: guard !c.frozen else { continue }
            }
            if let b = best, (b.2, b.0.order) >= (rank, c.order) { continue }
            best = (c, action, rank)
        }
        return best.map { ($0.0, $0.1) }
    }
}
