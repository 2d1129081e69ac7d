// The agent's side of CL2 (README "Policy"): the ledger of what the
// containers directly below the root commit, kept in line with what exists
// (recomputed from the containers' specs, so a restarted agent, or one whose
// containers were made with the CLI, counts them all), capacity read from
// the root container, and admission wrapped around Create and Update. The
// arithmetic is LmctfyPolicy's; this file only feeds it and acts.
import Glibc
import LmctfyBackend
import LmctfyPolicy
import LmctfyProto
import LmctfySystem

/// Admission for one agent. Thread-safe (the Admitter's lock); calls run on
/// pool threads.
public final class PolicyKeeper: Sendable {
    let policy: Policy
    let admitter: Admitter
    let backend: any ContainerBackend
    /// The host's CPUs and memory (before the root container's limits).
    let host: Amount
    /// Whether the agent's root is the machine's: a container directly below
    /// it is top-level on the machine, where its scheduling latency may be
    /// chosen (a nested v1 container has its top-level container's class).
    let machineRoot: Bool

    init(policy: Policy, backend: any ContainerBackend, host: Amount, machineRoot: Bool) {
        self.policy = policy
        self.admitter = Admitter(policy: policy)
        self.backend = backend
        self.host = host
        self.machineRoot = machineRoot
    }

    /// Only the root's direct subcontainers commit: a nested container lives
    /// inside its parent's limits and commitment.
    static func isTopLevel(_ path: String) -> Bool {
        path.count > 1 && path.hasPrefix("/") && !path.dropFirst().contains("/")
    }

    /// Capacity: the root container's memory limit and CPU, else the host's.
    /// Read from the root at most every `capacityTtlMs` (a root's spec is a
    /// dozen file reads, and it changes rarely: reading it at every create
    /// was a tenth of a create's time through the agent); a change of the
    /// root's limits therefore counts within that time (README "Policy").
    func capacity() throws(LmctfyError) -> Amount {
        let now = MonotonicClock.milliseconds()
        if let c = capacityRead.locked({ $0 }), now &- c.atMs < Self.capacityTtlMs { return c.amount }
        let root = try backend.spec("/")
        let amount = policy.capacity(host: host, rootMemoryLimit: root.memory?.limit, rootMilliCpu: Policy.milliCpu(of: root))
        capacityRead.locked { $0 = (amount, now) }
        return amount
    }
    private let capacityRead = Mutexed<(amount: Amount, atMs: UInt64)?>(nil)
    static let capacityTtlMs: UInt64 = 1000

    /// What `spec` commits and in which tier.
    func commitment(of spec: ContainerSpec) -> (tier: Tier, amount: Amount) {
        let tier = policy.tier(of: spec)
        return (tier, Policy.committed(spec, tier: tier))
    }

    /// Brings the ledger in line with the containers below the root: new
    /// ones (the CLI's, or all of them after a restart) are read, gone ones
    /// forgotten, and those updated behind the agent's back (lmctfy update)
    /// commit what their spec says now.
    func sync() {
        syncListing()
        refreshUpdatedOutside()
    }

    private func syncListing() {
        let backend = self.backend
        let created = self.created.locked { $0 }
        admitter.sync(list: { try? backend.listContainers("/", recursive: false) }, readOrdered: { (name: String) -> (tier: String, amount: Amount, order: UInt64?)? in
            guard let spec = try? backend.spec(name) else { return nil }
            let c = commitment(of: spec)
            return (c.tier.name, c.amount, created?.when(name))
        })
    }

    /// Set by the agent when its watcher follows the machine: how many
    /// times containers appeared or went without it (Inventory). A create
    /// then lists the root again only when that moved since the last
    /// listing: the agent's own creates and destroys keep the ledger, so a
    /// listing per create was a directory read (and a spec read of every
    /// name not yet known) for nothing. A container made behind the agent's
    /// back counts from the moment the watcher has seen it (milliseconds).
    let outsideChanges = Mutexed<OutsideChanges?>(nil)
    private let syncedAt = Mutexed<UInt64?>(nil)

