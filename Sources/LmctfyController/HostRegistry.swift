// The controller's inventory of hosts: who registered, with which key,
// connected or since when not. A host name is bound to the key that first
// registered it. Kept in state_dir/hosts (a serialized ListHostsResponse,
// replaced atomically on every change), behind a small store interface that
// a distributed store could implement later. Loop thread only.
import Glibc
import LmctfyProto
import LmctfyRPC
import LmctfySystem

/// Where the inventory survives a restart.
protocol HostStore {
    func load() throws(LmctfyError) -> [HostInfo]
    func save(_ hosts: [HostInfo]) throws(LmctfyError)
    /// A new name-to-key binding, kept at once (cheaply: one append).
    func bind(_ name: String, keyId: String) throws(LmctfyError)
}

/// The inventory in one file, replaced atomically (once a second at most),
/// and the bindings made since in a file of appended lines beside it
/// ("name key-id"), emptied by each save. A killed controller loses
/// neither (the appends are in the page cache); the save is fsynced.
struct FileHostStore: HostStore {
    let path: String
    var bindingsPath: String { path + ".bindings" }

    func load() throws(LmctfyError) -> [HostInfo] {
        var hosts: [HostInfo] = []
        if Sys.exists(path) {
            let bytes: [UInt8]
            do { bytes = try Sys.readBytes(path) } catch { throw error.lmctfy(.dataLoss, "Reading the host inventory") }
            do {
                hosts = try ListHostsResponse(serializedBytes: bytes).hosts
            } catch {
                throw LmctfyError(.dataLoss, "The host inventory \(path) is damaged: \(error)")
            }
        }
        let known = Set(hosts.compactMap { $0.identity?.hostName })
        let text = (try? Sys.readFile(bindingsPath)) ?? ""
        // Only whole lines: a torn last one (a crash mid-append) could pass
        // for a binding to a key cut short, and lock its host out.
        for line in text.split(separator: "\n").dropLast(text.hasSuffix("\n") ? 0 : 1) {
            let parts = line.split(separator: " ")
            guard parts.count == 2, !known.contains(String(parts[0])) else { continue }  // saved since
            hosts.append(HostInfo(identity: HostIdentity(hostName: String(parts[0])), state: .hostDisconnected, keyId: String(parts[1])))
        }
        return hosts
    }

    func bind(_ name: String, keyId: String) throws(LmctfyError) {
        let fd = Glibc.open(bindingsPath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw SystemError("open", bindingsPath, errno).lmctfy(.internal, "Keeping the host binding") }
        defer { Glibc.close(fd) }
        // A torn last line (a crash mid-append) is cut off first: this one
        // would have joined it, and ended, it could pass for a binding to
        // a key cut short.
        var end = lseek(fd, 0, SEEK_END)
        if end > 0, let bytes = try? Sys.readBytes(bindingsPath), bytes.last != 0x0a {
            end = off_t(bytes.lastIndex(of: 0x0a).map { $0 + 1 } ?? 0)
            _ = ftruncate(fd, end)
        }
        do { try Sys.writeAll(fd, Array("\(name) \(keyId)\n".utf8)) } catch {
            // A line a full disk cut short is taken off again.
            if end >= 0 { _ = ftruncate(fd, end) }
            throw error.lmctfy(error.isNoSpace ? .resourceExhausted : .internal, "Keeping the host binding")
        }
    }

    func save(_ hosts: [HostInfo]) throws(LmctfyError) {
        let bytes: [UInt8]
        do { bytes = try ListHostsResponse(hosts: hosts).serializedBytes() } catch {
            throw LmctfyError(.internal, "Encoding the host inventory: \(error)")
        }
        do { try Sys.writeFileAtomically(path, bytes) } catch {
            throw error.lmctfy(.internal, "Writing the host inventory")
        }
        // Every binding is in the inventory now.
        _ = truncate(bindingsPath, 0)
    }
}

