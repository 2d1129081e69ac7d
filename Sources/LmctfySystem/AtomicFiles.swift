// Files that must survive a crash whole: written to a temporary file,
// fsynced, renamed over the target, and the directory fsynced, so that a
// crash at any instant leaves the old content or the new, never a torn one.
// Without `durable` the fsyncs are left out: the rename still makes the
// replacement atomic for every process (a killed writer leaves the old
// content or the new), but a machine crash may lose it.
// And lstat(2), for checks that must not follow a symlink.
import Glibc

extension Sys {
    /// Replaces `path` with `bytes` atomically (temp file beside it, fsync,
    /// rename, fsync of the directory; `durable: false`: no fsync). The file
    /// gets `mode`; it is created without following a symlink. On failure the
    /// temp file is removed and `path` keeps what it had.
    public static func writeFileAtomically(_ path: String, _ bytes: [UInt8], mode: mode_t = 0o600,
                                           durable: Bool = true) throws(SystemError) {
        let slash = path.lastIndex(of: "/")
        let directory = slash.map { $0 == path.startIndex ? "/" : String(path[..<$0]) } ?? "."
        let name = slash.map { String(path[path.index(after: $0)...]) } ?? path
        let temp = (directory == "/" ? "" : directory) + "/.tmp-" + name
        do throws(SystemError) {
            let (fd, oe) = retry { Glibc.open(temp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode) }
            if fd < 0 { throw SystemError("open", temp, oe) }
            defer { close(fd) }
            try writeAll(fd, bytes)
            if durable {
                let (r, e) = retry { fsync(fd) }
                if r != 0 { throw SystemError("fsync", temp, e) }
            }
            let (rr, re) = retry { Glibc.rename(temp, path) }
            if rr != 0 { throw SystemError("rename", path, re) }
        } catch {
            _ = try? unlink(temp)
            throw error
        }
        // The rename is durable once the directory is.
        guard durable else { return }
        try Sys.syncDirectory(directory)
    }

    /// Rewrites `path` in place with `bytes`, no longer than what it holds,
    /// where a full disk refuses `writeFileAtomically` a new file: the
    /// blocks are the file's already. One pwrite(2) of the new content
    /// padded with `padding` to the old length (a reader must skip that
    /// byte: a writer killed before the ftruncate that follows leaves the
    /// padding, not the old tail), then the ftruncate. Not atomic against a
    /// machine crash. ENOSPC if `bytes` is longer than the file.
    public static func rewriteShorter(_ path: String, _ bytes: [UInt8], padding: UInt8) throws(SystemError) {
        let fd = try open(path, O_WRONLY, mode: 0)
        defer { close(fd) }
        var st = stat()
        if fstat(fd, &st) != 0 { throw SystemError("fstat", path, errno) }
        let size = Int(st.st_size)
        guard bytes.count <= size else { throw SystemError("rewrite in place", path, ENOSPC) }
        let padded = bytes + [UInt8](repeating: padding, count: size - bytes.count)
        let (n, e) = padded.withUnsafeBytes { b in retry { pwrite(fd, b.baseAddress, b.count, 0) } }
        if n < 0 { throw SystemError("pwrite", path, e) }
        if n != padded.count { throw SystemError("pwrite", path, EIO) }
        try truncate(fd, to: bytes.count, path: path)
    }

    /// Whether an output file a user names is written in place rather than
    /// replaced: anything there but a regular file (a device such as
    /// /dev/null, a FIFO, a symlink such as /dev/stdout, a directory, which
    /// then fails). A rename over it would put a regular file where the
    /// device or the link was: `lmctl snapshot export ... -o /dev/null` as
    /// root replaced the machine's /dev/null with a file (a probe found it
    /// when tmux, which checks /dev/null, stopped starting).
    public static func isWrittenInPlace(_ path: String) -> Bool {
        guard let st = try? linkStatus(path) else { return false }
        return st.st_mode & S_IFMT != S_IFREG
    }

