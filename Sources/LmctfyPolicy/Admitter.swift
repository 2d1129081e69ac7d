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

    public var policy: Policy { ledger.locked { $0.policy } }

    /// Checks `name` and, when it fits, records it (pending until
    /// `confirm`) in the same step. Returns the decision either way; nil
    /// when `new` and `name` already has an entry (made, or a create of it
    /// under way): the caller's create would conflict.
    public func admit(_ name: String, tier: Tier, amount: Amount, capacity: Amount, new: Bool) -> Decision? {
        ledger.locked { l in
            if new, l.entries[name] != nil { return nil }
            return Self.admit(&l, name, tier, amount, capacity)
        }
    }

    /// `admit` of an update (or a create that may replace): never nil.
    public func admit(_ name: String, tier: Tier, amount: Amount, capacity: Amount) -> Decision {
        ledger.locked { l in Self.admit(&l, name, tier, amount, capacity) }
    }

    private static func admit(_ l: inout Ledger, _ name: String, _ tier: Tier, _ amount: Amount, _ capacity: Amount) -> Decision {
        do {
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
        ledger.locked { $0.check(name, tier: tier, amount: amount, capacity: capacity) }
    }

    /// The create (or update) of an admitted `name` succeeded.
    public func confirm(_ name: String) { ledger.locked { $0.confirm(name) } }

    /// The create of an admitted `name` failed: back to `previous` (nil:
    /// forgotten).
    public func release(_ name: String, previous: Commitment?) {
        ledger.locked { l in
            if let p = previous {
                l.set(name, tier: p.tier, amount: p.amount, order: p.order)
            } else {
                l.remove(name)
            }
        }
    }

    /// What `name` commits now.
    public func commitment(_ name: String) -> Commitment? { ledger.locked { $0.entries[name] } }

    /// Records what exists (at start, or a container made behind the
    /// agent's back), keeping its order when known.
    public func record(_ name: String, tier: String, amount: Amount, order: UInt64? = nil) {
        ledger.locked { l in l.set(name, tier: tier, amount: amount, order: order ?? l.entries[name]?.order) }
    }

    /// Records `name` as the newest container (a create just made it).
    public func record(_ name: String, tier: String, amount: Amount, newest: Bool) {
        ledger.locked { l in l.set(name, tier: tier, amount: amount, order: newest ? nil : l.entries[name]?.order) }
    }

    /// Forgets a container gone.
    public func forget(_ name: String) { ledger.locked { _ = $0.remove(name) } }

    /// Forgets `name`'s entry if it is still `entry` (the same order, not
    /// pending): not one a create admitted since.
    public func forget(_ name: String, only entry: Commitment) {
        ledger.locked { l in
            guard let now = l.entries[name], now.order == entry.order, !now.pending else { return }
            l.remove(name)
        }
    }

    /// A known container whose spec changed behind the agent's back: what
    /// it commits now, its order kept. Not one being created or changed by
    /// the agent (its own step settles it), nor one not known.
    public func refresh(_ name: String, tier: String, amount: Amount) {
        ledger.locked { l in
            guard let c = l.entries[name], !c.pending else { return }
            l.set(name, tier: tier, amount: amount, order: c.order)
        }
    }

    /// Brings the ledger in line with the containers that exist: `list`
    /// lists them (nil: the listing failed, nothing changes); those not yet
    /// known are read with `read` (nil: gone meanwhile) and recorded; those
    /// gone are forgotten, except creates under way. What the ledger holds
    /// is looked at before the listing, so a create that completes while
    /// the listing runs (absent from it) is not forgotten. Listing and
    /// reading happen outside the lock.
    public func sync(list: () -> [String]?, read: (String) -> (tier: String, amount: Amount)?) {
        sync(list: list, readOrdered: { name in read(name).map { ($0.tier, $0.amount, nil) } })
    }

    /// `sync` where `read` may also give a container's arrival order (its
    /// creation time, say) for the eviction order; nil: now (newest).
    public func sync(list: () -> [String]?, readOrdered read: (String) -> (tier: String, amount: Amount, order: UInt64?)?) {
        let known = ledger.locked { l in l.entries }
        guard let present = list() else { return }
        let here = Set(present)
        var fresh: [(String, String, Amount, UInt64?)] = []
        for name in present.sorted() where known[name] == nil {
            if let r = read(name) { fresh.append((name, r.tier, r.amount, r.order)) }
        }
        // Known arrival orders first, oldest first, then the rest by name.
        fresh.sort { a, b in
            switch (a.3, b.3) {
            case let (x?, y?): x != y ? x < y : a.0 < b.0
            case (.some, nil): true
            case (nil, .some): false
            case (nil, nil): a.0 < b.0
            }
        }
        ledger.locked { l in
            // Forgotten only if it was settled before the listing and is
            // still that same entry (a create of the name since has another order).
            for (name, c) in l.entries where !here.contains(name) && !c.pending {
                if let k = known[name], !k.pending, k.order == c.order { l.remove(name) }
            }
            for (name, tier, amount, order) in fresh where l.entries[name] == nil { l.set(name, tier: tier, amount: amount, order: order) }
        }
    }

    /// A copy of the ledger (reports, eviction).
    public func snapshot() -> Ledger { ledger.locked { $0 } }
}
