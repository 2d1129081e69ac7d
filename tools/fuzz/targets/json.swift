// The JSON printer (Sources/LmctfyProto/JSONFormat.swift) on any message
// protobuf-c decodes. There is no JSON parser in the package, so the
// harness parses the output with Foundation's JSONSerialization and reads
// it back field by field against the message (proto3 JSON mapping:
// lowerCamelCase keys, 64-bit integers as strings, enums by name where
// known, bytes as base64, NaN/Infinity as strings).
//
// Input: 1 byte choosing the message type (index into `types`), then the
// binary message. Properties, for every input protobuf-c decodes:
//  - compact and pretty output are both valid JSON objects;
//  - each reads back to exactly the message's fields and values.
import Foundation
import LmctfyProto

let types = [
    "containers.lmctfy.ContainerSpec", "containers.lmctfy.ContainerStats", "containers.lmctfy.EventSpec",
    "containers.lmctfy.RunSpec", "containers.lmctfy.VirtualHostSpec", "containers.InitSpec",
    "containers.MachineSpec", "containers.lmctfy.agent.Frame", "containers.lmctfy.agent.ContainerEvent",
    "containers.lmctfy.agent.AgentConfig", "containers.lmctfy.agent.MachineInfoResponse",
    "containers.lmctfy.agent.ListContainersResponse",
].map { ProtoRegistry.message(named: $0) }

func same(_ json: Any, _ value: ProtoValue, _ field: FieldDescriptor, _ path: String) {
    func number(_ x: Any) -> NSNumber? { x as? NSNumber }
    switch value {
    case .int32(let n):
        require(number(json)?.int64Value == Int64(n), "\(path): \(json) is not \(n)")
    case .uint32(let n):
        require(number(json)?.int64Value == Int64(n), "\(path): \(json) is not \(n)")
    case .int64(let n):
        require(json as? String == String(n), "\(path): \(json) is not \"\(n)\"")
    case .uint64(let n):
        require(json as? String == String(n), "\(path): \(json) is not \"\(n)\"")
    case .float(let f):
        sameDouble(json, Double(f), path)
    case .double(let d):
        sameDouble(json, d, path)
    case .bool(let b):
        require(number(json)?.boolValue == b && !(json is String), "\(path): \(json) is not \(b)")
    case .enumValue(let n):
        if case .enumType(let e) = field.type, let name = e.name(of: n) {
            require(json as? String == name, "\(path): \(json) is not \(name)")
        } else {
            require(number(json)?.int64Value == Int64(n), "\(path): \(json) is not \(n)")
        }
    case .string(let s):
        require((json as? String).map { Array($0.unicodeScalars) == Array(s.unicodeScalars) } ?? false,
                "\(path): \(json) is not \(s.debugDescription)")
    case .bytes(let b):
        let data = (json as? String).flatMap { Data(base64Encoded: $0) }
        require(data.map { [UInt8]($0) } == b, "\(path): \(json) is not the base64 of \(b)")
    case .message(let m):
        same(json, m, path)
    }
}

func sameDouble(_ json: Any, _ d: Double, _ path: String) {
    if d.isNaN {
        require(json as? String == "NaN", "\(path): \(json) is not NaN")
    } else if d.isInfinite {
        require(json as? String == (d < 0 ? "-Infinity" : "Infinity"), "\(path): \(json) is not \(d)")
    } else {
        require((json as? NSNumber)?.doubleValue == d, "\(path): \(json) is not \(d)")
    }
}

func same(_ json: Any, _ message: DynamicMessage, _ path: String) {
    guard let object = json as? [String: Any] else {
        require(false, "\(path): \(json) is not an object")
        return
    }
    let set = message.descriptor.fields.filter { message.has($0.number) }
    require(Set(object.keys) == Set(set.map(\.jsonName)),
            "\(path): keys \(object.keys.sorted()) but fields \(set.map(\.jsonName))")
    for field in set {
        let values = message.values(field.number)
        let json = object[field.jsonName]!
        if field.isRepeated {
            guard let array = json as? [Any], array.count == values.count else {
                require(false, "\(path).\(field.jsonName): \(json) does not hold \(values.count) values")
                return
            }
            for (i, v) in values.enumerated() { same(array[i], v, field, "\(path).\(field.jsonName)[\(i)]") }
        } else {
            same(json, values[0], field, "\(path).\(field.jsonName)")
        }
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzJSON(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    var input = Choices(inputBytes(data, size))
    let descriptor = types[Int(input.byte()) % types.count]
    guard let message = try? DynamicMessage(serializedBytes: input.rest(), as: descriptor) else { return 0 }
    for pretty in [false, true] {
        let text = JSONFormat.print(message, pretty: pretty)
        let json: Any
        do {
            json = try JSONSerialization.jsonObject(with: Data(text.utf8), options: [])
        } catch {
            require(false, "not JSON (pretty: \(pretty)): \(error)\n\(text)")
            return 0
        }
        same(json, message, descriptor.fullName)
    }
    return 0
}
