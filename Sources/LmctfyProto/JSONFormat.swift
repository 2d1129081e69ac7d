// The proto3 JSON mapping, for `-o json` output: lowerCamelCase keys, 64-bit
// integers as strings, enums by name, bytes as base64.

public enum JSONFormat {
    public static func print(_ message: DynamicMessage, pretty: Bool = false) -> String {
        var out = ""
        write(message, indent: pretty ? "" : nil, to: &out)
        return out
    }

    private static func write(_ message: DynamicMessage, indent: String?, to out: inout String) {
        let fields = message.descriptor.fields.filter { message.has($0.number) }
        if fields.isEmpty { out += "{}"; return }
        let inner = indent.map { $0 + "  " }
        out += "{"
        for (i, field) in fields.enumerated() {
            if i > 0 { out += "," }
            if let inner { out += "\n" + inner }
            out += quote(field.jsonName) + (indent == nil ? ":" : ": ")
            let values = message.values(field.number)
            if field.isRepeated {
                out += "["
                for (j, v) in values.enumerated() {
                    if j > 0 { out += "," }
                    if let inner { out += "\n" + inner + "  " }
                    writeValue(v, field, indent: inner.map { $0 + "  " }, to: &out)
                }
                if let inner { out += "\n" + inner }
                out += "]"
            } else {
                writeValue(values[0], field, indent: inner, to: &out)
            }
        }
        if let indent { out += "\n" + indent }
        out += "}"
    }

    private static func writeValue(_ v: ProtoValue, _ field: FieldDescriptor, indent: String?, to out: inout String) {
        switch v {
        case .int32(let n): out += String(n)
        case .uint32(let n): out += String(n)
        case .int64(let n): out += quote(String(n))
        case .uint64(let n): out += quote(String(n))
        case .float(let f): out += number(Double(f))
        case .double(let d): out += number(d)
        case .bool(let b): out += b ? "true" : "false"
        case .enumValue(let n):
            if case .enumType(let e) = field.type, let name = e.name(of: n) { out += quote(name) } else { out += String(n) }
        case .string(let s): out += quote(s)
        case .bytes(let b): out += quote(base64(b))
        case .message(let m): write(m, indent: indent, to: &out)
        }
    }

    private static func number(_ d: Double) -> String {
        if d.isNaN { return "\"NaN\"" }
        if d.isInfinite { return d < 0 ? "\"-Infinity\"" : "\"Infinity\"" }
        var s = d.description
        if s.hasSuffix(".0") { s.removeLast(2) }
        return s
    }

    /// A JSON string literal.
    public static func quote(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "\u{08}": out += "\\b"
            case "\u{0C}": out += "\\f"
            default:
                if u.value < 0x20 {
                    let hex = String(u.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    out.unicodeScalars.append(u)
                }
            }
        }
        return out + "\""
    }

    /// Standard base64 with padding (as proto3 JSON writes bytes).
    public static func base64Encoded(_ bytes: [UInt8]) -> String { base64(bytes) }

    static func base64(_ bytes: [UInt8]) -> String {
        let table = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
        var out = [UInt8]()
        var i = 0
        while i < bytes.count {
            let n = min(3, bytes.count - i)
            var chunk = UInt32(bytes[i]) << 16
            if n > 1 { chunk |= UInt32(bytes[i + 1]) << 8 }
            if n > 2 { chunk |= UInt32(bytes[i + 2]) }
            for k in 0..<4 {
                out.append(k <= n ? table[Int((chunk >> (18 - 6 * UInt32(k))) & 63)] : UInt8(ascii: "="))
            }
            i += 3
        }
        return String(decoding: out, as: UTF8.self)
    }
}
