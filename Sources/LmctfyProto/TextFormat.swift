// Protobuf text format, driven by the descriptors: the parser accepts what
// protoc's does (the original lmctfy CLI used protoc's parser), and the
// printer writes what `protoc --decode` writes.

/// A text format parse error at a 1-based line and column.
public struct TextFormatError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        /// A token other than the one the grammar needs here.
        case expected(String, found: String)
        /// `field` is not a field of `message`.
        case unknownField(String, message: String)
        /// An enum name or number the field's enum does not have.
        case unknownEnumValue(String, field: String)
        /// An integer outside the field's type.
        case outOfRange(String, field: String, type: String)
        /// A value of the wrong kind for the field (e.g. a string for an integer).
        case wrongType(String, field: String, type: String)
        case unterminatedString
        case invalidEscape(String)
        case invalidCharacter(String)
        case invalidNumber(String)
        /// A string field whose bytes are not UTF-8, or contain NUL.
        case invalidString(field: String, reason: String)
        /// A non-repeated field given twice.
        case duplicateField(String)
        /// A required field (dotted path) that was never given.
        case missingRequired(String)
    }

    public let line: Int
    public let column: Int
    public let kind: Kind

    public init(line: Int, column: Int, kind: Kind) {
        self.line = line
        self.column = column
        self.kind = kind
    }

    public var reason: String {
        switch kind {
        case .expected(let what, let found): "expected \(what), found \(found)"
        case .unknownField(let f, let m): "message type \"\(m)\" has no field named \"\(f)\""
        case .unknownEnumValue(let v, let f): "unknown enumeration value \"\(v)\" for field \"\(f)\""
        case .outOfRange(let v, let f, let t): "integer \(v) is out of range for field \"\(f)\" (\(t))"
        case .wrongType(let v, let f, let t): "expected \(t.hasPrefix("int") || t.hasPrefix("enum") ? "an" : "a") \(t) value for field \"\(f)\", found \(v)"
        case .unterminatedString: "unterminated string literal"
        case .invalidEscape(let e): "invalid escape sequence \"\(e)\" in string literal"
        case .invalidCharacter(let c): "unexpected character \(c)"
        case .invalidNumber(let n): "invalid number \"\(n)\""
        case .invalidString(let f, let r): "string for field \"\(f)\" \(r)"
        case .duplicateField(let f): "non-repeated field \"\(f)\" is specified multiple times"
        case .missingRequired(let f): "required field \"\(f)\" is missing"
        }
    }

    public var description: String { "\(line):\(column): \(reason)" }
}

public enum TextFormat {
    /// Parses `text` as a message of type `descriptor`. Either the whole
    /// message parses or an error says where and why; never a partial result.
    public static func parse(_ text: String, as descriptor: MessageDescriptor) throws(TextFormatError) -> DynamicMessage {
        var parser = TextParser(Array(text.utf8))
        var message = DynamicMessage(descriptor)
        try parser.parseFields(into: &message, until: nil)
        if let missing = message.firstMissingRequired() {
            throw TextFormatError(line: parser.tok.line, column: parser.tok.column, kind: .missingRequired(missing))
        }
        return message
    }

    /// Prints `message` as `protoc --decode` does: fields in number order,
    /// two-space indentation, C-escaped strings.
    public static func print(_ message: DynamicMessage) -> String {
        var out = ""
        write(message, indent: "", to: &out)
        return out
    }

    private static func write(_ message: DynamicMessage, indent: String, to out: inout String) {
        for field in message.descriptor.fields {
            for value in message.values(field.number) {
                if case .message(let sub) = value {
                    out += "\(indent)\(field.name) {\n"
                    write(sub, indent: indent + "  ", to: &out)
                    out += "\(indent)}\n"
                } else {
                    out += "\(indent)\(field.name): \(scalarText(value, field))\n"
                }
            }
        }
    }

