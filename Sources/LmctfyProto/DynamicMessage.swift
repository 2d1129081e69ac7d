// A message as data, described by its MessageDescriptor. The codecs (binary
// through protobuf-c, text format, JSON) work on this; the generated structs
// convert to and from it.
import CProtobufC

/// One value of a field. Signed 32-bit wire types (int32, sint32, sfixed32)
/// are all `.int32`, and likewise for the other integer families.
public enum ProtoValue: Sendable, Equatable {
    case int32(Int32)
    case int64(Int64)
    case uint32(UInt32)
    case uint64(UInt64)
    case float(Float)
    case double(Double)
    case bool(Bool)
    case enumValue(Int32)
    case string(String)
    case bytes([UInt8])
    case message(DynamicMessage)
}

/// A message of any type in `proto/`. Only set fields are stored; a singular
/// field holds exactly one value, a repeated field one or more.
public struct DynamicMessage: Sendable, Equatable {
    public let descriptor: MessageDescriptor
    /// Values per field, parallel to `descriptor.fields` (empty: unset). An
    /// array, not a dictionary: messages are small and this sits on the RPC
    /// hot path, where hashing field numbers showed up in profiles.
    private var storage: [[ProtoValue]]

    public init(_ descriptor: MessageDescriptor) {
        self.descriptor = descriptor
        self.storage = Array(repeating: [], count: descriptor.fields.count)
    }

    public static func == (a: DynamicMessage, b: DynamicMessage) -> Bool {
        a.descriptor === b.descriptor && a.storage == b.storage
    }

    @inline(__always)
    private func index(_ number: UInt32) -> Int {
        guard let i = descriptor.index(of: number) else {
            preconditionFailure("\(descriptor.fullName) has no field \(number)")
        }
        return i
    }

    /// Numbers of the fields that are set, ascending.
    public var setFieldNumbers: [UInt32] {
        storage.indices.filter { !storage[$0].isEmpty }.map { descriptor.fields[$0].number }
    }

    public var isEmpty: Bool { storage.allSatisfy(\.isEmpty) }

    /// The values of a field: empty when unset, one for a set singular field.
    public func values(_ number: UInt32) -> [ProtoValue] {
        descriptor.index(of: number).map { storage[$0] } ?? []
    }

    /// The values of the field at `position` in `descriptor.fields`.
    func values(at position: Int) -> [ProtoValue] { storage[position] }

    /// Replaces the values of a field; an empty list clears it.
    public mutating func setValues(_ number: UInt32, _ values: [ProtoValue]) {
        storage[index(number)] = values
    }

    mutating func setValues(at position: Int, _ values: [ProtoValue]) {
        storage[position] = values
    }

    public mutating func append(_ number: UInt32, _ value: ProtoValue) {
        storage[index(number)].append(value)
    }

    public func has(_ number: UInt32) -> Bool { !values(number).isEmpty }

    // Typed access for generated code.

    public func get<T: ProtoFieldValue>(_ number: UInt32) -> T? {
        values(number).last.flatMap(T.init(protoValue:))
    }

    public func getRepeated<T: ProtoFieldValue>(_ number: UInt32) -> [T] {
        values(number).compactMap(T.init(protoValue:))
    }

    public mutating func set<T: ProtoFieldValue>(_ number: UInt32, _ value: T?) {
        setValues(number, value.map { [$0.protoValue] } ?? [])
    }

    public mutating func setRepeated<T: ProtoFieldValue>(_ number: UInt32, _ values: [T]) {
        setValues(number, values.map(\.protoValue))
    }
}

/// A Swift type that can be the value of a field.
public protocol ProtoFieldValue: Sendable {
    init?(protoValue: ProtoValue)
    var protoValue: ProtoValue { get }
}

extension Int32: ProtoFieldValue {
    public init?(protoValue: ProtoValue) {
        guard case .int32(let v) = protoValue else { return nil }
        self = v
    }
    public var protoValue: ProtoValue { .int32(self) }
}

extension Int64: ProtoFieldValue {
    public init?(protoValue: ProtoValue) {
        guard case .int64(let v) = protoValue else { return nil }
        self = v
    }
    public var protoValue: ProtoValue { .int64(self) }
}

extension UInt32: ProtoFieldValue {
    public init?(protoValue: ProtoValue) {
        guard case .uint32(let v) = protoValue else { return nil }
        self = v
    }
    public var protoValue: ProtoValue { .uint32(self) }
}

extension UInt64: ProtoFieldValue {
    public init?(protoValue: ProtoValue) {
        guard case .uint64(let v) = protoValue else { return nil }
        self = v
    }
    public var protoValue: ProtoValue { .uint64(self) }
}

extension Float: ProtoFieldValue {
    public init?(protoValue: ProtoValue) {
        guard case .float(let v) = protoValue else { return nil }
        self = v
    }
    public var protoValue: ProtoValue { .float(self) }
}

