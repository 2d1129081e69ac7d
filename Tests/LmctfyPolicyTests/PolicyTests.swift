// CL2's arithmetic without root: config, tiers, what a spec commits,
// capacity, admission over many combinations (against an independent
// brute-force oracle and hand-worked rows), updates, racing creates, and
// the eviction order with its hysteresis.
import Dispatch
import LmctfyPolicy
import LmctfyProto
import LmctfySystem
import Testing

private let mib: Int64 = 1 << 20

private func spec(_ text: String) throws -> ContainerSpec { try ContainerSpec(textFormat: text) }

@Suite struct PolicyConfigTests {
    @Test func defaultsAreProdBatchBestEffortWithoutOvercommitOrEviction() throws {
        let p = try Policy(config: nil)
        #expect(p.tiers.map(\.name) == ["prod", "batch", "best-effort"])
        #expect(p.defaultTier == "batch" && p.overcommitPercent == 0 && p.evictAbovePercent == 0)
        #expect(p.tiers[0].guaranteed && !p.tiers[0].overcommit && p.tiers[0].eviction == .never)
        #expect(!p.tiers[1].guaranteed && p.tiers[1].overcommit && p.tiers[1].eviction == .kill)
        #expect(p.tiers[2].eviction == .destroy && p.tiers[2].schedulingLatency == .bestEffort)
        #expect(try Policy(config: PolicyConfig()) == p)
    }

    @Test func aConfiguredPolicyIsTaken() throws {
        let c = try PolicyConfig(textFormat: """
            overcommit_percent: 25 reserved_memory_bytes: 1048576 reserved_milli_cpu: 500
            evict_above_percent: 90 evict_until_percent: 70 default_tier: "low"
            tier { name: "gold" guaranteed: true eviction_priority: 9500 scheduling_latency: PREMIER }
            tier { name: "low" overcommit: true eviction_priority: 100 eviction: EVICT_FREEZE cpu_milli: 20 }
            """)
        let p = try Policy(config: c)
        #expect(p.tiers.map(\.name) == ["gold", "low"])
        #expect(p.tiers[0].eviction == .never, "a guaranteed tier without an action is never evicted")
        #expect(p.tiers[1].eviction == .freeze && p.tiers[1].cpuMilli == 20)
        #expect(p.overcommitPercent == 25 && p.reserved == Amount(memory: mib, milliCpu: 500))
        #expect(p.evictAbovePercent == 90 && p.evictUntilPercent == 70 && p.defaultTier == "low")
        #expect(try Policy(config: PolicyConfig(textFormat: "evict_above_percent: 85")).evictUntilPercent == 75)
        // Under 11, the default is 1 (10 points under would be 0 or less).
        #expect(try Policy(config: PolicyConfig(textFormat: "evict_above_percent: 8")).evictUntilPercent == 1)
        #expect(try Policy(config: PolicyConfig(textFormat: "evict_until_percent: 0")).evictAbovePercent == 0,
                "no eviction: an until of 0 means nothing")
        // The default tier may have CL1's default: it is theirs anyway.
        let only = try Policy(config: PolicyConfig(textFormat: "tier { name: \"low\" eviction_priority: 1 } tier { name: \"any\" }"))
        #expect(only.defaultTier == "any" && only.tiers[1].evictionPriority == 5000)
    }

    @Test func badValuesAreRefusedNamingTheKey() throws {
        let bad: [(String, String)] = [
            ("overcommit_percent: 1001", "overcommit_percent"),
            ("evict_above_percent: 101", "evict_above_percent"),
            ("evict_above_percent: 80 evict_until_percent: 80", "evict_until_percent"),
            ("tier { name: \"a\" } tier { name: \"a\" eviction_priority: 1 }", "named twice"),
            ("tier { name: \"a\" eviction_priority: 1 } tier { name: \"b\" eviction_priority: 1 }", "eviction_priority 1"),
            ("tier { name: \"a\" eviction_priority: 10001 }", "not in 0..10000"),
            ("tier { name: \"A b\" }", "name of"),
            ("tier { name: \"\" }", "name of"),
            ("tier { name: \"g\" guaranteed: true overcommit: true }", "cannot overcommit"),
            ("default_tier: \"nope\"", "default_tier"),
            ("reserved_memory_bytes: 18446744073709551615", "too large"),
            ("evict_until_percent: 500", "evict_until_percent 500 is above 100"),
            // Usage never goes below 0 %: every evictable container would
            // go (the policy probe).
            ("evict_above_percent: 80 evict_until_percent: 0", "evict_until_percent 0 would evict every evictable container"),
            ("evict_above_percent: 1", "evict_above_percent 1 leaves no evict_until_percent"),
            ("tier { name: \"a\" cpu_milli: 99999999999 }", "cpu_milli 99999999999 is above 256000"),
            ("default_tier: \"prod\"", "is a guaranteed tier"),
            // 5000 (given, or a tier's without one) is CL1's default, every
            // untiered container's: only the default tier's (the policy
            // probe: gold took in every container made without a tier).
            ("tier { name: \"gold\" guaranteed: true } tier { name: \"batch\" overcommit: true eviction_priority: 2500 }",
             "eviction_priority 5000 (a tier's when it gives none) is CL1's default"),
            ("tier { name: \"a\" eviction_priority: 5000 } tier { name: \"b\" eviction_priority: 1 } default_tier: \"b\"", "give \"a\" another"),
        ]
        for (text, needle) in bad {
            let config = try PolicyConfig(textFormat: text)
            do throws(LmctfyError) {
                _ = try Policy(config: config)
                Issue.record("accepted: \(text)")
            } catch {
                #expect(error.code == .invalidArgument, "\(text)")
                #expect(error.message.contains(needle), "\(text): \(error.message)")
            }
        }
    }
}