    static func scalarText(_ value: ProtoValue, _ field: FieldDescriptor) -> String {
        switch value {
        case .int32(let v): String(v)
        case .int64(let v): String(v)
        case .uint32(let v): String(v)
        case .uint64(let v): String(v)
        case .float(let v): floatText(Double(v), digits: Float.self)
        case .double(let v): floatText(v, digits: Double.self)
        case .bool(let v): v ? "true" : "false"
        case .enumValue(let v):
            if case .enumType(let e) = field.type, let name = e.name(of: v) { name } else { String(v) }
        case .string(let s): "\"" + cEscape(Array(s.utf8)) + "\""
        case .bytes(let b): "\"" + cEscape(b) + "\""
        case .message: ""
        }
    }

    /// protoc prints the shortest text that reads back as the same value,
    /// without a trailing ".0", and inf / -inf / nan.
    static func floatText<F: BinaryFloatingPoint & LosslessStringConvertible>(_ v: Double, digits: F.Type) -> String {
        if v.isNaN { return "nan" }
        if v.isInfinite { return v < 0 ? "-inf" : "inf" }
        var s = F(v).description
        if s.hasSuffix(".0") { s.removeLast(2) }
        return s
    }

    /// protobuf's CEscape: the usual C escapes, other bytes outside printable
    /// ASCII as three octal digits (also the CLI's key="value" escaping).
    public static func cEscape(_ bytes: [UInt8]) -> String {
        var out = ""
        for b in bytes {
            switch b {
            case 0x0A: out += "\\n"
            case 0x0D: out += "\\r"
            case 0x09: out += "\\t"
            case 0x22: out += "\\\""
            case 0x27: out += "\\'"
            case 0x5C: out += "\\\\"
            case 0x20..<0x7F: out.unicodeScalars.append(Unicode.Scalar(b))
            default:
                let octal = String(b, radix: 8)
                out += "\\" + String(repeating: "0", count: 3 - octal.count) + octal
            }
        }
        return out
    }
}

// MARK: - Tokenizer

struct Token {
    enum Kind: Equatable {
        case identifier, integer, float, string, symbol, end
    }
    var kind: Kind
    var text: String       // source text (for strings: the decoded value isn't here)
    var bytes: [UInt8]     // decoded string contents
    var line: Int
    var column: Int

    var described: String {
        switch kind {
        case .end: "end of input"
        case .string: "string literal"
        default: "\"\(text)\""
        }
    }
}

struct TextParser {
    let src: [UInt8]
    var pos = 0
    var line = 1
    var lineStart = 0
    var tok = Token(kind: .end, text: "", bytes: [], line: 1, column: 1)
    var lexError: TextFormatError?

    init(_ src: [UInt8]) {
        self.src = src
        advance()
    }

    func error(_ kind: TextFormatError.Kind, at t: Token? = nil) -> TextFormatError {
        let t = t ?? tok
        return TextFormatError(line: t.line, column: t.column, kind: kind)
    }

    static func isIdentStart(_ c: UInt8) -> Bool {
        (c >= 0x61 && c <= 0x7A) || (c >= 0x41 && c <= 0x5A) || c == 0x5F
    }
    static func isDigit(_ c: UInt8) -> Bool { c >= 0x30 && c <= 0x39 }
    static func isHex(_ c: UInt8) -> Bool {
        isDigit(c) || (c >= 0x61 && c <= 0x66) || (c >= 0x41 && c <= 0x46)
    }

