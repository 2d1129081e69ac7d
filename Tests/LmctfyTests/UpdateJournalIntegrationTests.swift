// An update killed part way (SIGKILL of `lmctfy update`) on the real kernel
// (v1 here, v2 in the guest): its journal in the tree's lock file has the
// next holder of the lock put the previous spec back. It left half the new
// spec for good: the new CPU limit with the old memory limit (the
// concurrency probe, 2 of 184 kills).
import Glibc
@testable import Lmctfy
import LmctfyProto
import LmctfySystem
import LmctfyTestSupport
import Testing

@Suite(.enabled(if: RealCgroups.available, "\(RealCgroups.unavailableReason ?? "")"))
struct UpdateJournalIntegrationTests {
    let api: ContainerApi

    init() throws {
        api = try ContainerApi.detect()
    }

    @Test func anUpdateKilledPartWayIsPutBackByTheNextHolderOfTheLock() throws {
        try withTestContainer(api, label: "updkilled") { name in
            let c = try api.create(name, spec: ContainerSpec(cpu: CpuSpec(limit: 500), memory: MemorySpec(limit: 100 << 20)))
            // A finished update leaves no journal.
            try c.update(ContainerSpec(cpu: CpuSpec(limit: 600), memory: MemorySpec(limit: 120 << 20)), policy: .replace)
            try api.locked(name) { lock throws(LmctfyError) in
                #expect((try? lock?.journal()) ?? "" == "", "a finished update left its journal")
            }
            let before = try c.spec()
            let asked = ContainerSpec(cpu: CpuSpec(limit: 700), memory: MemorySpec(limit: 200 << 20))
            // What the update saves before its first write: the previous
            // text of each one-line file it writes.
            let (dirs, _) = try api.driver.resolved(name)
            var saved: [CgroupWrite] = []
            for kind in [ResourceKind.cpu, .memory] {
                for w in try api.handler(kind).plannedWrites(asked, policy: .replace, dirs: dirs) {
                    guard let text = try? w.dir.read(w.file).trimmingWhitespace, !text.isEmpty, !text.contains("\n") else { continue }
                    saved.append(CgroupWrite(w.dir, w.file, text))
                }
            }
            #expect(!saved.isEmpty)
            // Killed after its CPU write: the journal it left, and the new
            // CPU limit with the old memory limit. `owner`: the lock file's
            // (a delegated tree's is its owner's). Returns the file.
            func killedUpdate(owner: uid_t) throws -> String {
                var path = ""
                try api.locked(name) { lock throws(LmctfyError) in
                    guard let lock else { throw LmctfyError(.internal, "no lock file") }
                    path = lock.path
                    do throws(SystemError) { try lock.append(ContainerApi.updateJournal(name, before: before, saved: saved)) } catch {
                        throw error.lmctfy(.internal, "journal")
                    }
                    try api.handler(.cpu).apply(asked, policy: .diff, dirs: dirs)
                }
                #expect(chown(path, owner, owner) == 0)
                // (Compared as read back: v2 keeps a CPU limit as a weight.)
                #expect(try c.spec().cpu?.limit != before.cpu?.limit, "the torn state")
                return path
            }
            // A journal in a lock file someone else owns (a delegated
            // tree's owner could write it) is not acted on by root: it
            // would write limits the owner may not.
            let path = try killedUpdate(owner: 65534)
            let torn = try c.spec()
            try api.locked(name) { _ throws(LmctfyError) in }
            #expect(try c.spec() == torn, "root acted on a journal another user could have written")
            #expect(chown(path, 0, 0) == 0)
            _ = try killedUpdate(owner: 0)
            // The next holder of the tree's lock puts it back.
            try api.locked(name) { _ throws(LmctfyError) in }
            let after = try c.spec()
            #expect(after.cpu?.limit == before.cpu?.limit && after.memory?.limit == before.memory?.limit,
                    "\(after.textFormatString) against \(before.textFormatString)")
            for w in saved { #expect(try w.dir.read(w.file).trimmingWhitespace == w.value, "\(w)") }
            // Once: the journal is cleared, and a later update stays.
            try c.update(ContainerSpec(cpu: CpuSpec(limit: 800), memory: MemorySpec(limit: 120 << 20)), policy: .replace)
            let later = try c.spec()
            #expect(later.cpu?.limit != before.cpu?.limit)
            try api.locked(name) { _ throws(LmctfyError) in }
            #expect(try c.spec() == later, "a finished update was undone")
        }
    }
}

