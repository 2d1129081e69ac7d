// Moving containers between two agents on this machine (issue #13): each
// agent has its own socket, state directory and root container, as two
// machines would; the built `lmctl` drives export, import and migration,
// directly and through a controller. Real cgroups, real processes.
import Glibc
import Lmctfy
import LmctfyAgent
import LmctfyProto
import LmctfyRPC
import LmctfySystem
import LmctfyTestSupport
import Testing

/// Two rooted agents (alpha, beta) behind a controller, and lmctl for each.
private final class TwoAgents {
    let fleet: Fleet
    let api: ContainerApi
    let roots: [ContainerName]

    init(_ tag: String) throws {
        api = try ContainerApi.detect()
        roots = try ["\(tag)a", "\(tag)b"].map { try ContainerName.resolve(RealCgroups.uniqueName($0), relativeTo: .root) }
        // Roots that isolate what the containers in them limit.
        let spec = try ContainerSpec(textFormat: "cpu { limit: 1000 } memory { limit: 1000000000 }")
        for r in roots { try api.create(r, spec: spec) }
        fleet = try Fleet()
        try fleet.startController()
        try fleet.startAgent("a", host: "alpha", keyId: "host-a", root: roots[0])
        try fleet.startAgent("b", host: "beta", keyId: "host-b", root: roots[1])
        fleet.waitForHosts(2)
    }

    /// Stops the agents, then removes both roots and everything in them.
    func close() {
        for name in ["a", "b"] { fleet.stopAgent(name) }
        for r in roots { _ = try? api.destroy(r) }
    }

    func socket(_ agent: String) -> String { "unix://\(fleet.dir)/agent-\(agent).sock" }

    /// `lmctl --agent <agent's socket> ARGS...`, with `env` set.
    func lmctl(_ agent: String, _ args: [String], env: [String] = []) throws -> ChildResult {
        let argv = [builtTool("lmctl"), "--agent", socket(agent)] + args
        return try TestProcess.capture(env.isEmpty ? argv : ["/usr/bin/env"] + env + argv)
    }

    func client(_ agent: String) throws -> RpcClient {
        try RpcClient.connect(unixPath: "\(fleet.dir)/agent-\(agent).sock")
    }

    /// The kernel's view of `name` under agent `agent`'s root: nil if absent.
    func kernel(_ agent: String, _ name: String) throws -> (spec: ContainerSpec, frozen: Bool, pids: [Int32])? {
        let root = roots[agent == "a" ? 0 : 1]
        let full = try ContainerName.resolve(root.path + name, relativeTo: .root)
        guard try api.exists(full) else { return nil }
        let c = try api.get(full)
        return (try c.spec(), try c.isFrozen(), try c.processes(recursive: true))
    }
}

/// Whether `pid` is a live process (not gone, not a zombie).
private func alive(_ pid: Int32) -> Bool {
    guard let stat = try? Sys.readFile("/proc/\(pid)/stat"), let close = stat.lastIndex(of: ")") else { return false }
    let state = stat[stat.index(after: close)...].split(separator: " ").first
    return state != "Z" && state != "X"
}

/// A container with limits and a detached `sleep` on agent a; returns its pid.
private func makeWorkload(_ t: TwoAgents, _ name: String) throws -> Int32 {
    let create = try t.lmctl("a", ["create", name, "cpu:{limit:500} memory:{limit:100000000}"])
    #expect(create.status == 0, "\(create.err)")
    let run = try t.lmctl("a", ["run", "-n", name, "sleep 600"])
    #expect(run.status == 0, "\(run.err)")
    return try #require(Int32(run.out.filter(\.isNumber)), "run printed \(run.out)")
}

@Suite(.enabled(if: RealCgroups.available, "\(RealCgroups.unavailableReason ?? "")"), .serialized)
struct MigrationTests {
    @Test func aSnapshotExportedFromOneAgentIsImportedOnAnother() throws {
        let t = try TwoAgents("snapx")
        defer { t.close() }
        _ = try makeWorkload(t, "/web")
        #expect(try t.lmctl("a", ["pause", "/web"]).status == 0)
        let file = t.fleet.dir + "/web.snap"
        let export = try t.lmctl("a", ["snapshot", "export", "/web", "-o", file])
        #expect(export.status == 0, "\(export.err)")
        let imported = try t.lmctl("b", ["snapshot", "import", file, "--name", "/copy", "--start"])
        #expect(imported.status == 0, "\(imported.err)")
        #expect(imported.lines.first == "/copy")
        let source = try #require(try t.kernel("a", "/web"))
        let copy = try #require(try t.kernel("b", "/copy"), "imported under beta's root")
        #expect(copy.spec.cpu?.limit == source.spec.cpu?.limit && copy.spec.memory?.limit == source.spec.memory?.limit)
        #expect(copy.frozen, "the same (paused) freezer state")
        #expect(!copy.pids.isEmpty, "the recorded process started again")
        #expect(try t.kernel("a", "/copy") == nil && t.kernel("b", "/web") == nil)

        // The text form too, without --start: no process.
        let text = try t.lmctl("a", ["snapshot", "export", "/web", "--text"])
        #expect(text.status == 0 && text.out.contains("format_version: 1"), "\(text.err)")
        try Sys.createFile(t.fleet.dir + "/web.txt", text.out)
        #expect(try t.lmctl("b", ["snapshot", "import", t.fleet.dir + "/web.txt", "--name", "/cold"]).status == 0)
        #expect(try t.kernel("b", "/cold")?.pids.isEmpty == true)
    }

