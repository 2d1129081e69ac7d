// SpareFiles: lock files retired into and taken back from a spare
// directory, on the real filesystem of a temp directory (as root, the only
// user the pool serves).
import Glibc
import LmctfySystem
import Testing

@Suite struct SpareFilesTests {
    /// A fresh lock directory; removed with everything in it afterwards.
    private func withLockRoot(_ body: (String) throws -> Void) throws {
        var template = Array("/tmp/lmctfy_spares_XXXXXX".utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw SystemError("mkdtemp", "/tmp", errno)
        }
        let root = String(cString: made)
        defer { _ = try? Sys.removeTree(root) }
        try body(root)
    }

    private func inode(_ path: String) -> ino_t? {
        var st = stat()
        return lstat(path, &st) == 0 ? st.st_ino : nil
    }

    @Test func aRemovedLockFileIsEmptiedIntoTheSparesAndTakenBackByTheNextFreshLock() throws {
        try #require(geteuid() == 0, "the pool serves root only: run the tests as root")
        try withLockRoot { root in
            let spares = SpareFiles(directory: root + "/.spare")
            let lock = try FileLock.acquire(root + "/a", spares: spares, fresh: true)
            try lock.append("create /a")
            let ino = try #require(inode(root + "/a"))
            try lock.remove()
            #expect(inode(root + "/a") == nil, "the lock file stayed at its path")
            let pooled = try Sys.subdirectoriesAndFiles(root + "/.spare")
            #expect(pooled.count == 1)
            let spare = root + "/.spare/" + (pooled.first ?? "")
            #expect(inode(spare) == ino)
            #expect(try Sys.readFile(spare) == "", "a retired file keeps its journal")
            var st = stat()
            #expect(lstat(root + "/.spare", &st) == 0 && st.st_mode & 0o7777 == 0o700 && st.st_uid == 0)

            // The next fresh lock (another tree) gets that inode, empty.
            let again = try FileLock.acquire(root + "/b", spares: spares, fresh: true)
            #expect(inode(root + "/b") == ino)
            #expect(try again.journal() == "")
            #expect(try Sys.subdirectoriesAndFiles(root + "/.spare").isEmpty)
            // Not fresh: nothing is taken (the file is expected to be there).
            try again.remove()
            let other = try FileLock.acquire(root + "/c", spares: spares)
            #expect(inode(root + "/c") != ino, "a lock that is not fresh took a spare")
            other.release()
        }
    }

    /// Threads (each lock its own open file description, as between
    /// processes) lock three names over and over, fresh, each time removing
    /// the file (into the pool) or just letting go: never two holders of one
    /// name at once, and at the end every file is a lock file or a spare.
    @Test func locksStayExclusiveWhileTheirFilesGoInAndOutOfThePool() throws {
        try #require(geteuid() == 0, "the pool serves root only: run the tests as root")
        try withLockRoot { root in
            let spares = SpareFiles(directory: root + "/.spare")
            let names = ["a", "b", "c"]
            let holders = Mutexed([0, 0, 0])
            let overlaps = Mutexed(0)
            let failures = Mutexed<[String]>([])
            let threads = (0..<6).map { t in
                Threads.start {
                    for i in 0..<150 {
                        let k = (t + i) % 3
                        do {
                            let lock = try FileLock.acquire(root + "/" + names[k], spares: spares, fresh: i % 2 == 0)
                            if holders.locked({ h in defer { h[k] += 1 }; return h[k] }) != 0 { overlaps.locked { $0 += 1 } }
                            usleep(50)
                            holders.locked { $0[k] -= 1 }
                            if (t + i) % 3 == 0 { lock.release() } else { try lock.remove() }
                        } catch {
                            failures.locked { $0.append("\(error)") }
                        }
                    }
                }
            }
            for t in threads { pthread_join(t, nil) }
            #expect(overlaps.locked { $0 } == 0, "two threads held one name's lock at once")
            #expect(failures.locked { $0 }.isEmpty, "\(failures.locked { $0 })")
            let left = try Sys.subdirectoriesAndFiles(root).filter { $0 != ".spare" }
            #expect(Set(left).isSubset(of: Set(names)), "\(left)")
            let pooled = (try? Sys.subdirectoriesAndFiles(root + "/.spare")) ?? []
            #expect(!pooled.isEmpty, "nothing was ever pooled")
            for name in left + pooled.map({ ".spare/" + $0 }) {
                #expect(try Sys.readFile(root + "/" + name) == "", "\(name) is not empty")
            }
        }
    }

