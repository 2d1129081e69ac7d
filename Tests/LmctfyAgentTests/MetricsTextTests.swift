// The Prometheus text writer and the metrics endpoint's settings, without
// root: escaping, histogram shape, value formatting, the address rules
// (loopback only unless allowed) and the endpoint being off by default.
// promtool, where installed, checks the writer's output too.
import Glibc
import LmctfyAgent
import LmctfyHTTP
import LmctfySystem
import LmctfyTestSupport
import Testing

/// promtool (Debian package prometheus), or nil.
let promtoolPath: String? = ["/usr/bin/promtool", "/usr/local/bin/promtool"].first { access($0, X_OK) == 0 }

/// promtool check metrics on `text`: its exit status and what it printed.
func promtoolCheck(_ text: [UInt8]) throws -> (status: Int32, output: String) {
    let file = "/tmp/lmctfy-metrics-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).prom"
    let fd = open(file, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    #expect(fd >= 0)
    _ = text.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    close(fd)
    defer { unlink(file) }
    let r = try TestProcess.capture(["/bin/sh", "-c", "\(promtoolPath!) check metrics < \(file)"])
    return (r.status, String(decoding: r.stdout + r.stderr, as: UTF8.self))
}

@Suite struct MetricsTextTests {
    /// The process's own figures, as Prometheus client libraries name them:
    /// descriptors open (one more while a file is held open here) and
    /// their limit, resident memory, CPU time.
    @Test func theProcessFamiliesAreThisProcesss() throws {
        func values() -> [String: Double] {
            var t = MetricsText()
            t.processFamilies()
            var out: [String: Double] = [:]
            for line in String(decoding: t.bytes, as: UTF8.self).split(separator: "\n") where !line.hasPrefix("#") {
                let parts = line.split(separator: " ")
                if parts.count == 2 { out[String(parts[0])] = Double(parts[1]) }
            }
            return out
        }
        let v = values()
        #expect(Set(v.keys) == ["process_open_fds", "process_max_fds", "process_resident_memory_bytes", "process_cpu_seconds_total"])
        #expect(v["process_max_fds"] == Double(Sys.fileLimit))
        #expect((v["process_open_fds"] ?? 0) >= 3 && (v["process_open_fds"] ?? 0) <= Double(Sys.fileLimit))
        #expect((v["process_resident_memory_bytes"] ?? 0) > 1_048_576)
        #expect((v["process_cpu_seconds_total"] ?? 0) > 0)
        var t = MetricsText()
        t.processFamilies()
        if promtoolPath != nil {
            let (status, out) = try promtoolCheck(t.bytes)
            #expect(status == 0, "\(out)")
        }
    }

    @Test func labelValuesAndHelpAreEscaped() {
        var t = MetricsText()
        t.family("x_total", .counter, "a \\ backslash\nand a newline")
        t.sample("x_total", ["id": "/a\"b\\c\nd"], UInt64(3))
        let text = String(decoding: t.bytes, as: UTF8.self)
        #expect(text == """
            # HELP x_total a \\\\ backslash\\nand a newline
            # TYPE x_total counter
            x_total{id="/a\\"b\\\\c\\nd"} 3

            """)
    }

    @Test func histogramsAreCumulativeWithInfSumAndCount() {
        var h = Histogram(bounds: [0.1, 1])
        for v in [0.05, 0.1, 0.5, 7] { h.observe(v) }
        var t = MetricsText()
        t.family("d_seconds", .histogram, "d")
        t.histogram("d_seconds", ["method": "Ping"], h)
        let lines = String(decoding: t.bytes, as: UTF8.self).split(separator: "\n").dropFirst(2)
        #expect(Array(lines) == [
            "d_seconds_bucket{method=\"Ping\",le=\"0.1\"} 2",
            "d_seconds_bucket{method=\"Ping\",le=\"1\"} 3",
            "d_seconds_bucket{method=\"Ping\",le=\"+Inf\"} 4",
            "d_seconds_sum{method=\"Ping\"} 7.65",
            "d_seconds_count{method=\"Ping\"} 4",
        ])
    }

    @Test func repeatedObservationsAreEachCounted() {
        // (The agent times the pings of one read batch together.)
        var once = Histogram(bounds: [0.1, 1])
        var many = Histogram(bounds: [0.1, 1])
        for _ in 0..<5 { once.observe(0.25) }
        once.observe(2)
        many.observe(0.25, times: 5)
        many.observe(2, times: 1)
        many.observe(0.05, times: 0)
        #expect(many == once)
        #expect(many.count == 6 && many.counts == [0, 5, 1] && many.sum == 3.25)
    }

    @Test func histogramsMerge() {
        var a = Histogram(bounds: [1, 2])
        var b = Histogram(bounds: [1, 2])
        a.observe(0.5)
        b.observe(1.5)
        b.observe(9)
        a.merge(b)
        #expect(a.counts == [1, 1, 1] && a.count == 3 && a.sum == 11)
    }

    @Test func valuesAreWrittenSoThatGoParsesThem() {
        var t = MetricsText()
        t.sample("a", Double.infinity)
        t.sample("b", -Double.infinity)
        t.sample("c", Double.nan)
        t.sample("d", 2.0)
        t.sample("e", 0.000_001_5)
        t.sample("f", Int64(-7))
        t.sample("g", UInt64.max)
        #expect(String(decoding: t.bytes, as: UTF8.self) == "a +Inf\nb -Inf\nc NaN\nd 2\ne 1.5e-06\nf -7\ng 18446744073709551615\n")
    }

    @Test(.enabled(if: promtoolPath != nil, "promtool is not installed (Debian package prometheus, in tools/deps.sh)"))
    func promtoolAcceptsAWeirdlyLabelledExposition() throws {
        var t = MetricsText()
        t.family("lmctfy_test_total", .counter, "help with \\ and \"quotes\"")
        t.sample("lmctfy_test_total", ["id": "/we\"ird\\name\nx", "name": "ünïcode"], UInt64(1))
        var h = Histogram(bounds: Histogram.latencyBounds)
        h.observe(0.003)
        t.family("lmctfy_test_seconds", .histogram, "h")
        t.histogram("lmctfy_test_seconds", ["method": "Ping"], h)
        let (status, output) = try promtoolCheck(t.bytes)
        #expect(status == 0, "promtool: \(output)")
        // And it can fail: a sample without its TYPE's shape is refused.
        let (bad, _) = try promtoolCheck(Array("# TYPE x counter\nx{a=\"unterminated} 1\n".utf8))
        #expect(bad != 0, "promtool must reject a malformed exposition")
    }

    @Test func theEndpointIsOffByDefault() throws {
        #expect(try AgentSettings.parse("", source: "t").metrics == nil)
        #expect(try AgentSettings.parse("stats_interval_ms: 1000", source: "t").metrics == nil)
    }

    @Test func loopbackAndUnixAddressesAreAccepted() throws {
        #expect(try AgentSettings.parse("metrics { address: \"127.0.0.1:9102\" }", source: "t").metrics == .tcp(host: "127.0.0.1", port: 9102))
        #expect(try AgentSettings.parse("metrics { address: \"127.3.0.1:0\" }", source: "t").metrics == .tcp(host: "127.3.0.1", port: 0))
        #expect(try AgentSettings.parse("metrics { address: \"[::1]:9102\" }", source: "t").metrics == .tcp(host: "::1", port: 9102))
        #expect(try AgentSettings.parse("metrics { address: \"unix:/run/lmctfy/metrics.sock\" }", source: "t").metrics
                == .unix(path: "/run/lmctfy/metrics.sock", mode: 0o660))
        #expect(try AgentSettings.parse("metrics { address: \"unix:/x.sock\" unix_socket_mode: 0600 }", source: "t").metrics
                == .unix(path: "/x.sock", mode: 0o600))
    }

    @Test func nonLoopbackTcpIsRefusedUnlessExplicitlyAllowed() throws {
        for address in ["0.0.0.0:9102", "10.1.2.3:9102", "[::]:9102", "[2001:db8::1]:9102"] {
            do {
                _ = try AgentSettings.parse("metrics { address: \"\(address)\" }", source: "t")
                Issue.record("\(address) was accepted without allow_non_loopback")
            } catch {
                #expect(error.code == .invalidArgument)
                #expect(error.message.contains("not a loopback address"), "\(error.message)")
            }
        }
        #expect(try AgentSettings.parse("metrics { address: \"0.0.0.0:9102\" allow_non_loopback: true }", source: "t").metrics
                == .tcp(host: "0.0.0.0", port: 9102))
    }

    @Test func badAddressesAreClearErrors() throws {
        let cases = [
            "metrics { }": "needs an address",
            "metrics { address: \"localhost:9102\" }": "numeric",
            "metrics { address: \"127.0.0.1\" }": "host:port",
            "metrics { address: \"127.0.0.1:70000\" }": "host:port",
            "metrics { address: \"unix:relative.sock\" }": "absolute",
            "metrics { address: \"unix:/x.sock\" unix_socket_mode: 01777 }": "not a file mode",
        ]
        for (config, expected) in cases {
            do {
                _ = try AgentSettings.parse(config, source: "t")
                Issue.record("\(config) was accepted")
            } catch {
                #expect(error.code == .invalidArgument)
                #expect(error.message.contains(expected), "\(config): \(error.message)")
            }
        }
    }
}
