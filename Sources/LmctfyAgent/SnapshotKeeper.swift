// Keeps one snapshot per container (SnapshotStore) equal to what the kernel
// has, and reconciles them with cgroupfs when the agent starts (issue #13,
// README "Snapshots and restart recovery").
//
// When snapshots are written:
// - the agent's own update, run, pause, resume and killall: by the call,
//   after the kernel work and before the answer, so a change a client saw
//   succeed survives the agent being killed (it is in the store's intent
//   log; the store's flusher makes the file durable moments later, see
//   SnapshotStore). Destroy removes the container's snapshot and its
//   subcontainers'.
// - the agent's own create: before the answer, its intent (the name, when,
//   made by the agent, no spec yet: `created`), logged again with its
//   processes by a Run's start and end; the full snapshot, read from the
//   kernel, by a thread of ours once the container is `deferMs` old, or by
//   any write before that which needs the spec (an update, a pause, a
//   change the watcher saw). Reading the spec back and encoding it were a
//   tenth of a create's answer time, and a container destroyed within
//   `deferMs` never needs them. A crash in between loses nothing: the
//   restarted agent reads every container there is from the kernel
//   (`recover`), and an intent is completed from it as the agent's own (not
//   adopted, its creation time and processes kept).
// - changes made behind the agent's back (the lmctfy CLI, another tool):
//   the Inventory tells us of every name whose existence, freezer state or
//   spec it saw change, and a thread of ours writes (or removes) the
//   snapshot soon after. A container first seen that way is "adopted".
// What is written is always read from the kernel when the write starts (the
// spec as the `spec` verb reads it back, the freezer state), never taken
// from the request: a write that starts after a change has that change, so
// requests that pile up while one write runs share the next one (Coalescer),
// and a snapshot equal to the last one written is not written again.
//
// Processes: a Run through the agent is recorded (argv, the environment,
// cwd and ids it inherited from the agent, detached or not, the restart
// policy) with its pid and start time (/proc/<pid>/stat field 22), so a pid
// the kernel gave to another process later is not taken for it. A recorded
// process found dead when a snapshot is written is dropped from it.
import Glibc
import LmctfyEvents
import LmctfyProto
import LmctfyRPC
import LmctfySystem

/// Thread-safe.
public final class SnapshotKeeper: Sendable {
    /// What the kernel has of a container: its spec as read back, its
    /// freezer state and its count of OOM kills (nil: it isolates no memory).
    public typealias Kernel = (spec: ContainerSpec, frozen: Bool, oomKills: Int64?, cgroupId: UInt64?)
    /// The kernel's state of a container; nil when it does not exist.
    public typealias Read = @Sendable (String) throws(LmctfyError) -> Kernel?

    let store: SnapshotStore
    let events: EventLog
    let read: Read
    /// Which cgroup a container is now (`Kernel.cgroupId`) without reading
    /// the rest: one stat per container at a start, not a whole read.
    let cgroupId: @Sendable (String) -> UInt64?
    let warn: @Sendable (String) -> Void

    struct Record {
        var createdNs: UInt64
        var adopted: Bool
        var processes: [SnapshotProcess] = []
        /// SHA-256 of the last snapshot written, serialized without its
        /// boot id, time and stats (compared to skip an unchanged write; a
        /// hash, not the bytes: 32 bytes a container, not kilobytes).
        var written: [UInt8]?
        /// SHA-256 of its spec as last written (serialized), so that the
        /// watcher's read of the same spec needs no second read here.
        var spec: [UInt8]?
        /// The kernel's state as last read, good for a process-only sync
        /// while `readFor` is still `asked`: every other sync bumps `asked`
        /// before it queues, so a read that may have missed its change is
        /// not used again.
        var kernel: Kernel?
        var readFor: UInt64 = 0
        var asked: UInt64 = 1
        /// Only a create's intent is on record: its full snapshot is still
        /// to be written (`created`).
        var intent = false
        /// The cgroup the create made (its intent records it): an intent
        /// without it could not tell, after a restart, a container
        /// destroyed and made again while no agent watched (a probe).
        var intentCgroupId: UInt64?
        /// Made by a Run with remove_when_done (ContainerSnapshot.one_shot).
        var oneShot = false
        /// The snapshot without its processes (and without boot id, stats
        /// and time), serialized from `kernel`: a process-only write (a
        /// Run's start and end) appends its processes to it instead of
        /// encoding the spec again.
        var head: [UInt8]?
    }

    /// The bytes a snapshot's key is made from: `head` (`Record.head`),
    /// then the processes (a protobuf message may have its fields in any
    /// order; repeated ones concatenate).
    static func keyed(_ head: [UInt8], _ processes: [SnapshotProcess], _ path: String) throws(LmctfyError) -> [UInt8] {
        processes.isEmpty ? head : head + (try SnapshotStore.serialized(ContainerSnapshot(process: processes), name: path))
    }

