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
    // The copy is written by a child (cp), never through a descriptor of
    // ours: a test on another thread that forks while we held the file open
    // for writing would keep it open in its child until that child execs,
    // and our exec of the copy would fail with ETXTBSY ("Text file busy").
    let pid = try Spawn.spawn(SpawnOptions(argv: ["/bin/cp", path, copy]))
    let status = try Sys.waitForExit(pid)
    guard status == .exited(0) else { throw SystemError("cp", "\(path) -> \(copy): \(status)", EIO) }
    guard chmod(copy, 0o755) == 0 else { throw SystemError("chmod", copy, errno) }
    return try body(copy)
}
