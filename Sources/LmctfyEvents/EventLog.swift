// The agent's event history: one boot id per agent start, sequence numbers
// that start at 1 and increase by exactly one, a bounded replay log so a
// subscriber can resume, and an explicit gap when it cannot.
import Glibc
import LmctfyProto
import LmctfyRPC
import LmctfySystem

/// The agent's event history: container lifecycle events and notifications,
/// each with the boot id and a sequence number from 1 up, the latest
/// `capacity` kept for replay. Thread-safe (state behind a lock).
public final class EventLog: Sendable {
    /// Identifies this agent start (32 hex digits): sequence numbers are only
    /// comparable within one boot id.
    public let bootId: String
    /// How many events the log keeps; older ones are dropped, and a resume
    /// from before them reports a gap.
    public let capacity: Int
    /// At most how many bytes (serialized, and 64 a piece besides) it keeps
    /// of each kind, events and STATS samples, and on disk: older ones are
    /// dropped first (nil: `capacity` alone bounds it). The controller's
    /// fleet log has one: its events come from peers, each up to 60 KiB,
    /// and 65,536 of those held 3.75 GiB.
    public let maxBytes: Int?
    private let state = Mutexed(State())
    /// Called after every record, on the recording thread (the agent's hub
    /// schedules its fan-out from here).
    ///
    /// The closure sits in a class: read through `Mutexed.locked`'s generic
    /// `inout`, a closure value is converted to the generic representation
    /// and back on the way in and out, and written back wrapped in two more
    /// thunks each time, so it grew by two calls with every event recorded
    /// (found by profiling an agent recording 1,000 samples a second).
    private let observer = Mutexed<CallbackBox?>(nil)
    /// Bumped after every record, for threads that wait for the next event.
    public let changes = ChangeCounter()

    /// Items in sequence order, at most `capacity` of them and, when the
    /// log has a byte budget (`maxBytes`), at most that many bytes
    /// (serialized) but for the newest: appends go at the end and the
    /// oldest leave from the front, which is cut off the array only once
    /// half of it is gone (amortized O(1), no shifting per event).
    struct Ring<Item: Sequenced>: Sendable {
        private var items: [Item] = []
        private var sizes: [Int] = []
        private var start = 0
        /// The kept items' sizes, summed (0 when none were given).
        private(set) var bytes = 0

        var count: Int { items.count - start }

        /// Appends `e` (`size` bytes); returns the newest item it pushed
        /// out (nil: none). A log without a budget (`maxBytes` nil) keeps
        /// `capacity` items whatever their size.
        mutating func append(_ e: Item, size: Int = 0, capacity: Int, maxBytes: Int? = nil) -> Item? {
            guard capacity > 0 else { return e }
            items.append(e)
            sizes.append(size)
            bytes += size
            var out: Item?
            while count > capacity || (count > 1 && bytes > (maxBytes ?? Int.max)) {
                out = items[start]
                bytes -= sizes[start]
                start += 1
            }
            if start >= 64 && start * 2 >= items.count {
                items.removeFirst(start)
                sizes.removeFirst(start)
                start = 0
            }
            return out
        }

        /// The oldest item kept.
        var oldest: Item? { count == 0 ? nil : items[start] }

        private func at(_ i: Int) -> Item { items[start + i] }

        /// The kept items with `after` < sequence <= `upTo`, oldest first
        /// (found by binary search: the ring is in sequence order), at most
        /// `limit` of them.
        func range(after: UInt64, upTo: UInt64, limit: Int = .max) -> [Item] {
            var out: [Item] = []
            var i = firstAfter(after, count: count) { at($0).seq }
            while i < count, at(i).seq <= upTo, out.count < limit {
                out.append(at(i))
                i += 1
            }
            return out
        }
    }

    /// An event as the rings keep it: serialized. A `ContainerEvent` value
    /// holds every field of the message inline, a `ContainerStats` among
    /// them (2,296 bytes however little it sets), so `capacity` samples of
    /// a thousand containers' sweeps held ~11 MB as values and a few
    /// hundred KB so, and the controller's 65,536 fleet events 150 MB. The
    /// bytes are the journal's (one encoding per event). Decoded only when
    /// replayed or published.
    struct PackedEvent: Sequenced, Sendable {
        let seq: UInt64
        let bytes: [UInt8]
        /// What the ring counts against its byte budget: the bytes and
        /// what holding them costs besides (the array's header, the slot).
        var cost: Int { bytes.count + 64 }
    }