    /// Reads the next token into `tok`. A lexical error is kept and thrown
    /// when the parser looks at the token.
    mutating func advance() {
        // Whitespace and # comments.
        while pos < src.count {
            let c = src[pos]
            if c == 0x0A {
                pos += 1; line += 1; lineStart = pos
            } else if c == 0x20 || c == 0x09 || c == 0x0D || c == 0x0B || c == 0x0C {
                pos += 1
            } else if c == 0x23 {
                while pos < src.count && src[pos] != 0x0A {
                    // protoc refuses NUL even in a comment ("Invalid control characters").
                    if src[pos] == 0 {
                        tok = Token(kind: .end, text: "", bytes: [], line: line, column: pos - lineStart + 1)
                        lexError = error(.invalidCharacter("NUL"), at: tok)
                        return
                    }
                    pos += 1
                }
            } else {
                break
            }
        }
        let start = pos
        let column = pos - lineStart + 1
        func text(_ from: Int, _ to: Int) -> String { String(decoding: src[from..<to], as: UTF8.self) }
        guard pos < src.count else {
            tok = Token(kind: .end, text: "", bytes: [], line: line, column: column)
            return
        }
        let c = src[pos]
        if Self.isIdentStart(c) {
            while pos < src.count && (Self.isIdentStart(src[pos]) || Self.isDigit(src[pos])) { pos += 1 }
            tok = Token(kind: .identifier, text: text(start, pos), bytes: [], line: line, column: column)
        } else if Self.isDigit(c) || (c == 0x2E && pos + 1 < src.count && Self.isDigit(src[pos + 1])) {
            var isFloat = false
            if c == 0x30 && pos + 1 < src.count && (src[pos + 1] | 0x20) == 0x78 {
                pos += 2
                let digits = pos
                while pos < src.count && Self.isHex(src[pos]) { pos += 1 }
                if pos == digits {
                    tok = Token(kind: .end, text: text(start, pos), bytes: [], line: line, column: column)
                    lexError = error(.invalidNumber(text(start, pos)), at: tok)
                    return
                }
            } else {
                while pos < src.count && Self.isDigit(src[pos]) { pos += 1 }
                if pos < src.count && src[pos] == 0x2E {
                    isFloat = true
                    pos += 1
                    while pos < src.count && Self.isDigit(src[pos]) { pos += 1 }
                }
                if pos < src.count && (src[pos] | 0x20) == 0x65 {
                    isFloat = true
                    pos += 1
                    if pos < src.count && (src[pos] == 0x2B || src[pos] == 0x2D) { pos += 1 }
                    while pos < src.count && Self.isDigit(src[pos]) { pos += 1 }
                }
                if pos < src.count && (src[pos] | 0x20) == 0x66 {
                    isFloat = true
                    pos += 1
                }
            }
            // "12abc" is one bad token, not a number and a name.
            if pos < src.count && (Self.isIdentStart(src[pos]) || Self.isDigit(src[pos])) {
                while pos < src.count && (Self.isIdentStart(src[pos]) || Self.isDigit(src[pos])) { pos += 1 }
                tok = Token(kind: .end, text: text(start, pos), bytes: [], line: line, column: column)
                lexError = error(.invalidNumber(text(start, pos)), at: tok)
                return
            }
            tok = Token(kind: isFloat ? .float : .integer, text: text(start, pos), bytes: [], line: line, column: column)
        } else if c == 0x22 || c == 0x27 {
            lexString(quote: c, start: start, column: column)
        } else if "{}<>:;,[]-/".utf8.contains(c) {
            pos += 1
            tok = Token(kind: .symbol, text: text(start, pos), bytes: [], line: line, column: column)
        } else if c == 0 {
            tok = Token(kind: .end, text: "", bytes: [], line: line, column: column)
            lexError = error(.invalidCharacter("NUL"), at: tok)
        } else {
            // One whole UTF-8 character, for the message.
            pos += 1
            while pos < src.count && src[pos] & 0xC0 == 0x80 { pos += 1 }
            tok = Token(kind: .end, text: text(start, pos), bytes: [], line: line, column: column)
            lexError = error(.invalidCharacter("\"\(text(start, pos))\""), at: tok)
        }
    }

