// Exactly one path from Swift to each syscall lmctfy uses: errno is read at
// once, EINTR is retried, and a failure is a SystemError naming the call and
// the path. Callers map SystemErrors onto status codes (they know whether a
// missing file means "not found" or "not supported").
import CLmctfyShims
import Glibc

/// A failed syscall: which call, on what, and errno.
public struct SystemError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The syscall's name ("open", "epoll_ctl(ADD)", ...).
    public let call: String
    /// What it was called on: a path, or a pid or descriptor as text; may be empty.
    public let path: String
    /// The errno the call failed with.
    public let errno: Int32

    /// The failure of `call` on `path` with `errno`.
    public init(_ call: String, _ path: String, _ errno: Int32) {
        self.call = call
        self.path = path
        self.errno = errno
    }

    /// strerror(3) of the errno ("No such file or directory").
    public var reason: String { String(cString: strerror(errno)) }
    public var description: String { "\(call)(\(path)): \(reason)" }

    /// As an LmctfyError with this code, prefixed by context.
    public func lmctfy(_ code: StatusCode, _ context: String) -> LmctfyError {
        LmctfyError(code, "\(context): \(description)", errno: errno)
    }

    /// The disk (or the caller's quota) is full: ENOSPC, EDQUOT.
    public var isNoSpace: Bool { Sys.isNoSpace(errno) }
}

/// The syscall wrappers: each reads errno at once, retries EINTR, and
/// throws a SystemError naming the call and its path. Those taking `faults`
/// let a test's FaultPlan fail them (nil on the real path).
public enum Sys {
    /// The machine's page size in bytes (the unit the kernel keeps memory
    /// limits in).
    public static let pageSize = Int64(sysconf(Int32(_SC_PAGESIZE)))

