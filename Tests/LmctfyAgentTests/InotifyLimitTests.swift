// The agent at the inotify watch limit, for real: the limit is per user
// namespace (/proc/sys/user/max_inotify_watches, kernel 5.11 on), so the
// agent binary runs as root in a user namespace of its own (unshare(1),
// root mapped to root: it still owns the cgroup files) whose limit is 8
// watches, and nothing outside it is touched. Containers past the limit
// are said in the log, the reconcile still reports their changes, and
// their OOM kills are events (v1: their OOM eventfds; v2: their
// memory.events, read on a timer). It runs in the v2 guest too (busybox's
// unshare takes the same options).
import Glibc
import Lmctfy
import LmctfyProto
import LmctfyRPC
import LmctfySystem
import LmctfyTestSupport
import Testing

/// Whether this machine lets root make a user namespace and set its
/// inotify watch limit there.
private let userNamespaceLimits: Bool = {
    guard Sys.exists("/usr/bin/unshare") else { return false }
    let r = try? TestProcess.capture(["/usr/bin/unshare", "--user", "--map-root-user", "/bin/sh", "-c",
                                      "echo 12 > /proc/sys/user/max_inotify_watches && cat /proc/sys/user/max_inotify_watches"])
    return r?.status == 0 && String(decoding: r?.stdout ?? [], as: UTF8.self).hasPrefix("12")
}()

/// How many eventfds process `pid` holds.
private func eventfds(_ pid: pid_t) -> Int {
    let fds = (try? Sys.directoryEntries("/proc/\(pid)/fd")) ?? []
    return fds.filter { (try? Sys.readLink("/proc/\(pid)/fd/\($0)")) == "anon_inode:[eventfd]" }.count
}

@Suite(.enabled(if: RealCgroups.available && userNamespaceLimits,
                "\(RealCgroups.unavailableReason ?? "no user namespace with its own inotify limit here (unshare(1), kernel 5.11)")"), .serialized)
struct InotifyLimitTests {
    @Test func containersPastTheWatchLimitAreSaidAndTheReconcileStillReportsThem() throws {
        let dir = "/tmp/lmctfy-inotify-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try Sys.mkdir(dir, mode: 0o700)
        defer { _ = removeTree(dir) }
        let root = RealCgroups.uniqueName("inotifylimit")
        let lmctfy = builtTool("lmctfy")
        _ = try TestProcess.capture([lmctfy, "create", root, "memory:{limit:400000000}"])
        defer { _ = try? TestProcess.capture([lmctfy, "destroy", "-f", root]) }
        try Sys.createFile(dir + "/agent.conf", """
            unix_socket_path: "\(dir)/agent.sock" log_level: LOG_WARNING reconcile_interval_ms: 200
            state_dir: "\(dir)/state" root_container: "\(root)" stats_interval_ms: 0
            """)
        try Sys.mkdir(dir + "/state", mode: 0o700)
        let pid = try TestProcess.spawn(["/usr/bin/unshare", "--user", "--map-root-user", "/bin/sh", "-c",
            "echo 8 > /proc/sys/user/max_inotify_watches && exec '\(builtTool("lmctfy-agent"))' --config '\(dir)/agent.conf' 2>'\(dir)/agent.log'"])
        defer { TestProcess.end(pid) }
        // (The v2 guest's emulated CPU starts it in seconds.)
        for _ in 0..<3000 where !Sys.exists(dir + "/agent.sock") { usleep(10_000) }
        try #require(Sys.exists(dir + "/agent.sock"), "the agent did not start: \((try? Sys.readFile(dir + "/agent.log")) ?? "")")
        // Listening, not only bound (a connect in between is refused).
        var connected: RpcClient?
        for _ in 0..<3000 where connected == nil {
            connected = try? RpcClient.connect(unixPath: dir + "/agent.sock")
            if connected == nil { usleep(10_000) }
        }
        let client = try #require(connected, "the agent did not listen")
        defer { client.close() }
        // More containers than 8 watches cover (each takes one a hierarchy).
        for i in 0..<10 { _ = try TestProcess.capture([lmctfy, "create", "\(root)/c\(i)", "memory:{limit:10000000}"]) }
        var log = ""
        var unwatched: String?
        for _ in 0..<3000 where unwatched == nil {
            usleep(10_000)
            log = (try? Sys.readFile(dir + "/agent.log")) ?? ""
            // The log names containers as the host does (the agent's
            // clients see them under its root_container).
            unwatched = (0..<10).map { "/c\($0)" }.last { log.contains("container \(root)\($0) is not watched") }
        }
        let name = try #require(unwatched, "no container said to be unwatched: \(log)")
        #expect(log.contains("No space left on device (the host's fs.inotify.max_user_watches); the reconcile still finds its changes"), "\(log)")
        // Paused behind the agent's back: the reconcile finds it.
        _ = try TestProcess.capture([lmctfy, "pause", root + name])
        var frozen: ContainerEvent?
        try client.stream(AgentMethods.subscribe, SubscribeRequest(name: name, kinds: [.containerEventFreezer], afterSequence: 0),
                          deadlineMs: 30_000) { (r: SubscribeResponse) in
            if let e = r.event, e.frozen == true { frozen = e }
            return frozen == nil
        }
        #expect(frozen?.container == name, "the pause of an unwatched container is an event")
        _ = try TestProcess.capture([lmctfy, "resume", root + name])
        // Its OOM kills are events all the same. v1: its eventfds need no
        // inotify watch (they were registered with the full watch only,
        // after the inotify one, so its OOMs were never events). v2: its
        // memory.events is read on a timer (inotify on that file was the
        // only way, so its OOMs were counted by nothing but the kernel).
        let v1 = (try? CgroupMounts.detect())?.version == .v1
        #expect(log.contains("container \(root)\(name) is not watched") && log.contains("and its OOM kills are watched"), "\(log)")
        let c = try ContainerApi.detect().get(try ContainerName.resolve(root + name, relativeTo: .root))
        let hog = try c.run([testHelperPath, "alloc", "200"])
        for _ in 0..<30_000 where kill(hog, 0) == 0 { usleep(1000) }  // killed by the OOM killer
        var oom: ContainerEvent?
        try client.stream(AgentMethods.subscribe, SubscribeRequest(name: name, kinds: [.containerEventOom], afterSequence: 0),
                          deadlineMs: 30_000) { (r: SubscribeResponse) in
            oom = r.event ?? oom
            return oom == nil
        }
        #expect(oom?.container == name, "the OOM kill in an unwatched container is an event")
        // Destroyed through the agent: (v1) its eventfds are closed.
        let before = eventfds(pid)
        _ = try client.call(AgentMethods.destroy, DestroyRequest(name: name, force: true))
        if v1 {
            var after = before
            for _ in 0..<300 where after >= before {
                usleep(10_000)
                after = eventfds(pid)
            }
            #expect(after < before, "the agent's eventfds: \(before) before the destroy, \(after) after")
        }
        // And the agent still serves.
        #expect(try client.call(AgentMethods.listContainers, ListContainersRequest(name: "/", recursive: true)).names.count == 9)
    }
}
