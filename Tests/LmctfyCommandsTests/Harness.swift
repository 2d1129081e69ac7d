// Running lmctfy from tests: in-process through LmctfyCLI.run (with an
// injected machine), or as the built executable in a child process.
import Foundation
import Glibc
import Lmctfy
@testable import LmctfyCommands
import LmctfyProto
import LmctfySystem
import LmctfyTestSupport
import Testing

struct CLIResult: CustomStringConvertible {
    var status: Int32
    var stdoutBytes: [UInt8]
    var stderr: String
    var stdout: String { String(decoding: stdoutBytes, as: UTF8.self) }
    var description: String { "exit \(status)\nstdout: \(stdout)\nstderr: \(stderr)" }

    /// stdout parsed as one JSON document.
    func json() throws -> [String: Any] {
        let object = try JSONSerialization.jsonObject(with: Data(stdoutBytes))
        return try #require(object as? [String: Any], "not a JSON object: \(stdout)")
    }
}

/// Runs one command line in-process.
func lmctfy(_ args: [String], raw: [[UInt8]]? = nil, in environment: CLIEnvironment) -> CLIResult {
    let out = BufferSink()
    let err = BufferSink()
    let status = LmctfyCLI.run(
        rawArguments: raw ?? args.map { Array($0.utf8) }, stdout: out, stderr: err, environment: environment)
    return CLIResult(status: status, stdoutBytes: out.bytes, stderr: err.text)
}

/// The built `lmctfy` executable, which SwiftPM puts in the same directory
/// as the test bundle.
enum BuiltBinary {
    static let path: String? = {
        var candidates = [URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
            .appendingPathComponent("lmctfy").path]
        // Package root from this file's path: <root>/Tests/LmctfyCommandsTests/Harness.swift.
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        candidates.append(root.appendingPathComponent(".build/debug/lmctfy").path)
        return candidates.first { FileManager.default.isExecutableFile(atPath: $0) }
    }()

    static func run(_ args: [String]) throws -> CLIResult {
        let binary = try #require(path, "the lmctfy executable was not built next to the tests")
        let r = try TestProcess.capture([binary] + args)
        #expect(!r.signaled, "lmctfy \(args) was killed by a signal")
        return CLIResult(status: r.status, stdoutBytes: r.stdout, stderr: String(decoding: r.stderr, as: UTF8.self))
    }
}

/// A machine without root: a fake v1 freezer hierarchy and a fake /proc in
/// which lmctfy itself is in "/" and its parent (pid 4242) in `/parent`.
final class FakeMachine: @unchecked Sendable {
    let tree: FakeCgroupTree
    static let parentPid: pid_t = 4242
    /// What `init` was asked to do, in order.
    let initSpecs = Recorder<InitSpec>()

    init() throws {
        tree = try FakeCgroupTree(.v1, controllers: [.freezer])
        try Sys.mkdir(tree.root + "/proc")
        try tree.seed("proc", ["self"], files: ["cgroup": "7:freezer:/\n3:memory:/\n"])
        try tree.seed("proc", ["\(Self.parentPid)"], files: ["cgroup": "7:freezer:/parent\n"])
        try container(["parent"])
    }

    var freezer: String { tree.root + "/freezer" }

    var environment: CLIEnvironment {
        let mounts = tree.mounts
        let procRoot = tree.root + "/proc"
        let recorder = initSpecs
        return CLIEnvironment(
            makeBackend: { () throws(LmctfyError) -> any ContainerBackend in
                LocalBackend(api: try ContainerApi(mounts: mounts, procRoot: procRoot), callerPid: Self.parentPid)
            },
            initMachine: { spec throws(LmctfyError) in recorder.append(spec) })
    }

    /// A container directory with the task files cgroupfs would have.
    func container(_ segments: [String], procs: String = "", tasks: String = "") throws {
        try tree.seed("freezer", segments, files: ["cgroup.procs": procs, "tasks": tasks])
        try tree.dir("freezer", segments).markAsLmctfys(complete: true)
    }

    func run(_ args: String...) -> CLIResult { lmctfy(args, in: environment) }
}

final class Recorder<T: Sendable>: @unchecked Sendable {
    private let lock = Lock()
    private var items: [T] = []
    func append(_ item: T) { lock.locked { items.append(item) } }
    var all: [T] { lock.locked { items } }
}

/// A temporary file for `-c`, removed when the body returns.
func withTempFile<T>(_ bytes: [UInt8], _ body: (String) throws -> T) throws -> T {
    let path = NSTemporaryDirectory() + "lmctfy-spec-\(getpid())-\(UUID().uuidString)"
    try Data(bytes).write(to: URL(fileURLWithPath: path))
    defer { unlink(path) }
    return try body(path)
}
