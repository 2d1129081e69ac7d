// One daemon per state directory: an agent's or a controller's state
// (journals, snapshots, cursors, the host inventory) is written by one
// process at a time.
import Glibc

/// Held from `init` until `release` (or until it goes).
public final class StateDirLock: Sendable {
    private let fd: Mutexed<Int32>

    /// Locks `stateDir`/`daemon`.lock, waiting at most 2 s, and writes this
    /// process's pid there: two daemons on one state_dir would both append
    /// to its journals and rewrite each other's files (a second agent with
    /// the same socket ran the whole recovery before failing to bind; a
    /// second controller started and rewrote the fleet's sequence). Another
    /// holder is FAILED_PRECONDITION naming its pid.
    public init(_ stateDir: String, daemon: String) throws(LmctfyError) {
        fd = Mutexed(try Self.acquire(stateDir, daemon: daemon))
    }

    deinit { release() }

    /// Unlocks it (once): another daemon may take the state_dir now.
    public func release() {
        let held = fd.locked { fd in defer { fd = -1 }; return fd }
        if held >= 0 { close(held) }
    }

    private static func acquire(_ stateDir: String, daemon: String) throws(LmctfyError) -> Int32 {
        let path = stateDir + "/\(daemon).lock"
        let fd: Int32
        do { fd = try Sys.open(path, O_RDWR | O_CREAT | O_CLOEXEC, mode: 0o600) } catch { throw error.lmctfy(.failedPrecondition, "Cannot lock the state_dir") }
        // A lock just released can still be held for a moment by a copy of
        // its descriptor: a child forked (by the daemon before, or by this
        // process) that has not exec'd yet. Up to 2 s is given for that.
        var (r, le) = Sys.retry { Sys.flockExclusiveNow(fd) }
        for _ in 0..<100 where r < 0 && le == EWOULDBLOCK {
            usleep(20_000)
            (r, le) = Sys.retry { Sys.flockExclusiveNow(fd) }
        }
        if r < 0 {
            let holder = (try? Sys.readAll(fd, path: path, maxBytes: 64)).map { String(decoding: $0, as: UTF8.self).trimmingWhitespace } ?? ""
            close(fd)
            if le == EWOULDBLOCK {
                throw .failedPrecondition("state_dir \(stateDir) is in use by another \(daemon)\(holder.isEmpty ? "" : " (pid \(holder))"): "
                                          + "two \(daemon)s cannot share one")
            }
            throw SystemError("flock", path, le).lmctfy(.failedPrecondition, "Cannot lock the state_dir")
        }
        let pid = Array("\(Sys.getpid())\n".utf8)
        _ = ftruncate(fd, 0)
        _ = pid.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
        return fd
    }
}