@Suite struct TierTests {
    let policy = Policy()

    @Test func aSpecsTierIsItsEvictionPriorityElseTheDefault() throws {
        #expect(policy.tier(of: try spec("memory { eviction_priority: 5003 }")).name == "prod")
        #expect(policy.tier(of: try spec("memory { eviction_priority: 0 }")).name == "best-effort")
        #expect(policy.tier(of: try spec("memory { eviction_priority: 2500 }")).name == "batch")
        #expect(policy.tier(of: try spec("memory { eviction_priority: 5000 }")).name == "batch", "CL1's default: the default tier")
        #expect(policy.tier(of: try spec("memory { eviction_priority: 4242 }")).name == "batch")
        #expect(policy.tier(of: ContainerSpec()).name == "batch", "a CLI container is batch")
        #expect(throws: LmctfyError.self) { try policy.tier(named: "gold") }
        #expect(try policy.tier(named: "prod") == .prod)
    }

    @Test func aTierFillsWhatTheSpecLeavesOut() throws {
        let prod = try policy.apply(.prod, to: try spec("memory { limit: 104857600 }"), topLevel: true)
        #expect(prod.memory?.evictionPriority == 5003 && prod.memory?.reservation == 104_857_600)
        #expect(prod.cpu?.schedulingLatency == .priority)
        let nested = try policy.apply(.prod, to: try spec("memory { limit: 104857600 reservation: 1048576 }"), topLevel: false)
        #expect(nested.cpu == nil, "no latency below the top (it is the top-level container's)")
        #expect(nested.memory?.reservation == 1_048_576, "a reservation given stays")
        let be = try policy.apply(.bestEffort, to: ContainerSpec(), topLevel: false)
        #expect(be.memory?.evictionPriority == 0 && be.cpu?.limit == 10 && be.memory?.reservation == nil)
        #expect(try policy.apply(.bestEffort, to: ContainerSpec(), topLevel: false, cpuIsolated: false).cpu == nil,
                "no CPU share where the parent does not isolate cpu")
        let keep = try policy.apply(.bestEffort, to: try spec("cpu { limit: 300 }"), topLevel: true)
        #expect(keep.cpu?.limit == 300 && keep.cpu?.schedulingLatency == .bestEffort)
        let batch = try policy.apply(.batch, to: ContainerSpec(), topLevel: false)
        #expect(batch.memory?.evictionPriority == 2500 && batch.cpu == nil)
    }

    @Test func aTierRefusesWhatContradictsIt() throws {
        #expect(throws: LmctfyError.self) { try policy.apply(.prod, to: ContainerSpec(), topLevel: true) }
        #expect(throws: LmctfyError.self) { try policy.apply(.prod, to: try spec("memory { limit: -1 }"), topLevel: true) }
        // A limit that reads back as none commits nothing: no guarantee (the policy probe).
        #expect(throws: LmctfyError.self) { try policy.apply(.prod, to: try spec("memory { limit: 1152921504606846976 }"), topLevel: true) }
        #expect(try policy.apply(.prod, to: try spec("memory { limit: 1152921504606842880 }"), topLevel: true).memory?.reservation == 1152921504606842880)
        let asked = try spec("memory { eviction_priority: 5003 }")
        do throws(LmctfyError) {
            _ = try policy.apply(.batch, to: asked, topLevel: true)
            Issue.record("a batch container with prod's eviction priority")
        } catch {
            #expect(error.code == .invalidArgument && error.message.contains("eviction priority 2500"), "\(error.message)")
        }
    }

    @Test func whatASpecCommits() throws {
        let both = try spec("memory { limit: 209715200 reservation: 52428800 } cpu { limit: 300 max_limit: 1500 }")
        #expect(Policy.committed(both, tier: .prod) == Amount(memory: 200 * mib, milliCpu: 1500))
        #expect(Policy.committed(both, tier: .batch) == Amount(memory: 50 * mib, milliCpu: 1500))
        #expect(Policy.committed(try spec("memory { reservation: 52428800 }"), tier: .prod).memory == 50 * mib,
                "no limit: the reservation")
        // Read back from the kernel: "unlimited" commits nothing.
        let unlimited = try spec("memory { limit: -1 reservation: 9223372036854771712 }")
        #expect(Policy.committed(unlimited, tier: .prod) == .zero)
        #expect(Policy.committed(unlimited, tier: .batch) == .zero)
        #expect(Policy.committed(ContainerSpec(), tier: .bestEffort) == .zero)
        // In whole pages, as the kernel keeps a limit (and reads it back).
        let ragged = try spec("memory { limit: \(200 * mib + 1) reservation: \(50 * mib + Sys.pageSize - 1) }")
        #expect(Policy.committed(ragged, tier: .prod).memory == 200 * mib)
        #expect(Policy.committed(ragged, tier: .batch).memory == 50 * mib)
        // The weight alone (every container has one; 1024 shares read back as 1000) commits no CPU.
        #expect(Policy.committed(try spec("cpu { limit: 1000 max_limit: 18446744073709551615 }"), tier: .prod) == .zero)
    }

    @Test func capacityIsTheRootsLimitElseTheHostsMinusTheReserve() throws {
        let host = Amount(memory: 8192 * mib, milliCpu: 4000)
        let p = Policy(reserved: Amount(memory: 512 * mib, milliCpu: 500))
        #expect(Policy().capacity(host: host, rootMemoryLimit: 256 * mib, rootMilliCpu: nil) == Amount(memory: 256 * mib, milliCpu: 4000))
        #expect(Policy().capacity(host: host, rootMemoryLimit: -1, rootMilliCpu: 1500) == Amount(memory: 8192 * mib, milliCpu: 1500))
        #expect(Policy().capacity(host: host, rootMemoryLimit: Int64.max, rootMilliCpu: nil) == host, "unlimited root")
        #expect(Policy().capacity(host: host, rootMemoryLimit: 16384 * mib, rootMilliCpu: 9000) == host, "never above the host")
        #expect(p.capacity(host: host, rootMemoryLimit: nil, rootMilliCpu: nil) == Amount(memory: 7680 * mib, milliCpu: 3500))
        #expect(p.capacity(host: Amount(memory: mib, milliCpu: 100), rootMemoryLimit: nil, rootMilliCpu: nil) == .zero)
        #expect(Policy.milliCpu(of: try spec("cpu { max_limit: 1500 }")) == 1500)
        #expect(Policy.milliCpu(of: try spec("cpu { mask { data: [5] } }")) == 2000, "CPUs 0 and 2")
        #expect(Policy.milliCpu(of: try spec("cpu { max_limit: 18446744073709551615 }")) == nil)
        #expect(Policy.milliCpu(of: ContainerSpec()) == nil)
    }
}