    struct State {
        var next: UInt64 = 1
        /// A log whose id outlives the process: the file holding a bound
        /// every sequence number handed out is below, and that bound.
        var reservation: (file: SequenceReservation, through: UInt64)?
        /// Where events are also written (state_dir/events), once attached.
        var journal: EventJournal?
        /// Events (not samples) the journal has not taken yet, oldest
        /// first, and their cost: one a write failed for (a full disk) is
        /// written again before any after it, so that the journal stays a
        /// prefix of the log. (A failed write was dropped and the next one
        /// written: a subscriber resuming after a restart, and the
        /// controller's cursors, silently passed over the hole.)
        var unjournaled: [PackedEvent] = []
        var unjournaledCost = 0
        /// Events the journal will never have (`unjournaled` outgrew the
        /// log's own bounds): it takes nothing more, so that what it holds
        /// stays a prefix, until it starts again from what the log keeps
        /// (`flushJournal`).
        var unjournaledLost: UInt64 = 0
        /// The last write's errno when it failed (0: it did not).
        var journalErrno: Int32 = 0
        /// A journal that gave up: the `flushJournal` calls before it tries
        /// to start again, and how many it waited the last time.
        var restartWait = 0
        var restartBackoff = 0
        /// A start again is under way (`flushJournal` found it due).
        var startingAgain = false
        /// The last event of this boot the journal took (0: none yet), and
        /// whether it ever gave up on some (then this boot's end is not
        /// clean: `markEnded` says nothing).
        var lastJournaled: UInt64 = 0
        var journalEverLost = false
        /// The boots before this one that ended cleanly (EventJournal's
        /// `ended`) with their last kept event the one they ended with.
        var endedBoots: Set<String> = []
        /// The boots before this one whose events the journal kept, oldest
        /// first (an agent restarted twice keeps two). With this boot's
        /// events they are `capacity` at most, the oldest going first
        /// (`trimOlder`).
        var older: [(id: String, events: [PackedEvent])] = []
        /// How many events `older` holds, over all its boots.
        var olderCount = 0
        /// Of each boot in `older`, the newest sequence the bound let go of
        /// (its oldest events trimmed); absent: none.
        var olderTrimmed: [String: UInt64] = [:]
        /// The boots in `older` whose kept events begin with the first the
        /// boot journaled (their lower numbers were STATS samples, never
        /// journaled, not events let go): every boot after the oldest in
        /// the files (a rotation drops the oldest records first), and the
        /// oldest when the journal let nothing go or it begins at 1. A boot
        /// whose first journaled event was above 1 was taken for one that
        /// lost events (a clean restart replayed as a `gap:`; a probe).
        var olderFromStart: Set<String> = []
        /// The newest boot before this one the journal knew of when it was
        /// attached (nil: none), said with this boot's clean end when it
        /// journaled nothing (EventJournal's `ended`).
        var predecessor: String?
        /// Every event but stats samples, the latest `capacity`.
        var events = Ring<PackedEvent>()
        /// Stats samples, the latest `capacity`, apart: a sweep of a
        /// thousand containers must not push the other events out. An older
        /// sample is superseded by a newer one of its container, so one that
        /// is gone is no gap.
        var stats = Ring<PackedEvent>()
        /// The newest sequence of an event (not a sample) pushed out: a
        /// resume from before it has missed something.
        var evictedThrough: UInt64 = 0
        /// Each container's newest STATS sample (for its snapshot), until
        /// its DESTROYED.
        var latestStats: [String: ContainerStats] = [:]
        /// Events recorded by kind since the log began (metrics), and each
        /// container's OOMs until its DESTROYED.
        var kindCounts: [ContainerEventKind: UInt64] = [:]
        var ooms: [String: UInt64] = [:]

        /// Both rings' events in (after, upTo], merged in sequence order
        /// (one that would not decode is passed over).
        func range(after: UInt64, upTo: UInt64) -> [ContainerEvent] {
            EventLog.decoded(packedRange(after: after, upTo: upTo, limit: .max).events)
        }

        /// The first `limit` of them as kept (serialized), whether they
        /// were all there is, and the sequence of the last taken (0: none).
        func packedRange(after: UInt64, upTo: UInt64, limit: Int) -> (events: [PackedEvent], complete: Bool, last: UInt64) {
            let a = events.range(after: after, upTo: upTo, limit: limit)
            let b = stats.range(after: after, upTo: upTo, limit: limit)
            let complete = a.count + b.count <= limit && a.count < limit && b.count < limit
            var out: [PackedEvent] = []
            out.reserveCapacity(min(limit, a.count + b.count))
            var i = 0, j = 0, last: UInt64 = 0
            while (i < a.count || j < b.count) && i + j < limit {
                let p: PackedEvent
                if j == b.count || (i < a.count && a[i].seq < b[j].seq) {
                    p = a[i]; i += 1
                } else {
                    p = b[j]; j += 1
                }
                last = p.seq
                out.append(p)
            }
            return (out, complete, last)
        }

