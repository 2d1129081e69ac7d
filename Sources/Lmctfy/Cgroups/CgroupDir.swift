// The one way lmctfy reaches cgroupfs: a directory under an injected mount
// point (the real /sys/fs/cgroup/... or a fake tree in a temp dir), whose
// path is built only from validated name segments. File names are single
// components; anything with "/" or ".." is a programming error.
//
// Every access (read, write, mkdir, rmdir, readdir, xattrs, chown, the
// descriptors handed to event registration) goes through here, so that
//  - on the real kernel, what is opened is checked to be on cgroupfs or
//    cgroup2fs: a filesystem mounted over a container's directory is never
//    read or written as if it were the container's. A file is opened with
//    openat2 from its hierarchy's mount point (a descriptor opened and
//    checked with fstatfs once per process, then kept), refusing to cross a
//    mount point (RESOLVE_NO_XDEV): one syscall where open + fstatfs took
//    two. Where openat2 is missing (before Linux 5.6, or a seccomp filter
//    refusing it) every open is followed by an fstatfs, as before. A kept
//    descriptor keeps pointing at the hierarchy it was opened on even if
//    something is later mounted over the mount point itself, and keeps that
//    mount busy while the process runs (a plain umount of a hierarchy under
//    a running agent is EBUSY; `umount -l` detaches it). lmctfy's records
//    (xattrs) and directory listings are reached from the same descriptor:
//    a record read or written without a check by getxattrat/setxattrat
//    (Linux 6.13), a checked one and a listing through the directory opened
//    with openat2, so no path under /sys/fs/cgroup is walked from the top
//    (and no statfs is needed) where the kernel has those calls;
//  - tests can hand in a FaultPlan and fail any of these calls.
import CLmctfyShims
import Glibc
import LmctfySystem
import Synchronization

/// How a tree of cgroup directories is reached: whether every access is
/// checked to land on a cgroup filesystem (the real kernel) or not (a fake
/// tree in a temp directory), and the fault plan of a test.
public struct CgroupAccess: Sendable {
    /// statfs f_type of cgroup v1 (CGROUP_SUPER_MAGIC) and v2 (CGROUP2_SUPER_MAGIC).
    public static let cgroupMagic = 0x27e0eb
    /// statfs f_type of cgroup v2 (CGROUP2_SUPER_MAGIC).
    public static let cgroup2Magic = 0x6367_7270

    /// Whether every opened file and directory must be on cgroupfs/cgroup2fs.
    public let verifiesFilesystem: Bool
    /// Calls to fail, for tests; nil on the real path.
    public let faults: FaultPlan?

    /// Where the per-tree lock files of create, update and destroy live
    /// (ContainerLock); nil: no locking (a fake tree no test races on).
    public let lockRoot: String?

    /// Access that checks the filesystem (`verifiesFilesystem`, the real
    /// kernel) or not (a fake tree), failing the calls `faults` chooses,
    /// with per-tree lock files under `lockRoot`.
    public init(verifiesFilesystem: Bool, faults: FaultPlan? = nil, lockRoot: String? = nil) {
        self.verifiesFilesystem = verifiesFilesystem
        self.faults = faults
        self.lockRoot = lockRoot
    }

    /// The lock files of the real machine: under /run, a tmpfs on a
    /// systemd host, so they go at reboot as every cgroup does. Where /run
    /// is on a disk (as on this project's build machines) they persist, and
    /// a journal left by a create that a reboot interrupted carries that
    /// boot's id: the tree's next lock discards it without undoing anything
    /// (`ContainerLock.bootId`). lmctfy does not mount a tmpfs
    /// there itself: a process in a private mount namespace would then lock
    /// a different directory from one outside it.
    public static let kernelLockRoot = "/run/lmctfy/locks"

    /// The real kernel: every access checked, nothing injected.
    public static let kernel = CgroupAccess(verifiesFilesystem: true, lockRoot: kernelLockRoot)

