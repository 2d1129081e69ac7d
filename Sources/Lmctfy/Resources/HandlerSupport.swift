// Small pieces the resource handlers share: lmctfy's own records kept as
// xattrs on cgroup directories (for settings the vanilla kernel has no file
// for), block device numbers as cgroup files spell them, and the line
// formats of multi-line cgroup files.
import Glibc
import LmctfySystem

extension CgroupDir {
    /// The non-empty lines of a file, each split on blanks; a missing file
    /// reads as no lines, so optional per-device files need no special case.
    func readFields(_ name: String) throws(LmctfyError) -> [[Substring]] {
        guard try has(name) else { return [] }
        return try read(name).split(separator: "\n").map { $0.split(whereSeparator: { $0 == " " || $0 == "\t" }) }.filter { !$0.isEmpty }
    }
}

/// A block device as cgroup files name it: "major:minor".
struct DeviceNumber: Hashable, Comparable, CustomStringConvertible {
    let major: Int64
    let minor: Int64

    init(major: Int64, minor: Int64) {
        self.major = major
        self.minor = minor
    }

    init?(_ text: Substring) {
        let parts = text.split(separator: ":")
        guard parts.count == 2, let major = Int64(parts[0]), let minor = Int64(parts[1]) else { return nil }
        self.init(major: major, minor: minor)
    }

    var description: String { "\(major):\(minor)" }

    static func < (a: DeviceNumber, b: DeviceNumber) -> Bool { (a.major, a.minor) < (b.major, b.minor) }
}

/// Memory and byte limits: which values mean "no limit".
enum Unlimited {
    /// The largest value a v1 memory file reports: PAGE_COUNTER_MAX pages, so
    /// 2^63-1 rounded down to a 4 KiB page. Reading back an unlimited limit
    /// gives this, and writing it back must mean unlimited again.
    static let v1PageCounterMax: Int64 = 9_223_372_036_854_771_712

    /// Whether a spec or kernel value means unlimited: -1, or at least the
    /// kernel's page-rounded maximum.
    static func isUnlimited(_ v: Int64) -> Bool { v < 0 || v >= v1PageCounterMax }
}

/// One write a handler will make. Handlers first plan every write (reading
/// the current state and refusing what the kernel would refuse), then make
/// them in order, so a bad spec changes nothing of its resource and the
/// order the kernel needs is visible (and tested) in one place.
public struct CgroupWrite: Equatable, Sendable, CustomStringConvertible {
    /// The directory the file is in.
    public let dir: CgroupDir
    /// The control file's name (a single component, e.g. "memory.max").
    public let file: String
    /// The exact text written to the file.
    public let value: String

    /// A write of `value` to the file `file` of `dir`.
    public init(_ dir: CgroupDir, _ file: String, _ value: String) {
        self.dir = dir
        self.file = file
        self.value = value
    }

    public var description: String { "\(file) <- \"\(value)\"" }
}

extension Array where Element == CgroupWrite {
    func perform() throws(LmctfyError) {
        for w in self { try w.dir.write(w.file, w.value) }
    }
}
