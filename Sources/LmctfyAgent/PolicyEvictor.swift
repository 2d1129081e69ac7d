// Eviction under memory pressure (README "Policy"): a thread of its own
// waits on a kernel memory threshold of the agent's root container (v1: an
// eventfd on memory.usage_in_bytes through cgroup.event_control; v2: CL1's
// polled memory.current source) set at the policy's high mark, and looks
// again every `recheckMs` while it is above it. Past the mark it evicts one
// container at a time (LmctfyPolicy's order: lowest tier first, newest first
// within a tier, prod never), waits for the memory to come back, reads the
// usage again, and stops once usage is below the low mark (hysteresis).
// Each eviction is an EVICTED event with the figures, and a log line.
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

    init(api: ContainerApi, scope: ContainerScope, dispatcher: Dispatcher, keeper: PolicyKeeper, log: AgentLog) {
        self.api = api
        self.scope = scope
        self.dispatcher = dispatcher
        self.keeper = keeper
        self.log = log
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

    private func usage() -> Int64? {
        guard let u = (try? dispatcher.backend.stats("/", type: .summary))?.memory?.usage else { return nil }
        return u
    }

    private func run() {
        var watch: Watch?
        var watchedHigh: Int64 = -1
        defer { watch?.close() }
        while !stopping.load(ordering: .relaxed) {
            guard let capacity = try? keeper.capacity(), var gate = PressureGate(policy: keeper.policy, capacity: capacity.memory) else {
                usleep(UInt32(Self.recheckMs) * 1000)
                continue
            }
            // The kernel's threshold at the high mark (made again when the
            // capacity changed).
            if watchedHigh != gate.high {
                watch?.close()
                watch = try? api.get(scope.root).watch(EventSpec(memoryThreshold: EventSpec.MemoryThreshold(usage: gate.high)))
                watchedHigh = gate.high
                if watch == nil { log.warning("policy: no memory threshold watch on the root container; reading its usage every \(Self.recheckMs) ms") }
            }
            if let w = watch {
                do throws(LmctfyError) {
                    _ = try w.wait(timeoutMs: Self.recheckMs)
                } catch {
                    watch = nil
                    usleep(UInt32(Self.recheckMs) * 1000)
                }
            } else {
                usleep(UInt32(Self.recheckMs) * 1000)
            }
            guard let u = usage(), gate.update(usage: u) else { continue }
            relieve(&gate, usage: u)
        }
    }

    /// Evicts until the gate closes or nothing more may be evicted.
    private func relieve(_ gate: inout PressureGate, usage first: Int64) {
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
                log.warning("policy: memory usage \(u) B is above \(gate.high) B and nothing more may be evicted")
                return
            }
            act(victim, action, usage: u, gate: gate)
            usleep(UInt32(Self.settleMs) * 1000)
            guard let next = usage() else { return }
            u = next
            _ = gate.update(usage: u)
        }
    }

    private func act(_ victim: EvictionCandidate, _ action: EvictionAction, usage: Int64, gate: PressureGate) {
        let verb: String
        do {
            switch action {
            case .never: return
            case .kill:
                verb = "killed its processes"
                try dispatcher.backend.killAll(victim.name, recursive: true)
            case .freeze:
                verb = "froze it"
                try dispatcher.setPaused(victim.name, true)
            case .destroy:
                verb = "destroyed it"
                _ = try dispatcher.destroyContainer(victim.name, force: true)
            }
        } catch {
            log.warning("policy: evicting \(victim.name) (\(action.rawValue)) failed: \(error)")
            return
        }
        let reason = "memory pressure: the root container uses \(usage) B (eviction starts above \(gate.high) B and goes on until below \(gate.low) B); tier \(victim.tier): \(verb)"
        dispatcher.events.append(ContainerEvent(container: victim.name, kind: .containerEventEvicted, memoryThreshold: gate.high,
                                                reason: reason, memoryUsage: usage))
        evictions.locked { $0 += 1 }
        log.warning("policy: evicted \(victim.name): \(reason)")
    }
}
