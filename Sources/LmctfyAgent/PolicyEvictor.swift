// Eviction under memory pressure (README "Policy"): a thread of its own
// waits (one epoll) on three kernel watches of the agent's root container: a
// memory usage threshold at the policy's high mark (v1: an eventfd on
// memory.usage_in_bytes; v2: CL1's polled memory.current), memory pressure
// (v1: memory.pressure_level "medium" eventfd; v2: memory.events "high" and "max") and
// OOM, and reads the usage again every `recheckMs` in any case. Past the mark it evicts one
// container at a time (LmctfyPolicy's order: lowest tier first, newest first
// within a tier, prod never), waits for the memory to come back, reads the
// usage again, and stops once usage is below the low mark (hysteresis).
// Each eviction is an EVICTED event with the figures, and a log line.
//
// A freeze (EVICT_FREEZE) frees no memory: it stops the container growing.
// What the containers it froze hold is left out of the usage the marks are
// compared with (else every container of the tier was frozen, one after
// another, for nothing), and they are thawed, oldest freeze first, once the
// root's whole usage is below the low mark again (they stayed frozen for
// good; the policy probe). Which it froze is kept in
// `state_dir/evicted-frozen`, so a restarted agent thaws them too.
import Glibc
import Lmctfy
import LmctfyBackend
import LmctfyEvents
import LmctfyPolicy
import LmctfyProto
import LmctfySystem
import Synchronization

final class PolicyEvictor: Sendable {
    private let api: ContainerApi
    private let scope: ContainerScope
    private let dispatcher: Dispatcher
    private let keeper: PolicyKeeper
    private let log: AgentLog
    private let stopping = Atomic<Bool>(false)
    private let done = Latch()
    /// How often the usage is read again while the gate is open or the
    /// threshold's watch could not be made.
    static let recheckMs: Int32 = 250
    /// After an eviction: how long the memory of what was killed may take
    /// to be uncharged before the usage is read again.
    static let settleMs = 100
    /// Evictions made (for tests and the benchmark).
    let evictions = Mutexed(0)

    /// The containers an eviction froze, oldest first, and the file that
    /// keeps them (nil: none).
    private let frozenByEviction: Mutexed<[String]>
    private let frozenFile: String?
    /// Those whose thaw failed and was said in the log (once each, not at
    /// every check: 4 lines a second).
    private let thawFailureSaid = Mutexed<Set<String>>([])

    init(api: ContainerApi, scope: ContainerScope, dispatcher: Dispatcher, keeper: PolicyKeeper, log: AgentLog,
         frozenFile: String? = nil) {
        self.api = api
        self.scope = scope
        self.dispatcher = dispatcher
        self.keeper = keeper
        self.log = log
        self.frozenFile = frozenFile
        let kept = frozenFile.flatMap { try? Sys.readRegularFile($0, maxBytes: 1 << 20) } ?? []
        frozenByEviction = Mutexed(String(decoding: kept, as: UTF8.self).split(separator: "\n").map(String.init))
    }

    /// The names an eviction froze (for tests).
    var frozenNames: [String] { frozenByEviction.locked { $0 } }

    private func keepFrozen(_ change: (inout [String]) -> Void) {
        let names = frozenByEviction.locked { f in
            change(&f)
            return f
        }
        guard let frozenFile else { return }
        let text = names.map { $0 + "\n" }.joined()
        do { try Sys.writeFileAtomically(frozenFile, Array(text.utf8)) } catch {
            log.warning("policy: the containers eviction froze could not be kept in \(frozenFile): \(error); a restart would not thaw them")
        }
    }

    /// What the containers an eviction froze hold (their working sets):
    /// left out of the usage the marks are compared with.
    private func heldByFrozen() -> Int64 {
        var held: Int64 = 0
        for name in frozenByEviction.locked({ $0 }) {
            guard let m = (try? dispatcher.backend.stats(name, type: .summary))?.memory else { continue }
            held &+= max(0, m.workingSet ?? m.usage ?? 0)
        }
        return held
    }

