// Helpers shared by the test suites: the root gate, unique names for test
// containers with cleanup, and fake cgroup trees for unit tests of parsing
// and mapping (never instead of the real kernel).
import Glibc
import Lmctfy
import LmctfyProto
import LmctfySystem

public enum RealCgroups {
    /// Why integration tests cannot run here, or nil when they can. Tests
    /// gate on this with `.enabled(if: RealCgroups.unavailableReason == nil, ...)`
    /// so a skip always prints the reason.
    public static let unavailableReason: String? = {
        if geteuid() != 0 { return "integration tests need root (euid is \(geteuid()))" }
        guard let mounts = try? CgroupMounts.detect() else { return "cannot read /proc/self/mountinfo" }
        guard mounts.version == .v1 || mounts.version == .v2 else { return "no cgroup v1 freezer or cgroup2 mounted" }
        return nil
    }()

    public static var available: Bool { unavailableReason == nil }

    /// Prefix of every container a test creates; the suite checks none is left.
    public static let prefix = "lmctfy_test_"

    nonisolated(unsafe) private static var counter = 0
    private static let lock = Lock()

    /// A fresh top-level name: /lmctfy_test_<pid>_<n>_<label>.
    public static func uniqueName(_ label: String = "c") -> String {
        let n = lock.locked { () -> Int in
            counter += 1
            return counter
        }
        return "/\(prefix)\(getpid())_\(n)_\(label)"
    }

    /// A test's clean-up: `lmctfy destroy -f name`, tried again (up to
    /// three times) if it fails, each failure printed loudly with what
    /// lmctfy said (a `try?` that dropped it left CI one line, "left
    /// behind", and no cause). Whether the container is gone.
    @discardableResult
    public static func destroy(_ name: String) -> Bool {
        for attempt in 1...3 {
            do {
                let r = try TestProcess.capture([builtTool("lmctfy"), "destroy", "-f", name])
                // (5, NOT_FOUND: already gone, as some tests leave it.)
                if r.status == 0 || r.status == StatusCode.notFound.rawValue { return true }
                let said = String(decoding: r.stderr, as: UTF8.self)
                try? Sys.writeAll(2, Array("CLEAN-UP FAILED (attempt \(attempt) of 3): lmctfy destroy -f \(name): exit \(r.status): \(said)\n".utf8))
            } catch {
                try? Sys.writeAll(2, Array("CLEAN-UP FAILED (attempt \(attempt) of 3): lmctfy destroy -f \(name): \(error)\n".utf8))
            }
            usleep(500_000)
        }
        return false
    }

    /// Test-created cgroup directories left in any hierarchy.
    public static func leftovers() -> [String] {
        guard let mounts = try? CgroupMounts.detect() else { return [] }
        var roots = Set(mounts.v1.values)
        if let u = mounts.unified { roots.insert(u) }
        var found: [String] = []
        for root in roots.sorted() {
            for sub in ["", "/batch"] {
                let dirs = (try? Sys.subdirectories(root + sub)) ?? []
                found += dirs.filter { $0.hasPrefix(prefix + "\(getpid())_") }.map { root + sub + "/" + $0 }
            }
        }
        return found
    }
}

/// Creates/destroys a test container around a body, destroying it (and
/// everything below it) even when the body throws.
public func withTestContainer<T>(
    _ api: ContainerApi, spec: String = "", label: String = "c",
    _ body: (ContainerName) throws -> T
) throws -> T {
    let name = try testContainerName(label)
    // Destroyed whether or not it is visible: a create that failed part
    // way may have left lmctfy's leftovers, which destroy removes.
    defer { _ = try? api.destroy(name) }
    return try body(name)
}

/// `withTestContainer` for a body that awaits (its waits then give the
/// test's thread back to the other suites instead of blocking it).
public func withTestContainer<T>(
    _ api: ContainerApi, label: String = "c",
    _ body: (ContainerName) async throws -> T
) async throws -> T {
    let name = try testContainerName(label)
    defer { _ = try? api.destroy(name) }
    return try await body(name)
}

/// A top-level container name of this test process (RealCgroups' prefix).
private func testContainerName(_ label: String) throws -> ContainerName {
    try ContainerName.resolve(RealCgroups.uniqueName(label), relativeTo: .root)
}