    mutating func lexString(quote: UInt8, start: Int, column: Int) {
        var out: [UInt8] = []
        pos += 1
        let here = Token(kind: .end, text: "", bytes: [], line: line, column: column)
        while true {
            guard pos < src.count, src[pos] != 0x0A else {
                tok = here
                lexError = error(.unterminatedString, at: here)
                return
            }
            let c = src[pos]
            if c == quote { pos += 1; break }
            if c == 0 {
                tok = Token(kind: .end, text: "", bytes: [], line: line, column: pos - lineStart + 1)
                lexError = error(.invalidCharacter("NUL"), at: tok)
                return
            }
            if c != 0x5C { out.append(c); pos += 1; continue }
            // Escape sequence.
            let escStart = pos
            pos += 1
            guard pos < src.count else { continue }
            let e = src[pos]
            pos += 1
            switch e {
            case 0x6E: out.append(0x0A)          // \n
            case 0x74: out.append(0x09)          // \t
            case 0x72: out.append(0x0D)          // \r
            case 0x61: out.append(0x07)          // \a
            case 0x62: out.append(0x08)          // \b
            case 0x66: out.append(0x0C)          // \f
            case 0x76: out.append(0x0B)          // \v
            case 0x3F: out.append(0x3F)          // \?
            case 0x5C, 0x27, 0x22: out.append(e)
            case 0x30...0x37:                    // \ooo, up to 3 octal digits
                var v = Int(e - 0x30)
                var n = 1
                while n < 3 && pos < src.count && src[pos] >= 0x30 && src[pos] <= 0x37 {
                    v = v * 8 + Int(src[pos] - 0x30); pos += 1; n += 1
                }
                guard v <= 0xFF else {
                    tok = here
                    lexError = error(.invalidEscape(String(decoding: src[escStart..<pos], as: UTF8.self)), at: here)
                    return
                }
                out.append(UInt8(v))
            case 0x78, 0x58:                     // \xHH, one or two hex digits
                var v = 0
                var n = 0
                while n < 2 && pos < src.count && Self.isHex(src[pos]) {
                    v = v * 16 + Int(String(UnicodeScalar(src[pos])), radix: 16)!; pos += 1; n += 1
                }
                guard n > 0 else {
                    tok = here
                    lexError = error(.invalidEscape("\\x"), at: here)
                    return
                }
                out.append(UInt8(v))
            case 0x75, 0x55:                     // \uXXXX, \UXXXXXXXX: a code point in UTF-8
                guard var v = hexDigits(e == 0x75 ? 4 : 8), v <= 0x10FFFF else {
                    // protoc refuses too few digits; above 10FFFF it keeps the
                    // escape as text (a bogus string), which we refuse.
                    tok = here
                    lexError = error(.invalidEscape(String(decoding: src[escStart..<min(pos, src.count)], as: UTF8.self)), at: here)
                    return
                }
                // A UTF-16 pair written as two \u escapes is one code point,
                // as in protoc; a lone surrogate stays as protoc writes it
                // (three bytes, not UTF-8: a string field then refuses it).
                if (0xD800..<0xDC00).contains(v), pos + 1 < src.count, src[pos] == 0x5C, src[pos + 1] == 0x75 {
                    let save = pos
                    pos += 2
                    if let low = hexDigits(4), (0xDC00..<0xE000).contains(low) {
                        v = 0x10000 + ((v - 0xD800) << 10 | (low - 0xDC00))
                    } else {
                        pos = save
                    }
                }
                Self.appendUTF8(v, to: &out)
            default:
                tok = here
                let bad = String(decoding: src[escStart..<min(pos, src.count)], as: UTF8.self)
                lexError = error(.invalidEscape(bad), at: here)
                return
            }
        }
        tok = Token(kind: .string, text: String(decoding: src[start..<pos], as: UTF8.self), bytes: out, line: here.line, column: column)
    }

    /// Exactly `count` hex digits at `pos` (consumed), or nil (nothing consumed).
    mutating func hexDigits(_ count: Int) -> UInt32? {
        guard pos + count <= src.count else { return nil }
        var v: UInt32 = 0
        for i in 0..<count {
            let c = src[pos + i]
            guard Self.isHex(c) else { return nil }
            v = v << 4 | UInt32(c <= 0x39 ? c - 0x30 : (c | 0x20) - 0x61 + 10)
        }
        pos += count
        return v
    }

    /// UTF-8 of a code point up to 10FFFF, surrogates included (as protoc does).
    static func appendUTF8(_ v: UInt32, to out: inout [UInt8]) {
        switch v {
        case 0..<0x80:
            out.append(UInt8(v))
        case 0x80..<0x800:
            out += [UInt8(0xC0 | v >> 6), UInt8(0x80 | v & 0x3F)]
        case 0x800..<0x10000:
            out += [UInt8(0xE0 | v >> 12), UInt8(0x80 | v >> 6 & 0x3F), UInt8(0x80 | v & 0x3F)]
        default:
            out += [UInt8(0xF0 | v >> 18), UInt8(0x80 | v >> 12 & 0x3F), UInt8(0x80 | v >> 6 & 0x3F), UInt8(0x80 | v & 0x3F)]
        }
    }