    /// `bytes` as lower-case hex, two digits each (ids, digests, journals).
    public static func hex(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count * 2)
        for b in bytes {
            out.append(digits[Int(b >> 4)])
            out.append(digits[Int(b & 15)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// A memory amount as the kernel keeps it: rounded down to whole pages.
    public static func pageRounded(_ bytes: Int64) -> Int64 { bytes / pageSize * pageSize }

    /// The fields of a /proc/<pid>/stat file after the command (whose name
    /// may hold spaces and parentheses): [0] is field 3, the state; nil
    /// when the file cannot be read (no such process).
    public static func procStatFields(_ path: String) -> [Substring]? {
        guard let stat = try? readFile(path), let close = stat.lastIndex(of: ")") else { return nil }
        return stat[stat.index(after: close)...].split(separator: " ")
    }

    /// Makes every allocation of 256 KiB or more a mapping of its own,
    /// given back to the kernel when freed (a daemon's start). glibc
    /// raised its threshold as large frames were freed, and the next ones
    /// stayed in its arenas: an agent that 100 peers had sent 4 MB Pings
    /// kept 1.1 GB resident after they had gone (a probe).
    public static func keepLargeBuffersOutOfTheHeap() {
        _ = lm_malloc_fixed_mmap_threshold(256 << 10)
    }

    /// The room on the file system holding `path`: the bytes an
    /// unprivileged writer may still use (`f_bavail`) and the file
    /// system's size; nil when statvfs(3) cannot tell. (The agent's image
    /// uploads and the event journals' start-again keep a margin free.)
    public static func room(of path: String) -> (free: UInt64, total: UInt64)? {
        var vfs = statvfs()
        guard statvfs(path, &vfs) == 0 else { return nil }
        let unit = UInt64(vfs.f_frsize)
        return (UInt64(vfs.f_bavail) * unit, UInt64(vfs.f_blocks) * unit)
    }

    /// Whether the peer of a connected socket has closed it (or shut its
    /// sending side), looked at without waiting or reading: poll(2)'s
    /// POLLRDHUP, which data still unread does not hide.
    public static func peerHasHungUp(_ fd: Int32) -> Bool {
        let rdhup: Int16 = 0x2000  // POLLRDHUP (glibc names it only under _GNU_SOURCE)
        var p = pollfd(fd: fd, events: rdhup, revents: 0)
        return poll(&p, 1, 0) == 1 && p.revents & (rdhup | Int16(POLLHUP | POLLERR | POLLNVAL)) != 0
    }

    /// Calls `body` until it does not fail with EINTR; returns its result and
    /// the errno (0 unless the result is -1).
    @inline(__always)
    public static func retry<T: FixedWidthInteger>(_ body: () -> T) -> (T, Int32) {
        while true {
            let r = body()
            if r == -1 {
                let e = Glibc.errno
                if e == EINTR { continue }
                return (r, e)
            }
            return (r, 0)
        }
    }

    /// Reads a whole (small, pseudo-) file.
    public static func readFile(_ path: String, faults: FaultPlan? = nil) throws(SystemError) -> String {
        String(decoding: try readBytes(path, faults: faults), as: UTF8.self)
    }

    /// Reads a whole file as bytes (binary specs must not go through String).
    /// `shortReadEnds` and `maxBytes` as `readAll` says.
    public static func readBytes(_ path: String, faults: FaultPlan? = nil, shortReadEnds: Bool = false,
                                 maxBytes: Int = .max) throws(SystemError) -> [UInt8] {
        let fd = try open(path, O_RDONLY, faults: faults)
        defer { close(fd) }
        return try readAll(fd, path: path, faults: faults, shortReadEnds: shortReadEnds, maxBytes: maxBytes)
    }

    /// A state file's bytes: a regular file only, at most `maxBytes`. A
    /// symlink (ELOOP), a FIFO, a device or a directory (EINVAL, "not a
    /// regular file") and a larger file (EFBIG) are refused before a byte
    /// is read. (A FIFO put among an agent's snapshots held its start
    /// forever, a symlink to /dev/zero read until memory ran out, a sparse
    /// 1 GB file took 1 GB; a probe.)
    public static func readRegularFile(_ path: String, maxBytes: Int) throws(SystemError) -> [UInt8] {
        let fd = try open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK)
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw SystemError("fstat", path, errno) }
        guard st.st_mode & S_IFMT == S_IFREG else { throw SystemError("open (not a regular file)", path, EINVAL) }
        guard st.st_size <= maxBytes else { throw SystemError("open (larger than \(maxBytes) bytes)", path, EFBIG) }
        return try readAll(fd, path: path, maxBytes: maxBytes)
    }

    /// open(2) with O_CLOEXEC added; the caller closes the descriptor.
    public static func open(_ path: String, _ flags: Int32, faults: FaultPlan? = nil) throws(SystemError) -> Int32 {
        let (fd, e) = retry { injected(faults, .open, path) { Glibc.open(path, flags | O_CLOEXEC) } }
        if fd < 0 { throw SystemError("open", path, e) }
        return fd
    }

    /// Reads an open descriptor to its end (`path` names it in errors).
    /// `shortReadEnds`: a read that fills less than the buffer was the
    /// last (no read of the end itself): true of a regular file and of a
    /// cgroup file the kernel shows as one record (every value file; not
    /// a list such as cgroup.procs, which the kernel hands out a page of
    /// records at a time). More than `maxBytes` is EFBIG (a file that never
    /// ends, such as /dev/zero, is not read forever).
    public static func readAll(_ fd: Int32, path: @autoclosure () -> String, faults: FaultPlan? = nil,
                               shortReadEnds: Bool = false, maxBytes: Int = .max) throws(SystemError) -> [UInt8] {
        // Read into scratch space that is neither zeroed nor kept (most
        // files read are a few bytes of cgroupfs), then copied out.
        let (out, failed) = withUnsafeTemporaryAllocation(byteCount: 16384, alignment: 16) { b -> ([UInt8], Int32) in
            var out = [UInt8]()
            while true {
                let (n, e) = retry { injected(faults, .read, path()) { read(fd, b.baseAddress, b.count) } }
                if n < 0 { return (out, e) }
                if n == 0 { return (out, 0) }
                out.append(contentsOf: UnsafeRawBufferPointer(rebasing: b[0..<n]))
                if out.count > maxBytes { return (out, EFBIG) }
                if shortReadEnds && n < b.count { return (out, 0) }
            }
        }
        if failed != 0 { throw SystemError("read", path(), failed) }
        return out
    }

    /// One write(2) of all of `bytes`, as cgroupfs expects a value: a short
    /// write is EIO.
    /// pread(2) from offset 0 into `buffer`: the bytes read (a cgroup file
    /// read again through a descriptor kept open gives its value now).
    public static func preadStart(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer) throws(SystemError) -> Int {
        let (n, e) = retry { Glibc.pread(fd, buffer.baseAddress, buffer.count, 0) }
        if n < 0 { throw SystemError("pread", "fd \(fd)", e) }
        return n
    }

    public static func writeOnce(_ fd: Int32, _ bytes: [UInt8], path: @autoclosure () -> String, faults: FaultPlan? = nil) throws(SystemError) {
        let (n, e) = bytes.withUnsafeBytes { b in retry { injected(faults, .write, path()) { write(fd, b.baseAddress, b.count) } } }
        if n < 0 { throw SystemError("write", path(), e) }
        if n != bytes.count { throw SystemError("write", path(), EIO) }
        faults?.filesystem?.wrote(file: path(), String(decoding: bytes, as: UTF8.self))
    }

    /// The filesystem type (statfs f_type) of an open descriptor.
    public static func filesystemType(_ fd: Int32, path: String, faults: FaultPlan? = nil) throws(SystemError) -> Int {
        var st = statfs()
        let (r, e) = retry { injected(faults, .statfs, path) { fstatfs(fd, &st) } }
        if r < 0 { throw SystemError("fstatfs", path, e) }
        return Int(st.f_type)
    }

    /// The filesystem type (statfs f_type) of a path.
    public static func filesystemType(_ path: String, faults: FaultPlan? = nil) throws(SystemError) -> Int {
        var st = statfs()
        let (r, e) = retry { injected(faults, .statfs, path) { statfs(path, &st) } }
        if r < 0 { throw SystemError("statfs", path, e) }
        return Int(st.f_type)
    }

    /// Writes all of `bytes` to an open descriptor (stdout, a pipe), looping
    /// over partial writes, which pipes and terminals may do.
    public static func writeAll(_ fd: Int32, _ bytes: [UInt8]) throws(SystemError) {
        var offset = 0
        while offset < bytes.count {
            let (n, e) = bytes.withUnsafeBytes { b in retry { write(fd, b.baseAddress! + offset, b.count - offset) } }
            if n < 0 { throw SystemError("write", "fd \(fd)", e) }
            offset += n
        }
    }

    /// Writes `value` with one write(2), as cgroupfs expects; no O_CREAT, no
    /// O_TRUNC (cgroup files exist or the kernel lacks the feature).
    public static func writeFile(_ path: String, _ value: String, faults: FaultPlan? = nil) throws(SystemError) {
        let fd = try open(path, O_WRONLY, faults: faults)
        defer { close(fd) }
        try writeOnce(fd, Array(value.utf8), path: path, faults: faults)
    }

    /// Creates a regular file (for fake trees and state files).
    public static func createFile(_ path: String, _ value: String, mode: mode_t = 0o644) throws(SystemError) {
        let (fd, e) = retry { Glibc.open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode) }
        if fd < 0 { throw SystemError("open", path, e) }
        defer { close(fd) }
        let bytes = Array(value.utf8)
        let (n, we) = bytes.withUnsafeBytes { b in retry { write(fd, b.baseAddress, b.count) } }
        if n < 0 { throw SystemError("write", path, we) }
    }

