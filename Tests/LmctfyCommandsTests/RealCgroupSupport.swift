// Helpers for the integration suites: both ways of running lmctfy, test
// containers that are always destroyed, and a real task to put inside one.
import Foundation
import Glibc
import Lmctfy
import LmctfyCommands
import LmctfySystem
import LmctfyTestSupport
import Testing

/// The same command line through the built executable or in-process.
enum Runner: String, CaseIterable, CustomTestStringConvertible {
    case binary, inProcess
    var testDescription: String { rawValue }

    func callAsFunction(_ args: String...) throws -> CLIResult { try run(args) }

    func run(_ args: [String]) throws -> CLIResult {
        switch self {
        case .binary: return try BuiltBinary.run(args)
        case .inProcess:
            // In-process, a foreground `run` must not replace the test runner:
            // the backend spawns and waits where lmctfy would exec.
            let parent = Sys.getppid()
            let environment = CLIEnvironment(
                makeBackend: { () throws(LmctfyError) -> any ContainerBackend in
                    try LocalBackend.detect(callerPid: parent, foreground: LocalBackend.spawnAndWait(stdio: .inherit))
                },
                initMachine: LocalBackend.prepareMachine)
            return lmctfy(args, in: environment)
        }
    }
}

enum Host {
    static var mounts: CgroupMounts { (try? CgroupMounts.detect()) ?? CgroupMounts() }
    static var freezer: String { mounts.v1[.freezer] ?? mounts.unified ?? "/nonexistent" }

    /// Every directory this container name has in any hierarchy.
    static func dirs(of name: String) -> [String] {
        var roots = Set(mounts.v1.values)
        if let u = mounts.unified { roots.insert(u) }
        return roots.flatMap { [$0 + name, $0 + "/batch" + name] }.filter { Sys.exists($0) }.sorted()
    }

    static func topLevelEntries() -> Set<String> {
        Set((try? Sys.subdirectories(freezer)) ?? [])
    }
}

/// A fresh test container name; whatever the body made under it is
/// destroyed afterwards, even when the body fails, and nothing may be left.
func withTestName<T>(_ label: String, _ body: (String) throws -> T) throws -> T {
    let name = RealCgroups.uniqueName(label)
    defer {
        if let api = try? ContainerApi.detect(), let n = try? api.resolve(name) {
            _ = try? api.destroy(n)  // visible or not: leftovers go too
        }
        #expect(Host.dirs(of: name).isEmpty, "left behind: \(Host.dirs(of: name))")
    }
    return try body(name)
}

/// `/bin/sleep` started by this test and moved into a container by writing
/// its pid to the freezer's cgroup.procs; ended by pid.
final class SleepingTask {
    let pid: pid_t

    init(into container: String) throws {
        pid = try TestProcess.spawn(["/bin/sleep", "300"])
        do {
            try Sys.writeFile(Host.freezer + container + "/cgroup.procs", String(pid))
        } catch {
            TestProcess.end(pid)
            throw error
        }
    }

    /// SIGKILL (if still running) and reap; safe after a waitpid of our own.
    func end() { TestProcess.end(pid) }
}