    /// A one-shot (run --create --rm -n) moved by export and import: the
    /// command started again on the target still removes its container
    /// when it ends, as on the source.
    @Test func aOneShotsCopyGoesWhenItsCommandEnds() throws {
        let t = try TwoAgents("snapone")
        defer { t.close() }
        let run = try t.lmctl("a", ["run", "--create", "memory:{limit:100000000}", "--rm", "-n", "/job", "sleep", "2"])
        #expect(run.status == 0, "\(run.err)")
        let file = t.fleet.dir + "/job.snap"
        let export = try t.lmctl("a", ["snapshot", "export", "/job", "-o", file])
        #expect(export.status == 0, "\(export.err)")
        let imported = try t.lmctl("b", ["snapshot", "import", file, "--name", "/copy", "--start"])
        #expect(imported.status == 0, "\(imported.err)")
        #expect(try t.kernel("b", "/copy")?.pids.isEmpty == false, "its command started again")
        var gone = false
        for _ in 0..<1500 where !gone {
            gone = try t.kernel("b", "/copy") == nil && t.kernel("a", "/job") == nil
            if !gone { usleep(20_000) }
        }
        #expect(gone, "both containers went with their commands")
    }

    /// An import that does not fit changes nothing and says why.
    @Test func importsThatDoNotFitAreRefused() throws {
        let t = try TwoAgents("snapr")
        defer { t.close() }
        _ = try makeWorkload(t, "/web")
        let client = try t.client("a")
        defer { client.close() }
        let s = try #require(try client.call(AgentMethods.exportSnapshot, ExportSnapshotRequest(name: "/web")).snapshot)
        #expect(try t.lmctl("b", ["create", "/taken", "cpu:{limit:100}"]).status == 0)
        func attempt(_ snapshot: ContainerSnapshot, _ name: String, code: StatusCode, mentions: String) throws {
            let file = t.fleet.dir + "/bad.snap"
            try Sys.writeFileAtomically(file, try snapshot.serializedBytes())
            let before = try t.lmctl("b", ["list", "containers", "-r"]).out
            let r = try t.lmctl("b", ["snapshot", "import", file, "--name", name, "--start"])
            #expect(r.status == code.rawValue, "\(name): \(r.err)")
            #expect(r.err.contains(mentions), "\(name): \(r.err)")
            #expect(try t.lmctl("b", ["list", "containers", "-r"]).out == before, "nothing made or changed")
        }
        try attempt(s, "/taken", code: .alreadyExists, mentions: "existing")
        var cpus = s
        cpus.spec?.cpu?.mask = CpuSpec.Mask(data: [1 << 63])
        try attempt(cpus, "/cpus", code: .failedPrecondition, mentions: "CPU 63")
        // Resources the target's container does not isolate (its root here
        // isolates cpu and memory only): blkio, and cpu under a root without it.
        var blkio = s
        blkio.spec?.blockio = try ContainerSpec(textFormat: "blockio { }").blockio
        try attempt(blkio, "/blkio", code: .failedPrecondition, mentions: "does not isolate")
        #expect(try t.lmctl("b", ["create", "/nocpu", "memory:{limit:50000000}"]).status == 0)
        try attempt(s, "/nocpu/web", code: .failedPrecondition, mentions: "does not isolate cpu")
        var newer = s
        newer.formatVersion = 99
        try attempt(newer, "/newer", code: .failedPrecondition, mentions: "format 99")
        try Sys.createFile(t.fleet.dir + "/junk", "this is not a snapshot {")
        let junk = try t.lmctl("b", ["snapshot", "import", t.fleet.dir + "/junk"])
        #expect(junk.status == StatusCode.invalidArgument.rawValue, "\(junk.err)")
        #expect(try t.lmctl("b", ["snapshot", "import", t.fleet.dir + "/missing"]).status == StatusCode.notFound.rawValue)
        #expect(try t.lmctl("a", ["snapshot", "export", "/nope"]).status == StatusCode.notFound.rawValue)
    }

