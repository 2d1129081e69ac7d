// Container names: validation and resolution, exactly as the original
// (lmctfy-behaviour.md §2), plus a length limit, control-file names and
// reserved names, so a hostile name is refused before anything touches the
// filesystem.
import LmctfySystem

/// An absolute, cleaned container name: "/" or "/a/b". Every value has been
/// validated, so it is safe to append to a cgroup mount point.
public struct ContainerName: Hashable, Sendable, Comparable, CustomStringConvertible {
    /// The name's segments; empty for the root.
    public let components: [String]

    /// The root container, "/": always exists, never created or destroyed.
    public static let root = ContainerName(trusted: [])

    /// The longest segment a cgroup filesystem accepts (NAME_MAX).
    public static let maxSegmentLength = 255
    /// The longest name we accept, leaving room for the mount point under PATH_MAX.
    public static let maxLength = 3072

    init(trusted components: [String]) {
        self.components = components
    }

    /// The name as an absolute path: "/" for the root, otherwise "/" and the
    /// components joined with "/".
    public var path: String { "/" + components.joined(separator: "/") }
    public var description: String { path }
    /// Whether this is the root container "/" (no components).
    public var isRoot: Bool { components.isEmpty }
    /// The last component ("b" for "/a/b"); "/" for the root.
    public var basename: String { components.last ?? "/" }
    /// How many components the name has: 0 for the root, 2 for "/a/b".
    public var depth: Int { components.count }

    /// The enclosing container's name ("/a" for "/a/b", the root for "/a");
    /// nil for the root.
    public var parent: ContainerName? {
        isRoot ? nil : ContainerName(trusted: Array(components.dropLast()))
    }

    /// This name and its ancestors, nearest first, ending at the root.
    public var selfAndAncestors: [ContainerName] {
        (0...components.count).reversed().map { ContainerName(trusted: Array(components.prefix($0))) }
    }

    /// Whether `other` is strictly below this name (a descendant, not the
    /// name itself): the root is the ancestor of every other name.
    public func isAncestor(of other: ContainerName) -> Bool {
        other.components.count > components.count && Array(other.components.prefix(components.count)) == components
    }

    public static func < (a: ContainerName, b: ContainerName) -> Bool { a.path < b.path }

    /// Resolves user input: checks the characters, joins a relative name onto
    /// `base` (the caller's own container), cleans `.`/`..`/`//` Plan 9 style
    /// (`..` at the root stays at the root), and checks every segment.
    /// `within`: the container that plays the root's part (ContainerScope):
    /// an absolute name starts there, and `..` never leaves it; `base` must
    /// be it or below it (otherwise `within` is the base).
    public static func resolve(_ raw: String, relativeTo base: ContainerName,
                               within root: ContainerName = .root) throws(LmctfyError) -> ContainerName {
        guard !raw.isEmpty else { throw .invalidArgument("Container name is missing") }
        for u in raw.utf8 {
            let ok = (u >= 0x61 && u <= 0x7A) || (u >= 0x41 && u <= 0x5A) || (u >= 0x30 && u <= 0x39)
                || u == 0x5F || u == 0x2D || u == 0x2E || u == 0x2F
            guard ok else {
                throw .invalidArgument("Invalid characters in container name \"\(printable(raw))\"")
            }
        }
        guard raw.utf8.count <= maxLength else {
            throw .invalidArgument("Container name is longer than \(maxLength) bytes")
        }
        let floor = root.components.count
        let start = root.isRoot || base == root || root.isAncestor(of: base) ? base : root
        var parts = raw.hasPrefix("/") ? root.components : start.components
        // Split on the bytes, by hand: names are resolved several times a
        // call (ASCII only, checked above).
        var bytes = raw
        bytes.withUTF8 { b in
            let slash = UInt8(ascii: "/"), dot = UInt8(ascii: ".")
            var i = 0
            while i < b.count {
                if b[i] == slash { i += 1; continue }
                var end = i
                while end < b.count && b[end] != slash { end += 1 }
                let n = end - i
                if n == 1 && b[i] == dot {
                } else if n == 2 && b[i] == dot && b[i + 1] == dot {
                    if parts.count > floor { parts.removeLast() }
                } else {
                    parts.append(String(decoding: UnsafeBufferPointer(rebasing: b[i..<end]), as: UTF8.self))
                }
                i = end
            }
        }
        for segment in parts {
            guard let first = segment.utf8.first,
                  (first >= 0x61 && first <= 0x7A) || (first >= 0x41 && first <= 0x5A) || (first >= 0x30 && first <= 0x39)
            else {
                throw .invalidArgument(
                    "Part of the container name \"\(segment)\" starts with a non-alphanumeric character")
            }
            guard segment.utf8.count <= maxSegmentLength else {
                throw .invalidArgument(
                    "Part of the container name is longer than \(maxSegmentLength) bytes")
            }
            if let file = controlFileKind(segment) {
                throw .invalidArgument(
                    "Part of the container name \"\(segment)\" is the name of a cgroup control file (\(file)); "
                        + "a container cannot be called that")
            }
        }
        // A relative name joins the base: the resolved path, not only what
        // was typed, must stay within the limit (cgroup paths under PATH_MAX).
        let resolvedLength = parts.reduce(0) { $0 + 1 + $1.utf8.count }
        guard resolvedLength <= maxLength else {
            throw .invalidArgument("Container name \"\(printable(raw))\" resolves to \(resolvedLength) bytes, longer than \(maxLength)")
        }
        if let top = parts.first, let why = reserved.first(where: { $0.key == top })?.value {
            throw .invalidArgument("Container name \"/\(parts[0])\" is reserved: \(why)")
        }
        return ContainerName(trusted: parts)
    }