/// The rules, written out the slow way: every container's commitment summed
/// afresh per question.
private func oracle(_ policy: Policy, existing: [(String, String, Amount)], name: String, tier: Tier, amount: Amount,
                    capacity: Amount) -> Bool {
    let others = existing.filter { $0.0 != name }
    // An update that grows nothing, in its tier or moving to one held to no
    // less a ceiling (not guaranteed; overcommitting, or coming from a tier
    // that does not).
    if let mine = existing.first(where: { $0.0 == name }), amount.memory <= mine.2.memory, amount.milliCpu <= mine.2.milliCpu {
        let from = policy.tiers.first { $0.name == mine.1 }!
        if mine.1 == tier.name || (!tier.guaranteed && (tier.overcommit || !from.overcommit)) { return true }
    }
    if tier.guaranteed {
        let g = others.filter { e in policy.tiers.first { $0.name == e.1 }!.guaranteed }
        let mem = g.map(\.2.memory).reduce(0, +) + amount.memory
        let cpu = g.map(\.2.milliCpu).reduce(0, +) + amount.milliCpu
        return (amount.memory == 0 || mem <= capacity.memory) && (amount.milliCpu == 0 || cpu <= capacity.milliCpu)
    }
    let mem = others.map(\.2.memory).reduce(0, +) + amount.memory
    let cpu = others.map(\.2.milliCpu).reduce(0, +) + amount.milliCpu
    let percent = Int64(100 + (tier.overcommit ? policy.overcommitPercent : 0))
    // Asking nothing of a resource is never refused for it.
    return (amount.memory == 0 || mem * 100 <= capacity.memory * percent) && (amount.milliCpu == 0 || cpu <= capacity.milliCpu)
}