    /// How old a container the agent made is before the keeper's thread
    /// writes its full snapshot (`created`): one destroyed sooner never
    /// needs it, and the file on disk soon has the spec. The thread looks
    /// every `deferMs / 2` while some wait (a burst of creates is one pass).
    static let deferMs = 20
    /// Containers made whose full snapshot the keeper's thread writes
    /// (`created`), with when they were made (CLOCK_MONOTONIC ns), and
    /// whether the thread is in its long sleep (the first create wakes it;
    /// the ones after it do not).
    private let deferred = Mutexed<(names: [String: UInt64], asleep: Bool)>(([:], false))

    private let records = Mutexed(TreeIndexed<Record>())
    private let syncs = Coalescer<String>()

    /// Names the Inventory saw change, for the background thread.
    private let pending = Mutexed<(names: Set<String>, stopping: Bool)>(([], false))
    private let wake = ChangeCounter()
    private let stopped = Latch()
    private let running = Mutexed(false)

    /// What the writes cost (for the measurements in the README).
    public struct Costs: Sendable, CustomStringConvertible {
        public var writes = 0
        /// Creates' intents (`created`), not counted in `writes`.
        public var intents = 0
        public var skipped = 0
        public var removes = 0
        /// Reading the kernel's state and writing the file, per write.
        public var writeNs: UInt64 = 0
        /// Logging it, before the answer (encode, one append to the log).
        public var fileNs: UInt64 = 0
        /// The flusher's (after the answer): passes, snapshots renamed,
        /// time (fdatasync of the batch, renames, the directory's fsync).
        public var flush = SnapshotStore.FlushCosts()
        public var description: String {
            let n = Double(max(writes, 1))
            let p = Double(max(flush.passes, 1))
            return "\(intents) creates' intents, \(writes) written (\(fmt(Double(writeNs) / n / 1000)) µs each: kernel read-back and encoding \(fmt(Double(writeNs - fileNs) / n / 1000)) µs, logged \(fmt(Double(fileNs) / n / 1000)) µs), \(skipped) unchanged, \(removes) removed; flushed in \(flush.passes) passes (\(fmt(Double(flush.renamed) / p)) snapshots and \(fmt(Double(flush.ns) / p / 1000)) µs a pass)"
        }
        private func fmt(_ v: Double) -> String {
            let t = Int((v * 10).rounded())
            return "\(t / 10).\(t % 10)"
        }
    }
    private let counts = Mutexed(Costs())

    /// What the writes cost so far.
    public var costs: Costs {
        var c = counts.locked { $0 }
        c.flush = store.flushCosts.locked { $0 }
        return c
    }

    public init(store: SnapshotStore, events: EventLog, read: @escaping Read,
                cgroupId: (@Sendable (String) -> UInt64?)? = nil,
                warn: @escaping @Sendable (String) -> Void = { _ in }) {
        self.store = store
        self.events = events
        self.read = read
        self.cgroupId = cgroupId ?? { path in (try? read(path))??.cgroupId }
        self.warn = warn
    }

    // MARK: Writes

    /// Writes `path`'s snapshot from what the kernel has now (or removes it
    /// if the container is gone), unless it is unchanged. Returns once a
    /// write that started after this call has finished. `adopted`: a
    /// container not made through this agent, if it has no record yet.
    ///
    /// `processesOnly`: only the recorded processes changed (a Run through
    /// the agent started or ended): the spec and freezer state last read are
    /// used again, unless another sync has been asked for since (a change
    /// behind the agent's back reaches us through `observed`, which asks).
    /// That saves a read-back (175-290 µs) at each start and end of a Run.
    public func sync(_ path: String, adopted: Bool = false, processesOnly: Bool = false, fresh: Int32? = nil) throws(LmctfyError) {
        if !processesOnly { records.locked { $0[path]?.asked += 1 } }
        do {
            try syncs.run(path) { try syncNow(path, adopted: adopted, fresh: fresh) }
        } catch let error as LmctfyError {
            throw error
        } catch {
            throw .internalError("Snapshot of \(path): \(error)")
        }
    }

    /// `sync`, but a failure is only logged: the kernel work of the call is
    /// done and stays done (nothing is half-made), and the background
    /// thread tries again.
    func syncOrWarn(_ path: String, processesOnly: Bool = false, fresh: Int32? = nil) {
        do throws(LmctfyError) { try sync(path, processesOnly: processesOnly, fresh: fresh) } catch {
            warn("snapshot of \(path) not written (tried again later): \(error)")
            observed(path)
        }
    }

