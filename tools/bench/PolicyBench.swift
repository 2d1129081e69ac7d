// CL2's figures (tools/bench-policy): what one admission decision costs with
// N containers in the ledger, and how long an agent takes from the moment
// its root container's memory usage crosses the eviction mark to its first
// EVICTED event.
import Glibc
import LmctfyPolicy
import LmctfyProto
import LmctfyRPC
import LmctfySystem

/// policy-admit N: Ledger.check (the decision) and Admitter.admit+release
/// (decision, reservation and giving it back, under the lock) with N
/// containers spread over the three default tiers; µs per decision,
/// median of 7 runs of 20,000 decisions. Beside it, the same decision made
/// the naive way (summing every container's commitment each time).
func policyAdmit(_ n: Int) {
    let policy = Policy(overcommitPercent: 25)
    let tiers = policy.tiers
    var ledger = Ledger(policy: policy)
    let admitter = Admitter(policy: policy)
    for i in 0..<n {
        let t = tiers[i % tiers.count]
        let a = Amount(memory: Int64(1 + i % 7) << 20, milliCpu: Int64(i % 5))
        ledger.set("/c\(i)", tier: t.name, amount: a)
        admitter.record("/c\(i)", tier: t.name, amount: a)
    }
    let capacity = Amount(memory: 1 << 40, milliCpu: 1 << 30)
    let asks = (0..<64).map { Amount(memory: Int64(1 + $0 % 13) << 20, milliCpu: Int64($0 % 3)) }
    let count = 20_000
    func median(_ body: () -> Void) -> Double {
        var runs: [Double] = []
        for _ in 0..<7 {
            let t0 = now()
            body()
            runs.append((now() - t0) / Double(count))
        }
        return runs.sorted()[3]
    }
    var admitted = 0
    let check = median {
        for i in 0..<count {
            if ledger.check("/new", tier: tiers[i % 3], amount: asks[i & 63], capacity: capacity).admitted { admitted += 1 }
        }
    }
    let cycle = median {
        for i in 0..<count {
            if admitter.admit("/new", tier: tiers[i % 3], amount: asks[i & 63], capacity: capacity).admitted {
                admitted += 1
                admitter.release("/new", previous: nil)
            }
        }
    }
    // The naive decision: every container's commitment summed per question.
    let entries = Array(ledger.entries.values)
    let guaranteed = Set(tiers.filter(\.guaranteed).map(\.name))
    let naive = median {
        for i in 0..<count {
            var g: Int64 = 0, t: Int64 = 0
            for e in entries {
                t += e.amount.memory
                if guaranteed.contains(e.tier) { g += e.amount.memory }
            }
            if g + t + asks[i & 63].memory < capacity.memory { admitted += 1 }
        }
    }
    guard admitted > 0 else { fail("policy-admit: nothing admitted") }
    print("policy admission at \(n) containers: decision (Ledger.check, message included) us=\(fmt(check)); admit+release under the lock us=\(fmt(cycle)); naive sum over every container (no message) us=\(fmt(naive))")
}

/// policy-evict ROUNDS SOCKET USAGE_FILE HIGH HELPER MB: per round, a
/// best-effort container made through the agent, `HELPER alloc MB` run in
/// it; a thread reads USAGE_FILE (the root container's memory usage) every
/// 100 µs and notes (CLOCK_REALTIME) when it first exceeds HIGH; the
/// agent's first EVICTED event carries its own CLOCK_REALTIME timestamp.
/// Prints the median, min and max of the difference.
func policyEvict(rounds: Int, socket: String, usageFile: String, high: Int64, helper: String, mb: Int) throws {
    @Sendable func realtimeNs() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }
    @Sendable func usage() -> Int64 {
        guard let text = try? Sys.readFile(usageFile) else { return 0 }
        return Int64(text.trimmingWhitespace) ?? 0
    }
    let client = try RpcClient.connect(unixPath: socket, name: "bench")
    defer { client.close() }
    var latencies: [Double] = []
    for round in 0..<rounds {
        let name = "/bench_evict_\(getpid())_\(round)"
        let spec = try ContainerSpec(textFormat: "memory { limit: \((mb + 64) << 20) }")
        _ = try client.call(AgentMethods.create, CreateRequest(name: name, spec: spec, tier: "best-effort"))
        let crossed = Mutexed<UInt64>(0)
        let evicted = Mutexed<UInt64>(0)
        let subscribed = Latch()
        let done = Latch()
        Threads.detach {
            do {
                let sub = try RpcClient.connect(unixPath: socket, name: "bench-sub")
                defer { sub.close() }
                try sub.stream(AgentMethods.subscribe, SubscribeRequest(kinds: [.containerEventEvicted]), deadlineMs: 30_000) {
                    (r: SubscribeResponse) in
                    if r.caughtUp != nil { subscribed.signal() }
                    guard let e = r.event, e.container == name else { return true }
                    evicted.locked { $0 = e.timestampNs ?? 0 }
                    return false
                }
            } catch {
                subscribed.signal()
            }
            done.signal()
        }
        subscribed.wait()
        Threads.detach {
            while evicted.locked({ $0 }) == 0 {
                if crossed.locked({ $0 }) == 0, usage() > high { crossed.locked { $0 = realtimeNs() } }
                usleep(100)
            }
        }
        try client.stream(AgentMethods.run, RunRequest(name: name, argv: [helper, "alloc", String(mb)], detached: true)) { (_: RunResponse) in true }
        done.wait()
        let (c, e) = (crossed.locked { $0 }, evicted.locked { $0 })
        guard c > 0, e > 0 else { fail("policy-evict: round \(round): no crossing seen (\(c)) or no eviction (\(e))") }
        latencies.append(Double(Int64(e) - Int64(c)) / 1000)
        _ = try? client.call(AgentMethods.destroy, DestroyRequest(name: name, force: true))
        // Below the mark again before the next round.
        for _ in 0..<200 where usage() > high / 2 { usleep(10_000) }
        usleep(300_000)
    }
    let s = latencies.sorted()
    print("policy eviction, \(rounds) rounds: root usage past the mark (seen by a 100 us poll) to the first EVICTED event: median us=\(fmt(s[s.count / 2])) min us=\(fmt(s[0])) max us=\(fmt(s[s.count - 1]))")
}