@Suite struct AdmissionTests {
    let capacity = Amount(memory: 256 * mib, milliCpu: 2000)

    /// The root integration test's numbers, worked by hand.
    @Test func twoProdOf100FitIn256AThirdDoesNotABestEffortDoesWithOvercommit() {
        for overcommit in [0, 25, 100] {
            var l = Ledger(policy: Policy(overcommitPercent: overcommit))
            let hundred = Amount(memory: 100 * mib)
            for n in ["/p1", "/p2"] {
                let d = l.check(n, tier: .prod, amount: hundred, capacity: capacity)
                #expect(d.admitted, "\(d.message)")
                l.set(n, tier: "prod", amount: hundred)
            }
            let third = l.check("/p3", tier: .prod, amount: hundred, capacity: capacity)
            #expect(!third.admitted, "prod never overcommits (overcommit \(overcommit))")
            #expect(third.message.contains("asked 104857600 B (100.0 MiB)"), "\(third.message)")
            #expect(third.message.contains("guaranteed tiers would commit 314572800 B (300.0 MiB) of 268435456 B (256.0 MiB)"),
                    "\(third.message)")
            #expect(third.message.contains("prod 209715200 B (200.0 MiB) 0 milliCPU (2)"), "\(third.message)")
            #expect(third.message.contains("free (capacity minus guaranteed) 58720256 B (56.0 MiB)"), "\(third.message)")
            let be = l.check("/be", tier: .bestEffort, amount: hundred, capacity: capacity)
            // 300 MiB against 256 MiB: needs overcommit ≥ 18%.
            #expect(be.admitted == (overcommit >= 25), "overcommit \(overcommit): \(be.message)")
            if !be.admitted { #expect(be.message.contains("above 100% of 268435456 B")) }
        }
    }

