// CL2: whether and how a container may run. Tiers, what a container
// commits, admission against capacity (with bounded overcommit), and the
// order in which containers give way under memory pressure. Pure arithmetic
// over values: no sockets, no cgroupfs, no clock, so that every rule is
// tested without root (Tests/LmctfyPolicyTests). The agent feeds it what it
// reads through CL1 and acts on its answers (README "Policy").
import LmctfyProto
import LmctfySystem

/// What a tier's containers undergo when the machine runs short of memory.
public enum EvictionAction: String, Sendable, Equatable {
    /// Never evicted.
    case never
    /// Frozen: its memory stays, but it stops growing.
    case freeze
    /// Its processes are killed; the container (and its spec) stays.
    case kill
    /// Destroyed.
    case destroy
}

/// A quality-of-service tier and how it maps onto CL1.
public struct Tier: Sendable, Equatable {
    /// The name clients give (`lmctl create --tier NAME`).
    public var name: String
    /// Its committed memory is its limit; the guaranteed tiers together never
    /// commit more than capacity.
    public var guaranteed: Bool
    /// It may commit up to (100 + overcommit_percent)% of capacity.
    public var overcommit: Bool
    /// Given when the spec sets none (and CL1 allows it).
    public var schedulingLatency: SchedulingLatency?
    /// Given when the spec sets none; a container whose eviction priority
    /// equals it is of this tier.
    public var evictionPriority: Int32
    /// cpu.limit given when the spec sets none; 0: none.
    public var cpuMilli: UInt64
    /// The largest `cpuMilli` a tier may give: 256,000 milliCPU is the
    /// kernel's largest CPU share (262,144) through lmctfy's mapping.
    public static let maxCpuMilli: UInt64 = 256_000
    public var eviction: EvictionAction

    public init(name: String, guaranteed: Bool, overcommit: Bool, schedulingLatency: SchedulingLatency?,
                evictionPriority: Int32, cpuMilli: UInt64 = 0, eviction: EvictionAction) {
        self.name = name
        self.guaranteed = guaranteed
        self.overcommit = overcommit && !guaranteed
        self.schedulingLatency = schedulingLatency
        self.evictionPriority = evictionPriority
        self.cpuMilli = cpuMilli
        self.eviction = eviction
    }

    // Default eviction priorities map (CL1, D12) onto oom_score_adj 0 (prod:
    // the kernel's default; anything lower needs CAP_SYS_RESOURCE, which
    // many container hosts drop), 501 (batch) and 1000 (best-effort). A
    // container made with the CLI (CL1's default 5000) matches none and is
    // of the default tier, batch.

    /// prod: guaranteed, PRIORITY, never evicted.
    public static let prod = Tier(name: "prod", guaranteed: true, overcommit: false, schedulingLatency: .priority,
                                  evictionPriority: 5003, eviction: .never)
    /// batch: reservation committed, NORMAL (in /batch), killed under pressure.
    public static let batch = Tier(name: "batch", guaranteed: false, overcommit: true, schedulingLatency: .normal,
                                   evictionPriority: 2500, eviction: .kill)
    /// best-effort: nothing guaranteed, BEST_EFFORT, a token CPU share,
    /// destroyed first under pressure.
    public static let bestEffort = Tier(name: "best-effort", guaranteed: false, overcommit: true,
                                        schedulingLatency: .bestEffort, evictionPriority: 0, cpuMilli: 10,
                                        eviction: .destroy)
}

/// Memory (bytes) and CPU (milliCPU), committed or available.
public struct Amount: Sendable, Equatable, Hashable {
    public var memory: Int64
    public var milliCpu: Int64

    public init(memory: Int64 = 0, milliCpu: Int64 = 0) {
        self.memory = memory
        self.milliCpu = milliCpu
    }

    public static let zero = Amount()

    public static func + (a: Amount, b: Amount) -> Amount {
        Amount(memory: a.memory &+ b.memory, milliCpu: a.milliCpu &+ b.milliCpu)
    }

    public static func - (a: Amount, b: Amount) -> Amount {
        Amount(memory: a.memory &- b.memory, milliCpu: a.milliCpu &- b.milliCpu)
    }

    /// Whether neither dimension is above `other`'s.
    public func fits(in other: Amount) -> Bool { memory <= other.memory && milliCpu <= other.milliCpu }
}

/// An exact sum of amounts (the ledger's sums and the sums an admission
/// checks: see `Ledger.exact`).
struct Sum: Sendable, Equatable {
    var memory: Int128 = 0
    var milliCpu: Int128 = 0