    /// mkdir(2) with `mode` (the umask applies); tells the plan's fake filesystem.
    public static func mkdir(_ path: String, mode: mode_t = 0o755, faults: FaultPlan? = nil) throws(SystemError) {
        let (r, e) = retry { injected(faults, .mkdir, path) { Glibc.mkdir(path, mode) } }
        if r < 0 { throw SystemError("mkdir", path, e) }
        faults?.filesystem?.made(directory: path)
    }

    /// mkdirat(2) of one name below an open directory (`path`, the whole
    /// path, names it in errors).
    public static func mkdirat(_ dirfd: Int32, _ name: String, path: @autoclosure () -> String, mode: mode_t = 0o755) throws(SystemError) {
        let (r, e) = retry { Glibc.mkdirat(dirfd, name, mode) }
        if r < 0 { throw SystemError("mkdir", path(), e) }
    }

    /// rmdir of one name below an open directory (unlinkat(2) with
    /// AT_REMOVEDIR; `path`, the whole path, names it in errors).
    public static func rmdirat(_ dirfd: Int32, _ name: String, path: @autoclosure () -> String) throws(SystemError) {
        let (r, e) = retry { Glibc.unlinkat(dirfd, name, AT_REMOVEDIR) }
        if r < 0 { throw SystemError("rmdir", path(), e) }
    }

