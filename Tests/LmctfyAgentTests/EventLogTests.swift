// The agent's event history on its own: sequence numbers, the bounded
// replay ring (by count, and by bytes for a log with a budget) and the gap
// a resume from dropped history reports.
import Glibc
@testable import LmctfyAgent
@testable import LmctfyEvents
import LmctfyTestSupport
import LmctfyProto
import LmctfySystem
import Testing

@Suite struct EventLogTests {
    @Test func keepsTheLatestCapacityEventsInOrderAcrossWrapArounds() {
        let log = EventLog(capacity: 3, bootId: "boot")
        for i in 1...7 { log.record(container: "/c\(i)", kind: .containerEventCreated) }
        // 7 events in a ring of 3: 5, 6, 7 are kept, oldest first.
        let (all, gap) = log.since(bootId: "boot", after: 0) { _ in true }
        #expect(all.map(\.sequence) == [5, 6, 7])
        #expect(all.map(\.container) == ["/c5", "/c6", "/c7"])
        #expect(gap?.firstSequence == 5, "a resume from before the oldest kept event is a gap")
        let (tail, noGap) = log.since(bootId: "boot", after: 5) { _ in true }
        #expect(tail.map(\.sequence) == [6, 7])
        #expect(noGap == nil)
        // Exactly at the edge: everything after 4 is still there.
        #expect(log.since(bootId: "boot", after: 4) { _ in true }.1 == nil)
        #expect(log.since(bootId: "boot", after: 7) { _ in true }.0.isEmpty)
        // A filter applies across the ring's wrap point.
        let odd = log.since(bootId: "boot", after: 0) { ($0.sequence ?? 0) % 2 == 1 }.0
        #expect(odd.map(\.sequence) == [5, 7])
    }

    /// A peer's resume point is any UInt64: the largest trapped on
    /// `after + 1` (the agent stopped, a probe's Notify).
    @Test func theLargestResumePointIsNoOverflow() {
        let log = EventLog(capacity: 3, bootId: "boot")
        for i in 1...5 { log.record(container: "/c\(i)", kind: .containerEventCreated) }
        let (events, gap) = log.since(bootId: "boot", after: .max) { _ in true }
        #expect(events.isEmpty && gap == nil)
        #expect(log.range(after: .max, upTo: .max).droppedBefore == nil)
        #expect(log.since(bootId: "other", after: .max) { _ in true }.1?.afterSequence == .max)
    }

    @Test func anotherBootIdIsAGapWithEverythingKept() {
        let log = EventLog(capacity: 4, bootId: "boot")
        for _ in 1...2 { log.record(container: "/c", kind: .containerEventDestroyed) }
        let (events, gap) = log.since(bootId: "earlier", after: 1) { _ in true }
        #expect(events.map(\.sequence) == [1, 2])
        #expect(gap?.bootId == "boot" && gap?.requestedBootId == "earlier")
    }

    @Test func zeroCapacityKeepsNothingButStillNumbers() {
        let log = EventLog(capacity: 0, bootId: "boot")
        #expect(log.record(container: "/a", kind: .containerEventCreated).sequence == 1)
        #expect(log.record(container: "/a", kind: .containerEventCreated).sequence == 2)
        let (events, gap) = log.since(bootId: "boot", after: 0) { _ in true }
        #expect(events.isEmpty)
        #expect(gap?.firstSequence == 3)
    }

