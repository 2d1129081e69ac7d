// The agent's Prometheus endpoint against a real agent and real containers:
// what it serves is the stats sweep's latest sample (equal to it while a
// busy container's CPU time moves on, so not a cgroupfs read), the agent's
// call, connection and event counters, promtool accepts it, counters only
// go up, bad requests get HTTP errors without hurting the agent, the Unix
// socket endpoint has its mode, and a real Prometheus server scrapes it.
import Glibc
import Lmctfy
import LmctfyAgent
import LmctfyProto
import LmctfyRPC
import LmctfySystem
import LmctfyTestSupport
import Testing

/// A scrape parsed: every sample by its series ("name{labels}") and every
/// family's TYPE.
struct Scrape {
    var samples: [String: Double] = [:]
    var types: [String: String] = [:]

    init(_ body: [UInt8]) {
        for line in String(decoding: body, as: UTF8.self).split(separator: "\n") {
            if line.hasPrefix("# TYPE ") {
                let parts = line.split(separator: " ")
                types[String(parts[2])] = String(parts[3])
            } else if !line.hasPrefix("#"), let space = line.lastIndex(of: " ") {
                samples[String(line[..<space])] = Double(line[line.index(after: space)...])
            }
        }
    }

    func value(_ series: String) -> Double? { samples[series] }

    /// The family a series belongs to (histogram series by their base name).
    func family(of series: String) -> String {
        let name = String(series.prefix { $0 != "{" })
        for suffix in ["_bucket", "_sum", "_count"] where name.hasSuffix(suffix) {
            let base = String(name.dropLast(suffix.count))
            if types[base] == "histogram" { return base }
        }
        return name
    }
}

@Suite(.enabled(if: RealCgroups.available, "\(RealCgroups.unavailableReason ?? "")"), .serialized)
struct MetricsEndpointTests {
    static let config = "reconcile_interval_ms: 100 stats_interval_ms: 200 metrics { address: \"127.0.0.1:0\" }"

    /// A container with a process that keeps using a little CPU (a shell
    /// starting `sleep` every 10 ms), made through lmctl; destroyed after.
    func withBusyContainer<T>(_ socket: String, _ body: (String) throws -> T) throws -> T {
        let name = RealCgroups.uniqueName("metrics")
        let lmctl = [builtTool("lmctl"), "--agent", "unix://" + socket]
        defer { _ = try? TestProcess.capture(lmctl + ["destroy", "-f", name]) }
        var r = try TestProcess.capture(lmctl + ["create", name, "memory:{limit:100000000} cpu:{limit:500}"])
        try #require(r.status == 0, "\(String(decoding: r.stderr, as: UTF8.self))")
        r = try TestProcess.capture(lmctl + ["run", "-n", name, "/bin/sh", "-c", "while :; do sleep 0.01; done"])
        try #require(r.status == 0, "\(String(decoding: r.stderr, as: UTF8.self))")
        return try body(name)
    }

    /// Scrapes until the sweep's newest sample of `name` is the same before
    /// and after the scrape (no sweep in between): that sample and the scrape.
    func stableScrape(_ agent: Agent, _ name: String) throws -> (ContainerStats, Scrape) {
        let port = try #require(agent.metricsPort)
        for _ in 0..<200 {
            let before = agent.dispatcher.events.latestStats(container: name)
            let r = try get("/metrics", port: port)
            let after = agent.dispatcher.events.latestStats(container: name)
            if let before, before == after, before.cpu?.usage?.total != nil {
                #expect(r.status == 200)
                return (before, Scrape(r.body))
            }
            usleep(20_000)
        }
        throw LmctfyError(.deadlineExceeded, "no stats sample of \(name) held still across a scrape")
    }