    /// rmdir(2); tells the plan's fake filesystem first.
    public static func rmdir(_ path: String, faults: FaultPlan? = nil) throws(SystemError) {
        let (r, e) = retry {
            injected(faults, .rmdir, path) {
                faults?.filesystem?.removing(directory: path)
                return Glibc.rmdir(path)
            }
        }
        if r < 0 { throw SystemError("rmdir", path, e) }
    }

    /// open(2) creating the file if asked (`mode`), O_CLOEXEC and
    /// O_NOFOLLOW added: a symlink at `path` is refused (ELOOP). The caller
    /// closes the descriptor.
    public static func open(_ path: String, _ flags: Int32, mode: mode_t) throws(SystemError) -> Int32 {
        let (fd, e) = retry { Glibc.open(path, flags | O_CLOEXEC | O_NOFOLLOW, mode) }
        if fd < 0 { throw SystemError("open", path, e) }
        return fd
    }

    /// rename(2).
    public static func rename(_ from: String, _ to: String) throws(SystemError) {
        let (r, e) = retry { Glibc.rename(from, to) }
        if r < 0 { throw SystemError("rename", from + " to " + to, e) }
    }

    /// fdatasync(2) of an open file (`path` names it in errors).
    public static func syncData(_ fd: Int32, path: String) throws(SystemError) {
        let (r, e) = retry { fdatasync(fd) }
        if r < 0 { throw SystemError("fdatasync", path, e) }
    }

    /// ftruncate(2) of an open file to `length` bytes.
    public static func truncate(_ fd: Int32, to length: Int, path: String) throws(SystemError) {
        let (r, e) = retry { ftruncate(fd, off_t(length)) }
        if r < 0 { throw SystemError("ftruncate", path, e) }
    }

    /// unlink(2) of a file (not a directory).
    public static func unlink(_ path: String) throws(SystemError) {
        let (r, e) = retry { Glibc.unlink(path) }
        if r < 0 { throw SystemError("unlink", path, e) }
    }

    /// chown(2) to `uid`/`gid` (follows symlinks).
    public static func chown(_ path: String, uid: uid_t, gid: gid_t, faults: FaultPlan? = nil) throws(SystemError) {
        let (r, e) = retry { injected(faults, .chown, path) { Glibc.chown(path, uid, gid) } }
        if r < 0 { throw SystemError("chown", path, e) }
    }

    /// mount(2) of `source` with filesystem `type` on `target`; `data` is the
    /// option string. The error names the target. Needs CAP_SYS_ADMIN.
    public static func mount(source: String, target: String, type: String, flags: UInt = 0, data: String) throws(SystemError) {
        let (r, e) = retry { Glibc.mount(source, target, type, flags, data) }
        if r < 0 { throw SystemError("mount", target, e) }
    }

