// The only code that touches protobuf-c message structs. It walks the
// descriptor tables (field offsets, quantifier offsets, types) the same way
// protobuf-c does, so one generic routine converts every message type.
// Memory: structs built here come from malloc and are released with
// protobuf_c_message_free_unpacked(_, nil), which frees with free().
import CProtobufC
import Glibc

/// A binary encode/decode failure.
public struct ProtoError: Error, Sendable, Equatable, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

extension DynamicMessage {
    /// Encodes through protobuf_c_message_pack. Missing required fields are
    /// an error (protobuf-c would write an unreadable message).
    public func serializedBytes() throws(ProtoError) -> [UInt8] {
        if let missing = firstMissingRequired() {
            throw ProtoError("cannot encode \(descriptor.fullName): required field \(missing) is not set")
        }
        return CBridge.pack(UnsafeMutableRawPointer(CBridge.makeC(self)))
    }

    /// Decodes through protobuf_c_message_unpack.
    public init(serializedBytes bytes: some Collection<UInt8>, as descriptor: MessageDescriptor) throws(ProtoError) {
        self = try Array(bytes).withUnsafeBufferPointer { (buf) throws(ProtoError) -> DynamicMessage in
            try DynamicMessage(buffer: buf, as: descriptor)
        }
    }

    // Concrete overloads: callers in other modules would otherwise run the
    // unspecialised generic (metadata lookups per call on the RPC path).
    public init(serializedBytes bytes: [UInt8], as descriptor: MessageDescriptor) throws(ProtoError) {
        self = try bytes.withUnsafeBufferPointer { (buf) throws(ProtoError) -> DynamicMessage in
            try DynamicMessage(buffer: buf, as: descriptor)
        }
    }

    public init(serializedBytes bytes: ArraySlice<UInt8>, as descriptor: MessageDescriptor) throws(ProtoError) {
        self = try bytes.withUnsafeBufferPointer { (buf) throws(ProtoError) -> DynamicMessage in
            try DynamicMessage(buffer: buf, as: descriptor)
        }
    }

    init(buffer buf: UnsafeBufferPointer<UInt8>, as descriptor: MessageDescriptor) throws(ProtoError) {
        let c = try CBridge.unpack(buf, descriptor)
        defer { protobuf_c_message_free_unpacked(c, nil) }
        self = CBridge.read(UnsafeRawPointer(c), descriptor)
    }

    /// The dotted path of the first required field that is not set, if any.
    public func firstMissingRequired(prefix: String = "") -> String? {
        guard descriptor.mayNeedRequiredCheck else { return nil }
        for field in descriptor.fields {
            let path = prefix.isEmpty ? field.name : prefix + "." + field.name
            if field.label == .required && !has(field.number) { return path }
            guard field.isMessage else { continue }
            for (i, value) in values(field.number).enumerated() {
                guard case .message(let sub) = value else { continue }
                let p = field.isRepeated ? "\(path)[\(i)]" : path
                if let missing = sub.firstMissingRequired(prefix: p) { return missing }
            }
        }
        return nil
    }
}

enum CBridge {
    static func elementSize(_ type: ProtobufCType) -> Int {
        switch type {
        case PROTOBUF_C_TYPE_INT32, PROTOBUF_C_TYPE_SINT32, PROTOBUF_C_TYPE_SFIXED32,
             PROTOBUF_C_TYPE_UINT32, PROTOBUF_C_TYPE_FIXED32, PROTOBUF_C_TYPE_FLOAT,
             PROTOBUF_C_TYPE_ENUM:
            return 4
        case PROTOBUF_C_TYPE_BOOL:
            return MemoryLayout<protobuf_c_boolean>.size
        case PROTOBUF_C_TYPE_STRING, PROTOBUF_C_TYPE_MESSAGE:
            return MemoryLayout<UnsafeRawPointer>.size
        case PROTOBUF_C_TYPE_BYTES:
            return MemoryLayout<ProtobufCBinaryData>.size
        default:
            return 8
        }
    }

    // MARK: C -> Swift

