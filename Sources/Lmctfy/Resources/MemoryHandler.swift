// memory: hard limit, reservation (soft limit / memory.low), the
// memory+swap total, and how early the container's processes are chosen by
// the OOM killer (eviction priority). Knobs that only Google's kernel has are
// written when their files exist and refused otherwise (D11).
import Glibc
import LmctfyProto
import LmctfySystem

struct MemoryHandler: ResourceHandler {
    var kind: ResourceKind { .memory }

    /// On a vanilla kernel the eviction priority has no cgroup file, so
    /// lmctfy keeps it on the memory directory and maps it onto the
    /// oom_score_adj of the container's processes (D12).
    static let evictionBadnessFile = "memory.oom_score_badness"
    static let defaultEvictionPriority: Int32 = 5000
    static let maxEvictionPriority: Int32 = 10_000

    /// Priority 0..10000 → oom_score_adj 1000..-999, linearly, to the
    /// nearest: a higher priority is evicted later, and the default (5000)
    /// is 0, a process's own default (it was 1, rounded down: every
    /// container's processes a little likelier to be killed than the
    /// host's; a probe). -1000 (never kill) is out of reach on purpose, as
    /// it would make the process immune to every OOM.
    static func oomScoreAdj(priority: Int32) -> Int {
        let max = Int(maxEvictionPriority)
        return 1000 - (Int(priority) * 1999 + max / 2) / max
    }

    /// A field that needs a Google-kernel file: (spec field, file, value
    /// asked for, what a REPLACE writes when the field is left out).
    struct Knob {
        let field: String
        let file: String
        let value: Int64?
        let replaceDefault: Int64?
    }

    /// The knobs, with the original's defaults: dirty ratios 75/10 unless
    /// byte limits are given, in which case the limits default to 0.
    static func knobs(_ m: MemorySpec) -> [Knob] {
        let dirty = m.dirty ?? MemorySpec.Dirty()
        let usesLimits = dirty.limit != nil || dirty.backgroundLimit != nil
        return [
            Knob(field: "compression_sampling_ratio", file: "memory.compression_sampling_ratio",
                 value: m.compressionSamplingRatio.map(Int64.init), replaceDefault: 0),
            Knob(field: "stale_page_age", file: "memory.stale_page_age",
                 value: m.stalePageAge.map(Int64.init), replaceDefault: 1),
            Knob(field: "dirty.ratio", file: "memory.dirty_ratio",
                 value: dirty.ratio.map(Int64.init), replaceDefault: usesLimits ? nil : 75),
            Knob(field: "dirty.background_ratio", file: "memory.dirty_background_ratio",
                 value: dirty.backgroundRatio.map(Int64.init), replaceDefault: usesLimits ? nil : 10),
            Knob(field: "dirty.limit", file: "memory.dirty_limit_in_bytes",
                 value: dirty.limit.map(Int64.init), replaceDefault: usesLimits ? 0 : nil),
            Knob(field: "dirty.background_limit", file: "memory.dirty_background_limit_in_bytes",
                 value: dirty.backgroundLimit.map(Int64.init), replaceDefault: usesLimits ? 0 : nil),
            Knob(field: "kmem_charge_usage", file: "memory.kmem_charge_usage",
                 value: m.kmemChargeUsage.map { $0 ? 1 : 0 }, replaceDefault: 0),
        ]
    }

    // MARK: Validate

    func validate(_ spec: ContainerSpec, dirs: ResourceDirs) throws(LmctfyError) {
        guard let m = spec.memory else { return }
        try checkSpec(spec)
        let dir = dirs.dir(.memory)
        for knob in Self.knobs(m) where knob.value != nil {
            guard try dir?.has(knob.file) != true else { continue }
            throw .unimplemented("memory.\(knob.field) is not supported by this kernel (it has no \(knob.file))")
        }
        let files = dirs.driver.memory
        if m.swapLimit != nil, try dir?.has(files.swap) != true {
            throw .notFound("memory.swap_limit needs \(files.swap), which this kernel does not have (swap accounting is off)")
        }
    }

    /// The machine's page size: the kernel's unit for memory limits.
    static let pageSize = Int64(sysconf(Int32(_SC_PAGESIZE)))