    /// Thaws what an eviction froze, oldest freeze first: the root's whole
    /// usage is below the low mark. A container gone, or resumed by
    /// someone else, is let go.
    private func thawFrozen(usage: Int64, gate: PressureGate) {
        for name in frozenByEviction.locked({ $0 }) {
            guard !stopping.load(ordering: .relaxed) else { return }
            do {
                try dispatcher.setPaused(name, false)
                log.warning("policy: thawed \(name), frozen by an eviction: memory in use \(usage) B is below \(gate.low) B")
            } catch {
                if (error as? LmctfyError)?.code != .notFound {
                    if thawFailureSaid.locked({ $0.insert(name).inserted }) {
                        log.warning("policy: thawing \(name), frozen by an eviction, failed: \(error); tried again at each check")
                    }
                    continue
                }
            }
            thawFailureSaid.locked { _ = $0.remove(name) }
            keepFrozen { $0.removeAll { $0 == name } }
        }
    }

    func start() {
        Threads.detach { [self] in
            run()
            done.signal()
        }
    }

    func requestStop() { stopping.store(true, ordering: .relaxed) }

    func stop() {
        requestStop()
        done.wait()
    }

    /// The root container's memory in use: its working set (usage less
    /// the inactive page cache the kernel reclaims before anything is
    /// killed), not its usage. Clean cache left by a file written once
    /// (200 MB from a dd) kept usage past the mark for as long as the
    /// root was below its limit, and every container that could be
    /// evicted was, for nothing (a probe).
    private func usage() -> Int64? {
        guard let m = (try? dispatcher.backend.stats("/", type: .summary))?.memory else { return nil }
        return m.workingSet ?? m.usage
    }

    /// What woke the evictor, for the EVICTED reason.
    enum Wake: String {
        case threshold = "usage threshold"
        case pressure = "memory pressure"
        case oom = "OOM"
        case recheck = "periodic check"
    }

    /// The root container's watches, polled together (one epoll): usage at
    /// the high mark, memory pressure, OOM. Made again when the mark moves.
    private final class Watches {
        let epoll: Epoll
        var all: [UInt64: (Watch, Wake)] = [:]
        let high: Int64

        init(root: Container, high: Int64, log: AgentLog) throws(LmctfyError) {
            do { epoll = try Epoll() } catch { throw error.lmctfy(.internal, "Making the eviction's epoll") }
            self.high = high
            let makers: [(Wake, () throws(LmctfyError) -> Watch)] = [
                (.threshold, { () throws(LmctfyError) in try root.watch(EventSpec(memoryThreshold: EventSpec.MemoryThreshold(usage: high))) }),
                (.pressure, { () throws(LmctfyError) in try root.watchMemoryPressure() }),
                (.oom, { () throws(LmctfyError) in try root.watch(EventSpec(oom: EventSpec.Oom())) }),
            ]
            for (i, (wake, make)) in makers.enumerated() {
                do throws(LmctfyError) {
                    let w = try make()
                    try? epoll.add(w.fd, key: UInt64(i + 1))
                    all[UInt64(i + 1)] = (w, wake)
                } catch {
                    log.warning("policy: no \(wake.rawValue) watch on the root container (\(error.message)); its usage is read every \(PolicyEvictor.recheckMs) ms")
                }
            }
        }

        deinit { for (w, _) in all.values { w.close() } }

        /// Waits up to `ms`; what woke it (nil: the time ran out).
        func wait(_ ms: Int32) -> Wake? {
            guard let keys = try? epoll.wait(timeoutMs: ms) else { return nil }
            var woke: Wake?
            for k in keys {
                guard let (w, wake) = all[k] else { continue }
                if ((try? w.collect()) ?? 0) > 0, woke == nil { woke = wake }
            }
            return woke ?? (keys.isEmpty ? nil : .recheck)
        }
    }

    /// Since when (ms) usage has been past the marks with nothing left to
    /// evict, and when that was last said.
    private struct Stuck {
        var since: UInt64?
        var saidAt: UInt64 = 0
    }

