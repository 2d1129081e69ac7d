// The start time and state a snapshot's processes are known by, parsed from
// /proc/<pid>/stat without strings (SnapshotKeeper.stat, on every Run).
import Glibc
@testable import LmctfyAgent
import LmctfySystem
import Testing

@Suite struct ProcStatTests {
    func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

    @Test func thisProcessIsReadAsTheKernelWritesIt() throws {
        let text = try Sys.readFile("/proc/self/stat")
        let close = try #require(text.lastIndex(of: ")"))
        let fields = text[text.index(after: close)...].split(separator: " ")
        let st = try #require(SnapshotKeeper.stat(getpid()))
        #expect(st.startTime == UInt64(fields[19]))
        #expect(st.state == fields[0].utf8.first)
        #expect(SnapshotKeeper.startTime(getpid()) == st.startTime)
    }

    @Test func aCommandWithSpacesAndParenthesesIsSkippedWhole() {
        let tail = " S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 987654 20 21\n"
        let st = SnapshotKeeper.parseStat(bytes("42 (a ) b) c)" + tail))
        #expect(st?.state == UInt8(ascii: "S") && st?.startTime == 987654)
    }

    @Test func aShortOrMalformedStatIsNothing() {
        #expect(SnapshotKeeper.parseStat(bytes("42 (x) S 1 2 3")) == nil)
        #expect(SnapshotKeeper.parseStat(bytes("42 x S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20")) == nil)
        #expect(SnapshotKeeper.parseStat(bytes("42 (x) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 12x4 20")) == nil)
        #expect(SnapshotKeeper.parseStat(bytes("42 (x) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 123456789012345678901 20")) == nil)
        #expect(SnapshotKeeper.stat(-1) == nil)
    }
}
