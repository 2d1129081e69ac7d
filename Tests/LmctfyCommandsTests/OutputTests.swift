// Output styles (lmctfy-behaviour.md §1.2, D15), without root.
import Foundation
import Lmctfy
@testable import LmctfyCommands
import LmctfyProto
import Testing

@Suite struct OutputTests {
    let machine: FakeMachine
    init() throws { machine = try FakeMachine() }

    @Test func pairsValuesLongAndJSON() throws {
        #expect(machine.run("detect").stdout == "name=\"/parent\"\n")
        #expect(machine.run("-p", "detect").stdout == "name=\"/parent\"\n")
        #expect(machine.run("-v", "detect").stdout == "/parent\n")
        #expect(machine.run("--lmctfy_output_style=values", "detect").stdout == "/parent\n")
        #expect(machine.run("-l", "detect").stdout == "name                 | /parent\n\n")
        #expect(machine.run("--lmctfy_output_style", "long", "detect").stdout == "name                 | /parent\n\n")
        let json = machine.run("-o", "json", "detect")
        #expect(json.stdout == "{\"name\":\"/parent\"}\n")
        #expect(try json.json()["name"] as? String == "/parent")
        // The last style flag wins.
        #expect(machine.run("-l", "-v", "detect").stdout == "/parent\n")
    }

    @Test func listPrintsOneEntryPerContainer() throws {
        try machine.container(["parent", "b"])
        try machine.container(["parent", "a"])
        #expect(machine.run("list", "containers").stdout == "name=\"/parent/a\"\nname=\"/parent/b\"\n")
        #expect(machine.run("-v", "list", "containers").stdout == "/parent/a\n/parent/b\n")
        let r = machine.run("-o", "json", "list", "containers")
        #expect(try r.json()["containers"] as? [String] == ["/parent/a", "/parent/b"])
    }

    @Test func commandsWithoutOutputPrintAnEmptyJSONObject() throws {
        let r = machine.run("-o", "json", "create", "/quiet", "")
        #expect(r.status == 0)
        #expect(try r.json().isEmpty)
        #expect(machine.run("create", "/quiet2", "").stdout.isEmpty)
        #expect(try machine.run("-o", "json", "init", "").json().isEmpty)
    }

    @Test func specAndStatsAreRawTextBinaryOrProtoJSON() throws {
        // A freezer-only container isolates nothing: empty text, "{}" JSON.
        #expect(machine.run("spec", "/parent").stdout == "")
        #expect(machine.run("-l", "stats", "summary", "/parent").stdout == "")
        #expect(try machine.run("-o", "json", "spec").json().isEmpty)
        #expect(try machine.run("-o", "json", "stats", "full").json().isEmpty)
        let b = machine.run("-b", "spec", "/parent")
        #expect(b.status == 0)
        #expect(b.stdoutBytes == [])
        let both = machine.run("-b", "-o", "json", "spec")
        #expect(both.status == 3)
    }

    @Test func rendering() {
        let out = CommandOutput(entries: [.pair(key: "k", value: "a\"b\\c\nd\u{1}é"), .raw("x {\n}\n")], json: "{}")
        #expect(String(decoding: out.render(.pairs), as: UTF8.self) == "k=\"a\\\"b\\\\c\\nd\\001\\303\\251\"\nx {\n}\n")
        #expect(String(decoding: out.render(.values), as: UTF8.self) == "a\"b\\c\nd\u{1}é\nx {\n}\n")
        #expect(String(decoding: out.render(.json), as: UTF8.self) == "{}\n")
        let long = CommandOutput(entries: [.pair(key: "a_very_long_key_over_twenty", value: "v")])
        #expect(String(decoding: long.render(.long), as: UTF8.self) == "a_very_long_key_over_twenty | v\n\n")
    }

    @Test func keysAreSanitized() {
        #expect(CommandOutput.sanitizedKey("init_pid") == "init_pid")
        #expect(CommandOutput.sanitizedKey("a-b.c_d9") == "a-b.c_d9")
        #expect(CommandOutput.sanitizedKey("bad key=\"x\"") == "bad_key__x_")
        #expect(CommandOutput.sanitizedKey("_x") == "_x")
        #expect(CommandOutput.sanitizedKey(".x") == "_x")
        #expect(CommandOutput.sanitizedKey("é") == "__")
    }
}