    static func read(_ base: UnsafeRawPointer, _ descriptor: MessageDescriptor) -> DynamicMessage {
        var message = DynamicMessage(descriptor)
        for (position, field) in descriptor.fields.enumerated() {
            let member = base + field.offset
            switch field.label {
            case .repeated:
                let count = base.load(fromByteOffset: field.quantifierOffset, as: Int.self)
                guard count > 0, let array = member.load(as: UnsafeRawPointer?.self) else { continue }
                let size = elementSize(field.rawType)
                var values: [ProtoValue] = []
                values.reserveCapacity(count)
                for i in 0..<count {
                    values.append(readElement(array + i * size, field))
                }
                message.setValues(at: position, values)
            case .optional, .required:
                if !isPresent(base, field) { continue }
                message.setValues(at: position, [readElement(member, field)])
            }
        }
        return message
    }

    /// protobuf-c's rule for "this singular field is set" (see its
    /// optional_field_pack): pointers for strings and messages, has_ flags
    /// for the rest; required fields are always set.
    static func isPresent(_ base: UnsafeRawPointer, _ field: FieldDescriptor) -> Bool {
        let member = base + field.offset
        switch field.rawType {
        case PROTOBUF_C_TYPE_STRING, PROTOBUF_C_TYPE_MESSAGE:
            guard let p = member.load(as: UnsafeRawPointer?.self) else { return false }
            if field.label == .optional, let d = defaultValue(field), d == p { return false }
            return true
        default:
            if field.label == .required { return true }
            return base.load(fromByteOffset: field.quantifierOffset, as: protobuf_c_boolean.self) != 0
        }
    }

    static func defaultValue(_ field: FieldDescriptor) -> UnsafeRawPointer? {
        UnsafeRawPointer(bitPattern: field.defaultAddress)
    }

    static func readElement(_ p: UnsafeRawPointer, _ field: FieldDescriptor) -> ProtoValue {
        switch field.rawType {
        case PROTOBUF_C_TYPE_INT32, PROTOBUF_C_TYPE_SINT32, PROTOBUF_C_TYPE_SFIXED32:
            return .int32(p.load(as: Int32.self))
        case PROTOBUF_C_TYPE_INT64, PROTOBUF_C_TYPE_SINT64, PROTOBUF_C_TYPE_SFIXED64:
            return .int64(p.load(as: Int64.self))
        case PROTOBUF_C_TYPE_UINT32, PROTOBUF_C_TYPE_FIXED32:
            return .uint32(p.load(as: UInt32.self))
        case PROTOBUF_C_TYPE_UINT64, PROTOBUF_C_TYPE_FIXED64:
            return .uint64(p.load(as: UInt64.self))
        case PROTOBUF_C_TYPE_FLOAT:
            return .float(p.load(as: Float.self))
        case PROTOBUF_C_TYPE_DOUBLE:
            return .double(p.load(as: Double.self))
        case PROTOBUF_C_TYPE_BOOL:
            return .bool(p.load(as: protobuf_c_boolean.self) != 0)
        case PROTOBUF_C_TYPE_ENUM:
            return .enumValue(p.load(as: Int32.self))
        case PROTOBUF_C_TYPE_STRING:
            let s = p.load(as: UnsafePointer<CChar>?.self)
            return .string(s.map { String(cString: $0) } ?? "")
        case PROTOBUF_C_TYPE_BYTES:
            let b = p.load(as: ProtobufCBinaryData.self)
            guard b.len > 0, let data = b.data else { return .bytes([]) }
            return .bytes(Array(UnsafeBufferPointer(start: data, count: b.len)))
        default:
            guard case .message(let sub) = field.type else { preconditionFailure("bad field type") }
            let m = p.load(as: UnsafeRawPointer.self)
            return .message(read(m, sub))
        }
    }

    // MARK: Swift -> C