    /// A fake tree (regular files in a temp dir), optionally with faults
    /// and with lock files under `lockRoot`.
    public static func fake(faults: FaultPlan? = nil, lockRoot: String? = nil) -> CgroupAccess {
        CgroupAccess(verifiesFilesystem: false, faults: faults, lockRoot: lockRoot)
    }

    /// Checks a filesystem type (from statfs) is a cgroup filesystem.
    func check(_ type: Int, _ path: String) throws(LmctfyError) {
        guard verifiesFilesystem, type != Self.cgroupMagic, type != Self.cgroup2Magic else { return }
        throw .failedPrecondition("\(path) is not on a cgroup filesystem (statfs type 0x\(String(type, radix: 16))): something is mounted over it, and lmctfy will not use it")
    }
}

extension SystemError {
    /// As an LmctfyError: EACCES and EPERM are PERMISSION_DENIED wherever
    /// they come from; other errnos take the code the operation chose.
    func cgroup(_ code: StatusCode, _ context: String) -> LmctfyError {
        lmctfy(errno == EACCES || errno == EPERM ? .permissionDenied : code, context)
    }
}

/// One cgroup directory: a mount point and validated segments below it.
/// Every read, write, mkdir and rmdir of cgroupfs goes through one, checked
/// as `access` says. A value: copying it copies the path, nothing is open.
/// Equality compares the path only (`mount` and `segments`), not `access`.
public struct CgroupDir: Sendable, Equatable, CustomStringConvertible {
    /// The hierarchy's mount point (no trailing slash).
    public let mount: String
    /// Segments below the mount point; empty for the hierarchy's root.
    public let segments: [String]
    /// How this tree is reached (checked on the kernel, faults in tests).
    public let access: CgroupAccess

    /// A directory `segments` below `mount` (a trailing slash on the mount is
    /// dropped). Traps on an unsafe segment (empty, ".", ".." or containing
    /// "/"): segments must come from validated container names.
    public init(mount: String, segments: [String], access: CgroupAccess = .kernel) {
        // On the UTF-8 bytes: every cgroup path is made here, many per call.
        precondition(!segments.contains { !Self.isSafeSegment($0) }, "unsafe cgroup path segments \(segments)")
        let bytes = mount.utf8
        self.mount = bytes.count > 1 && bytes.last == UInt8(ascii: "/") ? String(mount.dropLast()) : mount
        self.segments = segments
        self.access = access
    }

    /// A single path component other than "." and "..".
    static func isSafeSegment(_ s: String) -> Bool {
        let bytes = s.utf8
        switch bytes.count {
        case 0: return false
        case 1: return bytes.first != UInt8(ascii: ".") && bytes.first != UInt8(ascii: "/")
        case 2 where s == "..": return false
        default: return !bytes.contains(UInt8(ascii: "/"))
        }
    }

    public static func == (a: CgroupDir, b: CgroupDir) -> Bool { a.mount == b.mount && a.segments == b.segments }

    /// The directory's absolute path: the mount point and the segments.
    public var path: String { Self.join(mount, segments, nil) }

    /// `base`, then each segment and `last` after a "/", in one string
    /// grown once (paths are built for every file lmctfy opens).
    static func join(_ base: String?, _ segments: [String], _ last: String?) -> String {
        var length = base?.utf8.count ?? -1
        for s in segments { length += 1 + s.utf8.count }
        if let last { length += 1 + last.utf8.count }
        var out = base ?? ""
        out.reserveCapacity(max(0, length))
        for (i, s) in segments.enumerated() {
            if base != nil || i > 0 { out += "/" }
            out += s
        }
        if let last {
            if base != nil || !segments.isEmpty { out += "/" }
            out += last
        }
        return out
    }
    public var description: String { path }
    /// Whether this is the hierarchy's root (the mount point itself).
    public var isRoot: Bool { segments.isEmpty }

