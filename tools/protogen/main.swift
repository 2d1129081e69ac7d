// lmctfy-protogen: writes Sources/LmctfyProto/Generated/Messages.swift to
// stdout. It reads the protobuf-c descriptors compiled into LmctfyWire (the
// same tables the runtime encodes with), so the Swift types can never drift
// from the C structs. Run it through tools/gen-proto, never by hand.
import CProtobufC
import Glibc
import LmctfyWire

struct Field {
    let name: String
    let number: UInt32
    let repeated: Bool
    let swiftType: String   // element type
    let isMessage: Bool
    let required: Bool
    let messageType: String?  // full name, for a message field
}

final class TypeNode {
    let fullName: String
    let shortName: String
    let isEnum: Bool
    var fields: [Field] = []
    var enumValues: [(name: String, value: Int32)] = []
    var children: [TypeNode] = []
    var swiftName = ""      // qualified, e.g. "CpuSpec.Mask"
    init(fullName: String, shortName: String, isEnum: Bool) {
        self.fullName = fullName
        self.shortName = shortName
        self.isEnum = isEnum
    }
}

func fail(_ message: String) -> Never {
    let line = "lmctfy-protogen: \(message)\n"
    _ = line.withCString { write(2, $0, strlen($0)) }
    exit(1)
}

let swiftKeywords: Set<String> = [
    "associatedtype", "class", "deinit", "enum", "extension", "fileprivate", "func", "import",
    "inout", "internal", "let", "open", "operator", "private", "protocol", "public", "rethrows",
    "static", "struct", "subscript", "typealias", "var", "break", "case", "continue", "default",
    "defer", "do", "else", "fallthrough", "for", "guard", "if", "in", "repeat", "return",
    "switch", "where", "while", "as", "catch", "false", "is", "nil", "super", "throw", "throws",
    "true", "try", "any", "some",
]
// Names that would mean something else after a dot (`x.init`, `T.Type`):
// these get a trailing underscore instead of backticks.
let dotReserved: Set<String> = ["init", "self", "Self", "Type", "Protocol", "Type"]

func camel(_ snake: String, upperFirst: Bool) -> String {
    var out = ""
    var upper = upperFirst
    for ch in snake {
        if ch == "_" { upper = true; continue }
        out += upper ? ch.uppercased() : (out.isEmpty ? ch.lowercased() : String(ch))
        upper = false
    }
    return out
}

func identifier(_ name: String) -> String {
    if dotReserved.contains(name) { return name + "_" }
    if swiftKeywords.contains(name) { return "`\(name)`" }
    return name
}

func enumCase(_ protoName: String) -> String {
    identifier(camel(protoName.lowercased(), upperFirst: false))
}

// Collect every message and enum.
var nodes: [String: TypeNode] = [:]
var messageDescriptors: [UnsafePointer<ProtobufCMessageDescriptor>] = []
var i = 0
while let d = lm_wire_message_at(i) {
    messageDescriptors.append(d)
    let full = String(cString: d.pointee.name)
    nodes[full] = TypeNode(fullName: full, shortName: String(cString: d.pointee.short_name), isEnum: false)
    i += 1
}
var enumDescriptors: [UnsafePointer<ProtobufCEnumDescriptor>] = []
i = 0
while let d = lm_wire_enum_at(i) {
    enumDescriptors.append(d)
    let full = String(cString: d.pointee.name)
    let node = TypeNode(fullName: full, shortName: String(cString: d.pointee.short_name), isEnum: true)
    var seen: Set<Int32> = []
    for v in 0..<Int(d.pointee.n_values) {
        let value = d.pointee.values[v]
        if !seen.insert(value.value).inserted { fail("\(full): aliased enum values are not supported") }
        node.enumValues.append((String(cString: value.name), value.value))
    }
    nodes[full] = node
    i += 1
}

// Nest each type in its parent message; everything else is top level.
var roots: [TypeNode] = []
for node in nodes.values.sorted(by: { $0.fullName < $1.fullName }) {
    let parentName = String(node.fullName[..<(node.fullName.lastIndex(of: ".") ?? node.fullName.startIndex)])
    if let parent = nodes[parentName], !parent.isEnum {
        parent.children.append(node)
    } else {
        roots.append(node)
    }
}
func assignNames(_ node: TypeNode, prefix: String) {
    node.swiftName = prefix + identifier(node.shortName)
    for child in node.children { assignNames(child, prefix: node.swiftName + ".") }
}
var topNames: Set<String> = []
for root in roots {
    if !topNames.insert(root.shortName).inserted { fail("two top-level types are named \(root.shortName)") }
    assignNames(root, prefix: "")
}