    private func syncNow(_ path: String, adopted: Bool, fresh: Int32? = nil) throws(LmctfyError) {
        let t0 = MonotonicClock.nanoseconds()
        let (cached, generation, intentOnly) = records.locked { r in
            let unchanged = r[path].map { $0.readFor == $0.asked } ?? false
            return (unchanged ? r[path]?.kernel : nil, r[path]?.asked ?? 1,
                    unchanged && r[path]?.intent == true && r[path]?.kernel == nil)
        }
        // Still only a create's intent, and nothing asked for the spec since
        // (a Run's start or end): the intent again, with the processes.
        if intentOnly { return try writeIntent(path, fresh: fresh) }
        let current: Kernel?
        if let cached { current = cached } else { current = try read(path) }
        guard let kernel = current else {
            records.locked { $0[path] = nil }
            try store.remove(path)
            counts.locked { $0.removes += 1 }
            return
        }
        let now = WallClock.nanosecondsSinceEpoch()
        let rec = records.locked { r in
            if r[path] == nil { r[path] = Record(createdNs: now, adopted: adopted) }
            if cached == nil {
                r[path]?.kernel = kernel
                r[path]?.readFor = generation
            }
            return r[path]!
        }
        let (alive, dead) = Self.living(rec.processes, fresh: fresh)
        let head: [UInt8]
        if cached != nil, let h = rec.head { head = h } else {
            head = try SnapshotStore.serialized(ContainerSnapshot(
                formatVersion: SnapshotStore.formatVersion, name: path, spec: kernel.spec,
                owner: kernel.spec.owner, ownerGroup: kernel.spec.ownerGroup, frozen: kernel.frozen,
                createdNs: rec.createdNs, adopted: rec.adopted, oomKills: kernel.oomKills, cgroupId: kernel.cgroupId,
                oneShot: rec.oneShot ? true : nil))
        }
        let base = try Self.keyed(head, alive, path)
        let key = Crypto.sha256(base)
        if key == rec.written && alive.count == rec.processes.count {
            counts.locked { $0.skipped += 1 }
            return
        }
        // What the key leaves out (boot id, stats, time) is appended to the
        // bytes the key was made from (a protobuf message's fields may come
        // in any order, and these are not in `base`): serialized once.
        let extras = ContainerSnapshot(bootId: events.bootId, lastStats: events.latestStats(container: path), writtenNs: now)
        let f0 = MonotonicClock.nanoseconds()
        try store.write(name: path, body: base + SnapshotStore.serialized(extras, name: path))
        let fileNs = MonotonicClock.nanoseconds() - f0
        // The spec's hash again only when it was read again (a process-only
        // write reuses the spec it last wrote, and its hash).
        let specBytes = cached != nil && rec.spec != nil ? rec.spec : (try? kernel.spec.serializedBytes()).map(Crypto.sha256)
        records.locked { r in
            r[path]?.written = key
            r[path]?.head = head
            r[path]?.intent = false
            r[path]?.spec = specBytes
            r[path]?.processes.removeAll { dead.contains($0.pid ?? 0) }
        }
        let ns = MonotonicClock.nanoseconds() - t0
        counts.locked { $0.writes += 1; $0.writeNs += ns; $0.fileNs += fileNs }
    }

    /// A container the agent has just made: its intent logged now (before
    /// the create answers: the name, when, made by the agent, no spec), and
    /// again with its processes by a Run's start and end; its full snapshot,
    /// read from the kernel, written by the keeper's thread `deferMs` later
    /// (or by any write that needs the spec: an update, a pause, the
    /// watcher's), and never for a container destroyed by then. A failure
    /// is only logged, as in `syncOrWarn`. `oneShot`: made by a Run with
    /// remove_when_done, which the intent says (`recover` removes one left
    /// without its command).
    func created(_ path: String, oneShot: Bool = false) {
        let now = WallClock.nanosecondsSinceEpoch()
        let made = cgroupId(path)
        records.locked { r in
            var rec = r[path] ?? Record(createdNs: now, adopted: false)
            // A record the watcher made first (it saw the directories before
            // the create answered) is the agent's own.
            rec.adopted = false
            // Nothing read before is this container's, and nothing is asked
            // of its spec yet (a sync that asks bumps `asked`, and reads).
            rec.asked += 1
            rec.readFor = rec.asked
            rec.kernel = nil
            rec.head = nil
            rec.written = nil
            rec.spec = nil
            rec.intent = true
            rec.intentCgroupId = made
            rec.oneShot = oneShot
            r[path] = rec
        }
        do {
            // In turn with the path's other writes: where a write already
            // running read the kernel before the create was done, this one
            // follows it (and reads again).
            try syncs.run(path) { try syncNow(path, adopted: false) }
        } catch {
            warn("snapshot of \(path) not written (tried again later): \(error)")
        }
        let wakeKeeper = deferred.locked { d -> Bool in
            d.names[path] = MonotonicClock.nanoseconds()
            defer { d.asleep = false }
            return d.asleep
        }
        if wakeKeeper { wake.bump() }
    }

    /// The recorded `processes` still alive, and the pids of those gone. A
    /// process recorded a moment ago (`fresh`: `started` read its start
    /// time) is not looked up again.
    static func living(_ processes: [SnapshotProcess], fresh: Int32?) -> (alive: [SnapshotProcess], dead: Set<Int32>) {
        let alive = processes.filter { p in p.pid == fresh || isAlive(p) }
        return (alive, Set(processes.filter { p in !alive.contains { $0.pid == p.pid } }.compactMap(\.pid)))
    }

