// The fault-injection seam: a plan that makes chosen syscalls fail with a
// chosen errno, so tests can walk every failure path of create, update,
// destroy, run and pause on a fake cgroup tree without root. The plan is
// handed to the wrappers (never a global), so tests running in parallel do
// not see each other's faults. The injected failure enters the wrapper's own
// retry loop exactly where the kernel's errno would, so an injected EINTR is
// retried by the same code that retries a real one.
import Glibc
import Synchronization

/// The syscalls a FaultPlan can fail.
public enum SysCall: String, Sendable, CaseIterable {
    /// One case per wrapped syscall; `spawn` is a whole process start (failed as a fork).
    case open, read, write, mkdir, rmdir, opendir, stat, statfs, getxattr, setxattr, chown, kill, spawn, flock, unlink
    /// `init`'s mount and unmount of a hierarchy (on a fake tree nothing is
    /// mounted: the plan only sees them, and may fail them).
    case mount, umount
}

/// What a fake filesystem does where the real one would act by itself:
/// cgroupfs fills a new directory with its control files and drops them
/// with the directory. Tests give a FaultPlan one to make a temp-dir tree
/// behave like cgroupfs.
public protocol FakeFilesystem: Sendable {
    /// A directory was made at `path`.
    func made(directory path: String)
    /// The directory at `path` is about to be removed.
    func removing(directory path: String)
    /// `value` was written to the file at `path` (a cgroup file may change
    /// others: cgroup.freeze changes cgroup.events).
    func wrote(file path: String, _ value: String)
}

/// Fails calls by their position: the Nth call the plan sees (counting from
/// 1, only calls in `calls`) fails with `errno`, and so do the `times - 1`
/// calls after it. Thread-safe.
public final class FaultPlan: Sendable {
    /// One call the plan saw.
    public struct Seen: Sendable, Equatable, CustomStringConvertible {
        /// The syscall.
        public let call: SysCall
        /// What it was called on: a path, or a pid for `kill`, a command for `spawn`.
        public let path: String
        /// Whether the plan made this call fail.
        public let failed: Bool
        public var description: String { "\(call)(\(path))\(failed ? " FAILED" : "")" }
    }

    private struct State {
        var count = 0
        var seen: [Seen] = []
    }

    /// The position (from 1, counting only `calls`) of the first call to fail;
    /// 0 never fails.
    public let failAt: Int
    /// The errno a failed call reports.
    public let errno: Int32
    /// How many consecutive calls fail, from `failAt` on.
    public let times: Int
    /// The kinds of call the plan counts and fails; others pass untouched.
    public let calls: Set<SysCall>
    /// The fake filesystem the calls act on, if any.
    public let filesystem: (any FakeFilesystem)?
    private let state = Mutex(State())

    /// failAt 0 never fails: a counting plan, to learn how many calls an
    /// operation makes.
    public init(failAt: Int = 0, errno: Int32 = EIO, times: Int = 1, calls: Set<SysCall> = Set(SysCall.allCases),
                filesystem: (any FakeFilesystem)? = nil) {
        self.failAt = failAt
        self.errno = errno
        self.times = times
        self.calls = calls
        self.filesystem = filesystem
    }

    /// How many calls (of the chosen kinds) the plan has seen.
    public var count: Int { state.locked { $0.count } }

    /// Every call seen, in order.
    public var seen: [Seen] { state.locked { $0.seen } }

    /// Whether the plan has failed a call yet.
    public var fired: Bool { state.locked { s in s.seen.contains { $0.failed } } }

    /// The errno to fail this call with, or nil to let it through.
    public func check(_ call: SysCall, _ path: String) -> Int32? {
        guard calls.contains(call) else { return nil }
        return state.locked { s in
            s.count += 1
            let fail = failAt > 0 && s.count >= failAt && s.count < failAt + times
            s.seen.append(Seen(call: call, path: path, failed: fail))
            return fail ? errno : nil
        }
    }
}

extension Sys {
    /// Runs `body` unless the plan fails this call; a failure returns -1
    /// with errno set, as the kernel would, into the caller's retry loop.
    @inline(__always)
    static func injected<T: FixedWidthInteger>(_ faults: FaultPlan?, _ call: SysCall, _ path: @autoclosure () -> String,
                                               _ body: () -> T) -> T {
        if let faults, let e = faults.check(call, path()) {
            Glibc.errno = e
            return -1
        }
        return body()
    }
}
