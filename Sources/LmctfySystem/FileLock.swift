// An advisory lock between processes: flock(2) on a file, which the kernel
// releases when the holder exits, however it exits (kill -9 included). The
// locked file doubles as a small journal: the holder writes what it is about
// to do, so the next holder can finish or undo the work of one that died.
import CLmctfyShims
import Glibc

/// An exclusive flock on a file, held until `release` (or deinit).
///
/// Thread-safety: one thread at a time. Two FileLocks on the same path
/// exclude each other even within one process (each has its own open file
/// description).
extension Sys {
    /// flock(2) LOCK_EX | LOCK_NB: 0, or -1 with errno (EWOULDBLOCK while
    /// another holds the lock).
    public static func flockExclusiveNow(_ fd: Int32) -> Int32 { lm_flock_exclusive_now(fd) }
}

public final class FileLock {
    public let path: String
    private var fd: Int32
    private let faults: FaultPlan?
    /// Where `remove` retires the file instead of unlinking it (nil: unlinks).
    private let spares: SpareFiles?
    /// Where the next journal line goes.
    private var end: Int

    private init(path: String, fd: Int32, faults: FaultPlan?, spares: SpareFiles?) {
        self.path = path
        self.fd = fd
        self.faults = faults
        self.spares = spares
        self.end = 0
    }

    /// Opens (creating it with `mode`) and locks `path`, waiting for the
    /// holder to let go. The descriptor is close-on-exec. A holder may
    /// remove the file (`remove`): whoever was waiting then holds a lock on
    /// a file no longer at `path`, notices (the inode at `path` differs or
    /// is gone) and starts again on the file that is there now.
    ///
    /// With `spares`, `remove` retires the file into that pool instead of
    /// unlinking it, and with `fresh` (the caller expects no file at `path`:
    /// the create of a tree) a spare is first put at `path` if none is
    /// there, so that no inode is allocated (SpareFiles).
    public static func acquire(_ path: String, mode: mode_t = 0o600, faults: FaultPlan? = nil,
                               spares: SpareFiles? = nil, fresh: Bool = false) throws(SystemError) -> FileLock {
        if fresh, mode == 0o600, let spares { _ = spares.take(to: path) }
        while true {
            let (fd, e) = Sys.retry { Sys.injected(faults, .open, path) { Glibc.open(path, O_RDWR | O_CREAT | O_CLOEXEC, mode) } }
            if fd < 0 { throw SystemError("open", path, e) }
            let (r, le) = Sys.retry { Sys.injected(faults, .flock, path) { lm_flock_exclusive(fd) } }
            if r < 0 {
                close(fd)
                throw SystemError("flock", path, le)
            }
            var held = stat(), there = stat()
            guard fstat(fd, &held) == 0 else {
                let e = errno
                close(fd)
                throw SystemError("fstat", path, e)
            }
            if stat(path, &there) != 0 || there.st_ino != held.st_ino || there.st_dev != held.st_dev {
                close(fd)  // removed (or replaced) while we waited
                continue
            }
            let lock = FileLock(path: path, fd: fd, faults: faults, spares: spares)
            // The size as locked: only a holder writes, and we hold it now.
            lock.end = Int(held.st_size)
            return lock
        }
    }

    /// Removes the lock file while holding it (its tree is gone); the lock
    /// is released. Waiters start again on a new file (see `acquire`).
    /// With a pool (`acquire`'s `spares`) the file is retired there,
    /// emptied, when it can be; otherwise unlinked.
    public func remove() throws(SystemError) {
        if fd >= 0, let spares, spares.retire(fd: fd, path: path) {
            release()
            return
        }
        let (r, e) = Sys.retry { Sys.injected(faults, .unlink, path) { unlink(path) } }
        if r < 0 && e != ENOENT { throw SystemError("unlink", path, e) }
        release()
    }

    /// What the journal holds: left by a holder that did not finish (it
    /// died, or could not undo its work), or "" when the last one finished.
    public func journal() throws(SystemError) -> String {
        // Empty as locked and nothing appended since (the usual case: the
        // last holder finished): no read.
        if end == 0 { return "" }
        var out = [UInt8]()
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let offset = out.count
            let (n, e) = buf.withUnsafeMutableBytes { b in
                Sys.retry { Sys.injected(faults, .read, path) { pread(fd, b.baseAddress, b.count, off_t(offset)) } }
            }
            if n < 0 { throw SystemError("pread", path, e) }
            if n == 0 { break }
            out += buf[0..<n]
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Whether the file belongs to this process's effective user: only
    /// then was its journal written by someone as privileged as we are (a
    /// delegated tree's lock file is its owner's, who could write lines
    /// root would act on).
    public var isOwnedBySelf: Bool {
        var st = stat()
        return fstat(fd, &st) == 0 && st.st_uid == geteuid()
    }

    /// Appends a line to the journal.
    public func append(_ line: String) throws(SystemError) {
        let bytes = Array((line + "\n").utf8)
        let offset = end
        let (n, e) = bytes.withUnsafeBytes { b in
            Sys.retry { Sys.injected(faults, .write, path) { pwrite(fd, b.baseAddress, b.count, off_t(offset)) } }
        }
        if n < 0 { throw SystemError("pwrite", path, e) }
        if n != bytes.count { throw SystemError("pwrite", path, EIO) }
        end += n
    }

    /// Empties the journal: the work it described is done (or undone).
    public func clear() throws(SystemError) {
        let (r, e) = Sys.retry { Sys.injected(faults, .write, path) { ftruncate(fd, 0) } }
        if r < 0 { throw SystemError("ftruncate", path, e) }
        end = 0
    }

    /// Hands the lock file to a user and group (the owner of a delegated
    /// container locks its own tree).
    public func chown(uid: uid_t, gid: gid_t) throws(SystemError) {
        let (r, e) = Sys.retry { Sys.injected(faults, .chown, path) { fchown(fd, uid, gid) } }
        if r < 0 { throw SystemError("fchown", path, e) }
    }

    /// Lets go of the lock (closing the descriptor does).
    public func release() {
        if fd >= 0 { close(fd) }
        fd = -1
    }

    deinit { release() }
}