    /// Writes an output file a user names: replaced atomically
    /// (`writeFileAtomically`, with `mode`) where it is a regular file or
    /// absent, written in place (through a symlink, into a device or FIFO)
    /// where `isWrittenInPlace`.
    public static func writeOutputFile(_ path: String, _ bytes: [UInt8], mode: mode_t = 0o644) throws(SystemError) {
        guard isWrittenInPlace(path) else { return try writeFileAtomically(path, bytes, mode: mode) }
        let fd = try open(path, O_WRONLY | O_TRUNC)
        defer { close(fd) }
        try writeAll(fd, bytes)
    }

    /// Makes an output file a user names with `body`, which writes the file
    /// at the path it is given: where `isWrittenInPlace`, `path` itself
    /// (`inPlace` true: it exists, open it without O_CREAT); otherwise a
    /// temporary beside it (`path.tmp-TOKEN`), renamed over `path` once
    /// `body` returns and removed if it throws, so a failed export leaves
    /// neither a partial file nor a temporary.
    public static func producingOutputFile(_ path: String, token: String,
                                           _ body: (_ target: String, _ inPlace: Bool) throws(LmctfyError) -> Void) throws(LmctfyError) {
        let inPlace = isWrittenInPlace(path)
        let target = inPlace ? path : path + ".tmp-\(token)"
        do throws(LmctfyError) {
            try body(target, inPlace)
            if !inPlace {
                do { try rename(target, path) } catch { throw error.lmctfy(.failedPrecondition, "Cannot write \"\(path)\"") }
            }
        } catch {
            if !inPlace { try? unlink(target) }
            throw error
        }
    }

    /// fsync(2) of a directory: the renames and unlinks made in it so far
    /// survive a machine crash.
    public static func syncDirectory(_ directory: String) throws(SystemError) {
        let dfd = try open(directory, O_RDONLY | O_DIRECTORY)
        defer { close(dfd) }
        let (r, e) = retry { fsync(dfd) }
        if r != 0 { throw SystemError("fsync", directory, e) }
    }

    /// lstat(2): what `path` itself is (a symlink is not followed); nil
    /// when nothing is there.
    public static func linkStatus(_ path: String) throws(SystemError) -> stat? {
        var st = stat()
        let (r, e) = retry { lstat(path, &st) }
        if r < 0 {
            if e == ENOENT { return nil }
            throw SystemError("lstat", path, e)
        }
        return st
    }
}

extension Sys {
    /// A directory that must be private to this process's user (a state
    /// directory: what is kept there decides what the process does): an
    /// absolute path to a directory (not a symlink) owned by the effective
    /// uid, with no access for group or others. `create`: made if absent
    /// (0700; missing parents 0755). `what` names it in errors (the config
    /// key). Throws INVALID_ARGUMENT for a relative path, FAILED_PRECONDITION
    /// naming the directory and what is wrong otherwise.
    public static func checkPrivateDirectory(_ path: String, create: Bool, what: String) throws(LmctfyError) {
        guard path.hasPrefix("/") else { throw .invalidArgument("\(what) \"\(path)\" must be absolute") }
        var found: stat?
        do { found = try Sys.linkStatus(path) } catch { throw error.lmctfy(.failedPrecondition, "Checking \(what)") }
        if found == nil {
            guard create else { return }  // made at start
            var prefix = ""
            let parts = path.split(separator: "/")
            for (i, part) in parts.enumerated() {
                prefix += "/" + part
                guard !Sys.isDirectory(prefix) else { continue }
                do {
                    try Sys.mkdir(prefix, mode: i == parts.count - 1 ? 0o700 : 0o755)
                } catch {
                    throw error.lmctfy(.failedPrecondition, "Creating \(what)")
                }
            }
            do { found = try Sys.linkStatus(path) } catch { throw error.lmctfy(.failedPrecondition, "Checking \(what)") }
        }
        guard let st = found else { throw .failedPrecondition("\(what) \(path) vanished while it was made") }
        guard st.st_mode & S_IFMT == S_IFDIR else {
            throw .failedPrecondition("\(what) \(path) is not a directory (a symlink is refused too)")
        }
        guard st.st_uid == geteuid() else {
            throw .failedPrecondition("\(what) \(path) is owned by uid \(st.st_uid), not this process's uid \(geteuid())")
        }
        guard st.st_mode & 0o077 == 0 else {
            throw .failedPrecondition("\(what) \(path) has mode \(String(st.st_mode & 0o7777, radix: 8)): group and others must have no access (chmod 700)")
        }
    }
}