// Fields, with Swift element types.
for d in messageDescriptors {
    let node = nodes[String(cString: d.pointee.name)]!
    var fields: [Field] = []
    for f in 0..<Int(d.pointee.n_fields) {
        let fd = d.pointee.fields[f]
        if fd.flags & UInt32(PROTOBUF_C_FIELD_FLAG_ONEOF.rawValue) != 0 {
            fail("\(node.fullName).\(String(cString: fd.name)): oneof is not supported")
        }
        let swiftType: String
        switch fd.type {
        case PROTOBUF_C_TYPE_INT32, PROTOBUF_C_TYPE_SINT32, PROTOBUF_C_TYPE_SFIXED32: swiftType = "Int32"
        case PROTOBUF_C_TYPE_INT64, PROTOBUF_C_TYPE_SINT64, PROTOBUF_C_TYPE_SFIXED64: swiftType = "Int64"
        case PROTOBUF_C_TYPE_UINT32, PROTOBUF_C_TYPE_FIXED32: swiftType = "UInt32"
        case PROTOBUF_C_TYPE_UINT64, PROTOBUF_C_TYPE_FIXED64: swiftType = "UInt64"
        case PROTOBUF_C_TYPE_FLOAT: swiftType = "Float"
        case PROTOBUF_C_TYPE_DOUBLE: swiftType = "Double"
        case PROTOBUF_C_TYPE_BOOL: swiftType = "Bool"
        case PROTOBUF_C_TYPE_STRING: swiftType = "String"
        case PROTOBUF_C_TYPE_BYTES: swiftType = "[UInt8]"
        case PROTOBUF_C_TYPE_ENUM:
            let ed = fd.descriptor!.assumingMemoryBound(to: ProtobufCEnumDescriptor.self)
            swiftType = nodes[String(cString: ed.pointee.name)]!.swiftName
        case PROTOBUF_C_TYPE_MESSAGE:
            let md = fd.descriptor!.assumingMemoryBound(to: ProtobufCMessageDescriptor.self)
            swiftType = nodes[String(cString: md.pointee.name)]!.swiftName
        default:
            fail("\(node.fullName): unknown field type \(fd.type.rawValue)")
        }
        fields.append(Field(
            name: String(cString: fd.name), number: fd.id,
            repeated: fd.label == PROTOBUF_C_LABEL_REPEATED, swiftType: swiftType,
            isMessage: fd.type == PROTOBUF_C_TYPE_MESSAGE,
            required: fd.label == PROTOBUF_C_LABEL_REQUIRED,
            messageType: fd.type == PROTOBUF_C_TYPE_MESSAGE
                ? String(cString: fd.descriptor!.assumingMemoryBound(to: ProtobufCMessageDescriptor.self).pointee.name) : nil))
    }
    node.fields = fields.sorted { $0.number < $1.number }
}

// Which messages can have a required field unset, themselves or in a
// message inside them (as the runtime's MessageDescriptor works it out):
// only those get a check of their own.
var needsCheckMemo: [String: Bool] = [:]
@MainActor func needsCheck(_ fullName: String, _ visiting: inout Set<String>) -> Bool {
    if let known = needsCheckMemo[fullName] { return known }
    if !visiting.insert(fullName).inserted { return false }
    var result = false
    for f in nodes[fullName]!.fields {
        if f.required { result = true; break }
        if let sub = f.messageType, needsCheck(sub, &visiting) { result = true; break }
    }
    needsCheckMemo[fullName] = result
    return result
}
@MainActor func needsCheck(_ fullName: String) -> Bool {
    var visiting = Set<String>()
    return needsCheck(fullName, &visiting)
}