    /// A malloc'd protobuf-c struct for `message`; free it with
    /// protobuf_c_message_free_unpacked(_, nil).
    static func makeC(_ message: DynamicMessage) -> UnsafeMutablePointer<ProtobufCMessage> {
        let d = message.descriptor.raw
        let raw = calloc(1, d.pointee.sizeof_message)!
        let c = raw.assumingMemoryBound(to: ProtobufCMessage.self)
        d.pointee.message_init!(c)
        for (position, field) in message.descriptor.fields.enumerated() {
            let values = message.values(at: position)
            guard !values.isEmpty else { continue }
            let member = raw + field.offset
            switch field.label {
            case .repeated:
                let size = elementSize(field.rawType)
                let array = malloc(size * values.count)!
                for (i, v) in values.enumerated() { writeElement(array + i * size, v) }
                (raw + field.quantifierOffset).storeBytes(of: values.count, as: Int.self)
                member.storeBytes(of: array, as: UnsafeMutableRawPointer.self)
            case .optional, .required:
                writeSingular(raw, field, values[values.count - 1])
            }
        }
        return c
    }

    static func writeElement(_ p: UnsafeMutableRawPointer, _ value: ProtoValue) {
        switch value {
        case .int32(let v): p.storeBytes(of: v, as: Int32.self)
        case .int64(let v): p.storeBytes(of: v, as: Int64.self)
        case .uint32(let v): p.storeBytes(of: v, as: UInt32.self)
        case .uint64(let v): p.storeBytes(of: v, as: UInt64.self)
        case .float(let v): p.storeBytes(of: v, as: Float.self)
        case .double(let v): p.storeBytes(of: v, as: Double.self)
        case .bool(let v): p.storeBytes(of: v ? 1 : 0, as: protobuf_c_boolean.self)
        case .enumValue(let v): p.storeBytes(of: v, as: Int32.self)
        case .string(let s): p.storeBytes(of: strdup(s)!, as: UnsafeMutablePointer<CChar>.self)
        case .bytes(let b):
            let data = malloc(max(b.count, 1))!.assumingMemoryBound(to: UInt8.self)
            if !b.isEmpty {
                b.withUnsafeBufferPointer { data.update(from: $0.baseAddress!, count: b.count) }
            }
            p.storeBytes(of: ProtobufCBinaryData(len: b.count, data: data), as: ProtobufCBinaryData.self)
        case .message(let m):
            p.storeBytes(of: makeC(m), as: UnsafeMutablePointer<ProtobufCMessage>.self)
        }
    }
}

// MARK: The direct path (generated code: ProtoMessage.init(cMessage:) and
// makeC() call these per field, with the field's descriptor)

extension CBridge {
    /// protobuf_c_message_unpack, or the error every decoder reports.
    static func unpack(_ buf: UnsafeBufferPointer<UInt8>, _ descriptor: MessageDescriptor) throws(ProtoError) -> UnsafeMutablePointer<ProtobufCMessage> {
        guard let c = protobuf_c_message_unpack(descriptor.raw, nil, buf.count, buf.baseAddress) else {
            throw ProtoError("invalid binary \(descriptor.fullName) (\(buf.count) bytes)")
        }
        return c
    }

    /// Packs a malloc'd struct and frees it.
    static func pack(_ raw: UnsafeMutableRawPointer) -> [UInt8] {
        let c = raw.assumingMemoryBound(to: ProtobufCMessage.self)
        defer { protobuf_c_message_free_unpacked(c, nil) }
        let size = protobuf_c_message_get_packed_size(c)
        var out = [UInt8](repeating: 0, count: size)
        let written = out.withUnsafeMutableBufferPointer { protobuf_c_message_pack(c, $0.baseAddress) }
        precondition(written == size, "protobuf-c packed \(written) of \(size) bytes")
        return out
    }

    /// A zeroed, initialised struct for `descriptor` (calloc: freed by
    /// protobuf_c_message_free_unpacked(_, nil)).
    static func allocate(_ descriptor: MessageDescriptor) -> UnsafeMutableRawPointer {
        let d = descriptor.raw
        let raw = calloc(1, d.pointee.sizeof_message)!
        d.pointee.message_init!(raw.assumingMemoryBound(to: ProtobufCMessage.self))
        return raw
    }

    /// A singular scalar, enum, string or bytes field; nil when not set.
    static func value<T: ProtoFieldValue>(_ base: UnsafeRawPointer, _ field: FieldDescriptor) -> T? {
        guard isPresent(base, field) else { return nil }
        return T(protoValue: readElement(base + field.offset, field))
    }

