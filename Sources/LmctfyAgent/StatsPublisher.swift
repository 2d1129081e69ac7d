// STATS events (issue #11): a thread of its own sweeps every known
// container each `stats_interval_ms` with CL1's StatsSampler (files kept
// open between sweeps, closed when the container goes) and records one
// sample per container in the event log, off the loop. A sweep is bounded
// in time: past half the interval (at most 500 ms) it stops, and the next
// sweep begins where it stopped, so a slow machine samples less often
// instead of falling behind. The known containers are the inventory's,
// named as the agent's clients name them (relative to its root_container).
import Lmctfy
import LmctfyEvents
import LmctfyHTTP
import LmctfyProto
import LmctfySystem

final class StatsPublisher: Sendable {
    private let api: ContainerApi
    private let scope: ContainerScope
    private let inventory: Inventory
    private let events: EventLog
    private let intervalMs: Int
    private let stopping = ChangeCounter()
    private let done = Latch()
    /// Sweeps made and samples recorded (for tests).
    private let counters = Mutexed((sweeps: 0, sampled: 0))
    /// How long sweeps took, and how many containers the last one sampled
    /// (the metrics endpoint).
    private let timing = Mutexed((durations: Histogram(bounds: StatsPublisher.sweepBounds), lastSampled: 0))
    static let sweepBounds: [Double] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5]

    init(api: ContainerApi, scope: ContainerScope, inventory: Inventory, events: EventLog, intervalMs: Int) {
        self.api = api
        self.scope = scope
        self.inventory = inventory
        self.events = events
        self.intervalMs = intervalMs
    }

    /// Sweeps made so far, and samples recorded.
    var progress: (sweeps: Int, sampled: Int) { counters.locked { $0 } }

    /// Sweep durations (seconds) and the last sweep's sample count.
    var sweepTiming: (durations: Histogram, lastSampled: Int) { timing.locked { $0 } }

    func start() {
        Threads.detach { [self] in
            run()
            done.signal()
        }
    }

    /// Ends the sweeps and waits for the thread (the sweep in progress
    /// finishes first: it is bounded).
    func stop() {
        requestStop()
        done.wait()
    }

    /// Ends the sweeps without waiting (the loop thread asks; the thread
    /// is waited for once the loop is down).
    func requestStop() { stopping.bump() }

    private func run() {
        let sampler = StatsSampler(api: api)
        let budgetUs = Double(min(intervalMs / 2, 500)) * 1000
        var cursor = 0
        var seen: UInt64 = 0
        while true {
            let start = MonotonicClock.microseconds()
            // The clients' names, and the machine's that CL1 samples.
            let names = inventory.names().sorted().compactMap { path in (try? scope.resolve(path)).map { (path, $0) } }
            sampler.keep(only: Set(names.map(\.1)))
            var sampled = 0
            if !names.isEmpty {
                cursor %= names.count
                for i in 0..<names.count {
                    let (path, name) = names[(cursor + i) % names.count]
                    if let stats = sampler.sample(name) {
                        events.recordStats(container: path, stats)
                        sampled += 1
                    }
                    if MonotonicClock.microseconds() - start > budgetUs {
                        cursor = (cursor + i + 1) % names.count
                        break
                    }
                }
            }
            counters.locked { $0.sweeps += 1; $0.sampled += sampled }
            let took = Double(MonotonicClock.microseconds() - start) / 1e6
            timing.locked { $0.durations.observe(took); $0.lastSampled = sampled }
            let elapsedMs = Int((MonotonicClock.microseconds() - start) / 1000)
            let next = stopping.wait(past: seen, timeoutMs: max(1, intervalMs - elapsedMs))
            if next > seen { return }
            seen = next
        }
    }
}