        /// The first sequence a resume can still get without a gap.
        var firstAvailable: UInt64 { evictedThrough + 1 }
    }

    /// An empty log keeping `capacity` events (and at most `maxBytes`),
    /// under `bootId` (nil: a random one).
    public init(capacity: Int = 4096, bootId: String? = nil, maxBytes: Int? = nil) {
        self.capacity = capacity
        self.maxBytes = maxBytes
        self.bootId = bootId ?? Sys.hex(Crypto.randomBytes(16))
    }

    /// Runs `observe` after every event recorded from now on (nil: none).
    public func onRecord(_ observe: (@Sendable () -> Void)?) {
        observer.locked { $0 = observe.map(CallbackBox.init) }
    }

    /// Appends an event with the next sequence number and returns it.
    @discardableResult
    public func record(container: String, kind: ContainerEventKind, threshold: Int64? = nil, frozen: Bool? = nil,
                       pid: Int32? = nil, exitCode: Int32? = nil, termSignal: Int32? = nil) -> ContainerEvent {
        append(ContainerEvent(container: container, kind: kind, memoryThreshold: threshold, frozen: frozen,
                              pid: pid, exitCode: exitCode, termSignal: termSignal))
    }

    /// Appends a stats sample of one container (kept apart from the other
    /// events and not journaled: a sample is superseded by the next).
    @discardableResult
    public func recordStats(container: String, _ stats: ContainerStats) -> ContainerEvent {
        append(ContainerEvent(container: container, kind: .containerEventStats, stats: stats))
    }

    /// Keeps the log on disk from now on, in `directory` (made 0700), after
    /// reading what the last boot before this one left there: its events are
    /// served to a subscriber of that boot (`previousBoot`).
    ///
    /// A log whose id outlives the process (the controller's fleet log,
    /// whose id is kept in its state directory) finds its own events there
    /// instead: they are kept again, and its sequence goes on after them.
    /// Returns what was damaged in it (see EventJournal.damage), for the
    /// daemon's log.
    @discardableResult
    public func attachJournal(directory: String) throws(LmctfyError) -> String? {
        let journal = try EventJournal(directory: directory, capacity: capacity, maxBytes: maxBytes)
        var own: [PackedEvent] = []
        var older: [(id: String, events: [PackedEvent])] = []
        for bytes in journal.opened {
            guard let e = try? ContainerEvent(serializedBytes: bytes) else { continue }
            if e.bootId == bootId {
                own.append(PackedEvent(seq: e.seq, bytes: bytes))
                continue
            }
            guard let id = e.bootId else { continue }
            let p = PackedEvent(seq: e.seq, bytes: bytes)
            if let i = older.firstIndex(where: { $0.id == id }) {
                // Once only, in order: a journal started again (see
                // `flushJournal`) repeats them, and a crash between its
                // new file's rename and the old `previous` going leaves
                // both.
                if let last = older[i].events.last?.seq, p.seq <= last { continue }
                older[i].events.append(p)
            } else {
                older.append((id, [p]))
            }
        }
        journal.dropOpened()
        let ends = journal.openedEnds
        var fromStart = Set(older.enumerated().filter { i, boot in
            i > 0 || journal.openedFloor == 0 || boot.events.first?.seq == 1
        }.map(\.element.id))
        // The boots that ended cleanly having journaled nothing (an idle
        // host's agent), each after the boot before it (at the front when
        // that one is no longer kept: what was before it went first), in
        // the order they ended. They are kept as boots without events: a
        // subscriber whose point was in one goes on from there, not from
        // the start of everything kept behind a gap, as from a boot the
        // journal never had. (Numbers past the boot's last event, none, are
        // STATS samples, never journaled: nothing of it is missing.)
        // So too those that started and were killed before they journaled
        // anything (not ended: a subscriber in one is told of a gap).
        for (boot, previous) in journal.openedEmptyBoots where boot != bootId && !older.contains(where: { $0.id == boot }) {
            let at = previous.flatMap { p in older.firstIndex { $0.id == p }.map { $0 + 1 } } ?? 0
            older.insert((boot, []), at: at)
            fromStart.insert(boot)
        }
        state.locked { s in
            s.journal = journal
            s.older = older
            s.predecessor = older.last?.id
            s.endedBoots = Set(older.filter { boot in ends.contains { $0.boot == boot.id && $0.last == (boot.events.last?.seq ?? 0) } }.map(\.id))
            s.olderFromStart = fromStart
            s.olderCount = older.reduce(0) { $0 + $1.events.count }
            // What rotated out of the journal before the oldest kept is
            // gone: up to its floor, the numbers between it and the oldest
            // kept were never journaled (every number below the oldest
            // kept was taken as gone, and a subscriber from the start of a
            // fleet log restarted twice got a gap for the numbers reserved
            // before the first restart and never used). Another boot's
            // events in the files number apart: no floor then.
            if let first = own.first?.seq, first > 1 {
                let floor = older.isEmpty ? journal.openedFloor : nil
                s.evictedThrough = max(s.evictedThrough, min(first - 1, floor ?? first - 1))
            }
            for p in own where p.seq >= s.next {
                if let out = s.events.append(p, size: p.cost, capacity: capacity, maxBytes: maxBytes) { s.evictedThrough = out.seq }
                s.next = p.seq + 1
            }
            trimOlder(&s)
        }
        journal.markStarted(boot: bootId, previous: older.last?.id)
        return journal.damage
    }

