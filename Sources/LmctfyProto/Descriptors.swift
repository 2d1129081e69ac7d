// Swift views of the protobuf-c descriptor tables compiled into LmctfyWire.
// The tables are static, immutable C data, so the views are Sendable and are
// built once, when ProtoRegistry is first touched.
import CProtobufC
import LmctfyWire

/// The wire type of a field, with the descriptor of its message or enum type.
public enum FieldType: Sendable {
    case int32, sint32, sfixed32, int64, sint64, sfixed64
    case uint32, fixed32, uint64, fixed64
    case float, double, bool, string, bytes
    case enumType(EnumDescriptor)
    case message(MessageDescriptor)

    /// The protobuf language name of the type, for error messages.
    public var protoName: String {
        switch self {
        case .int32: "int32"
        case .sint32: "sint32"
        case .sfixed32: "sfixed32"
        case .int64: "int64"
        case .sint64: "sint64"
        case .sfixed64: "sfixed64"
        case .uint32: "uint32"
        case .fixed32: "fixed32"
        case .uint64: "uint64"
        case .fixed64: "fixed64"
        case .float: "float"
        case .double: "double"
        case .bool: "bool"
        case .string: "string"
        case .bytes: "bytes"
        case .enumType(let e): e.fullName
        case .message(let m): m.fullName
        }
    }
}

public enum FieldLabel: Sendable {
    case optional, required, repeated
}

/// One field of a message: its name, number, label, type and, for the C
/// bridge, where protobuf-c keeps it in the message struct.
public struct FieldDescriptor: Sendable {
    public let name: String
    public let number: UInt32
    public let label: FieldLabel
    /// The proto3 JSON name (lowerCamelCase); made when asked (JSON output
    /// only), not for every field of every type when the registry is built
    /// (a tenth of that build, which every short-lived lmctl pays).
    public var jsonName: String { MessageDescriptor.jsonName(name) }
    let rawType: ProtobufCType
    let offset: Int
    let quantifierOffset: Int
    let typeAddress: UInt
    let defaultAddress: UInt

    public var type: FieldType {
        switch rawType {
        case PROTOBUF_C_TYPE_INT32: .int32
        case PROTOBUF_C_TYPE_SINT32: .sint32
        case PROTOBUF_C_TYPE_SFIXED32: .sfixed32
        case PROTOBUF_C_TYPE_INT64: .int64
        case PROTOBUF_C_TYPE_SINT64: .sint64
        case PROTOBUF_C_TYPE_SFIXED64: .sfixed64
        case PROTOBUF_C_TYPE_UINT32: .uint32
        case PROTOBUF_C_TYPE_FIXED32: .fixed32
        case PROTOBUF_C_TYPE_UINT64: .uint64
        case PROTOBUF_C_TYPE_FIXED64: .fixed64
        case PROTOBUF_C_TYPE_FLOAT: .float
        case PROTOBUF_C_TYPE_DOUBLE: .double
        case PROTOBUF_C_TYPE_BOOL: .bool
        case PROTOBUF_C_TYPE_STRING: .string
        case PROTOBUF_C_TYPE_BYTES: .bytes
        case PROTOBUF_C_TYPE_ENUM: .enumType(ProtoRegistry.shared.enumsByAddress[typeAddress]!)
        default: .message(ProtoRegistry.shared.messagesByAddress[typeAddress]!)
        }
    }

    public var isRepeated: Bool { label == .repeated }
    public var isMessage: Bool { rawType == PROTOBUF_C_TYPE_MESSAGE }
}

/// A message type. Instances are unique per type: compare with `===`.
public final class MessageDescriptor: Sendable, CustomStringConvertible {
    /// Full protobuf name, e.g. `containers.lmctfy.ContainerSpec`.
    public let fullName: String
    /// Fields in field-number order (the order of the wire and text output).
    public let fields: [FieldDescriptor]
    private let byName: [String: Int]
    /// Field numbers in `fields` order (ascending): a binary search finds a
    /// field's index without hashing (the RPC path does this per field).
    private let numbers: [UInt32]
    /// Whether a message of this type, or any message inside it, can have a
    /// required field: only then does encoding look for missing ones.
    public internal(set) nonisolated(unsafe) var mayNeedRequiredCheck = true
    let address: UInt

    var raw: UnsafePointer<ProtobufCMessageDescriptor> {
        UnsafePointer(bitPattern: address)!
    }

    init(_ d: UnsafePointer<ProtobufCMessageDescriptor>) {
        address = UInt(bitPattern: d)
        fullName = String(cString: d.pointee.name)
        var fields: [FieldDescriptor] = []
        for i in 0..<Int(d.pointee.n_fields) {
            let f = d.pointee.fields[i]
            let label: FieldLabel = switch f.label {
            case PROTOBUF_C_LABEL_REQUIRED: .required
            case PROTOBUF_C_LABEL_REPEATED: .repeated
            default: .optional
            }
            let name = String(cString: f.name)
            fields.append(FieldDescriptor(
                name: name, number: f.id, label: label,
                rawType: f.type, offset: Int(f.offset), quantifierOffset: Int(f.quantifier_offset),
                typeAddress: UInt(bitPattern: f.descriptor),
                defaultAddress: UInt(bitPattern: f.default_value)))
        }
        fields.sort { $0.number < $1.number }
        self.fields = fields
        var byName: [String: Int] = [:]
        for (i, f) in fields.enumerated() { byName[f.name] = i }
        self.byName = byName
        self.numbers = fields.map(\.number)
    }