    /// Prefixes of the control files a cgroup directory holds, one per
    /// controller of v1 or v2 (and v2's pressure files). A static list, not
    /// the files of the mounted roots: it costs nothing, works on fake trees,
    /// and a name stays valid or invalid whatever this machine mounts.
    /// A container with such a name would be made in the hierarchies
    /// without that file and fail with EEXIST/ENOTDIR in the others, and
    /// then could never be destroyed (nor its parent).
    static let controlFilePrefixes = [
        "cgroup.", "cpu.", "cpuacct.", "cpuset.", "memory.", "blkio.", "io.", "devices.", "freezer.",
        "pids.", "perf_event.", "hugetlb.", "net_cls.", "net_prio.", "rdma.", "misc.", "irq.",
    ]
    /// Control files without a controller prefix (v1).
    static let controlFileNames: Set<String> = ["tasks", "notify_on_release", "release_agent"]

    /// Top-level names lmctfy uses itself, with why.
    static let reserved: [String: String] = [
        "batch": "it is the cpu cgroup lmctfy keeps for NORMAL and BEST_EFFORT containers",
    ]

    /// Which control file (or family) `segment` names, or nil.
    static func controlFileKind(_ segment: String) -> String? {
        if controlFileNames.contains(where: { $0 == segment }) { return segment }
        // Every prefix ends in a dot: a segment without one has none of them.
        guard segment.utf8.contains(UInt8(ascii: ".")) else { return nil }
        if let p = controlFilePrefixes.first(where: { segment.utf8.starts(with: $0.utf8) }) { return p + "*" }
        return nil
    }

    /// For error messages, between double quotes: the input with
    /// non-printable bytes escaped, and the quote and the backslash (a
    /// name with a quote in it read as two). Cut at `limit` characters
    /// (a name given; a path found on the machine is kept whole).
    public static func printable(_ s: String, limit: Int = 80) -> String {
        var out = ""
        for u in s.unicodeScalars {
            if u == "\"" || u == "\\" {
                out += "\\"
                out.unicodeScalars.append(u)
            } else if u.value >= 0x20 && u.value < 0x7F {
                out.unicodeScalars.append(u)
            } else {
                out += "\\u{\(String(u.value, radix: 16))}"
            }
        }
        return out.count > limit ? String(out.prefix(limit)) + "…" : out
    }
}