/// A fake cgroup tree in a temp directory, shaped like v1 (one directory per
/// hierarchy) or v2 (one unified directory), for unit tests.
public final class FakeCgroupTree: @unchecked Sendable {
    public let root: String
    public let version: CgroupVersion

    public init(_ version: CgroupVersion, controllers: [Controller] = Controller.allCases) throws {
        var template = Array("/tmp/lmctfy-fake-XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { buf -> String? in
            mkdtemp(buf.baseAddress!).map { String(cString: $0) }
        }
        guard let made else { throw SystemError("mkdtemp", "/tmp", errno) }
        root = made
        self.version = version
        switch version {
        case .v1:
            for c in controllers { try Sys.mkdir(root + "/" + c.rawValue) }
        case .v2:
            try Sys.mkdir(root + "/unified")
            try Sys.createFile(root + "/unified/cgroup.controllers", "cpuset cpu io memory pids\n")
            try Sys.createFile(root + "/unified/cgroup.subtree_control", "")
        }
    }

    deinit { _ = removeTree(root) }

    /// The tree's mounts, reached as a fake (no cgroupfs check), with an
    /// optional fault plan.
    public func mounts(faults: FaultPlan?) -> CgroupMounts {
        switch version {
        case .v1:
            var m = CgroupMounts(access: .fake(faults: faults, lockRoot: root + "/locks"))
            for c in Controller.allCases where Sys.isDirectory(root + "/" + c.rawValue) { m.v1[c] = root + "/" + c.rawValue }
            return m
        case .v2:
            return CgroupMounts(unified: root + "/unified", access: .fake(faults: faults, lockRoot: root + "/locks"))
        }
    }

    public var mounts: CgroupMounts { mounts(faults: nil) }

    /// A directory in a fake hierarchy ("cpu", "memory", ... or "unified").
    public func dir(_ hierarchy: String, _ segments: [String] = []) -> CgroupDir {
        CgroupDir(mount: root + "/" + hierarchy, segments: segments, access: .fake())
    }

    /// Creates (mkdir -p) the directory and the files with their contents.
    public func seed(_ hierarchy: String, _ segments: [String] = [], files: [String: String]) throws {
        var path = root + "/" + hierarchy
        for s in segments {
            path += "/" + s
            if !Sys.isDirectory(path) { try Sys.mkdir(path) }
        }
        for (name, value) in files { try Sys.createFile(path + "/" + name, value) }
    }

    /// What a file holds now.
    public func contents(_ hierarchy: String, _ segments: [String], _ file: String) throws -> String {
        try Sys.readFile(root + "/" + hierarchy + "/" + (segments.isEmpty ? "" : segments.joined(separator: "/") + "/") + file)
    }
}

/// rm -rf for test temp trees only.
@discardableResult
public func removeTree(_ path: String) -> Bool {
    guard path.hasPrefix("/tmp/") else { return false }
    if let dir = opendir(path) {
        while let e = readdir(dir) {
            let name = withUnsafePointer(to: e.pointee.d_name) {
                $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
            }
            if name == "." || name == ".." { continue }
            let child = path + "/" + name
            if e.pointee.d_type == UInt8(DT_DIR) { removeTree(child) } else { unlink(child) }
        }
        closedir(dir)
    }
    return rmdir(path) == 0
}

/// The built lmctfy-test-helper (alloc / forkloop workloads): beside the
/// test bundle, or where LMCTFY_TEST_HELPER says (the v2 guest).
public let testHelperPath: String = {
    if let p = getenv("LMCTFY_TEST_HELPER") { return String(cString: p) }
    var dir = CommandLine.arguments[0]
    // .../debug/lmctfyPackageTests.xctest → .../debug
    while let slash = dir.lastIndex(of: "/") {
        dir = String(dir[..<slash])
        if Sys.exists(dir + "/lmctfy-test-helper") { return dir + "/lmctfy-test-helper" }
        if dir.isEmpty { break }
    }
    return ".build/debug/lmctfy-test-helper"
}()

/// Another executable of this package, built beside lmctfy-test-helper.
public func builtTool(_ name: String) -> String {
    guard let slash = testHelperPath.lastIndex(of: "/") else { return name }
    return String(testHelperPath[...slash]) + name
}

