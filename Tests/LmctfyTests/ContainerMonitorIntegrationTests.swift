// CL1's ContainerMonitor on the real kernel (v1 here, v2 in the guest):
// OOM kills made before a container's watch began are reported when it
// begins for a container that is new, and not for one that was already
// there when the watcher started.
import Glibc
@testable import Lmctfy
import LmctfyProto
import LmctfySystem
import LmctfyTestSupport
import Testing

@Suite(.enabled(if: RealCgroups.available, "\(RealCgroups.unavailableReason ?? "")"))
struct ContainerMonitorIntegrationTests {
    @Test func killsBeforeTheWatchAreReportedForANewContainerOnly() throws {
        let api = try ContainerApi.detect()
        try withTestContainer(api, label: "monitor") { name in
            let c = try api.create(name, spec: try ContainerSpec(textFormat: "memory { limit: 16777216 }"))
            // The kill happens before anything watches the container.
            let pid = try c.run([testHelperPath, "alloc", "200"])
            for _ in 0..<10_000 where TestProcess.reapIfExited(pid) == nil && kill(pid, 0) == 0 { usleep(1000) }
            let fresh = try ContainerMonitor(api: api)
            let (fds, found) = fresh.watch(name, earlier: true)
            #expect(found.contains { if case .oom(name, let n) = $0 { n >= 1 } else { false } }, "\(found)")
            let old = try ContainerMonitor(api: api)
            let (_, foundOld) = old.watch(name, earlier: false)
            #expect(!foundOld.contains { if case .oom = $0 { true } else { false } }, "a container already there: its past is not news")
            // Either way the watch is made: a later kill comes through it.
            #expect(fresh.isFullyWatched(name))
            _ = fds
        }
    }

    /// When the kernel dropped events (its inotify queue overflowed under
    /// a burst of creates and destroys), every watched container is looked
    /// at again, and so are the subdirectories of each, the root's
    /// included: a container made during the burst was never reported.
    @Test func lostEventsLookAgainBelowEveryWatchedContainer() throws {
        let api = try ContainerApi.detect()
        try withTestContainer(api, label: "monitor3") { name in
            try api.create(name, spec: ContainerSpec())
            let monitor = try ContainerMonitor(api: api, root: name)
            _ = monitor.watch(name)
            let sub = try ContainerName.resolve("sub", relativeTo: name)
            try api.create(sub, spec: ContainerSpec())
            _ = monitor.watch(sub)
            // Made while the events were being lost.
            let new = try ContainerName.resolve("new", relativeTo: name)
            let deeper = try ContainerName.resolve("sub/deeper", relativeTo: name)
            try api.create(new, spec: ContainerSpec())
            try api.create(deeper, spec: ContainerSpec())
            let changes = monitor.lostEvents()
            #expect(changes.contains(.present(new)), "a new container below the root was missed: \(changes)")
            #expect(changes.contains(.present(deeper)), "\(changes)")
            #expect(changes.contains(.gone(sub)) && changes.contains(.present(sub)))
            #expect(!changes.contains(.present(name)) && !changes.contains(.gone(name)), "the root itself is never reported")
        }
    }

    /// A watch begun by the tasks directory alone (`full: false`, the
    /// agent's first look at a container that appeared) registers nothing
    /// else; completed later, it reports the kills made in between.
    @Test func aWatchCompletedLaterReportsTheKillsMadeMeanwhile() throws {
        let api = try ContainerApi.detect()
        try withTestContainer(api, label: "monitor2") { name in
            let c = try api.create(name, spec: try ContainerSpec(textFormat: "memory { limit: 16777216 }"))
            let monitor = try ContainerMonitor(api: api)
            let (first, _) = monitor.watch(name, earlier: true, full: false)
            #expect(first.isEmpty && monitor.isWatched(name) && !monitor.isFullyWatched(name))
            let pid = try c.run([testHelperPath, "alloc", "200"])
            for _ in 0..<10_000 where TestProcess.reapIfExited(pid) == nil && kill(pid, 0) == 0 { usleep(1000) }
            let (fds, found) = monitor.watch(name, earlier: true)
            #expect(monitor.isFullyWatched(name))
            #expect(found.contains { if case .oom(name, let n) = $0 { n >= 1 } else { false } }, "\(found)")
            _ = fds
        }
    }

