// The controller's inventory of hosts: who registered, with which key,
// connected or since when not. A host name is bound to the key that first
// registered it. Kept in state_dir/hosts (a serialized ListHostsResponse,
// replaced atomically on every change), behind a small store interface that
// a distributed store could implement later. Loop thread only.
import LmctfyProto
import LmctfySystem

/// Where the inventory survives a restart.
protocol HostStore {
    func load() throws(LmctfyError) -> [HostInfo]
    func save(_ hosts: [HostInfo]) throws(LmctfyError)
}

/// The inventory in one file, replaced atomically.
struct FileHostStore: HostStore {
    let path: String

    func load() throws(LmctfyError) -> [HostInfo] {
        guard Sys.exists(path) else { return [] }
        let bytes: [UInt8]
        do { bytes = try Sys.readBytes(path) } catch { throw error.lmctfy(.dataLoss, "Reading the host inventory") }
        do {
            return try ListHostsResponse(serializedBytes: bytes).hosts
        } catch {
            throw LmctfyError(.dataLoss, "The host inventory \(path) is damaged: \(error)")
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
    }
}

final class HostRegistry {
    private(set) var hosts: [String: HostInfo] = [:]
    /// The connection of each connected host, and the other way round.
    private(set) var links: [String: Int] = [:]
    private var hostOfLink: [Int: String] = [:]
    private let store: any HostStore

    init(store: any HostStore) throws(LmctfyError) {
        self.store = store
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

    /// An agent registers over connection `conn`, authenticated with `keyId`.
    /// PERMISSION_DENIED when the name is bound to another key; returns the
    /// connection the host had before (to be closed), if any.
    func register(_ identity: HostIdentity, keyId: String, conn: Int) throws(LmctfyError) -> Int? {
        guard let name = identity.hostName, !name.isEmpty else {
            throw .invalidArgument("Register needs a host_name")
        }
        if let bound = hosts[name]?.keyId, bound != keyId {
            throw LmctfyError(.permissionDenied, "host \(name) is registered with another key")
        }
        let now = WallClock.nanosecondsSinceEpoch()
        let previous = links[name]
        hosts[name] = HostInfo(identity: identity, state: .hostConnected, stateSinceNs: now, lastHeardNs: now, keyId: keyId,
                               containerCount: identity.containerCount)
        if let previous { hostOfLink[previous] = nil }
        links[name] = conn
        hostOfLink[conn] = name
        persist()
        return previous == conn ? nil : previous
    }

    /// The connection `conn` is gone: its host (if it registered over it)
    /// is disconnected from now.
    func disconnected(conn: Int) -> String? {
        guard let name = hostOfLink.removeValue(forKey: conn) else { return nil }
        links[name] = nil
        hosts[name]?.state = .hostDisconnected
        hosts[name]?.stateSinceNs = WallClock.nanosecondsSinceEpoch()
        persist()
        return name
    }

    /// The host's container count, as its agent just listed them.
    func setContainerCount(_ name: String, _ count: Int) {
        guard hosts[name] != nil, hosts[name]?.containerCount != UInt32(count) else { return }
        hosts[name]?.containerCount = UInt32(count)
        persist()
    }

    /// Something arrived from the host on `conn`.
    func heard(conn: Int) {
        guard let name = hostOfLink[conn] else { return }
        hosts[name]?.lastHeardNs = WallClock.nanosecondsSinceEpoch()
    }

    /// The hosts whose labels match `selector` ("k=v,k2=v2"), sorted by name.
    func list(selector: String?) throws(LmctfyError) -> [HostInfo] {
        let wanted = try Self.parse(selector)
        return hosts.keys.sorted().compactMap { hosts[$0] }.filter { Self.matches($0, wanted) }
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
            out[String(kv[0])] = String(kv[1])
        }
        return out
    }

    private func persist() {
        // A write that fails keeps the controller serving; the inventory on
        // disk is then one change behind (said in the log by the caller).
        try? store.save(hosts.keys.sorted().compactMap { hosts[$0] })
    }
}