    /// Sends `signal` to `pid` (kill(2) semantics: 0 or negative pids included).
    public static func kill(_ pid: pid_t, _ signal: Int32, faults: FaultPlan? = nil) throws(SystemError) {
        let (r, e) = retry { injected(faults, .kill, String(pid)) { Glibc.kill(pid, signal) } }
        if r < 0 { throw SystemError("kill", String(pid), e) }
    }

    /// What stat(2) says of a path, or nil when it does not exist.
    public static func fileType(_ path: String, faults: FaultPlan? = nil) throws(SystemError) -> mode_t? {
        var st = stat()
        let (r, e) = retry { injected(faults, .stat, path) { stat(path, &st) } }
        if r < 0 {
            if e == ENOENT || e == ENOTDIR { return nil }
            throw SystemError("stat", path, e)
        }
        return st.st_mode & S_IFMT
    }

    /// Whether `path` is a directory (following symlinks); false also when it
    /// cannot be looked at.
    public static func isDirectory(_ path: String, faults: FaultPlan? = nil) -> Bool {
        (try? fileType(path, faults: faults)) == S_IFDIR
    }

    /// Whether anything is at `path` (following symlinks); false also when it
    /// cannot be looked at.
    public static func exists(_ path: String, faults: FaultPlan? = nil) -> Bool {
        ((try? fileType(path, faults: faults)) ?? nil) != nil
    }

    /// Names of the subdirectories of `path`, sorted.
    public static func subdirectories(_ path: String, faults: FaultPlan? = nil) throws(SystemError) -> [String] {
        entries(of: try openDirectory(path, faults: faults), directoriesOnly: true).map(\.name).sorted()
    }

    /// Names of every entry of a directory but . and .., unsorted.
    public static func subdirectoriesAndFiles(_ path: String) throws(SystemError) -> [String] {
        try entries(path).map(\.name)
    }

    /// Every entry of a directory but . and .., with whether it is a directory.
    static func entries(_ path: String, faults: FaultPlan? = nil) throws(SystemError) -> [(name: String, isDirectory: Bool)] {
        entries(of: try openDirectory(path, faults: faults), directoriesOnly: false)
    }

    /// opendir(3), again after EINTR.
    private static func openDirectory(_ path: String, faults: FaultPlan?) throws(SystemError) -> OpaquePointer {
        var opened: OpaquePointer?
        while true {
            if let e = faults?.check(.opendir, path) {
                if e == EINTR { continue }
                throw SystemError("opendir", path, e)
            }
            opened = opendir(path)
            if opened == nil && Glibc.errno == EINTR { continue }
            break
        }
        guard let dir = opened else { throw SystemError("opendir", path, Glibc.errno) }
        return dir
    }

    /// The subdirectories of an open directory (`fd`, which this takes and
    /// closes), sorted; `path` names it in errors.
    public static func subdirectories(fd: Int32, path: String) throws(SystemError) -> [String] {
        guard let dir = fdopendir(fd) else {
            let e = Glibc.errno
            close(fd)
            throw SystemError("fdopendir", path, e)
        }
        return entries(of: dir, directoriesOnly: true).map(\.name).sorted()
    }

    /// The name of a directory entry readdir(3) returned.
    static func entryName(_ entry: UnsafeMutablePointer<dirent>) -> String {
        withUnsafePointer(to: entry.pointee.d_name) {
            $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
        }
    }

    /// Every entry of an open directory stream but . and .. (with
    /// `directoriesOnly`, its subdirectories: only they are made Strings, a
    /// cgroup directory holding tens of files); closes it.
    private static func entries(of dir: OpaquePointer, directoriesOnly: Bool) -> [(name: String, isDirectory: Bool)] {
        defer { closedir(dir) }
        var out: [(name: String, isDirectory: Bool)] = []
        while let entry = readdir(dir) {
            let isDirectory = entry.pointee.d_type == UInt8(DT_DIR)
            if directoriesOnly && !isDirectory { continue }
            let name = entryName(entry)
            if name != "." && name != ".." { out.append((name, isDirectory)) }
        }
        return out
    }

