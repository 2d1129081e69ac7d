// The containers the inventory knows (and whether each is frozen), indexed
// by tree (top-level container), so that a tree's names are found without
// a look at every other tree's, and an agent's change says which names it touched instead of
// being found by comparing the whole set before and after. At 2,000
// containers that comparison (a copy of the set, the union of both key
// sets) took 358 us of every create, destroy and pause, and the scan of
// every name for those under one 164 us (10,000: 2.4 ms and 1.2 ms).

/// Values by container name, indexed by tree (top-level container): the
/// names at and below one are found among their tree's names only. The
/// inventory's known containers and the snapshot keeper's records (whose
/// destroy of a tree scanned every record: ~160 us at 2,000 containers).
struct TreeIndexed<Value> {
    private var values: [String: Value] = [:]
    /// Each tree's names (the tree need not have a value itself: a name
    /// can be set before or after its parents).
    private var trees: [String: Set<String>] = [:]

    init() {}

    var count: Int { values.count }
    var keys: Dictionary<String, Value>.Keys { values.keys }

    subscript(name: String) -> Value? {
        get { values[name] }
        set {
            if let newValue {
                if values.updateValue(newValue, forKey: name) == nil { trees[Self.tree(name), default: []].insert(name) }
            } else if values.removeValue(forKey: name) != nil {
                let t = Self.tree(name)
                trees[t]?.remove(name)
                if trees[t]?.isEmpty == true { trees[t] = nil }
            }
        }
    }

    /// The names at `path` and below it, deepest (and, at one depth, last
    /// in order) first, as a sort in descending order gives.
    func atOrBelow(_ path: String) -> [String] {
        // (Nothing is "below" the root here: its names are each a tree.)
        guard path != "/" else { return values[path] != nil ? [path] : [] }
        let prefix = path + "/"
        return (trees[Self.tree(path)] ?? []).filter { $0 == path || $0.hasPrefix(prefix) }.sorted(by: >)
    }

    /// The top-level container `name` is in ("/" for the root).
    static func tree(_ name: String) -> String { Inventory.tree(name) }
}

extension TreeIndexed: Sendable where Value: Sendable {}

/// Used under the inventory's lock.
struct KnownContainers {
    private var frozen = TreeIndexed<Bool>()
    /// While `tracking`: each name set, with its value before the first set.
    private var edits: [String: Bool?]?

    init() {}

    init(_ listed: [String: Bool]) {
        for (name, value) in listed { self[name] = value }
    }

    var count: Int { frozen.count }
    var keys: Dictionary<String, Bool>.Keys { frozen.keys }

    subscript(name: String) -> Bool? {
        get { frozen[name] }
        set {
            if edits != nil && edits?[name] == nil { edits?[name] = .some(frozen[name]) }
            frozen[name] = newValue
        }
    }

    /// The known names at `path` and below it, deepest (and, at one
    /// depth, last in order) first, as a sort in descending order gives.
    func atOrBelow(_ path: String) -> [String] { frozen.atOrBelow(path) }

    /// The known names strictly below `path`, in the same order.
    func below(_ path: String) -> [String] { atOrBelow(path).filter { $0 != path } }

    /// Starts recording the names set (`stopTracking` returns them).
    mutating func startTracking() { edits = [:] }

    /// The names set since `startTracking`, each with its value before.
    mutating func stopTracking() -> [String: Bool?] {
        defer { edits = nil }
        return edits ?? [:]
    }
}
