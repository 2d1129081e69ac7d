// A full state_dir (ENOSPC on a real tmpfs that a ballast file fills): the
// snapshot store keeps what it cannot write and writes it when there is
// room, never replays an older snapshot over a newer file, starts on a full
// disk, and its flusher backs off and stops; the request journal refuses a
// new call but lets a destroy through; the event journal cuts off a record
// the disk cut short. Then the agent binary on a full state_dir: creates
// refused with nothing made, destroys done, a stop that ends, a start that
// serves.
import Glibc
import Lmctfy
@testable import LmctfyAgent
@testable import LmctfyEvents
import LmctfyImages
import LmctfyProto
import LmctfyRPC
import LmctfySystem
import LmctfyTestSupport
import Testing

private func snap(_ name: String, limit: Int64) -> ContainerSnapshot {
    ContainerSnapshot(formatVersion: 1, name: name, spec: ContainerSpec(memory: MemorySpec(limit: limit)), createdNs: 1, bootId: "b")
}

private func limit(_ dir: String, _ name: String) -> Int64? {
    SnapshotStore.decodeFile(dir + "/" + SnapshotStore.fileName(name))?.spec?.memory?.limit
}

@Suite(.enabled(if: getuid() == 0, "mounting a tmpfs needs root"), .serialized)
struct FullDiskStoreTests {
    @Test func aFullDiskKeepsSnapshotChangesUntilItHasRoom() throws {
        try FullDisk.around("keep") { disk in
            let dir = disk.path + "/snapshots"
            let store = SnapshotStore(directory: dir)
            try store.open()
            try store.write(snap("/a", limit: 1 << 20))
            #expect(store.flush() == 1)
            try disk.fill()
            #expect(throws: LmctfyError.self) { try store.write(snap("/a", limit: 2 << 20)) }
            do {
                try store.write(snap("/b", limit: 3 << 20))
                Issue.record("a write to a full disk succeeded")
            } catch let e as LmctfyError {
                #expect(e.code == .resourceExhausted && e.message.contains("kept in memory"), "\(e)")
            }
            #expect(throws: SystemError.self) { try store.pass() }
            #expect(store.unwritten == 2 && store.flushCosts.locked { $0.failed } == 1)
            #expect(limit(dir, "/a") == 1 << 20, "the old file stands")
            // What the store holds now (an export reads it) is the newer.
            #expect(store.current("/a")?.spec?.memory?.limit == 2 << 20 && store.current("/b")?.spec?.memory?.limit == 3 << 20)
            #expect(store.load("/a")?.spec?.memory?.limit == 1 << 20)
            // Said in the store's state, not only in the error's words (an
            // export serves the snapshot when it is so).
            #expect(store.keptInMemoryOnly("/a") && store.keptInMemoryOnly("/b"))
            let files = try Sys.subdirectoriesAndFiles(dir)
            #expect(!files.contains { $0.hasPrefix(".tmp-") }, "a failed pass leaves no temp file: \(files)")
            disk.free()
            #expect(store.flush() == 2)
            #expect(limit(dir, "/a") == 2 << 20 && limit(dir, "/b") == 3 << 20)
            #expect(!store.keptInMemoryOnly("/a") && !store.keptInMemoryOnly("/b"))
            try store.write(snap("/a", limit: 4 << 20))
            #expect(!store.keptInMemoryOnly("/a"), "a logged write is not in memory only")
            #expect(store.flush() == 1)
            // What a restarted agent sees.
            let again = SnapshotStore(directory: dir)
            try again.open()
            #expect(again.loadAll().snapshots.mapValues { $0.spec?.memory?.limit } == ["/a": 4 << 20, "/b": 3 << 20])
        }
    }