    /// A container destroyed and made again under its name is another
    /// container: the monitor says it is replaced, and the old one's
    /// eventfds report no OOM (v1 signals them when the cgroup is removed;
    /// the new directory was taken for the old one, and the burst that
    /// killed nothing for an OOM of tasks held by oom_kill_disable).
    @Test func aContainerMadeAgainUnderItsNameIsReplacedAndItsPredecessorsSignalNoOOM() throws {
        let api = try ContainerApi.detect()
        try withTestContainer(api, label: "monitor4") { name in
            let spec = try ContainerSpec(textFormat: "memory { limit: 16777216 }")
            try api.create(name, spec: spec)
            let monitor = try ContainerMonitor(api: api)
            let (fds, _) = monitor.watch(name, earlier: false)
            #expect(monitor.isFullyWatched(name) && !monitor.isReplaced(name))
            try api.destroy(name)
            try api.create(name, spec: spec)
            #expect(monitor.isReplaced(name), "the directory made again is another one")
            // The look at oom_kill lasts OomControlSource.settleMs after a signal.
            var changes: [ContainerMonitor.Change] = []
            let until = MonotonicClock.milliseconds() + OomControlSource.settleMs + 300
            while MonotonicClock.milliseconds() < until {
                for fd in fds {
                    if let c = fd.collect() { changes.append(c) }
                }
                usleep(20_000)
            }
            #expect(changes.isEmpty, "the removal of the old one is no event of the new one: \(changes)")
        }
    }

    /// Past the inotify watch limit (`watchBudget`, in-process): a
    /// container's OOM kills are watched all the same (v1: its eventfds;
    /// v2: its memory.events, read by `readCounters`). One destroyed and
    /// made again under its name is another container (its dead eventfds
    /// were kept, taken for the new one's, whose OOMs were never events);
    /// one gone is said gone (v2) and given back by `unwatch`.
    @Test func pastTheWatchLimitAContainerMadeAgainUnderItsNameIsAnotherOne() throws {
        let api = try ContainerApi.detect()
        try withTestContainer(api, label: "monitor5") { parent in
            let spec = try ContainerSpec(textFormat: "memory { limit: 16777216 }")
            try api.create(parent, spec: try ContainerSpec(textFormat: "memory { limit: 67108864 }"))
            let monitor = try ContainerMonitor(api: api, root: parent)
            _ = monitor.watch(parent)
            monitor.watchBudget = 0  // no watch more
            var said: [String] = []
            monitor.onWatchFailure = { said.append($0) }
            let name = try ContainerName.resolve("c", relativeTo: parent)
            try api.create(name, spec: spec)
            _ = monitor.watch(name, earlier: true)
            #expect(!monitor.isWatched(name) && monitor.holds(name) && monitor.unwatchedCount == 1)
            #expect(said.count == 1 && said.first?.contains("and its OOM kills are watched") == true, "\(said)")
            #expect(!monitor.isReplaced(name))
            try api.destroy(name)
            try api.create(name, spec: spec)
            #expect(monitor.isReplaced(name), "made again under its name: another container")
            // As the agent's watcher does with one replaced.
            _ = monitor.unwatch(name)
            let (fds, _) = monitor.watch(name, earlier: true)
            #expect(monitor.holds(name) && !monitor.isReplaced(name))
            let pid = try api.get(name).run([testHelperPath, "alloc", "200"])
            for _ in 0..<10_000 where TestProcess.reapIfExited(pid) == nil && kill(pid, 0) == 0 { usleep(1000) }
            var changes: [ContainerMonitor.Change] = []
            let until = MonotonicClock.milliseconds() + 3000
            while MonotonicClock.milliseconds() < until && !changes.contains(where: { if case .oom = $0 { true } else { false } }) {
                changes += fds.compactMap { $0.collect() } + monitor.readCounters()
                usleep(10_000)
            }
            #expect(changes.contains { if case .oom(name, let n) = $0 { n >= 1 } else { false } }, "the new one's OOM kill: \(changes)")
            try api.destroy(name)
            if fds.isEmpty {  // v2: read, it is gone
                #expect(monitor.readCounters() == [.gone(name)])
            }
            _ = monitor.unwatch(name)
            #expect(!monitor.holds(name) && monitor.unwatchedCount == 0)
        }
    }

