// Progress of long work: the reporter plumbing (thread-local, throttled),
// `lmctfy destroy -f` and `killall` on a terminal (recorded with script(1),
// which gives the command a pty), lmctl forwarding what the agent streams,
// and the RPC itself: Destroy with want_progress streams progress
// responses before the final one; without it, one response as before.
import Glibc
@testable import LmctfyAgent
import LmctfyProto
import LmctfyRPC
import LmctfySystem
import LmctfyTestSupport
import Testing

@Suite struct ProgressReporterTests {
    @Test func reportsGoToThisThreadsReporterOnly() throws {
        var seen: [String] = []
        #expect(!Progress.isActive)
        Progress.report("nobody listens")
        Progress.with({ seen.append($0) }) {
            #expect(Progress.isActive)
            Progress.report("one")
            // Another thread's reports are not ours.
            let t = Threads.start { Progress.report("other thread") }
            pthread_join(t, nil)
            Progress.with({ seen.append("inner " + $0) }) { Progress.report("two") }
            Progress.report("three")
        }
        #expect(!Progress.isActive)
        #expect(seen == ["one", "inner two", "three"])
    }

    @Test func throttleWaitsForTheDelayThenLimitsTheRate() {
        // The test process has no LMCTFY_TEST_PROGRESS_DELAY_MS: 300 ms.
        #expect(Progress.delayMs == 300)
        var out: [String] = []
        // Its own clock: a stall of the test (a sanitizer, a loaded
        // machine) is no time passing.
        var now: UInt64 = 1000
        let t = ThrottledProgress(intervalMs: 100, clock: { now }) { out.append($0) }
        t.report("too early")
        now += 299
        t.report("still too early")
        #expect(out.isEmpty && !t.emitted)
        now += 21
        t.report("a")
        now += 99
        t.report("b (within the interval)")
        now += 21
        t.report("c")
        #expect(out == ["a", "c"])
        #expect(t.emitted)
    }

    @Test func agentNamesAreTheCallersUnderARootContainer() {
        #expect(Dispatcher.callerNames("/t1/web: killing 3 processes", root: "/t1") == "/web: killing 3 processes")
        #expect(Dispatcher.callerNames("/t1/web: destroying /t1/web/a (1 of 2 containers)", root: "/t1")
                    == "/web: destroying /web/a (1 of 2 containers)")
        #expect(Dispatcher.callerNames("/t10/x: destroying /t10/x", root: "/t1") == "/t10/x: destroying /t10/x")
        #expect(Dispatcher.callerNames("/a: killing 1 process", root: nil) == "/a: killing 1 process")
    }
}

/// Runs `command` (a shell line) under script(1): on a pseudo-terminal;
/// returns what it wrote there (stdout and stderr, as the terminal got them).
func onTerminal(_ command: String) throws -> (status: Int32, screen: String) {
    let dir = try scratchDirectory("pty")
    defer { _ = removeTree(dir) }
    let r = try TestProcess.capture(["/usr/bin/script", "-q", "-e", "-c", command, dir + "/typescript"])
    let screen = (try? Sys.readFile(dir + "/typescript")) ?? ""
    return (r.status, screen)
}

/// A container holding `count` sleeping processes (and a subcontainer).
func containerWithProcesses(_ count: Int, label: String) throws -> String {
    let lmctfy = builtTool("lmctfy")
    let name = RealCgroups.uniqueName(label)
    for (n, spec) in [(name, "pids:{limit:5000}"), (name + "/sub", "")] {
        let r = try TestProcess.capture([lmctfy, "create", n, spec])
        guard r.status == 0 else { throw LmctfyError(.internal, "create \(n): \(String(decoding: r.stderr, as: UTF8.self))") }
    }
    let run = try TestProcess.capture([lmctfy, "run", "-n", name, "/bin/sh", "-c", "for i in $(seq \(count)); do sleep 1000 & done; wait"])
    guard run.status == 0 else { throw LmctfyError(.internal, "run: \(String(decoding: run.stderr, as: UTF8.self))") }
    for _ in 0..<500 {
        let pids = try TestProcess.capture([lmctfy, "-v", "list", "pids", name])
        if String(decoding: pids.stdout, as: UTF8.self).split(separator: "\n").count > count { break }
        usleep(10_000)
    }
    return name
}

@Suite(.enabled(if: RealCgroups.available, "\(RealCgroups.unavailableReason ?? "")"),
       .enabled(if: access("/usr/bin/script", X_OK) == 0, "SKIPPED LOUDLY: script(1) (util-linux) is not installed"),
       .serialized)
