// Freezes that end by themselves (PauseRequest.lease_ms, PROTOCOL.md section
// 6.4). A migration freezes its source while it copies it; if whoever drives
// it (lmctl, or the controller it goes through) is lost part way, nobody is
// left to thaw the source, which stayed frozen for ever. With a lease the
// agent thaws it itself when the lease runs out, unless a Resume, a Destroy
// or a Pause without a lease came first.
//
// A lease outlives the call and the connection, and an agent restart too:
// the leases are kept in state_dir/freeze-leases (rewritten atomically; not
// fsynced, since a machine crash takes the frozen cgroups with it) with the
// boot they were taken in, on the monotonic clock, which a restart of the
// agent does not reset.
import Glibc
import LmctfySystem

public final class FreezeLeases: Sendable {
    /// The longest lease a caller may ask for (an hour).
    static let maxMs: UInt32 = 3_600_000

    struct Lease: Equatable, Sendable {
        /// The container as the caller named it (what the thaw passes on).
        var name: String
        /// When it runs out, on the monotonic clock (milliseconds).
        var deadline: UInt64
        /// The frozen container's cgroup directory (`identify`), so that a
        /// container destroyed and made again under the same name, with the
        /// CLI or while the agent was down, is not thawed by the old one's
        /// lease; nil: not known.
        var identity: UInt64? = nil
    }

    /// Held leases by the container's machine path.
    private let held: Mutexed<[String: Lease]>
    /// Where they are kept; nil: in memory only (tests, no state_dir).
    private let file: String?
    private let bootId: String
    /// What of the kept file could not be read (for the agent to say so):
    /// nil when it was read whole, or there was none.
    let unreadable: String?
    /// The identity of the container at a machine path now (nil: gone).
    private let identify: (@Sendable (String) -> UInt64?)?

    /// The kernel's boot id ("" when it does not say): not the event log's,
    /// which is new at every start of the agent.
    public static let kernelBootId: String = {
        ((try? Sys.readFile("/proc/sys/kernel/random/boot_id")) ?? "").trimmingWhitespace
    }()

    /// The leases kept in `file` by an earlier agent of this boot of the
    /// machine (`bootId`, the kernel's by default; those of another boot are
    /// dropped: the freezes they were for went with it).
    public init(file: String?, bootId: String = FreezeLeases.kernelBootId,
                identify: (@Sendable (String) -> UInt64?)? = nil) {
        self.file = file
        self.bootId = bootId
        self.identify = identify
        var loaded: [String: Lease] = [:]
        var bad = 0
        var header: Substring?
        var text: String?
        var failed: SystemError?
        if let file {
            do { text = try Sys.readFile(file) } catch where error.errno != ENOENT { failed = error } catch {}
        }
        if let text {
            var lines = text.split(separator: "\n", omittingEmptySubsequences: true)[...]
            header = lines.first
            if header?.hasPrefix("boot ") != true { bad += lines.count }
            if lines.first == Substring("boot \(bootId)") {
                lines = lines.dropFirst()
                for line in lines {
                    let parts = line.split(separator: "\t", maxSplits: 3, omittingEmptySubsequences: false)
                    guard parts.count == 4, let deadline = UInt64(parts[0]), parts[1] == "-" || UInt64(parts[1]) != nil,
                          parts[2].hasPrefix("/"), !parts[3].isEmpty else {
                        bad += 1
                        continue
                    }
                    loaded[String(parts[2])] = Lease(name: String(parts[3]), deadline: deadline, identity: UInt64(parts[1]))
                }
            }
        }
        // A file that cannot be read at all (a directory in its place) is
        // said too: it was taken for none, silently (a probe).
        if let failed {
            unreadable = "\(file ?? "") could not be read (\(failed)): a container a freeze lease kept there was for stays frozen until resumed"
        } else {
            unreadable = bad == 0 ? nil : "\(bad) line\(bad == 1 ? "" : "s") of \(file ?? "") could not be read\(header?.hasPrefix("boot ") == true ? "" : " (no boot line)"): a container its freeze lease was for stays frozen until resumed"
        }
        held = Mutexed(loaded)
    }