    /// A pass that failed leaves its records in the log it covered; the
    /// next pass that succeeds writes newer ones from the other log. A
    /// replay of those old records (an agent killed then) put the older
    /// snapshot back over the newer file.
    @Test func aPassThatFailedLeavesNoOlderSnapshotToReplay() throws {
        try FullDisk.around("stale") { disk in
            let dir = disk.path + "/snapshots"
            let store = SnapshotStore(directory: dir)
            try store.open()
            try store.write(snap("/x", limit: 1 << 20))  // in log.a, which has room
            try disk.fill()
            #expect(throws: SystemError.self) { try store.pass() }
            disk.free()
            try store.write(snap("/x", limit: 2 << 20))  // in log.b
            #expect(store.flush() == 1)
            #expect(limit(dir, "/x") == 2 << 20)
            // The agent killed now: the next start replays the logs.
            let restarted = SnapshotStore(directory: dir)
            try restarted.open()
            #expect(limit(dir, "/x") == 2 << 20, "the replay put an older snapshot back")
            #expect(restarted.load("/x")?.spec?.memory?.limit == 2 << 20)
        }
    }

    /// A start on a full disk keeps what the logs hold instead of failing
    /// (the agent would not start): readable at once, written once there
    /// is room; a record the disk cut short is cut off, so what is appended
    /// after it is read by the next start.
    @Test func aStartOnAFullDiskKeepsWhatTheLogsHold() throws {
        try FullDisk.around("start") { disk in
            let dir = disk.path + "/snapshots"
            let first = SnapshotStore(directory: dir)
            try first.open()
            try first.write(snap("/a", limit: 1 << 20))
            try first.write(snap("/b", limit: 2 << 20))
            try first.remove("/b")
            try first.write(snap("/c", limit: 3 << 20))
            // The agent killed: the logs hold it all, no file yet. A torn
            // record at the end of log.a, as a full disk leaves one.
            let fd = open(dir + "/log.a", O_WRONLY | O_APPEND)
            let torn: [UInt8] = [0, 0, 1, 0, 7, 7, 7]
            #expect(fd >= 0 && write(fd, torn, torn.count) == torn.count)
            close(fd)
            try disk.fill()
            var reports: [String] = []
            let said = Mutexed<[String]>([])
            let second = SnapshotStore(directory: dir, report: { line in said.locked { $0.append(line) } })
            try second.open()
            reports = said.locked { $0 }
            #expect(reports.count == 1 && reports[0].contains("could not be written to their files at start"), "\(reports)")
            #expect(second.loadAll().snapshots.mapValues { $0.spec?.memory?.limit } == ["/a": 1 << 20, "/c": 3 << 20])
            disk.free()
            try second.write(snap("/d", limit: 4 << 20))
            // Killed again before any pass: the next start reads /d too.
            let third = SnapshotStore(directory: dir)
            #expect(third.loadAll().snapshots.mapValues { $0.spec?.memory?.limit } == ["/a": 1 << 20, "/c": 3 << 20, "/d": 4 << 20])
            // Or the pass runs: the files, and logs that replay nothing older.
            #expect(second.flush() == 3)
            #expect(limit(dir, "/a") == 1 << 20 && limit(dir, "/b") == nil && limit(dir, "/c") == 3 << 20 && limit(dir, "/d") == 4 << 20)
            try second.write(snap("/a", limit: 5 << 20))
            #expect(second.flush() == 1)
            try third.open()
            #expect(third.loadAll().snapshots.mapValues { $0.spec?.memory?.limit } == ["/a": 5 << 20, "/c": 3 << 20, "/d": 4 << 20])
        }
    }

    /// The flusher on a full disk: it tries again after twice the wait of
    /// the last try (it retried every 100 ms, and without any wait once
    /// stopping: the agent's stop never ended, at 65 % of a CPU), its stop
    /// ends, and it says what it could not write.
    @Test func theFlusherBacksOffAndItsStopEnds() throws {
        try FullDisk.around("flusher") { disk in
            let said = Mutexed<[String]>([])
            let store = SnapshotStore(directory: disk.path + "/snapshots", gatherMs: 20, maxBackoffMs: 400,
                                      report: { line in said.locked { $0.append(line) } })
            try store.open()
            store.startFlusher()
            try disk.fill()
            #expect(throws: LmctfyError.self) { try store.write(snap("/a", limit: 1 << 20)) }
            usleep(1_000_000)
            // Waits of 20, 40, 80, 160, 320, 400 ms: about 5 passes in the
            // second; without the backoff, about 50.
            let failed = store.flushCosts.locked { $0.failed }
            #expect(failed >= 1 && failed <= 8, "\(failed) failed passes in a second")
            let stopped = Latch()
            Threads.detach {
                store.stopFlusher()
                stopped.signal()
            }
            #expect(stopped.wait(milliseconds: 10_000), "stopFlusher did not return on a full disk")
            let lines = said.locked { $0 }
            #expect(lines.first?.contains("1 changed snapshots not written to their files") == true, "\(lines)")
            #expect(lines.last?.contains("not written to their files at stop") == true, "\(lines)")
        }
    }
}