/// Test processes: started with posix_spawn, ended and reaped by pid only.
public enum TestProcess {
    /// Starts `argv` (absolute path first) and returns its pid.
    public static func spawn(_ argv: [String]) throws -> pid_t {
        var pid: pid_t = 0
        var cargs = argv.map { strdup($0) }
        cargs.append(nil)
        defer { for p in cargs { free(p) } }
        let rc = posix_spawn(&pid, argv[0], nil, nil, cargs, environ)
        guard rc == 0 else { throw SystemError("posix_spawn", argv[0], rc) }
        return pid
    }

    /// SIGKILLs (if still running) and reaps a child this test started. A
    /// child already reaped is left alone: its pid may belong to someone else now.
    public static func end(_ pid: pid_t) {
        let running: Bool
        do {
            running = try Sys.exitStatusIfExited(pid) == nil
        } catch {
            running = false  // ECHILD: not (or no longer) our child
        }
        guard running else { return }
        // Still our unreaped child: the pid cannot have been reused.
        kill(pid, SIGKILL)
        _ = try? Sys.waitForExit(pid)
    }

    /// Reaps without killing; how it ended, or nil if not yet exited (or
    /// not our child).
    public static func reapIfExited(_ pid: pid_t) -> ExitStatus? {
        (try? Sys.exitStatusIfExited(pid)) ?? nil
    }

    /// How our child `pid` ended, reaped once it has (up to 30 s; nil:
    /// still running).
    public static func waitForExit(_ pid: pid_t) -> ExitStatus? {
        for _ in 0..<1500 {
            if let status = reapIfExited(pid) { return status }
            usleep(20_000)
        }
        return nil
    }

