// The agent config's `policy { ... }` block as a Policy, checked: a bad
// value is INVALID_ARGUMENT naming the key, and nothing starts.
import LmctfyProto
import LmctfySystem

extension Policy {
    /// The policy `config` describes (absent: the defaults).
    public init(config: PolicyConfig?) throws(LmctfyError) {
        let c = config ?? PolicyConfig()
        var tiers: [Tier] = []
        for t in c.tier {
            guard let name = t.name, !name.isEmpty,
                  name.utf8.allSatisfy({ ($0 >= 0x61 && $0 <= 0x7a) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2d || $0 == 0x5f }) else {
                throw .invalidArgument("policy.tier: a tier needs a name of [a-z0-9_-] (got \"\(t.name ?? "")\")")
            }
            guard !tiers.contains(where: { $0.name == name }) else {
                throw .invalidArgument("policy.tier: \"\(name)\" is named twice")
            }
            let priority = t.evictionPriority ?? Policy.untiered
            guard (0...10_000).contains(priority) else {
                throw .invalidArgument("policy.tier \"\(name)\": eviction_priority \(priority) is not in 0..10000")
            }
            if let other = tiers.first(where: { $0.evictionPriority == priority }) {
                throw .invalidArgument("policy.tier \"\(name)\": eviction_priority \(priority) is also \"\(other.name)\"'s (a container's tier is told by it)")
            }
            if t.guaranteed == true, t.overcommit == true {
                throw .invalidArgument("policy.tier \"\(name)\": a guaranteed tier cannot overcommit")
            }
            // A CPU share the kernel can give: above 256,000 milliCPU its
            // largest weight was written without a word (the policy probe).
            if let milli = t.cpuMilli, milli > Tier.maxCpuMilli {
                throw .invalidArgument("policy.tier \"\(name)\": cpu_milli \(milli) is above \(Tier.maxCpuMilli) (the kernel's largest CPU share)")
            }
            let action: EvictionAction
            switch t.eviction {
            case nil, .policyEvictionUnspecified: action = t.guaranteed == true ? .never : .kill
            case .evictNever: action = .never
            case .evictFreeze: action = .freeze
            case .evictKill: action = .kill
            case .evictDestroy: action = .destroy
            }
            tiers.append(Tier(name: name, guaranteed: t.guaranteed ?? false, overcommit: t.overcommit ?? false,
                              schedulingLatency: t.schedulingLatency, evictionPriority: priority,
                              cpuMilli: t.cpuMilli ?? 0, eviction: action))
        }
        if tiers.isEmpty { tiers = [.prod, .batch, .bestEffort] }
        let overcommit = Int(c.overcommitPercent ?? 0)
        guard overcommit <= 1000 else {
            throw .invalidArgument("policy.overcommit_percent \(overcommit) is above 1000")
        }
        let above = Int(c.evictAbovePercent ?? 0)
        guard above <= 100 else { throw .invalidArgument("policy.evict_above_percent \(above) is above 100") }
        let until = c.evictUntilPercent.map(Int.init)
        if let until, until > 100 { throw .invalidArgument("policy.evict_until_percent \(until) is above 100") }
        if let until, above > 0, until >= above {
            throw .invalidArgument("policy.evict_until_percent \(until) must be below evict_above_percent \(above)")
        }
        // Usage never goes below 0 %: once started, eviction would go on
        // until nothing evictable is left (the policy probe).
        if above > 0, (until ?? Policy.defaultEvictUntil(above)) == 0 {
            throw .invalidArgument(until == nil
                ? "policy.evict_above_percent 1 leaves no evict_until_percent of 1 or more below it"
                : "policy.evict_until_percent 0 would evict every evictable container once eviction starts (usage never goes below 0 %); give 1 to \(above - 1)")
        }
        let reservedMemory = c.reservedMemoryBytes ?? 0
        let reservedCpu = c.reservedMilliCpu ?? 0
        guard reservedMemory < UInt64(Policy.unlimitedBytes), reservedCpu < 1 << 40 else {
            throw .invalidArgument("policy.reserved_memory_bytes or reserved_milli_cpu is too large")
        }
        let defaultTier = c.defaultTier ?? (tiers.contains { $0.name == "batch" } ? "batch" : tiers[tiers.count - 1].name)
        guard tiers.contains(where: { $0.name == defaultTier }) else {
            throw .invalidArgument("policy.default_tier \"\(defaultTier)\" is not a tier (\(tiers.map(\.name).joined(separator: ", ")))")
        }
        // 5000, CL1's default eviction priority (and a tier's when it gives
        // none), is every container's made without a tier: a tier with it
        // took them all in, while they were admitted as the default tier
        // (a guaranteed one then counted their limits committed, past its
        // capacity, and never evicted them; the policy probe). Only the
        // default tier may have it.
        if let t = tiers.first(where: { $0.evictionPriority == Policy.untiered }), t.name != defaultTier {
            throw .invalidArgument("policy.tier \"\(t.name)\": eviction_priority \(Policy.untiered) (a tier's when it gives none) is CL1's default, "
                                   + "every container's made without a tier, which is the default tier \"\(defaultTier)\"; give \"\(t.name)\" another")
        }
        // The default tier is every container's whose spec names none (the
        // CLI's, made behind the agent's back): one without a memory limit
        // in a guaranteed tier commits nothing there (the policy probe).
        if tiers.first(where: { $0.name == defaultTier })?.guaranteed == true {
            throw .invalidArgument("policy.default_tier \"\(defaultTier)\" is a guaranteed tier: containers made without a tier "
                                   + "need not have a memory limit to commit; name a tier that is not guaranteed")
        }
        self.init(tiers: tiers, defaultTier: defaultTier, overcommitPercent: overcommit,
                  reserved: Amount(memory: Int64(reservedMemory), milliCpu: Int64(reservedCpu)),
                  evictAbovePercent: above, evictUntilPercent: until)
    }
}
