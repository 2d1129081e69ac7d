// A busybox-static root filesystem for the virtual host tests.
import Glibc
import LmctfySystem

/// A busybox rootfs in a temp directory, with a host directory to share.
public final class BusyboxRoot: Sendable {
    public let base: String
    public var rootfs: String { base + "/rootfs" }
    /// A host directory the tests bind into the virtual host (writable).
    public var share: String { base + "/share" }

    public static let busybox = "/bin/busybox"
    public static var unavailableReason: String? {
        if let r = RealCgroups.unavailableReason { return r }
        if !Sys.exists(busybox) { return "virtual host tests need busybox-static at /bin/busybox (tools/deps.sh)" }
        if !Sys.exists(builtTool("lmctfy-init")) { return "lmctfy-init was not built beside the tests (\(builtTool("lmctfy-init")))" }
        return nil
    }

    public init(_ label: String) throws {
        base = "/tmp/\(RealCgroups.prefix)vh_\(getpid())_\(label)"
        _ = removeTree(base)
        for d in ["", "/rootfs", "/share", "/rootfs/bin", "/rootfs/proc", "/rootfs/sys", "/rootfs/dev", "/rootfs/etc",
                  "/rootfs/tmp", "/rootfs/share", "/rootfs/ro"] {
            guard mkdir(base + d, 0o755) == 0 else { throw SystemError("mkdir", base + d, errno) }
        }
        // busybox-static: no libc needed inside.
        let cp = try TestProcess.capture(["/bin/cp", Self.busybox, rootfs + "/bin/busybox"])
        guard cp.status == 0 else { throw SystemError("cp", Self.busybox, EIO) }
        for applet in ["sh", "cat", "hostname", "ls", "sleep", "true", "echo", "readlink", "touch", "grep", "nc", "mv"] {
            guard symlink("busybox", rootfs + "/bin/" + applet) == 0 else { throw SystemError("symlink", applet, errno) }
        }
    }

    deinit { _ = removeTree(base) }

    /// What the host's mount table says about this tree (should be nothing).
    public func hostMounts() throws -> [String] {
        try Sys.readFile("/proc/self/mountinfo").split(separator: "\n").map(String.init).filter { $0.contains(base) }
    }
}