    /// Whether this is the cgroup /proc/<pid>/cgroup names `path` ("/" or
    /// "/a/b", below the mount point), without building either path.
    func isAt(_ path: ArraySlice<UInt8>) -> Bool {
        let slash = UInt8(ascii: "/")
        guard path.first == slash else { return false }
        var i = path.startIndex + 1
        if i == path.endIndex { return segments.isEmpty }
        for (n, segment) in segments.enumerated() {
            if n > 0 {
                guard i < path.endIndex, path[i] == slash else { return false }
                i += 1
            }
            for byte in segment.utf8 {
                guard i < path.endIndex, path[i] == byte else { return false }
                i += 1
            }
        }
        return !segments.isEmpty && i == path.endIndex
    }

    func isAt(_ path: Substring) -> Bool { isAt(ArraySlice(path.utf8)) }
    var faults: FaultPlan? { access.faults }

    /// The directory one segment below, on the same mount and access (nothing
    /// is made; traps on an unsafe segment).
    public func child(_ segment: String) -> CgroupDir {
        CgroupDir(mount: mount, segments: segments + [segment], access: access)
    }

    /// The directory one segment up; nil for the hierarchy's root.
    public var parent: CgroupDir? {
        isRoot ? nil : CgroupDir(mount: mount, segments: Array(segments.dropLast()), access: access)
    }

    /// The absolute path of the file `name` in this directory. Traps unless
    /// `name` is a single path component (no "/", not "..").
    public func file(_ name: String) -> String {
        Self.checkFileName(name)
        return Self.join(mount, segments, name)
    }

    /// Traps unless `name` is a single path component (no "/", not "..").
    static func checkFileName(_ name: String) {
        precondition(!name.utf8.isEmpty && !name.utf8.contains(UInt8(ascii: "/")) && name != "..", "unsafe cgroup file name \(name)")
    }

    /// Whether this cgroup exists. Only "no such directory" reads as false:
    /// any other failure to look (EACCES: PERMISSION_DENIED) is an error, so
    /// a cgroup lmctfy cannot see is never taken for one that is not there.
    public func exists() throws(LmctfyError) -> Bool {
        try Self.probe(path, faults) == S_IFDIR
    }

    /// The directory's inode number, nil when it is not there. A cgroup
    /// removed and made again under its path is another directory, with
    /// another number (kernfs does not hand a number out twice in a boot):
    /// what watches one tells it from its successor by.
    public var identity: UInt64? { (try? Sys.linkStatus(path)).map { UInt64($0.st_ino) } }

    /// stat(2) of a path: its type, nil when it does not exist.
    private static func probe(_ path: String, _ faults: FaultPlan?) throws(LmctfyError) -> mode_t? {
        do { return try Sys.fileType(path, faults: faults) } catch {
            throw error.cgroup(.failedPrecondition, "Failed to look for \(path)")
        }
    }

    /// Whether this cgroup has the file, i.e. whether the kernel has the
    /// feature. Below a hierarchy's root every cgroup has the same files and
    /// the kernel does not change while we run, so on the real cgroupfs the
    /// answer is remembered per hierarchy (fake trees in tests are asked
    /// every time: they add and remove files).
    public func has(_ name: String) throws(LmctfyError) -> Bool {
        guard !isRoot, access.verifiesFilesystem else { return try Self.probe(file(name), faults) != nil }
        let key = mount + "\u{0}" + name
        if let known = FeatureCache.shared.known.locked({ $0[key] }) { return known }
        // Only a cgroup that still exists can say "no".
        let present = try Self.probe(file(name), faults) != nil
        let answered = present ? true : try exists()
        if answered { FeatureCache.shared.known.locked { $0[key] = present } }
        return present
    }

    // MARK: Files

