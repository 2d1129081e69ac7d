// lmctl's verbs for moving containers (issue #13; README "Moving
// containers"):
//
//   snapshot export NAME [-o FILE] [--text]     the snapshot (binary, or protobuf text)
//   snapshot import FILE [--name N] [--start]   re-create it here (FILE "-": stdin)
//   migrate NAME --to unix://PATH|tcp://HOST:PORT [--to-key-file FILE] [--force]
//   checkpoint NAME DIR [--leave-running]       CRIU, where the agent can use it
//   restore DIR [--name N]
//   (at a controller) migrate NAME --from HOST --to HOST [--force]
//
// A container with subcontainers is refused (a snapshot is of one
// container), and so, without --force, is one running processes the agent
// did not start (they would die with the source and not start again).
//
// A migration is driven from here, one step at a time, and undone when a
// step fails: the source is frozen (unless it already was), its snapshot
// taken, imported on the target with its processes started and its freezer
// state as it was before; only once the target has confirmed is the source
// destroyed. On any failure the target's container is destroyed (if it was
// made) and the source thawed (if we froze it): the source keeps running,
// the target is left clean. LMCTL_TEST_MIGRATE_FAIL_AFTER=pause|export|
// import|destroy makes the step named fail (after it ran, for the first
// three; instead of it, for destroy), for the tests of that promise.
import Glibc
import LmctfyCommands
import LmctfyProto
import LmctfyRPC
import LmctfySystem

enum MovingCommands {
    static let verbs: Set<String> = ["snapshot", "migrate", "checkpoint", "restore"]

    typealias Dial = @Sendable () throws(LmctfyError) -> RpcClient

    /// One of the verbs against one peer (an agent, or a host through a controller).
    static func run(_ words: [String], dial: @escaping Dial, stdout: any ByteSink, stderr: any ByteSink) -> Int32 {
        do {
            var args = words
            let verb = args.removeFirst()
            switch verb {
            case "snapshot":
                guard let sub = args.first else { throw LmctfyError.invalidArgument("snapshot needs export or import") }
                args.removeFirst()
                if sub == "export" { return try export(args, dial: dial, stdout: stdout) }
                if sub == "import" { return try importFile(args, dial: dial, stdout: stdout) }
                throw LmctfyError.invalidArgument("snapshot \(sub): expected export or import")
            case "migrate":
                return try ProgressLine.around(stderr: stderr) { try migrateDirect(args, dial: dial, stdout: stdout) }
            case "checkpoint":
                return try checkpoint(args, dial: dial, stdout: stdout)
            default:
                return try restore(args, dial: dial, stdout: stdout)
            }
        } catch {
            return fail(error, stderr)
        }
    }

    static func fail(_ error: any Error, _ stderr: any ByteSink) -> Int32 {
        let e = error as? LmctfyError ?? LmctfyError(.unknown, "\(error)")
        stderr.write(Array("Command exited with error message: \(e.code.rawValue): \(e.message)\n".utf8))
        return e.code.rawValue
    }

    /// Positional words and `--flag VALUE` / `--flag` options.
    struct Words {
        var positional: [String] = []
        var values: [String: String] = [:]
        var flags: Set<String> = []

        init(_ words: [String], values valued: Set<String>, flags known: Set<String>) throws(LmctfyError) {
            var i = 0
            while i < words.count {
                let w = words[i]
                if valued.contains(w) {
                    guard i + 1 < words.count else { throw .invalidArgument("\(w) needs a value") }
                    values[w] = words[i + 1]
                    i += 2
                    continue
                }
                if known.contains(w) {
                    flags.insert(w)
                } else if w.hasPrefix("-") && w != "-" {
                    throw .invalidArgument("unknown option \(w)")
                } else {
                    positional.append(w)
                }
                i += 1
            }
        }
    }

    // MARK: snapshot export / import

