// lmctfy-bench: CL1 on the real kernel, each figure next to a plain C
// baseline doing the same work in the same run. Run through tools/run-bench.
//
//   lmctfy-bench create-destroy N        µs per container (cpu+memory limits)
//   lmctfy-bench freeze N BASELINE       freeze+thaw of a one-task container
//   lmctfy-bench run N BASELINE          run /bin/true in an existing container
//   lmctfy-bench threshold N HELPER      threshold event: our Watch vs a raw eventfd
//   lmctfy-bench agent-create N SOCKET CLIENTS  creates through an agent (tools/bench-snapshots)
//   lmctfy-bench agent-populate N SOCKET PREFIX  N containers left behind (tools/bench-recovery)
//   lmctfy-bench agent-wait MS SOCKET           time until the agent answers (tools/bench-recovery)
//   lmctfy-bench policy-admit N                 admission decision cost at N containers (tools/bench-policy)
//   lmctfy-bench policy-evict ROUNDS SOCKET USAGE_FILE HIGH HELPER MB   pressure to first eviction (tools/bench-policy)
import Glibc
import Lmctfy
import LmctfyProto
import LmctfyRPC
import LmctfySystem

/// Microseconds on the monotonic clock.
func now() -> Double { MonotonicClock.microseconds() }

/// This process's own CPU time in µs (every thread; children such as
/// /bin/true not counted), as lifecycle.c's cpu_us.
func cpuNow() -> Double {
    var t = timespec()
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t)
    return Double(t.tv_sec) * 1e6 + Double(t.tv_nsec) / 1e3
}

/// This process's context switches so far (every thread; voluntary and
/// not): lifecycle.c prints the same as csw=.
func switchesNow() -> Double {
    var ru = rusage()
    getrusage(RUSAGE_SELF.rawValue, &ru)
    return Double(ru.ru_nvcsw + ru.ru_nivcsw)
}

func fail(_ message: String) -> Never {
    let line = "lmctfy-bench: \(message)\n"
    _ = line.withCString { write(2, $0, strlen($0)) }
    exit(1)
}

func fmt(_ v: Double) -> String {
    let tenths = Int((v * 10).rounded())
    return "\(tenths / 10).\(abs(tenths % 10))"
}

/// A lifecycle's phases, each its mean in µs over `n` rounds.
func phaseText(_ phases: [Double], _ n: Int) -> String {
    zip(["create", "run", "destroy"], phases).map { "\($0)=\(fmt($1 / Double(n)))" }.joined(separator: " ")
}

/// Runs a baseline program to completion and returns what it printed.
func runBaseline(_ argv: [String]) throws -> String {
    let (r, w) = try Sys.pipe()
    var o = SpawnOptions(argv: argv)
    o.stdout = .fd(w)
    let pid = try Spawn.spawn(o)
    close(w)
    var out = [UInt8]()
    var buf = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = buf.withUnsafeMutableBytes { read(r, $0.baseAddress, $0.count) }
        if n <= 0 { break }
        out += buf[0..<n]
    }
    close(r)
    _ = try Sys.waitForExit(pid)
    return String(decoding: out, as: UTF8.self).trimmingWhitespace
}

/// A scratch container for one benchmark, destroyed at the end.
func withContainer<T>(_ api: ContainerApi, _ spec: String, _ body: (Container) throws -> T) throws -> T {
    let name = try ContainerName.resolve("/lmctfy_bench_\(getpid())", relativeTo: .root)
    let c = try api.create(name, spec: try ContainerSpec(textFormat: spec))
    defer { _ = try? api.destroy(name) }
    return try body(c)
}

final class Stamp: @unchecked Sendable {
    var times: [Double] = []
}