@Suite(.enabled(if: getuid() == 0, "mounting a tmpfs needs root"), .serialized)
struct FullDiskJournalTests {
    /// A new call's entry cannot be written: refused (its work would be
    /// done twice by a retry after a lost answer), except a destroy, which
    /// makes room; its id stays claimed until it finishes.
    @Test func onlyADestroyGoesOnUnrecorded() throws {
        try FullDisk.around("requests") { disk in
            let said = Mutexed<[String]>([])
            let journal = RequestJournal(directory: disk.path + "/requests", bootId: "b",
                                         report: { line in said.locked { $0.append(line) } })
            try journal.open()
            try disk.fill()
            do {
                _ = try journal.begin(id: "create-1", method: "Create", payload: [1])
                Issue.record("a new entry was written to a full disk")
            } catch let e as LmctfyError {
                #expect(e.code == .resourceExhausted && e.message.contains("destroy, killall, pause and resume still work"), "\(e)")
            }
            let mode = try journal.begin(id: "destroy-1", method: "Destroy", payload: [2], evenWhenFull: true)
            guard case .unrecorded = mode else {
                Issue.record("\(mode)")
                return
            }
            #expect(said.locked { $0 }.first?.contains("Destroy with request_id destroy-1 goes on unrecorded") == true)
            disk.free()  // the destroy made room
            #expect(journal.finish(id: "destroy-1", method: "Destroy", payload: [2], status: .ok, response: []) == nil)
            guard case .replay(let status, _) = try journal.begin(id: "destroy-1", method: "Destroy", payload: [2]) else {
                Issue.record("the finished destroy is not replayed")
                return
            }
            #expect(status.code == .ok)
        }
    }

    /// The fleet log's sequence reservation moves half a block early, so a
    /// disk that is full when the numbers come near the bound has half a
    /// block of appends to get room back (it moved only at the bound: one
    /// failed write there and every later number passed the bound on
    /// disk, to be given again after a restart).
    @Test func theSequenceReservationMovesBeforeTheBound() throws {
        try FullDisk.around("sequence") { disk in
            let path = disk.path + "/sequence"
            let log = EventLog(capacity: 16, bootId: "b")
            try log.reserveSequences(path: path)
            let half = EventLog.reservationBlock / 2
            for _ in 0..<(half + 10) { _ = log.recordStats(container: "/c", ContainerStats()) }
            try disk.fill()
            var last: UInt64 = 0
            for _ in 0..<(half + 10) { last = log.recordStats(container: "/c", ContainerStats()).sequence ?? 0 }
            let bound = SequenceReservation.parse(try Sys.readBytes(path)).0
            #expect(last < bound, "number \(last) was given past the bound on disk, \(bound)")
        }
    }

    /// The reservation is written in place, so it still moves on a full
    /// disk, and a log starts there (the temp file and rename it took were
    /// refused: a controller on a full disk did not start).
    @Test func theSequenceReservationMovesOnAFullDisk() throws {
        try FullDisk.around("sequence-full") { disk in
            let path = disk.path + "/sequence"
            // The format before this one, which a controller upgraded finds.
            try Sys.writeFileAtomically(path, Array("40000\n".utf8))
            try disk.fill()
            let log = EventLog(capacity: 16, bootId: "b")
            try log.reserveSequences(path: path)
            #expect(log.record(container: "/c", kind: .containerEventCreated).sequence == 40000)
            #expect(SequenceReservation.parse(try Sys.readBytes(path)).0 == 40000 + EventLog.reservationBlock)
            for _ in 0..<EventLog.reservationBlock { _ = log.recordStats(container: "/c", ContainerStats()) }
            let bound = SequenceReservation.parse(try Sys.readBytes(path)).0
            #expect(log.newest < bound && bound > 40000 + EventLog.reservationBlock, "bound \(bound), newest \(log.newest)")
            let again = EventLog(capacity: 16, bootId: "b")
            try again.reserveSequences(path: path)
            #expect(again.record(container: "/c", kind: .containerEventCreated).sequence == bound)
        }
    }

