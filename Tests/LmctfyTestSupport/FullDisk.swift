// A disk that fills up, for real: a small tmpfs mounted on a directory of
// the test's own, and a ballast file that takes every page left, so that
// what writes there meets ENOSPC as it would on a full /var/lib. Root only
// (mount); unmounted (lazily) by `unmount`, which every test calls in a defer.
import Glibc
import LmctfySystem

public final class FullDisk {
    public let path: String
    private var ballast: [String] = []
    private var ballastBytes = 0

    /// Mounts a tmpfs of `kilobytes` (mode 0700) on `path` (made if absent).
    public init(_ path: String, kilobytes: Int = 256) throws {
        self.path = path
        if !Sys.isDirectory(path) { try Sys.mkdir(path, mode: 0o700) }
        try Sys.mount(source: "none", target: path, type: "tmpfs", data: "size=\(kilobytes)k,mode=0700")
    }

    /// Takes every page left: whole pages while they fit, then single
    /// bytes (a file's last page). A file written after this gets ENOSPC at
    /// once; one appended to may still fill the rest of its last page.
    public func fill() throws {
        let file = path + "/.ballast-\(ballast.count)"
        let fd = open(file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw SystemError("open", file, errno) }
        defer { close(fd) }
        ballast.append(file)
        let page = [UInt8](repeating: 0x42, count: 4096)
        for size in [page.count, 1] {
            while page.withUnsafeBytes({ write(fd, $0.baseAddress, size) }) == size { ballastBytes += size }
            guard errno == ENOSPC else { throw SystemError("write", file, errno) }
        }
    }

    /// Gives the pages back, and waits until they are free (`awaitFree`).
    public func free() {
        for f in ballast { _ = unlink(f) }
        ballast = []
        awaitFree(ballastBytes / 4096 * 4096 - 4096)
        ballastBytes = 0
    }

    /// Waits (30 s at most) until `bytes` are free: a removed file's pages
    /// come back when its last descriptor closes, and a child another test
    /// forked while the file was open holds a copy until it execs (a vfork
    /// child joining its cgroups can take a while on a loaded machine).
    public func awaitFree(_ bytes: Int) {
        for _ in 0..<3000 where available < bytes { usleep(10_000) }
    }

    /// Bytes free on it now (statvfs).
    public var available: Int {
        var s = statvfs()
        guard statvfs(path, &s) == 0 else { return -1 }
        return Int(s.f_bavail) * Int(s.f_bsize)
    }

    public func unmount() { _ = umount2(path, Int32(MNT_DETACH)) }

    /// Runs `body` with a disk of `kilobytes` mounted at a new scratch
    /// directory's `disk` (labelled `label`), unmounted and removed after.
    public static func around(_ label: String, kilobytes: Int = 256, _ body: (FullDisk) throws -> Void) throws {
        let dir = "/tmp/lmctfy-full-\(label)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try Sys.mkdir(dir, mode: 0o700)
        defer { _ = removeTree(dir) }
        let disk = try FullDisk(dir + "/disk", kilobytes: kilobytes)
        defer { disk.unmount() }
        try body(disk)
    }
}
