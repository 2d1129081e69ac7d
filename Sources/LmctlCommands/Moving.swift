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
        let w = try Words(args, values: ["--to", "--to-key-file"], flags: ["--force"])
        guard w.positional.count == 1, let to = w.values["--to"] else {
            throw LmctfyError.invalidArgument("usage: migrate NAME --to unix://PATH|tcp://HOST:PORT [--to-key-file FILE] [--force]")
        }
        let keyFile = w.values["--to-key-file"]
        let target: Dial = { () throws(LmctfyError) in try LmctlCLI.dial(to, keyFile: keyFile, flag: "--to") }
        return try migrate(w.positional[0], from: dial, to: target, toName: to, force: w.flags.contains("--force"),
                           stdout: stdout)
    }

    /// `--controller ... migrate NAME --from HOST --to HOST`: both sides
    /// through the controller (Frame.host), driven from here.
    static func migrateThroughController(_ words: [String], dial: @escaping Dial, stdout: any ByteSink,
                                         stderr: any ByteSink) -> Int32 {
        do {
            var args = words
            args.removeFirst()
            let w = try Words(args, values: ["--from", "--to"], flags: ["--force"])
            guard w.positional.count == 1, let from = w.values["--from"], let to = w.values["--to"] else {
                throw LmctfyError.invalidArgument("usage: lmctl --controller ... migrate NAME --from HOST --to HOST [--force]")
            }
            guard from != to else { throw LmctfyError.invalidArgument("--from and --to name the same host") }
            return try ProgressLine.around(stderr: stderr) {
                try migrate(w.positional[0], from: LmctlCLI.routed(dial, to: from), to: LmctlCLI.routed(dial, to: to),
                            toName: "host \(to)", force: w.flags.contains("--force"), stdout: stdout)
            }
        } catch {
            return fail(error, stderr)
        }
    }

    enum Step: String { case pause, export, `import`, destroy }

    static func injected(after step: Step) throws(LmctfyError) {
        guard let v = getenv("LMCTL_TEST_MIGRATE_FAIL_AFTER"), String(cString: v) == step.rawValue else { return }
        throw .unavailable("failure injected after \(step.rawValue) (LMCTL_TEST_MIGRATE_FAIL_AFTER)")
    }

    static func migrate(_ name: String, from source: Dial, to target: Dial, toName: String, force: Bool,
                        stdout: any ByteSink) throws -> Int32 {
        let t0 = MonotonicClock.nanoseconds()
        let src = try source()
        defer { src.close() }
        let dst = try target()
        defer { dst.close() }
        // On a terminal, each step on stderr's progress line (ProgressLine).
        Progress.report("migrate \(name): taking its snapshot")
        let before = try src.call(AgentMethods.exportSnapshot, ExportSnapshotRequest(name: name))
        guard var snapshot = before.snapshot else { throw LmctfyError.internalError("the source sent no snapshot") }
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
        var frozeIt = false
        var made: String?
        do {
            if !wasFrozen {
                Progress.report("migrate \(name): freezing it")
                _ = try src.call(AgentMethods.pause, PauseRequest(name: name, requestId: requestId()))
                frozeIt = true
                try injected(after: .pause)
                // Taken again while frozen: its processes cannot change under us.
                guard let s = try src.call(AgentMethods.exportSnapshot, ExportSnapshotRequest(name: name)).snapshot else {
                    throw LmctfyError.internalError("the source sent no snapshot")
                }
                snapshot = s
            }
            try injected(after: .export)
            // Arrives as it was before we froze it.
            snapshot.frozen = wasFrozen
            Progress.report("migrate \(name): importing it on \(toName)")
            let r = try dst.call(AgentMethods.importSnapshot, ImportSnapshotRequest(
                snapshot: snapshot, name: name, start: true, requestId: requestId()))
            made = r.name ?? name
            try injected(after: .import)
            try injected(after: .destroy)
            Progress.report("migrate \(name): destroying the source")
            _ = try src.call(AgentMethods.destroy, DestroyRequest(name: name, force: true, requestId: requestId()))
            let us = (MonotonicClock.nanoseconds() - t0) / 1000
            var text = "migrated \(name) to \(toName) in \(us / 1000).\(us % 1000 / 100) ms"
            if !r.startedPid.isEmpty { text += " (started pids \(r.startedPid.map(String.init).joined(separator: " ")))" }
            stdout.write(Array((text + "\n").utf8))
            return 0
        } catch {
            // Undo: the target clean, the source running as it was.
            Progress.report("migrate \(name): failed; undoing")
            var notes: [String] = []
            if made != nil {
                do { _ = try dst.call(AgentMethods.destroy, DestroyRequest(name: name, force: true, requestId: requestId())) } catch {
                    notes.append("the target's copy could not be removed: \(error)")
                }
            }
            if frozeIt {
                do { _ = try src.call(AgentMethods.resume, ResumeRequest(name: name, requestId: requestId())) } catch {
                    notes.append("the source could not be thawed: \(error)")
                }
            }
            let e = error as? LmctfyError ?? LmctfyError(.unknown, "\(error)")
            let undone = notes.isEmpty ? "; the source keeps running, the target is clean" : "; " + notes.joined(separator: "; ")
            throw LmctfyError(e.code, "migrate \(name) failed: \(e.message)\(undone)")
        }
    }
}