    /// The current token, or the lexical error that stopped the tokenizer.
    func current() throws(TextFormatError) -> Token {
        if let lexError { throw lexError }
        return tok
    }

    func isSymbol(_ s: String) -> Bool { lexError == nil && tok.kind == .symbol && tok.text == s }

    mutating func consume(_ s: String) throws(TextFormatError) {
        let t = try current()
        guard t.kind == .symbol && t.text == s else { throw error(.expected("\"\(s)\"", found: t.described)) }
        advance()
    }

    mutating func tryConsume(_ s: String) -> Bool {
        guard isSymbol(s) else { return false }
        advance()
        return true
    }

    // MARK: Grammar

    mutating func parseFields(into message: inout DynamicMessage, until close: String?) throws(TextFormatError) {
        while true {
            let t = try current()
            if let close, t.kind == .symbol && t.text == close {
                advance()
                return
            }
            if t.kind == .end {
                if let close { throw error(.expected("\"\(close)\"", found: t.described)) }
                return
            }
            try parseField(into: &message)
        }
    }

    mutating func parseField(into message: inout DynamicMessage) throws(TextFormatError) {
        let nameTok = try current()
        guard nameTok.kind == .identifier else {
            throw error(.expected("a field name", found: nameTok.described))
        }
        let descriptor = message.descriptor
        guard let field = descriptor.field(named: nameTok.text) else {
            throw error(.unknownField(nameTok.text, message: descriptor.fullName))
        }
        advance()
        if !field.isRepeated && message.has(field.number) {
            throw error(.duplicateField(field.name), at: nameTok)
        }
        if field.isMessage {
            let colon = tryConsume(":")
            if colon && field.isRepeated && isSymbol("[") {
                try parseList(field, into: &message)
            } else {
                message.append(field.number, .message(try parseSubmessage(field)))
            }
        } else {
            try consume(":")
            if isSymbol("[") {
                guard field.isRepeated else {
                    throw error(.expected("a value for non-repeated field \"\(field.name)\"", found: "\"[\""))
                }
                try parseList(field, into: &message)
            } else {
                message.append(field.number, try parseScalar(field))
            }
        }
        _ = tryConsume(";") || tryConsume(",")
    }

    mutating func parseList(_ field: FieldDescriptor, into message: inout DynamicMessage) throws(TextFormatError) {
        try consume("[")
        if tryConsume("]") { return }
        repeat {
            if field.isMessage {
                message.append(field.number, .message(try parseSubmessage(field)))
            } else {
                message.append(field.number, try parseScalar(field))
            }
        } while tryConsume(",")
        try consume("]")
    }

    mutating func parseSubmessage(_ field: FieldDescriptor) throws(TextFormatError) -> DynamicMessage {
        guard case .message(let type) = field.type else { preconditionFailure() }
        let close: String
        if tryConsume("{") {
            close = "}"
        } else if tryConsume("<") {
            close = ">"
        } else {
            throw error(.expected("\"{\" or \"<\"", found: try current().described))
        }
        var sub = DynamicMessage(type)
        try parseFields(into: &sub, until: close)
        return sub
    }