/// One connection driving a Session by hand, keeping `depth` Pings in
/// flight (RpcClient does one call at a time). Returns completed calls.
func pipelinedPings(port: UInt16, keyId: String, key: [UInt8], depth: Int, seconds: Double, tls: TlsContext? = nil) -> Int {
    guard let fd = try? RpcSocket.connectTCP(host: "127.0.0.1", port: port) else { return 0 }
    defer { close(fd) }
    // Under TLS (tools/bench-tls): the same Session over a TlsChannel, the
    // certificate authenticating the hello.
    let channel = tls.flatMap { try? TlsChannel(context: $0, serverName: "127.0.0.1") }
    var session = Session(dialler: channel != nil ? .certificate : .sharedKey(keyId: keyId, key: key), name: "bench",
                          now: MonotonicClock.milliseconds())
    func send(_ out: [UInt8]) {
        var off = 0
        while off < out.count {
            let n = out[off...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if n <= 0 { return }
            off += n
        }
    }
    if let channel { send(channel.start()) }
    let ping = (try? PingRequest(data: Array(repeating: 7, count: 16)).serializedBytes()) ?? []
    let pingMethod = AgentMethods.ping.name
    var done = 0
    var established = false
    let end = now() + seconds * 1e6
    // Every frame the actions (and the calls they open) produce goes out in
    // one write per batch, as the agent does.
    func perform(_ actions: [SessionAction]) {
        var out: [UInt8] = []
        var queue = actions
        while !queue.isEmpty {
            var more: [SessionAction] = []
            for a in queue {
                switch a {
                case .write(let bytes): out += bytes
                case .established:
                    established = true
                    for _ in 0..<depth {
                        more += session.openStream(method: pingMethod, payload: ping, now: MonotonicClock.milliseconds()).actions
                    }
                case .deliverStatus(_, let status):
                    if status.code == .ok { done += 1 }
                    if now() < end {
                        more += session.openStream(method: pingMethod, payload: ping, now: MonotonicClock.milliseconds()).actions
                    }
                default: break
                }
            }
            queue = more
        }
        send(channel.map { $0.seal(out) } ?? out)
    }
    perform(session.start(now: MonotonicClock.milliseconds()))
    var buf = [UInt8](repeating: 0, count: 65536)
    while now() < end || (established && session.openStreamCount > 0 && now() < end + 1e6) {
        let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n <= 0 { break }
        if let channel {
            let o = channel.feed(Array(buf[0..<n]))
            send(o.send)
            if channel.failure != nil { break }
            if !o.plaintext.isEmpty { perform(session.receive(o.plaintext, now: MonotonicClock.milliseconds())) }
        } else {
            perform(session.receive(buf[0..<n], now: MonotonicClock.milliseconds()))
        }
    }
    return done
}

let args = CommandLine.arguments

// stats-sweep --containers N --sweeps S --prefix P: the agent's sampler
// (CL1's StatsSampler, files kept open) over containers P_0 .. P_{N-1},
// which the caller made; the same work as tools/bench-baseline/stats_sweep.c.
if args.count >= 2 && args[1] == "stats-sweep" {
    var opts: [String: String] = [:]
    var i = 2
    while i < args.count {
        if args[i] == "--help" { print("usage: lmctfy-bench stats-sweep --containers N --sweeps S --prefix P"); exit(0) }
        guard i + 1 < args.count else { fail("stats-sweep: \(args[i]) needs a value") }
        opts[args[i]] = args[i + 1]
        i += 2
    }
    guard let n = opts["--containers"].flatMap({ Int($0) }), let sweeps = opts["--sweeps"].flatMap({ Int($0) }),
          let prefix = opts["--prefix"], n > 0, sweeps > 0 else {
        fail("usage: lmctfy-bench stats-sweep --containers N --sweeps S --prefix P")
    }
    do {
        let api = try ContainerApi.detect()
        let names = try (0..<n).map { try ContainerName.resolve("\(prefix)_\($0)", relativeTo: .root) }
        let sampler = StatsSampler(api: api)
        var perContainer: [Double] = []
        var sampled = 0
        for round in 0...sweeps {
            let t0 = now()
            sampled = 0
            for name in names where sampler.sample(name) != nil { sampled += 1 }
            // Round 0 opens the files; the sweeps after it are what is timed.
            if round > 0 { perContainer.append((now() - t0) / Double(n)) }
        }
        guard sampled == n else { fail("stats-sweep: sampled \(sampled) of \(n) containers") }
        perContainer.sort()
        print("RESULT containers=\(n) sweeps=\(sweeps) us_per_container_p50=\(fmt(perContainer[perContainer.count / 2])) us_per_container_min=\(fmt(perContainer[0]))")
    } catch {
        fail("\(error)")
    }
    exit(0)
}

// CL2 (tools/bench-policy): no cgroup of its own, so before the CL1 setup.
if args.count == 3 && args[1] == "policy-admit", let n = Int(args[2]), n > 0 {
    policyAdmit(n)
    exit(0)
}
if args.count == 8 && args[1] == "policy-evict", let rounds = Int(args[2]), let high = Int64(args[5]), let mb = Int(args[7]) {
    do { try policyEvict(rounds: rounds, socket: args[3], usageFile: args[4], high: high, helper: args[6], mb: mb) } catch { fail("\(error)") }
    exit(0)
}

guard args.count >= 3, let n = Int(args[2]), n > 0 else {
    fail("usage: lmctfy-bench create-destroy N | freeze N BASELINE | run N BASELINE | threshold N HELPER")
}

do {
    let api = try ContainerApi.detect()
    switch args[1] {
    case "create-destroy":
        let spec = try ContainerSpec(textFormat: "cpu { limit: 500 max_limit: 1000 } memory { limit: 104857600 }")
        let names = try (0..<n).map { try ContainerName.resolve("/lmctfy_bench_\(getpid())_\($0)", relativeTo: .root) }
        let t0 = now()
        for name in names { try api.create(name, spec: spec) }
        let t1 = now()
        for name in names { try api.destroy(name) }
        let t2 = now()
        print("swift create_us=\(fmt((t1 - t0) / Double(n))) destroy_us=\(fmt((t2 - t1) / Double(n))) total_us=\(fmt((t2 - t0) / Double(n)))")

    case "freeze" where args.count == 4:
        try withContainer(api, "") { c in
            _ = try c.run(["/bin/sleep", "300"])
            let freezer = try api.resourceDirs(c.name).allDirs[0].path
            let base = try runBaseline([args[3], "freeze", String(n), freezer])
            let t0 = now()
            for _ in 0..<n {
                try c.setFrozen(true)
                try c.setFrozen(false)
            }
            print(base)
            print("swift freeze_thaw_us=\(fmt((now() - t0) / Double(n)))")
        }

    case "run" where args.count == 4:
        try withContainer(api, "cpu { limit: 500 } memory { limit: 104857600 }") { c in
            let files = try c.joinFiles()
            let base = try runBaseline([args[3], "run", String(n)] + files)
            var options = RunOptions(fdPolicy: .inherit)
            options.stdout = .devNull
            let t0 = now()
            for _ in 0..<n {
                let pid = try c.run(["/bin/true"], options: options)
                _ = try Sys.waitForExit(pid)
            }
            print(base)
            print("swift run_true_us=\(fmt((now() - t0) / Double(n)))")
        }

    case "threshold" where args.count == 4:
        // Two listeners on the same crossing: a raw eventfd registered here
        // (the baseline) and a Watch; the difference of their wake-up times
        // is what lmctfy adds on top of the kernel's notification.
        try withContainer(api, "memory { limit: 536870912 }") { c in
            let memDir = try api.resourceDirs(c.name).dir(.memory)!
            let usage = try memDir.readInt("memory.usage_in_bytes") ?? 0
            let threshold = usage + (8 << 20)
            let efd = try EventFds.eventfd()
            let target = open(memDir.file("memory.usage_in_bytes"), O_RDONLY | O_CLOEXEC)
            try memDir.write("cgroup.event_control", "\(efd) \(target) \(threshold)")
            close(target)
            let watch = try c.watch(EventSpec(memoryThreshold: .init(usage: threshold)))
            let events = 2 * n  // each oscillation crosses up and down
            let raw = Stamp(), ours = Stamp()
            let rawThread = Threads.start {
                var seen = 0
                while seen < events, (try? EventFds.waitReadable(efd, timeoutMs: 10_000)) == true {
                    let t = now()
                    seen += Int((try? EventFds.readCounter(efd)) ?? 0)
                    raw.times.append(t)
                }
            }
            let oursThread = Threads.start {
                var seen = 0
                while seen < events, let k = try? watch.wait(timeoutMs: 10_000), k > 0 {
                    ours.times.append(now())
                    seen += k
                }
            }
            _ = try c.run([args[3], "oscillate", "16", "20", String(n)], options: RunOptions(fdPolicy: .detached))
            pthread_join(rawThread, nil)
            pthread_join(oursThread, nil)
            let k = min(raw.times.count, ours.times.count)
            guard k > 0 else { fail("no threshold events arrived") }
            let deltas = (0..<k).map { ours.times[$0] - raw.times[$0] }.sorted()
            let mean = deltas.reduce(0, +) / Double(k)
            print("threshold events=\(k) extra_latency_us mean=\(fmt(mean)) p50=\(fmt(deltas[k / 2])) p90=\(fmt(deltas[k * 9 / 10])) (target <= 500 over the raw eventfd)")
            close(efd)
        }

    case "rpc" where args.count == 7:
        // rpc PORT KEYFILE C D SECONDS: C connections to the agent, D Pings
        // in flight on each, for SECONDS; prints round trips per second.
        guard let port = UInt16(args[2]), let c = Int(args[4]), let d = Int(args[5]), let secs = Double(args[6]) else {
            fail("usage: lmctfy-bench rpc PORT KEYFILE C D SECONDS")
        }
        let (keyId, key) = try KeyFile.load(args[3], requirePrivate: false).sorted { $0.key < $1.key }[0]
        let total = Mutexed(0)
        let threads = (0..<c).map { _ in
            Threads.start { let k = pipelinedPings(port: port, keyId: keyId, key: key, depth: d, seconds: secs); total.locked { $0 += k } }
        }
        for t in threads { pthread_join(t, nil) }
        print("swift rps=\(Int(Double(total.locked { $0 }) / secs))")

    case "rpc-tls" where args.count == 7:
        // rpc-tls PORT PKIDIR C D SECONDS: as rpc, under TLS 1.3 with
        // PKIDIR's admin certificate (tools/make-test-pki).
        guard let port = UInt16(args[2]), let c = Int(args[4]), let d = Int(args[5]), let secs = Double(args[6]) else {
            fail("usage: lmctfy-bench rpc-tls PORT PKIDIR C D SECONDS")
        }
        let pki = args[3]
        let context = try TlsContext(side: .client, certificateFile: pki + "/admin.pem", keyFile: pki + "/admin.key", caFile: pki + "/ca.pem")
        let total = Mutexed(0)
        let threads = (0..<c).map { _ in
            Threads.start {
                let k = pipelinedPings(port: port, keyId: "", key: [], depth: d, seconds: secs, tls: context)
                total.locked { $0 += k }
            }
        }
        for t in threads { pthread_join(t, nil) }
        print("swift-tls rps=\(Int(Double(total.locked { $0 }) / secs))")

    case "tls-handshake" where args.count == 5:
        // tls-handshake PORT PKIDIR N: N connections, each a full TLS 1.3
        // handshake with client certificates plus the hello (RpcClient),
        // one at a time; prints the mean in ms.
        guard let port = UInt16(args[2]), let n = Int(args[4]), n > 0 else { fail("usage: lmctfy-bench tls-handshake PORT PKIDIR N") }
        let pki = args[3]
        let context = try TlsContext(side: .client, certificateFile: pki + "/admin.pem", keyFile: pki + "/admin.key", caFile: pki + "/ca.pem")
        let t0 = now()
        for _ in 0..<n {
            let client = try RpcClient.connect(host: "127.0.0.1", port: port, tls: context, name: "bench")
            client.close()
        }
        print("tls handshake+hello ms=\(fmt((now() - t0) / Double(n) / 1000)) (n=\(n))")

    case "codec":
        // codec N: µs per Frame encode+decode of a Ping response, the unit
        // of work the RPC path repeats for every call.
        let ping = try PingResponse(data: Array(repeating: 7, count: 16)).serializedBytes()
        let frame = Frame(kind: .frameResponse, streamId: 41, payload: ping)
        let t0 = now()
        for _ in 0..<n {
            let bytes = FrameCodec.encode(frame)
            _ = try FrameCodec.decodeBody(bytes[4...])
        }
        let t1 = now()
        for _ in 0..<n {
            _ = try PingResponse(serializedBytes: try PingRequest(data: [1, 2, 3]).serializedBytes())
        }
        let t2 = now()
        print("frame encode+decode us=\(fmt((t1 - t0) / Double(n))) small message round trip us=\(fmt((t2 - t1) / Double(n)))")

    case "agent-lifecycle" where args.count == 4:
        // agent-lifecycle N SOCKET: create (cpu+memory) -> run /bin/true and
        // wait for its exit -> destroy, through the agent, from this process.
        let client = try RpcClient.connect(unixPath: args[3], name: "bench")
        defer { client.close() }
        let spec = try ContainerSpec(textFormat: "cpu { limit: 500 max_limit: 1000 } memory { limit: 104857600 }")
        var phases = [0.0, 0.0, 0.0]
        let t0 = now()
        for i in 0..<n {
            let name = "/lmctfy_bench_agent_\(getpid())_\(i)"
            let a = now()
            _ = try client.call(AgentMethods.create, CreateRequest(name: name, spec: spec))
            let b = now()
            try client.stream(AgentMethods.run, RunRequest(name: name, argv: ["/bin/true"])) { _ in true }
            let c = now()
            _ = try client.call(AgentMethods.destroy, DestroyRequest(name: name, force: true))
            phases[0] += b - a; phases[1] += c - b; phases[2] += now() - c
        }
        let total = (now() - t0) / Double(n)
        print("agent lifecycle (create cpu+mem, run /bin/true, exit, destroy) \(phaseText(phases, n)) us=\(fmt(total))")

    case "agent-oneshot" where args.count == 4:
        // agent-oneshot N SOCKET: the same lifecycle as one Run call (create
        // cpu+memory, run /bin/true, wait, remove when done: `lmctl run
        // --create SPEC --rm`), from this process.
        let client = try RpcClient.connect(unixPath: args[3], name: "bench")
        defer { client.close() }
        let spec = try ContainerSpec(textFormat: "cpu { limit: 500 max_limit: 1000 } memory { limit: 104857600 }")
        let t0 = now()
        for i in 0..<n {
            let name = "/lmctfy_bench_agent_\(getpid())_\(i)"
            var exited = false
            try client.stream(AgentMethods.run, RunRequest(name: name, argv: ["/bin/true"], create: spec, removeWhenDone: true)) {
                (r: RunResponse) in
                exited = exited || r.exitCode == 0
                return true
            }
            guard exited else { fail("agent-oneshot: /bin/true did not exit 0 in \(name)") }
        }
        let total = (now() - t0) / Double(n)
        print("agent one-call lifecycle (Run with create cpu+mem and remove_when_done, /bin/true) us=\(fmt(total))")

    case "agent-create" where args.count == 5:
        // agent-create N SOCKET CLIENTS: N creates (cpu+memory), then N
        // destroys, through the agent, from CLIENTS threads at once; the
        // mean and median create (tools/bench-snapshots runs it against
        // agents with and without snapshots).
        let clients = max(1, Int(args[4]) ?? 1)
        // No max_limit: N containers alive at once, each committing 1000
        // milliCPU, are more than CL2's admission lets two CPUs take (the
        // agent would refuse the third, README "Policy").
        let spec = try ContainerSpec(textFormat: "cpu { limit: 500 } memory { limit: 104857600 }")
        let creates = Mutexed<[Double]>([])
        let destroys = Mutexed<[Double]>([])
        let errors = Mutexed<[String]>([])
        let done = Latch(clients)
        let t0 = now()
        for k in 0..<clients {
            let socket = args[3]
            Threads.detach {
                do {
                    let client = try RpcClient.connect(unixPath: socket, name: "bench")
                    defer { client.close() }
                    let names = stride(from: k, to: n, by: clients).map { "/lmctfy_bench_snap_\(getpid())_\($0)" }
                    for name in names {
                        let a = now()
                        _ = try client.call(AgentMethods.create, CreateRequest(name: name, spec: spec))
                        let t = now() - a
                        creates.locked { $0.append(t) }
                    }
                    for name in names {
                        let a = now()
                        _ = try client.call(AgentMethods.destroy, DestroyRequest(name: name, force: true))
                        let t = now() - a
                        destroys.locked { $0.append(t) }
                    }
                } catch {
                    errors.locked { $0.append("\(error)") }
                }
                done.signal()
            }
        }
        done.wait()
        let wall = now() - t0
        if let e = errors.locked({ $0.first }) { fail(e) }
        let c = creates.locked { $0 }.sorted(), d = destroys.locked { $0 }.sorted()
        print("agent create (cpu+mem) x\(n), \(clients) client(s): create mean us=\(fmt(c.reduce(0, +) / Double(c.count))) p50 us=\(fmt(c[c.count / 2])) p99 us=\(fmt(c[c.count * 99 / 100])); destroy mean us=\(fmt(d.reduce(0, +) / Double(d.count))); creates+destroys per second=\(fmt(Double(2 * n) / wall * 1_000_000))")

    case "agent-populate" where args.count == 5:
        // agent-populate N SOCKET PREFIX: N containers (cpu+memory) made
        // through the agent and left there, /PREFIX_0 ... (tools/bench-recovery).
        // No max_limit, as in agent-create: CL2's admission commits a
        // container's cpu.max_limit, and two CPUs take two of 1000 milliCPU
        // (with it the third create was refused and the bench stopped).
        let spec = try ContainerSpec(textFormat: "cpu { limit: 500 } memory { limit: 104857600 }")
        let client = try RpcClient.connect(unixPath: args[3], name: "bench")
        defer { client.close() }
        for i in 0..<n { _ = try client.call(AgentMethods.create, CreateRequest(name: "/\(args[4])_\(i)", spec: spec)) }

    case "agent-wait" where args.count == 4:
        // agent-wait MS SOCKET: polls SOCKET every 0.5 ms until a Ping is
        // answered (at most MS ms); prints how long that took.
        let t0 = now()
        while true {
            if let client = try? RpcClient.connect(unixPath: args[3], name: "bench") {
                defer { client.close() }
                if (try? client.call(AgentMethods.ping, PingRequest(data: [1]))) != nil { break }
            }
            if now() - t0 > Double(n) * 1000 { fail("no answer from \(args[3]) within \(n) ms") }
            usleep(500)
        }
        print("first Ping answered after us=\(fmt(now() - t0))")

    case "local-lifecycle":
        // local-lifecycle N: what agent-lifecycle does, through CL1 in this
        // process (no agent, no RPC): the agent's own share is the difference.
        let spec = try ContainerSpec(textFormat: "cpu { limit: 500 max_limit: 1000 } memory { limit: 104857600 }")
        var options = RunOptions(fdPolicy: .inherit)
        options.stdout = .devNull
        var phases = [0.0, 0.0, 0.0]
        let t0 = now(), cpu0 = cpuNow(), csw0 = switchesNow()
        for i in 0..<n {
            let a = now()
            let c = try api.create("/lmctfy_bench_local_\(getpid())_\(i)", spec: spec)
            let b = now()
            let pid = try c.run(["/bin/true"], options: options)
            _ = try Sys.waitForExit(pid)
            let d = now()
            try api.destroy(c.name)
            phases[0] += b - a; phases[1] += d - b; phases[2] += now() - d
        }
        let total = (now() - t0) / Double(n), cpu = (cpuNow() - cpu0) / Double(n), csw = (switchesNow() - csw0) / Double(n)
        print("local lifecycle (create cpu+mem, run /bin/true, exit, destroy; CL1 in-process) \(phaseText(phases, n)) cpu_us=\(fmt(cpu)) csw=\(fmt(csw)) us=\(fmt(total))")

    default:
        fail("usage: lmctfy-bench create-destroy N | freeze N BASELINE | run N BASELINE | threshold N HELPER | rpc PORT KEYFILE C D SECONDS | agent-lifecycle N SOCKET | agent-oneshot N SOCKET | agent-create N SOCKET CLIENTS | agent-populate N SOCKET PREFIX | agent-wait MS SOCKET | local-lifecycle N")
    }
} catch {
    fail("\(error)")
}