    /// Logs `path`'s intent (`created`): its name, creation time, the
    /// processes recorded in it, no spec.
    private func writeIntent(_ path: String, fresh: Int32?) throws(LmctfyError) {
        guard let rec = records.locked({ $0[path] }) else { return }
        let now = WallClock.nanosecondsSinceEpoch()
        let (alive, dead) = Self.living(rec.processes, fresh: fresh)
        let s = ContainerSnapshot(formatVersion: SnapshotStore.formatVersion, name: path, createdNs: rec.createdNs,
                                  bootId: events.bootId, process: alive, adopted: false, writtenNs: now,
                                  cgroupId: rec.intentCgroupId, oneShot: rec.oneShot ? true : nil)
        try store.write(name: path, body: SnapshotStore.serialized(s), intent: true)
        if !dead.isEmpty { records.locked { $0[path]?.processes.removeAll { dead.contains($0.pid ?? 0) } } }
        counts.locked { $0.intents += 1 }
    }

    /// When the agent made or first saw `path` (CLOCK_REALTIME ns; kept
    /// across restarts in its snapshot); nil: unknown. CL2's eviction
    /// order within a tier (newest first) after a restart.
    func createdNs(_ path: String) -> UInt64? { records.locked { $0[path]?.createdNs } }

    /// Removes the snapshots of `path` and of every container below it (a
    /// destroy through the agent).
    public func removeTree(_ path: String) {
        let names = Set(records.locked { $0.atOrBelow(path) } + [path])
        deferred.locked { d in for name in names { d.names[name] = nil } }
        for name in names.sorted(by: >) {
            do {
                try syncs.run(name) {
                    records.locked { $0[name] = nil }
                    try store.remove(name)
                }
                counts.locked { $0.removes += 1 }
            } catch {
                warn("snapshot of \(name) not removed: \(error)")
            }
        }
    }

    /// A process the agent started in `path` (Run): recorded, then the
    /// snapshot written before the caller hears of it.
    /// `removes`: a one-shot command (Run with `remove_when_done`), whose
    /// container goes when it ends: `onCommandEnded` is told if the agent
    /// sees it end on its own (detached, or after a restart).
    func started(_ path: String, pid: Int32, argv: [String], detached: Bool, policy: RestartPolicy?, removes: Bool = false) {
        let p = SnapshotProcess(
            pid: pid, startTime: Self.startTime(pid), argv: argv, env: Self.inherited.env, cwd: Self.inherited.cwd,
            uid: Self.inherited.uid, gid: Self.inherited.gid, detached: detached, restartPolicy: policy ?? .restartNever,
            startedNs: WallClock.nanosecondsSinceEpoch(), removesContainer: removes ? true : nil)
        let now = WallClock.nanosecondsSinceEpoch()
        records.locked { r in
            if r[path] == nil { r[path] = Record(createdNs: now, adopted: false) }
            r[path]?.processes.append(p)
        }
        syncOrWarn(path, processesOnly: true, fresh: p.startTime != nil ? pid : nil)
        // A detached process is not our child (D6): its pidfd says when it
        // exits, not how. (A foreground one is waited for by its call.)
        if detached, watchExit(path, p, reason: Self.detachedExit) == false {
            events.append(ContainerEvent(container: path, kind: .containerEventProcessExited, pid: pid, reason: Self.detachedExit))
            ended(path, pid: pid, removes: removes)
        }
    }

    /// Where the containers of one-shot commands that ended go to be
    /// destroyed (the agent's `Dispatcher.removeOneShot`, off the caller's
    /// thread); until it is set (the agent's start), they wait.
    public func onCommandEnded(_ remove: @escaping @Sendable (String) -> Void) {
        let waiting = oneShots.locked { o in
            o.remove = remove
            defer { o.waiting = [] }
            return o.waiting
        }
        for path in waiting { remove(path) }
    }
    private let oneShots = Mutexed<(remove: (@Sendable (String) -> Void)?, waiting: [String])>((nil, []))

    /// A recorded process that ended without its Run's caller to see it:
    /// dropped from the snapshot and, if it was a one-shot command that was
    /// still recorded there (a destroy meanwhile, of that container or one
    /// made again under its name, dropped it), its container handed on.
    private func ended(_ path: String, pid: Int32, removes: Bool) {
        guard exited(path, pid: pid), removes else { return }
        let remove = oneShots.locked { o -> (@Sendable (String) -> Void)? in
            if o.remove == nil { o.waiting.append(path) }
            return o.remove
        }
        remove?(path)
    }

    static let detachedExit = "exited; its status is unknown (detached)"
    static let callerGone = "killed: run in the foreground by an earlier agent, its caller gone with it"
    static let earlierAgentExit = "exited; its status is unknown (started by an earlier agent)"

    /// SIGKILLs the job of `p` (its process group: a foreground command
    /// leads one of its own) if `p` is still that process: its pidfd is
    /// opened first, then its start time checked, so neither signal can
    /// reach a later process with its pid (or group id: one is not reused
    /// while its leader lives). A process with no recorded start time is
    /// left alone. True if it was signalled.
    static func killJob(_ p: SnapshotProcess) -> Bool {
        guard let pid = p.pid, pid > 1, p.startTime != nil, let fd = try? Sys.pidfdOpen(pid) else { return false }
        defer { close(fd) }
        guard isAlive(p) else { return false }
        _ = try? Sys.kill(-pid, SIGKILL)
        return (try? Sys.pidfdSendSignal(fd, SIGKILL)) != nil
    }