    /// Whether our child `pid` has exited, without reaping it (its status
    /// stays for `reapIfExited`); false when still running or not our child.
    public static func hasExited(_ pid: pid_t) -> Bool {
        var info = siginfo_t()
        guard waitid(P_PID, id_t(pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0 else { return false }
        return info._sifields._sigchld.si_pid == pid
    }

    /// Moves a process into every directory the container has (test-only
    /// stand-in until `enter` lands in the library).
    public static func move(_ pid: pid_t, into dirs: [CgroupDir]) throws {
        for d in dirs { try d.write("cgroup.procs", String(pid)) }
    }
}

/// What a finished child printed and how it ended.
public struct ChildResult: Sendable {
    public var status: Int32
    public var signaled: Bool
    public var stdout: [UInt8]
    public var stderr: [UInt8]
}

extension TestProcess {
    /// Starts `argv` (absolute path first) with its stdin and stdout on
    /// pipes: returns its pid, the end that writes its stdin and the end
    /// that reads its stdout (the caller closes both, and reaps it).
    public static func spawnPiped(_ argv: [String]) throws -> (pid: pid_t, stdin: Int32, stdout: Int32) {
        let (inRead, inWrite) = try Sys.pipe()
        let (outRead, outWrite) = try Sys.pipe()
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, inRead, 0)
        posix_spawn_file_actions_adddup2(&actions, outWrite, 1)
        var cargs = argv.map { strdup($0) }
        cargs.append(nil)
        defer { for p in cargs { free(p) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, argv[0], &actions, nil, cargs, environ)
        close(inRead)
        close(outWrite)
        guard rc == 0 else {
            close(inWrite); close(outRead)
            throw SystemError("posix_spawn", argv[0], rc)
        }
        return (pid, inWrite, outRead)
    }

    /// Runs argv to completion, capturing stdout and stderr (stdin is
    /// /dev/null). posix_spawn and poll only: Foundation's Process needs
    /// CFSocket wake-up pairs the qemu guest cannot give it.
    public static func capture(_ argv: [String]) throws -> ChildResult {
        let (outRead, outWrite) = try Sys.pipe()
        let (errRead, errWrite) = try Sys.pipe()
        let outPipe = [outRead, outWrite], errPipe = [errRead, errWrite]
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, outPipe[1], 1)
        posix_spawn_file_actions_adddup2(&actions, errPipe[1], 2)
        var cargs = argv.map { strdup($0) }
        cargs.append(nil)
        defer { for p in cargs { free(p) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, argv[0], &actions, nil, cargs, environ)
        close(outPipe[1])
        close(errPipe[1])
        guard rc == 0 else {
            close(outPipe[0]); close(errPipe[0])
            throw SystemError("posix_spawn", argv[0], rc)
        }
        var out: [UInt8] = [], err: [UInt8] = []
        var fds = [pollfd(fd: outPipe[0], events: Int16(POLLIN), revents: 0),
                   pollfd(fd: errPipe[0], events: Int16(POLLIN), revents: 0)]
        var open = 2
        var buf = [UInt8](repeating: 0, count: 65536)
        while open > 0 {
            if poll(&fds, 2, -1) < 0 { if errno == EINTR { continue }; break }
            for i in 0..<2 where fds[i].fd >= 0 && fds[i].revents != 0 {
                let n = buf.withUnsafeMutableBytes { read(fds[i].fd, $0.baseAddress, $0.count) }
                if n > 0 {
                    if i == 0 { out += buf[0..<n] } else { err += buf[0..<n] }
                } else if n == 0 || errno != EINTR {
                    close(fds[i].fd)
                    fds[i].fd = -1
                    open -= 1
                }
            }
        }
        let status = try Sys.waitForExit(pid)
        return ChildResult(status: status.shellStatus, signaled: status.signal != nil, stdout: out, stderr: err)
    }
}

/// SplitMix64: reproducible randomness for property, fuzz and stream tests
/// (a fixed seed makes a failure repeatable).
public struct SplitMix64: RandomNumberGenerator {
    public var state: UInt64

    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// The kernel's count of OOM kills in `name`'s own memory cgroup: v1's
/// memory.oom_control, v2's memory.events.
public func oomKills(_ name: ContainerName) -> Int? {
    for (file, root) in [("memory.oom_control", "/sys/fs/cgroup/memory"), ("memory.events", "/sys/fs/cgroup")] {
        guard let text = try? Sys.readFile(root + name.description + "/" + file) else { continue }
        for line in text.split(separator: "\n") where line.hasPrefix("oom_kill ") {
            return Int(line.dropFirst("oom_kill ".count))
        }
    }
    return nil
}

/// The machine's /batch, what `lmctfy init` makes on cgroup v1 for the
/// latency classes (its cpu and cpuacct directories), for the length of
/// `body`: made as init makes it if it is missing (a fresh machine that was
/// never initialised: CI's), and removed afterwards when this made it and it
/// is empty again. A machine that has it keeps it untouched. One body at a
/// time in this process: a test that checks /batch is not made behind its
/// back (`HardeningIntegrationTests.batchIsReserved`) runs under the same
/// lock (`MachineBatch.exclusively`).
public enum MachineBatch {
    private static let lock = Lock()

    public static func made<T>(_ api: ContainerApi, _ body: () throws -> T) throws -> T {
        try exclusively {
            let dirs = [Controller.cpu, .cpuacct].compactMap { api.mounts.v1[$0].map { $0 + "/batch" } }
            let missing = Set(dirs.filter { !Sys.isDirectory($0) })
            defer { for d in missing where Sys.isDirectory(d) { try? Sys.rmdir(d) } }
            if !missing.isEmpty { _ = try ContainerApi.initMachine(InitSpec()) }
            return try body()
        }
    }

    /// `body` while no `made` runs.
    public static func exclusively<T>(_ body: () throws -> T) throws -> T {
        try lock.locked { () throws -> T in try body() }
    }
}

extension TestProcess {
    /// Starts `argv` with its stdin, stdout and stderr on the terminal
    /// `slave` (its stdin on `stdin` instead, when given).
    public static func spawnOnTerminal(_ argv: [String], _ slave: Int32, stdin: Int32? = nil) throws -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, stdin ?? slave, 0)
        for fd: Int32 in 1...2 { posix_spawn_file_actions_adddup2(&actions, slave, fd) }
        var cargs = argv.map { strdup($0) }
        cargs.append(nil)
        defer { for c in cargs { free(c) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, argv[0], &actions, nil, cargs, environ)
        guard rc == 0 else { throw SystemError("posix_spawn", argv[0], rc) }
        return pid
    }
}

/// Reads a terminal's master into `text` until `done` holds (up to 30 s).
public func readTerminal(_ master: Int32, _ text: inout String, _ done: (String) -> Bool) -> Bool {
    var buffer = [UInt8](repeating: 0, count: 4096)
    let end = MonotonicClock.milliseconds() + 30_000
    while !done(text) && MonotonicClock.milliseconds() < end {
        guard Terminal.waitReadable([master], timeoutMs: 200).contains(master) else { continue }
        let n = buffer.withUnsafeMutableBytes { read(master, $0.baseAddress, $0.count) }
        if n <= 0 { return done(text) }
        text += String(decoding: buffer[0..<n], as: UTF8.self)
    }
    return done(text)
}
