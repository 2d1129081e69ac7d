// Specs on the command line (lmctfy-behaviour.md §1.3), without root: init
// records the InitSpec it gets; update and create run on a fake tree.
import Foundation
import Lmctfy
@testable import LmctfyCommands
import LmctfyProto
import LmctfySystem
import Testing

@Suite struct SpecParsingTests {
    let machine: FakeMachine
    init() throws { machine = try FakeMachine() }

    static let mountText = "cgroup_mount:{mount_path:'/sys/fs/cgroup/cpu' hierarchy:CGROUP_CPU hierarchy:CGROUP_CPUACCT}"

    @Test func inlineTextFormat() throws {
        let r = machine.run("init", Self.mountText)
        #expect(r.status == 0, "\(r)")
        let spec = try #require(machine.initSpecs.all.first)
        #expect(spec == (try InitSpec(textFormat: Self.mountText)))
        #expect(spec.cgroupMount.first?.mountPath == "/sys/fs/cgroup/cpu")
    }

    @Test func anEmptyStringIsAnEmptySpec() {
        #expect(machine.run("init", "").status == 0)
        #expect(machine.initSpecs.all == [InitSpec()])
    }

    @Test func inlineBinary() throws {
        let bytes = try InitSpec(textFormat: "cgroup_mount:{mount_path:'/m' hierarchy:CGROUP_FREEZER}").serializedBytes()
        let r = lmctfy(["init", "?"], raw: [Array("init".utf8), bytes], in: machine.environment)
        #expect(r.status == 0, "\(r)")
        #expect(machine.initSpecs.all.first?.cgroupMount.first?.mountPath == "/m")
    }

    @Test func configFileInTextOrBinary() throws {
        try withTempFile(Array(Self.mountText.utf8)) { path throws in
            #expect(machine.run("init", "-c", path).status == 0)
            #expect(machine.run("--lmctfy_config=\(path)", "init").status == 0)
        }
        // Binary with bytes that are not UTF-8 (a varint > 127).
        let spec = ContainerSpec(pids: PidsSpec(limit: 300))
        let bytes = try spec.serializedBytes()
        #expect(String(validating: bytes, as: UTF8.self) == nil)
        #expect(try SpecParser.parse(ContainerSpec.self, bytes, what: "container config") == spec)
        try withTempFile(try InitSpec(textFormat: "cgroup_mount:{mount_path:'/bin' hierarchy:CGROUP_PIDS}").serializedBytes()) { path throws in
            #expect(machine.run("init", "-c", path).status == 0)
        }
        #expect(machine.initSpecs.all.map { $0.cgroupMount.first?.mountPath } == ["/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu", "/bin"])
    }

    @Test func aMissingConfigFileIsInvalid() {
        let r = machine.run("init", "-c", "/nonexistent/lmctfy-spec")
        #expect(r.status == 3)
        #expect(r.stderr.contains("Failed to read the config file \"/nonexistent/lmctfy-spec\""))
    }

    @Test func bothOrNeitherIsInvalid() throws {
        try withTempFile([]) { path throws in
            let r = machine.run("init", "-c", path, "")
            #expect(r.status == 3)
            #expect(r.stderr.contains("Both an inline config and a config file (-c)"))
            let u = machine.run("update", "diff", "-c", path, "/parent", "")
            #expect(u.status == 3)
        }
        var r = machine.run("init")
        #expect(r.status == 3)
        #expect(r.stderr.contains("No config given"))
        r = machine.run("create", "/nospec")
        #expect(r.status == 3)
        #expect(r.stderr == "Command exited with error message: 3: No container config given: pass it as an argument or with -c <file>\n")
        #expect(!Sys.exists(machine.freezer + "/nospec"))
        #expect(machine.initSpecs.all.isEmpty)
    }

    @Test func malformedTextShowsLineAndColumnForCreateAndInit() {
        var r = machine.run("create", "/bad", "pids:{limit:100}\nbogus_field:1")
        #expect(r.status == 3)
        #expect(r.stderr == """
            Not a valid container config in text format: 2:1: message type "containers.lmctfy.ContainerSpec" has no field named "bogus_field"
            Command exited with error message: 3: Failed to parse the container config

            """)
        #expect(!Sys.exists(machine.freezer + "/bad"))
        r = machine.run("init", "cgroup_mount:{mount_path:")
        #expect(r.status == 3)
        #expect(r.stderr.hasPrefix("Not a valid config in text format: 1:"))
        #expect(r.stderr.hasSuffix("Command exited with error message: 3: Failed to parse the config\n"))
    }

    @Test func updateParsesTheSpecFirstAndQuietly() {
        // The container does not exist, but the spec error comes first.
        let r = machine.run("update", "diff", "/missing", "pids:{limit:")
        #expect(r.status == 3)
        #expect(r.stderr == "Command exited with error message: 3: Failed to parse the container config\n")
        #expect(machine.run("update", "replace", "/missing", "").status == 5)
    }

    @Test func specsAfterTheNameAreNeverFlags() {
        // D1: "-r" after the name is the spec (and not valid text or binary).
        let r = machine.run("create", "/dash", "-r")
        #expect(r.status == 3)
        #expect(r.stderr.hasSuffix("Failed to parse the container config\n"))
    }
}