    /// Opens one of this directory's files, checked to be on cgroupfs.
    /// The caller closes the descriptor (event registration keeps it open
    /// only for the registration write).
    /// A failure to open is NOT_FOUND for ENOENT, PERMISSION_DENIED for
    /// EACCES, `code` otherwise.
    /// `truncatingFake` false: a fake tree's file is not truncated at the
    /// open (`write` truncates it after a write that succeeded: a failed
    /// one leaves the value, as the kernel's does).
    func open(_ name: String, _ flags: Int32, failing code: StatusCode = .failedPrecondition, truncatingFake: Bool = true,
              _ context: @autoclosure () -> String = "Failed to open cgroup file") throws(LmctfyError) -> Int32 {
        Self.checkFileName(name)
        if access.verifiesFilesystem, faults == nil, let root = MountRoots.shared.fd(mount, access),
           let fd = try openBeneath(root, Self.join(nil, segments, name), flags, path: file(name),
                                    failing: code, context()) {
            return fd
        }
        let path = file(name)
        let fd: Int32
        // A fake tree's regular file takes a written value whole, as a
        // cgroup file does (a shorter value must not leave a tail behind).
        let truncate = truncatingFake && !access.verifiesFilesystem && flags & O_ACCMODE != O_RDONLY ? O_TRUNC : 0
        do { fd = try Sys.open(path, flags | truncate, faults: faults) } catch {
            throw error.cgroup(Self.gone(error.errno) ? .notFound : code, context())
        }
        if access.verifiesFilesystem {
            do {
                try access.check(try Sys.filesystemType(fd, path: path, faults: faults), path)
            } catch let error as LmctfyError {
                close(fd)
                throw error
            } catch {
                close(fd)
                throw (error as! SystemError).cgroup(.failedPrecondition, "Failed to check the filesystem of a cgroup file")
            }
        }
        return fd
    }

    /// Whether `name` is a file the kernel shows as a list of records
    /// (pids), a page of them per read: read to its end. Every other cgroup
    /// file is one record, whole in the first read that does not fill the
    /// buffer. (Compared, not hashed: asked at every read.)
    static func isListFile(_ name: String) -> Bool {
        name == "cgroup.procs" || name == "tasks" || name == "cgroup.threads"
    }

    /// errno of a file that is not there, or whose cgroup was removed
    /// (ENODEV: kernfs refuses an open, read or write of a removed cgroup's
    /// file, as when a container is destroyed while it is read).
    static func gone(_ errno: Int32) -> Bool { errno == ENOENT || errno == ENODEV }

    /// Reads a cgroup file. A missing file is NOT_FOUND (the kernel lacks the
    /// feature, or the cgroup was removed meanwhile), EACCES is
    /// PERMISSION_DENIED; any other failure is FAILED_PRECONDITION.
    public func read(_ name: String) throws(LmctfyError) -> String {
        let fd = try open(name, O_RDONLY, "Failed to read cgroup file")
        defer { close(fd) }
        do {
            let bytes = try Sys.readAll(fd, path: file(name), faults: faults, shortReadEnds: !Self.isListFile(name))
            return String(decoding: bytes, as: UTF8.self)
        } catch {
            throw error.cgroup(Self.gone(error.errno) ? .notFound : .failedPrecondition, "Failed to read cgroup file")
        }
    }

    /// Writes a cgroup file with one write(2). A missing file is NOT_FOUND;
    /// EACCES is PERMISSION_DENIED; a value the kernel refuses (EINVAL,
    /// EBUSY, ...) is UNAVAILABLE, as in the original.
    public func write(_ name: String, _ value: String) throws(LmctfyError) {
        let fd = try open(name, O_WRONLY, failing: .unavailable, truncatingFake: false, Self.writeContext(value))
        defer { close(fd) }
        do {
            try Sys.writeOnce(fd, Array(value.utf8), path: file(name), faults: faults)
            // A fake tree's file holds the value whole, as a cgroup file
            // does (a shorter one must not leave a tail behind).
            if !access.verifiesFilesystem { _ = ftruncate(fd, off_t(value.utf8.count)) }
        } catch {
            throw error.cgroup(Self.gone(error.errno) ? .notFound : .unavailable, Self.writeContext(value))
        }
    }

    /// A failed write's message (made only when a write fails).
    static func writeContext(_ value: String) -> String { "Failed to write \"\(value)\" to cgroup file" }

    /// A file holding one integer; "max" (v2) reads as nil.
    public func readInt(_ name: String) throws(LmctfyError) -> Int64? {
        let text = try read(name).trimmingWhitespace
        if text == "max" { return nil }
        guard let v = Int64(text) else {
            throw .failedPrecondition("Failed to parse \"\(text)\" in \(file(name)) as an integer")
        }
        return v
    }