    @Test func containerFiguresAreTheStatsSweepsLatestSample() throws {
        try withAgent(Self.config) { agent, socket in
            try withBusyContainer(socket) { name in
                var checked = 0
                var cpuSeen: Set<Double> = []
                // Several samples: the CPU time moves on between sweeps, and
                // each scrape still equals its sample exactly.
                while checked < 3 {
                    let (stats, scrape) = try stableScrape(agent, name)
                    let labels = "{id=\"\(name)\",name=\"\(name)\"}"
                    let cpu = try #require(scrape.value("container_cpu_usage_seconds_total" + labels))
                    #expect(cpu == Double(stats.cpu!.usage!.total!) / 1e9)
                    cpuSeen.insert(cpu)
                    #expect(scrape.value("container_memory_usage_bytes" + labels) == Double(try #require(stats.memory?.usage)))
                    #expect(scrape.value("container_memory_working_set_bytes" + labels) == Double(try #require(stats.memory?.workingSet)))
                    if let failcnt = stats.memory?.failCount {
                        #expect(scrape.value("container_memory_failcnt" + labels) == Double(failcnt))
                    }
                    if let throttling = stats.cpu?.throttlingData {
                        #expect(scrape.value("container_cpu_cfs_periods_total" + labels) == Double(throttling.periods!))
                        #expect(scrape.value("container_cpu_cfs_throttled_periods_total" + labels) == Double(throttling.throttledPeriods!))
                    }
                    if let pids = stats.pids?.current {
                        #expect(scrape.value("container_processes" + labels) == Double(pids))
                    }
                    #expect(scrape.value("container_oom_events_total" + labels) == 0)
                    checked += 1
                    usleep(250_000)
                }
                #expect(cpuSeen.count >= 2, "the CPU time should have moved between sweeps: \(cpuSeen)")
            }
        }
    }