    init() {}
    init(_ a: Amount) {
        memory = Int128(a.memory)
        milliCpu = Int128(a.milliCpu)
    }

    static func + (a: Sum, b: Sum) -> Sum {
        var s = a
        s.memory += b.memory
        s.milliCpu += b.milliCpu
        return s
    }

    static func - (a: Sum, b: Sum) -> Sum {
        var s = a
        s.memory -= b.memory
        s.milliCpu -= b.milliCpu
        return s
    }

    /// As an Amount, Int64.max (or .min) where it is beyond.
    var clamped: Amount {
        func clamp(_ v: Int128) -> Int64 { Int64(clamping: v) }
        return Amount(memory: clamp(memory), milliCpu: clamp(milliCpu))
    }
}

/// The policy: tiers (most protected first), overcommit, eviction marks.
public struct Policy: Sendable, Equatable {
    public var tiers: [Tier]
    public var defaultTier: String
    /// Non-guaranteed tiers that allow it may commit (100 + this)% of memory.
    public var overcommitPercent: Int
    /// Kept off the capacity for the system.
    public var reserved: Amount
    /// Eviction starts above this percentage of capacity (0: never) and
    /// stops below `evictUntilPercent`.
    public var evictAbovePercent: Int
    public var evictUntilPercent: Int

    public init(tiers: [Tier] = [.prod, .batch, .bestEffort], defaultTier: String = "batch", overcommitPercent: Int = 0,
                reserved: Amount = .zero, evictAbovePercent: Int = 0, evictUntilPercent: Int? = nil) {
        self.tiers = tiers
        self.defaultTier = defaultTier
        self.overcommitPercent = overcommitPercent
        self.reserved = reserved
        self.evictAbovePercent = evictAbovePercent
        self.evictUntilPercent = evictUntilPercent ?? Self.defaultEvictUntil(evictAbovePercent)
    }

    /// `evict_until_percent` when the configuration gives none: 10 points
    /// under `above`, and at least 1 below 11 (0 would evict everything
    /// evictable once eviction starts).
    static func defaultEvictUntil(_ above: Int) -> Int {
        above > 10 ? above - 10 : above > 1 ? 1 : 0
    }

    /// The tier called `name`, or INVALID_ARGUMENT naming the tiers there are.
    public func tier(named name: String) throws(LmctfyError) -> Tier {
        guard let t = tiers.first(where: { $0.name == name }) else {
            throw .invalidArgument("Unknown tier \"\(name)\"; the tiers are \(tiers.map(\.name).joined(separator: ", "))")
        }
        return t
    }

    /// Where `name` stands in the eviction order: 0 is the most protected.
    public func rank(of name: String) -> Int { tiers.firstIndex { $0.name == name } ?? tiers.count }

    /// CL1's default eviction priority: a container's made without a tier
    /// (only the default tier may have it, `init(config:)`).
    public static let untiered: Int32 = 5000

    /// The tier a spec says: the one whose eviction priority it has, else
    /// the default tier (a container made without a tier, by the CLI).
    public func tier(of spec: ContainerSpec) -> Tier {
        if let p = spec.memory?.evictionPriority, let t = tiers.first(where: { $0.evictionPriority == p }) { return t }
        return tiers.first { $0.name == defaultTier } ?? tiers[tiers.count - 1]
    }

    /// The spec a Create with `tier` applies: what the spec leaves out is
    /// filled from the tier. `topLevel`: the container is a top-level one
    /// of the machine, where its scheduling latency may be chosen (a nested
    /// v1 container has its top-level container's class). `cpuIsolated`:
    /// its parent isolates cpu, so that it may too (the tier's CPU share).
    public func apply(_ tier: Tier, to spec: ContainerSpec, topLevel: Bool, cpuIsolated: Bool = true) throws(LmctfyError) -> ContainerSpec {
        var s = spec
        var memory = s.memory ?? MemorySpec()
        if let p = memory.evictionPriority, p != tier.evictionPriority {
            throw .invalidArgument("Tier \(tier.name) has eviction priority \(tier.evictionPriority); the spec asks for \(p)")
        }
        memory.evictionPriority = tier.evictionPriority
        if tier.guaranteed {
            guard let limit = memory.limit, limit > 0 else {
                throw .invalidArgument("Tier \(tier.name) guarantees memory: the spec needs a memory limit")
            }
            try Self.checkGuaranteed(limit, tier: tier)
            if memory.reservation == nil { memory.reservation = limit }
        }
        s.memory = memory
        var cpu = s.cpu ?? CpuSpec()
        if topLevel, cpu.schedulingLatency == nil, let latency = tier.schedulingLatency { cpu.schedulingLatency = latency }
        if cpuIsolated, cpu.limit == nil, tier.cpuMilli > 0 { cpu.limit = tier.cpuMilli }
        s.cpu = cpu.schedulingLatency == nil && cpu.limit == nil && cpu.maxLimit == nil && cpu.mask == nil && s.cpu == nil ? nil : cpu
        return s
    }