    /// Every combination of a few commitments per tier and a request, for
    /// each tier and overcommit 0/25/100, against the oracle.
    @Test func everyCombinationAgreesWithTheOracle() {
        let sizes: [Int64] = [0, 64, 100, 128, 200, 256]
        let cpus: [Int64] = [0, 500, 1500]
        var checked = 0
        for overcommit in [0, 25, 100] {
            let policy = Policy(overcommitPercent: overcommit)
            for prod in sizes { for batch in sizes { for be in [0, 128] as [Int64] { for prodCpu in cpus {
                var l = Ledger(policy: policy)
                var existing: [(String, String, Amount)] = []
                func add(_ n: String, _ t: String, _ a: Amount) { l.set(n, tier: t, amount: a); existing.append((n, t, a)) }
                add("/prod", "prod", Amount(memory: prod * mib, milliCpu: prodCpu))
                add("/batch", "batch", Amount(memory: batch * mib, milliCpu: 250))
                add("/be", "best-effort", Amount(memory: be * mib))
                for tier in policy.tiers { for ask in sizes { for askCpu in cpus {
                    // A new container, and an update of each existing one.
                    for name in ["/new", "/prod", "/batch", "/be"] {
                        let amount = Amount(memory: ask * mib, milliCpu: askCpu)
                        let d = l.check(name, tier: tier, amount: amount, capacity: capacity)
                        let want = oracle(policy, existing: existing, name: name, tier: tier, amount: amount, capacity: capacity)
                        if d.admitted != want {
                            Issue.record("overcommit \(overcommit) prod \(prod) batch \(batch) be \(be) prodCpu \(prodCpu): \(name) \(tier.name) \(ask)/\(askCpu): \(d.message)")
                        }
                        #expect(d.tier == tier.name)
                        #expect(d.message.hasPrefix(want ? "admitted" : "refused"))
                        checked += 1
                    }
                } } }
            } } } }
        }
        #expect(checked == 3 * 6 * 6 * 2 * 3 * 3 * 6 * 3 * 4)
    }

    @Test func updatesThatGrowAreCheckedWithoutTheirOldAmountAndShrinksAlwaysPass() {
        var l = Ledger(policy: Policy())
        l.set("/a", tier: "prod", amount: Amount(memory: 200 * mib))
        l.set("/b", tier: "prod", amount: Amount(memory: 50 * mib))
        // /a to 206 MiB: 206 + 50 = 256 fits; 207 does not.
        #expect(l.check("/a", tier: .prod, amount: Amount(memory: 206 * mib), capacity: capacity).admitted)
        #expect(!l.check("/a", tier: .prod, amount: Amount(memory: 207 * mib), capacity: capacity).admitted)
        // The machine shrank under them (capacity 128 MiB): growing is
        // refused, shrinking (or staying) still passes.
        let small = Amount(memory: 128 * mib, milliCpu: 2000)
        #expect(!l.check("/b", tier: .prod, amount: Amount(memory: 60 * mib), capacity: small).admitted)
        #expect(l.check("/b", tier: .prod, amount: Amount(memory: 40 * mib), capacity: small).admitted)
        #expect(l.check("/a", tier: .prod, amount: Amount(memory: 200 * mib), capacity: small).admitted)
        let message = l.check("/a", tier: .prod, amount: Amount(memory: 300 * mib), capacity: capacity).message
        #expect(message.contains("(now 209715200 B (200.0 MiB) 0 milliCPU)"), "\(message)")
        // Over-committed (250 of 128 MiB): a demotion to batch that grows
        // nothing passes (it was refused); a promotion of the same amount,
        // or a demotion that grows, is checked.
        #expect(l.check("/b", tier: .batch, amount: Amount(memory: 50 * mib), capacity: small).admitted)
        #expect(!l.check("/b", tier: .batch, amount: Amount(memory: 51 * mib), capacity: small).admitted)
        var m = Ledger(policy: Policy())
        m.set("/p", tier: "prod", amount: Amount(memory: 200 * mib))
        m.set("/q", tier: "batch", amount: Amount(memory: 100 * mib))
        #expect(!m.check("/q", tier: .prod, amount: Amount(memory: 100 * mib), capacity: capacity).admitted, "a promotion is checked")
    }

