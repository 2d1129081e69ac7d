// The fleet's events survive the controller (issue #12): a controller
// process killed with SIGKILL during an OOM storm in 20 containers of two
// hosts, and started again; a scheduler that resumes from its cursor gets
// every OOM the agents recorded, each exactly once, and no gap.
import Foundation
import Glibc
import Lmctfy
import LmctfyAgent
import LmctfyProto
import LmctfyRPC
import LmctfySystem
import LmctfyTestSupport
import Testing

/// A TCP port nobody listens on right now.
func freePort() throws -> UInt16 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var a = sockaddr_in()
    a.sin_family = sa_family_t(AF_INET)
    a.sin_addr.s_addr = inet_addr("127.0.0.1")
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    let ok = withUnsafeMutablePointer(to: &a) { p in
        p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
            bind(fd, sa, len) == 0 && getsockname(fd, sa, &len) == 0
        }
    }
    guard ok else { throw SystemError("bind", "127.0.0.1:0", errno) }
    return UInt16(bigEndian: a.sin_port)
}

/// The scheduler: follows the fleet's OOMs at the controller on a thread
/// of its own, and when the stream breaks connects again and resumes after
/// the last event it handled.
final class ResumingScheduler: @unchecked Sendable {
    private let lock = NSLock()
    private var got: [ContainerEvent] = []
    private var reconnects = 0
    private var stopped = false
    private let done = DispatchSemaphore(value: 0)

    init(socket: String) {
        Thread { [self] in
            var cursor: (boot: String?, seq: UInt64) = (nil, 0)
            while !lock.withLock({ stopped }) {
                do {
                    let client = try RpcClient.connect(unixPath: socket)
                    defer { client.close() }
                    let r = SubscribeRequest(kinds: [.containerEventOom, .containerEventHostGap], bootId: cursor.boot,
                                             afterSequence: cursor.seq, credit: 64)
                    try client.stream(AgentMethods.subscribe, r, deadlineMs: 2_000, window: 64) { (resp: SubscribeResponse) in
                        if let e = resp.event {
                            self.lock.withLock { self.got.append(e) }
                            cursor = (e.bootId, e.sequence ?? cursor.seq)
                        }
                        return !self.lock.withLock { self.stopped }
                    }
                } catch {
                    // Killed controller (UNAVAILABLE), or the deadline that
                    // makes each stream short: connect again and resume.
                    lock.withLock { reconnects += 1 }
                    usleep(50_000)
                }
            }
            done.signal()
        }.start()
    }

    var events: [ContainerEvent] { lock.withLock { got } }

    func stop() -> (events: [ContainerEvent], reconnects: Int) {
        lock.withLock { stopped = true }
        done.wait()
        return lock.withLock { (got, reconnects) }
    }
}