    /// A singular message field; nil when not set.
    static func message<M: ProtoMessage>(_ base: UnsafeRawPointer, _ field: FieldDescriptor) -> M? {
        guard isPresent(base, field) else { return nil }
        return M(cMessage: (base + field.offset).load(as: UnsafeRawPointer.self))
    }

    /// A repeated scalar, enum, string or bytes field (unknown enum numbers
    /// are dropped, as the DynamicMessage path does).
    static func repeated<T: ProtoFieldValue>(_ base: UnsafeRawPointer, _ field: FieldDescriptor) -> [T] {
        let count = base.load(fromByteOffset: field.quantifierOffset, as: Int.self)
        guard count > 0, let array = (base + field.offset).load(as: UnsafeRawPointer?.self) else { return [] }
        let size = elementSize(field.rawType)
        var out: [T] = []
        out.reserveCapacity(count)
        for i in 0..<count {
            if let v = T(protoValue: readElement(array + i * size, field)) { out.append(v) }
        }
        return out
    }

    /// A repeated message field.
    static func repeatedMessages<M: ProtoMessage>(_ base: UnsafeRawPointer, _ field: FieldDescriptor) -> [M] {
        let count = base.load(fromByteOffset: field.quantifierOffset, as: Int.self)
        guard count > 0, let array = (base + field.offset).load(as: UnsafeRawPointer?.self) else { return [] }
        var out: [M] = []
        out.reserveCapacity(count)
        for i in 0..<count {
            out.append(M(cMessage: array.load(fromByteOffset: i * MemoryLayout<UnsafeRawPointer>.size, as: UnsafeRawPointer.self)))
        }
        return out
    }

    /// Sets a singular scalar, enum, string or bytes field (and its has_
    /// flag, as makeC(DynamicMessage) does).
    static func set<T: ProtoFieldValue>(_ raw: UnsafeMutableRawPointer, _ field: FieldDescriptor, _ value: T?) {
        guard let value else { return }
        writeSingular(raw, field, value.protoValue)
    }

    /// A singular field's value and, for an optional one without a pointer
    /// to say it is set, its has_ flag (protobuf-c's rule).
    static func writeSingular(_ raw: UnsafeMutableRawPointer, _ field: FieldDescriptor, _ value: ProtoValue) {
        writeElement(raw + field.offset, value)
        switch field.rawType {
        case PROTOBUF_C_TYPE_STRING, PROTOBUF_C_TYPE_MESSAGE:
            break
        default:
            if field.label == .optional {
                (raw + field.quantifierOffset).storeBytes(of: 1, as: protobuf_c_boolean.self)
            }
        }
    }

    /// Sets a singular message field.
    static func setMessage<M: ProtoMessage>(_ raw: UnsafeMutableRawPointer, _ field: FieldDescriptor, _ value: M?) {
        guard let value else { return }
        (raw + field.offset).storeBytes(of: value.makeC(), as: UnsafeMutableRawPointer.self)
    }

    /// Sets a repeated scalar, enum, string or bytes field.
    static func setRepeated<T: ProtoFieldValue>(_ raw: UnsafeMutableRawPointer, _ field: FieldDescriptor, _ values: [T]) {
        guard !values.isEmpty else { return }
        let size = elementSize(field.rawType)
        let array = malloc(size * values.count)!
        for (i, v) in values.enumerated() { writeElement(array + i * size, v.protoValue) }
        (raw + field.quantifierOffset).storeBytes(of: values.count, as: Int.self)
        (raw + field.offset).storeBytes(of: array, as: UnsafeMutableRawPointer.self)
    }

    /// Sets a repeated message field.
    static func setRepeatedMessages<M: ProtoMessage>(_ raw: UnsafeMutableRawPointer, _ field: FieldDescriptor, _ values: [M]) {
        guard !values.isEmpty else { return }
        let size = MemoryLayout<UnsafeMutableRawPointer>.size
        let array = malloc(size * values.count)!
        for (i, v) in values.enumerated() { (array + i * size).storeBytes(of: v.makeC(), as: UnsafeMutableRawPointer.self) }
        (raw + field.quantifierOffset).storeBytes(of: values.count, as: Int.self)
        (raw + field.offset).storeBytes(of: array, as: UnsafeMutableRawPointer.self)
    }
}
