// The agent's budget of INPUT frames (CallInput, PROTOCOL.md section 4.5):
// every frame granted is held against it until dealt with or its call has
// ended, so what the agent holds of its callers' input is bounded however
// many calls there are (a probe had 512 Runs hold 290 MB); a call whose
// grant does not fit waits its turn, and a call that ends gives back what
// it did not use.
import Glibc
import Lmctfy
@testable import LmctfyAgent
import LmctfyProto
import LmctfyRPC
import LmctfySystem
import LmctfyTestSupport
import Testing

@Suite struct InputBudgetTests {
    @Test func grantsFitTheBudgetAndWaitersAreServedInTurn() throws {
        let budget = InputBudget(agentBytes: 0)  // the least: 8 frames
        #expect(budget.frames == 8)
        let grants = Mutexed<[String]>([])
        func input(_ tag: String) throws -> CallInput {
            try #require(CallInput(budget: budget) { n in grants.locked { $0.append("\(tag)\(n)") } })
        }
        let a = try input("a"), b = try input("b"), c = try input("c")
        a.start()
        b.start()
        c.start()
        #expect(grants.locked { $0 } == ["a4", "b4"], "c waits: the budget is full")
        #expect(budget.granted == 8)
        // One of a's frames dealt with: its place goes to c, who came
        // first; a's next waits behind c.
        a.deliver([1], end: false)
        #expect(a.take()?.bytes == [1])
        a.consumed()
        #expect(grants.locked { $0 } == ["a4", "b4", "c1"])
        // b's call ends with its 4 unused: c's other 3 and a's 1.
        b.close()
        #expect(grants.locked { $0 } == ["a4", "b4", "c1", "c3", "a1"])
        #expect(budget.granted == 8)
        // The end of the input asks for nothing more.
        c.deliver([], end: true)
        #expect(c.take()?.end == true)
        c.consumed()
        #expect(budget.granted == 7 && grants.locked { $0 }.count == 5)
        a.close()
        c.close()
        c.close()  // once
        #expect(budget.granted == 0)
        // Nothing is granted to a closed call any more.
        a.consumed()
        #expect(budget.granted == 0 && grants.locked { $0 }.count == 5)
    }
}

@Suite(.enabled(if: RealCgroups.available, "\(RealCgroups.unavailableReason ?? "")"))
struct InputBudgetAgentTests {
    /// With room for 8 frames (a quarter of 2 MB, 8 at least), two Runs whose commands never read take it
    /// all (4 each) and a third gets nothing until one of them ends; every
    /// frame comes back when the calls are over.
    @Test func theAgentHoldsNoMoreInputThanItsBudget() throws {
        try withAgent("limits { max_agent_buffered_bytes: 2000000 }") { agent, socket in
            let name = RealCgroups.uniqueName("inbudget")
            let admin = try RpcClient.connect(unixPath: socket)
            defer {
                _ = try? admin.call(AgentMethods.destroy, DestroyRequest(name: name, force: true))
                admin.close()
            }
            _ = try admin.call(AgentMethods.create, CreateRequest(name: name, spec: ContainerSpec()))
            let run = try RunRequest(name: name, argv: ["/bin/sleep", "60"], attachInput: true).serializedBytes()
            var links: [RawLink] = []
            var streams: [UInt32] = []
            func credit(_ i: Int) -> UInt32 { links[i].session.inputCredit(streamId: streams[i]) }
            for i in 0..<3 {
                links.append(try RawLink(fd: try RpcSocket.connectUnix(path: socket),
                                         Session(dialler: .peerCredentials, name: "t", now: MonotonicClock.milliseconds())))
                streams.append(links[i].open("Run", run, deadlineMs: nil))
                links[i].pump(ms: 10_000) { !links[i].responses.isEmpty }  // RUN_STARTED
                links[i].pump(ms: 300) { credit(i) >= 4 }
            }
            #expect(credit(0) == 4 && credit(1) == 4 && credit(2) == 0, "\(credit(0)) \(credit(1)) \(credit(2))")
            #expect(agent.inputBudget.granted == 8)
            // The first call ends (cancelled): its frames go to the third.
            links[0].send(links[0].session.cancel(streamId: streams[0], now: MonotonicClock.milliseconds()))
            links[2].pump(ms: 10_000) { credit(2) == 4 }
            #expect(credit(2) == 4)
            links.removeAll()  // the others' connections close: their commands are killed
            var left = 8
            for _ in 0..<500 where left != 0 {
                left = agent.inputBudget.granted
                usleep(10_000)
            }
            #expect(left == 0, "frames still held by calls that ended")
        }
    }
}