    /// v1: the look at OOM kills that a signal starts (a timer, every
    /// 25 ms) ends when the container goes. It stayed armed and unread,
    /// the descriptor stayed readable, and its poll woke the agent's loop
    /// over and over until the container was let go.
    @Test(.enabled(if: (try? CgroupMounts.detect())?.version == .v1, "v1's OOM eventfds (v2 has none)"))
    func theLookAtOOMKillsEndsWhenTheContainerGoes() throws {
        let api = try ContainerApi.detect()
        try withTestContainer(api, label: "monitor6") { name in
            try api.create(name, spec: try ContainerSpec(textFormat: "memory { limit: 16777216 }"))
            let monitor = try ContainerMonitor(api: api)
            let (fds, _) = monitor.watch(name, earlier: false)
            let oom = try #require(fds.first { $0.kind == .oom })
            let pid = try api.get(name).run([testHelperPath, "alloc", "200"])
            for _ in 0..<10_000 where TestProcess.reapIfExited(pid) == nil && kill(pid, 0) == 0 { usleep(1000) }
            _ = oom.collect()  // the signal: the look begins (for settleMs)
            try api.destroy(name)
            usleep(50_000)  // the removal's signal
            #expect(oom.collect() == nil, "gone")
            var p = pollfd(fd: oom.fd, events: Int16(POLLIN), revents: 0)
            #expect(poll(&p, 1, 100) == 0, "nothing more to read once it is gone")
        }
    }
    /// Past the descriptor ceiling a container's OOM eventfd is not made:
    /// its kill counter is read on the caller's timer instead, and its
    /// kills are still changes (they were never events, and an agent's
    /// Notify of one never ended; a probe with ~1,900 memory containers).
    @Test(.enabled(if: (try? CgroupMounts.detect())?.version == .v1, "v1's OOM eventfds (v2 counts in memory.events)"))
    func pastTheDescriptorCeilingOOMKillsAreRead() throws {
        let api = try ContainerApi.detect()
        try withTestContainer(api, label: "monitor7") { name in
            try api.create(name, spec: try ContainerSpec(textFormat: "memory { limit: 16777216 }"))
            let monitor = try ContainerMonitor(api: api)
            monitor.eventfdCeiling = 0
            var said: [String] = []
            monitor.onWatchFailure = { said.append($0) }
            let (fds, _) = monitor.watch(name, earlier: false)
            #expect(!fds.contains { $0.kind == .oom })
            #expect(said.contains { $0.contains("the OOMs of container \(name) are read on a timer") }, "\(said)")
            #expect(monitor.unwatchedCount == 1, "its counter is read on the caller's timer")
            #expect(monitor.readCounters().isEmpty, "no kill yet")
            let pid = try api.get(name).run([testHelperPath, "alloc", "200"])
            for _ in 0..<10_000 where TestProcess.reapIfExited(pid) == nil && kill(pid, 0) == 0 { usleep(1000) }
            var kills = 0
            for _ in 0..<100 where kills == 0 {
                for case .oom(name, let n) in monitor.readCounters() { kills += n }
                if kills == 0 { usleep(20_000) }
            }
            #expect(kills >= 1 && kills == oomKills(name), "\(kills) kills read, \(String(describing: oomKills(name))) counted")
            #expect(monitor.readCounters().isEmpty, "each kill once")
            _ = monitor.unwatch(name)
            #expect(monitor.unwatchedCount == 0)
        }
    }
}