    final class OutsideChanges: Sendable {
        let count: @Sendable () -> UInt64
        /// The names whose spec changed without the agent since last asked.
        let takeUpdated: @Sendable () -> [String]
        init(_ count: @escaping @Sendable () -> UInt64, takeUpdated: @escaping @Sendable () -> [String] = { [] }) {
            self.count = count
            self.takeUpdated = takeUpdated
        }
    }

    /// `sync`, unless nothing appeared or went behind the agent's back
    /// since the last one (when the agent watches; otherwise always).
    func syncIfChanged() {
        guard let changes = outsideChanges.locked({ $0 }) else { return sync() }
        // Read before the listing: a change during it moves the count past
        // this value, so the next create lists again.
        let now = changes.count()
        if syncedAt.locked({ $0 }) == now { return }
        sync()
        syncedAt.locked { $0 = now }
    }

    /// A known container updated behind the agent's back (lmctfy update)
    /// commits what its spec says now: the ledger kept what it had been
    /// admitted with, and admitted past capacity. Every reader of the
    /// ledger does this (CheckAdmission, the report, an update): only a
    /// create did, so a dry run refused what the create then admitted.
    private func refreshUpdatedOutside() {
        guard let changes = outsideChanges.locked({ $0 }) else { return }
        for name in changes.takeUpdated() where Self.isTopLevel(name) {
            guard let spec = try? backend.spec(name) else { continue }
            let c = commitment(of: spec)
            admitter.refresh(name, tier: c.tier.name, amount: c.amount)
        }
    }

    /// A spec the watcher read (serialized): a top-level container whose
    /// spec commits other than the ledger says is counted as it is now.
    /// The first read after one of the agent's own changes only takes the
    /// spec as it is (no UPDATED), so a write behind the agent's back just
    /// after its create (lmctfy update within milliseconds) left the
    /// ledger at what the create had asked, for good: over-capacity prod
    /// containers were admitted (the policy probe: 6 of 6).
    func observedSpec(_ name: String, bytes: [UInt8]) {
        guard Self.isTopLevel(name), let current = admitter.commitment(name), !current.pending,
              let spec = try? ContainerSpec(serializedBytes: bytes) else { return }
        let now = commitment(of: spec)
        if current.tier != now.tier.name || current.amount != now.amount {
            admitter.refresh(name, tier: now.tier.name, amount: now.amount)
        }
    }

    /// When each container was made (the snapshots'), for the eviction
    /// order of containers found by a sync (after a restart); set by the
    /// agent when it keeps snapshots.
    let created = Mutexed<CreatedClock?>(nil)
    /// Tests only: called in a create's admission between its wait for
    /// another create of the name and its own admission, the window where
    /// a third caller's create can begin.
    let afterWait = Mutexed<(@Sendable (String) -> Void)?>(nil)

    final class CreatedClock: Sendable {
        let when: @Sendable (String) -> UInt64?
        init(_ when: @escaping @Sendable (String) -> UInt64?) { self.when = when }
    }

    /// The tier a Create names (or its spec says) and the spec it applies.
    func planCreate(path: String, spec: ContainerSpec, tier name: String?) throws(LmctfyError) -> (Tier, ContainerSpec) {
        guard let name else {
            // A spec that names a guaranteed tier by its eviction priority is
            // held to what --tier would hold it to: counted in prod without
            // a memory limit, it committed nothing and was never refused;
            // nor with a limit of 2^60 B or more, which counts as none (the
            // policy probe: prod full, such creates and imports were taken).
            let tier = policy.tier(of: spec)
            if Self.isTopLevel(path) { try Policy.checkGuaranteed(spec.memory?.limit, tier: tier) }
            return (tier, spec)
        }
        let tier = try policy.tier(named: name)
        // The tier's CPU share only where the parent isolates cpu (below a
        // root without it, a container cannot).
        let parent = path.lastIndex(of: "/").map { i in i == path.startIndex ? "/" : String(path[..<i]) } ?? "/"
        let cpuIsolated = machineRoot && Self.isTopLevel(path) ? true : ((try? backend.spec(parent))?.cpu != nil)
        return (tier, try policy.apply(tier, to: spec, topLevel: machineRoot && Self.isTopLevel(path), cpuIsolated: cpuIsolated))
    }