    /// The pool holds at most `capacity` files; past that a removed lock
    /// file is unlinked as before.
    @Test func thePoolKeepsAtMostItsCapacity() throws {
        try #require(geteuid() == 0, "the pool serves root only: run the tests as root")
        try withLockRoot { root in
            let spares = SpareFiles(directory: root + "/.spare", capacity: 2)
            let locks = try (0..<6).map { try FileLock.acquire(root + "/t\($0)", spares: spares) }
            for lock in locks { try lock.remove() }
            let pooled = try Sys.subdirectoriesAndFiles(root + "/.spare")
            #expect(!pooled.isEmpty && pooled.count <= 2, "\(pooled)")
            #expect(Set(pooled).isSubset(of: ["0", "1"]))
            #expect(try Sys.subdirectoriesAndFiles(root).filter { $0 != ".spare" }.isEmpty, "a lock file was left")
        }
    }

    @Test func aSpareNeverReplacesALockFileAlreadyThere() throws {
        try #require(geteuid() == 0, "the pool serves root only: run the tests as root")
        try withLockRoot { root in
            let spares = SpareFiles(directory: root + "/.spare")
            try FileLock.acquire(root + "/a", spares: spares).remove()
            let spare = try #require(try Sys.subdirectoriesAndFiles(root + "/.spare").first)
            // Someone holds /b (with a journal): a fresh lock of /b waits on
            // that file, and the spare stays a spare.
            try Sys.createFile(root + "/b", "create /b\n", mode: 0o600)
            let held = inode(root + "/b")
            #expect(!spares.take(to: root + "/b"))
            #expect(inode(root + "/b") == held)
            #expect(try Sys.readFile(root + "/b") == "create /b\n")
            #expect(try Sys.subdirectoriesAndFiles(root + "/.spare") == [spare])
        }
    }

    /// Only an empty root-owned 0600 file goes into the pool; anything else
    /// (a delegated tree's file, given to its owner) is unlinked as before.
    @Test func aFileThatIsNotRootsPrivateOneIsUnlinkedNotPooled() throws {
        try #require(geteuid() == 0, "the pool serves root only: run the tests as root")
        try withLockRoot { root in
            let spares = SpareFiles(directory: root + "/.spare")
            let lock = try FileLock.acquire(root + "/a", spares: spares)
            try lock.chown(uid: 65534, gid: 65534)
            try lock.remove()
            #expect(inode(root + "/a") == nil)
            #expect(((try? Sys.subdirectoriesAndFiles(root + "/.spare")) ?? []).isEmpty, "another user's file was pooled")
            let wide = try FileLock.acquire(root + "/b", mode: 0o644, spares: spares)
            try wide.remove()
            #expect(((try? Sys.subdirectoriesAndFiles(root + "/.spare")) ?? []).isEmpty, "a 0644 file was pooled")
        }
    }

    /// A spare directory others may write is not used: what it holds could
    /// have been put there by anyone, and a lock file taken from it would
    /// carry their journal.
    @Test func aSpareDirectoryOthersMayWriteIsNotUsed() throws {
        try #require(geteuid() == 0, "the pool serves root only: run the tests as root")
        try withLockRoot { root in
            try Sys.mkdir(root + "/.spare", mode: 0o700)
            try Sys.createFile(root + "/.spare/12345", "create /x\nmkdir /sys/fs/cgroup/cpu\tx\n", mode: 0o600)
            chmod(root + "/.spare", 0o777)
            let spares = SpareFiles(directory: root + "/.spare")
            #expect(!spares.take(to: root + "/a"))
            #expect(inode(root + "/a") == nil)
            // Names that retire does not make are never taken either.
            chmod(root + "/.spare", 0o700)
            unlink(root + "/.spare/12345")
            try Sys.createFile(root + "/.spare/junk", "", mode: 0o600)
            try Sys.mkdir(root + "/.spare/777", mode: 0o700)
            let fresh = SpareFiles(directory: root + "/.spare")
            #expect(!fresh.take(to: root + "/b"))
            #expect(inode(root + "/b") == nil)
        }
    }
}
