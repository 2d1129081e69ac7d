// The usual numbers of many containers, sampled again and again (the
// agent's STATS events, issue #11): each file is opened once and read with
// pread from offset 0 on every sweep (a cgroup file gives its value at the
// time of the read), parsed without building strings. Per container: CPU
// time used, memory in use and the working set, the process count, how
// often the memory limit was hit, CFS throttling.
import Glibc
import LmctfyProto
import LmctfySystem

/// Not thread-safe: one thread (the agent's sampler) drives it.
public final class StatsSampler {
    private struct Open {
        var cpu: Int32 = -1
        var memory: Int32 = -1
        var memoryStat: Int32 = -1
        var pids: Int32 = -1
        var failcnt: Int32 = -1
        var cpuStat: Int32 = -1
        var files: SampleFiles

        var fds: [Int32] { [cpu, memory, memoryStat, pids, failcnt, cpuStat].filter { $0 >= 0 } }
    }

    private let api: ContainerApi
    private var open: [ContainerName: Open] = [:]
    private let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 16384, alignment: 8)
    /// The containers whose files stay open between samples; the others'
    /// are opened and closed by each sample.
    public let maxKept: Int

    /// `maxKept`: by default as many containers as a quarter of the open
    /// file limit (RLIMIT_NOFILE) holds at six files each. Kept without a
    /// bound, the files of 2,000 containers were 12,000 of the agent's
    /// 14,000 descriptors (a probe), and at the limit every new client
    /// connection and cgroup file was refused.
    public init(api: ContainerApi, maxKept: Int? = nil) {
        self.api = api
        self.maxKept = maxKept ?? max(1, Int(min(Sys.fileLimit, 1 << 24)) / 4 / 6)
    }

    deinit {
        for o in open.values { for fd in o.fds { Glibc.close(fd) } }
        buffer.deallocate()
    }

    /// Containers whose files are open.
    public var count: Int { open.count }

    /// One sample of `name`, its files opened on first use and kept open.
    /// nil when the container is gone (its files are closed then).
    public func sample(_ name: ContainerName) -> ContainerStats? {
        let o: Open
        var transient = false
        if let kept = open[name] {
            o = kept
        } else {
            guard let (opened, kept) = opened(name) else { return nil }
            o = opened
            transient = !kept
        }
        // Past `maxKept`: opened for this sample only.
        defer { if transient { for fd in o.fds { Glibc.close(fd) } } }
        var stats = ContainerStats()
        var ok = true
        if o.cpu >= 0 {
            if let v = o.files.cpuUsageKey.map({ key in value(o.cpu, key: key) }) ?? value(o.cpu) {
                stats.cpu = CpuStats(usage: CpuStats.Usage(total: UInt64(max(0, v * o.files.cpuUsageScale))))
            } else {
                ok = false
            }
        }
        if o.memory >= 0 {
            if let usage = value(o.memory) {
                var m = MemoryStats(usage: usage)
                if o.memoryStat >= 0, let inactive = value(o.memoryStat, key: o.files.inactiveFileKey) {
                    m.workingSet = max(0, usage - inactive)
                }
                if o.failcnt >= 0 {
                    let f = o.files.memoryFailcntKey.map { key in value(o.failcnt, key: key) } ?? value(o.failcnt)
                    if let f { m.failCount = f }
                }
                stats.memory = m
            } else {
                ok = false
            }
        }
        if o.pids >= 0, let current = value(o.pids) { stats.pids = PidsStats(current: current) }
        if o.cpuStat >= 0, let n = read(o.cpuStat), let periods = find(key: "nr_periods", n),
           let throttled = find(key: "nr_throttled", n) {
            let time = find(key: o.files.throttledTimeKey, n).map { $0 * o.files.throttledTimeScale }
            if stats.cpu == nil { stats.cpu = CpuStats() }
            stats.cpu?.throttlingData = ThrottlingData(periods: periods, throttledPeriods: throttled, throttledTime: time)
        }
        guard ok else {
            // A read failed: the container went (ENODEV) or is going.
            if !transient { forget(name) }
            return nil
        }
        return stats
    }

    /// Closes the files of `name`.
    public func forget(_ name: ContainerName) {
        guard let o = open.removeValue(forKey: name) else { return }
        for fd in o.fds { Glibc.close(fd) }
    }

    /// Closes the files of every container not in `names`.
    public func keep(only names: Set<ContainerName>) {
        for name in open.keys where !names.contains(name) { forget(name) }
    }

    /// `name`'s files opened, and whether they are kept (within `maxKept`).
    private func opened(_ name: ContainerName) -> (Open, kept: Bool)? {
        guard (try? api.exists(name)) == true, let files = try? api.driver.sampleFiles(name) else { return nil }
        var o = Open(files: files)
        func fd(_ path: String?) -> Int32 {
            guard let path else { return -1 }
            return (try? Sys.open(path, O_RDONLY | O_CLOEXEC)) ?? -1
        }
        o.cpu = fd(files.cpuUsage)
        o.memory = fd(files.memoryUsage)
        o.memoryStat = fd(files.memoryStat)
        o.pids = fd(files.pids)
        o.failcnt = fd(files.memoryFailcnt)
        o.cpuStat = fd(files.cpuStat)
        guard open.count < maxKept else { return (o, false) }
        open[name] = o
        return (o, true)
    }

    /// The file's first number ("max" reads as nil).
    private func value(_ fd: Int32) -> Int64? {
        guard let n = try? Sys.preadStart(fd, into: buffer), n > 0 else { return nil }
        return Self.number(buffer, from: 0, to: n)
    }

    /// The number after `key ` at the start of a line of a flat-keyed file.
    private func value(_ fd: Int32, key: String) -> Int64? {
        guard let n = read(fd) else { return nil }
        return find(key: key, n)
    }

    /// The file's bytes in `buffer` (their count), nil when unreadable.
    private func read(_ fd: Int32) -> Int? {
        guard let n = try? Sys.preadStart(fd, into: buffer), n > 0 else { return nil }
        return n
    }

    /// In the first `n` bytes of `buffer`: the number after `key `.
    private func find(key: String, _ n: Int) -> Int64? {
        var k = Array(key.utf8)
        k.append(0x20)
        var line = 0
        while line < n {
            if line + k.count <= n {
                var match = true
                for (i, b) in k.enumerated() where buffer[line + i] != b { match = false; break }
                if match { return Self.number(buffer, from: line + k.count, to: n) }
            }
            while line < n && buffer[line] != 0x0A { line += 1 }
            line += 1
        }
        return nil
    }

    static func number(_ b: UnsafeMutableRawBufferPointer, from: Int, to: Int) -> Int64? {
        var i = from
        var v: Int64 = 0
        var digits = 0
        while i < to, b[i] >= 0x30, b[i] <= 0x39 {
            v = v &* 10 &+ Int64(b[i] - 0x30)
            digits += 1
            i += 1
        }
        return digits > 0 ? v : nil
    }
}