    func checkSpec(_ spec: ContainerSpec) throws(LmctfyError) {
        guard let m = spec.memory else { return }
        if m.maxLimit != nil { throw .unimplemented("memory.max_limit is not implemented (no kernel enforces it)") }
        if m.hugetlbfsPath != nil { throw .unimplemented("memory.hugetlbfs_path is not implemented") }
        if m.tmpfs != nil { throw .unimplemented("memory.tmpfs is not implemented") }
        if let p = m.evictionPriority, !(0...Self.maxEvictionPriority).contains(p) {
            throw .invalidArgument("memory.eviction_priority must be within 0..\(Self.maxEvictionPriority), not \(p)")
        }
        for (field, value) in [("limit", m.limit), ("reservation", m.reservation), ("swap_limit", m.swapLimit)] {
            if let value, value < -1 { throw .invalidArgument("memory.\(field) must be -1 (unlimited) or a byte count, not \(value)") }
        }
        // The kernel rounds a limit down to pages: below one it is 0, a
        // container that can run nothing (every command OOM-killed; a
        // probe), as pids' 0 is refused.
        if let limit = m.limit, limit >= 0, limit < Self.pageSize {
            throw .invalidArgument("memory.limit \(limit) is below one page (\(Self.pageSize) bytes): the kernel would make it 0, and nothing could run in the container")
        }
        if let d = m.dirty, (d.ratio != nil || d.backgroundRatio != nil) && (d.limit != nil || d.backgroundLimit != nil) {
            throw .invalidArgument("Cannot set both dirty ratio and limit")
        }
        if let limit = m.limit, let total = m.swapLimit {
            try Self.checkTotal(total: total, limit: limit)
        }
    }

    /// The memory+swap total can never be below the memory limit (v1's
    /// kernel refuses it; v2 cannot express it).
    static func checkTotal(total: Int64, limit: Int64) throws(LmctfyError) {
        let t = Unlimited.isUnlimited(total) ? Int64.max : total
        let l = Unlimited.isUnlimited(limit) ? Int64.max : limit
        if t < l {
            throw .invalidArgument("memory.swap_limit (memory+swap, \(Unlimited.isUnlimited(total) ? "unlimited" : String(total))) must be at least memory.limit (\(Unlimited.isUnlimited(limit) ? "unlimited" : String(limit)))")
        }
    }

    // MARK: Apply

    func apply(_ spec: ContainerSpec, policy: UpdatePolicy, dirs: ResourceDirs) throws(LmctfyError) {
        guard let dir = dirs.dir(.memory) else { throw .notFound("Container \"\(dirs.container)\" has no memory cgroup") }
        let m = spec.memory ?? MemorySpec()
        // Everything that can be refused is decided before the first write.
        let writes = try plan(m, policy: policy, dirs: dirs, dir: dir)
        if let p = m.evictionPriority ?? (policy == .replace ? Self.defaultEvictionPriority : nil) {
            try setEvictionPriority(p, dir: dir, dirs: dirs)
        }
        try writes.perform()
    }

    func plannedWrites(_ spec: ContainerSpec, policy: UpdatePolicy, dirs: ResourceDirs) throws(LmctfyError) -> [CgroupWrite] {
        guard let dir = dirs.dir(.memory) else { return [] }
        return try plan(spec.memory ?? MemorySpec(), policy: policy, dirs: dirs, dir: dir)
    }

    /// The cgroup file writes for a memory slice, in order (the eviction
    /// priority is not a plain file write on vanilla kernels; see below).
    func plan(_ m: MemorySpec, policy: UpdatePolicy, dirs: ResourceDirs, dir: CgroupDir) throws(LmctfyError) -> [CgroupWrite] {
        let replace = policy == .replace
        let files = dirs.driver.memory
        var w = try files.planLimits(m, replace: replace, dir: dir)
        if let r = m.reservation ?? (replace ? 0 : nil) {
            w.append(CgroupWrite(dir, files.reservation, files.format(r)))
        }
        for knob in Self.knobs(m) {
            if let v = knob.value {
                w.append(CgroupWrite(dir, knob.file, String(v)))
            } else if replace, let d = knob.replaceDefault, try dir.has(knob.file) {
                w.append(CgroupWrite(dir, knob.file, String(d)))
            }
        }
        return w
    }

    /// Uses the patched kernel's file when it has one; otherwise records the
    /// priority and sets oom_score_adj of every process now in the container.
    private func setEvictionPriority(_ p: Int32, dir: CgroupDir, dirs: ResourceDirs) throws(LmctfyError) {
        if try dir.has(Self.evictionBadnessFile) {
            try dir.write(Self.evictionBadnessFile, String(p))
            return
        }
        // Every process the container starts or takes in sets this
        // oom_score_adj itself: below 0 that needs CAP_SYS_RESOURCE, which
        // a caller without it would only learn from every run failing
        // afterwards (a create, or an update of a container with no process
        // yet to adjust, succeeded; a probe). With processes, adjusting
        // them says so.
        let adj = Self.oomScoreAdj(priority: p)
        let pids = dirs.isNew ? [] : try dirs.processesSharingMemory()
        if pids.isEmpty, Self.lacksCapability(forAdj: adj) {
            throw LmctfyError(.permissionDenied, "Eviction priority \(p) needs oom_score_adj \(adj) for the container's processes; "
                                    + "going below 0 needs CAP_SYS_RESOURCE, which this process does not have")
        }
        // Processes first: if the kernel refuses, the record keeps the old
        // priority, which processes entering later would get.
        try Self.setOomScoreAdj(priority: p, pids: pids, procRoot: dirs.procRoot)
        try dir.setRecord(.evictionPriority, String(p))
    }

