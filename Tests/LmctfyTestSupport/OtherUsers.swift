// Running a built tool as another user (uid 65534) from any checkout.
import Glibc
import LmctfySystem

/// Runs `body` with a copy of the executable at `path` that any user can
/// execute, in a fresh world-searchable directory under /tmp (removed
/// afterwards). A test that drops to another uid must not exec a file inside
/// the checkout: a clone under `mktemp -d` (mode 0700) or a home directory
/// leaves its parents unsearchable to that uid, and exec fails with EACCES.
public func withCopyForOtherUsers<T>(_ path: String, _ body: (String) throws -> T) throws -> T {
    let dir = "/tmp/lmctfy-shared-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    try Sys.mkdir(dir, mode: 0o755)
    defer { _ = removeTree(dir) }
    // The umask may have narrowed the modes asked for.
    guard chmod(dir, 0o755) == 0 else { throw SystemError("chmod", dir, errno) }
    let copy = dir + "/" + (path.split(separator: "/").last.map(String.init) ?? path)
    let bytes = try Sys.readBytes(path)
    let fd = open(copy, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o755)
    guard fd >= 0 else { throw SystemError("open", copy, errno) }
    do {
        try Sys.writeAll(fd, bytes)
    } catch {
        close(fd)
        throw error
    }
    close(fd)
    guard chmod(copy, 0o755) == 0 else { throw SystemError("chmod", copy, errno) }
    return try body(copy)
}