extension Double: ProtoFieldValue {
    public init?(protoValue: ProtoValue) {
        guard case .double(let v) = protoValue else { return nil }
        self = v
    }
    public var protoValue: ProtoValue { .double(self) }
}

extension Bool: ProtoFieldValue {
    public init?(protoValue: ProtoValue) {
        guard case .bool(let v) = protoValue else { return nil }
        self = v
    }
    public var protoValue: ProtoValue { .bool(self) }
}

extension String: ProtoFieldValue {
    public init?(protoValue: ProtoValue) {
        guard case .string(let v) = protoValue else { return nil }
        self = v
    }
    public var protoValue: ProtoValue { .string(self) }
}

extension Array: ProtoFieldValue where Element == UInt8 {
    public init?(protoValue: ProtoValue) {
        guard case .bytes(let v) = protoValue else { return nil }
        self = v
    }
    public var protoValue: ProtoValue { .bytes(self) }
}

/// Generated enums. A number the enum does not know reads back as nil.
public protocol ProtoEnum: ProtoFieldValue, RawRepresentable, Hashable where RawValue == Int32 {
    /// The value's name in the .proto file, e.g. `BEST_EFFORT`.
    var protoName: String { get }
}

extension ProtoEnum {
    public init?(protoValue: ProtoValue) {
        guard case .enumValue(let v) = protoValue else { return nil }
        self.init(rawValue: v)
    }
    public var protoValue: ProtoValue { .enumValue(rawValue) }
}

/// Generated message structs.
public protocol ProtoMessage: ProtoFieldValue, Equatable {
    static var protoDescriptor: MessageDescriptor { get }
    init(dynamic: DynamicMessage)
    var dynamic: DynamicMessage { get }
    /// Reads protobuf-c's struct of this message (generated code, field by
    /// field; no DynamicMessage): the binary decoder's fast path.
    init(cMessage: UnsafeRawPointer)
    /// A malloc'd protobuf-c struct of this message (free it with
    /// protobuf_c_message_free_unpacked(_, nil)): the encoder's fast path.
    func makeC() -> UnsafeMutableRawPointer
    /// The dotted path of the first required field not set, in this
    /// message or one inside it (as DynamicMessage.firstMissingRequired
    /// says it), or nil; generated for the types that can have one.
    func missingRequiredField(prefix: String) -> String?
}

extension ProtoMessage {
    public init?(protoValue: ProtoValue) {
        guard case .message(let m) = protoValue, m.descriptor === Self.protoDescriptor else { return nil }
        self.init(dynamic: m)
    }
    public var protoValue: ProtoValue { .message(dynamic) }

    public func missingRequiredField(prefix: String) -> String? { nil }

    /// Encodes to the protobuf binary wire format (through protobuf-c,
    /// straight from the struct; a message that can have required fields
    /// is checked for them first, on the struct).
    public func serializedBytes() throws(ProtoError) -> [UInt8] {
        if Self.protoDescriptor.mayNeedRequiredCheck, let missing = missingRequiredField(prefix: "") {
            throw ProtoError("cannot encode \(Self.protoDescriptor.fullName): required field \(missing) is not set")
        }
        return CBridge.pack(makeC())
    }

    /// Decodes the protobuf binary wire format (through protobuf-c).
    public init(serializedBytes bytes: some Collection<UInt8>) throws(ProtoError) {
        self = try Array(bytes).withUnsafeBufferPointer { (buf) throws(ProtoError) -> Self in try Self(cBuffer: buf) }
    }

    public init(serializedBytes bytes: [UInt8]) throws(ProtoError) {
        self = try bytes.withUnsafeBufferPointer { (buf) throws(ProtoError) -> Self in try Self(cBuffer: buf) }
    }

    public init(serializedBytes bytes: ArraySlice<UInt8>) throws(ProtoError) {
        self = try bytes.withUnsafeBufferPointer { (buf) throws(ProtoError) -> Self in try Self(cBuffer: buf) }
    }

    init(cBuffer buf: UnsafeBufferPointer<UInt8>) throws(ProtoError) {
        let c = try CBridge.unpack(buf, Self.protoDescriptor)
        defer { protobuf_c_message_free_unpacked(c, nil) }
        self.init(cMessage: UnsafeRawPointer(c))
    }

    /// Parses protobuf text format, e.g. `memory:{limit:100000000}`.
    public init(textFormat text: String) throws(TextFormatError) {
        self.init(dynamic: try TextFormat.parse(text, as: Self.protoDescriptor))
    }

    /// Prints protobuf text format exactly as `protoc --decode` does.
    public var textFormatString: String { TextFormat.print(dynamic) }

    /// Prints the proto3 JSON mapping.
    public func jsonString(pretty: Bool = false) -> String {
        JSONFormat.print(dynamic, pretty: pretty)
    }
}
