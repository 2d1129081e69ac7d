// Whole directory trees that may hold anything an archive put there
// (symlinks to /, directories without permissions): walked and removed
// without ever following a symlink.
import CLmctfyShims
import Glibc

extension Sys {
    /// The names in a directory (not "." or ".."), sorted by their bytes.
    public static func directoryEntries(_ path: String) throws(SystemError) -> [String] {
        let fd = try open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW)
        return try directoryEntries(fd: fd, path: path)
    }

    /// As `directoryEntries(_:)` for an open directory; takes `fd` over
    /// (closed when this returns).
    static func directoryEntries(fd: Int32, path: String) throws(SystemError) -> [String] {
        guard let dir = fdopendir(fd) else {
            let e = errno
            Glibc.close(fd)
            throw SystemError("fdopendir", path, e)
        }
        defer { closedir(dir) }
        var names: [[UInt8]] = []
        while true {
            errno = 0
            guard let ent = readdir(dir) else {
                if errno != 0 { throw SystemError("readdir", path, errno) }
                break
            }
            let name = withUnsafeBytes(of: ent.pointee.d_name) { raw in Array(raw.prefix { $0 != 0 }) }
            if name == [0x2e] || name == [0x2e, 0x2e] { continue }
            names.append(name)
        }
        names.sort { $0.lexicographicallyPrecedes($1) }
        return names.map { String(decoding: $0, as: UTF8.self) }
    }

    /// Removes `path` and everything below it; symlinks are removed, never
    /// followed. A missing path is not an error.
    public static func removeTree(_ path: String) throws(SystemError) {
        guard let st = try linkStatus(path) else { return }
        if st.st_mode & S_IFMT == S_IFDIR {
            let fd = try open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW)
            try removeContents(fd: fd, path: path)
            let (r, e) = retry { Glibc.rmdir(path) }
            if r != 0 && e != ENOENT { throw SystemError("rmdir", path, e) }
        } else {
            let (r, e) = retry { Glibc.unlink(path) }
            if r != 0 && e != ENOENT { throw SystemError("unlink", path, e) }
        }
    }

    /// Empties the directory open at `fd` (taken over), through *at() calls
    /// relative to the directory at hand, so no path component is resolved
    /// twice. Iterative, with one directory open at a time (it goes back up
    /// through ".."): a tree thousands of levels deep crashed the recursion
    /// that was here (its stack) in the agent and the CLI (the probe).
    private static func removeContents(fd top: Int32, path: String) throws(SystemError) {
        var fd = top
        defer { Glibc.close(fd) }
        // The names from `path` down to the directory open at `fd`.
        var below: [String] = []
        func here(_ name: String? = nil) -> String {
            ([path] + below + (name.map { [$0] } ?? [])).joined(separator: "/")
        }
        while true {
            // A fresh open of "." for each listing: its own offset.
            let listing = openat(fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            if listing < 0 { throw SystemError("openat", here(), errno) }
            var descended = false
            for name in try directoryEntries(fd: listing, path: here()) {
                var st = stat()
                if fstatat(fd, name, &st, AT_SYMLINK_NOFOLLOW) != 0 {
                    if errno == ENOENT { continue }
                    throw SystemError("fstatat", here(name), errno)
                }
                if st.st_mode & S_IFMT == S_IFDIR {
                    let sub = openat(fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                    if sub < 0 { throw SystemError("openat", here(name), errno) }
                    Glibc.close(fd)
                    fd = sub
                    below.append(name)
                    descended = true
                    break
                } else if unlinkat(fd, name, 0) != 0 && errno != ENOENT {
                    throw SystemError("unlink", here(name), errno)
                }
            }
            if descended { continue }
            // Empty: back up, and remove it there (the top is the caller's).
            guard let name = below.popLast() else { return }
            let parent = openat(fd, "..", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            if parent < 0 { throw SystemError("openat", here() + "/" + name + "/..", errno) }
            Glibc.close(fd)
            fd = parent
            if unlinkat(fd, name, AT_REMOVEDIR) != 0 && errno != ENOENT {
                throw SystemError("rmdir", here(name), errno)
            }
        }
    }

    /// realpath(3): the absolute path with every symlink, "." and ".." resolved.
    public static func realPath(_ path: String) throws(SystemError) -> String {
        guard let p = realpath(path, nil) else { throw SystemError("realpath", path, errno) }
        defer { free(p) }
        return String(cString: p)
    }

    /// Gives the calling thread its own working directory and moves it to
    /// `path` (the rest of the process stays where it was). For a thread
    /// started for the purpose: it cannot be undone.
    public static func chdirThisThreadOnly(_ path: String) throws(SystemError) {
        let r = lm_unshare_fs()
        if r < 0 { throw SystemError("unshare(CLONE_FS)", path, -r) }
        let (c, e) = retry { Glibc.chdir(path) }
        if c != 0 { throw SystemError("chdir", path, e) }
    }
}

extension Sys {
    /// read(2) once into a new buffer of at most `max` bytes (EINTR
    /// retried): the bytes read, empty at the end of the file.
    public static func readChunk(_ fd: Int32, upTo max: Int, path: String) throws(SystemError) -> [UInt8] {
        var buf = [UInt8](repeating: 0, count: max)
        let (n, e) = buf.withUnsafeMutableBytes { b in retry { Glibc.read(fd, b.baseAddress, b.count) } }
        if n < 0 { throw SystemError("read", path, e) }
        buf.removeSubrange(n...)
        return buf
    }

    /// pread(2) until `count` bytes from `offset` are read (EINTR retried);
    /// fewer only at the end of the file.
    public static func pread(_ fd: Int32, count: Int, at offset: UInt64, path: String) throws(SystemError) -> [UInt8] {
        var buf = [UInt8](repeating: 0, count: count)
        var got = 0
        while got < count {
            let (n, e) = buf.withUnsafeMutableBytes { b in
                retry { Glibc.pread(fd, b.baseAddress! + got, count - got, off_t(offset) + off_t(got)) }
            }
            if n < 0 { throw SystemError("pread", path, e) }
            if n == 0 { break }
            got += n
        }
        buf.removeSubrange(got...)
        return buf
    }
}