    @Test func agentCountersFollowCallsAndOnlyGoUp() throws {
        try withAgent(Self.config) { agent, socket in
            let port = try #require(agent.metricsPort)
            let first = Scrape(try get("/metrics", port: port).body)
            try withBusyContainer(socket) { name in
                let client = try RpcClient.connect(unixPath: socket)
                defer { client.close() }
                _ = try client.call(AgentMethods.ping.name, [])
                #expect(throws: LmctfyError.self) {
                    _ = try client.call(AgentMethods.stats, StatsRequest(name: "/lmctfy_test_no_such_container"))
                }
                // The unknown method is counted under "unknown", not by its name.
                #expect(throws: LmctfyError.self) { _ = try client.call("NoSuchMethod\"{}", []) }
                _ = try stableScrape(agent, name)
            }
            let second = Scrape(try get("/metrics", port: port).body)
            #expect(second.value("lmctfy_agent_calls_total{method=\"Create\",code=\"OK\"}") ?? 0 >= 1)
            #expect(second.value("lmctfy_agent_calls_total{method=\"Run\",code=\"OK\"}") ?? 0 >= 1)
            #expect(second.value("lmctfy_agent_calls_total{method=\"Ping\",code=\"OK\"}") ?? 0 >= 1)
            #expect(second.value("lmctfy_agent_calls_total{method=\"Stats\",code=\"NOT_FOUND\"}") ?? 0 >= 1)
            #expect(second.value("lmctfy_agent_calls_total{method=\"unknown\",code=\"UNIMPLEMENTED\"}") ?? 0 >= 1)
            #expect(!second.samples.keys.contains { $0.contains("NoSuchMethod") })
            #expect(second.value("lmctfy_agent_connections_accepted_total{transport=\"unix\"}") ?? 0 >= 3)
            #expect(second.value("lmctfy_agent_events_total{kind=\"created\"}") ?? 0 >= 1)
            #expect(second.value("lmctfy_agent_events_total{kind=\"stats\"}") ?? 0 >= 1)
            #expect(second.value("lmctfy_agent_stats_sweep_duration_seconds_count") ?? 0 >= 1)
            #expect(second.value("lmctfy_agent_metrics_scrapes_total")! > first.value("lmctfy_agent_metrics_scrapes_total")!)
            // Histograms: cumulative buckets ending in +Inf == _count, which
            // is every call of the method that ended.
            for method in ["Create", "Run", "Ping"] {
                let buckets = second.samples.filter { $0.key.hasPrefix("lmctfy_agent_call_duration_seconds_bucket{method=\"\(method)\"") }
                let bounds = buckets.keys.map { key -> Double in
                    let le = key.split(separator: "le=\"")[1].dropLast(2)
                    return le == "+Inf" ? .infinity : Double(le)!
                }
                let ordered = zip(bounds, buckets.values).sorted { $0.0 < $1.0 }.map(\.1)
                #expect(ordered.count == 17)
                #expect(ordered == ordered.sorted(), "buckets must be cumulative")
                let count = second.value("lmctfy_agent_call_duration_seconds_count{method=\"\(method)\"}")
                #expect(ordered.last == count)
                let calls = second.samples.filter { $0.key.hasPrefix("lmctfy_agent_calls_total{method=\"\(method)\"") }.values.reduce(0, +)
                #expect(count == calls)
            }
            // Every counter (and histogram series) of the first scrape is
            // still there and no smaller; a container's series go with the
            // container (other tests' containers come and go meanwhile).
            for (series, v) in first.samples where ["counter", "histogram"].contains(first.types[first.family(of: series)]) {
                guard let now = second.value(series) else {
                    if !series.hasPrefix("container_") { Issue.record("\(series) disappeared") }
                    continue
                }
                #expect(now >= v, "\(series) went from \(v) to \(now)")
            }
        }
    }

    @Test(.enabled(if: promtoolPath != nil, "promtool is not installed (Debian package prometheus, in tools/deps.sh)"))
    func promtoolAcceptsARealScrape() throws {
        try withAgent(Self.config) { agent, socket in
            try withBusyContainer(socket) { name in
                _ = try stableScrape(agent, name)
                let port: UInt16 = try #require(agent.metricsPort)
                let body = try get("/metrics", port: port).body
                #expect(String(decoding: body, as: UTF8.self).contains(name))
                let (status, output) = try promtoolCheck(body)
                // Exit 1 is a parse error; 3 is lint only. The one lint is
                // cAdvisor's own name, kept for its dashboards and rules:
                // container_memory_failcnt is a counter without _total.
                let lints = output.split(separator: "\n").filter { !$0.contains("container_memory_failcnt counter metrics should have \"_total\" suffix") }
                #expect(status == 0 || status == 3, "promtool: \(output)")
                #expect(lints.isEmpty, "promtool: \(output)")
            }
        }
    }

    @Test func badRequestsGetErrorsAndTheAgentCarriesOn() throws {
        try withAgent(Self.config) { agent, agentSocket in
            let port = try #require(agent.metricsPort)
            #expect(try get("/nope", port: port).status == 404)
            #expect(try get("/metrics/", port: port).status == 404)
            #expect(try httpExchange(port: port, Array("POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello".utf8)).status == 405)
            #expect(try httpExchange(port: port, Array("DELETE /metrics HTTP/1.1\r\nHost: x\r\n\r\n".utf8)).status == 405)
            let head = try httpExchange(port: port, Array("HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".utf8))
            #expect(head.status == 200 && head.body.isEmpty)
            // Garbage, a request line without a version, a missing Host on
            // HTTP/1.1: client errors, answered or closed.
            for junk in ["\u{1}\u{2}\u{3} garbage\r\n\r\n", "GET\r\n\r\n", "GET /metrics HTTP/1.1\r\n\r\n", "GET /metrics HTTP/9.9\r\nHost: x\r\n\r\n"] {
                let r = try httpExchange(port: port, Array(junk.utf8))
                #expect(r.status == nil || (400..<600).contains(r.status!), "\(junk.debugDescription): \(r.headers)")
            }
            // Headers HTTP/1.1 forbids: 400, with one status line and our
            // text (MHD's own 400 for a missing Host sent its headers twice,
            // the second copy as the body), and the connection closed.
            for (request, says) in [("GET /metrics HTTP/1.1\r\n\r\n", "needs a Host header"),
                                    ("GET /metrics HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "more than one Host"),
                                    ("GET /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", "more than one Content-Length"),
                                    ("GET /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\na", "both Content-Length and Transfer-Encoding")] {
                let r = try httpExchange(port: port, Array(request.utf8))
                let body = String(decoding: r.body, as: UTF8.self)
                #expect(r.status == 400 && body.hasPrefix("bad request: ") && body.contains(says) && !body.contains("400 Bad Request"),
                        "\(request.debugDescription): \(r.headers) \(body.debugDescription)")
                #expect(r.headers.contains("Connection: close"), "\(r.headers)")
            }
            // HTTP/1.0 may leave Host out.
            #expect(try httpExchange(port: port, Array("GET /metrics HTTP/1.0\r\n\r\n".utf8)).status == 200)
            // Oversize: a 1 MB path and 1 MB of headers.
            let longPath = try httpExchange(port: port, Array("GET /\(String(repeating: "a", count: 1 << 20)) HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
            #expect(longPath.status == nil || longPath.status == 414 || longPath.status == 431, "\(longPath.headers)")
            let longHeader = try httpExchange(port: port, Array("GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: \(String(repeating: "b", count: 1 << 20))\r\n\r\n".utf8))
            #expect(longHeader.status == nil || longHeader.status == 431 || longHeader.status == 413, "\(longHeader.headers)")
            // Random bytes, and random mutations of a good request.
            var rng = SystemRandomNumberGenerator()
            let good = Array("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".utf8)
            for i in 0..<100 {
                var junk: [UInt8]
                if i % 2 == 0 {
                    junk = (0..<Int.random(in: 1...4096, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
                } else {
                    junk = good
                    for _ in 0..<3 { junk[Int.random(in: 0..<junk.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng) }
                }
                junk += Array("\r\n\r\n".utf8)
                let r = try httpExchange(port: port, junk, halfClose: true)
                // A mutation can leave a valid request (a changed header
                // value): then it is answered like any other.
                #expect(r.status == nil || r.status! >= 400 || [200, 404].contains(r.status!), "\(junk): \(r.headers)")
            }
            // A client that connects and says nothing does not hold the loop.
            let idle = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var a = sockaddr_in()
            a.sin_family = sa_family_t(AF_INET)
            a.sin_port = port.bigEndian
            a.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
            _ = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(idle, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
            defer { close(idle) }
            // Keep-alive: two requests on one connection (as Prometheus
            // reuses its connection), a GET's stray body ignored.
            let two = try httpExchange(port: port, Array(("GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello" +
                                                          "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").utf8))
            #expect(two.status == 200)
            #expect(!two.headers.contains("Connection: close"), "the first answer must keep the connection: \(two.headers)")
            #expect(String(decoding: two.body, as: UTF8.self).components(separatedBy: "HTTP/1.1 200 OK").count == 2,
                    "a second answer on the same connection")
            // Still serving, and the RPC side is unharmed.
            let ok = try get("/metrics", port: port)
            #expect(ok.status == 200)
            #expect(ok.headers.contains("text/plain; version=0.0.4"))
            let client = try RpcClient.connect(unixPath: agentSocket)
            defer { client.close() }
            let pong = try client.call(AgentMethods.ping, PingRequest(data: [1, 2, 3]))
            #expect(pong.data == [1, 2, 3])
        }
    }

    /// 64 connections that never finish a request held the endpoint: a
    /// scraper was not even accepted until MHD's 30 s idle timeout, which a
    /// prober renews by trickling a byte (a probe, thirty-second sitting;
    /// any local process can reach a loopback endpoint, a container's too).
    /// Now a new connection takes the place of the one that has waited
    /// longest for a request, once that has waited a second.
    @Test func silentConnectionsGiveTheirPlaceToAScraper() throws {
        try withAgent(Self.config) { agent, _ in
            let port = try #require(agent.metricsPort)
            let silent = try SilentPeers(port: port, count: 64)
            // Within the first second the 65th is turned away...
            let early = try SilentPeers(port: port, count: 1)
            early.waitUntilClosed(atLeast: 1, waitMs: 900)
            #expect(early.closed == [0], "a 65th connection while all 64 are young")
            usleep(1_200_000)
            // ...then a scraper takes the oldest silent one's place.
            let r = try get("/metrics", port: port)
            #expect(r.status == 200)
            silent.waitUntilClosed(atLeast: 1, waitMs: 2000)
            #expect(silent.closed == [0], "the longest-waiting silent connection went")
            // And the endpoint keeps serving as scrapers come and go.
            for _ in 0..<5 { #expect(try get("/metrics", port: port).status == 200) }
        }
    }

    @Test func aUnixSocketEndpointHasItsModeAndGoesAwayWithTheAgent() throws {
        let dir = "/tmp/lmctfy-metrics-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try Sys.mkdir(dir, mode: 0o755)
        defer { _ = removeTree(dir) }
        let path = dir + "/metrics.sock"
        // The group of allowed_group, as the RPC socket's.
        let group = try #require(getgrnam("daemon"), "the test needs the group daemon").pointee.gr_gid
        try withAgent("allowed_group: \"daemon\" stats_interval_ms: 200 metrics { address: \"unix:\(path)\" unix_socket_mode: 0640 }") { agent, _ in
            #expect(agent.metricsPort == nil)
            var st = stat()
            #expect(lstat(path, &st) == 0)
            #expect(st.st_mode & S_IFMT == S_IFSOCK)
            #expect(st.st_mode & 0o777 == 0o640)
            #expect(st.st_gid == group)
            let r = try get("/metrics", unixPath: path)
            #expect(r.status == 200)
            #expect(String(decoding: r.body, as: UTF8.self).contains("lmctfy_agent_info{"))
        }
        var st = stat()
        #expect(lstat(path, &st) != 0, "the socket file is removed when the agent stops")
    }

    @Test func anExposedEndpointIsAWarningInMachineInfo() throws {
        try withAgent("metrics { address: \"0.0.0.0:0\" allow_non_loopback: true }") { agent, socket in
            let port = try #require(agent.metricsPort)
            #expect(try get("/metrics", port: port).status == 200)
            let client = try RpcClient.connect(unixPath: socket)
            defer { client.close() }
            let info = try client.call(AgentMethods.machineInfo, MachineInfoRequest())
            #expect(info.warnings.contains { $0.hasPrefix("METRICS EXPOSED") }, "\(info.warnings)")
        }
        try withAgent("metrics { address: \"127.0.0.1:0\" }") { _, socket in
            let client = try RpcClient.connect(unixPath: socket)
            defer { client.close() }
            let info = try client.call(AgentMethods.machineInfo, MachineInfoRequest())
            #expect(!info.warnings.contains { $0.hasPrefix("METRICS EXPOSED") })
        }
    }

    @Test func withoutTheBlockThereIsNoEndpoint() throws {
        try withAgent("stats_interval_ms: 200") { agent, _ in
            #expect(agent.settings.metrics == nil)
            #expect(agent.metricsPort == nil)
        }
    }

    @Test func aBusyAddressFailsTheStartClearly() throws {
        try withAgent(Self.config) { agent, _ in
            let port = try #require(agent.metricsPort)
            do {
                _ = try withAgent("metrics { address: \"127.0.0.1:\(port)\" }") { _, _ in
                    Issue.record("a second agent bound the same metrics port")
                }
            } catch let error as LmctfyError {
                #expect(error.code == .alreadyExists)
                #expect(error.message.contains("127.0.0.1:\(port)") && error.message.contains("bind"), "\(error.message)")
            }
        }
    }

    @Test func aStartThatFailsLaterReleasesTheMetricsPort() throws {
        try withAgent(Self.config) { _, socket in
            // A second agent on the same (live) RPC socket fails to start,
            // after binding its metrics port: the port must be free again.
            let dir = "/tmp/lmctfy-metrics-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
            try Sys.mkdir(dir, mode: 0o755)
            defer { _ = removeTree(dir) }
            let probe = try withAgent("metrics { address: \"127.0.0.1:0\" }") { a, _ in try #require(a.metricsPort) }
            let settings = try AgentSettings.parse("unix_socket_path: \"\(socket)\" state_dir: \"\(dir)/state\" stats_interval_ms: 0 log_level: LOG_ERROR metrics { address: \"127.0.0.1:\(probe)\" }", source: "test")
            let second = Agent(settings: settings, api: try ContainerApi.detect())
            #expect(throws: LmctfyError.self) { try second.start(handleSignals: false) }
            let third = try withAgent("metrics { address: \"127.0.0.1:\(probe)\" }") { a, _ in a.metricsPort }
            #expect(third == probe, "the failed agent left the metrics port bound")
        }
    }

    /// A real Prometheus (Debian's) scraping the agent every second: its
    /// API reports the target up and has the container's series.
    @Test(.enabled(if: access("/usr/bin/prometheus", X_OK) == 0, "prometheus is not installed (Debian package prometheus, in tools/deps.sh)"))
    func aRealPrometheusScrapesTheAgent() throws {
        try withAgent(Self.config) { agent, socket in
            try withBusyContainer(socket) { name in
                let port = try #require(agent.metricsPort)
                let dir = "/tmp/lmctfy-prometheus-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
                try Sys.mkdir(dir, mode: 0o755)
                defer { _ = removeTree(dir) }
                let config = """
                    global: { scrape_interval: 1s, scrape_timeout: 1s }
                    scrape_configs:
                      - job_name: lmctfy
                        static_configs: [ { targets: ["127.0.0.1:\(port)"] } ]

                    """
                let fd = open(dir + "/prometheus.yml", O_WRONLY | O_CREAT | O_TRUNC, 0o644)
                _ = config.utf8CString.withUnsafeBytes { write(fd, $0.baseAddress, $0.count - 1) }
                close(fd)
                // Its web port: a free one (bound and released just before).
                let webPort = try freeTcpPort()
                let pid = try TestProcess.spawn(["/bin/sh", "-c", "exec /usr/bin/prometheus --config.file=\(dir)/prometheus.yml --storage.tsdb.path=\(dir)/data --web.listen-address=127.0.0.1:\(webPort) >\(dir)/log 2>&1"])
                defer { TestProcess.end(pid) }
                func query(_ q: String) -> String? {
                    let encoded = q.utf8.map { b -> String in
                        let c = Character(UnicodeScalar(b))
                        return c.isLetter || c.isNumber || c == "_" ? String(c) : "%" + String(b, radix: 16, uppercase: true).leftPadded(2)
                    }.joined()
                    guard let r = try? get("/api/v1/query?query=\(encoded)", port: webPort), r.status == 200 else { return nil }
                    return String(decoding: r.body, as: UTF8.self)
                }
                var up: String?
                var series: String?
                for _ in 0..<60 {
                    if let u = query("up{job=\"lmctfy\"}"), u.contains("\"1\"]") { up = u }
                    if let s = query("container_memory_usage_bytes{id=\"\(name)\"}"), s.contains(name) { series = s }
                    if up != nil && series != nil { break }
                    usleep(500_000)
                }
                let log = (try? Sys.readFile(dir + "/log")) ?? ""
                #expect(up != nil, "Prometheus never saw the target up; its log:\n\(log.suffix(2000))")
                #expect(series != nil, "Prometheus has no container_memory_usage_bytes for \(name)")
            }
        }
    }
}

/// A loopback TCP port nobody listens on now: bound to port 0, read, and
/// released (a process started next can bind it, barring a race).
func freeTcpPort() throws -> UInt16 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    defer { close(fd) }
    var a = sockaddr_in()
    a.sin_family = sa_family_t(AF_INET)
    a.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let rc = withUnsafeMutablePointer(to: &a) { p in
        p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 ? getsockname(fd, $0, &length) : -1 }
    }
    guard rc == 0 else { throw SystemError("bind", "127.0.0.1:0", errno) }
    return UInt16(bigEndian: a.sin_port)
}

extension String {
    fileprivate func leftPadded(_ n: Int) -> String { count >= n ? self : String(repeating: "0", count: n - count) + self }
}