/// An enter killed between two of a task's writes (v1: a write per
/// hierarchy) left the task in the container's first hierarchy, where
/// `detect` and `list pids` look, and outside its memory and pids limits,
/// for good (the CLI probe: Ctrl-C or SIGKILL tore it within 3 to 7
/// tries). Its journal has the next holder of the tree's lock complete the
/// move, unless the task has moved on since or is another task by now.
@Suite(.enabled(if: RealCgroups.available, "\(RealCgroups.unavailableReason ?? "")"))
struct EnterJournalIntegrationTests {
    let api: ContainerApi

    init() throws {
        api = try ContainerApi.detect()
    }

    @Test func anEnterKilledPartWayIsCompletedByTheNextHolderOfTheLock() throws {
        try withTestContainer(api, label: "enterkilled") { name in
            let c = try api.create(name, spec: ContainerSpec(cpu: CpuSpec(limit: 300), memory: MemorySpec(limit: 100 << 20)))
            let dirs = try api.driver.joinDirs(name)
            guard dirs.count > 1 else {
                // v2: one write a task, nothing to tear (and nothing journaled).
                let pid = try TestProcess.spawn(["/bin/sleep", "100"])
                defer { TestProcess.end(pid) }
                try c.enter([pid])
                try api.locked(name) { lock throws(LmctfyError) in #expect((try? lock?.journal()) ?? "" == "") }
                #expect(try api.detect(pid: pid) == name)
                return
            }
            // A finished enter leaves no journal.
            let whole = try TestProcess.spawn(["/bin/sleep", "100"])
            defer { TestProcess.end(whole) }
            try c.enter([whole])
            try api.locked(name) { lock throws(LmctfyError) in #expect((try? lock?.journal()) ?? "" == "", "a finished enter left its journal") }
            #expect(try c.joinDirs(for: String(whole)).isEmpty)

            /// Killed after its first write: the journal it left (as
            /// `enter` writes it) and the task in the first hierarchy alone.
            /// Returns how many directories it was to be written to (those
            /// of hierarchies the container does not isolate hold it already).
            @discardableResult
            func killedEnter(_ pid: pid_t, journalStart: String? = nil) throws -> Int {
                let count = try c.joinDirs(for: String(pid)).count
                let own = try #require(Container.processStart(pid))
                let start = journalStart ?? String(own)
                try api.locked(name) { lock throws(LmctfyError) in
                    guard let lock else { throw LmctfyError(.internal, "no lock file") }
                    do throws(SystemError) { try lock.append("boot \(ContainerLock.bootId)\nenter \(name) \(pid) \(start)") } catch {
                        throw error.lmctfy(.internal, "journal")
                    }
                    try dirs[0].write(api.driver.enterFile, String(pid))
                }
                #expect(try c.joinDirs(for: String(pid)).count == count - 1, "the torn state")
                return count
            }
            let torn = try TestProcess.spawn(["/bin/sleep", "100"])
            defer { TestProcess.end(torn) }
            try killedEnter(torn)
            try api.locked(name) { _ throws(LmctfyError) in }
            #expect(try c.joinDirs(for: String(torn)).isEmpty, "the move was not completed")

            // Another task by now (its start time differs): left alone.
            let other = try TestProcess.spawn(["/bin/sleep", "100"])
            defer { TestProcess.end(other) }
            let otherCount = try killedEnter(other, journalStart: "1")
            try api.locked(name) { _ throws(LmctfyError) in }
            #expect(try c.joinDirs(for: String(other)).count == otherCount - 1, "a task the journal did not name was moved")

            // Moved on since (out of the first hierarchy): left where it went.
            let moved = try TestProcess.spawn(["/bin/sleep", "100"])
            defer { TestProcess.end(moved) }
            let movedCount = try killedEnter(moved)
            try CgroupDir(mount: dirs[0].mount, segments: [], access: api.mounts.access).write(api.driver.enterFile, String(moved))
            try api.locked(name) { _ throws(LmctfyError) in }
            #expect(try c.joinDirs(for: String(moved)).count == movedCount, "a task that left was pulled back")
        }
    }
}
