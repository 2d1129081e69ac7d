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