final class HostRegistry {
    private(set) var hosts: [String: HostInfo] = [:]
    /// The connection of each connected host, and the other way round.
    private(set) var links: [String: Int] = [:]
    private var hostOfLink: [Int: String] = [:]
    /// Changed since the last save (state, identity, counts): saved by
    /// `flush`, once a second. A new name-to-key binding is saved at once.
    private var dirty = false
    private let store: any HostStore
    /// The most hosts it holds (ControllerConfig.max_hosts): a new name
    /// beyond it is refused. One key could register any number of names,
    /// each kept for good (a probe: a thousand in half a minute).
    let maxHosts: Int
    static let defaultMaxHosts = 65536
    /// The most names one shared key may hold (ControllerConfig
    /// .max_hosts_per_key): a key taken from one agent registered any
    /// number of new hosts (a probe). Certificates ("x509") are limited by
    /// the names they hold instead (Controller.agentCalled).
    let maxHostsPerKey: Int
    /// When each name's live link was last replaced by a new registration
    /// (monotonic ms, the last 10 s), and until when a name claimed from
    /// two places at once is refused to any but its live link.
    private var replacedAt: [String: [UInt64]] = [:]
    private var contestedUntil: [String: UInt64] = [:]
    static let flapWindowMs: UInt64 = 10_000
    static let flapReplacements = 3
    static let contestedMs: UInt64 = 60_000

    init(store: any HostStore, maxHosts: Int = HostRegistry.defaultMaxHosts, maxHostsPerKey: Int = 1) throws(LmctfyError) {
        self.store = store
        self.maxHosts = maxHosts
        self.maxHostsPerKey = maxHostsPerKey
        for h in try store.load() {
            guard let name = h.identity?.hostName else { continue }
            var host = h
            // Nobody is connected to a controller that just started.
            if host.state == .hostConnected {
                host.state = .hostDisconnected
                host.stateSinceNs = WallClock.nanosecondsSinceEpoch()
            }
            hosts[name] = host
        }
    }

    /// The known host whose name is `name` but for ASCII case (nil: none).
    func knownHost(caseInsensitively name: String) -> String? {
        if hosts[name] != nil { return name }
        let folded = Self.folded(name)
        return hosts.keys.first { Self.folded($0) == folded }
    }

    private static func folded(_ name: String) -> [UInt8] {
        name.utf8.map { $0 >= 0x41 && $0 <= 0x5a ? $0 + 0x20 : $0 }
    }

    /// The key id of a host that registered with a certificate.
    static let certificateKeyId = "x509"