struct ProgressTerminalTests {
    /// lmctfy destroy -f on a terminal draws its progress on one line of
    /// stderr and erases it; off a terminal it prints nothing.
    @Test func lmctfyDestroyShowsProgressOnATerminalOnly() throws {
        let lmctfy = builtTool("lmctfy")
        let name = try containerWithProcesses(300, label: "pg")
        defer { _ = try? TestProcess.capture([lmctfy, "destroy", "-f", name]) }
        let tty = try onTerminal("LMCTFY_TEST_PROGRESS_DELAY_MS=0 \(lmctfy) destroy -f \(name)")
        #expect(tty.status == 0, "\(tty.screen)")
        // (Cut to the terminal's width: script's pty has 80 columns.)
        #expect(tty.screen.contains("\r\(name): destroying \(name)/sub"), "\(tty.screen)")
        #expect(tty.screen.contains("\r\(name): killing 301 processes\u{1b}[K"), "\(tty.screen)")
        #expect(tty.screen.contains("\r\u{1b}[K"), "the line is erased at the end")
        let listed = try TestProcess.capture([lmctfy, "-v", "list", "containers", "/"])
        #expect(!String(decoding: listed.stdout, as: UTF8.self).contains(name))

        // Not a terminal: nothing on stderr.
        let again = try containerWithProcesses(50, label: "progress2")
        defer { _ = try? TestProcess.capture([lmctfy, "destroy", "-f", again]) }
        let plain = try TestProcess.capture(["/usr/bin/env", "LMCTFY_TEST_PROGRESS_DELAY_MS=0", lmctfy, "destroy", "-f", again])
        #expect(plain.status == 0)
        #expect(plain.stderr.isEmpty && plain.stdout.isEmpty, "\(String(decoding: plain.stderr, as: UTF8.self))")
    }

    @Test func lmctfyKillallShowsProgressOnATerminal() throws {
        let lmctfy = builtTool("lmctfy")
        let name = try containerWithProcesses(200, label: "progkill")
        defer { _ = try? TestProcess.capture([lmctfy, "destroy", "-f", name]) }
        let tty = try onTerminal("LMCTFY_TEST_PROGRESS_DELAY_MS=0 \(lmctfy) killall \(name)")
        #expect(tty.status == 0, "\(tty.screen)")
        #expect(tty.screen.contains("\r\(name): killing 201 processes\u{1b}[K"), "\(tty.screen)")
        let pids = try TestProcess.capture([lmctfy, "-v", "list", "pids", name])
        #expect(pids.stdout.isEmpty)
    }

    /// Over RPC: with want_progress the agent streams progress responses
    /// (names relative to its root_container) before the final one;
    /// without, one response; lmctl on a terminal draws what it streams.
    @Test func agentStreamsDestroyProgressAndLmctlDrawsIt() throws {
        let lmctfy = builtTool("lmctfy")
        let root = RealCgroups.uniqueName("progroot")
        let made = try TestProcess.capture([lmctfy, "create", root, "pids:{limit:10000}"])
        #expect(made.status == 0)
        defer { _ = try? TestProcess.capture([lmctfy, "destroy", "-f", root]) }
        let agent = try AgentProcess(config: "root_container: \"\(root)\"", environment: ["LMCTFY_TEST_PROGRESS_DELAY_MS=0"])
        defer { agent.stop() }
        let lmctl = [builtTool("lmctl"), "--agent", "unix://\(agent.socket)"]
        func fill(_ name: String, _ count: Int) throws {
            for (n, spec) in [(name, "pids:{limit:3000}"), (name + "/sub", "")] {
                let r = try TestProcess.capture(lmctl + ["create", n, spec])
                #expect(r.status == 0, "\(String(decoding: r.stderr, as: UTF8.self))")
            }
            _ = try TestProcess.capture(lmctl + ["run", "-n", name, "/bin/sh", "-c", "for i in $(seq \(count)); do sleep 1000 & done; wait"])
            // All of them started (the counts below are exact): waited for
            // by a deadline, not a number of tries, since a loaded machine
            // (the suite's other tests) can take seconds to fork them.
            let deadline = MonotonicClock.milliseconds() + 60_000
            var seen = 0
            while MonotonicClock.milliseconds() < deadline {
                let pids = try TestProcess.capture(lmctl + ["-v", "list", "pids", name])
                seen = String(decoding: pids.stdout, as: UTF8.self).split(separator: "\n").count
                if seen > count { break }
                usleep(20_000)
            }
            try #require(seen > count, "\(name): only \(seen) of \(count + 1) processes started within 60 s")
        }

        try fill("/a", 200)
        let client = try RpcClient.connect(unixPath: agent.socket, name: "progress-test")
        defer { client.close() }
        var responses: [DestroyResponse] = []
        try client.stream(AgentMethods.destroy, DestroyRequest(name: "/a", force: true, requestId: "progress-a", wantProgress: true)) {
            (r: DestroyResponse) throws(LmctfyError) -> Bool in
            responses.append(r)
            return true
        }
        let messages = responses.compactMap(\.progress)
        #expect(messages.contains("/a: destroying /a/sub (1 of 2 containers)"), "\(messages)")
        #expect(messages.contains("/a: killing 201 processes"), "\(messages)")
        #expect(responses.last?.progress == nil, "the final response carries no progress")

        // Without want_progress: one response, as before.
        try fill("/b", 20)
        var plain = 0
        try client.stream(AgentMethods.destroy, DestroyRequest(name: "/b", force: true, requestId: "progress-b")) {
            (r: DestroyResponse) throws(LmctfyError) -> Bool in
            plain += 1
            #expect(r.progress == nil)
            return true
        }
        #expect(plain == 1)

        // lmctl on a terminal.
        try fill("/c", 100)
        let tty = try onTerminal("LMCTFY_TEST_PROGRESS_DELAY_MS=0 \(lmctl.joined(separator: " ")) destroy -f /c")
        #expect(tty.status == 0, "\(tty.screen)")
        #expect(tty.screen.contains("\r/c: killing 101 processes\u{1b}[K"), "\(tty.screen)")
        #expect(tty.screen.contains("\r\u{1b}[K"))
    }