    /// A "key value" per line file (memory.stat, cpu.stat, ...). Lines that
    /// do not parse are skipped.
    public func readKeyValues(_ name: String) throws(LmctfyError) -> [String: Int64] {
        Self.keyValues(try read(name))
    }

    static func keyValues(_ text: String) -> [String: Int64] {
        var out: [String: Int64] = [:]
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: " ")
            if parts.count == 2, let v = Int64(parts[1]) { out[String(parts[0])] = v }
        }
        return out
    }

    /// The sum of `key` in the file `name` of every directory below this
    /// one (not this one's; one gone meanwhile counts nothing), or nil
    /// where it cannot be walked so (a fake tree, no openat2): the caller
    /// walks by path. Each directory is opened from its parent's
    /// descriptor with openat2 beneath it (no mount point crossed, as every
    /// open here), so a walk costs a few calls per directory: opened by
    /// path from the mount point, each cost as much as its depth, and the
    /// agent's start on a 400-deep tree, which walks below every
    /// container, took 45 s. Holds a descriptor per level walked down; out
    /// of descriptors, a subtree is walked by path instead.
    func sumBelow(_ name: String, key: String, byPath: (CgroupDir) -> Int64) -> Int64? {
        Self.checkFileName(name)
        guard case .opened(let top)? = try? atRoot(checked: true) else { return nil }
        // A frame per level: its descriptor, its subdirectories and the
        // next to visit (the one visited last is the level below's name).
        var frames: [(fd: Int32, names: [String], next: Int)] = []
        func push(_ fd: Int32) {
            let listing = dup(fd)
            let names = listing < 0 ? [] : (try? Sys.subdirectories(fd: listing, path: name)) ?? []
            frames.append((fd, names, 0))
        }
        var sum: Int64 = 0
        push(top)
        while let frame = frames.last {
            guard frame.next < frame.names.count else {
                close(frame.fd)
                frames.removeLast()
                continue
            }
            let child = frame.names[frame.next]
            frames[frames.count - 1].next += 1
            let fd = lm_open_beneath(frame.fd, child, O_RDONLY | O_DIRECTORY)
            if fd == -EMFILE || fd == -ENFILE {
                let dir = CgroupDir(mount: mount, segments: segments + frames.map { $0.names[$0.next - 1] },
                                    access: access)
                sum += ((try? dir.readKeyValues(name))?[key] ?? 0) + byPath(dir)
                continue
            }
            guard fd >= 0 else { continue }  // gone meanwhile
            let file = lm_open_beneath(fd, name, O_RDONLY)
            if file >= 0 {
                if let bytes = try? Sys.readAll(file, path: name, shortReadEnds: true) {
                    sum += Self.keyValues(String(decoding: bytes, as: UTF8.self))[key] ?? 0
                }
                close(file)
            }
            push(fd)
        }
        return sum
    }

    /// The pids (cgroup.procs) or tids (tasks / cgroup.threads) listed in a file.
    public func readPids(_ name: String) throws(LmctfyError) -> [pid_t] {
        try read(name).split(separator: "\n").compactMap { pid_t($0.trimmingWhitespace) }
    }

    // MARK: Directories

    /// Checks a path (this directory, or the parent a new one goes in) is on
    /// cgroupfs before a directory operation.
    func checkFilesystem() throws(LmctfyError) { try checkFilesystem(path) }

    private func checkFilesystem(_ path: String) throws(LmctfyError) {
        guard access.verifiesFilesystem else { return }
        let type: Int
        do { type = try Sys.filesystemType(path, faults: faults) } catch {
            throw error.cgroup(error.errno == ENOENT ? .notFound : .failedPrecondition, "Failed to check the filesystem of a cgroup")
        }
        try access.check(type, path)
    }

    /// The kept descriptor of the hierarchy's root when this directory is
    /// one segment below it (a top-level container) on the real kernel:
    /// mkdirat/unlinkat of that one name from it cannot cross a mount
    /// point (the kernel refuses to remove a directory something is
    /// mounted on), so the statfs check a path needs is not needed.
    private var topLevelRoot: Int32? {
        guard segments.count == 1, access.verifiesFilesystem, faults == nil else { return nil }
        return MountRoots.shared.fd(mount, access)
    }

    /// Makes this cgroup. EEXIST is ALREADY_EXISTS, EACCES PERMISSION_DENIED,
    /// anything else FAILED_PRECONDITION.
    func make() throws(LmctfyError) {
        let root = topLevelRoot
        if root == nil, let parent { try checkFilesystem(parent.path) }
        do {
            if let root { try Sys.mkdirat(root, segments[0], path: path) } else { try Sys.mkdir(path, faults: faults) }
        } catch {
            throw error.cgroup(error.errno == EEXIST ? .alreadyExists : .failedPrecondition, "Failed to create cgroup")
        }
    }

    /// Removes this cgroup; false when it did not exist (ENOENT).
    func remove() throws(LmctfyError) -> Bool {
        let root = topLevelRoot
        if root == nil {
            do {
                try checkFilesystem(path)
            } catch where error.code == .notFound {
                return false
            }
        }
        do {
            if let root { try Sys.rmdirat(root, segments[0], path: path) } else { try Sys.rmdir(path, faults: faults) }
            return true
        } catch {
            if error.errno == ENOENT { return false }
            throw error.cgroup(.failedPrecondition, "Failed to remove cgroup")
        }
    }

    /// Whether it may have subdirectories, from its link count (2 + its
    /// subdirectories, on cgroupfs as on most filesystems): one stat, no
    /// listing. False when it does not exist; true when stat fails
    /// otherwise (a listing then says why).
    func mayHaveSubdirectories() -> Bool {
        var st = stat()
        guard stat(path, &st) == 0 else { return errno != ENOENT && errno != ENOTDIR }
        return st.st_nlink != 2
    }

    /// The names of the subdirectories (child cgroups), sorted. ENOENT is
    /// NOT_FOUND.
    /// On the real kernel the directory is opened from its hierarchy's kept
    /// mount point with openat2, which refuses to cross a mount point (the
    /// check a statfs of the path made).
    func subdirectories() throws(LmctfyError) -> [String] {
        if case .opened(let fd)? = try atRoot(checked: true) {
            do { return try Sys.subdirectories(fd: fd, path: path) } catch {
                throw error.cgroup(Self.gone(error.errno) ? .notFound : .failedPrecondition, "Failed to list cgroup")
            }
        }
        try checkFilesystem(path)
        do {
            return try Sys.subdirectories(path, faults: faults)
        } catch {
            throw error.cgroup(error.errno == ENOENT ? .notFound : .failedPrecondition, "Failed to list cgroup")
        }
    }

    /// Hands the directory, or one of its files, to a user and group.
    func chown(_ name: String? = nil, uid: uid_t, gid: gid_t) throws(LmctfyError) {
        let target = name.map(file) ?? path
        try checkFilesystem(target)
        do {
            try Sys.chown(target, uid: uid, gid: gid, faults: faults)
        } catch {
            throw error.cgroup(.failedPrecondition, "Failed to chown")
        }
    }

    // MARK: lmctfy's own records

    /// An lmctfy record on this directory; nil when it was never written.
    /// `checked: false` skips the cgroupfs check, for a caller that checks
    /// the answers that lead to an action (see `state()`).
    ///
    /// On the real kernel the directory is found from its hierarchy's kept
    /// mount point rather than by its whole path (which walks
    /// /sys/fs/cgroup/<hierarchy> each time): unchecked, by getxattrat(2);
    /// checked, by opening it with openat2 (which refuses to cross a mount
    /// point, the check a statfs made) and fgetxattr(2). Kernels without
    /// getxattrat (before 6.13) or openat2 use the paths.
    func xattr(_ name: String, checked: Bool = true) throws(LmctfyError) -> String? {
        switch try readXattr(name, checked: checked) {
        case .success(let value): return value
        case .failure(let error): throw xattrError(error, name)
        }
    }

    /// `xattr`, with the syscall's failure returned rather than turned into
    /// an LmctfyError: `state()` asks every hierarchy, most of which a
    /// container does not use, and "not there" needs no message.
    func readXattr(_ name: String, checked: Bool) throws(LmctfyError) -> Result<String?, SystemError> {
        try reachRecords(checked: checked,
                         root: { root throws(SystemError) in try Sys.getxattrat(root, relativePath, name, path: path) },
                         opened: { fd throws(SystemError) in try Sys.fgetxattr(fd, name, path: path) },
                         byPath: { () throws(SystemError) in try Sys.getxattr(path, name, faults: faults) })
    }

    func xattrError(_ error: SystemError, _ name: String) -> LmctfyError {
        error.cgroup(Self.gone(error.errno) ? .notFound : .failedPrecondition, "Failed to read lmctfy's record \(name)")
    }

    /// `checked: false` for the directory this process has just made (its
    /// parent was checked by `make`). Found as `xattr` finds it.
    func setXattr(_ name: String, _ value: String, checked: Bool = true) throws(LmctfyError) {
        let done = try reachRecords(checked: checked,
                                    root: { root throws(SystemError) in try Sys.setxattrat(root, relativePath, name, value, path: path) },
                                    opened: { fd throws(SystemError) in try Sys.fsetxattr(fd, name, value, path: path) },
                                    byPath: { () throws(SystemError) in try Sys.setxattr(path, name, value, faults: faults) })
        if case .failure(let error) = done { throw error.cgroup(.failedPrecondition, "Failed to record \(name)=\(value)") }
    }

    /// Does a record call on this directory the way `atRoot` says: by name
    /// from the mount point's descriptor (`root`), on the directory opened
    /// with openat2 (`opened`, closed after), or by path (`byPath`, after
    /// the cgroupfs check when `checked`). A kernel without the *xattrat
    /// calls turns them off and the call is made again by path.
    private func reachRecords<T>(checked: Bool, root: (Int32) throws(SystemError) -> T, opened: (Int32) throws(SystemError) -> T,
                                 byPath: () throws(SystemError) -> T) throws(LmctfyError) -> Result<T, SystemError> {
        let at = try atRoot(checked: checked)
        if at == nil, checked { try checkFilesystem(path) }
        do throws(SystemError) {
            switch at {
            case .root(let fd)?: return .success(try root(fd))
            case .opened(let fd)?:
                defer { close(fd) }
                return .success(try opened(fd))
            case nil: return .success(try byPath())
            }
        } catch {
            if MountRoots.unsupported(error) { return try reachRecords(checked: checked, root: root, opened: opened, byPath: byPath) }
            return .failure(error)
        }
    }

    /// How `xattr`, `setXattr` and `subdirectories` reach this directory
    /// from its hierarchy's kept mount point: unchecked, the mount point's
    /// descriptor (for the *xattrat calls); checked, the directory opened
    /// with openat2, which the caller closes. nil: by path (a fake tree,
    /// injected faults, the hierarchy's root itself, or a kernel without
    /// the calls).
    private enum AtRoot { case root(Int32), opened(Int32) }

    private func atRoot(checked: Bool) throws(LmctfyError) -> AtRoot? {
        guard !segments.isEmpty, access.verifiesFilesystem, faults == nil,
              let root = MountRoots.shared.fd(mount, access) else { return nil }
        guard checked else { return MountRoots.shared.xattrat ? .root(root) : nil }
        return try openBeneath(root, relativePath, O_RDONLY | O_DIRECTORY, path: path, failing: .failedPrecondition,
                               "Failed to check the filesystem of a cgroup").map { .opened($0) }
    }

    /// openat2 of `relative` below the mount point's descriptor `root`,
    /// refusing to cross a mount point (`path` names it in errors): the
    /// descriptor, or nil when openat2 is not to be had (from now on: the
    /// caller opens by path and checks). A mount point in the way is
    /// FAILED_PRECONDITION; a missing file NOT_FOUND; anything else `code`.
    private func openBeneath(_ root: Int32, _ relative: String, _ flags: Int32, path: @autoclosure () -> String,
                             failing code: StatusCode, _ context: @autoclosure () -> String) throws(LmctfyError) -> Int32? {
        let r = lm_open_beneath(root, relative, flags)
        if r >= 0 { return r }
        switch -r {
        case EXDEV:
            throw .failedPrecondition("\(path()) is not on a cgroup filesystem (a mount point is in its path): something is mounted over it, and lmctfy will not use it")
        case ENOSYS, EPERM, E2BIG:
            MountRoots.shared.noOpenat2()
            return nil
        default:
            throw SystemError("openat2", path(), -r).cgroup(Self.gone(-r) ? .notFound : code, context())
        }
    }

    /// This directory's path below its hierarchy's mount point.
    private var relativePath: String { Self.join(nil, segments, nil) }

    // MARK: Event sources

    /// An inotify descriptor watching one of this directory's files, after
    /// checking the file is on cgroupfs.
    func inotify(_ name: String) throws(LmctfyError) -> Int32 {
        let path = file(name)
        try checkFilesystem(path)
        if let e = faults?.check(.open, path) {
            throw SystemError("inotify_add_watch", path, e).cgroup(e == ENOENT ? .notFound : .internal, "Failed to watch \(path)")
        }
        do { return try EventFds.inotify(watching: path) } catch {
            throw error.cgroup(error.errno == ENOENT ? .notFound : .internal, "Failed to watch \(path)")
        }
    }
}