    /// A process the agent ran in the foreground ended (its status went to
    /// the caller and the event log): dropped from the snapshot.
    @discardableResult
    func exited(_ path: String, pid: Int32) -> Bool {
        let had = records.locked { r in
            let n = r[path]?.processes.count ?? 0
            r[path]?.processes.removeAll { $0.pid == pid }
            return n != (r[path]?.processes.count ?? 0)
        }
        if had { syncOrWarn(path, processesOnly: true) }
        return had
    }

    // MARK: Changes behind the agent's back

    /// A container whose existence, freezer state or spec changed without
    /// the agent (the Inventory's hook; called under its lock: only queues).
    /// `spec`: the spec the watcher has just read (serialized); nothing is
    /// queued when it is the one last written.
    func observed(_ path: String, spec: [UInt8]? = nil) {
        if let spec, case let hash = Crypto.sha256(spec), records.locked({ $0[path]?.spec == hash }) { return }
        // From now on a process-only sync reads the kernel again too.
        records.locked { $0[path]?.asked += 1 }
        _ = pending.locked { $0.names.insert(path) }
        wake.bump()
    }

    /// Starts the thread that writes what `observed` queues.
    public func start() {
        guard !running.locked({ r in defer { r = true }; return r }) else { return }
        store.startFlusher()
        startProcessWatch()
        for (path, p) in survivors.locked({ s in defer { s = [] }; return s }) {
            // A foreground command of an earlier agent: its caller's
            // connection went with that agent, so its job is killed, as a
            // cancelled call's is (PROTOCOL.md, Run); it ran on to its end
            // before, and a one-shot's container stayed until then. A
            // one-shot's container goes at once, with what is left in it
            // (a job in a paused container dies only when thawed).
            let killed = p.detached != true && Self.killJob(p)
            if !(killed && p.removesContainer == true),
               watchExit(path, p, reason: killed ? Self.callerGone : Self.earlierAgentExit) != false { continue }
            // Killed one-shot, or gone since the recovery looked (or since
            // the kill just now: its reason was "exited while the agent was
            // down" then, most times; a probe): dropped at once.
            events.append(ContainerEvent(container: path, kind: .containerEventProcessExited, pid: p.pid,
                                         reason: killed ? Self.callerGone : "exited while the agent was down"))
            ended(path, pid: p.pid ?? 0, removes: p.removesContainer == true)
        }
        Threads.detach { [self] in
            var seen: UInt64 = 0
            while true {
                let (names, stopping) = pending.locked { p in
                    defer { p.names = [] }
                    return (p.names, p.stopping)
                }
                if stopping {
                    // A stop leaves no intent behind (a kill may: the next
                    // start completes it from the kernel).
                    completeIntents(deferred.locked { d in defer { d.names = [:] }; return Set(d.names.keys) })
                    break
                }
                // Parents first: a subcontainer's snapshot after its parent's.
                for name in names.sorted() {
                    do throws(LmctfyError) { try sync(name, adopted: true) } catch {
                        warn("snapshot of \(name) not written: \(error)")
                    }
                }
                // Creates' full snapshots, once `deferMs` old (those written
                // meanwhile are skipped; destroyed ones are gone from the set).
                let now = MonotonicClock.nanoseconds()
                let (due, waitMs) = deferred.locked { d -> (Set<String>, Int) in
                    guard !d.names.isEmpty else {
                        d.asleep = true
                        return ([], 1000)
                    }
                    let age = UInt64(Self.deferMs) * 1_000_000
                    let ripe = Set(d.names.filter { now &- $0.value >= age }.keys)
                    for name in ripe { d.names[name] = nil }
                    return (ripe, Self.deferMs / 2)
                }
                completeIntents(due)
                if names.isEmpty && due.isEmpty { seen = wake.wait(past: seen, timeoutMs: waitMs) }
                deferred.locked { $0.asleep = false }
            }
            stopped.signal()
        }
    }

    /// Writes the full snapshot of each of `names` that still has only its
    /// intent (`created`), read from the kernel.
    private func completeIntents(_ names: Set<String>) {
        for name in names.sorted() where records.locked({ $0[name]?.intent == true }) {
            do throws(LmctfyError) { try sync(name) } catch {
                warn("snapshot of \(name) not written: \(error)")
            }
        }
    }

    /// Stops the thread (what the watcher had queued is left to the next
    /// start's recovery; creates' intents are completed first).
    public func stop() {
        guard running.locked({ $0 }) else { return }
        pending.locked { $0.stopping = true }
        wake.bump()
        stopped.wait()
        stopProcessWatch()
        store.stopFlusher()
    }

    // MARK: Processes an earlier agent started