    mutating func parseScalar(_ field: FieldDescriptor) throws(TextFormatError) -> ProtoValue {
        let type = field.type
        switch type {
        case .string, .bytes:
            var t = try current()
            guard t.kind == .string else {
                throw error(.wrongType(t.described, field: field.name, type: type.protoName))
            }
            let first = t
            var bytes: [UInt8] = []
            while t.kind == .string {        // adjacent literals concatenate
                bytes += t.bytes
                advance()
                t = try current()
            }
            if case .bytes = type { return .bytes(bytes) }
            if bytes.contains(0) {
                throw error(.invalidString(field: field.name, reason: "contains a NUL byte"), at: first)
            }
            guard let s = String(validating: bytes, as: UTF8.self) else {
                throw error(.invalidString(field: field.name, reason: "is not valid UTF-8"), at: first)
            }
            return .string(s)
        case .bool:
            let t = try current()
            advance()
            switch (t.kind, t.text) {
            case (.identifier, "true"), (.identifier, "True"), (.identifier, "t"), (.integer, "1"):
                return .bool(true)
            case (.identifier, "false"), (.identifier, "False"), (.identifier, "f"), (.integer, "0"):
                return .bool(false)
            default:
                throw error(.wrongType(t.described, field: field.name, type: "bool"), at: t)
            }
        case .enumType(let e):
            let start = try current()
            if start.kind == .identifier {
                advance()
                guard let n = e.number(named: start.text) else {
                    throw error(.unknownEnumValue(start.text, field: field.name), at: start)
                }
                return .enumValue(n)
            }
            let (negative, magnitude, text) = try parseInteger(field)
            guard let n = Self.fit(negative, magnitude, min: Int64(Int32.min), max: UInt64(Int32.max)),
                  e.name(of: Int32(n)) != nil else {
                throw error(.unknownEnumValue(text, field: field.name), at: start)
            }
            return .enumValue(Int32(n))
        case .float, .double:
            let start = try current()
            let negative = tryConsume("-")
            let t = try current()
            advance()
            var v: Double
            switch t.kind {
            case .integer:
                guard let m = Self.integerValue(t.text) else { throw error(.invalidNumber(t.text), at: t) }
                v = Double(m)
            case .float:
                var s = t.text
                if s.last == "f" || s.last == "F" { s.removeLast() }
                guard let d = Double(s) else { throw error(.invalidNumber(t.text), at: t) }
                v = d
            case .identifier where ["inf", "infinity"].contains(t.text.lowercased()):
                v = .infinity
            case .identifier where t.text.lowercased() == "nan":
                v = .nan
            default:
                throw error(.wrongType(t.described, field: field.name, type: type.protoName), at: start)
            }
            if negative { v = -v }
            if case .float = type { return .float(Float(v)) }
            return .double(v)
        default:
            let start = try current()
            let (negative, magnitude, text) = try parseInteger(field)
            let outOfRange = error(.outOfRange(text, field: field.name, type: type.protoName), at: start)
            switch type {
            case .int32, .sint32, .sfixed32:
                guard let n = Self.fit(negative, magnitude, min: Int64(Int32.min), max: UInt64(Int32.max)) else { throw outOfRange }
                return .int32(Int32(n))
            case .int64, .sint64, .sfixed64:
                guard let n = Self.fit(negative, magnitude, min: Int64.min, max: UInt64(Int64.max)) else { throw outOfRange }
                return .int64(n)
            // No sign at all for unsigned fields, "-0" included (as protoc).
            case .uint32, .fixed32:
                guard !negative, magnitude <= UInt64(UInt32.max) else { throw outOfRange }
                return .uint32(UInt32(magnitude))
            default:
                guard !negative else { throw outOfRange }
                return .uint64(magnitude)
            }
        }
    }

    /// An optional "-" and an integer literal (decimal, 0x hex or 0 octal).
    mutating func parseInteger(_ field: FieldDescriptor) throws(TextFormatError) -> (Bool, UInt64, String) {
        let start = try current()
        let negative = tryConsume("-")
        let t = try current()
        guard t.kind == .integer else {
            throw error(.wrongType((negative ? "\"-\" " : "") + t.described, field: field.name, type: field.type.protoName), at: start)
        }
        advance()
        let text = (negative ? "-" : "") + t.text
        guard let m = Self.integerValue(t.text) else {
            throw error(.outOfRange(text, field: field.name, type: field.type.protoName), at: start)
        }
        return (negative, m, text)
    }

    static func integerValue(_ text: String) -> UInt64? {
        if text.hasPrefix("0x") || text.hasPrefix("0X") { return UInt64(text.dropFirst(2), radix: 16) }
        if text.count > 1 && text.hasPrefix("0") { return UInt64(text.dropFirst(), radix: 8) }
        return UInt64(text, radix: 10)
    }

    /// The signed value of sign and magnitude if it lies in min...max.
    static func fit(_ negative: Bool, _ magnitude: UInt64, min: Int64, max: UInt64) -> Int64? {
        if negative {
            guard magnitude <= min.magnitude else { return nil }
            return magnitude == min.magnitude ? min : -Int64(magnitude)
        }
        guard magnitude <= max else { return nil }
        return Int64(magnitude)
    }
}