    @Test func theLedgerKeepsItsSumsThroughSetsAndRemoves() {
        var l = Ledger(policy: Policy())
        l.set("/a", tier: "prod", amount: Amount(memory: 10, milliCpu: 1))
        l.set("/b", tier: "batch", amount: Amount(memory: 20, milliCpu: 2))
        l.set("/a", tier: "batch", amount: Amount(memory: 5, milliCpu: 5))
        #expect(l.sums["prod"] == .zero && l.counts["prod"] == 0)
        #expect(l.sums["batch"] == Amount(memory: 25, milliCpu: 7) && l.counts["batch"] == 2)
        #expect(l.remove("/b")?.amount == Amount(memory: 20, milliCpu: 2))
        #expect(l.remove("/nope") == nil)
        #expect(l.totalSum == Amount(memory: 5, milliCpu: 5) && l.guaranteedSum == .zero)
        #expect(l.entries["/a"]!.order > 0)
        let r = l.report(capacity: capacity)
        #expect(r.capacityMemory == 256 * mib && r.freeMemory == 256 * mib && r.tier.map(\.tier) == ["prod", "batch", "best-effort"])
        #expect(r.tier[1].memory == 5 && r.tier[1].containers == 1)
    }

    /// Admission and reservation are one step: 64 creates race for room for
    /// two; exactly two win, whatever the interleaving.
    /// Commitments near the 2^60 cut-off (a CLI-made container, which no
    /// admission polices; a create or import asking 0.8 EiB): the refusal's
    /// text trapped on `n * 10` (the agent died with SIGILL), and nine of
    /// them wrapped an Int64 sum negative, after which anything fitted.
    @Test func hugeCommitmentsNeitherTrapNorWrap() {
        var l = Ledger(policy: Policy())
        let huge: Int64 = 950_000_000_000_000_000
        let d = l.check("/big", tier: .prod, amount: Amount(memory: huge), capacity: capacity)
        #expect(!d.admitted)
        #expect(d.message.contains("asked 950000000000000000 B (905990600585.9 MiB)"), "\(d.message)")
        let nearCut: Int64 = (1 << 60) - 4096
        for i in 0..<9 { l.set("/cli\(i)", tier: "batch", amount: Amount(memory: nearCut)) }
        #expect(l.totalSum.memory == Int64.max && l.sums["batch"]?.memory == Int64.max)
        let small = l.check("/new", tier: .batch, amount: Amount(memory: 4096), capacity: capacity)
        #expect(!small.admitted, "the sum wrapped: \(small.message)")
        #expect(small.message.contains("all tiers would commit 10376293541461590016 B"), "\(small.message)")
        for i in 0..<9 { l.remove("/cli\(i)") }
        #expect(l.totalSum == .zero)
        #expect(l.check("/new", tier: .batch, amount: Amount(memory: 4096), capacity: capacity).admitted)
        #expect(Progress.mib(UInt64.max) == "17592186044415.9 MiB")
    }

    @Test func concurrentCreatesRaceForTheLastRoom() {
        for round in 0..<20 {
            let a = Admitter(policy: Policy())
            a.record("/existing", tier: "prod", amount: Amount(memory: 56 * mib))
            let won = Mutexed(0)
            DispatchQueue.concurrentPerform(iterations: 64) { i in
                let d = a.admit("/c\(i)", tier: .prod, amount: Amount(memory: 100 * mib), capacity: capacity)
                if d.admitted { won.locked { $0 += 1 } }
            }
            #expect(won.locked { $0 } == 2, "round \(round)")
            #expect(a.snapshot().guaranteedSum.memory == 256 * mib)
        }
    }