    /// Keeps the boots before this one and this one's events within
    /// `capacity` together, the oldest going first (a whole boot, once
    /// nothing of it is left). The older boots were kept whole until the
    /// next restart while this boot's ring let its own oldest go: events
    /// outlived newer ones, and which were kept depended on the agent's
    /// uptime (a soak probe). A batch of at least a 64th of the capacity
    /// goes at a time, so that the shift of the boot's events is paid once
    /// a batch, not at every event. A replay reading a boot trimmed under
    /// it is told (`olderBoot`: a gap where the events were).
    private func trimOlder(_ s: inout State) {
        guard !s.older.isEmpty else { return }
        var excess = s.olderCount + s.events.count - capacity
        guard excess > 0 else { return }
        excess = min(s.olderCount, max(excess, capacity / 64))
        while excess > 0, !s.older.isEmpty {
            let n = min(excess, s.older[0].events.count)
            let id = s.older[0].id
            if n == s.older[0].events.count {
                // Gone whole: its clean end no longer stands for it.
                s.older.removeFirst()
                s.olderTrimmed[id] = nil
                s.endedBoots.remove(id)
                s.olderFromStart.remove(id)
            } else {
                s.olderTrimmed[id] = s.older[0].events[n - 1].seq
                s.olderFromStart.remove(id)
                s.older[0].events.removeFirst(n)
            }
            s.olderCount -= n
            excess -= n
        }
    }

    /// Of the boot `id` before this one, as kept now: its first kept
    /// sequence and the newest the log's bound let go of (0: none); nil
    /// when none of it is kept.
    func olderBoot(_ id: String) -> (first: UInt64, trimmed: UInt64, fromStart: Bool)? {
        state.locked { s in
            // (A boot kept without events, one that journaled none: its
            // first would have been 1.)
            s.older.first { $0.id == id }.map { ($0.events.first?.seq ?? 1, s.olderTrimmed[id] ?? 0, s.olderFromStart.contains(id)) }
        }
    }

    /// Sequence numbers handed out at a time past the last journaled event.
    public static let reservationBlock: UInt64 = 16384

    /// For a log whose id outlives the process (the controller's fleet
    /// log; after `attachJournal`): sequence numbers are never handed out
    /// twice across restarts, SIGKILL included. STATS samples take numbers
    /// but are not journaled, so the journal alone restarted the numbering
    /// after its last event, and a subscriber resuming from a sample's
    /// number silently skipped the new events given the same numbers (a
    /// probe's finding). `path` holds a bound the numbers handed out stay
    /// below; it is moved a block ahead (fsynced) before they reach it, and
    /// a restart goes on from it.
    public func reserveSequences(path: String) throws(LmctfyError) {
        let file = try SequenceReservation(path: path)
        var failure: Int32 = 0
        state.locked { s in
            s.next = max(s.next, file.saved)
            s.reservation = (file, 0)
            failure = Self.reserve(&s)
        }
        if failure != 0 { throw SequenceReservation.failure("write", path, failure, "Writing the event log's sequence reservation") }
    }

    /// Moves the reservation a block past `next`: 0, or the errno that
    /// stopped it (the next append tries again, half a block before the
    /// numbers could pass the old bound).
    @discardableResult
    private static func reserve(_ s: inout State) -> Int32 {
        guard let r = s.reservation else { return 0 }
        let through = s.next + reservationBlock
        let e = r.file.write(through)
        if e == 0 { s.reservation = (r.file, through) }
        return e
    }

