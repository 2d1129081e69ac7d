// Sys.randomBytes: getrandom(2), continued past a short read.
import LmctfySystem
import Testing

@Suite struct RandomTests {
    @Test(arguments: [0, 1, 16, 32, 256, 257, 4096])
    func givesTheCountAsked(count: Int) throws {
        #expect(try Sys.randomBytes(count).count == count)
    }

    @Test func twoDrawsDiffer() throws {
        // 2^-256 chance of a false failure.
        #expect(try Sys.randomBytes(32) != Sys.randomBytes(32))
    }
}

/// Sys.hex: two lower-case digits a byte, what every id, digest and journal
/// line spelled out by hand before.
@Suite struct HexTests {
    @Test func twoLowerCaseDigitsAByte() {
        #expect(Sys.hex([]) == "")
        #expect(Sys.hex([0x00, 0x0f, 0xa5, 0xff]) == "000fa5ff")
        let bytes = (0...255).map(UInt8.init)
        #expect(Sys.hex(bytes) == bytes.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined())
    }
}