    @Test func aFailedCreateGivesItsRoomBackAndAFailedUpdateItsOldAmount() {
        let a = Admitter(policy: Policy())
        #expect(a.admit("/x", tier: .prod, amount: Amount(memory: 200 * mib), capacity: capacity).admitted)
        #expect(a.commitment("/x")?.pending == true)
        #expect(!a.admit("/y", tier: .prod, amount: Amount(memory: 100 * mib), capacity: capacity).admitted)
        a.release("/x", previous: nil)
        #expect(a.commitment("/x") == nil)
        #expect(a.admit("/y", tier: .prod, amount: Amount(memory: 100 * mib), capacity: capacity).admitted)
        a.confirm("/y")
        let before = a.commitment("/y")!
        #expect(!before.pending)
        #expect(a.admit("/y", tier: .prod, amount: Amount(memory: 150 * mib), capacity: capacity).admitted)
        a.release("/y", previous: before)
        #expect(a.commitment("/y") == before, "back to 100 MiB, same order")
        #expect(!a.check("/z", tier: .prod, amount: Amount(memory: 200 * mib), capacity: capacity).admitted)
        #expect(a.commitment("/z") == nil, "a check records nothing")
    }

    /// What a restarted agent does: recompute from what exists.
    @Test func syncRecordsWhatExistsAndForgetsWhatIsGoneButNotACreateUnderWay() {
        let a = Admitter(policy: Policy())
        a.record("/gone", tier: "prod", amount: Amount(memory: 100 * mib))
        #expect(a.admit("/making", tier: .prod, amount: Amount(memory: 50 * mib), capacity: capacity).admitted)
        var reads: [String] = []
        a.sync(list: { ["/cli", "/prod1"] }) { name in
            reads.append(name)
            return name == "/cli" ? ("batch", Amount(memory: 10 * mib)) : ("prod", Amount(memory: 64 * mib))
        }
        #expect(reads == ["/cli", "/prod1"])
        let l = a.snapshot()
        #expect(Set(l.entries.keys) == ["/cli", "/prod1", "/making"])
        #expect(l.guaranteedSum.memory == 114 * mib && l.sums["batch"]?.memory == 10 * mib)
        reads = []
        a.sync(list: { ["/cli", "/prod1"] }, read: { reads.append($0); return nil })
        #expect(reads.isEmpty, "what is known is not read again")
        a.sync(list: { nil }, read: { _ in nil })
        #expect(a.snapshot().entries.count == 3, "a failed listing changes nothing")
        a.sync(list: { [] }, read: { _ in nil })
        #expect(Set(a.snapshot().entries.keys) == ["/making"])
    }

    /// A create that completes while the listing runs is absent from it,
    /// and must not be forgotten; one that was settled before is.
    @Test func syncKeepsACreateThatCompletedDuringTheListing() {
        let a = Admitter(policy: Policy())
        a.record("/old", tier: "batch", amount: Amount(memory: mib))
        a.sync(list: {
            #expect(a.admit("/racer", tier: .prod, amount: Amount(memory: mib), capacity: capacity, new: true)?.admitted == true)
            a.confirm("/racer")
            return []
        }, read: { _ in nil })
        #expect(Set(a.snapshot().entries.keys) == ["/racer"], "/old was settled and is gone; /racer came during the listing")
    }

    /// After a restart the eviction order comes from when each container
    /// was made (the snapshots' times), oldest first; unknown ones after.
    @Test func syncOrdersWhatItFindsByTheirCreationTimes() {
        let a = Admitter(policy: Policy())
        let made: [String: UInt64] = ["/a": 3_000, "/b": 1_000, "/c": 2_000]
        a.sync(list: { ["/a", "/b", "/c", "/d"] }, readOrdered: { ("batch", .zero, made[$0]) })
        let order = a.snapshot().entries.sorted { $0.value.order < $1.value.order }.map(\.key)
        #expect(order == ["/b", "/c", "/a", "/d"])
        #expect(a.admit("/e", tier: .batch, amount: .zero, capacity: capacity, new: true)?.admitted == true)
        #expect(a.commitment("/e")!.order > a.commitment("/d")!.order, "a new create is the newest")
        let victims = Policy().nextVictim(a.snapshot().entries.map { EvictionCandidate(name: $0.key, tier: $0.value.tier, order: $0.value.order, hasProcesses: true, frozen: false) })
        #expect(victims?.0.name == "/e")
    }