    /// Watches the recorded processes that are not the agent's children
    /// (detached ones, and those that outlived the agent that started
    /// them): each has a pidfd (pidfd_open, opened and then checked against
    /// the recorded start time, so it is that process and not a later one
    /// with its pid) polled by one thread. When one exits, PROCESS_EXITED
    /// is recorded with its pid and no status (waitid on the pidfd of a
    /// process that is not our child fails with ECHILD: the status went to
    /// whoever reaped it), and it leaves the snapshot.
    final class ProcessWatch: @unchecked Sendable {
        // @unchecked: `entries`, `next` and `stopping` only under `lock`.
        let epoll: Epoll
        let wakeFd: Int32
        let lock = Lock()
        var entries: [UInt64: (fd: Int32, path: String, pid: Int32, reason: String, removes: Bool)] = [:]
        var next: UInt64 = 1
        var stopping = false
        let done = Latch()

        init() throws(SystemError) {
            epoll = try Epoll()
            wakeFd = try EventFds.eventfd()
            try epoll.add(wakeFd, key: 0)
        }

        deinit {
            for (_, e) in entries { close(e.fd) }
            close(wakeFd)
        }
    }
    private let processWatch = Mutexed<ProcessWatch?>(nil)
    /// The recorded processes the recovery found alive, watched from `start`.
    private let survivors = Mutexed<[(String, SnapshotProcess)]>([])

    /// Watches `p` (recorded in `path`) until it exits, then records
    /// PROCESS_EXITED with `reason`. True: watched; false: it is gone
    /// already; nil: it cannot be watched (no watch thread, out of
    /// descriptors): it is only dropped at a write.
    @discardableResult
    func watchExit(_ path: String, _ p: SnapshotProcess, reason: String) -> Bool? {
        guard let pid = p.pid, let w = processWatch.locked({ $0 }) else { return nil }
        let fd: Int32
        do throws(SystemError) { fd = try Sys.pidfdOpen(pid) } catch {
            return error.errno == ESRCH ? false : nil
        }
        // Opened first, checked second: the descriptor now pins the
        // process, and the start time says it is the one recorded.
        guard Self.isAlive(p) else {
            close(fd)
            return false
        }
        let added = w.lock.locked { () -> Bool in
            guard !w.stopping else { return false }
            let key = w.next
            w.next += 1
            guard (try? w.epoll.add(fd, key: key)) != nil else { return false }
            w.entries[key] = (fd, path, pid, reason, p.removesContainer == true)
            return true
        }
        if !added { close(fd) }
        return added ? true : nil
    }

    private func startProcessWatch() {
        guard let w = try? ProcessWatch() else {
            warn("processes of an earlier agent are not watched (no epoll or eventfd)")
            return
        }
        processWatch.locked { $0 = w }
        Threads.detach { [self] in
            while true {
                let keys = (try? w.epoll.wait(timeoutMs: 1000)) ?? []
                var gone: [(path: String, pid: Int32, reason: String, removes: Bool)] = []
                let stop = w.lock.locked { () -> Bool in
                    for key in keys where key != 0 {
                        guard let e = w.entries.removeValue(forKey: key) else { continue }
                        w.epoll.remove(e.fd)
                        close(e.fd)
                        gone.append((e.path, e.pid, e.reason, e.removes))
                    }
                    return w.stopping
                }
                if keys.contains(0) { _ = try? EventFds.readCounter(w.wakeFd) }
                if stop { break }
                for (path, pid, reason, removes) in gone {
                    events.append(ContainerEvent(container: path, kind: .containerEventProcessExited, pid: pid, reason: reason))
                    ended(path, pid: pid, removes: removes)
                }
            }
            w.done.signal()
        }
    }

    private func stopProcessWatch() {
        guard let w = processWatch.locked({ p in defer { p = nil }; return p }) else { return }
        w.lock.locked { w.stopping = true }
        EventFds.signal(w.wakeFd)
        w.done.wait()
    }

    /// How many processes of an earlier agent are watched (tests).
    public var watchedProcesses: Int {
        guard let w = processWatch.locked({ $0 }) else { return 0 }
        return w.lock.locked { w.entries.count }
    }

    // MARK: Recovery at start

    /// What `recover` found.
    public struct Recovery: Sendable, CustomStringConvertible {
        public var reattached = 0
        public var vanished: [String] = []
        public var adopted: [String] = []
        public var rewritten = 0
        public var damaged: [String] = []
        public var processesAlive = 0
        public var processesGone = 0
        /// Snapshots whose newest version was still in a temp file.
        public var rolledForward = 0
        /// Each re-attached container's count of OOM kills as its snapshot
        /// had it: the watcher reports the kills beyond it (made while no
        /// agent watched).
        public var oomKills: [String: Int64] = [:]
        public var description: String {
            "\(rolledForward) rolled forward from temp files, \(reattached) re-attached (\(rewritten) rewritten from the kernel), \(vanished.count) destroyed while the agent was down, \(adopted.count) adopted, \(damaged.count) damaged files set aside; recorded processes: \(processesAlive) alive, \(processesGone) gone"
        }
    }