    /// The extended attribute `name` of `path` as UTF-8 text; nil when it
    /// is not set (ENODATA).
    public static func getxattr(_ path: String, _ name: String, faults: FaultPlan? = nil) throws(SystemError) -> String? {
        try xattrValue("getxattr", path, name) { b, n in
            retry { injected(faults, .getxattr, path) { CLmctfyShims.getxattr(path, name, b, n) } }
        }
    }

    /// getxattr of `relative` resolved from the directory `dirfd`
    /// (getxattrat(2), Linux 6.13; ENOSYS before); `path` names it in errors.
    public static func getxattrat(_ dirfd: Int32, _ relative: String, _ name: String,
                                  path: @autoclosure () -> String) throws(SystemError) -> String? {
        try xattrValue("getxattrat", path(), name) { b, n in
            let r = lm_getxattrat(dirfd, relative, name, b, n)
            return r < 0 ? (-1, Int32(-r)) : (r, 0)
        }
    }

    /// getxattr of an open descriptor (fgetxattr(2)).
    public static func fgetxattr(_ fd: Int32, _ name: String, path: @autoclosure () -> String) throws(SystemError) -> String? {
        try xattrValue("fgetxattr", path(), name) { b, n in retry { CLmctfyShims.fgetxattr(fd, name, b, n) } }
    }

    /// The value one of the getxattr calls reads: lmctfy's records are short,
    /// so a small buffer first (the kernel allocates and zeroes as much as
    /// it is offered), the value's own size when it is longer (ERANGE).
    /// `call(buffer, size)` returns (length or -1, errno).
    private static func xattrValue(_ syscall: String, _ path: @autoclosure () -> String, _ name: String,
                                   _ call: (UnsafeMutableRawPointer?, Int) -> (Int, Int32)) throws(SystemError) -> String? {
        var size = 256
        while true {
            let (value, e) = withUnsafeTemporaryAllocation(byteCount: size, alignment: 1) { b -> (String?, Int32) in
                let (n, e) = call(b.baseAddress, b.count)
                return n < 0 ? (nil, e) : (String(decoding: UnsafeRawBufferPointer(rebasing: b[0..<n]), as: UTF8.self), 0)
            }
            if e == 0 { return value }
            if e == ENODATA { return nil }
            if e == ERANGE {
                let (needed, e2) = call(nil, 0)
                if needed < 0 { throw SystemError(syscall, "\(path()) \(name)", e2) }
                size = max(needed, size) + 1  // it may grow meanwhile: try again
                continue
            }
            throw SystemError(syscall, "\(path()) \(name)", e)
        }
    }

    /// Sets (creating or replacing) the extended attribute `name` of `path`.
    public static func setxattr(_ path: String, _ name: String, _ value: String, faults: FaultPlan? = nil) throws(SystemError) {
        try setXattrValue("setxattr", path, name, value) { b, n in
            retry { injected(faults, .setxattr, path) { CLmctfyShims.setxattr(path, name, b, n, 0) } }
        }
    }

    /// setxattr of `relative` resolved from the directory `dirfd`
    /// (setxattrat(2), Linux 6.13; ENOSYS before); `path` names it in errors.
    public static func setxattrat(_ dirfd: Int32, _ relative: String, _ name: String, _ value: String,
                                  path: @autoclosure () -> String) throws(SystemError) {
        try setXattrValue("setxattrat", path(), name, value) { b, n in
            let r = lm_setxattrat(dirfd, relative, name, b, n)
            return r < 0 ? (-1, Int32(-r)) : (0, 0)
        }
    }

    /// setxattr of an open descriptor (fsetxattr(2)).
    public static func fsetxattr(_ fd: Int32, _ name: String, _ value: String, path: @autoclosure () -> String) throws(SystemError) {
        try setXattrValue("fsetxattr", path(), name, value) { b, n in retry { CLmctfyShims.fsetxattr(fd, name, b, n, 0) } }
    }

