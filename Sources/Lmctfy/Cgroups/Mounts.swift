// Which cgroup hierarchies are mounted where, from /proc/self/mountinfo, and
// so which backend (v1 or v2) lmctfy drives.
import LmctfySystem

/// A cgroup v1 controller (hierarchy).
public enum Controller: String, CaseIterable, Sendable, Comparable {
    /// The v1 controllers lmctfy knows; they sort in this (declaration) order.
    case cpu, cpuacct, cpuset, freezer, memory, devices, blkio, pids
    /// perf_event, named as the kernel names it.
    case perfEvent = "perf_event"

    public static func < (a: Controller, b: Controller) -> Bool { a.order < b.order }

    /// The declaration order (a switch, not a search of allCases: the
    /// drivers compare controllers for every directory they look up).
    private var order: Int {
        switch self {
        case .cpu: 0
        case .cpuacct: 1
        case .cpuset: 2
        case .freezer: 3
        case .memory: 4
        case .devices: 5
        case .blkio: 6
        case .pids: 7
        case .perfEvent: 8
        }
    }
}

/// Which cgroup version lmctfy drives on this machine.
public enum CgroupVersion: String, Sendable {
    /// v1: one hierarchy per (co-mounted) controller; v2: the unified cgroup2 hierarchy.
    case v1, v2

    /// 1 or 2, as the agent reports it.
    public var number: Int32 { self == .v1 ? 1 : 2 }
}

/// The cgroup filesystems of this machine (or of a fake tree in tests).
public struct CgroupMounts: Sendable, Equatable {
    /// v1 controller → its mount point. Co-mounted controllers share one.
    public var v1: [Controller: String]
    /// The cgroup2 mount point, if any.
    public var unified: String?
    /// How the directories are reached: the real kernel (every access
    /// checked to be on cgroupfs) unless a test says it is a fake tree.
    public var access: CgroupAccess
    /// Mount point → the cgroup it shows (mountinfo's root field): "/"
    /// unless the mount is of a sub-cgroup, or was made outside this
    /// process's cgroup namespace ("/../.."). /proc/<pid>/cgroup paths are
    /// relative to the namespace's root, not to such a mount's root.
    public var mountRoots: [String: String] = [:]

    /// Where a task is, from its /proc/<task>/cgroup: its cgroup's path
    /// ("/a/b") per mount point of these, from lines "id:controllers:path"
    /// ("0::path" for the unified hierarchy); hierarchies not mounted here
    /// are left out. Read as bytes: it is parsed at every spawn, and
    /// splitting it as Strings cost more than reading it.
    public func taskCgroups(_ text: [UInt8]) -> [(mount: String, path: ArraySlice<UInt8>)] {
        let colon = UInt8(ascii: ":"), comma = UInt8(ascii: ","), newline = UInt8(ascii: "\n")
        var out: [(mount: String, path: ArraySlice<UInt8>)] = []
        var start = text.startIndex
        while start < text.endIndex {
            let end = text[start...].firstIndex(of: newline) ?? text.endIndex
            let line = text[start..<end]
            start = end + 1
            guard let c1 = line.firstIndex(of: colon), let c2 = line[(c1 + 1)...].firstIndex(of: colon) else { continue }
            let controllers = line[(c1 + 1)..<c2], path = line[(c2 + 1)...]
            if controllers.isEmpty {
                if line[..<c1].elementsEqual("0".utf8), let u = unified { out.append((u, path)) }
                continue
            }
            var from = controllers.startIndex
            while from <= controllers.endIndex {
                let to = controllers[from...].firstIndex(of: comma) ?? controllers.endIndex
                let word = controllers[from..<to]
                if let c = Controller.allCases.first(where: { $0.rawValue.utf8.elementsEqual(word) }), let m = v1[c] {
                    out.append((m, path))
                }
                from = to + 1
            }
        }
        return out
    }

    /// Mounts as given (tests and init): no detection, nothing checked until used.
    public init(v1: [Controller: String] = [:], unified: String? = nil, access: CgroupAccess = .kernel) {
        self.v1 = v1
        self.unified = unified
        self.access = access
    }

    /// Equal when the same hierarchies are mounted at the same places; `access`
    /// (how they are reached) is not compared.
    public static func == (a: CgroupMounts, b: CgroupMounts) -> Bool { a.v1 == b.v1 && a.unified == b.unified }

    /// v1 when the freezer hierarchy is mounted (the original's requirement,
    /// and how a hybrid machine like ours runs); v2 when only cgroup2 is.
    public var version: CgroupVersion? {
        if v1[.freezer] != nil { return .v1 }
        if unified != nil { return .v2 }
        return nil
    }

    /// Parses mountinfo: the first mount seen of each controller wins.
    /// A line is `id parent dev root mountpoint opts [tags...] - fstype source superopts`.
    public static func parse(mountinfo: String) -> CgroupMounts {
        var mounts = CgroupMounts()
        for line in mountinfo.split(separator: "\n") {
            let fields = line.split(separator: " ")
            guard let dash = fields.firstIndex(of: "-"), dash >= 5, fields.count >= dash + 4 else { continue }
            let mountPoint = unescape(String(fields[4]))
            let root = unescape(String(fields[3]))
            switch fields[dash + 1] {
            case "cgroup":
                for option in fields[dash + 3].split(separator: ",") {
                    if let c = Controller(rawValue: String(option)), mounts.v1[c] == nil {
                        mounts.v1[c] = mountPoint
                        mounts.mountRoots[mountPoint] = root
                    }
                }
            case "cgroup2":
                if mounts.unified == nil {
                    mounts.unified = mountPoint
                    mounts.mountRoots[mountPoint] = root
                }
            default:
                continue
            }
        }
        return mounts
    }

    /// mountinfo escapes space, tab, newline and backslash as \ooo.
    static func unescape(_ s: String) -> String {
        let b = Array(s.utf8)
        var out = [UInt8]()
        var i = 0
        while i < b.count {
            if b[i] == 0x5C, i + 3 < b.count,
               let v = UInt8(String(decoding: b[(i + 1)...(i + 3)], as: UTF8.self), radix: 8) {
                out.append(v)
                i += 4
            } else {
                out.append(b[i])
                i += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// This machine's mounts (or a fake /proc's), reached with `access`.
    public static func detect(procRoot: String = "/proc", access: CgroupAccess = .kernel) throws(LmctfyError) -> CgroupMounts {
        do {
            var mounts = parse(mountinfo: try Sys.readFile(procRoot + "/self/mountinfo"))
            mounts.access = access
            return mounts
        } catch {
            throw error.lmctfy(.failedPrecondition, "Failed to read the mount table")
        }
    }
}