    /// CAP_SYS_RESOURCE (linux/capability.h).
    static let capSysResource = 24

    /// Whether this process cannot give a process `adj` (below 0 needs
    /// CAP_SYS_RESOURCE): a create, an update and an enter refuse then.
    static func lacksCapability(forAdj adj: Int) -> Bool {
        adj < 0 && !Sys.hasEffectiveCapability(capSysResource)
    }

    /// PERMISSION_DENIED for `doing` ("Running in \"/c\"", "Entering
    /// \"/c\""), which gives a process `adj`, when this process cannot.
    static func refuseWithoutCapability(forAdj adj: Int32, _ doing: String) throws(LmctfyError) {
        guard lacksCapability(forAdj: Int(adj)) else { return }
        throw LmctfyError(.permissionDenied, "\(doing) sets oom_score_adj \(adj) (its eviction priority); going below 0 needs "
                              + "CAP_SYS_RESOURCE, which this process does not have")
    }

    static func setOomScoreAdj(priority: Int32, pids: [pid_t], procRoot: String) throws(LmctfyError) {
        let adj = String(oomScoreAdj(priority: priority))
        for pid in pids {
            do {
                try Sys.writeFile("\(procRoot)/\(pid)/oom_score_adj", adj)
            } catch {
                // A process that exited since the listing has nothing to adjust.
                if error.errno == ENOENT || error.errno == ESRCH { continue }
                // Lowering oom_score_adj below its minimum needs
                // CAP_SYS_RESOURCE (EACCES from the kernel); a process of
                // another user cannot be adjusted at all (EACCES or EPERM
                // from the file's permissions). Say which.
                if error.errno == EACCES || error.errno == EPERM {
                    let why = Int(adj)! < 0 && Sys.canWrite("\(procRoot)/\(pid)/oom_score_adj")
                        ? "going below 0 needs CAP_SYS_RESOURCE"
                        : "this user may not change that process's oom_score_adj"
                    throw error.lmctfy(.permissionDenied, "Eviction priority \(priority) needs oom_score_adj \(adj) for process \(pid); \(why)")
                }
                throw error.lmctfy(.unavailable, "Failed to set the eviction priority of process \(pid)")
            }
        }
    }

    // MARK: Spec

    func readSpec(into spec: inout ContainerSpec, dirs: ResourceDirs) throws(LmctfyError) {
        guard let dir = dirs.dir(.memory) else { return }
        let files = dirs.driver.memory
        var m = MemorySpec()
        // v1 reports the kernel's page-rounded values as they are (unlimited
        // is 9223372036854771712); v2's "max" is -1.
        m.limit = try dir.readInt(files.limit) ?? -1
        m.reservation = try dir.readInt(files.reservation) ?? -1
        if try dir.has(files.swap) {
            m.swapLimit = files.swapLimit(swapFile: try dir.readInt(files.swap), limit: m.limit)
        }
        if try dir.has(Self.evictionBadnessFile) {
            m.evictionPriority = try dir.readInt(Self.evictionBadnessFile).map { Int32(clamping: $0) }
        } else if let text = try dir.record(.evictionPriority) {
            guard let p = Int32(text) else {
                throw .failedPrecondition("Failed to parse the recorded eviction priority \"\(text)\" of \(dir.path)")
            }
            m.evictionPriority = p
        }
        for knob in Self.knobs(MemorySpec()) where try dir.has(knob.file) && !knob.field.hasPrefix("dirty.") {
            let v = try dir.readInt(knob.file)
            switch knob.field {
            case "compression_sampling_ratio": m.compressionSamplingRatio = v.map { Int32(clamping: $0) }
            case "stale_page_age": m.stalePageAge = v.map { Int32(clamping: $0) }
            case "kmem_charge_usage": m.kmemChargeUsage = v.map { $0 != 0 }
            default: break
            }
        }
        m.dirty = try readDirty(dir)
        spec.memory = m
    }