    /// Appends an event with this log's boot id and next sequence number
    /// (the time now, unless it has one); its other fields are kept (an
    /// event made elsewhere, at the controller: the host, the host's own
    /// numbering, the time it happened). A STATS sample is kept apart from
    /// the other events and not journaled.
    @discardableResult
    public func append(_ event: ContainerEvent) -> ContainerEvent {
        let e = state.locked { s in
            var e = event
            e.bootId = bootId
            e.sequence = s.next
            if e.timestampNs == nil { e.timestampNs = WallClock.nanosecondsSinceEpoch() }
            s.next += 1
            // Moved once half the block is used, so that a write that
            // fails (a full disk) is tried again at every append for half a
            // block before a number could reach the bound on disk.
            if let r = s.reservation, s.next + Self.reservationBlock / 2 >= r.through { Self.reserve(&s) }
            s.kindCounts[e.kind ?? .containerEventUnspecified, default: 0] += 1
            if e.kind == .containerEventOom, let c = e.container { s.ooms[c, default: 0] += 1 }
            if e.kind == .containerEventStats {
                let p = PackedEvent(seq: e.seq, bytes: Self.encoded(e))
                _ = s.stats.append(p, size: p.cost, capacity: capacity, maxBytes: maxBytes)
                if let c = e.container, let stats = e.stats { s.latestStats[c] = stats }
            } else {
                if e.kind == .containerEventDestroyed, let c = e.container, !s.latestStats.isEmpty || !s.ooms.isEmpty {
                    // It and what was below it.
                    let gone: (String) -> Bool = { $0 == c || $0.hasPrefix(c == "/" ? "/" : c + "/") }
                    s.latestStats = s.latestStats.filter { !gone($0.key) }
                    s.ooms = s.ooms.filter { !gone($0.key) }
                }
                // One encoding for the ring and the journal.
                let p = PackedEvent(seq: e.seq, bytes: Self.encoded(e))
                if let out = s.events.append(p, size: p.cost, capacity: capacity, maxBytes: maxBytes) { s.evictedThrough = out.seq }
                if !s.older.isEmpty { trimOlder(&s) }
                if s.journal != nil && s.unjournaledLost == 0 {
                    s.unjournaled.append(p)
                    s.unjournaledCost += p.cost
                    writeJournal(&s)
                }
            }
            return e
        }
        changes.bump()
        observer.locked { $0 }?.call()
        return e
    }

    /// Writes what the journal has not taken yet, oldest first, up to the
    /// first write that fails; gives up on it all once it holds more than
    /// the log itself keeps.
    private func writeJournal(_ s: inout State) {
        guard let journal = s.journal, !s.unjournaled.isEmpty else { return }
        var written = 0
        for p in s.unjournaled {
            guard journal.append(serialized: p.bytes, seq: p.seq) else { break }
            written += 1
            s.lastJournaled = p.seq
            s.unjournaledCost -= p.cost
        }
        s.journalErrno = written == s.unjournaled.count ? 0 : journal.lastErrno
        if written == s.unjournaled.count {
            s.unjournaled.removeAll(keepingCapacity: s.unjournaled.count < 64)
            s.unjournaledCost = 0
        } else if written > 0 {
            s.unjournaled.removeFirst(written)
        }
        if s.unjournaled.count > capacity || s.unjournaledCost > (maxBytes ?? Int.max) {
            s.unjournaledLost += UInt64(s.unjournaled.count)
            s.journalEverLost = true
            s.unjournaled = []
            s.unjournaledCost = 0
        }
    }

    /// How far the journal is behind the log (see `flushJournal`).
    public struct JournalState: Sendable, Equatable {
        /// Events waiting in memory for the journal.
        public var behind = 0
        /// Events it will never have since it gave up (0 again once it
        /// has started again).
        public var lost: UInt64 = 0
        /// The errno of its last failed write (0: the last write worked).
        public var errno: Int32 = 0
        /// Everything recorded (but samples) is on disk.
        public var caughtUp: Bool { behind == 0 && lost == 0 }
        public init(behind: Int = 0, lost: UInt64 = 0, errno: Int32 = 0) {
            self.behind = behind
            self.lost = lost
            self.errno = errno
        }
    }

    /// Turns the journal's state, read on a timer, into what a daemon logs
    /// when it changes: a warning when it falls behind, a line when it
    /// has caught up, an error when it gave up.
    public struct JournalReport: Sendable {
        private var last = JournalState()
        /// The journal as the lines name it.
        private let what: String
        public init(journal what: String) { self.what = what }

        public mutating func lines(_ now: JournalState) -> [(error: Bool, text: String)] {
            defer { last = now }
            var out: [(error: Bool, text: String)] = []
            if now.lost > last.lost {
                out.append((true, "\(what) fell \(now.lost) events behind, more than the log keeps in memory (\(String(cString: strerror(now.errno)))): "
                    + "it starts again from what the log keeps once it can be written; a subscriber resuming after a restart gets a gap where they were"))
            } else if now.lost == 0 && last.lost > 0 {
                out.append((false, "\(what) started again from what the log keeps now; the events it let go of meanwhile are not on disk"))
            } else if now.behind > 0 && last.behind == 0 && now.lost == 0 {
                out.append((true, "\(what) cannot be written (\(String(cString: strerror(now.errno)))): the events wait in memory "
                    + "and are written when it can be; a restart before then loses them"))
            } else if now.behind == 0 && last.behind > 0 && now.lost == 0 {
                out.append((false, "\(what) has caught up: every event waiting in memory is written"))
            }
            return out
        }
    }