// Emit.
var out = """
// Generated by lmctfy-protogen from the protobuf-c descriptors of proto/*.proto.
// DO NOT EDIT: run tools/gen-proto.

"""
@MainActor func emit(_ node: TypeNode, indent: String, into out: inout String) {
    let access = "public"
    if node.isEnum {
        out += "\(indent)/// Protobuf enum `\(node.fullName)`.\n"
        out += "\(indent)\(access) enum \(identifier(node.shortName)): Int32, ProtoEnum, CaseIterable {\n"
        for v in node.enumValues {
            out += "\(indent)    case \(enumCase(v.name)) = \(v.value)\n"
        }
        out += "\(indent)\n"
        out += "\(indent)    \(access) var protoName: String {\n"
        out += "\(indent)        switch self {\n"
        for v in node.enumValues {
            out += "\(indent)        case .\(enumCase(v.name)): return \"\(v.name)\"\n"
        }
        out += "\(indent)        }\n\(indent)    }\n"
        out += "\(indent)}\n"
        return
    }
    out += "\(indent)/// Protobuf message `\(node.fullName)`.\n"
    out += "\(indent)\(access) struct \(identifier(node.shortName)): ProtoMessage {\n"
    let inner = indent + "    "
    for f in node.fields {
        let prop = identifier(camel(f.name, upperFirst: false))
        let type = f.repeated ? "[\(f.swiftType)]" : "\(f.swiftType)?"
        out += "\(inner)/// Field \(f.number) `\(f.name)`.\n"
        out += "\(inner)\(access) var \(prop): \(type)\n"
    }
    if !node.fields.isEmpty { out += "\n" }
    let params = node.fields.map { f -> String in
        let prop = identifier(camel(f.name, upperFirst: false))
        return f.repeated ? "\(prop): [\(f.swiftType)] = []" : "\(prop): \(f.swiftType)? = nil"
    }
    if params.isEmpty {
        out += "\(inner)\(access) init() {}\n"
    } else {
        out += "\(inner)\(access) init(\n"
        out += params.map { "\(inner)    \($0)" }.joined(separator: ",\n")
        out += "\n\(inner)) {\n"
        for f in node.fields {
            let prop = identifier(camel(f.name, upperFirst: false))
            out += "\(inner)    self.\(prop) = \(prop)\n"
        }
        out += "\(inner)}\n"
    }
    out += "\n\(inner)\(access) static let protoDescriptor = ProtoRegistry.message(named: \"\(node.fullName)\")\n\n"
    out += "\(inner)\(access) init(dynamic message: DynamicMessage) {\n"
    out += "\(inner)    precondition(message.descriptor === Self.protoDescriptor, \"not a \(node.fullName)\")\n"
    if node.fields.isEmpty { out += "\(inner)    self.init()\n" }
    for f in node.fields {
        let prop = identifier(camel(f.name, upperFirst: false))
        out += "\(inner)    self.\(prop) = message.\(f.repeated ? "getRepeated" : "get")(\(f.number))\n"
    }
    out += "\(inner)}\n\n"
    out += "\(inner)\(access) var dynamic: DynamicMessage {\n"
    out += "\(inner)    \(node.fields.isEmpty ? "let" : "var") message = DynamicMessage(Self.protoDescriptor)\n"
    for f in node.fields {
        let prop = identifier(camel(f.name, upperFirst: false))
        // A field called `message` is shadowed by the local of the same name.
        let value = prop == "message" ? "self.message" : prop
        out += "\(inner)    message.\(f.repeated ? "setRepeated" : "set")(\(f.number), \(value))\n"
    }
    out += "\(inner)    return message\n\(inner)}\n\n"
    // The direct path to and from protobuf-c's struct (CBridge's direct
    // helpers; fields by position in MessageDescriptor.fields, which is
    // sorted by number as node.fields is): no DynamicMessage.
    out += "\(inner)\(access) init(cMessage c: UnsafeRawPointer) {\n"
    if node.fields.isEmpty {
        out += "\(inner)    self.init()\n"
    } else {
        out += "\(inner)    let f = Self.protoDescriptor.fields\n"
    }
    for (position, f) in node.fields.enumerated() {
        let prop = identifier(camel(f.name, upperFirst: false))
        let getter = f.isMessage ? (f.repeated ? "repeatedMessages" : "message") : (f.repeated ? "repeated" : "value")
        out += "\(inner)    self.\(prop) = CBridge.\(getter)(c, f[\(position)])\n"
    }
    out += "\(inner)}\n\n"
    out += "\(inner)\(access) func makeC() -> UnsafeMutableRawPointer {\n"
    out += "\(inner)    let c = CBridge.allocate(Self.protoDescriptor)\n"
    if !node.fields.isEmpty { out += "\(inner)    let f = Self.protoDescriptor.fields\n" }
    for (position, f) in node.fields.enumerated() {
        let prop = identifier(camel(f.name, upperFirst: false))
        let value = prop == "c" || prop == "f" ? "self.\(prop)" : prop
        let setter = f.isMessage ? (f.repeated ? "setRepeatedMessages" : "setMessage") : (f.repeated ? "setRepeated" : "set")
        out += "\(inner)    CBridge.\(setter)(c, f[\(position)], \(value))\n"
    }
    out += "\(inner)    return c\n\(inner)}\n"
    if needsCheck(node.fullName) {
        // The same walk as DynamicMessage.firstMissingRequired, on the
        // struct itself: encoding does not build a DynamicMessage to check.
        out += "\n\(inner)\(access) func missingRequiredField(prefix: String) -> String? {\n"
        out += "\(inner)    let p = prefix.isEmpty ? \"\" : prefix + \".\"\n"
        for f in node.fields {
            let prop = identifier(camel(f.name, upperFirst: false))
            let value = prop == "p" || prop == "prefix" ? "self.\(prop)" : prop
            if f.required && !f.repeated { out += "\(inner)    if \(value) == nil { return p + \"\(f.name)\" }\n" }
            guard let sub = f.messageType, needsCheck(sub) else { continue }
            if f.repeated {
                out += "\(inner)    for (i, m) in \(value).enumerated() {\n"
                out += "\(inner)        if let missing = m.missingRequiredField(prefix: p + \"\(f.name)[\\(i)]\") { return missing }\n"
                out += "\(inner)    }\n"
            } else {
                out += "\(inner)    if let m = \(value), let missing = m.missingRequiredField(prefix: p + \"\(f.name)\") { return missing }\n"
            }
        }
        out += "\(inner)    return nil\n\(inner)}\n"
    }
    for child in node.children {
        out += "\n"
        emit(child, indent: inner, into: &out)
    }
    out += "\(indent)}\n"
}
for root in roots {
    out += "\n"
    emit(root, indent: "", into: &out)
}
print(out, terminator: "")
