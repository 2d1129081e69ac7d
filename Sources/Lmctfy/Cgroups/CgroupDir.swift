// The one way lmctfy reaches cgroup files: a directory under an injected
// mount point (the real /sys/fs/cgroup/... or a fake tree in a temp dir),
// whose path is built only from validated name segments. File names are
// single components; anything with "/" or ".." is a programming error.
import Glibc
import LmctfySystem

public struct CgroupDir: Sendable, Equatable, CustomStringConvertible {
    /// The hierarchy's mount point (no trailing slash).
    public let mount: String
    /// Segments below the mount point; empty for the hierarchy's root.
    public let segments: [String]
    public let version: CgroupVersion

    public init(mount: String, segments: [String], version: CgroupVersion) {
        precondition(!segments.contains { $0.isEmpty || $0 == "." || $0 == ".." || $0.contains("/") },
                     "unsafe cgroup path segments \(segments)")
        self.mount = mount.hasSuffix("/") && mount.count > 1 ? String(mount.dropLast()) : mount
        self.segments = segments
        self.version = version
    }

    public var path: String { segments.isEmpty ? mount : mount + "/" + segments.joined(separator: "/") }
    public var description: String { path }
    public var isRoot: Bool { segments.isEmpty }

    public func child(_ segment: String) -> CgroupDir {
        CgroupDir(mount: mount, segments: segments + [segment], version: version)
    }

    public var parent: CgroupDir? {
        isRoot ? nil : CgroupDir(mount: mount, segments: Array(segments.dropLast()), version: version)
    }

    public func file(_ name: String) -> String {
        precondition(!name.isEmpty && !name.contains("/") && name != "..", "unsafe cgroup file name \(name)")
        return path + "/" + name
    }

    public var exists: Bool { Sys.isDirectory(path) }

    /// Whether this cgroup has the file, i.e. whether the kernel has the
    /// feature. Below a hierarchy's root every cgroup has the same files and
    /// the kernel does not change while we run, so on the real cgroupfs the
    /// answer is remembered per hierarchy (fake trees in tests are asked
    /// every time: they add and remove files).
    public func has(_ name: String) -> Bool {
        guard !isRoot, mount.hasPrefix("/sys/fs/cgroup") else { return Sys.exists(file(name)) }
        let key = mount + "\u{0}" + name
        if let known = FeatureCache.shared.lock.locked({ FeatureCache.shared.known[key] }) { return known }
        // Only a cgroup that still exists can say "no".
        let present = Sys.exists(file(name))
        if present || exists { FeatureCache.shared.lock.locked { FeatureCache.shared.known[key] = present } }
        return present
    }

    /// Reads a cgroup file. A missing file is NOT_FOUND (the kernel lacks the
    /// feature); any other failure is FAILED_PRECONDITION.
    public func read(_ name: String) throws(LmctfyError) -> String {
        do {
            return try Sys.readFile(file(name))
        } catch {
            throw error.lmctfy(error.errno == ENOENT ? .notFound : .failedPrecondition, "Failed to read cgroup file")
        }
    }

    /// Writes a cgroup file. A missing file is NOT_FOUND; a value the kernel
    /// refuses (EINVAL, EBUSY, ...) is UNAVAILABLE, as in the original.
    public func write(_ name: String, _ value: String) throws(LmctfyError) {
        do {
            try Sys.writeFile(file(name), value)
        } catch {
            throw error.lmctfy(error.errno == ENOENT ? .notFound : .unavailable,
                               "Failed to write \"\(value)\" to cgroup file")
        }
    }

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
        var out: [String: Int64] = [:]
        for line in try read(name).split(separator: "\n") {
            let parts = line.split(separator: " ")
            if parts.count == 2, let v = Int64(parts[1]) { out[String(parts[0])] = v }
        }
        return out
    }

    /// The pids (cgroup.procs) or tids (tasks / cgroup.threads) listed in a file.
    public func readPids(_ name: String) throws(LmctfyError) -> [pid_t] {
        try read(name).split(separator: "\n").compactMap { pid_t($0.trimmingWhitespace) }
    }
}

/// Which optional cgroup files the running kernel has, per hierarchy.
final class FeatureCache: @unchecked Sendable {
    static let shared = FeatureCache()
    let lock = Lock()
    var known: [String: Bool] = [:]
}