    @Test func theJournalKeepsTwoFilesOfCapacityAndStopsAtATornRecord() throws {
        let dir = "/tmp/lmctfy-eventjournal-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { _ = removeTree(dir) }
        let journal = try EventJournal(directory: dir, capacity: 3)
        for i in 1...7 {
            #expect(journal.append(ContainerEvent(bootId: "b", sequence: UInt64(i), container: "/c", kind: .containerEventCreated)))
        }
        // 1-3 rotated out with 4-6's rotation: previous 4,5,6, current 7.
        #expect(EventJournal.stored(directory: dir).map(\.sequence) == [4, 5, 6, 7])
        // The agent killed mid-write: a record's length without its body.
        let fd = open(journal.currentPath, O_WRONLY | O_APPEND)
        _ = [UInt8]([0, 0, 0, 40, 1, 2]).withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
        #expect(EventJournal.stored(directory: dir).map(\.sequence) == [4, 5, 6, 7], "a torn last record ends the reading")
        // A new journal on the same files (the next agent) reads the same.
        let next = try EventJournal(directory: dir, capacity: 3)
        #expect(next.opened.compactMap { try? ContainerEvent(serializedBytes: $0) }.map(\.sequence) == [4, 5, 6, 7])
    }

    /// Reading a journal beside its daemon touches nothing: a start-again
    /// under way is adopted after it (a reader that opened the journal
    /// removed the daemon's new file, and the start-again failed each time
    /// it was read), and a start-again a crash cut short after its rename
    /// is read as the next daemon will read it, without `previous`.
    @Test func readingAJournalBesideItsDaemonLeavesItAlone() throws {
        let dir = "/tmp/lmctfy-eventjournal-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { _ = removeTree(dir) }
        let journal = try EventJournal(directory: dir, capacity: 3)
        func event(_ seq: UInt64) -> ContainerEvent {
            ContainerEvent(bootId: "b", sequence: seq, container: "/c", kind: .containerEventCreated)
        }
        for i in 1...5 { #expect(journal.append(event(UInt64(i)))) }
        let bodies = try (4...5).map { try event($0).serializedBytes() }
        let prepared = EventJournal.prepare(directory: dir, bodies)
        #expect(prepared.fd >= 0)
        #expect(EventJournal.stored(directory: dir).map(\.sequence) == [1, 2, 3, 4, 5])
        #expect(journal.adopt(prepared, records: 2, more: [try event(6).serializedBytes()], last: 6, floor: 3))
        #expect(EventJournal.stored(directory: dir).map(\.sequence) == [4, 5, 6])
        // Cut short after the rename: the mark, no new file, `previous` left.
        #expect(journal.append(event(7)))  // rotates: previous 4-6, current 7
        #expect(journal.append(event(8)))
        let mark = open(dir + "/previous.superseded", O_WRONLY | O_CREAT, 0o600)
        close(mark)
        #expect(EventJournal.stored(directory: dir).map(\.sequence) == [7, 8])
        #expect(access(dir + "/previous", F_OK) == 0, "the reader removed nothing")
        let next = try EventJournal(directory: dir, capacity: 3)
        #expect(next.opened.compactMap { try? ContainerEvent(serializedBytes: $0) }.map(\.sequence) == [7, 8])
    }

    /// A log with a byte budget (the controller's fleet log, whose events
    /// come from peers: 65,536 of 60 KiB held 3.75 GiB) keeps the newest
    /// events that fit it, in memory and on disk, and a resume from before
    /// them is a gap; one event larger than the whole budget is still kept.
    @Test func aByteBudgetKeepsTheNewestEventsThatFitInMemoryAndOnDisk() throws {
        let dir = "/tmp/lmctfy-eventjournal-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { _ = removeTree(dir) }
        let budget = 64 << 10
        func big(_ i: Int) -> ContainerEvent {
            var e = ContainerEvent(container: "/c\(i)", kind: .containerEventCreated)
            e.reason = String(repeating: "x", count: 10_000)
            return e
        }
        let log = EventLog(capacity: 1000, bootId: "fleet", maxBytes: budget)
        try log.attachJournal(directory: dir)
        for i in 1...30 { log.append(big(i)) }
        let (kept, gap) = log.since(bootId: "fleet", after: 0) { _ in true }
        // ~10 KB each: the newest six fit 64 KiB, the 1000 of `capacity` would not.
        #expect(kept.map(\.sequence) == Array(25...30).map { UInt64($0) })
        #expect(kept.last?.container == "/c30" && kept.last?.reason?.count == 10_000)
        #expect(gap?.firstSequence == 25)
        #expect(log.since(bootId: "fleet", after: 24) { _ in true }.1 == nil)
        // On disk: two files of at most half the budget each (plus a record).
        var onDisk = 0
        for f in ["current", "previous"] {
            var st = stat()
            if stat(dir + "/" + f, &st) == 0 { onDisk += Int(st.st_size) }
        }
        #expect(onDisk > budget / 2 && onDisk <= budget + 10_100, "\(onDisk) bytes on disk")
        // The next start reads back no more than the budget, newest first kept.
        let again = EventLog(capacity: 1000, bootId: "fleet", maxBytes: budget)
        try again.attachJournal(directory: dir)
        let reread = again.since(bootId: "fleet", after: 0) { _ in true }.0.compactMap(\.sequence)
        #expect(reread.last == 30 && reread.count <= 6 && reread == Array(reread.first!...30), "\(reread)")
        // Small events after big ones push out only what they need.
        for i in 31...40 { again.append(ContainerEvent(container: "/s\(i)", kind: .containerEventCreated)) }
        #expect(again.since(bootId: "fleet", after: 0) { _ in true }.0.compactMap(\.sequence).suffix(11) == Array(30...40).map { UInt64($0) })

        let tiny = EventLog(capacity: 10, bootId: "t", maxBytes: 1000)
        tiny.append(big(1))
        tiny.append(big(2))
        #expect(tiny.since(bootId: "t", after: 0) { _ in true }.0.map(\.sequence) == [2])
    }

    /// The ring lets the oldest go from its front and cuts the array only
    /// now and then: what it keeps stays right across many of those cuts.
    @Test func theRingStaysInOrderAcrossManyCuts() {
        let log = EventLog(capacity: 100, bootId: "boot")
        for i in 1...1_000 {
            log.record(container: "/c\(i)", kind: .containerEventCreated)
            if i % 37 == 0 {
                let kept = log.since(bootId: "boot", after: 0) { _ in true }.0.compactMap(\.sequence)
                #expect(kept == Array(UInt64(max(1, i - 99))...UInt64(i)), "after \(i)")
            }
        }
        #expect(log.range(after: 950, upTo: 960).events.compactMap(\.sequence) == Array(951...960).map { UInt64($0) })
    }

    /// The journal writes no record its reader would refuse, and its reader
    /// passes over a whole one above the limit (an earlier version wrote
    /// them) instead of stopping there and losing every record after it.
    @Test func theJournalsWriterAndReaderAgreeOnTheLargestRecord() throws {
        let dir = "/tmp/lmctfy-eventjournal-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { _ = removeTree(dir) }
        let journal = try EventJournal(directory: dir, capacity: 10)
        func event(_ seq: UInt64, _ container: String) -> ContainerEvent {
            ContainerEvent(bootId: "b", sequence: seq, container: container, kind: .containerEventCreated)
        }
        #expect(journal.append(event(1, "/a")))
        #expect(!journal.append(event(2, "/" + String(repeating: "x", count: EventJournal.maxRecordBytes))))
        // As an earlier version wrote it: length and body.
        let body = try event(3, "/" + String(repeating: "y", count: EventJournal.maxRecordBytes)).serializedBytes()
        let n = UInt32(body.count)
        let fd = open(journal.currentPath, O_WRONLY | O_APPEND)
        _ = ([UInt8(n >> 24), UInt8((n >> 16) & 0xff), UInt8((n >> 8) & 0xff), UInt8(n & 0xff)] + body).withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
        #expect(journal.append(event(4, "/d")))
        #expect(EventJournal.stored(directory: dir).map(\.sequence) == [1, 4])
    }

    /// A log whose id outlives the process (the fleet log) never gives a
    /// sequence number twice: STATS samples take numbers and are not
    /// journaled, so after a restart (SIGKILL: nothing flushed but what
    /// was written) the journal alone started again after its last event,
    /// and a subscriber at a sample's number skipped the new events.
    @Test func aLastingLogNeverGivesANumberTwiceAcrossRestarts() throws {
        let dir = "/tmp/lmctfy-eventjournal-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try Sys.mkdir(dir, mode: 0o700)
        defer { _ = removeTree(dir) }
        func open() throws -> EventLog {
            let log = EventLog(capacity: 100, bootId: "fleet")
            try log.attachJournal(directory: dir + "/j")
            try log.reserveSequences(path: dir + "/sequence")
            return log
        }
        let first = try open()
        first.record(container: "/a", kind: .containerEventCreated)  // 1
        var last: UInt64 = 0
        for _ in 0..<5 { last = first.recordStats(container: "/a", ContainerStats()).sequence ?? 0 }
        #expect(last == 6)
        // The process dies here; the next one goes on past every number given.
        let second = try open()
        let created = second.record(container: "/b", kind: .containerEventCreated)
        #expect((created.sequence ?? 0) > last, "\(String(describing: created.sequence)) was given before")
        // A subscriber at the last sample's number gets the new event.
        #expect(second.range(after: last, upTo: second.newest).events.map(\.container) == ["/b"])
        // And the journaled event keeps its number.
        #expect(second.range(after: 0, upTo: 1).events.map(\.container) == ["/a"])
        // Past a block, the bound moves ahead before the numbers reach it.
        let third = try open()
        let start = third.record(container: "/c", kind: .containerEventCreated).sequence ?? 0
        for _ in 0..<(EventLog.reservationBlock + 10) { _ = third.recordStats(container: "/c", ContainerStats()) }
        let bound = SequenceReservation.parse(try Sys.readBytes(dir + "/sequence")).0
        #expect(bound > start + EventLog.reservationBlock + 10)
    }

    /// A lasting log (the fleet log) restarted tells a subscriber from the
    /// start of a gap only for events that were let go: every number below
    /// the oldest kept was taken as gone, so the numbers reserved before a
    /// restart and never used, or STATS samples' numbers, were a gap to a
    /// subscriber from 0 after the next restart (nothing was missing).
    @Test func aLastingLogReportsAGapOnlyForEventsLetGo() throws {
        let dir = "/tmp/lmctfy-eventjournal-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try Sys.mkdir(dir, mode: 0o700)
        defer { _ = removeTree(dir) }
        func open(_ sub: String) throws -> EventLog {
            let log = EventLog(capacity: 10, bootId: "fleet")
            try log.attachJournal(directory: dir + "/" + sub)
            try log.reserveSequences(path: dir + "/" + sub + ".sequence")
            return log
        }
        // Samples first, then an event; a restart with none; then one.
        let a = try open("a")
        for _ in 0..<3 { a.recordStats(container: "/s", ContainerStats()) }
        a.record(container: "/a", kind: .containerEventCreated)
        #expect(try open("a").resumePoint(bootId: "fleet", after: 0).gap == nil)
        _ = try open("b")  // a boot with no event
        let b = try open("b")
        #expect(b.record(container: "/b", kind: .containerEventCreated).sequence == 1 + EventLog.reservationBlock)
        let b2 = try open("b")
        #expect(b2.resumePoint(bootId: "fleet", after: 0).gap == nil)
        #expect(b2.since(bootId: "fleet", after: 0) { _ in true }.0.map(\.container) == ["/b"])
        // Rotated out (a journal of 10 to 20 events): a gap, from the
        // oldest kept, also after a restart whose reserved numbers were
        // never used.
        let c = try open("c")
        for i in 1...35 { c.record(container: "/c\(i)", kind: .containerEventCreated) }
        let c2 = try open("c")
        let (gap, from) = c2.resumePoint(bootId: "fleet", after: 0)
        let oldest = c2.since(bootId: "fleet", after: 0) { _ in true }.0.first?.sequence ?? 0
        #expect(oldest > 1 && gap?.firstSequence == oldest && from == oldest - 1, "\(String(describing: gap)) \(oldest)")
        c2.record(container: "/d", kind: .containerEventCreated)
        let c3 = try open("c")
        #expect(c3.resumePoint(bootId: "fleet", after: 0).gap?.firstSequence == c3.since(bootId: "fleet", after: 0) { _ in true }.0.first?.sequence)
        #expect(c3.resumePoint(bootId: "fleet", after: 35).gap == nil)
        #expect(c3.resumePoint(bootId: "fleet", after: oldest - 2).gap != nil)
        // Read by a log keeping more than the journal: the gap starts at
        // the oldest the journal kept (the floor a rotation moved).
        let wide = EventLog(capacity: 100, bootId: "fleet")
        try wide.attachJournal(directory: dir + "/c")
        let onDisk = EventJournal.stored(directory: dir + "/c").compactMap(\.sequence)
        #expect(onDisk.count < 36 && wide.resumePoint(bootId: "fleet", after: 0).gap?.firstSequence == onDisk.first)
        // A journal without its floor (an earlier version's) takes every
        // number below the oldest kept as gone, as before.
        unlink(dir + "/b/floor")
        #expect(try open("b").resumePoint(bootId: "fleet", after: 0).gap != nil)
    }

    /// Damage in the middle of the journal (a length no record can have, a
    /// record that does not decode) is said, and the file kept aside: it
    /// was cut off at the damage as a torn last write is, silently (a
    /// probe: half the journal gone, nothing logged). A torn last write is
    /// still cut off without a word.
    @Test func damageInTheJournalIsSaidAndKeptAside() throws {
        let dir = "/tmp/lmctfy-eventjournal-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { _ = removeTree(dir) }
        func fresh() throws -> [UInt8] {
            _ = removeTree(dir)
            let j = try EventJournal(directory: dir, capacity: 100)
            for i in 1...10 { #expect(j.append(ContainerEvent(bootId: "b", sequence: UInt64(i), container: "/c\(i)"))) }
            return try Sys.readBytes(dir + "/current")
        }
        // Where record 5 starts (each: a length with the top bit set, 4
        // bytes of checksum, the body).
        func offset(_ bytes: [UInt8], record: Int) -> Int {
            var i = 0
            for _ in 1..<record { i += 8 + (Int(bytes[i] & 0x7f) << 24 | Int(bytes[i + 1]) << 16 | Int(bytes[i + 2]) << 8 | Int(bytes[i + 3])) }
            return i
        }
        var bytes = try fresh()
        bytes[offset(bytes, record: 5)] = 0x7f
        try Sys.writeFileAtomically(dir + "/current", bytes)
        var j = try EventJournal(directory: dir, capacity: 100)
        #expect(j.opened.count == 4)
        #expect(j.damage?.contains("more than any record") == true, "\(j.damage ?? "nothing said")")
        var aside = try Sys.subdirectoriesAndFiles(dir).filter { $0.hasPrefix("current.damaged-") }
        #expect(aside.count == 1 && (try? Sys.readBytes(dir + "/" + (aside.first ?? ""))) == bytes, "\(aside)")

        bytes = try fresh()
        let at = offset(bytes, record: 5) + 8
        for k in at..<(at + 6) { bytes[k] = 0xff }
        try Sys.writeFileAtomically(dir + "/current", bytes)
        j = try EventJournal(directory: dir, capacity: 100)
        #expect(j.opened.count == 4 && j.damage?.contains("checksum does not match") == true, "\(j.damage ?? "nothing said")")

        // One byte of a container's name changed: the record still
        // decodes (it was read as an event of "/d5"); its checksum fails.
        bytes = try fresh()
        let record5 = offset(bytes, record: 5), record6 = offset(bytes, record: 6)
        let name = try #require(bytes[record5..<record6].lastIndex(of: UInt8(ascii: "5")))
        bytes[name] = UInt8(ascii: "6")
        try Sys.writeFileAtomically(dir + "/current", bytes)
        j = try EventJournal(directory: dir, capacity: 100)
        #expect(j.opened.count == 4 && j.damage?.contains("checksum does not match") == true, "\(j.damage ?? "nothing said")")
        #expect(EventJournal.stored(directory: dir).map(\.container) == (1...4).map { "/c\($0)" })

        // A record as earlier versions wrote it (no checksum) that does not
        // decode is damage too; whole ones before it are read.
        _ = removeTree(dir)
        try Sys.mkdir(dir, mode: 0o700)
        try journalFile(dir, "current", [("b", 1), ("b", 2)])
        var old = try Sys.readBytes(dir + "/current")
        old += [0, 0, 0, 3, 0xff, 0xff, 0xff, 0, 0, 0, 1, 8]
        try Sys.writeFileAtomically(dir + "/current", old)
        j = try EventJournal(directory: dir, capacity: 100)
        #expect(j.opened.count == 2 && j.damage?.contains("does not decode") == true, "\(j.damage ?? "nothing said")")

        // Zeros where a crash left blocks unwritten: not read as events.
        bytes = try fresh()
        try Sys.writeFileAtomically(dir + "/current", bytes + [UInt8](repeating: 0, count: 64))
        j = try EventJournal(directory: dir, capacity: 100)
        #expect(j.opened.count == 10 && j.damage?.contains("0 bytes") == true, "\(j.damage ?? "nothing said")")

        bytes = try fresh()
        try Sys.writeFileAtomically(dir + "/current", Array(bytes.dropLast(3)))
        j = try EventJournal(directory: dir, capacity: 100)
        #expect(j.opened.count == 9 && j.damage == nil, "a torn last write: \(j.damage ?? "")")
        aside = try Sys.subdirectoriesAndFiles(dir).filter { $0.hasPrefix("current.damaged-") }
        #expect(aside.isEmpty)
    }

    @Test func aLogAttachedToAJournalServesTheBootBeforeIt() throws {
        let dir = "/tmp/lmctfy-eventjournal-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { _ = removeTree(dir) }
        let old = EventLog(capacity: 10, bootId: "old")
        try old.attachJournal(directory: dir)
        old.record(container: "/a", kind: .containerEventCreated)
        old.record(container: "/a", kind: .containerEventDestroyed)
        let new = EventLog(capacity: 10, bootId: "new")
        try new.attachJournal(directory: dir)
        #expect(new.previousBoot?.id == "old")
        #expect(new.previousBoot?.events.map(\.sequence) == [1, 2])
        new.record(container: "/b", kind: .containerEventCreated)
        // A third boot sees the second as the one before it.
        let third = EventLog(capacity: 10, bootId: "third")
        try third.attachJournal(directory: dir)
        #expect(third.previousBoot?.id == "new" && third.previousBoot?.events.map(\.container) == ["/b"])
    }

    /// The observer is called once per event however many events there
    /// were. Its closure used to be rewrapped in two thunks by every call
    /// (read back through a generic inout), so each call walked a chain two
    /// frames longer than the last: 200,000 events overflowed the stack.
    @Test func theObserverStaysOneCallAfterManyEvents() {
        let log = EventLog(capacity: 16, bootId: "b")
        let calls = Mutexed(0)
        log.onRecord { calls.locked { $0 += 1 } }
        for i in 0..<200_000 {
            if i % 2 == 0 {
                log.record(container: "/a", kind: .containerEventFreezer, frozen: true)
            } else {
                log.recordStats(container: "/a", ContainerStats())
            }
        }
        #expect(calls.locked { $0 } == 200_000)
        #expect(log.newest == 200_000)
        // Stats samples are kept apart: the other events were not pushed out by them.
        let (kept, dropped) = log.range(after: 199_968, upTo: 200_000)
        #expect(kept.count == 32 && dropped == nil)
    }

    /// Samples do not count as lost: a resume from before the oldest kept
    /// sample but after the last event pushed out has no gap.
    @Test func statsSamplesKeptApartAreNoGap() {
        let log = EventLog(capacity: 2, bootId: "b")
        log.record(container: "/a", kind: .containerEventCreated)  // 1
        for _ in 0..<5 { log.recordStats(container: "/a", ContainerStats()) }  // 2...6
        log.record(container: "/a", kind: .containerEventDestroyed)  // 7
        let (events, dropped) = log.range(after: 0, upTo: 7)
        #expect(dropped == nil, "nothing but superseded samples is gone")
        #expect(events.compactMap(\.sequence) == [1, 5, 6, 7], "the two events and the two newest samples, in order")
        log.record(container: "/b", kind: .containerEventCreated)  // 8: pushes 1 out
        #expect(log.range(after: 0, upTo: 8).droppedBefore == 2)
    }

    /// A resume from before events that were pushed out: the gap says the
    /// log is complete from the first sequence after the newest one pushed
    /// out, not from the oldest item kept, which can be a STATS sample
    /// older than them (kept apart). It said "continuing from" that sample,
    /// and a subscriber filtering CREATED silently missed the CREATED
    /// events between it and what was kept. Nothing older than the gap's
    /// point follows the gap.
    @Test func aSubscribersGapStartsWhereNothingIsMissing() throws {
        let log = EventLog(capacity: 3, bootId: "b")
        log.recordStats(container: "/a", ContainerStats())  // 1, kept apart
        for i in 2...7 { log.record(container: "/c\(i)", kind: .containerEventCreated) }  // 2-4 pushed out
        let hub = EventHub(log: log)
        for (boot, after) in [("b", UInt64(0)), ("b", 1), ("earlier", 5)] {
            let first = try hub.replayed(EventHub.Key(conn: 1, stream: UInt32(after) + 1), SubscribeRequest(bootId: boot, afterSequence: after))
            let gap = try #require(first.first?.gap, "\(boot):\(after)")
            #expect(gap.firstSequence == 5, "\(boot):\(after): \(gap)")
            #expect(first.compactMap(\.event?.sequence) == [5, 6, 7], "\(boot):\(after)")
        }
        // After the newest pushed out: no gap, and the sample is not older.
        let tail = try hub.replayed(EventHub.Key(conn: 2, stream: 1), SubscribeRequest(bootId: "b", afterSequence: 4))
        #expect(tail.allSatisfy { $0.gap == nil })
        #expect(tail.compactMap(\.event?.sequence) == [5, 6, 7])
    }

    /// Samples are kept serialized (a `ContainerStats` value is a few KB
    /// inline): what a replay gives back is the event recorded, whole.
    @Test func aReplayedSampleIsTheSampleRecorded() throws {
        let log = EventLog(capacity: 8, bootId: "b")
        let stats = try ContainerStats(textFormat: "cpu { usage { total: 123456789 per_cpu: 1 per_cpu: 2 } } memory { usage: 4096 working_set: 2048 }")
        let recorded = log.recordStats(container: "/a/b", stats)
        let (kept, _) = log.range(after: 0, upTo: 1)
        #expect(kept == [recorded])
        #expect(kept.first?.stats?.cpu?.usage?.total == 123_456_789 && kept.first?.stats?.memory?.workingSet == 2048)
        #expect(kept.first?.timestampNs != nil && kept.first?.bootId == "b" && kept.first?.container == "/a/b")
        #expect(log.latestStats(container: "/a/b") == stats)
    }
    /// A journal started again after it gave up repeats the older boots'
    /// events it read when it opened, and a crash between its new file's
    /// rename and the old `previous` going leaves both files: each older
    /// boot's events are read once, in order (a repeated run made the
    /// boot's events go backwards, and a replay of it found nothing).
    @Test func olderBootsRepeatedAcrossTheJournalsFilesAreReadOnce() throws {
        let dir = "/tmp/lmctfy-test-journal-repeat-\(getpid())"
        defer { try? Sys.removeTree(dir) }
        try Sys.mkdir(dir, mode: 0o700)
        try journalFile(dir, "previous", [("A", 1), ("A", 2), ("A", 3), ("b", 1), ("b", 2)])
        try journalFile(dir, "current", [("A", 1), ("A", 2), ("A", 3), ("b", 2), ("b", 3)])
        let log = EventLog(capacity: 16, bootId: "c")
        try log.attachJournal(directory: dir)
        #expect(log.olderBoots.map { "\($0.id):\($0.events.compactMap(\.sequence))" } == ["A:[1, 2, 3]", "b:[1, 2, 3]"])
    }

    /// A journal started again replaces `current` with its new file, then
    /// `previous` goes. Killed between the two, `previous` held events the
    /// new file had let go of, and they were read before it as one boot:
    /// a hole in the boot (A:3, then A:7) that no subscriber was told of.
    /// A mark made before the rename says how far it went: finished when
    /// the new file is in place, undone when it is not.
    @Test func aJournalRestartCutShortByACrashIsFinishedOrUndone() throws {
        let dir = "/tmp/lmctfy-test-journal-crash-\(getpid())"
        defer { try? Sys.removeTree(dir) }
        try Sys.mkdir(dir, mode: 0o700)
        func boots() throws -> [String] {
            let log = EventLog(capacity: 16, bootId: "c")
            try log.attachJournal(directory: dir)
            return log.olderBoots.map { "\($0.id):\($0.events.compactMap(\.sequence))" }
        }
        // Renamed, `previous` not gone yet.
        try journalFile(dir, "previous", [("A", 1), ("A", 2), ("A", 3)])
        try journalFile(dir, "current", [("A", 7), ("A", 8)])
        try journalFile(dir, "previous.superseded", [])
        #expect(try boots() == ["A:[7, 8]"])
        #expect(!Sys.exists(dir + "/previous") && !Sys.exists(dir + "/previous.superseded"))
        // Not renamed yet: the old journal stands, the new file goes.
        try journalFile(dir, "previous", [("A", 1), ("A", 2), ("A", 3)])
        try journalFile(dir, "current", [("A", 4), ("A", 5)])
        try journalFile(dir, "current.new", [("A", 7), ("A", 8)])
        try journalFile(dir, "previous.superseded", [])
        #expect(try boots() == ["A:[1, 2, 3, 4, 5]"])
        #expect(!Sys.exists(dir + "/current.new") && !Sys.exists(dir + "/previous.superseded"))
        // Killed while the new file was written: it goes (it stayed, up to
        // a whole log's size, on a disk that had just been full).
        try journalFile(dir, "current.new", [("A", 7)])
        #expect(try boots() == ["A:[1, 2, 3, 4, 5]"])
        #expect(!Sys.exists(dir + "/current.new"))
    }
}

/// Writes journal file `name` in `dir`: events of (boot, sequence).
private func journalFile(_ dir: String, _ name: String, _ events: [(String, UInt64)]) throws {
    var bytes: [UInt8] = []
    for (boot, seq) in events {
        var e = ContainerEvent(container: "/x", kind: .containerEventCreated)
        e.bootId = boot
        e.sequence = seq
        let body = try e.serializedBytes()
        let n = UInt32(body.count)
        bytes += [UInt8(n >> 24), UInt8((n >> 16) & 0xff), UInt8((n >> 8) & 0xff), UInt8(n & 0xff)]
        bytes += body
    }
    try Sys.writeFileAtomically(dir + "/" + name, bytes)
}