    /// What a container of `tier` with `spec` commits: memory is its limit
    /// for a guaranteed tier (its reservation when it has no limit), its
    /// reservation otherwise; CPU is its hard cap, cpu.max_limit. Not
    /// cpu.limit: that is a relative weight (shares) every container has,
    /// the kernel's default reading back as 1000 milliCPU, so it cannot
    /// tell a commitment from none. Values read back as "unlimited" (-1,
    /// the kernel's huge defaults, max_limit's UInt64.max) commit nothing.
    /// Bytes count in whole pages, as the kernel keeps a limit (rounded
    /// down): what an admission commits is what a restarted agent reads
    /// back.
    public static func committed(_ spec: ContainerSpec, tier: Tier) -> Amount {
        func bytes(_ v: Int64?) -> Int64? { boundedBytes(v).map(Sys.pageRounded) }
        let m = spec.memory
        let memory = tier.guaranteed ? (bytes(m?.limit) ?? bytes(m?.reservation) ?? 0) : (bytes(m?.reservation) ?? 0)
        let cpu = spec.cpu?.maxLimit.flatMap { $0 > 0 && $0 < UInt64(Int64.max) ? Int64($0) : nil } ?? 0
        return Amount(memory: memory, milliCpu: cpu)
    }

    /// Anything from here up is "no limit" (the kernel's v1 defaults are
    /// just below Int64.max, rounded to pages).
    public static let unlimitedBytes: Int64 = 1 << 60

    /// A memory amount read back from a spec, nil when it is none: absent,
    /// zero or below, or "unlimited" (2^60 B or more).
    public static func boundedBytes(_ v: Int64?) -> Int64? {
        guard let v, v > 0, v < unlimitedBytes else { return nil }
        return v
    }

    /// A guaranteed tier's container needs a memory limit it commits: one
    /// of 2^60 bytes or more reads back as no limit and committed nothing,
    /// a guaranteed container that was never evicted and never counted
    /// (the policy probe). INVALID_ARGUMENT otherwise.
    public static func checkGuaranteed(_ limit: Int64?, tier: Tier) throws(LmctfyError) {
        guard tier.guaranteed else { return }
        guard boundedBytes(limit) != nil else {
            let what = limit.map { $0 > 0 ? "a limit of \($0) B counts as none (2^60 B or more)" : "it has none" } ?? "it has none"
            throw .invalidArgument("Tier \(tier.name) guarantees memory: the container needs a memory limit below 2^60 B, and \(what)")
        }
    }

    /// The capacity: the root container's memory limit and CPU when set,
    /// else the host's, minus what is reserved (never below 0).
    public func capacity(host: Amount, rootMemoryLimit: Int64?, rootMilliCpu: Int64?) -> Amount {
        var memory = host.memory
        if let l = Self.boundedBytes(rootMemoryLimit) { memory = min(memory, l) }
        var cpu = host.milliCpu
        if let c = rootMilliCpu, c > 0 { cpu = min(cpu, c) }
        return Amount(memory: max(0, memory - reserved.memory), milliCpu: max(0, cpu - reserved.milliCpu))
    }

    /// The root container's CPU from its spec: max_limit when set, else
    /// the CPUs of its mask × 1000; nil: neither.
    public static func milliCpu(of spec: ContainerSpec) -> Int64? {
        if let max = spec.cpu?.maxLimit, max > 0, max < UInt64(Int64.max) { return Int64(max) }
        if let mask = spec.cpu?.mask, !mask.data.isEmpty {
            let n = mask.data.reduce(0) { $0 + $1.nonzeroBitCount }
            return n > 0 ? Int64(n) * 1000 : nil
        }
        return nil
    }

    /// The memory a tier's containers may commit in all, for the check of
    /// a non-guaranteed tier.
    func memoryCeiling(_ tier: Tier, capacity: Int64) -> Int64 {
        let percent = 100 + (tier.overcommit ? overcommitPercent : 0)
        return capacity.multipliedReportingOverflow(by: Int64(percent)).overflow ? Int64.max : capacity * Int64(percent) / 100
    }
}

/// What the ledger says about one container.
public struct Commitment: Sendable, Equatable {
    public var tier: String
    public var amount: Amount
    /// Order of arrival (higher is newer): the eviction order within a tier.
    public var order: UInt64
    /// Reserved by an admission whose create has not finished.
    public var pending: Bool