    private func run() {
        var watches: Watches?
        var stuck = Stuck()
        while !stopping.load(ordering: .relaxed) {
            guard let capacity = try? keeper.capacity(), var gate = PressureGate(policy: keeper.policy, capacity: capacity.memory) else {
                usleep(UInt32(Self.recheckMs) * 1000)
                continue
            }
            if watches?.high != gate.high {
                watches = nil
                if let root = try? api.get(scope.root) {
                    watches = try? Watches(root: root, high: gate.high, log: log)
                }
            }
            let wake: Wake
            if let w = watches {
                wake = w.wait(Self.recheckMs) ?? .recheck
            } else {
                usleep(UInt32(Self.recheckMs) * 1000)
                wake = .recheck
            }
            guard let whole = usage() else {
                stuck.since = nil
                continue
            }
            let frozen = frozenByEviction.locked { !$0.isEmpty }
            if frozen && whole < gate.low { thawFrozen(usage: whole, gate: gate) }
            let u = frozen ? whole - heldByFrozen() : whole
            guard gate.update(usage: u) else {
                stuck.since = nil
                continue
            }
            relieve(&gate, usage: u, wake: wake, stuck: &stuck)
        }
    }

    /// Evicts until the gate closes or nothing more may be evicted.
    private func relieve(_ gate: inout PressureGate, usage first: Int64, wake: Wake, stuck: inout Stuck) {
        var u = first
        while gate.active, !stopping.load(ordering: .relaxed) {
            keeper.sync()
            let ledger = keeper.admitter.snapshot()
            var candidates: [EvictionCandidate] = []
            for (path, c) in ledger.entries where !c.pending {
                guard let name = try? scope.resolve(path), let container = try? api.get(name) else { continue }
                let busy = !((try? container.processes(recursive: true)) ?? []).isEmpty
                let frozen = (try? container.isFrozen()) ?? false
                candidates.append(EvictionCandidate(name: path, tier: c.tier, order: c.order, hasProcesses: busy, frozen: frozen))
            }
            guard let (victim, action) = keeper.policy.nextVictim(candidates) else {
                // Usage between the marks keeps an eviction going: the mark
                // it has not yet come under is the low one. Said when it
                // starts, then once a minute while it lasts (it was said
                // every 250 ms: 345,000 lines a day; a probe).
                let now = MonotonicClock.milliseconds()
                if stuck.since == nil || now >= stuck.saidAt + 60_000 {
                    let mark = u > gate.high ? "above the eviction mark \(gate.high) B" : "not yet below the mark \(gate.low) B eviction goes on to"
                    let since = stuck.since.map { " (for \((now - $0) / 1000) s)" } ?? ""
                    log.warning("policy: memory in use \(u) B is \(mark), and nothing more may be evicted\(since)")
                    stuck.saidAt = now
                }
                if stuck.since == nil { stuck.since = now }
                return
            }
            stuck.since = nil
            act(victim, action, usage: u, gate: gate, wake: wake)
            usleep(UInt32(Self.settleMs) * 1000)
            guard let next = usage() else { return }
            u = next - heldByFrozen()
            _ = gate.update(usage: u)
        }
    }

    private func act(_ victim: EvictionCandidate, _ action: EvictionAction, usage: Int64, gate: PressureGate, wake: Wake) {
        let verb: String
        do {
            switch action {
            case .never: return
            case .kill:
                verb = "killed its processes"
                try dispatcher.backend.killAll(victim.name, recursive: true)
            case .freeze:
                verb = "froze it (thawed once memory in use is below \(gate.low) B)"
                try dispatcher.setPaused(victim.name, true)
                keepFrozen { $0.append(victim.name) }
            case .destroy:
                verb = "destroyed it"
                _ = try dispatcher.destroyContainer(victim.name, force: true)
            }
        } catch {
            log.warning("policy: evicting \(victim.name) (\(action.rawValue)) failed: \(error)")
            return
        }
        let reason = "memory pressure (woken by: \(wake.rawValue)): the root container's memory in use (usage less inactive page cache) is \(usage) B (eviction starts above \(gate.high) B and goes on until below \(gate.low) B); tier \(victim.tier): \(verb)"
        dispatcher.events.append(ContainerEvent(container: victim.name, kind: .containerEventEvicted, memoryThreshold: gate.high,
                                                reason: reason, memoryUsage: usage))
        evictions.locked { $0 += 1 }
        log.warning("policy: evicted \(victim.name): \(reason)")
    }
}
