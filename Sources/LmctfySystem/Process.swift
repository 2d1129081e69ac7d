// Waiting for a child process: the one waitpid loop, and the decoding of its
// status word.
import Glibc

/// How a child process ended.
public enum ExitStatus: Sendable, Equatable, CustomStringConvertible {
    /// It called exit (or returned from main) with this code, 0...255.
    case exited(Int32)
    /// A signal ended it.
    case signaled(Int32)

    /// Decodes waitpid(2)'s status word for a process that ended (the
    /// WIFEXITED/WEXITSTATUS/WTERMSIG macros, which Swift does not import).
    public init(waitStatus status: Int32) {
        let signal = status & 0x7F
        self = signal == 0 ? .exited((status >> 8) & 0xFF) : .signaled(signal)
    }

    /// The status as a shell reports it: the exit code, or 128 + the signal.
    public var shellStatus: Int32 {
        switch self {
        case .exited(let code): code
        case .signaled(let signal): 128 + signal
        }
    }

    /// The exit code, or nil if a signal ended the process.
    public var exitCode: Int32? {
        if case .exited(let code) = self { return code }
        return nil
    }

    /// The signal that ended the process, or nil if it exited.
    public var signal: Int32? {
        if case .signaled(let signal) = self { return signal }
        return nil
    }

    public var description: String {
        switch self {
        case .exited(let code): "exited with \(code)"
        case .signaled(let signal): "killed by signal \(signal)"
        }
    }
}

extension Sys {
    /// Waits for our child `pid` to end and reaps it (waitpid(2), EINTR
    /// retried). Throws ECHILD when `pid` is not an unreaped child of ours.
    public static func waitForExit(_ pid: pid_t) throws(SystemError) -> ExitStatus {
        var status: Int32 = 0
        let (r, e) = retry { waitpid(pid, &status, 0) }
        if r < 0 { throw SystemError("waitpid", "pid \(pid)", e) }
        return ExitStatus(waitStatus: status)
    }

    /// Reaps our child `pid` if it has ended (waitpid with WNOHANG); nil
    /// while it still runs. Throws ECHILD when `pid` is not an unreaped
    /// child of ours.
    public static func exitStatusIfExited(_ pid: pid_t) throws(SystemError) -> ExitStatus? {
        var status: Int32 = 0
        let (r, e) = retry { waitpid(pid, &status, WNOHANG) }
        if r < 0 { throw SystemError("waitpid", "pid \(pid)", e) }
        return r == 0 ? nil : ExitStatus(waitStatus: status)
    }
}

extension Sys {
    /// The value of field `key` ("Threads", "CapEff") of a /proc status
    /// file (`path`: /proc/PID/status), its blanks trimmed; nil when the
    /// file cannot be read or has no such field.
    public static func procStatusField(_ path: String, _ key: String) -> String? {
        guard let status = try? readFile(path),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix(key + ":") }) else { return nil }
        return String(line.dropFirst(key.utf8.count + 1)).trimmingWhitespace
    }

    /// Whether this process has capability number `cap` (linux/capability.h)
    /// in its effective set, read from /proc/self/status (CapEff); false
    /// when that cannot be read.
    public static func hasEffectiveCapability(_ cap: Int) -> Bool {
        guard let hex = procStatusField("/proc/self/status", "CapEff"),
              let bits = UInt64(hex, radix: 16) else { return false }
        return cap >= 0 && cap < 64 && bits & (UInt64(1) << UInt64(cap)) != 0
    }
}

extension Sys {
    /// This process's environment (`KEY=value` entries), as `environ` holds
    /// it now. Any thread, in a process that does not change its
    /// environment once it runs threads (setenv is not thread-safe).
    public static func environment() -> [String] {
        var env: [String] = []
        var p = environ
        while let e = p.pointee {
            env.append(String(cString: e))
            p += 1
        }
        return env
    }
}

extension Sys {
    /// The session `pid` is in (/proc/PID/stat); nil when it is gone.
    public static func sessionId(_ pid: pid_t) -> pid_t? {
        guard let fields = procStatFields("/proc/\(pid)/stat"), fields.count > 3 else { return nil }
        return pid_t(fields[3])
    }
}