    /// On a kernel with the dirty files, each pair reports the ratio while
    /// its byte limit is 0 (the kernel uses the ratio then) and the limit
    /// otherwise, as the original does.
    private func readDirty(_ dir: CgroupDir) throws(LmctfyError) -> MemorySpec.Dirty? {
        let hasRatio = try dir.has("memory.dirty_ratio")
        let hasLimit = try dir.has("memory.dirty_limit_in_bytes")
        guard hasRatio || hasLimit else { return nil }
        func pair(_ ratioFile: String, _ limitFile: String) throws(LmctfyError) -> (ratio: Int32?, limit: Int32?) {
            let limit = try dir.has(limitFile) ? try dir.readInt(limitFile) ?? 0 : 0
            if limit != 0 { return (nil, Int32(clamping: limit)) }
            return (try dir.has(ratioFile) ? try dir.readInt(ratioFile).map { Int32(clamping: $0) } : nil, nil)
        }
        var d = MemorySpec.Dirty()
        (d.ratio, d.limit) = try pair("memory.dirty_ratio", "memory.dirty_limit_in_bytes")
        (d.backgroundRatio, d.backgroundLimit) = try pair("memory.dirty_background_ratio", "memory.dirty_background_limit_in_bytes")
        return d
    }

    // MARK: Stats

    func stats(into stats: inout ContainerStats, type: StatsType, dirs: ResourceDirs) throws(LmctfyError) {
        guard let dir = dirs.dir(.memory) else { return }
        let files = dirs.driver.memory
        var s = MemoryStats()
        let stat = try dir.readKeyValues("memory.stat")
        s.usage = try dir.readInt(files.usage)
        if try dir.has(files.maxUsage) { s.maxUsage = try dir.readInt(files.maxUsage) }
        s.limit = try dir.readInt(files.limit) ?? -1
        s.reservation = try dir.readInt(files.reservation) ?? -1
        try files.stats(dir, stat: stat, into: &s)
        s.effectiveLimit = s.hierarchicalMemoryLimit
        stats.memory = s
    }

    /// v1 memory.stat keys ("total_" prefixed for the hierarchy). pgpgout
    /// is filled too (D13).
    static func memoryData(_ stat: [String: Int64], prefix: String) -> MemoryStats.MemoryData {
        var d = MemoryStats.MemoryData()
        let v = { (key: String) in stat[prefix + key] }
        d.cache = v("cache"); d.rss = v("rss"); d.rssHuge = v("rss_huge"); d.mappedFile = v("mapped_file")
        d.pgpgin = v("pgpgin"); d.pgpgout = v("pgpgout"); d.pgfault = v("pgfault"); d.pgmajfault = v("pgmajfault")
        d.dirty = v("dirty"); d.writeback = v("writeback")
        d.inactiveAnon = v("inactive_anon"); d.activeAnon = v("active_anon")
        d.inactiveFile = v("inactive_file"); d.activeFile = v("active_file")
        d.unevictable = v("unevictable")
        return d
    }

    /// v1 memory.numa_stat: lines "total=N N0=a N1=b", for total, file, anon
    /// and unevictable, then the same prefixed "hierarchical_". Unknown
    /// lines (newer kernels add some) are skipped.
    static func numaStats(_ text: String) throws(LmctfyError) -> MemoryStats.NumaStats {
        typealias NumaData = MemoryStats.NumaStats.NumaData
        var own = NumaData(), hierarchical = NumaData()
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: " ")
            guard let head = fields.first, let eq = head.firstIndex(of: "=") else { continue }
            var name = String(head[..<eq])
            let isHierarchical = name.hasPrefix("hierarchical_")
            if isHierarchical { name.removeFirst("hierarchical_".count) }
            guard ["total", "file", "anon", "unevictable"].contains(name) else { continue }
            guard let total = Int64(head[head.index(after: eq)...]) else {
                throw .failedPrecondition("Failed to parse memory.numa_stat line \"\(line)\"")
            }
            var stat = NumaData.Stat(totalPageCount: total)
            for field in fields.dropFirst() {
                let kv = field.split(separator: "=")
                guard kv.count == 2, kv[0].hasPrefix("N"), let node = Int32(kv[0].dropFirst()), let pages = Int64(kv[1]) else {
                    throw .failedPrecondition("Failed to parse memory.numa_stat line \"\(line)\"")
                }
                stat.node.append(NumaData.Stat.Node(level: node, pageCount: pages))
            }
            switch name {
            case "total": if isHierarchical { hierarchical.total = stat } else { own.total = stat }
            case "file": if isHierarchical { hierarchical.file = stat } else { own.file = stat }
            case "anon": if isHierarchical { hierarchical.anon = stat } else { own.anon = stat }
            default: if isHierarchical { hierarchical.unevictable = stat } else { own.unevictable = stat }
            }
        }
        return MemoryStats.NumaStats(containerData: own, hierarchicalData: hierarchical)
    }
}