    /// Reconciles the snapshots on disk with `listed`, every container there
    /// is now: a snapshot whose container is gone is recorded as DESTROYED
    /// ("destroyed while the agent was down") and removed; a container with
    /// a snapshot is re-attached (its record loaded, its recorded processes
    /// that died recorded as PROCESS_EXITED "exited while the agent was
    /// down", its snapshot rewritten if the kernel differs); a container
    /// without one is adopted (written). Damaged files are reported and
    /// set aside. Before the agent serves anything.
    @discardableResult
    public func recover(listed: [String]) throws(LmctfyError) -> Recovery {
        var out = Recovery()
        let settled = try store.open()
        out.rolledForward = settled.rolledForward
        var (snapshots, damaged) = store.loadAll()
        // The containers whose snapshot was there but damaged: they were
        // known (their CREATED is in the log already), so adopting one is
        // no CREATED (it was recorded as made while the agent was down,
        // unpaired; a probe).
        let damagedNames = Set(damaged.compactMap { file, _ in
            SnapshotStore.name(ofFile: file) ?? listed.first { SnapshotStore.fileName($0) == file }
        })
        for (file, why) in damaged {
            warn("snapshot file \(store.directory)/\(file) is damaged (\(why)); set aside as damaged-\(file)")
            store.setAside(file)
            out.damaged.append(file)
        }
        // The root is never listed, and always there: its snapshot (of the
        // processes run in it) was taken for a container destroyed while
        // the agent was down, a DESTROYED of "/" (a probe).
        var present = Set(listed + ["/"])
        // An agent kept snapshots or events here before this one.
        let ranBefore = !snapshots.isEmpty || !damaged.isEmpty || !events.olderBootIds.isEmpty
        // A container of a snapshot's name whose cgroup is another than the
        // one the snapshot was of: destroyed and made again while no agent
        // watched. Its snapshot's container is gone (DESTROYED), and it is
        // adopted (CREATED) with a life of its own; it took the old one's
        // creation time and "adopted: false" (the virtual-host probe).
        var replaced: Set<String> = []
        for (name, s) in snapshots where present.contains(name) {
            guard let was = s.cgroupId, let now = cgroupId(name), now != was else { continue }
            replaced.insert(name)
            present.remove(name)
        }
        for (name, _) in snapshots.sorted(by: { $0.key > $1.key }) where !present.contains(name) {
            events.append(ContainerEvent(container: name, kind: .containerEventDestroyed,
                                         reason: "destroyed while the agent was down"))
            // A full disk does not stop the start: the removal is pending.
            do throws(LmctfyError) { try store.remove(name) } catch {
                warn("snapshot of \(name) not removed yet: \(error)")
            }
            out.vanished.append(name)
        }
        for name in replaced { snapshots[name] = nil }
        present.formUnion(replaced)
        for (name, s) in snapshots where present.contains(name) {
            if let kills = s.oomKills { out.oomKills[name] = kills }
            var processes: [SnapshotProcess] = []
            for p in s.process {
                if Self.isAlive(p) {
                    processes.append(p)
                    survivors.locked { $0.append((name, p)) }
                    out.processesAlive += 1
                } else {
                    events.append(ContainerEvent(container: name, kind: .containerEventProcessExited, pid: p.pid,
                                                 reason: "exited while the agent was down"))
                    out.processesGone += 1
                    // A one-shot command's container goes once the agent
                    // runs (`onCommandEnded`).
                    if p.removesContainer == true { oneShots.locked { $0.waiting.append(name) } }
                }
            }
            // A one-shot's container with no command of it left: the agent
            // was killed between its create and its command's start (or the
            // command ended while it was down: then it is listed already).
            if s.oneShot == true && processes.isEmpty {
                oneShots.locked { o in if !o.waiting.contains(name) { o.waiting.append(name) } }
            }
            // The key a write of the same state would have (`syncNow`).
            let head = try? SnapshotStore.serialized(ContainerSnapshot(
                formatVersion: s.formatVersion, name: s.name, spec: s.spec, owner: s.owner, ownerGroup: s.ownerGroup,
                frozen: s.frozen, createdNs: s.createdNs, adopted: s.adopted, oomKills: s.oomKills, cgroupId: s.cgroupId,
                oneShot: s.oneShot))
            let key = processes.count == s.process.count ? head.flatMap { try? Self.keyed($0, processes, name) } : nil
            records.locked { r in
                var rec = Record(createdNs: s.createdNs ?? WallClock.nanosecondsSinceEpoch(), adopted: s.adopted ?? false,
                                 processes: processes,
                                 written: key.map(Crypto.sha256),
                                 spec: (try? s.spec?.serializedBytes()).flatMap { $0 }.map(Crypto.sha256))
                rec.oneShot = s.oneShot == true
                r[name] = rec
            }
            out.reattached += 1
        }
        for name in listed.sorted() {
            let before = counts.locked { $0.writes }
            do throws(LmctfyError) { try sync(name, adopted: true) } catch {
                warn("snapshot of \(name) not written at start: \(error)")
                continue
            }
            let wrote = counts.locked { $0.writes } > before
            if snapshots[name] == nil {
                out.adopted.append(name)
                // A container made while an agent that ran here before was
                // down is news, as one destroyed meanwhile is: subscribers
                // (the fleet's log) heard of its end and never of it. At a
                // first start everything is found, nothing made.
                if ranBefore && !damagedNames.contains(name) {
                    events.append(ContainerEvent(container: name, kind: .containerEventCreated,
                                                 reason: "made while the agent was down"))
                }
            } else if wrote {
                out.rewritten += 1
                if let was = snapshots[name] { recordChangesWhileDown(name, was: was) }
            }
        }
        // Every file the recovery changed, in one pass, before anything is served.
        store.flush()
        return out
    }