@Suite(.enabled(if: RealCgroups.available, "\(RealCgroups.unavailableReason ?? "")"), .serialized)
struct FleetSurvivalTests {
    @Test func aSchedulerGetsEveryOOMOnceThoughTheControllerWasKilledDuringTheStorm() throws {
        let api = try ContainerApi.detect()
        let roots = try ["stormalpha", "stormbeta"].map { try ContainerName.resolve(RealCgroups.uniqueName($0), relativeTo: .root) }
        // Destroyed with whatever is left in them (a process the storm did not end).
        defer { for r in roots { RealCgroups.destroy(r.path) } }
        for r in roots { try api.create(r, spec: try ContainerSpec(textFormat: "memory { limit: 1073741824 }")) }
        let fleet = try Fleet()
        let port = try freePort()
        let config = """
            unix_socket_path: "\(fleet.dir)/controller.sock" unix_socket_mode: 0666
            agent_address: "127.0.0.1:\(port)" key_file: "\(fleet.dir)/keys" allow_plaintext_tcp: true state_dir: "\(fleet.dir)/controller"
            log_level: LOG_WARNING
            """
        try Sys.createFile(fleet.dir + "/controller.conf", config, mode: 0o600)
        let dir = fleet.dir
        @Sendable func startController() throws -> pid_t {
            unlink(dir + "/controller.sock")
            let pid = try TestProcess.spawn([builtTool("lmctfy-controller"), "--config", dir + "/controller.conf"])
            for _ in 0..<500 where !Sys.exists(dir + "/controller.sock") { usleep(10_000) }
            return pid
        }
        let controller = Mutexed(try startController())
        defer { TestProcess.end(controller.locked { $0 }) }
        fleet.agentPortOverride(port)
        try fleet.startAgent("a", host: "alpha", keyId: "host-a", root: roots[0])
        try fleet.startAgent("b", host: "beta", keyId: "host-b", root: roots[1])
        func connectedHosts() -> Int {
            guard let c = try? fleet.client() else { return 0 }
            defer { c.close() }
            return (try? c.call(ControllerMethods.listHosts, ListHostsRequest()).hosts.filter { $0.state == .hostConnected }.count) ?? 0
        }
        for _ in 0..<500 where connectedHosts() < 2 { usleep(20_000) }
        #expect(connectedHosts() == 2)
        // SIGUSR1 and SIGUSR2 ended it at once by their default (log
        // rotation sends SIGUSR1): logged and ignored now.
        let first = controller.locked { $0 }
        #expect(kill(first, SIGUSR1) == 0 && kill(first, SIGUSR2) == 0)
        usleep(300_000)
        #expect(!TestProcess.hasExited(first) && connectedHosts() == 2, "the controller ended")
        let scheduler = ResumingScheduler(socket: fleet.dir + "/controller.sock")

        // Ten containers per host, each OOMing; the controller is killed a
        // third of the way through and started again.
        var made: [Container] = []
        for r in roots {
            for i in 0..<10 {
                made.append(try api.create(r.path + "/oom\(i)", spec: try ContainerSpec(textFormat: "memory { limit: 16777216 }")))
            }
        }
        let containers = made
        let kills = Mutexed(0)
        let restarted = Mutexed(false)
        DispatchQueue.concurrentPerform(iterations: 4) { worker in
            for _ in 0..<1 {
                for (i, c) in containers.enumerated() where i % 4 == worker {
                    guard let pid = try? c.run([testHelperPath, "alloc", "200"]) else { continue }
                    // Until the OOM killer has ended it (reaped, if it is our child).
                    for _ in 0..<10_000 where TestProcess.reapIfExited(pid) == nil && kill(pid, 0) == 0 { usleep(1000) }
                    let n = kills.locked { $0 += 1; return $0 }
                    if n == 7 {
                        // Mid-storm: SIGKILL, a moment away, back.
                        controller.locked { pid in
                            kill(pid, SIGKILL)
                            TestProcess.end(pid)
                            usleep(300_000)
                            if let again = try? startController() {
                                pid = again
                                restarted.locked { $0 = true }
                            }
                        }
                    }
                }
            }
        }
        // Every OOM the agents recorded must reach the scheduler.
        func expected() -> Set<String> {
            var out: Set<String> = []
            for (host, name) in [("alpha", "a"), ("beta", "b")] {
                guard let agent = fleet.agents[name] else { continue }
                for e in agent.dispatcher.events.range(after: 0, upTo: .max).events where e.kind == .containerEventOom {
                    out.insert("\(host) \(e.bootId ?? "") \(e.sequence ?? 0)")
                }
            }
            return out
        }
        func received(_ events: [ContainerEvent]) -> [String] {
            events.filter { $0.kind == .containerEventOom }.map { "\($0.host ?? "") \($0.hostBootId ?? "") \($0.hostSequence ?? 0)" }
        }
        for _ in 0..<600 where Set(received(scheduler.events)) != expected() || expected().isEmpty { usleep(50_000) }
        let (events, reconnects) = scheduler.stop()
        let want = expected()
        let got = received(events)
        #expect(want.count >= 20, "the storm made at least one OOM per container (\(want.count))")
        #expect(Set(got) == want, "every OOM the agents recorded (\(want.subtracting(Set(got)).count) missing, \(Set(got).subtracting(want).count) unknown)")
        #expect(got.count == Set(got).count, "none twice (\(got.count - Set(got).count) duplicates)")
        #expect(!events.contains { $0.kind == .containerEventHostGap }, "no gap")
        #expect(restarted.locked { $0 }, "the controller was killed mid-storm and started again")
        #expect(reconnects >= 1, "the scheduler's stream was broken by the kill and resumed")
        // The fleet's sequence numbers have no gap and no repeat.
        let seqs = events.compactMap(\.sequence)
        #expect(seqs == seqs.sorted() && Set(seqs).count == seqs.count)
    }
}