    public init(tier: String, amount: Amount, order: UInt64, pending: Bool = false) {
        self.tier = tier
        self.amount = amount
        self.order = order
        self.pending = pending
    }
}

/// An admission's answer.
public struct Decision: Sendable, Equatable {
    public var admitted: Bool
    public var tier: String
    /// The arithmetic, for the caller (and RESOURCE_EXHAUSTED's message):
    /// written when asked for, from the ledger as the decision saw it (an
    /// admitted create never asks; the text cost it ~5 µs).
    public var message: String { describe() }
    private let describe: @Sendable () -> String

    init(admitted: Bool, tier: String, describe: @escaping @Sendable () -> String) {
        self.admitted = admitted
        self.tier = tier
        self.describe = describe
    }

    public static func == (a: Decision, b: Decision) -> Bool {
        a.admitted == b.admitted && a.tier == b.tier && a.message == b.message
    }
}

/// Every container's commitment, with sums per tier kept as it changes
/// (an admission costs a look at the tiers, not at every container).
/// A value type: the agent keeps one behind a lock (Admitter).
public struct Ledger: Sendable {
    public private(set) var policy: Policy
    public private(set) var entries: [String: Commitment] = [:]
    /// Sum per tier, exact: Int128, since each commitment may be just
    /// below the 2^60 cut-off and nine of them wrapped an Int64 sum
    /// negative (CLI-made containers, which no admission polices), after
    /// which anything was admitted.
    private var exact: [String: Sum] = [:]
    /// How many containers per tier.
    public private(set) var counts: [String: Int] = [:]
    private var nextOrder: UInt64 = 1

    public init(policy: Policy) {
        self.policy = policy
    }

    /// Sum per tier (Int64.max where it is more).
    public var sums: [String: Amount] { exact.mapValues(\.clamped) }

    /// The sum of the guaranteed tiers, and of every tier (Int64.max where
    /// it is more).
    public var guaranteedSum: Amount { exactGuaranteed.clamped }
    public var totalSum: Amount { exactTotal.clamped }

    private var exactGuaranteed: Sum {
        policy.tiers.filter(\.guaranteed).reduce(Sum()) { $0 + (exact[$1.name] ?? Sum()) }
    }
    private var exactTotal: Sum { exact.values.reduce(Sum(), +) }

    /// Records `name` (replacing what it had). `order` nil: newest.
    public mutating func set(_ name: String, tier: String, amount: Amount, order: UInt64? = nil, pending: Bool = false) {
        remove(name)
        let o = order ?? nextOrder
        nextOrder = max(nextOrder, o) + 1
        entries[name] = Commitment(tier: tier, amount: amount, order: o, pending: pending)
        exact[tier, default: Sum()] = exact[tier, default: Sum()] + Sum(amount)
        counts[tier, default: 0] += 1
    }

    /// Forgets `name`; returns what it had.
    @discardableResult
    public mutating func remove(_ name: String) -> Commitment? {
        guard let old = entries.removeValue(forKey: name) else { return nil }
        exact[old.tier] = (exact[old.tier] ?? Sum()) - Sum(old.amount)
        counts[old.tier, default: 1] -= 1
        return old
    }

    /// Marks a pending entry done (its create succeeded).
    public mutating func confirm(_ name: String) { entries[name]?.pending = false }