    /// Writes again what the journal could not take (the disk was full):
    /// a daemon calls it on a timer and before it stops. Cheap when
    /// nothing waits.
    ///
    /// A journal that gave up starts again once the disk takes it (see
    /// `startJournalAgain`), one try at a time: here, or through
    /// `startAgain` (a daemon's pool: it writes the whole log, and the
    /// controller's is up to 256 MiB). It is not tried while the file
    /// system has clearly too little room (a `statvfs`); after a try that
    /// failed all the same, the next is due twice as many calls later, up
    /// to 16.
    @discardableResult
    public func flushJournal(startAgain: ((@escaping @Sendable () -> Void) -> Void)? = nil) -> JournalState {
        let due = state.locked { s -> Bool in
            writeJournal(&s)
            guard s.unjournaledLost > 0, let journal = s.journal, !s.startingAgain else { return false }
            if s.restartWait > 0 {
                s.restartWait -= 1
                return false
            }
            // Less room than the log's events take: refused without a
            // write, so with no back-off either (each refusal doubled it, and
            // a disk full for a minute left the journal another 16 calls
            // after room was made).
            guard EventJournal.hasRoom(journal.directory, bytes: s.events.bytes) else {
                s.journalErrno = ENOSPC
                return false
            }
            s.startingAgain = true  // until the try is over
            return true
        }
        if due {
            if let startAgain { startAgain { self.startJournalAgain() } } else { startJournalAgain() }
        }
        return state.locked { s in JournalState(behind: s.unjournaled.count, lost: s.unjournaledLost, errno: s.journalErrno) }
    }

    /// Starts a journal that gave up again: from what the log still keeps
    /// (and the older boots' events it read when it opened), written to a
    /// new file outside the lock, then what was recorded meanwhile, and the
    /// new file replaces the old. (It took nothing more until a restart: an
    /// agent that restarted a day after a full disk served its subscribers
    /// that boot's events from before the disk filled, and a gap for the
    /// rest.) A restart then finds what the log kept when the journal
    /// started again, and a subscriber resuming from before it gets a gap,
    /// as for events rotated out. Any thread, once `flushJournal` has
    /// found it due (and marked it under way).
    private func startJournalAgain() {
        let restart = state.locked { s -> (directory: String, bodies: [[UInt8]], through: UInt64)? in
            guard s.unjournaledLost > 0, let journal = s.journal else {
                s.startingAgain = false
                return nil
            }
            let kept = s.events.range(after: 0, upTo: .max)
            let bodies = s.older.flatMap { $0.events.map(\.bytes) } + kept.map(\.bytes)
            return (journal.directory, bodies, kept.last?.seq ?? 0)
        }
        guard let restart else { return }
        let prepared = EventJournal.prepare(directory: restart.directory, restart.bodies)
        state.locked { s in
            s.startingAgain = false
            guard let journal = s.journal, s.unjournaledLost > 0 else {
                if prepared.fd >= 0 { EventJournal.discard(prepared.fd, directory: restart.directory) }
                return
            }
            // Events after those written were let go meanwhile (more
            // than the log keeps, recorded while the file was
            // written): the new journal would skip them with nothing
            // to say so. Tried again at the next call.
            guard s.evictedThrough <= restart.through else {
                if prepared.fd >= 0 { EventJournal.discard(prepared.fd, directory: restart.directory) }
                return
            }
            let newer = s.events.range(after: restart.through, upTo: .max)
            if prepared.fd >= 0, journal.adopt(prepared, records: restart.bodies.count, more: newer.map(\.bytes),
                                               last: newer.last?.seq ?? restart.through, floor: s.evictedThrough) {
                s.unjournaledLost = 0
                s.journalErrno = 0
                s.restartBackoff = 0
            } else {
                s.journalErrno = prepared.fd >= 0 ? journal.lastErrno : prepared.errno
                s.restartBackoff = min(16, max(1, s.restartBackoff * 2))
                s.restartWait = s.restartBackoff
            }
        }
    }

    /// `e` serialized. One that cannot be (a required field of its stats
    /// unset) is kept without its stats, and says so, rather than leave its
    /// sequence number a hole no gap explains.
    static func encoded(_ e: ContainerEvent) -> [UInt8] {
        if let bytes = try? e.serializedBytes() { return bytes }
        var bare = e
        bare.stats = nil
        bare.reason = "its statistics could not be encoded"
        return (try? bare.serializedBytes()) ?? []
    }

