// lmctfy's own records on its cgroup directories, as extended attributes:
// the one place that names their namespace.
//
// `user.*`, not `trusted.*`: the owner of a delegated container (owner,
// owner_group) must write them on the subcontainers it makes, and only
// CAP_SYS_ADMIN may write `trusted.*`. cgroupfs (v1 and v2, Linux 5.7+)
// keeps `user.*` xattrs, writable by whoever may write the directory.
import LmctfySystem

enum Record: String, CaseIterable {
    /// On every directory lmctfy makes: `creating` from right after its
    /// mkdir; on the tasks directory `complete` once the whole spec is
    /// applied (the container is visible only then), `destroying` once a
    /// destroy has started removing it.
    case state
    /// v2: which resources the container isolates.
    case resources
    /// The cpu scheduling latency chosen at create.
    case schedulingLatency = "cpu.scheduling_latency"
    /// The eviction priority (D12) where the kernel has no file for it.
    case evictionPriority = "eviction_priority"
    /// On a virtual host's tasks directory, from before its init starts:
    /// its `virtual_host` and `filesystem` as text (what `spec` reads
    /// back). Only such a container is searched for an init (run, enter).
    case virtualHost = "virtual_host"
    /// A virtual host's outside veth end (destroy deletes it).
    case vethOutside = "network.veth_outside"
    /// On a tasks directory while a kill of its processes holds it frozen:
    /// the killer's pid and start time ("" once it thawed it). A freeze
    /// whose killer is gone (`lmctfy killall` killed part way) is undone by
    /// the next run or kill, not taken for a pause.
    case killing
    /// On a tasks directory: the token its creator gave (`create`'s
    /// `origin`), from before it is complete.
    case origin

    /// The namespace of every lmctfy record.
    static let namespace = "user.lmctfy."

    var xattrName: String { Self.namespace + rawValue }
}

/// What lmctfy knows a directory to be, from its `state` record.
enum DirState: Equatable {
    /// No such directory.
    case absent
    /// A directory lmctfy did not make (no record): never touched.
    case foreign
    /// Made by a create that has not finished (or was interrupted).
    case creating
    /// A whole container (tasks directory) or one of its directories.
    case complete
    /// A container whose destroy has started.
    case destroying

    static let creatingValue = "creating"
    static let completeValue = "complete"
    static let destroyingValue = "destroying"

    /// Made by lmctfy (in any state).
    var isLmctfy: Bool { self == .creating || self == .complete || self == .destroying }
}

extension CgroupDir {
    /// An lmctfy record on this directory; nil when it was never written.
    func record(_ r: Record) throws(LmctfyError) -> String? { try xattr(r.xattrName) }

    func setRecord(_ r: Record, _ value: String) throws(LmctfyError) { try setXattr(r.xattrName, value) }

    /// Whether lmctfy made this directory and how far it got. One
    /// getxattr: it also says whether the directory exists. The cgroupfs
    /// check (a statfs) runs only for "no mark", which may be a filesystem
    /// mounted over the directory: a mark found leads only to reads and
    /// writes that check their file themselves.
    func state() throws(LmctfyError) -> DirState {
        let value: String?
        switch try readXattr(Record.state.xattrName, checked: false) {
        case .success(let v): value = v
        case .failure(let error) where Self.gone(error.errno): return .absent
        case .failure(let error):
            // Say so if the failure is something mounted over the directory
            // (a filesystem without lmctfy's xattrs: EOPNOTSUPP).
            try checkFilesystem()
            throw xattrError(error, Record.state.xattrName)
        }
        switch value {
        case nil:
            try checkFilesystem()
            return .foreign
        case DirState.completeValue: return .complete
        case DirState.destroyingValue: return .destroying
        default: return .creating
        }
    }

    func setState(_ s: DirState) throws(LmctfyError) {
        let value = switch s {
        case .complete: DirState.completeValue
        case .destroying: DirState.destroyingValue
        default: DirState.creatingValue
        }
        // `creating` goes on the directory just made (MadeDirs).
        try setXattr(Record.state.xattrName, value, checked: s != .creating)
    }
}

extension CgroupDir {
    /// Marks this directory as lmctfy's: `complete` makes a tasks
    /// directory a visible container. For fake trees in tests and for
    /// tools adopting cgroups lmctfy did not make; create and destroy
    /// write the marks themselves.
    public func markAsLmctfys(complete: Bool) throws(LmctfyError) {
        try setState(complete ? .complete : .creating)
    }
}