    @Test func migrateMovesAContainerAndItsProcessesBetweenAgents() throws {
        let t = try TwoAgents("migd")
        defer { t.close() }
        let pid = try makeWorkload(t, "/web")
        let r = try t.lmctl("a", ["migrate", "/web", "--to", t.socket("b")])
        #expect(r.status == 0, "\(r.err)")
        #expect(r.out.hasPrefix("migrated /web to "), "\(r.out)")
        #expect(try t.kernel("a", "/web") == nil, "gone from the source")
        let moved = try #require(try t.kernel("b", "/web"))
        #expect(!moved.frozen, "running, as it was")
        #expect(!moved.pids.isEmpty && !moved.pids.contains(pid), "its command started again there")
        #expect(!alive(pid), "the source's process went with its container")
        // A frozen container arrives frozen.
        _ = try makeWorkload(t, "/cold")
        #expect(try t.lmctl("a", ["pause", "/cold"]).status == 0)
        #expect(try t.lmctl("a", ["migrate", "/cold", "--to", t.socket("b")]).status == 0)
        #expect(try t.kernel("b", "/cold")?.frozen == true)
        #expect(try t.kernel("a", "/cold") == nil)
    }

    /// Whatever step fails, the source keeps running thawed with its
    /// process, and the target is left without the container.
    @Test(arguments: ["pause", "export", "import", "destroy"])
    func aFailedMigrationLeavesTheSourceRunningAndTheTargetClean(step: String) throws {
        let t = try TwoAgents("migf")
        defer { t.close() }
        let pid = try makeWorkload(t, "/web")
        let r = try t.lmctl("a", ["migrate", "/web", "--to", t.socket("b")], env: ["LMCTL_TEST_MIGRATE_FAIL_AFTER=\(step)"])
        #expect(r.status == StatusCode.unavailable.rawValue, "\(r.err)")
        #expect(r.err.contains("the source keeps running, the target is clean"), "\(r.err)")
        let source = try #require(try t.kernel("a", "/web"))
        #expect(!source.frozen && source.pids.contains(pid) && alive(pid))
        #expect(try t.kernel("b", "/web") == nil)
    }

    @Test func aMigrationTheTargetRefusesLeavesTheSourceRunning() throws {
        let t = try TwoAgents("migt")
        defer { t.close() }
        let pid = try makeWorkload(t, "/web")
        #expect(try t.lmctl("b", ["create", "/web", "cpu:{limit:100}"]).status == 0)
        let theirs = try #require(try t.kernel("b", "/web")).spec
        let r = try t.lmctl("a", ["migrate", "/web", "--to", t.socket("b")])
        #expect(r.status == StatusCode.alreadyExists.rawValue, "\(r.err)")
        let source = try #require(try t.kernel("a", "/web"))
        #expect(!source.frozen && source.pids.contains(pid))
        #expect(try t.kernel("b", "/web")?.spec == theirs, "the target's own container untouched")
        // Frozen by its user before: this migration froze nothing and made
        // nothing, and says so (not that "the source keeps running").
        #expect(try t.lmctl("a", ["pause", "/web"]).status == 0)
        let frozen = try t.lmctl("a", ["migrate", "/web", "--to", t.socket("b")])
        #expect(frozen.status == StatusCode.alreadyExists.rawValue && frozen.err.contains("this migration touched nothing"), "\(frozen.err)")
        #expect(try t.kernel("a", "/web")?.frozen == true)
        #expect(try t.lmctl("a", ["resume", "/web"]).status == 0)
        // An agent that is not there: nothing happens at all.
        let gone = try t.lmctl("a", ["migrate", "/web", "--to", "unix://\(t.fleet.dir)/nobody.sock"])
        #expect(gone.status == StatusCode.unavailable.rawValue, "\(gone.err)")
        #expect(try t.kernel("a", "/web")?.frozen == false)
    }