    /// Events the journal could not take wait in memory and are written,
    /// in order, once there is room: the journal stays a prefix of the log
    /// (the failed ones were dropped and the next written: a restart served
    /// a subscriber the events around a hole as if none were missing). Past
    /// what the log keeps it gives up and takes nothing more.
    @Test func theEventJournalCatchesUpInOrder() throws {
        try FullDisk.around("events-order", kilobytes: 1024) { disk in
            let dir = disk.path + "/events"
            let log = EventLog(capacity: 64, bootId: "b")
            try log.attachJournal(directory: dir)
            log.record(container: "/a", kind: .containerEventCreated)
            try disk.fill()
            let big = String(repeating: "r", count: 3000)
            for _ in 0..<4 { log.append(ContainerEvent(container: "/a", kind: .containerEventOom, reason: big)) }
            var state = log.flushJournal()
            #expect(state.behind > 0 && state.lost == 0 && Sys.isNoSpace(state.errno), "\(state)")
            var report = EventLog.JournalReport(journal: "j")
            #expect(report.lines(state).first?.text.contains("j cannot be written (No space left on device)") == true)
            disk.free()
            log.record(container: "/a", kind: .containerEventDestroyed)
            state = log.flushJournal()
            #expect(state.caughtUp, "\(state)")
            #expect(report.lines(state).first?.text.contains("caught up") == true)
            #expect(EventJournal.stored(directory: dir).map(\.sequence) == [1, 2, 3, 4, 5, 6])
            // More than the log keeps: given up, the journal a prefix still.
            try disk.fill()
            for _ in 0..<70 { log.append(ContainerEvent(container: "/a", kind: .containerEventOom, reason: big)) }
            state = log.flushJournal()
            #expect(state.lost > 0 && !state.caughtUp && Sys.isNoSpace(state.errno), "\(state)")
            #expect(report.lines(state).first?.text.contains("starts again from what the log keeps once it can be written") == true)
            let stored = EventJournal.stored(directory: dir).compactMap(\.sequence)
            #expect(stored == Array(1...UInt64(stored.count)), "a hole in \(stored)")
            #expect(!Sys.exists(dir + "/current.new"), "a start again that failed leaves nothing")

            // Calls while the disk stays full try nothing (the room is
            // looked at first), so they add no back-off: once there is
            // room, the next call starts again from what the log keeps,
            // then the journal takes every event again. (It took nothing
            // more until a restart; then each call on the full disk doubled
            // the wait, and one after a minute of it waited 16 calls.)
            for _ in 0..<20 { #expect(!log.flushJournal().caughtUp) }
            #expect(!Sys.exists(dir + "/current.new"))
            disk.free()
            log.record(container: "/a", kind: .containerEventCreated)
            state = log.flushJournal()
            #expect(state.caughtUp, "\(state)")
            #expect(report.lines(state).first?.text.contains("started again from what the log keeps") == true)
            let kept = log.range(after: 0, upTo: log.newest).events.compactMap(\.sequence)
            #expect(kept.count == 64 && kept.last == log.newest)
            #expect(EventJournal.stored(directory: dir).compactMap(\.sequence) == kept)
            log.record(container: "/a", kind: .containerEventDestroyed)
            #expect(log.flushJournal().caughtUp)
            let after = EventJournal.stored(directory: dir).compactMap(\.sequence)
            #expect(after == kept + [log.newest], "appended after it")

            // A restart serves them to a subscriber of this boot: a gap for
            // what is not on disk, then what is.
            let next = EventLog(capacity: 64, bootId: "b2")
            try next.attachJournal(directory: dir)
            // (The newest `capacity` of them: the boots before count
            // against the log's bound.)
            let served = Array(after.suffix(64))
            let got = try EventHub(log: next).replayed(EventHub.Key(conn: 1, stream: 1), SubscribeRequest(bootId: "b", afterSequence: 1))
            #expect(got.first?.gap == EventGap(requestedBootId: "b", afterSequence: 1, bootId: "b", firstSequence: served.first))
            #expect(got.compactMap { $0.event?.bootId == "b" ? $0.event?.sequence : nil } == served)
            // A log whose id outlives the process (the fleet log) finds its
            // own events: the same gap (the journal's floor, moved when it
            // started again, says what it let go of).
            let same = EventLog(capacity: 128, bootId: "b")
            try same.attachJournal(directory: dir)
            #expect(same.resumePoint(bootId: "b", after: 1).gap?.firstSequence == kept.first)
            #expect(same.resumePoint(bootId: "b", after: (kept.first ?? 1) - 1).gap == nil)
        }
    }

    /// A torn slot (a crash in the middle of its write) fails its check
    /// and the other one holds.
    @Test func aTornReservationSlotIsPassedOver() {
        var bytes = SequenceReservation.header + [UInt8](repeating: 0, count: 64 - SequenceReservation.header.count)
        bytes += SequenceReservation.encoded(500) + [UInt8](repeating: 0, count: 30)
        bytes += SequenceReservation.encoded(900)
        #expect(SequenceReservation.parse(bytes) == (900, 1))
        bytes[128 + 3] = 0x66  // torn: the value no longer matches its check
        #expect(SequenceReservation.parse(bytes) == (500, 0))
    }

    /// A freeze lease the disk cannot keep is refused (a restarted agent
    /// would never thaw its container), but one ended stays ended: kept in
    /// memory when its file could not be rewritten, it thawed at its
    /// deadline a container an operator had frozen since, and an expiry
    /// that could not be written thawed again every second; and so does it
    /// in the file, which a restart reads (it kept the lease).
    @Test func freezeLeasesEndedOnAFullDiskStayEnded() throws {
        try FullDisk.around("leases") { disk in
            let leases = FreezeLeases(file: disk.path + "/freeze-leases", bootId: "b")
            try leases.hold("/r/a", name: "/a", ms: 100, now: 1000)
            try leases.hold("/r/b", name: "/b", ms: 100, now: 1000)
            try disk.fill()
            do {
                try leases.hold("/r/c", name: "/c", ms: 100, now: 1000)
                Issue.record("a lease the disk could not keep was taken")
            } catch let e as LmctfyError {
                #expect(e.code == .resourceExhausted, "\(e)")
            }
            #expect(leases.lease("/r/c") == nil)
            leases.release(["/r/a"])
            #expect(leases.lease("/r/a") == nil, "a released lease is held still")
            // A restart while the disk is still full: the released lease
            // does not come back (it stayed in the file and thawed, at its
            // deadline, a container an operator had frozen since).
            #expect(FreezeLeases(file: disk.path + "/freeze-leases", bootId: "b").held(under: "/") == ["/r/b"])
            #expect(FreezeLeases(file: disk.path + "/freeze-leases", bootId: "b").unreadable == nil)
            let b = try #require(leases.lease("/r/b"))
            var thaws = 0
            #expect(leases.expire("/r/b", b) { thaws += 1; return true })
            #expect(leases.due(now: 10_000_000).isEmpty && thaws == 1, "an expired lease is due again")
            #expect(FreezeLeases(file: disk.path + "/freeze-leases", bootId: "b").held(under: "/").isEmpty)
            disk.free()
            // The file is right again at the next write.
            try leases.hold("/r/d", name: "/d", ms: 100, now: 1000)
            #expect(FreezeLeases(file: disk.path + "/freeze-leases", bootId: "b").held(under: "/") == ["/r/d"])
        }
    }

    /// An append the disk cut short is taken off, and a torn record left
    /// by an earlier life is cut off when the journal opens: the events
    /// appended after either are read back.
    @Test func theEventJournalCutsOffWhatTheDiskCutShort() throws {
        try FullDisk.around("events") { disk in
            let dir = disk.path + "/events"
            let journal = try EventJournal(directory: dir, capacity: 100)
            #expect(journal.append(ContainerEvent(sequence: 1, container: "/a")))
            try disk.fill()
            // Larger than any slack its last page has: cut short, or refused.
            #expect(!journal.append(ContainerEvent(sequence: 2, container: "/a", reason: String(repeating: "r", count: 6000))))
            disk.free()
            #expect(journal.append(ContainerEvent(sequence: 3, container: "/a")))
            #expect(EventJournal.stored(directory: dir).map(\.sequence) == [1, 3])
            // A torn record (an earlier life's) at the end of `current`.
            let fd = open(dir + "/current", O_WRONLY | O_APPEND)
            let torn: [UInt8] = [0, 0, 0, 9, 8]  // 9 bytes said, 1 there
            #expect(fd >= 0 && write(fd, torn, torn.count) == torn.count)
            close(fd)
            let reopened = try EventJournal(directory: dir, capacity: 100)
            #expect(reopened.append(ContainerEvent(sequence: 4, container: "/a")))
            #expect(EventJournal.stored(directory: dir).map(\.sequence) == [1, 3, 4])
        }
    }
}

@Suite(.enabled(if: getuid() == 0, "mounting a tmpfs needs root"), .serialized)
struct FullDiskImageTests {
    /// An upload keeps 5% of its file system (at most 64 MiB) free for the
    /// agent's state: one that never ended (`lmctl image import
    /// /dev/zero`) wrote until the disk was full (a probe).
    @Test func anUploadLeavesRoomForTheAgentsState() throws {
        try FullDisk.around("upload", kilobytes: 1024) { disk in
            #expect(ImageService.reserveBytes(total: 2 << 30) == 64 << 20 && ImageService.reserveBytes(total: 1 << 20) == 52_428)
            let path = disk.path + "/upload"
            #expect(throws: Never.self) { try ImageService.keepRoom(after: 512 << 10, in: path) }
            #expect { try ImageService.keepRoom(after: Int(disk.available) - 1000, in: path) }
                throws: { ($0 as? LmctfyError)?.code == .resourceExhausted && "\($0)".contains("kept for its state") }
        }
    }

