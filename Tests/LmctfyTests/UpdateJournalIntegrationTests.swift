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
