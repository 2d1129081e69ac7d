// Shared by every fuzz target (compiled into each; see tools/fuzz/build).

/// A property the target asserts. A violation is a crash libFuzzer records
/// (and minimises) like any other; the message says which property.
@inline(never)
func require(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String,
             file: StaticString = #fileID, line: UInt = #line) {
    if !condition() { fatalError("fuzz property violated: \(message())", file: file, line: line) }
}

/// Reads an input as a sequence of choices; past the end every choice is 0,
/// so any input (even empty) is a valid program for the target.
struct Choices {
    let bytes: [UInt8]
    private(set) var offset = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    var isAtEnd: Bool { offset >= bytes.count }

    mutating func byte() -> UInt8 {
        guard offset < bytes.count else { return 0 }
        defer { offset += 1 }
        return bytes[offset]
    }

    mutating func uint16() -> UInt16 { UInt16(byte()) << 8 | UInt16(byte()) }

    /// The rest of the input.
    mutating func rest() -> ArraySlice<UInt8> {
        defer { offset = bytes.count }
        return bytes[min(offset, bytes.count)...]
    }
}

/// The libFuzzer entry point's buffer as bytes.
func inputBytes(_ data: UnsafePointer<UInt8>?, _ size: Int) -> [UInt8] {
    guard let data, size > 0 else { return [] }
    return Array(UnsafeBufferPointer(start: data, count: size))
}

/// Splits `bytes` into chunks whose sizes come from `sizes` (1...64 each,
/// cycling), the way a socket might deliver them.
func chunks(_ bytes: [UInt8], sizes: ArraySlice<UInt8>) -> [ArraySlice<UInt8>] {
    var out: [ArraySlice<UInt8>] = []
    var offset = 0
    var i = sizes.startIndex
    while offset < bytes.count {
        let n: Int
        if sizes.isEmpty {
            n = 1
        } else {
            n = 1 + Int(sizes[i] & 63)
            i = sizes.index(after: i) == sizes.endIndex ? sizes.startIndex : sizes.index(after: i)
        }
        let end = min(bytes.count, offset + n)
        out.append(bytes[offset..<end])
        offset = end
    }
    return out
}