    /// Would `name` (new, or replacing its current commitment) fit with
    /// `amount` in `tier`, on `capacity`? The rules (README "Policy"):
    /// a guaranteed tier: guaranteed sum + asked ≤ capacity (memory and CPU);
    /// another tier: everything committed + asked ≤ capacity, memory up to
    /// (100 + overcommit)% when the tier allows overcommit. An update that
    /// grows neither dimension is always admitted (what is there stays).
    public func check(_ name: String, tier: Tier, amount: Amount, capacity: Amount) -> Decision {
        let current = entries[name]
        let others: (guaranteed: Sum, total: Sum) = {
            var g = exactGuaranteed, t = exactTotal
            if let c = current {
                t = t - Sum(c.amount)
                if policy.tiers.first(where: { $0.name == c.tier })?.guaranteed == true { g = g - Sum(c.amount) }
            }
            return (g, t)
        }()
        // Nothing grows: the same tier, or a move to a tier held to no
        // less a ceiling (prod to batch: a demotion that grows nothing was
        // refused on a machine over-committed already; the policy probe).
        if let c = current, amount.fits(in: c.amount) {
            let from = policy.tiers.first { $0.name == c.tier }
            if c.tier == tier.name || (!tier.guaranteed && (tier.overcommit || from.map { !$0.overcommit } == true)) {
                return decision(name, tier, amount, capacity, ok: true, why: "it does not grow")
            }
        }
        // A resource the container commits none of is not checked: asking
        // nothing cannot make things worse (a batch container committing
        // 0 B was refused while other tiers were over the ceiling).
        var problems: [String] = []
        if tier.guaranteed {
            let after = others.guaranteed + Sum(amount)
            if amount.memory > 0, after.memory > Int128(capacity.memory) {
                problems.append("memory: guaranteed tiers would commit \(Self.bytes(after.memory)) of \(Self.bytes(capacity.memory))")
            }
            if amount.milliCpu > 0, after.milliCpu > Int128(capacity.milliCpu) {
                problems.append("cpu: guaranteed tiers would commit \(after.milliCpu) of \(capacity.milliCpu) milliCPU")
            }
        } else {
            let after = others.total + Sum(amount)
            let ceiling = policy.memoryCeiling(tier, capacity: capacity.memory)
            if amount.memory > 0, after.memory > Int128(ceiling) {
                let percent = 100 + (tier.overcommit ? policy.overcommitPercent : 0)
                problems.append("memory: all tiers would commit \(Self.bytes(after.memory)), above \(percent)% of \(Self.bytes(capacity.memory)) (\(Self.bytes(ceiling)))")
            }
            if amount.milliCpu > 0, after.milliCpu > Int128(capacity.milliCpu) {
                problems.append("cpu: all tiers would commit \(after.milliCpu) of \(capacity.milliCpu) milliCPU")
            }
        }
        return decision(name, tier, amount, capacity, ok: problems.isEmpty, why: problems.joined(separator: "; "))
    }

    /// The decision, its text from what the ledger holds now: the sums
    /// and counts (a few tiers), not the entries, are kept for it, so the
    /// caller's next change of the ledger copies nothing large.
    private func decision(_ name: String, _ tier: Tier, _ amount: Amount, _ capacity: Amount, ok: Bool, why: String) -> Decision {
        let (policy, sums, counts, guaranteed, current) = (policy, sums, counts, guaranteedSum, entries[name])
        return Decision(admitted: ok, tier: tier.name) {
            let free = capacity - guaranteed
            let byTier = policy.tiers.map { t in
                let s = sums[t.name] ?? .zero
                return "\(t.name) \(Self.bytes(s.memory)) \(s.milliCpu) milliCPU (\(counts[t.name] ?? 0))"
            }.joined(separator: ", ")
            let verdict = ok ? "admitted" : "refused"
            let now = current.map { " (now \(Self.bytes($0.amount.memory)) \($0.amount.milliCpu) milliCPU)" } ?? ""
            return "\(verdict) \"\(name)\" in tier \(tier.name)\(why.isEmpty ? "" : ": \(why)"); asked \(Self.bytes(amount.memory)) \(amount.milliCpu) milliCPU\(now); capacity \(Self.bytes(capacity.memory)) \(capacity.milliCpu) milliCPU, overcommit \(policy.overcommitPercent)%; committed by tier: \(byTier); free (capacity minus guaranteed) \(Self.bytes(free.memory)) \(free.milliCpu) milliCPU"
        }
    }

    /// Bytes with MiB for people: "104857600 B (100.0 MiB)". (In Int128:
    /// `n * 10` trapped for n above Int64.max / 10, and a create asking a
    /// reservation of 0.8 EiB killed the agent writing its refusal.)
    static func bytes(_ n: Int64) -> String { bytes(Int128(n)) }

    static func bytes(_ n: Int128) -> String {
        let tenths = (n * 10 + (n >= 0 ? 1 << 19 : -(1 << 19))) / (1 << 20)
        return "\(n) B (\(tenths / 10).\(tenths % 10 < 0 ? -(tenths % 10) : tenths % 10) MiB)"
    }

    /// The report MachineInfo and CheckAdmission carry.
    public func report(capacity: Amount) -> PolicyReport {
        let g = guaranteedSum
        return PolicyReport(
            capacityMemory: capacity.memory, capacityMilliCpu: capacity.milliCpu,
            tier: policy.tiers.map { t in
                let s = sums[t.name] ?? .zero
                return TierCommitment(tier: t.name, memory: s.memory, milliCpu: s.milliCpu, containers: UInt32(counts[t.name] ?? 0))
            },
            freeMemory: capacity.memory - g.memory, freeMilliCpu: capacity.milliCpu - g.milliCpu,
            overcommitPercent: UInt32(policy.overcommitPercent))
    }
}