/// Which optional cgroup files the running kernel has, per hierarchy.
final class FeatureCache: Sendable {
    static let shared = FeatureCache()
    let known = Mutex<[String: Bool]>([:])
}

/// The hierarchies' mount points, each opened and checked to be a
/// cgroup filesystem once per process, for `CgroupDir.open` (see the top of
/// this file). Never closed: one descriptor per hierarchy.
final class MountRoots: Sendable {
    static let shared = MountRoots()
    /// The mount points opened so far (a handful: a list is searched faster
    /// than a dictionary hashes a path, for every file opened).
    private let state = Mutex<(fds: [(mount: String, fd: Int32)], openat2: Bool)>(([], true))

    /// The descriptor of `mount`, or nil: no openat2, or the mount point
    /// cannot be opened or is not a cgroup filesystem (the caller's plain
    /// open then finds out and says so).
    func fd(_ mount: String, _ access: CgroupAccess) -> Int32? {
        let (enabled, known) = state.locked { s in (s.openat2, s.fds.first { $0.mount == mount }?.fd) }
        guard enabled else { return nil }
        if let known { return known }
        let fd = Glibc.open(mount, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        var st = statfs()
        guard fstatfs(fd, &st) == 0, (try? access.check(Int(st.f_type), mount)) != nil else {
            close(fd)
            return nil
        }
        return state.locked { s in
            if let raced = s.fds.first(where: { $0.mount == mount })?.fd {
                close(fd)
                return raced
            }
            s.fds.append((mount, fd))
            return fd
        }
    }

    /// openat2 is refused here: plain opens from now on.
    func noOpenat2() { state.locked { $0.openat2 = false } }

    /// Whether getxattrat/setxattrat may be tried (until a kernel before
    /// 6.13, or a seccomp filter, refuses them).
    var xattrat: Bool {
        get { xattratState.locked { $0 } }
        set { xattratState.locked { $0 = newValue } }  // tests: the path fallback
    }
    private let xattratState = Mutex(true)

    /// Whether `error` is an *xattrat call the kernel does not have (ENOSYS)
    /// or a filter refuses (EPERM): if so, they are not tried again, and the
    /// caller does what it asked by path.
    static func unsupported(_ error: SystemError) -> Bool {
        guard error.call == "getxattrat" || error.call == "setxattrat",
              error.errno == ENOSYS || error.errno == EPERM else { return false }
        shared.xattratState.locked { $0 = false }
        return true
    }
}