    /// A container's spec or freezer state changed while no agent ran (the
    /// CLI, another tool): UPDATED or FREEZER, as the watcher would have
    /// recorded them, "changed while the agent was down" (a subscriber
    /// following the freezer state from events had it wrong). Only against
    /// a full snapshot: a create's intent has no spec to compare.
    private func recordChangesWhileDown(_ name: String, was: ContainerSnapshot) {
        guard var spec = was.spec, let now = records.locked({ $0[name] }), let kernel = now.kernel else { return }
        let reason = "changed while the agent was down"
        // A snapshot from before the spec read owner back has none; an
        // owner is set at create only, so the kernel's is the one it had.
        if spec.owner == nil && spec.ownerGroup == nil {
            spec.owner = kernel.spec.owner
            spec.ownerGroup = kernel.spec.ownerGroup
        }
        if let before = (try? spec.serializedBytes()).map(Crypto.sha256), now.spec != nil, now.spec != before {
            events.append(ContainerEvent(container: name, kind: .containerEventUpdated, reason: reason))
        }
        if kernel.frozen != (was.frozen ?? false) {
            events.append(ContainerEvent(container: name, kind: .containerEventFreezer, frozen: kernel.frozen, reason: reason))
        }
    }

    /// The names with a record (a snapshot written or loaded).
    public var names: [String] { records.locked { Array($0.keys) } }

    // MARK: Processes

    /// /proc/<pid>/stat field 22, the start time in clock ticks after boot;
    /// nil when there is no such process.
    public static func startTime(_ pid: Int32) -> UInt64? {
        stat(pid)?.startTime
    }

    /// From /proc/<pid>/stat: the state (field 3) and the start time
    /// (field 22), read in one read(2) and taken from the bytes after the
    /// command's closing parenthesis (a command may hold spaces and
    /// parentheses) without building strings (on every Run's path).
    static func stat(_ pid: Int32) -> (state: UInt8, startTime: UInt64)? {
        guard let bytes = try? Sys.readBytes("/proc/\(pid)/stat", shortReadEnds: true) else { return nil }
        return parseStat(bytes)
    }

    /// `stat`'s parse (tests).
    static func parseStat(_ bytes: [UInt8]) -> (state: UInt8, startTime: UInt64)? {
        guard let close = bytes.lastIndex(of: UInt8(ascii: ")")) else { return nil }
        var field = 2  // the command's
        var i = close + 1
        var state: UInt8 = 0
        while i < bytes.count {
            while i < bytes.count && bytes[i] == UInt8(ascii: " ") { i += 1 }
            guard i < bytes.count else { break }
            field += 1
            if field == 3 { state = bytes[i] }
            if field == 22 {
                var value: UInt64 = 0
                var digits = 0
                while i < bytes.count, bytes[i] >= 48, bytes[i] <= 57, digits < 19 {
                    value = value * 10 + UInt64(bytes[i] - 48)
                    i += 1
                    digits += 1
                }
                let ended = i == bytes.count || bytes[i] == UInt8(ascii: " ") || bytes[i] == UInt8(ascii: "\n")
                return digits > 0 && ended ? (state, value) : nil
            }
            while i < bytes.count && bytes[i] != UInt8(ascii: " ") { i += 1 }
        }
        return nil
    }

    /// Whether the recorded process still runs: its pid is there, with the
    /// start time recorded, and it is not a zombie.
    public static func isAlive(_ p: SnapshotProcess) -> Bool {
        guard let pid = p.pid, let st = stat(pid) else { return false }
        if st.state == UInt8(ascii: "Z") || st.state == UInt8(ascii: "X") { return false }
        guard let recorded = p.startTime else { return true }
        return st.startTime == recorded
    }

    /// What a Run's process inherits from the agent (environment, working
    /// directory, ids): read once. The agent changes none of them after it
    /// starts (NOTIFY_SOCKET is unset first thing in main; a thread that
    /// moves does so with a working directory of its own, never a Run's).
    private static let inherited: (env: [String], cwd: String?, uid: uid_t, gid: gid_t) = {
        let env = Sys.environment()
        var buf = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let cwd = getcwd(&buf, buf.count) != nil
            ? String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) : nil
        return (env, cwd, geteuid(), getegid())
    }()
}