    private static func setXattrValue(_ syscall: String, _ path: @autoclosure () -> String, _ name: String, _ value: String,
                                      _ call: (UnsafeRawPointer?, Int) -> (Int32, Int32)) throws(SystemError) {
        let bytes = Array(value.utf8)
        let (r, e) = bytes.withUnsafeBytes { b in call(b.baseAddress, b.count) }
        if r < 0 { throw SystemError(syscall, "\(path()) \(name)", e) }
    }

    /// A close-on-exec pipe: (read end, write end).
    public static func pipe() throws(SystemError) -> (Int32, Int32) {
        var fds: [Int32] = [0, 0]
        let (r, e) = retry { lm_pipe_cloexec(&fds) }
        if r < 0 { throw SystemError("pipe2", "", e) }
        return (fds[0], fds[1])
    }

    /// `count` bytes from the kernel's CSPRNG (getrandom(2), no flags: it
    /// blocks only until the pool is seeded at boot). A short read (possible
    /// past 256 bytes, or on a signal) is continued.
    public static func randomBytes(_ count: Int) throws(SystemError) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        var filled = 0
        while filled < count {
            let (r, e) = out.withUnsafeMutableBytes { b in retry { lm_getrandom(b.baseAddress! + filled, count - filled) } }
            if r < 0 { throw SystemError("getrandom", "", e) }
            filled += r
        }
        return out
    }

    /// pidfd_open(2): a descriptor (close-on-exec; the caller closes it)
    /// that polls readable once process `pid` has exited, child or not.
    public static func pidfdOpen(_ pid: pid_t) throws(SystemError) -> Int32 {
        let (fd, e) = retry { lm_pidfd_open(pid) }
        if fd < 0 { throw SystemError("pidfd_open", String(pid), e) }
        return fd
    }

    /// pidfd_send_signal(2): `signal` to the process `pidfd` refers to,
    /// never to a later one with its pid.
    public static func pidfdSendSignal(_ pidfd: Int32, _ signal: Int32) throws(SystemError) {
        let (r, e) = retry { lm_pidfd_send_signal(pidfd, signal) }
        if r < 0 { throw SystemError("pidfd_send_signal", String(pidfd), e) }
    }

    /// This process's pid.
    public static func getpid() -> pid_t { Glibc.getpid() }
    /// The parent's pid (1, or a subreaper, once the parent is gone).
    public static func getppid() -> pid_t { Glibc.getppid() }

    /// Whether `errno` says the disk (or the caller's quota) is full.
    public static func isNoSpace(_ errno: Int32) -> Bool { errno == ENOSPC || errno == EDQUOT }

    /// The soft limit on open descriptors in force (RLIMIT_NOFILE).
    public static var fileLimit: UInt64 {
        var r = rlimit()
        return getrlimit(Int32(RLIMIT_NOFILE.rawValue), &r) == 0 ? UInt64(r.rlim_cur) : 0
    }

    /// Raises the soft limit on open descriptors to the hard limit (a
    /// process that keeps a few files open per container needs thousands);
    /// returns the soft limit in force afterwards.
    @discardableResult
    public static func raiseFileLimit() -> UInt64 {
        var r = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &r) == 0 else { return 0 }
        if r.rlim_cur < r.rlim_max {
            var raised = r
            raised.rlim_cur = r.rlim_max
            if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &raised) == 0 { return UInt64(raised.rlim_cur) }
        }
        return UInt64(r.rlim_cur)
    }
}

extension Sys {
    /// Whether this process may open `path` for writing (access(2) with the
    /// effective ids): tells a file's permissions from a capability the
    /// kernel asks for on top of them.
    public static func canWrite(_ path: String) -> Bool {
        let (r, _) = retry { Glibc.faccessat(AT_FDCWD, path, W_OK, AT_EACCESS) }
        return r == 0
    }
}