    /// The newest STATS sample of `container` since it was last destroyed
    /// (nil: none).
    public func latestStats(container: String) -> ContainerStats? {
        state.locked { $0.latestStats[container] }
    }

    /// What the metrics endpoint serves, taken in one go under the lock
    /// (the dictionaries are copied on write, so this is cheap): every
    /// container's newest STATS sample and OOM count, and the events
    /// recorded by kind since the log began.
    public var metricsSnapshot: (stats: [String: ContainerStats], ooms: [String: UInt64], kinds: [ContainerEventKind: UInt64]) {
        state.locked { ($0.latestStats, $0.ooms, $0.kindCounts) }
    }

    /// The last boot before this one and its events as the journal kept
    /// them (oldest first); nil without a journal or before any.
    public var previousBoot: (id: String, events: [ContainerEvent])? {
        state.locked { $0.older.last }.map { ($0.id, Self.decoded($0.events)) }
    }

    /// Every boot before this one whose events the journal kept, oldest
    /// first, each with its events (oldest first).
    public var olderBoots: [(id: String, events: [ContainerEvent])] { olderBoots(from: nil) }

    /// The same from the boot `id` on (nil: all of them; none when no
    /// boot has that id). They are kept serialized (2 x `capacity` events
    /// of an agent's journal held 19 MB as values) and decoded here.
    public func olderBoots(from id: String?) -> [(id: String, events: [ContainerEvent])] {
        older(from: id).map { ($0.id, Self.decoded($0.events)) }
    }

    /// Whether boot `id`, one before this one, ended cleanly with its last
    /// kept event the last it recorded (EventGap.boot_ended).
    public func bootEnded(_ id: String?) -> Bool {
        guard let id else { return false }
        return state.locked { $0.endedBoots.contains(id) }
    }

    /// At a clean stop, once nothing more is recorded: says in the journal
    /// that this boot ended with the last event it journaled, when the
    /// journal has every event of it (none waits for it, it never gave up
    /// on any). A subscriber of this boot carried across the restart is
    /// then told that nothing was lost (`bootEnded`).
    public func markEnded() {
        state.locked { s in
            // (A boot that journaled nothing too: `last` 0, with the boot
            // before it.)
            guard let journal = s.journal, s.unjournaled.isEmpty, s.unjournaledLost == 0,
                  !s.journalEverLost else { return }
            journal.markEnded(boot: bootId, last: s.lastJournaled, previous: s.lastJournaled == 0 ? s.predecessor : nil)
        }
    }

    /// The ids of the boots before this one the journal kept, oldest first.
    public var olderBootIds: [String] { state.locked { $0.older.map(\.id) } }

    private static func decoded(_ events: [PackedEvent]) -> [ContainerEvent] {
        events.compactMap { try? ContainerEvent(serializedBytes: $0.bytes) }
    }

    /// The newest sequence number recorded (0: none yet).
    public var newest: UInt64 { state.locked { $0.next - 1 } }

    /// A resume point is refused when it names an event of this boot
    /// (`bootId` nil or this one) that was never recorded: nobody handled
    /// it, and a subscriber resuming there would silently skip whatever is
    /// recorded up to it. OUT_OF_RANGE. (Subscribe and Notify share it.)
    public func checkResumePoint(bootId asked: String?, after: UInt64) throws(LmctfyError) {
        guard asked == nil || asked == bootId else { return }
        let newest = self.newest
        if after > newest {
            throw LmctfyError(.outOfRange, "after_sequence \(after) is beyond the newest event \(newest) of boot \(bootId)")
        }
    }

    /// The kept events with `after` < sequence <= `upTo`, in order, and the
    /// oldest sequence kept when some after `after` are gone (nil: none are).
    public func range(after: UInt64, upTo: UInt64) -> (events: [ContainerEvent], droppedBefore: UInt64?) {
        state.locked { s in
            let first = s.firstAvailable
            return (s.range(after: after, upTo: upTo), Self.isBeforeFirst(after, first) && after < upTo ? first : nil)
        }
    }

