// The part of the machine's container tree a front door serves, and the one
// place its names are mapped (issue #12, the agent's root_container). Its
// clients see the root as "/" and every name relative to it, as the owner
// of a delegated container sees its subtree: "/a" and "a" are <root>/a, and
// ".." never leaves the root. The machine scope (root "/") maps nothing.
import LmctfySystem

/// A root container and the names below it, as its clients name them.
/// Client names go in through `resolve` (to the machine's names, which CL1
/// uses); machine names come out through `relative`/`path`.
public struct ContainerScope: Hashable, Sendable {
    /// The machine's name of the container clients call "/".
    public let root: ContainerName

    /// The whole machine: names are the machine's own.
    public static let machine = ContainerScope(root: .root)

    /// The scope of `root` (an existing container, or "/").
    public init(root: ContainerName) {
        self.root = root
    }

    /// Whether this is the whole machine (root "/"): nothing is mapped.
    public var isMachine: Bool { root.isRoot }

    /// The machine's name for a client's name: absolute and relative names
    /// both start at the root (the client's own container), and ".." stops
    /// there. INVALID_ARGUMENT as ContainerName.resolve.
    public func resolve(_ raw: String) throws(LmctfyError) -> ContainerName {
        try ContainerName.resolve(raw, relativeTo: root, within: root)
    }

    /// Whether `name` is the root or below it.
    public func contains(_ name: ContainerName) -> Bool {
        name == root || root.isAncestor(of: name)
    }

    /// The client's name for a machine name: "/" for the root itself; nil
    /// for a name outside the root.
    public func relative(_ name: ContainerName) -> ContainerName? {
        if root.isRoot { return name }
        guard contains(name) else { return nil }
        return ContainerName(trusted: Array(name.components.dropFirst(root.components.count)))
    }

    /// A message about containers of this scope, with their machine names
    /// ("/root/web", quoted as messages quote them) given as the client's
    /// ("/web"); the root itself as "/". The machine scope: unchanged.
    /// A cgroup file's path below one of `mountPoints` is given as a
    /// process in a cgroup namespace rooted at the root would see it
    /// ("/sys/fs/cgroup/freezer/root/web/cgroup.procs" as
    /// "/sys/fs/cgroup/freezer/web/cgroup.procs"): the host's layout above
    /// the root is not the caller's to see (a probe).
    public func callerMessage(_ message: String, mountPoints: [String] = []) -> String {
        guard !root.isRoot else { return message }
        let r = root.path
        var out = message.replacing("\"\(r)/", with: "\"/").replacing("\"\(r)\"", with: "\"/\"")
        for m in mountPoints where out.contains(m + r) {
            for end in ["/", ")", ":", " ", "\"", ";", ","] { out = out.replacing(m + r + end, with: m + end) }
            if out.hasSuffix(m + r) { out = String(out.dropLast(r.count)) }
        }
        return out
    }

    /// `relative(name)` as a path; nil for a name outside the root.
    public func path(_ name: ContainerName) -> String? {
        relative(name)?.path
    }
}
