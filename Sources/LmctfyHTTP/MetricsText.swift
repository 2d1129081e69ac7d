// Prometheus's text exposition format (version 0.0.4), written straight into
// bytes: a HELP and a TYPE line per family, then its samples; label values
// escaped (backslash, double quote, newline), HELP text escaped (backslash,
// newline). Histograms as cumulative _bucket series ending in le="+Inf",
// then _sum and _count.
import Glibc
import LmctfySystem

/// A metric family's type.
public enum MetricType: String, Sendable {
    case counter, gauge, histogram
}

/// A histogram with fixed upper bounds (seconds, bytes, ...): counts per
/// bucket (not cumulative; made cumulative when written), the sum and the
/// count of observations.
public struct Histogram: Sendable, Equatable {
    public let bounds: [Double]
    public private(set) var counts: [UInt64]
    public private(set) var sum: Double = 0
    public private(set) var count: UInt64 = 0

    /// Bounds in increasing order; +Inf is implicit.
    public init(bounds: [Double]) {
        precondition(zip(bounds, bounds.dropFirst()).allSatisfy { $0 < $1 }, "histogram bounds must increase")
        self.bounds = bounds
        self.counts = Array(repeating: 0, count: bounds.count + 1)
    }

    public mutating func observe(_ value: Double) {
        observe(value, times: 1)
    }

    /// `n` observations of the same `value`.
    public mutating func observe(_ value: Double, times n: UInt64) {
        var i = 0
        while i < bounds.count && value > bounds[i] { i += 1 }
        counts[i] &+= n
        sum += value * Double(n)
        count &+= n
    }

    /// Adds `other`'s observations (same bounds).
    public mutating func merge(_ other: Histogram) {
        precondition(bounds == other.bounds, "merging histograms of different bounds")
        for i in counts.indices { counts[i] &+= other.counts[i] }
        sum += other.sum
        count &+= other.count
    }

    /// Latencies from 100 µs to 10 s.
    public static let latencyBounds: [Double] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                                 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
}

/// A text exposition being written. Families must be written whole (HELP,
/// TYPE, all samples) before the next begins; the caller keeps each
/// family's name unique.
public struct MetricsText: Sendable {
    /// What /metrics answers with.
    public static let contentType = "text/plain; version=0.0.4; charset=utf-8"
    nonisolated(unsafe) static let contentTypeC: UnsafePointer<CChar> = UnsafePointer(strdup(contentType)!)

    public private(set) var bytes: [UInt8] = []

    public init(reserving capacity: Int = 4096) {
        bytes.reserveCapacity(capacity)
    }

    /// The HELP and TYPE lines of a family.
    public mutating func family(_ name: String, _ type: MetricType, _ help: String) {
        put("# HELP ")
        put(name)
        bytes.append(0x20)
        for b in help.utf8 {
            switch b {
            case 0x5C: put("\\\\")
            case 0x0A: put("\\n")
            default: bytes.append(b)
            }
        }
        put("\n# TYPE ")
        put(name)
        bytes.append(0x20)
        put(type.rawValue)
        bytes.append(0x0A)
    }

    /// One sample line: `name{labels} value`.
    public mutating func sample(_ name: String, _ labels: KeyValuePairs<String, String>, _ value: Double) {
        put(name)
        writeLabels(labels, extra: nil)
        bytes.append(0x20)
        writeValue(value)
        bytes.append(0x0A)
    }

    /// One sample line with an integer value (written exactly).
    public mutating func sample(_ name: String, _ labels: KeyValuePairs<String, String>, _ value: Int64) {
        put(name)
        writeLabels(labels, extra: nil)
        bytes.append(0x20)
        put(String(value))
        bytes.append(0x0A)
    }

    /// One sample line with an unsigned integer value (written exactly).
    public mutating func sample(_ name: String, _ labels: KeyValuePairs<String, String>, _ value: UInt64) {
        put(name)
        writeLabels(labels, extra: nil)
        bytes.append(0x20)
        put(String(value))
        bytes.append(0x0A)
    }

    /// One unlabelled sample line.
    public mutating func sample(_ name: String, _ value: Int64) { sample(name, [:], value) }
    public mutating func sample(_ name: String, _ value: UInt64) { sample(name, [:], value) }
    public mutating func sample(_ name: String, _ value: Double) { sample(name, [:], value) }

    /// A label set written once (`{k="v",...}`, values escaped) for the
    /// many samples that share it: see `sample(_:rendered:_:)`.
    public static func labels(_ labels: KeyValuePairs<String, String>) -> [UInt8] {
        var t = MetricsText(reserving: 64)
        t.writeLabels(labels, extra: nil)
        return t.bytes
    }

    /// One sample line with labels written by `labels(_:)`.
    public mutating func sample(_ name: String, rendered labels: [UInt8], _ value: Int64) {
        put(name)
        bytes.append(contentsOf: labels)
        bytes.append(0x20)
        if value < 0 { bytes.append(0x2D) }
        writeDigits(value.magnitude)
        bytes.append(0x0A)
    }