    @Test func aNewCreateOfAKnownNameGetsNoDecision() {
        let a = Admitter(policy: Policy())
        #expect(a.admit("/x", tier: .prod, amount: Amount(memory: mib), capacity: capacity, new: true)?.admitted == true)
        #expect(a.admit("/x", tier: .prod, amount: Amount(memory: mib), capacity: capacity, new: true) == nil, "under way")
        a.confirm("/x")
        #expect(a.admit("/x", tier: .prod, amount: Amount(memory: mib), capacity: capacity, new: true) == nil, "made")
        #expect(a.admit("/x", tier: .prod, amount: Amount(memory: 2 * mib), capacity: capacity).admitted, "an update")
    }
}

@Suite struct EvictionTests {
    let policy = Policy()

    private func c(_ name: String, _ tier: String, _ order: UInt64, procs: Bool = true, frozen: Bool = false) -> EvictionCandidate {
        EvictionCandidate(name: name, tier: tier, order: order, hasProcesses: procs, frozen: frozen)
    }

    @Test func lowestTierFirstNewestFirstProdNever() {
        var all = [c("/p1", "prod", 1), c("/b1", "batch", 2), c("/e1", "best-effort", 3), c("/b2", "batch", 5),
                   c("/e2", "best-effort", 4), c("/p2", "prod", 6)]
        var order: [String] = []
        while let (v, action) = policy.nextVictim(all) {
            order.append("\(v.name):\(action.rawValue)")
            all.removeAll { $0.name == v.name }
        }
        #expect(order == ["/e2:destroy", "/e1:destroy", "/b2:kill", "/b1:kill"], "e2 (order 4) is newer than e1 (3)")
        #expect(all.map(\.name) == ["/p1", "/p2"], "prod is never evicted")
    }

    @Test func aContainerThatFreesNothingMoreIsNotChosenAgain() {
        let freeze = Policy(tiers: [.prod, Tier(name: "batch", guaranteed: false, overcommit: true, schedulingLatency: nil,
                                                evictionPriority: 5000, eviction: .freeze)])
        #expect(freeze.nextVictim([c("/b", "batch", 1, frozen: true)]) == nil)
        #expect(freeze.nextVictim([c("/b", "batch", 1, procs: false)]) == nil)
        #expect(freeze.nextVictim([c("/b", "batch", 1)])?.1 == .freeze)
        #expect(policy.nextVictim([c("/b", "batch", 1, procs: false)]) == nil, "killed already")
        #expect(policy.nextVictim([c("/e", "best-effort", 1, procs: false)]) == nil, "an empty container: its destroy frees nothing")
        #expect(policy.nextVictim([c("/e", "best-effort", 1, procs: false), c("/e2", "best-effort", 0)])?.0.name == "/e2")
        // A tier the policy no longer has counts as the default tier's action, below every tier.
        #expect(policy.nextVictim([c("/b", "batch", 9), c("/old", "gold", 1)])?.0.name == "/old")
        #expect(policy.nextVictim([]) == nil)
    }

    @Test func theGateHasHysteresis() {
        var g = PressureGate(high: 900, low: 800)
        let usage: [Int64] = [100, 850, 901, 950, 850, 820, 799, 850, 899, 900, 901, 700]
        let want = [false, false, true, true, true, true, false, false, false, false, true, false]
        #expect(usage.map { g.update(usage: $0) } == want)
        #expect(PressureGate(policy: Policy(), capacity: 1000) == nil, "no eviction by default")
        let p = PressureGate(policy: Policy(evictAbovePercent: 90, evictUntilPercent: 80), capacity: 256 * mib)
        #expect(p?.high == 256 * mib * 90 / 100 && p?.low == 256 * mib * 80 / 100)
        #expect(PressureGate(policy: Policy(evictAbovePercent: 50, evictUntilPercent: 40), capacity: 128 * mib)?.high == 67_108_864)
        #expect(PressureGate(policy: Policy(evictAbovePercent: 100, evictUntilPercent: 90), capacity: .max)?.high == .max)
    }
}
