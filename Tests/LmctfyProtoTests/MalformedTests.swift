// Malformed text specs: each must fail with the right error at the right
// place, never crash and never yield a partial message; protoc must reject
// it too (except where we are deliberately stricter, marked below).
import LmctfyProto
import Testing

struct Malformed: CustomTestStringConvertible, Sendable {
    let text: String
    let line: Int
    let column: Int
    let kind: TextFormatError.Kind
    var type = "containers.lmctfy.ContainerSpec"
    /// protoc accepts it; we refuse it on purpose: C strings cannot hold NUL,
    /// Swift strings must be UTF-8, and protoc only warns about a missing
    /// required field (then writes bytes that protobuf-c refuses to decode).
    var stricterThanProtoc = false
    var testDescription: String { text }
}

let containerSpec = "containers.lmctfy.ContainerSpec"
let memorySpec = "containers.lmctfy.MemorySpec"

let malformedCases: [Malformed] = [
    Malformed(text: "memory:{limit:100000000", line: 1, column: 24, kind: .expected("\"}\"", found: "end of input")),
    Malformed(text: "foo: 1", line: 1, column: 1, kind: .unknownField("foo", message: containerSpec)),
    Malformed(text: "memory:{limitt:5}", line: 1, column: 9, kind: .unknownField("limitt", message: memorySpec)),
    Malformed(text: "memory:{limit:\"abc\"}", line: 1, column: 15, kind: .wrongType("string literal", field: "limit", type: "int64")),
    Malformed(text: "memory:{limit:99999999999999999999}", line: 1, column: 15, kind: .outOfRange("99999999999999999999", field: "limit", type: "int64")),
    Malformed(text: "memory:{eviction_priority:2147483648}", line: 1, column: 27, kind: .outOfRange("2147483648", field: "eviction_priority", type: "int32")),
    Malformed(text: "memory:{eviction_priority:-2147483649}", line: 1, column: 27, kind: .outOfRange("-2147483649", field: "eviction_priority", type: "int32")),
    Malformed(text: "cpu:{limit:-1}", line: 1, column: 12, kind: .outOfRange("-1", field: "limit", type: "uint64")),
    Malformed(text: "owner: 9223372036854775808", line: 1, column: 8, kind: .outOfRange("9223372036854775808", field: "owner", type: "int64")),
    Malformed(text: "owner: -9223372036854775809", line: 1, column: 8, kind: .outOfRange("-9223372036854775809", field: "owner", type: "int64")),
    Malformed(text: "cpu:{scheduling_latency:FAST}", line: 1, column: 25, kind: .unknownEnumValue("FAST", field: "scheduling_latency")),
    Malformed(text: "cpu:{scheduling_latency:7}", line: 1, column: 25, kind: .unknownEnumValue("7", field: "scheduling_latency")),
    Malformed(text: "device:{restrictions_set:{restrictions:{access:[READ,DELETE]}}}", line: 1, column: 54, kind: .unknownEnumValue("DELETE", field: "access")),
    Malformed(text: "filesystem:{rootfs:\"/abc}", line: 1, column: 20, kind: .unterminatedString),
    Malformed(text: "filesystem:{rootfs:'/abc\n'}", line: 1, column: 20, kind: .unterminatedString),
    Malformed(text: "filesystem:{rootfs:\"a\\qb\"}", line: 1, column: 20, kind: .invalidEscape("\\q")),
    Malformed(text: "filesystem:{rootfs:\"a\\x\"}", line: 1, column: 20, kind: .invalidEscape("\\x")),
    Malformed(text: "memory:{limit 5}", line: 1, column: 15, kind: .expected("\":\"", found: "\"5\"")),
    Malformed(text: "cpu:5", line: 1, column: 5, kind: .expected("\"{\" or \"<\"", found: "\"5\"")),
    Malformed(text: "memory:{limit:1} memory:{limit:2}", line: 1, column: 18, kind: .duplicateField("memory")),
    Malformed(text: "memory:{limit:1 limit:2}", line: 1, column: 17, kind: .duplicateField("limit")),
    Malformed(text: "memory:{limit:}", line: 1, column: 15, kind: .wrongType("\"}\"", field: "limit", type: "int64")),
    Malformed(text: "memory:{limit:1}}", line: 1, column: 17, kind: .expected("a field name", found: "\"}\"")),
    Malformed(text: "memory:{limit:1.5}", line: 1, column: 15, kind: .wrongType("\"1.5\"", field: "limit", type: "int64")),
    Malformed(text: "memory:{kmem_charge_usage:yes}", line: 1, column: 27, kind: .wrongType("\"yes\"", field: "kmem_charge_usage", type: "bool")),
    Malformed(text: "memory:{limit:12abc}", line: 1, column: 15, kind: .invalidNumber("12abc")),
    Malformed(text: "cpu:{limit:0x}", line: 1, column: 12, kind: .invalidNumber("0x")),
    Malformed(text: "memory:{limit:1} @", line: 1, column: 18, kind: .invalidCharacter("\"@\"")),
    Malformed(text: "memory:[{limit:1}]", line: 1, column: 8, kind: .expected("\"{\" or \"<\"", found: "\"[\"")),
    Malformed(text: "memory:{limit:[1,2]}", line: 1, column: 15, kind: .expected("a value for non-repeated field \"limit\"", found: "\"[\"")),
    Malformed(text: "cpu:{mask:{data:[1,2}}", line: 1, column: 21, kind: .expected("\"]\"", found: "\"}\"")),
    Malformed(text: "memory:<limit:1}", line: 1, column: 16, kind: .expected("a field name", found: "\"}\"")),
    Malformed(text: "cpu {\n  limit: 500\n  max_limit: abc\n}", line: 3, column: 14, kind: .wrongType("\"abc\"", field: "max_limit", type: "uint64")),
    Malformed(text: "\"string\"", line: 1, column: 1, kind: .expected("a field name", found: "string literal")),
    Malformed(text: "memory {limit: 1;; }", line: 1, column: 18, kind: .expected("a field name", found: "\";\"")),
    Malformed(text: "cpu:{histograms:{stat:{bucket:1 value:2}}}", line: 1, column: 43,
              kind: .missingRequired("cpu.histograms[0].type"), type: "containers.lmctfy.ContainerStats",
              stricterThanProtoc: true),
    Malformed(text: "cgroup_mount:{hierarchy:CGROUP_CPU, hierarchy:CGROUP_BOGUS}", line: 1, column: 47,
              kind: .unknownEnumValue("CGROUP_BOGUS", field: "hierarchy"), type: "containers.InitSpec"),
    Malformed(text: "filesystem:{rootfs:\"a\\000b\"}", line: 1, column: 20,
              kind: .invalidString(field: "rootfs", reason: "contains a NUL byte"), stricterThanProtoc: true),
    Malformed(text: "filesystem:{rootfs:\"\\377\"}", line: 1, column: 20,
              kind: .invalidString(field: "rootfs", reason: "is not valid UTF-8"), stricterThanProtoc: true),
    // Issue 9: no sign on an unsigned field, not even "-0" (protoc: "Expected integer, got: -").
    Malformed(text: "cpu:{limit:-0}", line: 1, column: 12, kind: .outOfRange("-0", field: "limit", type: "uint64")),
    Malformed(text: "cpu:{max_limit:-0x0}", line: 1, column: 16, kind: .outOfRange("-0x0", field: "max_limit", type: "uint64")),
    Malformed(text: "pids:{limit:1}\nblockio:{device_limit_set:{default_limit: -0}}",
              line: 2, column: 43, kind: .outOfRange("-0", field: "default_limit", type: "uint32")),
    // NUL is a control character protoc refuses everywhere, comments included.
    Malformed(text: "# a\u{0}b\ncpu:{limit:1}", line: 1, column: 4, kind: .invalidCharacter("NUL")),
    Malformed(text: "cpu:{limit:1} # x\u{0}", line: 1, column: 18, kind: .invalidCharacter("NUL")),
    Malformed(text: "cpu:{limit:1}\u{0}", line: 1, column: 14, kind: .invalidCharacter("NUL")),
    Malformed(text: "filesystem:{rootfs:\"a\u{0}b\"}", line: 1, column: 22, kind: .invalidCharacter("NUL")),
    // \u needs four hex digits and \U eight, as in protoc.
    Malformed(text: "filesystem:{rootfs:\"\\u12\"}", line: 1, column: 20, kind: .invalidEscape("\\u")),
    Malformed(text: "filesystem:{rootfs:\"\\U0001F60\"}", line: 1, column: 20, kind: .invalidEscape("\\U")),
    // protoc keeps an escape above 10FFFF as its text (a bogus string); we refuse it.
    Malformed(text: "filesystem:{rootfs:\"\\U00110000\"}", line: 1, column: 20, kind: .invalidEscape("\\U00110000"),
              stricterThanProtoc: true),
    // A lone surrogate is three bytes that are not UTF-8, as protoc writes them.
    Malformed(text: "filesystem:{rootfs:\"\\ud83d\"}", line: 1, column: 20,
              kind: .invalidString(field: "rootfs", reason: "is not valid UTF-8"), stricterThanProtoc: true),
]

@Suite struct MalformedTests {
    @Test func enoughCases() {
        #expect(malformedCases.count >= 25)
    }

    @Test(arguments: malformedCases)
    func rejected(_ c: Malformed) throws {
        let descriptor = try #require(ProtoRegistry.shared.message(fullName: c.type))
        #expect(throws: TextFormatError(line: c.line, column: c.column, kind: c.kind)) {
            _ = try TextFormat.parse(c.text, as: descriptor)
        }
        if !c.stricterThanProtoc {
            let reference = try Oracle.encode(c.text, type: c.type)
            #expect(reference.status != 0, "protoc accepted what we reject: \(c.text)")
        }
    }

    @Test func errorMessageNamesLineColumnAndProblem() {
        let e = TextFormatError(line: 3, column: 14, kind: .unknownField("limitt", message: memorySpec))
        #expect(e.description == "3:14: message type \"containers.lmctfy.MemorySpec\" has no field named \"limitt\"")
    }
}
