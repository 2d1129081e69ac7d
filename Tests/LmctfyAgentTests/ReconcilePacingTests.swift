// The reconcile's pacing: whatever a listing costs, the reconciles take at
// most a twentieth of a CPU (measured on the release agent over 2,000
// containers: 9.5 % of a CPU at idle before, 5 % after; README "Operating it").
@testable import LmctfyAgent
import Testing

@Suite struct ReconcilePacingTests {
    @Test(arguments: [0, 1, 20, 75, 400, 5_000] as [UInt64])
    func reconcilesTakeAtMostATwentiethOfACpu(costMs: UInt64) {
        let finished: UInt64 = 1_000_000
        let next = Agent.reconcileNotBefore(finishedMs: finished, costMs: costMs)
        #expect(next >= finished)
        // From the start of one to the start of the next, `costMs` of work.
        let period = next - (finished - costMs)
        #expect(costMs == 0 || Double(costMs) / Double(period) <= 0.05, "\(costMs) ms every \(period) ms")
    }
}