    static func export(_ args: [String], dial: Dial, stdout: any ByteSink) throws -> Int32 {
        let w = try Words(args, values: ["-o"], flags: ["--text"])
        guard w.positional.count == 1 else { throw LmctfyError.invalidArgument("usage: snapshot export NAME [-o FILE] [--text]") }
        let client = try dial()
        defer { client.close() }
        let r = try client.call(AgentMethods.exportSnapshot, ExportSnapshotRequest(name: w.positional[0]))
        guard let s = r.snapshot else { throw LmctfyError.internalError("the agent sent no snapshot") }
        let bytes = w.flags.contains("--text") ? Array(s.textFormatString.utf8) : try s.serializedBytes()
        if let file = w.values["-o"] {
            try Sys.writeOutputFile(file, bytes, mode: 0o600)
        } else {
            stdout.write(bytes)
        }
        return 0
    }

    /// A snapshot file: the binary encoding, or protobuf text format.
    static func readSnapshot(_ file: String) throws -> ContainerSnapshot {
        let bytes: [UInt8]
        if file == "-" {
            var out: [UInt8] = []
            var buf = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = read(0, &buf, buf.count)
                if n <= 0 { break }
                out += buf[0..<n]
            }
            bytes = out
        } else {
            do { bytes = try Sys.readBytes(file) } catch {
                throw LmctfyError.notFound("Cannot read \(file): \(error)")
            }
        }
        if let s = try? ContainerSnapshot(serializedBytes: bytes), s.formatVersion != nil { return s }
        do {
            return try ContainerSnapshot(textFormat: String(decoding: bytes, as: UTF8.self))
        } catch {
            throw LmctfyError.invalidArgument("\(file) is not a container snapshot (neither its binary nor its text form): \(error)")
        }
    }

    static func importFile(_ args: [String], dial: Dial, stdout: any ByteSink) throws -> Int32 {
        let w = try Words(args, values: ["--name"], flags: ["--start"])
        guard w.positional.count == 1 else { throw LmctfyError.invalidArgument("usage: snapshot import FILE [--name N] [--start]") }
        let s = try readSnapshot(w.positional[0])
        let client = try dial()
        defer { client.close() }
        let r = try client.call(AgentMethods.importSnapshot, ImportSnapshotRequest(
            snapshot: s, name: w.values["--name"], start: w.flags.contains("--start"), requestId: requestId()))
        var text = "\(r.name ?? "")\n"
        for pid in r.startedPid { text += "started pid \(pid)\n" }
        stdout.write(Array(text.utf8))
        return 0
    }

    static func requestId() -> String {
        ((try? Sys.randomBytes(12)) ?? []).map { String($0, radix: 16) }.joined()
    }

    // MARK: checkpoint / restore

    static func checkpoint(_ args: [String], dial: Dial, stdout: any ByteSink) throws -> Int32 {
        let w = try Words(args, values: [], flags: ["--leave-running"])
        guard w.positional.count == 2 else { throw LmctfyError.invalidArgument("usage: checkpoint NAME DIR [--leave-running]") }
        let client = try dial()
        defer { client.close() }
        let r = try client.call(AgentMethods.checkpoint, CheckpointRequest(
            name: w.positional[0], imagesDir: w.positional[1], leaveRunning: w.flags.contains("--leave-running"),
            requestId: requestId()))
        stdout.write(Array("\(r.imagesDir ?? "")\n".utf8))
        return 0
    }

    static func restore(_ args: [String], dial: Dial, stdout: any ByteSink) throws -> Int32 {
        let w = try Words(args, values: ["--name"], flags: [])
        guard w.positional.count == 1 else { throw LmctfyError.invalidArgument("usage: restore DIR [--name N]") }
        let client = try dial()
        defer { client.close() }
        let r = try client.call(AgentMethods.restore, RestoreRequest(
            imagesDir: w.positional[0], name: w.values["--name"], requestId: requestId()))
        stdout.write(Array("\(r.name ?? "")\n".utf8))
        return 0
    }

    // MARK: migrate

    static func migrateDirect(_ args: [String], dial: @escaping Dial, stdout: any ByteSink) throws -> Int32 {
        let w = try Words(args, values: ["--to", "--to-key-file", "--timeout"], flags: ["--force"])
        guard w.positional.count == 1, let to = w.values["--to"] else {
            throw LmctfyError.invalidArgument("usage: migrate NAME --to unix://PATH|tcp://HOST:PORT [--to-key-file FILE] [--timeout SECONDS] [--force]")
        }
        let keyFile = w.values["--to-key-file"]
        let target: Dial = { () throws(LmctfyError) in try LmctlCLI.dial(to, keyFile: keyFile, flag: "--to") }
        return try migrate(w.positional[0], from: dial, to: target, toName: to, force: w.flags.contains("--force"),
                           timeoutMs: try timeoutMs(w.values["--timeout"]), stdout: stdout)
    }

    /// The default of `migrate --timeout`, in seconds.
    static let defaultTimeoutSeconds: UInt32 = 30

    /// `--timeout SECONDS` (1 to 3600) in milliseconds.
    static func timeoutMs(_ text: String?) throws(LmctfyError) -> UInt32 {
        guard let text else { return defaultTimeoutSeconds * 1000 }
        guard let seconds = UInt32(text), (1...3600).contains(seconds) else {
            throw .invalidArgument("--timeout wants whole seconds from 1 to 3600, not \"\(text)\"")
        }
        return seconds * 1000
    }

    /// `--controller ... migrate NAME --from HOST --to HOST`: both sides
    /// through the controller (Frame.host), driven from here.
    static func migrateThroughController(_ words: [String], dial: @escaping Dial, stdout: any ByteSink,
                                         stderr: any ByteSink) -> Int32 {
        do {
            var args = words
            args.removeFirst()
            let w = try Words(args, values: ["--from", "--to", "--timeout"], flags: ["--force"])
            guard w.positional.count == 1, let from = w.values["--from"], let to = w.values["--to"] else {
                throw LmctfyError.invalidArgument("usage: lmctl --controller ... migrate NAME --from HOST --to HOST [--timeout SECONDS] [--force]")
            }
            guard from != to else { throw LmctfyError.invalidArgument("--from and --to name the same host") }
            let timeout = try timeoutMs(w.values["--timeout"])
            return try ProgressLine.around(stderr: stderr) {
                try migrate(w.positional[0], from: LmctlCLI.routed(dial, to: from), to: LmctlCLI.routed(dial, to: to),
                            toName: "host \(to)", force: w.flags.contains("--force"), timeoutMs: timeout, stdout: stdout)
            }
        } catch {
            return fail(error, stderr)
        }
    }

    enum Step: String { case pause, export, `import`, destroy }

    /// How long a call lost to UNAVAILABLE is tried again on new connections
    /// (an agent restarting: its socket refuses for a moment).
    static let redialMs: UInt64 = 5_000

    /// `body` on `client`; if it fails with UNAVAILABLE (the connection
    /// lost: the agent killed, restarting), once more on a new connection
    /// from `dial`, dialled again while it is refused for up to `redialMs`
    /// (PROTOCOL.md section 6.1: a mutating request sent again with its
    /// request id answers with the first one's outcome).
    static func retried<R>(_ client: RpcClient, _ dial: Dial,
                           _ body: (RpcClient) throws(LmctfyError) -> R) throws(LmctfyError) -> R {
        do {
            return try body(client)
        } catch where error.code == .unavailable {
            return try redialed(dial, body)
        }
    }

    /// `body` on a new connection from `dial`, dialled again while it is
    /// refused for up to `redialMs`.
    static func redialed<R>(_ dial: Dial, _ body: (RpcClient) throws(LmctfyError) -> R) throws(LmctfyError) -> R {
        let end = MonotonicClock.milliseconds() + redialMs
        while true {
            let client: RpcClient
            do {
                client = try dial()
            } catch where error.code == .unavailable && MonotonicClock.milliseconds() < end {
                usleep(100_000)
                continue
            }
            defer { client.close() }
            return try body(client)
        }
    }

    /// Whether a call's failure leaves its outcome unknown (no answer).
    static func noAnswer(_ error: LmctfyError) -> Bool {
        [StatusCode.deadlineExceeded, .unavailable, .cancelled].contains(error.code)
    }

    /// Test hooks (unset by default): LMCTL_TEST_MIGRATE_FAIL_AFTER=STEP
    /// fails the migration after STEP; LMCTL_TEST_MIGRATE_HOLD_AFTER=STEP:FILE
    /// creates FILE after STEP and waits (up to 60 s) until it is removed, so
    /// that a test can stop an agent at exactly that point.
    static func injected(after step: Step) throws(LmctfyError) {
        if let v = getenv("LMCTL_TEST_MIGRATE_HOLD_AFTER"), case let hold = String(cString: v),
           hold.hasPrefix(step.rawValue + ":") {
            let file = String(hold.dropFirst(step.rawValue.count + 1))
            _ = try? Sys.createFile(file, step.rawValue + "\n")
            for _ in 0..<6000 where Sys.exists(file) { usleep(10_000) }
        }
        guard let v = getenv("LMCTL_TEST_MIGRATE_FAIL_AFTER"), String(cString: v) == step.rawValue else { return }
        throw .unavailable("failure injected after \(step.rawValue) (LMCTL_TEST_MIGRATE_FAIL_AFTER)")
    }

    /// How much longer than the migration's own timeout the source's freeze
    /// is leased: lmctl itself undoes a migration that timed out, well
    /// before; the lease thaws the source when lmctl (or the controller it
    /// goes through) is lost part way.
    static let leaseMarginMs: UInt32 = 10_000

    /// The longest lease an agent takes (PauseRequest.lease_ms).
    static let maxLeaseMs: UInt32 = 3_600_000

    /// How long the target may take to answer the Ping that comes before
    /// anything is touched (at most the whole timeout).
    static let pingMs: UInt32 = 5_000

    /// Moves `name`: the target must answer first; then the source is frozen
    /// under a lease, its snapshot taken again, imported on the target
    /// frozen (its processes started, then held), the source destroyed, and
    /// the copy thawed (unless the source was frozen before). At no moment
    /// do both copies run. Every call has what is left of `timeoutMs` as its
    /// deadline; a target that stops answering is given up at the timeout
    /// (its agent then drops the import it had not finished) and the source
    /// thawed. If lmctl or the controller is lost part way, the source's
    /// agent thaws it when the lease runs out.
    static func migrate(_ name: String, from source: Dial, to target: Dial, toName: String, force: Bool,
                        timeoutMs: UInt32 = defaultTimeoutSeconds * 1000, stdout: any ByteSink) throws -> Int32 {
        let t0 = MonotonicClock.nanoseconds()
        let end = MonotonicClock.milliseconds() + UInt64(timeoutMs)
        /// What is left of the timeout, as a call's deadline.
        func left(_ step: String) throws(LmctfyError) -> UInt32 {
            let now = MonotonicClock.milliseconds()
            guard now + 1 < end else {
                throw LmctfyError(.deadlineExceeded, "the migration's timeout (\(timeoutMs / 1000) s, --timeout) ran out before \(step)")
            }
            return UInt32(end - now)
        }
        let src = try source()
        defer { src.close() }
        let dst: RpcClient
        do throws(LmctfyError) { dst = try target() } catch {
            throw LmctfyError(error.code, "migrate \(name): \(toName) does not answer (\(error.message)); nothing was touched",
                              errno: error.errno)
        }
        defer { dst.close() }
        // On a terminal, each step on stderr's progress line (ProgressLine).
        Progress.report("migrate \(name): checking that \(toName) answers")
        do {
            _ = try dst.call(AgentMethods.ping, PingRequest(), deadlineMs: min(pingMs, try left("the target's ping")))
        } catch {
            throw LmctfyError(error.code, "migrate \(name): \(toName) does not answer (\(error.message)); nothing was touched")
        }
        Progress.report("migrate \(name): taking its snapshot")
        let before = try src.call(AgentMethods.exportSnapshot, ExportSnapshotRequest(name: name), deadlineMs: try left("the snapshot"))
        guard var snapshot = before.snapshot else { throw LmctfyError.internalError("the source sent no snapshot") }
        // Frozen under a lease: a migration of it is under way, or one was
        // cut short (lmctl killed) and its agent thaws it at the lease's
        // end. Taken for frozen by the user, its copy stayed frozen for good.
        if let ms = before.freezeLeaseMs {
            throw LmctfyError(.aborted,
                "\(name) is frozen under a lease, \(ms / 1000 + (ms % 1000 > 0 ? 1 : 0)) s left: a migration of it is under way, or one was cut short and the freeze ends by itself then; wait, or resume it first; nothing was touched")
        }
        // A snapshot is of one container, and brings back only the processes
        // the agent started: what else would be destroyed with the source
        // is refused first, nothing touched.
        if !before.subcontainer.isEmpty {
            throw LmctfyError.failedPrecondition(
                "\(name) has subcontainers (\(before.subcontainer.joined(separator: ", "))): a snapshot is of one container; move or destroy them first")
        }
        if !before.unrecordedPid.isEmpty && !force {
            throw LmctfyError.failedPrecondition(
                "\(name) runs processes the agent did not start (pids \(before.unrecordedPid.map(String.init).joined(separator: " "))): they would be killed with the source and not started on the target; --force to migrate anyway")
        }
        let wasFrozen = snapshot.frozen == true
        // Which container the source is (its cgroup's inode): every later
        // call on it carries it, so that one destroyed and made again under
        // its name by another caller meanwhile is never frozen, destroyed
        // or thawed in its place (the copy's destroy took such a one, its
        // processes killed, and said "migrated"; a probe). Likewise the copy.
        let sourceId = snapshot.cgroupId
        var copyId: UInt64?
        var frozeIt = false
        /// The import's outcome: true made, nil unknown (no answer).
        var made: Bool? = false
        var sourceGone = false
        do {
            if !wasFrozen {
                Progress.report("migrate \(name): freezing it")
                let lease = try left("the freeze")
                _ = try src.call(AgentMethods.pause, PauseRequest(name: name, requestId: requestId(),
                                                                   leaseMs: min(lease + leaseMarginMs, maxLeaseMs), cgroupId: sourceId),
                                 deadlineMs: lease)
                frozeIt = true
                try injected(after: .pause)
                // Taken again while frozen: its processes cannot change under us.
                guard let s = try src.call(AgentMethods.exportSnapshot, ExportSnapshotRequest(name: name),
                                           deadlineMs: try left("the frozen snapshot")).snapshot else {
                    throw LmctfyError.internalError("the source sent no snapshot")
                }
                if let sourceId, let now = s.cgroupId, now != sourceId {
                    throw LmctfyError(.aborted, "\(name) was destroyed and made again by another caller meanwhile: not the container this migration froze")
                }
                snapshot = s
            }
            try injected(after: .export)
            // Imported frozen: its processes start and are held at once, and
            // run only once the source is gone.
            snapshot.frozen = true
            Progress.report("migrate \(name): importing it on \(toName)")
            let deadline = try left("the import")
            made = nil
            let r: ImportSnapshotResponse
            do throws(LmctfyError) {
                r = try dst.call(AgentMethods.importSnapshot, ImportSnapshotRequest(
                    snapshot: snapshot, name: name, start: true, requestId: requestId()), deadlineMs: deadline)
            } catch {
                // Refused: nothing made there. No answer: not known.
                if !noAnswer(error) { made = false }
                throw error
            }
            made = true
            copyId = r.cgroupId
            try injected(after: .import)
            // The copy still there, frozen, and the one imported (another
            // caller may have destroyed it meanwhile: the source was then
            // destroyed too, and no copy was left; a probe): frozen again
            // under its identity, which says NOT_FOUND or ABORTED otherwise.
            let checkDeadline = try left("the copy's check")
            let recheck = PauseRequest(name: name, requestId: requestId(), cgroupId: copyId)
            var lost: LmctfyError?
            do throws(LmctfyError) {
                _ = try dst.call(AgentMethods.pause, recheck, deadlineMs: checkDeadline)
            } catch {
                guard error.code == .notFound || error.code == .aborted else { throw error }
                lost = error
            }
            if let lost {
                made = false  // not ours to remove any more
                throw LmctfyError(lost.code, "its copy on \(toName) was destroyed (or made again) by another caller after the import: \(lost.message)")
            }
            try injected(after: .destroy)
            Progress.report("migrate \(name): destroying the source")
            let destroy = DestroyRequest(name: name, force: true, requestId: requestId(), cgroupId: sourceId)
            let destroyDeadline = try left("the source's destroy")
            do throws(LmctfyError) {
                _ = try src.call(AgentMethods.destroy, destroy, deadlineMs: destroyDeadline)
            } catch {
                // Refused: the source is still there; undone below.
                guard noAnswer(error) else { throw error }
                // No answer: which copy stays depends on whether the source
                // went. The same request again (same id, on a new connection
                // if that one is gone) answers with the first one's outcome,
                // waiting for it if it still runs, or does it now if it never
                // started (PROTOCOL.md section 6.1): the move goes forward.
                Progress.report("migrate \(name): the source's destroy got no answer; asking again")
                do throws(LmctfyError) {
                    // (A connection that is gone fails at once: then on a new one.)
                    _ = try retried(src, source) { c throws(LmctfyError) in try c.call(AgentMethods.destroy, destroy, deadlineMs: 2 * pingMs) }
                } catch {
                    if noAnswer(error) {
                        sourceGone = true  // not known: nothing is undone
                        throw LmctfyError(error.code, "migrate \(name): the source's destroy got no answer, twice (\(error.message)): the container may be on both hosts, frozen on \(toName) (the source's agent thaws its copy when the freeze's lease runs out, if it is there); check the source, then resume or destroy the copy on \(toName)")
                    }
                    // NOT_FOUND: gone. Anything else: still there, undone below.
                    guard error.code == .notFound else { throw error }
                }
            }
            sourceGone = true
            if !wasFrozen {
                Progress.report("migrate \(name): starting it on \(toName)")
                // Given some time even past the timeout: the move is done.
                let deadline = max((try? left("the copy's thaw")) ?? 0, pingMs)
                do throws(LmctfyError) {
                    let resume = ResumeRequest(name: name, requestId: requestId(), cgroupId: copyId)
                    _ = try retried(dst, target) { c throws(LmctfyError) in try c.call(AgentMethods.resume, resume, deadlineMs: deadline) }
                } catch {
                    throw LmctfyError(error.code, "migrate \(name): moved to \(toName), but its copy there could not be thawed and is still frozen (\(error.message)): resume it there")
                }
            }
            let us = (MonotonicClock.nanoseconds() - t0) / 1000
            var text = "migrated \(name) to \(toName) in \(us / 1000).\(us % 1000 / 100) ms"
            if !r.startedPid.isEmpty { text += " (started pids \(r.startedPid.map(String.init).joined(separator: " ")))" }
            stdout.write(Array((text + "\n").utf8))
            return 0
        } catch let error as LmctfyError where sourceGone {
            throw error
        } catch {
            // Undo: the target clean, the source running as it was.
            Progress.report("migrate \(name): failed; undoing")
            var notes: [String] = []
            if made == true {
                let destroy = DestroyRequest(name: name, force: true, requestId: requestId(), cgroupId: copyId)
                do { _ = try retried(dst, target) { c throws(LmctfyError) in try c.call(AgentMethods.destroy, destroy, deadlineMs: pingMs) } } catch {
                    notes.append("the target's copy could not be removed: \(error); it stays frozen there")
                }
            } else if made == nil {
                // No answer: the target's agent drops an import whose caller
                // gave up (cancelled, past its deadline, connection gone)
                // unless it had already answered.
                notes.append("\(toName) did not answer the import: its agent drops an import it had not finished when the caller gives up (or at its next start, if it died); one it finished just then stays there frozen (see its list)")
            }
            if frozeIt {
                let resume = ResumeRequest(name: name, requestId: requestId(), cgroupId: sourceId)
                do { _ = try retried(src, source) { c throws(LmctfyError) in try c.call(AgentMethods.resume, resume, deadlineMs: pingMs) } } catch {
                    switch error.code {
                    case .notFound: notes.append("the source is gone (destroyed by another caller meanwhile)")
                    case .aborted: notes.append("the source was destroyed and made again by another caller meanwhile: that new container was left alone")
                    default: notes.append("the source could not be thawed: \(error); its agent thaws it when the freeze's lease runs out")
                    }
                }
            }
            let e = error as? LmctfyError ?? LmctfyError(.unknown, "\(error)")
            // Neither frozen nor made by this migration (its freeze refused,
            // another's lease held): it touched nothing, and says only that
            // (it said the source keeps running while another migration
            // was moving it; a probe).
            let undone = !frozeIt && made == false && notes.isEmpty ? "; this migration touched nothing"
                : notes.isEmpty ? "; the source keeps running, the target is clean" : "; " + notes.joined(separator: "; ")
            throw LmctfyError(e.code, "migrate \(name) failed: \(e.message)\(undone)")
        }
    }
}