    /// Image import and export (lmctfy's own store, and lmctl through an
    /// agent) show how far they are on a terminal, and nothing elsewhere.
    @Test func imageImportAndExportShowProgressOnATerminal() throws {
        let dir = try scratchDirectory("imgprogress")
        defer { _ = removeTree(dir) }
        // A tree of a few MiB, so that the upload takes several calls.
        try Sys.mkdir(dir + "/tree", mode: 0o755)
        for i in 0..<5 {
            try Sys.writeFileAtomically(dir + "/tree/f\(i)", (0..<(700 << 10)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ i) }, mode: 0o644)
        }
        let tar = try TestProcess.capture(["/bin/tar", "-C", dir + "/tree", "-cf", dir + "/tree.tar", "."])
        #expect(tar.status == 0)
        let lmctfy = builtTool("lmctfy")
        let env = "LMCTFY_TEST_PROGRESS_DELAY_MS=0 LMCTFY_IMAGE_ROOT=\(dir)/store"
        let tty = try onTerminal("\(env) \(lmctfy) image import \(dir)/tree.tar local")
        #expect(tty.status == 0, "\(tty.screen)")
        #expect(tty.screen.contains("\rimporting local: "), "\(tty.screen)")
        #expect(tty.screen.contains(" entries, 3.4 MiB unpacked\u{1b}[K"), "\(tty.screen)")
        #expect(tty.screen.contains("\r\u{1b}[K"), "the line is erased at the end")
        // Not a terminal: nothing on stderr.
        let plain = try TestProcess.capture(["/usr/bin/env", "LMCTFY_TEST_PROGRESS_DELAY_MS=0", "LMCTFY_IMAGE_ROOT=\(dir)/store",
                                             lmctfy, "image", "import", dir + "/tree.tar", "quiet"])
        #expect(plain.status == 0 && plain.stderr.isEmpty, "\(String(decoding: plain.stderr, as: UTF8.self))")

        let agent = try AgentProcess(config: "image_root: \"\(dir)/agent-images\"", environment: ["LMCTFY_TEST_PROGRESS_DELAY_MS=0"])
        defer { agent.stop() }
        let lmctl = "\(builtTool("lmctl")) --agent unix://\(agent.socket)"
        let up = try onTerminal("LMCTFY_TEST_PROGRESS_DELAY_MS=0 \(lmctl) image import \(dir)/tree.tar remote")
        #expect(up.status == 0, "\(up.screen)")
        #expect(up.screen.contains("\rimporting remote: sent 1.0 MiB\u{1b}[K"), "\(up.screen)")
        #expect(up.screen.contains("unpacking on the agent\u{1b}[K"), "\(up.screen)")
        let down = try onTerminal("LMCTFY_TEST_PROGRESS_DELAY_MS=0 \(lmctl) image export remote \(dir)/back.tar")
        #expect(down.status == 0, "\(down.screen)")
        #expect(down.screen.contains("\rexporting remote: received "), "\(down.screen)")
        #expect(Sys.exists(dir + "/back.tar"))
    }
}
