// Emptied lock files kept for reuse, so that a create and a destroy of a
// top-level container neither allocate nor free an inode.
//
// Why: where /run is on an ext4 without a journal (this project's build and
// CI machines), ext4 will not hand out an inode freed in the last minutes
// again, and each allocation skips, one by one, every such inode of its
// group: a create that made its lock file and a destroy that unlinked it
// made the next create slower, ever more so the more containers came and
// went (a create took 700-1,000 us after a few minutes of create-destroy,
// against 220 us for the same cgroup work in C). With the pool a lock file
// is renamed in and out of a spare directory instead. Where nothing drifts
// (a tmpfs /run, a fresh disk) that costs ~3 us more a create and destroy
// than making and unlinking the file (in C: 10.7 against 7.4 us on tmpfs,
// 17 against 13.5 us on this ext4 in a tight loop).
//
// Safety: the spare directory is root's (0700) and lives in the lock
// directory under a name no container can have (".spare": a name starts
// with a letter or digit). Only a root-owned, 0600, singly-linked regular
// file is retired there, and only emptied (a journal must never outlive its
// tree: the next holder of another tree would act on it). A file is taken
// back with renameat2(RENAME_NOREPLACE), so a lock file already at the path
// (someone holds or waits on it) is never replaced. Waiters stay correct as
// before: whoever waited on a file that was retired gets its flock, finds
// that the inode at its path is not the one it locked (FileLock.acquire),
// and starts again. Every failure here is only a missed reuse: the caller
// then creates or unlinks as it always did.
import CLmctfyShims
import Glibc

/// A bounded pool of empty, root-owned lock files in one directory.
public final class SpareFiles: Sendable {
    /// The spare directory (the lock directory's ".spare").
    public let directory: String
    /// At most this many spares: a file is retired into one of `capacity`
    /// slots (named 0 to capacity - 1), never over another.
    public let capacity: Int

    private struct State {
        /// Spares believed to be in the directory (others may take them).
        var names: [String] = []
        /// false once the directory was found unfit (not root's, or other
        /// users may write it): nothing is pooled then.
        var usable = true
    }
    private let state = Mutexed(State())

    public init(directory: String, capacity: Int = 4096) {
        self.directory = directory
        self.capacity = capacity
    }

    /// The pool of the lock directory `lockRoot`, one per directory in a
    /// process (its names are cached between calls).
    public static func pool(for lockRoot: String) -> SpareFiles {
        pools.locked { p in
            if let pool = p[lockRoot] { return pool }
            let pool = SpareFiles(directory: lockRoot + "/.spare")
            p[lockRoot] = pool
            return pool
        }
    }
    private static let pools = Mutexed<[String: SpareFiles]>([:])

    /// Puts a spare file at `path` if nothing is there: true if it did (the
    /// file there is then an empty root-owned one, as a create would have
    /// made). Only for root.
    public func take(to path: String) -> Bool {
        guard geteuid() == 0, state.locked({ $0.usable }) else { return false }
        var listed = false
        while true {
            guard let name = state.locked({ $0.names.popLast() }) else {
                // Nothing cached: look once (a directory found unfit
                // lists nothing).
                if listed || !list() { return false }
                listed = true
                continue
            }
            if lm_rename_noreplace(directory + "/" + name, path) == 0 { return true }
            switch errno {
            case ENOENT: continue  // another process took it first
            case EEXIST:
                // Something is at the path already: it is the lock file.
                state.locked { s in s.names.append(name) }
                return false
            default: return false
            }
        }
    }

    /// Moves the lock file at `path`, held open as `fd`, into the pool,
    /// emptied: true if it did. The caller holds its flock (so nobody else
    /// moves or removes it) and unlinks it itself when this says false.
    /// The slot is chosen by the file's inode number, then at random: a
    /// full pool (three slots taken) leaves the file to be unlinked.
    public func retire(fd: Int32, path: String) -> Bool {
        guard geteuid() == 0, capacity > 0, state.locked({ $0.usable }) else { return false }
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFREG, st.st_uid == 0, st.st_gid == 0,
              st.st_mode & 0o7777 == 0o600, st.st_nlink == 1 else { return false }
        guard ftruncate(fd, 0) == 0 else { return false }
        var madeDirectory = false
        var attempt = 0
        while attempt < 3 {
            let slot = attempt == 0 ? Int(UInt64(st.st_ino) % UInt64(capacity)) : Int.random(in: 0..<capacity)
            let name = String(slot)
            if lm_rename_noreplace(path, directory + "/" + name) == 0 {
                state.locked { s in s.names.append(name) }
                return true
            }
            switch errno {
            case EEXIST: attempt += 1  // that slot holds a spare: another
            case ENOENT where !madeDirectory:
                // No spare directory yet (the first retire): made, then again.
                madeDirectory = true
                guard mkdir(directory, 0o700) == 0 || errno == EEXIST else { return false }
            default: return false
            }
        }
        return false
    }

    /// Reads (some of) the directory's names into the cache; false if there
    /// is nothing to take (or the directory is unfit: then the pool stays
    /// unused).
    private func list() -> Bool {
        let fd = Glibc.open(directory, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { return false }
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_uid == 0, st.st_mode & 0o022 == 0 else {
            close(fd)
            state.locked { $0.usable = false }
            return false
        }
        guard let dir = fdopendir(fd) else {
            close(fd)
            return false
        }
        // Only what `retire` puts there: files named by a number (their
        // slot; before slots, their inode number). One read of the
        // directory is enough (a process takes a few).
        var names: [String] = []
        var seen = 0
        while seen < Self.listed, let entry = readdir(dir) {
            seen += 1
            guard entry.pointee.d_type == UInt8(DT_REG) else { continue }
            let name = Sys.entryName(entry)
            if name.isDecimalDigits { names.append(name) }
        }
        closedir(dir)
        return state.locked { s in
            s.names = names
            return !names.isEmpty
        }
    }
    /// How many entries a listing looks at.
    static let listed = 128
}
