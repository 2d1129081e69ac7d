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
            Command exited with error message: 3: Failed to parse the container config in text format: \
            2:1: message type "containers.lmctfy.ContainerSpec" has no field named "bogus_field"

            """)
        #expect(!Sys.exists(machine.freezer + "/bad"))
        r = machine.run("init", "cgroup_mount:{mount_path:")
        #expect(r.status == 3)
        #expect(r.stderr.hasPrefix("Command exited with error message: 3: Failed to parse the config in text format: 1:"))
    }

    @Test func updateParsesTheSpecFirst() {
        // The container does not exist, but the spec error comes first.
        let r = machine.run("update", "diff", "/missing", "pids:{limit:")
        #expect(r.status == 3)
        #expect(r.stderr == "Command exited with error message: 3: Failed to parse the container config in text format: 1:13: expected an int64 value for field \"limit\", found end of input\n")
        #expect(machine.run("update", "replace", "/missing", "").status == 5)
    }

    @Test func specsAfterTheNameAreNeverFlags() {
        // D1: "-r" after the name is the spec (and not valid text).
        let r = machine.run("create", "/dash", "-r")
        #expect(r.status == 3)
        #expect(r.stderr.contains("Failed to parse the container config in text format: 1:1:"), "\(r)")
    }

    // Issue 9: printable text that is not text format is an error, not a
    // binary spec ("@A" was owner_group 65, "}}}}" an empty spec).
    @Test(arguments: ["@A", "}}}}", "cpu:{limit:1}}", "(", "pids:{limit:10} x", "memory {limit: 1}\n\t# ok\n}"])
    func printableTextIsNeverBinary(_ text: String) throws {
        for args in [["create", "/typo", text], ["update", "diff", "/parent", text]] {
            let r = lmctfy(args, in: machine.environment)
            #expect(r.status == 3, "\(args): \(r)")
            #expect(r.stderr.hasPrefix("Command exited with error message: 3: Failed to parse the container config in text format: "), "\(r)")
        }
        try withTempFile(Array(text.utf8)) { path throws in
            let r = machine.run("create", "-c", path, "/typo")
            #expect(r.status == 3, "\(r)")
        }
        #expect(!Sys.exists(machine.freezer + "/typo"))
    }

    @Test func binarySpecsStillWorkInlineAndWithC() throws {
        // A binary spec has control bytes (tags, lengths below 32).
        let spec = ContainerSpec(owner: 1000, pids: PidsSpec(limit: 10))
        let bytes = try spec.serializedBytes()
        #expect(try SpecParser.parse(ContainerSpec.self, bytes, what: "container config") == spec)
        #expect(!SpecParser.isPrintable(String(decoding: bytes, as: UTF8.self)))
        let initBytes = try InitSpec(textFormat: "cgroup_mount:{mount_path:'/b' hierarchy:CGROUP_FREEZER}").serializedBytes()
        #expect(String(validating: initBytes, as: UTF8.self) != nil)  // UTF-8, but not printable
        let r = lmctfy(["init", "?"], raw: [Array("init".utf8), initBytes], in: machine.environment)
        #expect(r.status == 0, "\(r)")
        try withTempFile(initBytes) { path throws in #expect(machine.run("init", "-c", path).status == 0) }
        #expect(machine.initSpecs.all.map { $0.cgroupMount.first?.mountPath } == ["/b", "/b"])
        // Non-printable bytes that are neither: the text error is still shown.
        let bad = lmctfy(["init", "?"], raw: [Array("init".utf8), Array("cgroup_mount:{\u{1}".utf8)], in: machine.environment)
        #expect(bad.status == 3)
        #expect(bad.stderr.hasPrefix("Not a valid config in text format: 1:"), "\(bad)")
    }
}
