// The ledger behind a lock: admission and the reservation it grants are one
// step, so two creates racing for the last room cannot both get it. A
// create reserves (pending), makes the container, then confirms; a failed
// create releases.
import LmctfySystem
import Synchronization

/// A thread-safe ledger. Every method may be called from any thread.
public final class Admitter: Sendable {
    private let ledger: Mutex<Ledger>

    public init(policy: Policy) {
        ledger = Mutex(Ledger(policy: policy))
    }

    public var policy: Policy { ledger.withLock { $0.policy } }

    /// Checks `name` and, when it fits, records it (pending until
    /// `confirm`) in the same step. Returns the decision either way.
    public func admit(_ name: String, tier: Tier, amount: Amount, capacity: Amount) -> Decision {
        ledger.withLock { l in
            let d = l.check(name, tier: tier, amount: amount, capacity: capacity)
            if d.admitted {
                let order = l.entries[name]?.order
                l.set(name, tier: tier.name, amount: amount, order: order, pending: true)
            }
            return d
        }
    }

    /// The decision without recording anything (CheckAdmission).
    public func check(_ name: String, tier: Tier, amount: Amount, capacity: Amount) -> Decision {
        ledger.withLock { $0.check(name, tier: tier, amount: amount, capacity: capacity) }
    }

    /// The create (or update) of an admitted `name` succeeded.
    public func confirm(_ name: String) { ledger.withLock { $0.confirm(name) } }

    /// The create of an admitted `name` failed: back to `previous` (nil:
    /// forgotten).
    public func release(_ name: String, previous: Commitment?) {
        ledger.withLock { l in
            if let p = previous {
                l.set(name, tier: p.tier, amount: p.amount, order: p.order)
            } else {
                l.remove(name)
            }
        }
    }

    /// What `name` commits now.
    public func commitment(_ name: String) -> Commitment? { ledger.withLock { $0.entries[name] } }

    /// Records what exists (at start, or a container made behind the
    /// agent's back), keeping its order when known.
    public func record(_ name: String, tier: String, amount: Amount, order: UInt64? = nil) {
        ledger.withLock { l in l.set(name, tier: tier, amount: amount, order: order ?? l.entries[name]?.order) }
    }

    /// Forgets a container gone.
    public func forget(_ name: String) { ledger.withLock { _ = $0.remove(name) } }

    /// Brings the ledger in line with the containers that exist: `present`
    /// lists them; those not yet known are read with `read` (nil: gone
    /// meanwhile) and recorded; those gone are forgotten, except entries of
    /// creates under way. Reading happens outside the lock.
    public func sync(present: [String], read: (String) -> (tier: String, amount: Amount)?) {
        let known = ledger.withLock { l in l.entries }
        let here = Set(present)
        var fresh: [(String, String, Amount)] = []
        for name in present.sorted() where known[name] == nil {
            if let r = read(name) { fresh.append((name, r.tier, r.amount)) }
        }
        ledger.withLock { l in
            for (name, c) in l.entries where !here.contains(name) && !c.pending && known[name] != nil { l.remove(name) }
            for (name, tier, amount) in fresh where l.entries[name] == nil { l.set(name, tier: tier, amount: amount) }
        }
    }

    /// A copy of the ledger (reports, eviction).
    public func snapshot() -> Ledger { ledger.withLock { $0 } }
}