    /// An agent registers over connection `conn`, authenticated with `keyId`.
    /// PERMISSION_DENIED when the name is bound to another key; returns the
    /// connection the host had before (to be closed), if any.
    ///
    /// A live link is replaced when the host reconnects before the old link
    /// is seen to drop. Two agents running with one identity replace each
    /// other for ever (each registration re-reads the host's event log, so
    /// the fleet's log filled with copies): after 3 replacements within
    /// 10 s the name is contested, and for 60 s after the last attempt a
    /// registration that would replace its live link is refused
    /// (ALREADY_EXISTS, saying why); the live link keeps the name, and
    /// once it drops the next registration is taken. The agent of the live
    /// link registering again (`sameAgent`) always replaces it.
    func register(_ identity: HostIdentity, keyId: String, conn: Int,
                  nowMs: UInt64 = MonotonicClock.milliseconds()) throws(LmctfyError) -> Int? {
        guard let name = identity.hostName, !name.isEmpty else {
            throw .invalidArgument("Register needs a host_name")
        }
        guard HostName.isValid(name) else {
            throw .invalidArgument("Register: host_name \(HostName.quoted(name)) must be \(HostName.rule)")
        }
        if let problem = HostIdentityRules.problem(identity) {
            throw .invalidArgument("Register of \(name): \(problem)")
        }
        // DNS names ignore case, and so does a certificate's check: a name
        // that differs from a known host's only in case is that host's. (A
        // token naming no host enrolled "Probehost1" beside "probehost1",
        // and its certificate passed as probehost1's; the TLS probe.)
        if let known = knownHost(caseInsensitively: name), known != name {
            throw LmctfyError(.permissionDenied, "host \(name) differs from the known host \(known) only in case (DNS names ignore case): "
                              + "register as \(known), or remove it first")
        }
        if let bound = hosts[name]?.keyId, bound != keyId {
            throw LmctfyError(.permissionDenied, "host \(name) is registered with another key")
        }
        let previous = links[name]
        // The agent of the live link dialling again (the same boot of the
        // same machine: its link died without the controller seeing it, a
        // half-open connection after a NAT reset) is no second agent: it
        // was refused as one after its third redial within 10 s, and for as
        // long as the dead link took to time out (a probe: 126 s).
        if let previous, previous != conn, !Self.sameAgent(hosts[name]?.identity, identity) {
            try checkNotContested(name, now: nowMs)
        }
        if hosts[name] == nil {
            guard hosts.count < maxHosts else {
                throw LmctfyError(.resourceExhausted, "Register of \(name): the controller knows \(hosts.count) host\(hosts.count == 1 ? "" : "s"), its max_hosts: "
                                  + "remove hosts that are gone (lmctl --controller ... hosts --remove NAME) or raise max_hosts")
            }
            if keyId != Self.certificateKeyId {
                let held = hosts.values.compactMap { $0.keyId == keyId ? $0.identity?.hostName : nil }.sorted()
                if held.count >= maxHostsPerKey {
                    let shown = held.prefix(3).joined(separator: ", ") + (held.count > 3 ? ", ..." : "")
                    throw LmctfyError(.permissionDenied, "Register of \(name): key \(keyId) has registered \(held.count) host\(held.count == 1 ? "" : "s") "
                                      + "already (\(shown); max_hosts_per_key \(maxHostsPerKey)): give each agent its own key, "
                                      + "remove a host that is gone (lmctl --controller ... hosts --remove NAME), or raise max_hosts_per_key")
                }
            }
            // The binding is kept before the host is admitted.
            try store.bind(name, keyId: keyId)
        }
        let now = WallClock.nanosecondsSinceEpoch()
        hosts[name] = HostInfo(identity: identity, state: .hostConnected, stateSinceNs: now, lastHeardNs: now, keyId: keyId,
                               containerCount: identity.containerCount)
        if let previous { hostOfLink[previous] = nil }
        links[name] = conn
        hostOfLink[conn] = name
        dirty = true
        return previous == conn ? nil : previous
    }

    /// Whether two registrations are of one agent process: the same boot
    /// id (the agent's event log's, new at each start) on the same machine.
    static func sameAgent(_ a: HostIdentity?, _ b: HostIdentity) -> Bool {
        guard let a, let boot = b.bootId, !boot.isEmpty else { return false }
        return a.bootId == boot && a.machineId == b.machineId
    }

    private func checkNotContested(_ name: String, now: UInt64) throws(LmctfyError) {
        if let until = contestedUntil[name], until > now {
            contestedUntil[name] = now + Self.contestedMs
            throw LmctfyError(.alreadyExists, "host \(name) is connected over another link, and two agents seem to use its "
                              + "identity: refused until the other link drops or \(Self.contestedMs / 1000) s pass without another try")
        }
        var times = (replacedAt[name] ?? []).filter { now - $0 < Self.flapWindowMs }
        times.append(now)
        replacedAt[name] = times
        if times.count >= Self.flapReplacements {
            replacedAt[name] = nil
            contestedUntil[name] = now + Self.contestedMs
            throw LmctfyError(.alreadyExists, "host \(name) replaced its own live link \(times.count) times in "
                              + "\(Self.flapWindowMs / 1000) s: two agents seem to use its identity; refused while the other link lives")
        }
    }

    /// The connection `conn` is gone: its host (if it registered over it)
    /// is disconnected from now.
    func disconnected(conn: Int) -> String? {
        guard let name = hostOfLink.removeValue(forKey: conn) else { return nil }
        links[name] = nil
        hosts[name]?.state = .hostDisconnected
        hosts[name]?.stateSinceNs = WallClock.nanosecondsSinceEpoch()
        dirty = true
        return name
    }