    /// A part of `range`, as kept (serialized: what a replay sends without
    /// decoding an event it does not want, or encoding again one it does,
    /// most of a replay's cost; `EventHub.nextPart`): at most `limit`
    /// events, whether they are all there is up to `upTo`, and the sequence
    /// the next part reads after. When some after `after` are gone
    /// (`droppedBefore`), the part starts at the oldest kept (a STATS sample
    /// older than that, kept apart, is not sent after the gap that says
    /// where the log is whole again).
    func packedRange(after: UInt64, upTo: UInt64, limit: Int) -> (events: [PackedEvent], droppedBefore: UInt64?, complete: Bool, next: UInt64) {
        state.locked { s in
            let first = s.firstAvailable
            let dropped = Self.isBeforeFirst(after, first) && after < upTo ? first : nil
            let after = dropped.map { $0 - 1 } ?? after
            let part = s.packedRange(after: after, upTo: upTo, limit: max(1, limit))
            return (part.events, dropped, part.complete, part.complete ? max(after, upTo) : part.last)
        }
    }

    /// The boots before this one from `id` on (nil: all of them; none when
    /// no boot has that id), oldest first: each one's id and the sequences
    /// of the first and last of its events the journal kept.
    public func olderBootBounds(from id: String?) -> [(id: String, first: UInt64?, last: UInt64?)] {
        older(from: id).map { ($0.id, $0.events.first?.seq, $0.events.last?.seq) }
    }

    /// The boots before this one from `id` on (nil: all; none when no boot
    /// has that id), as kept.
    private func older(from id: String?) -> ArraySlice<(id: String, events: [PackedEvent])> {
        let older = state.locked { $0.older }
        guard let at = id.map({ id in older.firstIndex { $0.id == id } }) ?? older.indices.first else { return [] }
        return older[at...]
    }

    /// At most `limit` of the events the journal kept of the older boot
    /// `id` after `after`, as kept (serialized), oldest first; whether they
    /// are its last; and the sequence the next part reads after.
    func olderBootPackedPart(_ id: String, after: UInt64, limit: Int) -> (events: [PackedEvent], complete: Bool, next: UInt64) {
        let events = state.locked { s in s.older.first { $0.id == id }?.events ?? [] }
        let lo = firstAfter(after, count: events.count) { events[$0].seq }
        let end = min(events.count, lo + max(1, limit))
        let taken = events[lo..<end]
        return (Array(taken), end == events.count, end == events.count ? max(after, events.last?.seq ?? 0) : taken.last?.seq ?? after)
    }

    /// Whether events after `after` are gone: the oldest kept, `first`, is
    /// not the one right after it. (`after + 1` overflowed, a trap, for a
    /// peer's after_sequence of 2^64-1.)
    static func isBeforeFirst(_ after: UInt64, _ first: UInt64) -> Bool { first > 0 && after < first - 1 }

    /// Where a resume from `after` of boot `asked` reads the log from (with
    /// `range`, a part at a time), and the gap to send first when events
    /// after it may be missing: another boot id, or history already dropped.
    public func resumePoint(bootId asked: String?, after: UInt64) -> (gap: EventGap?, from: UInt64) {
        state.locked { s in
            guard let gap = resumeGap(s, asked: asked, after: after) else { return (nil, after) }
            return (gap, s.firstAvailable - 1)
        }
    }

    /// Events after `after` (of this boot) that match, and a gap when some
    /// may be missing: another boot id, or history already dropped.
    public func since(bootId asked: String?, after: UInt64, matching: (ContainerEvent) -> Bool) -> ([ContainerEvent], EventGap?) {
        state.locked { s in
            let gap = resumeGap(s, asked: asked, after: after)
            return (s.range(after: gap == nil ? after : 0, upTo: s.next).filter(matching), gap)
        }
    }

    /// The gap a resume from `after` of boot `asked` starts with, if events
    /// after it may be missing (another boot id, or history dropped).
    private func resumeGap(_ s: State, asked: String?, after: UInt64) -> EventGap? {
        let first = s.firstAvailable
        guard asked != bootId || Self.isBeforeFirst(after, first) else { return nil }
        return EventGap(requestedBootId: asked, afterSequence: after, bootId: bootId, firstSequence: first)
    }
}

/// The index of the first of `count` items in sequence order whose
/// sequence (`seq` of its index) is past `after` (binary search; `count`
/// when none is).
private func firstAfter(_ after: UInt64, count: Int, _ seq: (Int) -> UInt64) -> Int {
    var lo = 0, hi = count
    while lo < hi {
        let mid = (lo + hi) / 2
        if seq(mid) <= after { lo = mid + 1 } else { hi = mid }
    }
    return lo
}

/// What a Ring keeps: an item with its sequence number.
protocol Sequenced: Sendable {
    var seq: UInt64 { get }
}

extension ContainerEvent: Sequenced {
    var seq: UInt64 { sequence ?? 0 }
}

extension String {
    func leftPadded(_ width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}

/// A closure held by reference (see EventLog.observer).
final class CallbackBox: Sendable {
    let call: @Sendable () -> Void
    init(_ call: @escaping @Sendable () -> Void) { self.call = call }
}