    /// Holds a lease of `ms` on the freeze of `path` (named `name` by the
    /// caller). One at a time: while another caller's lease is held it is
    /// ABORTED, checked and taken in one critical section (two leased
    /// Pauses at once could both have passed a check made before). Throws
    /// if it cannot be kept: the caller then must not freeze (and
    /// `release`s it if its freeze fails).
    func hold(_ path: String, name: String, ms: UInt32, now: UInt64 = MonotonicClock.milliseconds()) throws(LmctfyError) {
        var other: Lease?
        try change(mustKeep: true) { h in
            if let held = h[path] {
                other = held
                return
            }
            h[path] = Lease(name: name, deadline: now + UInt64(ms), identity: identify?(path))
        }
        if let other {
            // A second migration of a container whose freeze another caller
            // leased would take its copy as frozen by the user, and leave it
            // frozen for good on the target.
            throw LmctfyError(.aborted, "Container \(name) is already frozen under another caller's lease (\(other.deadline > now ? other.deadline - now : 0) ms left): a migration of it is under way, or was cut short and its freeze ends by itself then")
        }
    }

    /// Ends the leases of `paths`: called BEFORE a Resume, a Destroy or a
    /// Pause without a lease touches the freezer, so that a thaw at the
    /// lease's end that is under way finishes first, and none starts after
    /// (it would undo a freeze an operator has just made). Nothing is
    /// written when none was held.
    func release(_ paths: [String]) {
        let any = held.locked { h in paths.contains { h[$0] != nil } }
        guard any else { return }
        try? change { h in for p in paths { h[p] = nil } }
    }

    /// The leases run out by `now` (each is checked again by `thaw`).
    func due(now: UInt64 = MonotonicClock.milliseconds()) -> [(path: String, lease: Lease)] {
        held.locked { h in
            h.filter { $0.value.deadline <= now }.map { ($0.key, $0.value) }.sorted { $0.path < $1.path }
        }
    }

    /// Runs `thaw` for the lease `lease` of `path` if it is still held (no
    /// Resume, Destroy or other Pause since), with the list locked so that
    /// none starts meanwhile, and drops the lease unless `thaw` asks to keep
    /// it (a failure to be tried again: `retryMs` from now). Returns whether
    /// `thaw` ran.
    func expire(_ path: String, _ lease: Lease, retryMs: UInt64 = 1000, thaw: () -> Bool) -> Bool {
        var ran = false
        try? change { h in
            guard h[path] == lease else { return }
            // Another container under that name (destroyed and made again
            // behind the agent's back): not the frozen one; the lease ends.
            if let id = lease.identity, let identify, identify(path) != id {
                h[path] = nil
                return
            }
            ran = true
            if thaw() {
                h[path] = nil
            } else {
                h[path] = Lease(name: lease.name, deadline: MonotonicClock.milliseconds() + retryMs, identity: lease.identity)
            }
        }
        return ran
    }

    /// The paths with a lease at or below `path`.
    func held(under path: String) -> [String] {
        held.locked { h in h.keys.filter { $0 == path || $0.hasPrefix(path == "/" ? "/" : path + "/") } }
    }

    /// The lease held on `path`, if any.
    func lease(_ path: String) -> Lease? { held.locked { $0[path] } }

    /// When the next lease runs out, if any.
    var nextDeadline: UInt64? { held.locked { $0.values.map(\.deadline).min() } }

    /// Applies `body` and writes the list. On a failed write (a full disk)
    /// a new lease (`mustKeep`) is put back as it was, and refused; a lease
    /// ended (a release, an expiry) stays ended in memory, where it is
    /// acted on: kept, it thawed a container an operator had frozen since.
    /// The file, which only gets shorter then, is rewritten in place.
    private func change(mustKeep: Bool = false, _ body: (inout [String: Lease]) -> Void) throws(LmctfyError) {
        // (`body` may run a thaw: the lock is held across it on purpose.)
        try held.locked { (h: inout [String: Lease]) throws(LmctfyError) in
            let before = h
            body(&h)
            guard let file, h != before else { return }
            var text = "boot \(bootId)\n"
            for (path, lease) in h.sorted(by: { $0.key < $1.key }) {
                text += "\(lease.deadline)\t\(lease.identity.map(String.init) ?? "-")\t\(path)\t\(lease.name)\n"
            }
            do throws(SystemError) {
                if h.isEmpty {
                    if Sys.exists(file) { try Sys.unlink(file) }
                } else {
                    do throws(SystemError) {
                        try Sys.writeFileAtomically(file, Array(text.utf8), durable: false)
                    } catch where error.isNoSpace && !mustKeep {
                        // A lease ended on a full disk: the shorter list
                        // goes over the old one in place (blank lines are
                        // skipped when it is read). Left in the file, it
                        // came back at a restart and thawed a container
                        // frozen since.
                        try Sys.rewriteShorter(file, Array(text.utf8), padding: UInt8(ascii: "\n"))
                    }
                }
            } catch {
                if mustKeep { h = before }
                throw LmctfyError(error.isNoSpace ? .resourceExhausted : .internal, "keeping the freeze leases in \(file): \(error)")
            }
        }
    }
}