    /// Takes a disconnected host out of the inventory, with its name's
    /// binding to its key, saved at once (a restart must not bring it
    /// back). Returns it as it was.
    func remove(_ name: String) throws(LmctfyError) -> HostInfo {
        guard let host = hosts[name] else { throw .notFound("no host named \(name)") }
        guard links[name] == nil else {
            throw .failedPrecondition("host \(name) is connected: stop its agent first (it would register again at once)")
        }
        hosts[name] = nil
        replacedAt[name] = nil
        contestedUntil[name] = nil
        do throws(LmctfyError) { try save() } catch {
            hosts[name] = host
            throw error
        }
        return host
    }

    /// The host's container count, as its agent just listed them.
    func setContainerCount(_ name: String, _ count: Int) {
        guard hosts[name] != nil, hosts[name]?.containerCount != UInt32(count) else { return }
        hosts[name]?.containerCount = UInt32(count)
        dirty = true
    }

    /// Something arrived from the host on `conn`.
    func heard(conn: Int) {
        guard let name = hostOfLink[conn] else { return }
        hosts[name]?.lastHeardNs = WallClock.nanosecondsSinceEpoch()
    }

    /// The hosts whose labels match `selector` ("k=v,k2=v2"), sorted by name.
    func list(selector: String?) throws(LmctfyError) -> [HostInfo] {
        let wanted = try Self.parse(selector)
        return byName.filter { Self.matches($0, wanted) }
    }

    /// One page of `list`: at most `size` hosts after `token` by name, fewer
    /// when more would take over `maxBytes` serialized, and the token of
    /// the next page (nil: none follows).
    func page(selector: String?, after token: String?, size: Int, maxBytes: Int) throws(LmctfyError) -> (hosts: [HostInfo], next: String?) {
        let wanted = try Self.parse(selector)
        var hosts: [HostInfo] = []
        var bytes = 0
        for h in byName where token.map({ (h.identity?.hostName ?? "") > $0 }) ?? true && Self.matches(h, wanted) {
            // A repeated field's entry: its bytes, a tag and a length.
            let cost = ((try? h.serializedBytes().count) ?? 0) + 6
            if hosts.count == size || (!hosts.isEmpty && bytes + cost > maxBytes) {
                return (hosts, hosts.last?.identity?.hostName)
            }
            hosts.append(h)
            bytes += cost
        }
        return (hosts, nil)
    }

    /// Whether a host's labels have every pair of a parsed selector.
    static func matches(_ h: HostInfo, _ wanted: [String: String]) -> Bool {
        let labels = Dictionary((h.identity?.label ?? []).map { ($0.key ?? "", $0.value ?? "") }, uniquingKeysWith: { a, _ in a })
        return wanted.allSatisfy { labels[$0.key] == $0.value }
    }

    static func parse(_ selector: String?) throws(LmctfyError) -> [String: String] {
        guard let selector, !selector.isEmpty else { return [:] }
        var out: [String: String] = [:]
        for pair in selector.split(separator: ",") {
            let kv = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard kv.count == 2, !kv[0].isEmpty else {
                throw .invalidArgument("a selector is key=value pairs separated by commas, not \"\(selector)\"")
            }
            // zone=a,zone=b matched hosts in zone b only.
            guard out.updateValue(String(kv[1]), forKey: String(kv[0])) == nil else {
                throw .invalidArgument("selector \"\(selector)\" gives \"\(kv[0])\" twice: a host has one value for a label")
            }
        }
        return out
    }

    /// Saves what changed since the last save (the controller's tick, once a
    /// second, and at stop).
    func flush() {
        guard dirty else { return }
        // A write that fails (a full disk) keeps the controller serving and
        // the inventory dirty: the next flush, a second later, tries again
        // (it was marked clean, and stayed a change behind on disk until
        // the next change).
        try? save()
    }

    /// Writes the whole inventory now.
    private func save() throws(LmctfyError) {
        try store.save(byName)
        dirty = false
    }

    /// Every host, sorted by name.
    private var byName: [HostInfo] { hosts.keys.sorted().compactMap { hosts[$0] } }
}
