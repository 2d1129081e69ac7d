// The budget of log lines about peers' faults: a peer cannot flood the log,
// and what was left out is said.
import LmctfyRPC
import Testing

@Suite struct LogBudgetTests {
    @Test func tenLinesASecondThenWhatWasLeftOutIsSaid() {
        var b = LogBudget(perSecond: 10)
        let first = (0..<10).map { b.take(nowMs: 5_000 + UInt64($0)) }
        #expect(first.allSatisfy { $0 == "" })
        #expect((0..<2990).allSatisfy { _ in b.take(nowMs: 5_500) == nil })
        #expect(b.take(nowMs: 6_000) == " (2990 more such lines left out before this one)")
        #expect(b.take(nowMs: 6_001) == "")
        // A quiet second later: a fresh budget, nothing to report.
        #expect(b.take(nowMs: 9_000) == "")
    }
}
