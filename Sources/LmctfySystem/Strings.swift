extension StringProtocol {
    /// The string without leading and trailing spaces, tabs and newlines.
    public var trimmingWhitespace: String {
        let isSpace: (Character) -> Bool = { $0 == " " || $0 == "\n" || $0 == "\t" || $0 == "\r" }
        guard let first = firstIndex(where: { !isSpace($0) }) else { return "" }
        let last = lastIndex(where: { !isSpace($0) })!
        return String(self[first...last])
    }
}

extension StringProtocol {
    /// Whether the string is one or more ASCII digits and nothing else (no
    /// sign, no space: what Int's parser alone lets through).
    public var isDecimalDigits: Bool { !isEmpty && utf8.allSatisfy { $0 >= 0x30 && $0 <= 0x39 } }

    /// The string as an error message quotes it: whole up to `limit`
    /// characters, else its start and how long it was (a 15 MB host name
    /// came back whole in the message; a probe).
    public func clipped(_ limit: Int = 120) -> String {
        guard count > limit else { return String(self) }
        return "\(prefix(limit))... (\(utf8.count) bytes in all)"
    }
}