    public func field(named name: String) -> FieldDescriptor? {
        byName[name].map { fields[$0] }
    }

    public func field(number: UInt32) -> FieldDescriptor? {
        index(of: number).map { fields[$0] }
    }

    /// The position of a field in `fields`, by number.
    @inline(__always)
    public func index(of number: UInt32) -> Int? {
        var lo = 0, hi = numbers.count - 1
        while lo <= hi {
            let mid = (lo + hi) >> 1
            let n = numbers[mid]
            if n == number { return mid }
            if n < number { lo = mid + 1 } else { hi = mid - 1 }
        }
        return nil
    }

    public var description: String { fullName }

    /// protoc's ToJsonName: drop underscores, upper-case the letter after
    /// one (field names are ASCII identifiers).
    static func jsonName(_ name: String) -> String {
        var out: [UInt8] = []
        out.reserveCapacity(name.utf8.count)
        var upper = false
        for b in name.utf8 {
            if b == UInt8(ascii: "_") { upper = true; continue }
            out.append(upper && b >= UInt8(ascii: "a") && b <= UInt8(ascii: "z") ? b - 32 : b)
            upper = false
        }
        return String(decoding: out, as: UTF8.self)
    }
}

/// An enum type: its values by name and by number.
public final class EnumDescriptor: Sendable {
    public let fullName: String
    /// (name, number) in declaration order.
    public let values: [(name: String, number: Int32)]
    private let byName: [String: Int32]
    private let byNumber: [Int32: String]

    init(_ d: UnsafePointer<ProtobufCEnumDescriptor>) {
        fullName = String(cString: d.pointee.name)
        var values: [(String, Int32)] = []
        for i in 0..<Int(d.pointee.n_values) {
            values.append((String(cString: d.pointee.values[i].name), d.pointee.values[i].value))
        }
        self.values = values
        byName = Dictionary(values, uniquingKeysWith: { a, _ in a })
        byNumber = Dictionary(values.map { ($0.1, $0.0) }, uniquingKeysWith: { a, _ in a })
    }

    public func number(named name: String) -> Int32? { byName[name] }
    public func name(of number: Int32) -> String? { byNumber[number] }
}

/// Every message and enum of `proto/`, from the registry that tools/gen-proto
/// writes into LmctfyWire.
public final class ProtoRegistry: Sendable {
    public static let shared = ProtoRegistry()

    let messagesByAddress: [UInt: MessageDescriptor]
    let enumsByAddress: [UInt: EnumDescriptor]
    private let messagesByName: [String: MessageDescriptor]
    private let enumsByName: [String: EnumDescriptor]

    private init() {
        var messages: [UInt: MessageDescriptor] = [:]
        var i = 0
        while let d = lm_wire_message_at(i) {
            messages[UInt(bitPattern: d)] = MessageDescriptor(d)
            i += 1
        }
        var enums: [UInt: EnumDescriptor] = [:]
        i = 0
        while let d = lm_wire_enum_at(i) {
            enums[UInt(bitPattern: d)] = EnumDescriptor(d)
            i += 1
        }
        messagesByAddress = messages
        enumsByAddress = enums
        // Which types can hold a required field anywhere inside them.
        var memo: [UInt: Bool] = [:]
        func needs(_ d: MessageDescriptor, _ visiting: inout Set<UInt>) -> Bool {
            if let known = memo[d.address] { return known }
            if !visiting.insert(d.address).inserted { return false }
            var result = false
            for f in d.fields {
                if f.label == .required { result = true; break }
                if f.rawType == PROTOBUF_C_TYPE_MESSAGE, let sub = messages[f.typeAddress], needs(sub, &visiting) {
                    result = true
                    break
                }
            }
            memo[d.address] = result
            return result
        }
        for d in messages.values {
            var visiting = Set<UInt>()
            d.mayNeedRequiredCheck = needs(d, &visiting)
        }
        messagesByName = Dictionary(uniqueKeysWithValues: messages.values.map { ($0.fullName, $0) })
        enumsByName = Dictionary(uniqueKeysWithValues: enums.values.map { ($0.fullName, $0) })
    }

    /// The message type with this full name, or nil.
    public func message(fullName: String) -> MessageDescriptor? { messagesByName[fullName] }

    /// All message types, sorted by full name.
    public var allMessages: [MessageDescriptor] {
        messagesByName.values.sorted { $0.fullName < $1.fullName }
    }

    /// For generated code: a type that must exist because it was generated from it.
    public static func message(named fullName: String) -> MessageDescriptor {
        guard let d = shared.messagesByName[fullName] else {
            preconditionFailure("message \(fullName) is not in LmctfyWire; run tools/gen-proto")
        }
        return d
    }
}