    /// What a migration would destroy without bringing it back is refused
    /// before anything is touched: subcontainers always, processes the agent
    /// did not start unless --force.
    @Test func aMigrationThatWouldLoseSomethingIsRefusedFirst() throws {
        let t = try TwoAgents("migl")
        defer { t.close() }
        let pid = try makeWorkload(t, "/web")
        #expect(try t.lmctl("a", ["create", "/web/sub", "cpu:{limit:100}"]).status == 0)
        let sub = try t.lmctl("a", ["migrate", "/web", "--to", t.socket("b")])
        #expect(sub.status == StatusCode.failedPrecondition.rawValue && sub.err.contains("subcontainers"), "\(sub.err)")
        #expect(try t.kernel("a", "/web")?.frozen == false && t.kernel("b", "/web") == nil)
        #expect(try t.lmctl("a", ["destroy", "/web/sub"]).status == 0)
        // A process moved in from outside (not started through the agent;
        // the agent itself enters only tasks inside its root).
        let stranger = try TestProcess.spawn(["/bin/sleep", "600"])
        defer { TestProcess.end(stranger) }
        try t.api.get(try ContainerName.resolve("web", relativeTo: t.roots[0])).enter([stranger])
        let refused = try t.lmctl("a", ["migrate", "/web", "--to", t.socket("b")])
        #expect(refused.status == StatusCode.failedPrecondition.rawValue, "\(refused.err)")
        #expect(refused.err.contains("pids \(stranger)") && !refused.err.contains("pids \(pid)"), "\(refused.err)")
        #expect(try alive(stranger) && alive(pid) && t.kernel("b", "/web") == nil)
        let forced = try t.lmctl("a", ["migrate", "/web", "--to", t.socket("b"), "--force"])
        #expect(forced.status == 0, "\(forced.err)")
        #expect(try t.kernel("b", "/web")?.pids.isEmpty == false)
    }

    @Test func migrateThroughTheController() throws {
        let t = try TwoAgents("migc")
        defer { t.close() }
        let pid = try makeWorkload(t, "/web")
        let r = try t.fleet.lmctl(["migrate", "/web", "--from", "alpha", "--to", "beta"])
        #expect(r.status == 0, "\(r.err)")
        #expect(r.out.hasPrefix("migrated /web to host beta"), "\(r.out)")
        #expect(try t.kernel("a", "/web") == nil)
        #expect(try t.kernel("b", "/web")?.pids.isEmpty == false)
        #expect(!alive(pid))
        let same = try t.fleet.lmctl(["migrate", "/web", "--from", "beta", "--to", "beta"])
        #expect(same.status == StatusCode.invalidArgument.rawValue)
        let unknown = try t.fleet.lmctl(["migrate", "/web", "--from", "beta", "--to", "gamma"])
        #expect(unknown.status == StatusCode.notFound.rawValue, "\(unknown.err)")
        #expect(try t.kernel("b", "/web")?.frozen == false, "thawed again after the failed attempt")
    }

    /// Checkpoint and Restore use CRIU only where its own check passes; on
    /// this project's machines (Debian 12's CRIU on a 6.x kernel) it does
    /// not, and they refuse with UNIMPLEMENTED saying why.
    @Test func checkpointSaysWhyItCannotUseCriu() throws {
        let t = try TwoAgents("criu")
        defer { t.close() }
        _ = try makeWorkload(t, "/web")
        let info = try t.lmctl("a", ["info"])
        #expect(info.status == 0 && info.out.contains("criu_usable="), "\(info.out)")
        guard info.out.contains("criu_usable=\"false\"") else {
            Issue.record("CRIU passes its check on this host: this test covers only the refusal; run the checkpoint by hand")
            return
        }
        let dir = t.fleet.dir + "/images"
        let c = try t.lmctl("a", ["checkpoint", "/web", dir])
        #expect(c.status == StatusCode.unimplemented.rawValue, "\(c.err)")
        #expect(c.err.contains("CRIU"), "\(c.err)")
        #expect(try t.kernel("a", "/web") != nil, "the container is untouched")
        let r = try t.lmctl("b", ["restore", dir])
        #expect(r.status == StatusCode.unimplemented.rawValue, "\(r.err)")
    }
}

extension MigrationTests {
    /// On a terminal (script(1) gives lmctl a pty) a migration shows each
    /// step on stderr's progress line, erased at the end (issue #16).
    @Test(.enabled(if: access("/usr/bin/script", X_OK) == 0, "SKIPPED LOUDLY: script(1) (util-linux) is not installed"))
    func migrateShowsItsStepsOnATerminal() throws {
        let t = try TwoAgents("migp")
        defer { t.close() }
        _ = try makeWorkload(t, "/web")
        let typescript = t.fleet.dir + "/typescript"
        let line = "LMCTFY_TEST_PROGRESS_DELAY_MS=0 \(builtTool("lmctl")) --agent \(t.socket("a")) migrate /web --to \(t.socket("b"))"
        let r = try TestProcess.capture(["/usr/bin/script", "-q", "-e", "-c", line, typescript])
        let screen = try Sys.readFile(typescript)
        #expect(r.status == 0, "\(screen)")
        for step in ["taking its snapshot", "freezing it", "importing it on", "destroying the source"] {
            #expect(screen.contains("\rmigrate /web: \(step)"), "no \"\(step)\" step in: \(screen)")
        }
        #expect(screen.contains("\r\u{1b}[K") && screen.contains("migrated /web to "), "\(screen)")
        #expect(try t.kernel("b", "/web") != nil)
    }
}