    /// Runs `body` (the create of `path` with `spec`) once admitted; admission
    /// and the reservation are one step, released if the create fails.
    /// Refused: RESOURCE_EXHAUSTED with the arithmetic, nothing made.
    /// `verb` names the call in a refusal ("Create", "ImportSnapshot").
    func admitCreate<T>(path: String, tier: Tier, spec: ContainerSpec, verb: String = "Create", _ body: () throws -> T) throws -> T {
        guard Self.isTopLevel(path) else { return try body() }
        syncIfChanged()
        let cap = try capacity()
        // A create of the same name under way (another caller's): this one
        // waits for it to end and is then decided as if it came after it:
        // ALREADY_EXISTS once it made it, admitted afresh if it failed.
        // The loser of two creates at once was ABORTED (a probe: 11 of 120).
        let waitUntil = MonotonicClock.milliseconds() + 10_000
        let amount = Policy.committed(spec, tier: tier)
        var decision: Decision?
        while decision == nil {
            while admitter.commitment(path)?.pending == true && MonotonicClock.milliseconds() < waitUntil { usleep(1000) }
            afterWait.locked { $0 }?(path)
            decision = admitter.admit(path, tier: tier, amount: amount, capacity: cap, new: true)
            if decision != nil { break }
            // A create of it under way again: another caller's, begun
            // after the one waited for had failed and before this one
            // looked (three or more at once; it was ABORTED at once, a
            // probe: 1 of 240). Waited for in turn, within the same time;
            // ABORTED only once that is up.
            guard let known = admitter.commitment(path), !known.pending else {
                guard MonotonicClock.milliseconds() < waitUntil else {
                    throw LmctfyError(.aborted, "Create of \"\(path)\" is still under way (another caller's)")
                }
                continue
            }
            // Known: the create fails on its own (ALREADY_EXISTS), unless
            // the entry is stale, its container destroyed meanwhile (a
            // destroy racing this create, the agent's or behind its back):
            // that entry goes and this create is admitted as any other. It
            // ran unchecked, and a 1 GiB prod container got in on 512 MiB
            // (the policy probe: 9 of 40 creates racing a destroy).
            guard (try? backend.spec(path)) != nil else {
                admitter.forget(path, only: known)
                guard MonotonicClock.milliseconds() < waitUntil else {
                    throw LmctfyError(.aborted, "Create of \"\(path)\": its name is still being settled (another caller's)")
                }
                continue
            }
            // A destroy that ends between that look and the create leaves
            // the create nothing to conflict with: what it made is counted
            // at once (the ledger's newest), never left out.
            let result = try body()
            admitter.record(path, tier: tier.name, amount: amount, newest: true)
            return result
        }
        guard let d = decision else { throw LmctfyError(.internal, "Create of \"\(path)\": no admission decision") }
        guard d.admitted else { throw LmctfyError(.resourceExhausted, "\(verb): \(d.message)") }
        do {
            let result = try body()
            admitter.confirm(path)
            return result
        } catch {
            admitter.release(path, previous: nil)
            throw error
        }
    }

    /// The spec an update leads to, for what the policy counts (memory
    /// limit, reservation, eviction priority, CPU limit): REPLACE is the new
    /// spec alone; DIFF is the current spec with what the update sets.
    static func merged(_ current: ContainerSpec, _ update: ContainerSpec, replace: Bool) -> ContainerSpec {
        if replace { return update }
        var m = current
        if let u = update.memory {
            var memory = m.memory ?? MemorySpec()
            if let v = u.limit { memory.limit = v }
            if let v = u.reservation { memory.reservation = v }
            if let v = u.evictionPriority { memory.evictionPriority = v }
            m.memory = memory
        }
        if let u = update.cpu, u.limit != nil || u.maxLimit != nil {
            var cpu = m.cpu ?? CpuSpec()
            if let v = u.limit { cpu.limit = v }
            // What a container commits of CPU: a diff raising it was
            // counted at the old value.
            if let v = u.maxLimit { cpu.maxLimit = v }
            m.cpu = cpu
        }
        return m
    }