    public mutating func sample(_ name: String, rendered labels: [UInt8], _ value: UInt64) {
        put(name)
        bytes.append(contentsOf: labels)
        bytes.append(0x20)
        writeDigits(value)
        bytes.append(0x0A)
    }

    public mutating func sample(_ name: String, rendered labels: [UInt8], _ value: Double) {
        put(name)
        bytes.append(contentsOf: labels)
        bytes.append(0x20)
        writeValue(value)
        bytes.append(0x0A)
    }

    /// Decimal digits without a String in between (a scrape of a thousand
    /// containers writes some ten thousand numbers).
    private mutating func writeDigits(_ v: UInt64) {
        if v < 10 {
            bytes.append(0x30 + UInt8(v))
            return
        }
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 20) { buf in
            var n = v
            var i = 20
            while n > 0 {
                i -= 1
                buf[i] = 0x30 + UInt8(n % 10)
                n /= 10
            }
            bytes.append(contentsOf: buf[i..<20])
        }
    }

    /// A histogram's series: cumulative buckets, +Inf, _sum, _count.
    public mutating func histogram(_ name: String, _ labels: KeyValuePairs<String, String> = [:], _ h: Histogram) {
        var cumulative: UInt64 = 0
        for i in 0...h.bounds.count {
            cumulative &+= h.counts[i]
            put(name)
            put("_bucket")
            writeLabels(labels, extra: i < h.bounds.count ? Self.format(h.bounds[i]) : "+Inf")
            bytes.append(0x20)
            put(String(cumulative))
            bytes.append(0x0A)
        }
        put(name)
        put("_sum")
        writeLabels(labels, extra: nil)
        bytes.append(0x20)
        writeValue(h.sum)
        bytes.append(0x0A)
        put(name)
        put("_count")
        writeLabels(labels, extra: nil)
        bytes.append(0x20)
        put(String(h.count))
        bytes.append(0x0A)
    }

    private mutating func writeLabels(_ labels: KeyValuePairs<String, String>, extra le: String?) {
        guard !labels.isEmpty || le != nil else { return }
        bytes.append(0x7B)
        var first = true
        for (k, v) in labels {
            if !first { bytes.append(0x2C) }
            first = false
            put(k)
            put("=\"")
            escape(v)
            bytes.append(0x22)
        }
        if let le {
            if !first { bytes.append(0x2C) }
            put("le=\"")
            put(le)
            bytes.append(0x22)
        }
        bytes.append(0x7D)
    }

    /// A label value: backslash, double quote and newline escaped; any
    /// other byte as it is (label values are UTF-8).
    private mutating func escape(_ v: String) {
        for b in v.utf8 {
            switch b {
            case 0x5C: put("\\\\")
            case 0x22: put("\\\"")
            case 0x0A: put("\\n")
            default: bytes.append(b)
            }
        }
    }

    private mutating func writeValue(_ v: Double) {
        put(Self.format(v))
    }

    /// Go's ParseFloat reads all of these: integers without a fraction,
    /// "+Inf", "-Inf", "NaN".
    static func format(_ v: Double) -> String {
        if v.isNaN { return "NaN" }
        if v.isInfinite { return v > 0 ? "+Inf" : "-Inf" }
        if v == v.rounded(), abs(v) < 9_007_199_254_740_992 { return String(Int64(v)) }
        return v.description
    }

    private mutating func put(_ s: String) {
        bytes.append(contentsOf: s.utf8)
    }
}

extension MetricsText {
    /// The daemon's own process, under the names Prometheus client
    /// libraries give them: its open descriptors and their limit (at the
    /// limit, new connections are closed at once and cgroup files cannot be
    /// opened), its resident memory and CPU time. Read at each scrape.
    public mutating func processFamilies() {
        // Less the listing's own descriptor.
        let open = Int64(((try? Sys.subdirectoriesAndFiles("/proc/self/fd").count) ?? 1) - 1)
        let max = Int64(clamping: Sys.fileLimit)
        // statm: size, resident, ... in pages.
        let pages = (try? Sys.readFile("/proc/self/statm"))?.split(separator: " ").dropFirst().first.flatMap { Int64($0) }
        let rss = (pages ?? 0) * Sys.pageSize
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        let cpu = Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
        family("process_open_fds", .gauge, "Open file descriptors of the process.")
        sample("process_open_fds", open)
        family("process_max_fds", .gauge, "The process's limit on open file descriptors (RLIMIT_NOFILE, soft).")
        sample("process_max_fds", max)
        family("process_resident_memory_bytes", .gauge, "Resident memory of the process, in bytes.")
        sample("process_resident_memory_bytes", rss)
        family("process_cpu_seconds_total", .counter, "User and system CPU time of the process, in seconds.")
        sample("process_cpu_seconds_total", cpu)
    }
}
