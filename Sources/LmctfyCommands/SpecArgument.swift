// Specs on the command line (lmctfy-behaviour.md §1.3): one argument or the
// `-c` file, in protobuf text format or, when it is not printable text, in
// the binary wire format, so that `$(cat spec.bin)` and `-c spec.bin` work
// as well as hand-written text.
import LmctfyProto
import LmctfySystem

extension Invocation {
    /// The spec given inline at `index` or with `-c`; exactly one of the two.
    /// `what` names it in the error ("container config" / "config").
    /// `reportTextError`: whether a text format error (line:column) is shown
    /// on stderr when neither format parses a spec that is not printable
    /// text; the original shows it for create and init and keeps update
    /// quiet. For printable text the error itself says it (every verb).
    func spec<M: ProtoMessage>(
        _: M.Type, inlineAt index: Int, what: String, reportTextError: Bool
    ) throws(LmctfyError) -> M {
        let inline = index < rawArguments.count ? rawArguments[index] : nil
        let bytes: [UInt8]
        switch (inline, flags.configFile) {
        case (let inline?, nil):
            bytes = inline
        case (nil, let file?):
            bytes = try environment.readFile(file)
        case (.some, .some):
            throw .invalidArgument("Both an inline \(what) and a config file (-c) were given; use one")
        case (nil, nil):
            throw .invalidArgument("No \(what) given: pass it as an argument or with -c <file>")
        }
        return try SpecParser.parse(M.self, bytes, what: what) { textError in
            if reportTextError { stderr.write("Not a valid \(what) in text format: \(textError)\n") }
        }
    }
}

enum SpecParser {
    /// Printable text (UTF-8 without control characters other than
    /// whitespace) is text format and nothing else: its error is the error.
    /// The original then tried it as binary, so a typo made another spec
    /// ("@A" is owner_group 65, "}}}}" an empty spec). Anything else (a
    /// binary spec always holds control bytes: tags and lengths below 32)
    /// is tried as text, then as binary; both failing is INVALID_ARGUMENT,
    /// and `onTextError` sees the text parser's complaint (line:column).
    static func parse<M: ProtoMessage>(
        _: M.Type, _ bytes: [UInt8], what: String, onTextError: (TextFormatError) -> Void = { _ in }
    ) throws(LmctfyError) -> M {
        var textError: TextFormatError?
        // Bytes that are not UTF-8 cannot be text format; go straight to binary.
        if let text = String(validating: bytes, as: UTF8.self) {
            do {
                return try M(textFormat: text)
            } catch {
                if isPrintable(text) { throw .invalidArgument("Failed to parse the \(what) in text format: \(error)") }
                textError = error
            }
        }
        if let message = try? M(serializedBytes: bytes) { return message }
        if let textError { onTextError(textError) }
        throw .invalidArgument("Failed to parse the \(what)")
    }

    /// Whether `text` has no control characters but tab, newline, CR, VT and FF.
    static func isPrintable(_ text: String) -> Bool {
        text.unicodeScalars.allSatisfy { u in
            (u.value >= 0x20 && u.value != 0x7F && !(0x80...0x9F).contains(u.value)) || (0x09...0x0D).contains(u.value)
        }
    }
}