    /// What an update of `path` commits: `spec` merged into `current`. A
    /// top-level container it leaves in a guaranteed tier needs a real
    /// memory limit (`Policy.checkGuaranteed`); a nested one lives inside
    /// its top-level container's commitment.
    func updateCommitment(path: String, current: ContainerSpec, spec: ContainerSpec,
                          replace: Bool) throws(LmctfyError) -> (tier: Tier, amount: Amount) {
        let merged = Self.merged(current, spec, replace: replace)
        let next = commitment(of: merged)
        if Self.isTopLevel(path) { try Policy.checkGuaranteed(merged.memory?.limit, tier: next.tier) }
        return next
    }

    /// Runs `body` (an update of `path`) once its new commitment is
    /// admitted; a failed update gets its old commitment back. `current`:
    /// the spec before the update, if the caller has read it (else read
    /// here).
    func admitUpdate<T>(path: String, current: ContainerSpec?, spec: ContainerSpec, replace: Bool,
                        _ body: () throws -> T) throws -> T {
        guard Self.isTopLevel(path) else { return try body() }
        sync()
        let next = try updateCommitment(path: path, current: try current ?? backend.spec(path), spec: spec, replace: replace)
        let previous = admitter.commitment(path)
        let d = admitter.admit(path, tier: next.tier, amount: next.amount, capacity: try capacity())
        guard d.admitted else { throw LmctfyError(.resourceExhausted, "Update: \(d.message)") }
        do {
            let result = try body()
            admitter.confirm(path)
            return result
        } catch {
            admitter.release(path, previous: previous)
            throw error
        }
    }

    /// What the ledger has for `path` now (a destroy passes it back to
    /// `destroyed`).
    func entry(_ path: String) -> Commitment? {
        Self.isTopLevel(path) ? admitter.commitment(path) : nil
    }

    /// A container destroyed through the agent: the entry it had when its
    /// destroy began (`was`) goes, not one a create admitted since (a
    /// create racing the destroy, after it: its entry was forgotten, and
    /// the container counted nothing).
    func destroyed(_ path: String, was: Commitment?) {
        if Self.isTopLevel(path), let was { admitter.forget(path, only: was) }
    }

    /// CheckAdmission: the decision a Create or Update would get now.
    func check(_ r: CheckAdmissionRequest) throws(LmctfyError) -> CheckAdmissionResponse {
        guard let name = r.name else { throw .invalidArgument("CheckAdmission names no container") }
        let path = try backend.resolve(name)
        let spec = r.spec ?? ContainerSpec()
        sync()
        let cap = try capacity()
        let tier: Tier
        let amount: Amount
        switch r.update {
        case nil, .updatePolicyUnspecified?:
            // What the create would refuse before any policy, a dry run
            // refuses the same way (it said "admitted" for a name that
            // exists, under a parent that does not, and for specs the
            // create refuses: a cpu max_limit of 1, a virtual host below
            // an agent's root_container, ...).
            try backend.checkCreate(path, spec: spec)
            let (t, applied) = try planCreate(path: path, spec: spec, tier: r.tier)
            (tier, amount) = (t, Policy.committed(applied, tier: t))
        case .updateDiff?, .updateReplace?:
            (tier, amount) = try updateCommitment(path: path, current: try backend.spec(path), spec: spec,
                                                  replace: r.update == .updateReplace)
        }
        let report = admitter.snapshot().report(capacity: cap)
        guard Self.isTopLevel(path) else {
            return CheckAdmissionResponse(
                admitted: true, tier: tier.name,
                message: "admitted \"\(path)\": a nested container lives inside the commitment of its top-level container",
                policy: report)
        }
        let d = admitter.check(path, tier: tier, amount: amount, capacity: cap)
        return CheckAdmissionResponse(admitted: d.admitted, tier: d.tier, message: d.message, policy: report)
    }

    /// MachineInfo's policy report.
    func report() -> PolicyReport? {
        sync()
        guard let cap = try? capacity() else { return nil }
        return admitter.snapshot().report(capacity: cap)
    }
}
