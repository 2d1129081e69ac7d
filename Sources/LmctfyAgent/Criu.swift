// CRIU, for live checkpoint and restore (issue #13; README "Moving
// containers"). The agent runs `criu check` once when it starts and reports
// the outcome in MachineInfo; Checkpoint and Restore use CRIU only when the
// check passed and otherwise refuse with UNIMPLEMENTED saying why. Debian
// 12's CRIU 3.17 fails its own check on this project's test machines
// ("vdso: Unexpected rt vDSO area bounds" on a 6.x kernel), so there only
// the refusal is exercised; the dump and restore commands below are what
// CRIU's documentation gives for a process tree in a v1 cgroup container.
import Glibc
import LmctfyProto
import LmctfySystem

/// What a tool printed and how it ended.
struct ToolOutcome: Sendable {
    var status: ExitStatus?
    var output: String
    var ok: Bool { if case .exited(0)? = status { true } else { false } }
}

enum Tool {
    /// Runs `argv` with stdout and stderr captured (the first 64 KiB), stdin
    /// on /dev/null, killed after `timeoutMs`; nil status when it could not
    /// be started or was killed for the timeout.
    static func run(_ argv: [String], timeoutMs: Int32 = 60_000) -> ToolOutcome {
        let fds: [Int32]
        do {
            let (r, w) = try Sys.pipe()
            fds = [r, w]
        } catch {
            return ToolOutcome(status: nil, output: "\(error)")
        }
        var options = SpawnOptions(argv: argv)
        options.stdin = .devNull
        options.stdout = .fd(fds[1])
        options.stderr = .fd(fds[1])
        let pid: pid_t
        do {
            pid = try Spawn.spawn(options)
        } catch {
            close(fds[0]); close(fds[1])
            return ToolOutcome(status: nil, output: "\(argv[0]): \(error)")
        }
        close(fds[1])
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        let deadline = MonotonicClock.milliseconds() + UInt64(timeoutMs)
        var timedOut = false
        while true {
            let now = MonotonicClock.milliseconds()
            if now >= deadline { timedOut = true; break }
            guard (try? EventFds.waitReadable(fds[0], timeoutMs: Int32(min(deadline - now, 1000)))) == true else { continue }
            let n = read(fds[0], &buf, buf.count)
            if n <= 0 { break }
            if out.count < 65536 { out += buf[0..<n] }
        }
        close(fds[0])
        if timedOut { _ = try? Sys.kill(pid, SIGKILL) }
        let status = try? Sys.waitForExit(pid)
        let text = String(decoding: out, as: UTF8.self)
        return ToolOutcome(status: timedOut ? nil : status, output: timedOut ? text + "\n(killed after \(timeoutMs) ms)" : text)
    }
}

/// The CRIU probe: run once, then read by MachineInfo, Checkpoint and Restore.
public final class CriuProbe: Sendable {
    private let result = Mutexed<CriuStatus?>(nil)
    private let done = Latch()
    /// The criu binary (LMCTFY_CRIU overrides it, for tests).
    let binary: String

    public init(binary: String? = nil) {
        self.binary = binary ?? (getenv("LMCTFY_CRIU").map { String(cString: $0) } ?? "criu")
    }

    /// Starts the probe on a thread of its own (`criu check` takes a while).
    public func start() {
        let binary = self.binary
        Threads.detach { [self] in
            let status = Self.probe(binary)
            result.locked { $0 = status }
            done.signal()
        }
    }

    /// The probe's outcome; waits for it if it is still running.
    public var status: CriuStatus {
        done.wait()
        return result.locked { $0 } ?? CriuStatus(usable: false, reason: "the probe did not run")
    }

    static func probe(_ binary: String) -> CriuStatus {
        let version = Tool.run([binary, "--version"], timeoutMs: 10_000)
        guard version.status != nil else {
            return CriuStatus(usable: false, reason: "CRIU is not installed (\(binary) could not be run: \(firstLine(version.output)))")
        }
        let v = version.output.split(separator: "\n").first { $0.hasPrefix("Version:") }
            .map { String($0.dropFirst("Version:".count)).trimmingWhitespace } ?? firstLine(version.output)
        let check = Tool.run([binary, "check"], timeoutMs: 30_000)
        if check.ok { return CriuStatus(usable: true, version: v) }
        // CRIU prints its errors one per line, the cause first.
        let errors = check.output.split(separator: "\n").filter { $0.contains("Error") }
        let why = errors.first { !$0.contains("util.c") }.map(String.init) ?? firstLine(check.output)
        return CriuStatus(usable: false, version: v, reason: "`criu check` fails on this host: \(why)")
    }

    static func firstLine(_ s: String) -> String {
        String(s.split(separator: "\n").first ?? "no output").trimmingWhitespace
    }
}