    /// An import whose rootfs does not fit: RESOURCE_EXHAUSTED naming the
    /// cause (libarchive says only "Write failed"; it was FAILED_PRECONDITION),
    /// and nothing of it left in the store; one that fits, afterwards.
    @Test func anImportThatDoesNotFitLeavesNothing() throws {
        try FullDisk.around("images", kilobytes: 512) { disk in
            let archive = disk.path + "/../big.tar"
            var t = TarBuilder()
            t.add("bin/", .directory, mode: 0o755)
            t.add("bin/big", .file, mode: 0o755, content: [UInt8](repeating: 7, count: 600 << 10))
            try Sys.writeFileAtomically(archive, t.archive, durable: false)
            let store = ImageStore(root: disk.path + "/images")
            do {
                _ = try store.importImage(archive, as: "big")
                Issue.record("600 KiB were unpacked into 512")
            } catch let e as LmctfyError {
                #expect(e.code == .resourceExhausted && e.message.contains("No space left on device"), "\(e)")
            }
            #expect(try store.listImages().isEmpty)
            #expect(try Sys.directoryEntries(disk.path + "/images").filter { $0.hasPrefix(".tmp-") }.isEmpty)
            // Gone from the store at once; its pages once no descriptor of
            // it is left (the file was removed, and 0 bytes were free, under
            // the full suite: a child forked meanwhile held it).
            disk.awaitFree(500 << 10)
            #expect(disk.available >= 500 << 10, "what the failed import wrote is gone: \(disk.available) bytes free")
            var small = TarBuilder()
            small.add("etc/", .directory, mode: 0o755)
            small.add("etc/hostname", .file, content: Array("x\n".utf8))
            try Sys.writeFileAtomically(archive, small.archive, durable: false)
            #expect(try store.importImage(archive, as: "small").name == "small")
        }
    }
}

/// The agent binary with its state_dir on a disk that fills up.
@Suite(.enabled(if: RealCgroups.available, "\(RealCgroups.unavailableReason ?? "")"), .serialized)
struct FullDiskAgentTests {
    @Test func theAgentOnAFullDiskRefusesCreatesDestroysStopsAndStarts() throws {
        let api = try ContainerApi.detect()
        let root = RealCgroups.uniqueName("fulldisk")
        let rootName = try ContainerName.resolve(root, relativeTo: .root)
        _ = try api.create(rootName, spec: ContainerSpec(memory: MemorySpec(limit: 1 << 30)))
        defer { RealCgroups.destroy(root) }
        try FullDisk.around("agent", kilobytes: 512) { disk in
            // The state_dir is the disk; the socket and the config beside it.
            let dir = String(disk.path.dropLast("/disk".count))
            try Sys.chmod(dir, 0o755)
            try Sys.createFile(dir + "/agent.conf", """
                unix_socket_path: "\(dir)/agent.sock" unix_socket_mode: 0666 log_level: LOG_ERROR
                state_dir: "\(disk.path)" root_container: "\(root)" stats_interval_ms: 0
                """)
            var agent = try AgentProcess(reusing: dir)
            var running = true
            defer { if running { TestProcess.end(agent.pid) } }
            let exists = { (path: String) -> Bool in
                (try? api.exists(try ContainerName.resolve(root + path, relativeTo: .root))) == true
            }
            var client = try RpcClient.connect(unixPath: agent.socket)
            for name in ["/a", "/b"] {
                _ = try client.call(AgentMethods.create, CreateRequest(name: name, spec: ContainerSpec(memory: MemorySpec(limit: 32 << 20)),
                                                                       requestId: "create-\(name.dropFirst())"))
            }
            try disk.fill()
            // A create: refused, clearly, and nothing made.
            do {
                _ = try client.call(AgentMethods.create, CreateRequest(name: "/c", spec: ContainerSpec(memory: MemorySpec(limit: 32 << 20)),
                                                                       requestId: "create-c"))
                Issue.record("a create with a request_id succeeded on a full disk")
            } catch let e as LmctfyError {
                #expect(e.code == .resourceExhausted && e.message.contains("the disk is full"), "\(e)")
            }
            #expect(!exists("/c"), "a refused create left its container")
            // A destroy makes room: done, full disk or not.
            _ = try client.call(AgentMethods.destroy, DestroyRequest(name: "/a", requestId: "destroy-a"))
            #expect(!exists("/a"))
            // A change whose snapshot the disk cannot take: done, its snapshot
            // kept in memory.
            try disk.fill()
            _ = try client.call(AgentMethods.pause, PauseRequest(name: "/b", requestId: "pause-b"))
            // An export, a read, serves the snapshot kept in memory (it
            // failed with the write's RESOURCE_EXHAUSTED; a probe).
            let exported: ExportSnapshotResponse = try client.call(AgentMethods.exportSnapshot, ExportSnapshotRequest(name: "/b"))
            #expect(exported.snapshot?.frozen == true && exported.snapshot?.spec?.memory?.limit == 32 << 20)
            client.close()
            // Its stop ends (it never did: the snapshot flusher retried forever).
            kill(agent.pid, SIGTERM)
            var status: LmctfySystem.ExitStatus?
            for _ in 0..<1000 where status == nil {
                status = TestProcess.reapIfExited(agent.pid)
                if status == nil { usleep(10_000) }
            }
            running = status == nil
            try #require(status == .exited(0), "the agent did not stop on a full disk within 10 s: \(String(describing: status))")
            // It starts on the full disk (it exited 3: "Settling the snapshots"), and serves.
            agent = try AgentProcess(reusing: dir)
            running = true
            client = try RpcClient.connect(unixPath: agent.socket)
            defer { client.close() }
            let listed = try client.call(AgentMethods.listContainers, ListContainersRequest(name: "/", recursive: true)).names
            #expect(listed == ["/b"], "\(listed)")
            _ = try client.call(AgentMethods.resume, ResumeRequest(name: "/b", requestId: "resume-b"))
            // Room again: what it kept is written, and it takes creates.
            disk.free()
            _ = try client.call(AgentMethods.create, CreateRequest(name: "/d", spec: ContainerSpec(memory: MemorySpec(limit: 32 << 20)),
                                                                   requestId: "create-d"))
            #expect(exists("/d"))
            var files: [String] = []
            for _ in 0..<500 {
                files = (try? Sys.subdirectoriesAndFiles(disk.path + "/snapshots"))?.filter { $0.hasPrefix("%") }.sorted() ?? []
                if files == ["%2Fb", "%2Fd"] { break }
                usleep(20_000)
            }
            #expect(files == ["%2Fb", "%2Fd"], "snapshot files once there is room")
        }
    }
}
