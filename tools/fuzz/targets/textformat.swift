// The protobuf text-format parser and printer (Sources/LmctfyProto/TextFormat.swift).
//
// Input: text, parsed as the type named by a first line "# type: NAME" (as
// in Tests/LmctfyProtoTests/Corpus), else as containers.lmctfy.ContainerSpec.
// Properties, for every input that parses:
//  - parse(print(m)) == m, and print is a fixed point (print(parse(print(m))) == print(m));
//  - the binary encoding of m decodes to m (protobuf-c agrees with the parser);
// and for every input that does not parse, the error points inside the text.
import LmctfyProto

let defaultType = ProtoRegistry.message(named: "containers.lmctfy.ContainerSpec")

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTextFormat(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let text = String(decoding: inputBytes(data, size), as: UTF8.self)
    var descriptor = defaultType
    if text.hasPrefix("# type: "), let end = text.firstIndex(of: "\n") {
        let name = text[text.index(text.startIndex, offsetBy: 8)..<end].trimmingCharacters(inSet: " \t")
        descriptor = ProtoRegistry.shared.message(fullName: name) ?? defaultType
    }
    let message: DynamicMessage
    do {
        message = try TextFormat.parse(text, as: descriptor)
    } catch {
        // Lines as the parser counts them: by "\n" bytes ("\r\n" is one
        // Character to Swift, so splitting Characters would undercount).
        let lines = text.utf8.count { $0 == 0x0A } + 1
        require(error.line >= 1 && error.line <= lines && error.column >= 1,
                "error \(error) outside the text (\(lines) lines)")
        return 0
    }
    let printed = TextFormat.print(message)
    let again: DynamicMessage
    do {
        again = try TextFormat.parse(printed, as: descriptor)
    } catch {
        require(false, "printed text does not parse: \(error)\n\(printed)")
        return 0
    }
    require(again == message, "parse(print(m)) != m:\n\(printed)")
    require(TextFormat.print(again) == printed, "print is not a fixed point:\n\(printed)")

    do {
        let bytes = try message.serializedBytes()
        let decoded = try DynamicMessage(serializedBytes: bytes, as: descriptor)
        require(decoded == message, "binary round trip changed the message:\n\(printed)\nvs\n\(TextFormat.print(decoded))")
    } catch {
        // The parser checks required fields, so protobuf-c must accept what it made.
        require(false, "a parsed message does not encode or decode: \(error)\n\(printed)")
    }
    return 0
}

extension Substring {
    func trimmingCharacters(inSet set: String) -> String {
        var s = self
        while let c = s.first, set.contains(c) { s.removeFirst() }
        while let c = s.last, set.contains(c) { s.removeLast() }
        return String(s)
    }
}
