// The inventory's store on its own (no network): a new name-to-key binding
// is kept at once, before any save (as after a SIGKILL), the rest at the
// next save; a save folds the bindings in.
import Glibc
@testable import LmctfyController
import LmctfyEvents
import LmctfyProto
import LmctfySystem
import LmctfyTestSupport
import Testing

/// A fleet log in a directory of its own (the caller removes it).
private func scratchFleet() throws -> (FleetEvents, String) {
    let dir = "/tmp/lmctfy-fleetevents-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    try Sys.mkdir(dir, mode: 0o700)
    return (try FleetEvents(stateDir: dir, capacity: 100), dir)
}

/// Event `seq` of a host's boot `boot`, as its agent sends it.
private func hostEvent(_ boot: String, _ seq: UInt64) -> SubscribeResponse {
    SubscribeResponse(event: ContainerEvent(bootId: boot, sequence: seq, container: "/a", kind: .containerEventCreated))
}

/// Each host's key, as `store` loads them.
private func keys(_ store: FileHostStore) throws -> [String: String] {
    Dictionary(uniqueKeysWithValues: try store.load().map { ($0.identity?.hostName ?? "", $0.keyId ?? "") })
}

@Suite struct HostRegistryTests {
    /// max_hosts_per_key: a shared key's names are bounded, the refusal
    /// says what to do; another key, and certificates (bounded by the names
    /// they hold), are not held to it.
    @Test func aSharedKeysNamesAreBounded() throws {
        let dir = "/tmp/lmctfy-hostregistry-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try Sys.mkdir(dir, mode: 0o700)
        defer { _ = removeTree(dir) }
        let registry = try HostRegistry(store: FileHostStore(path: dir + "/hosts"), maxHostsPerKey: 2)
        _ = try registry.register(HostIdentity(hostName: "a"), keyId: "k", conn: 1)
        _ = try registry.register(HostIdentity(hostName: "b"), keyId: "k", conn: 2)
        do {
            _ = try registry.register(HostIdentity(hostName: "c"), keyId: "k", conn: 3)
            Issue.record("a third name of key k was taken")
        } catch {
            #expect(error.code == .permissionDenied && error.message.contains("key k has registered 2 hosts already (a, b; max_hosts_per_key 2)"),
                    "\(error)")
        }
        _ = try registry.register(HostIdentity(hostName: "c"), keyId: "other", conn: 4)
        // Certificates are bounded by their names instead.
        for (i, name) in ["x", "y", "z"].enumerated() {
            _ = try registry.register(HostIdentity(hostName: name), keyId: HostRegistry.certificateKeyId, conn: 10 + i)
        }
    }

    @Test func aBindingSurvivesARestartWithoutASave() throws {
        let dir = "/tmp/lmctfy-hostregistry-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try Sys.mkdir(dir, mode: 0o700)
        defer { _ = removeTree(dir) }
        let store = FileHostStore(path: dir + "/hosts")
        let first = try HostRegistry(store: store)
        _ = try first.register(HostIdentity(hostName: "alpha", cpus: 2), keyId: "key-a", conn: 1)
        // No flush: the controller is killed here.
        let second = try HostRegistry(store: store)
        #expect(second.hosts["alpha"]?.keyId == "key-a" && second.hosts["alpha"]?.state == .hostDisconnected)
        #expect { _ = try second.register(HostIdentity(hostName: "alpha"), keyId: "key-b", conn: 2) }
            throws: { ($0 as? LmctfyError)?.code == .permissionDenied }
        // The rightful key is welcome; a save folds the binding file in.
        _ = try second.register(HostIdentity(hostName: "alpha", cpus: 4), keyId: "key-a", conn: 3)
        second.flush()
        #expect(((try? Sys.readFile(dir + "/hosts.bindings")) ?? "").isEmpty)
        let third = try HostRegistry(store: store)
        #expect(third.hosts["alpha"]?.keyId == "key-a" && third.hosts["alpha"]?.identity?.cpus == 4)
        #expect(third.hosts.count == 1)
    }

    /// A name that differs from a known host's only in case is that host's
    /// (DNS names, and a certificate's check, ignore case): refused, with
    /// any key. "Probehost1" registered beside "probehost1" with a
    /// certificate enrolled for it that passed as probehost1's (the TLS
    /// probe).
    @Test func aNameDifferingOnlyInCaseIsTheKnownHosts() throws {
        let dir = "/tmp/lmctfy-hostregistry-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try Sys.mkdir(dir, mode: 0o700)
        defer { _ = removeTree(dir) }
        let registry = try HostRegistry(store: FileHostStore(path: dir + "/hosts"))
        _ = try registry.register(HostIdentity(hostName: "probehost1"), keyId: "key-a", conn: 1)
        for (name, key) in [("Probehost1", "key-b"), ("PROBEHOST1", "key-a")] {
            #expect { _ = try registry.register(HostIdentity(hostName: name), keyId: key, conn: 2) }
                throws: { ($0 as? LmctfyError)?.code == .permissionDenied && "\($0)".contains("only in case") }
        }
        #expect(registry.knownHost(caseInsensitively: "ProbeHost1") == "probehost1")
        #expect(registry.knownHost(caseInsensitively: "probehost2") == nil)
        #expect(registry.hosts.count == 1)
    }

    /// A binding appended after a torn line (a crash mid-append, or an
    /// append a full disk cut short) joined it, and both were lost at the
    /// next load; the torn line alone, if it split in two, passed for a
    /// binding to a key cut short.
    @Test func aBindingAfterATornLineIsKept() throws {
        let dir = "/tmp/lmctfy-hostregistry-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try Sys.mkdir(dir, mode: 0o700)
        defer { _ = removeTree(dir) }
        let store = FileHostStore(path: dir + "/hosts")
        try store.bind("alpha", keyId: "key-a")
        let fd = open(store.bindingsPath, O_WRONLY | O_APPEND)
        let torn = Array("gamma ke".utf8)
        #expect(fd >= 0 && write(fd, torn, torn.count) == torn.count)
        close(fd)
        // Not a binding of gamma to "ke", which would lock gamma out.
        #expect(try keys(store) == ["alpha": "key-a"])
        try store.bind("beta", keyId: "key-b")
        #expect(try keys(store) == ["alpha": "key-a", "beta": "key-b"])
    }

    /// On a full disk a binding is refused (RESOURCE_EXHAUSTED) and what it
    /// could write of its line is taken off again.
    @Test(.enabled(if: getuid() == 0, "mounting a tmpfs needs root"))
    func aBindingTheDiskCannotTakeLeavesNoTornLine() throws {
        try FullDisk.around("bindings") { disk in
            let store = FileHostStore(path: disk.path + "/hosts")
            try store.bind("alpha", keyId: "key-a")
            try disk.fill()
            // Longer than what is left of the file's last page.
            let long = String(repeating: "k", count: 5000)
            #expect { try store.bind("beta", keyId: long) } throws: { ($0 as? LmctfyError)?.code == .resourceExhausted }
            disk.free()
            try store.bind("gamma", keyId: "key-g")
            #expect(try keys(store) == ["alpha": "key-a", "gamma": "key-g"])
        }
    }

    /// An inventory save that fails (a full disk) is tried again at the
    /// next flush: it was marked clean, and the file stayed behind.
    @Test(.enabled(if: getuid() == 0, "mounting a tmpfs needs root"))
    func aSaveThatFailedIsTriedAgain() throws {
        try FullDisk.around("inventory") { disk in
            let store = FileHostStore(path: disk.path + "/hosts")
            let registry = try HostRegistry(store: store)
            _ = try registry.register(HostIdentity(hostName: "alpha", cpus: 2), keyId: "key-a", conn: 1)
            registry.flush()
            try disk.fill()
            _ = try registry.register(HostIdentity(hostName: "alpha", cpus: 8), keyId: "key-a", conn: 2)
            registry.flush()
            disk.free()
            registry.flush()
            #expect(try store.load().first?.identity?.cpus == 8)
        }
    }

    /// Two agents with one identity replaced each other's link for ever
    /// (a probe: 55 registrations in 8 s, the fleet log full of copies).
    /// A reconnect that replaces a live link is fine now and then; the
    /// third within 10 s makes the name contested, and while the live link
    /// lives a replacing registration is refused (60 s after the last try).
    @Test func twoAgentsWithOneIdentityStopReplacingEachOther() throws {
        let dir = "/tmp/lmctfy-hostregistry-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try Sys.mkdir(dir, mode: 0o700)
        defer { _ = removeTree(dir) }
        let r = try HostRegistry(store: FileHostStore(path: dir + "/hosts"))
        let id = HostIdentity(hostName: "gamma")
        #expect(try r.register(id, keyId: "k", conn: 1, nowMs: 1000) == nil)
        #expect(try r.register(id, keyId: "k", conn: 2, nowMs: 1100) == 1)
        #expect(try r.register(id, keyId: "k", conn: 3, nowMs: 1200) == 2)
        func refused(_ conn: Int, _ now: UInt64) {
            #expect { _ = try r.register(id, keyId: "k", conn: conn, nowMs: now) }
                throws: { ($0 as? LmctfyError)?.code == .alreadyExists && "\($0)".contains("two agents seem to use its identity") }
        }
        refused(4, 1300)
        #expect(r.links["gamma"] == 3, "the live link keeps the name")
        refused(5, 50_000)    // still contested: each try extends it
        refused(6, 100_000)
        // Once the live link drops, the next registration is taken.
        #expect(r.disconnected(conn: 3) == "gamma")
        #expect(try r.register(id, keyId: "k", conn: 7, nowMs: 100_100) == nil)
        // Replacements far apart never make it contested.
        #expect(try r.register(id, keyId: "k", conn: 8, nowMs: 200_000) == 7)
        #expect(try r.register(id, keyId: "k", conn: 9, nowMs: 220_000) == 8)
        #expect(try r.register(id, keyId: "k", conn: 10, nowMs: 240_000) == 9)
    }

    /// One agent dialling again over and over (its links dying half-open,
    /// unseen: the same boot of the same machine) replaces its live link
    /// every time: it was taken for a second agent at its third redial and
    /// refused until the dead link timed out (a probe). Another boot still
    /// counts.
    @Test func oneAgentRedialingIsNeverTakenForTwo() throws {
        let dir = "/tmp/lmctfy-hostregistry-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try Sys.mkdir(dir, mode: 0o700)
        defer { _ = removeTree(dir) }
        let r = try HostRegistry(store: FileHostStore(path: dir + "/hosts"))
        let first = HostIdentity(hostName: "gamma", machineId: "m1", bootId: "boot-1")
        #expect(try r.register(first, keyId: "k", conn: 1, nowMs: 1000) == nil)
        for conn in 2...8 {
            #expect(try r.register(first, keyId: "k", conn: conn, nowMs: 1000 + UInt64(conn) * 100) == conn - 1)
        }
        // Another agent process with the identity (another boot, or the
        // same boot id on another machine): counted as before.
        let second = HostIdentity(hostName: "gamma", machineId: "m1", bootId: "boot-2")
        let elsewhere = HostIdentity(hostName: "gamma", machineId: "m2", bootId: "boot-1")
        #expect(try r.register(second, keyId: "k", conn: 9, nowMs: 2000) == 8)
        #expect(try r.register(elsewhere, keyId: "k", conn: 10, nowMs: 2100) == 9)
        #expect { _ = try r.register(second, keyId: "k", conn: 11, nowMs: 2200) }
            throws: { ($0 as? LmctfyError)?.code == .alreadyExists }
        // The live link's own agent is still taken while contested.
        #expect(try r.register(elsewhere, keyId: "k", conn: 12, nowMs: 2300) == 10)
    }

    @Test func aDamagedInventoryIsRefusedNotGuessed() throws {
        let dir = "/tmp/lmctfy-hostregistry-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try Sys.mkdir(dir, mode: 0o700)
        defer { _ = removeTree(dir) }
        try Sys.createFile(dir + "/hosts", "\u{ff}\u{ff}garbage", mode: 0o600)
        #expect { _ = try HostRegistry(store: FileHostStore(path: dir + "/hosts")) }
            throws: { ($0 as? LmctfyError)?.code == .dataLoss }
    }
}

/// The fleet log on its own: an event above what it keeps (a hostile or
/// broken agent's, up to the link's 4 MiB frames) is stored as a HOST_GAP
/// naming it, and the events after it survive a restart. (It was stored
/// whole: the journal's reader stopped at it, and at each restart every
/// later event was lost without a gap; a probe.)
@Suite struct FleetEventsTests {
    @Test func anOversizeEventIsAGapAndWhatFollowsSurvivesARestart() throws {
        let dir = "/tmp/lmctfy-fleetevents-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try Sys.mkdir(dir, mode: 0o700)
        defer { _ = removeTree(dir) }
        func event(_ seq: UInt64, _ container: String) -> SubscribeResponse {
            SubscribeResponse(event: ContainerEvent(bootId: "hb", sequence: seq, container: container, kind: .containerEventCreated))
        }
        let first = try FleetEvents(stateDir: dir, capacity: 100)
        #expect(first.take(event(1, "/a"), from: "h", bytes: 100) != nil)
        let big = "/" + String(repeating: "x", count: 1_100_000)
        #expect(first.take(event(2, big), from: "h", bytes: 1_100_040) == nil)
        #expect(first.take(event(2, big), from: "h", bytes: 1_100_040) == nil, "sent again: a duplicate")
        #expect(first.take(event(3, "/c"), from: "h", bytes: 100) != nil)
        func kinds(_ f: FleetEvents) -> [String] {
            f.log.range(after: 0, upTo: f.log.newest).events.map { e in
                e.kind == .containerEventHostGap ? "gap@\(e.hostSequence ?? 0)" : (e.container ?? "")
            }
        }
        #expect(kinds(first) == ["/a", "gap@3", "/c"])
        let gap = first.log.range(after: 0, upTo: first.log.newest).events[1]
        #expect(gap.reason?.contains("event 2 of boot hb was 1100040 bytes") == true, "\(gap.reason ?? "")")
        first.flushCursors()
        let second = try FleetEvents(stateDir: dir, capacity: 100)
        #expect(kinds(second) == ["/a", "gap@3", "/c"])
        #expect(second.subscribeRequest(for: "h", credit: nil).afterSequence == 3)
    }

    /// A removed host whose agent registers again with the same boot (its
    /// link came back) resumes after what the log has: its kept events
    /// were stored a second time, as new. Another boot under the name
    /// (another machine, or the agent started again) starts afresh, and
    /// only the latest removals are kept aside.
    @Test func aRemovedHostOfTheSameBootResumesFromItsCursor() throws {
        let dir = "/tmp/lmctfy-fleetevents-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try Sys.mkdir(dir, mode: 0o700)
        defer { _ = removeTree(dir) }
        let fleet = try FleetEvents(stateDir: dir, capacity: 100)
        func event(_ seq: UInt64) -> SubscribeResponse {
            SubscribeResponse(event: ContainerEvent(bootId: "hb", sequence: seq, container: "/a", kind: .containerEventCreated))
        }
        for seq: UInt64 in 1...3 { #expect(fleet.take(event(seq), from: "h", bytes: 100) != nil) }
        fleet.forget("h")
        #expect(fleet.subscribeRequest(for: "h", credit: nil).bootId == nil, "a removed host's cursor is not in use")
        fleet.readmit("h", bootId: "hb")
        #expect(fleet.subscribeRequest(for: "h", credit: nil).bootId == "hb")
        #expect(fleet.subscribeRequest(for: "h", credit: nil).afterSequence == 3)
        #expect(fleet.take(event(2), from: "h", bytes: 100) == nil, "stored again")
        #expect(fleet.take(event(4), from: "h", bytes: 100) != nil)

        fleet.forget("h")
        fleet.readmit("h", bootId: "another")
        #expect(fleet.subscribeRequest(for: "h", credit: nil).bootId == nil)
        #expect(fleet.subscribeRequest(for: "h", credit: nil).afterSequence == 0)

        // Bounded: the oldest removal goes first.
        for i in 0...FleetEvents.maxRetired {
            #expect(fleet.take(SubscribeResponse(event: ContainerEvent(bootId: "b\(i)", sequence: 1, container: "/a", kind: .containerEventCreated)),
                               from: "host\(i)", bytes: 100) != nil)
            fleet.forget("host\(i)")
        }
        fleet.readmit("host0", bootId: "b0")
        #expect(fleet.subscribeRequest(for: "host0", credit: nil).bootId == nil, "the oldest removal was kept past the bound")
        let last = FleetEvents.maxRetired
        fleet.readmit("host\(last)", bootId: "b\(last)")
        #expect(fleet.subscribeRequest(for: "host\(last)", credit: nil).afterSequence == 1)
    }

    /// An agent that no longer knows the cursor's boot replays all it
    /// keeps behind a gap, from boots whose events are stored already:
    /// they are not stored again (each was, as new, at every such restart;
    /// the policy probe); what the log had not stored of them is.
    @Test func aReplayOfBootsStoredAlreadyStoresOnlyWhatIsNew() throws {
        let (fleet, dir) = try scratchFleet()
        defer { _ = removeTree(dir) }
        for seq: UInt64 in 1...3 { #expect(fleet.take(hostEvent("b1", seq), from: "h", bytes: 100) != nil) }
        _ = fleet.take(SubscribeResponse(gap: EventGap(requestedBootId: "b1", afterSequence: 3, bootId: "b2", firstSequence: 1, bootEnded: true)), from: "h")
        for seq: UInt64 in 1...2 { #expect(fleet.take(hostEvent("b2", seq), from: "h", bytes: 100) != nil) }
        let before = fleet.log.newest
        // b3 (killed, unknown to b4): everything kept, from b1 on.
        _ = fleet.take(SubscribeResponse(gap: EventGap(requestedBootId: "b3", afterSequence: 0, bootId: "b1", firstSequence: 1)), from: "h")
        for seq: UInt64 in 1...3 { #expect(fleet.take(hostEvent("b1", seq), from: "h", bytes: 100) == nil, "b1:\(seq) stored twice") }
        #expect(fleet.take(hostEvent("b1", 4), from: "h", bytes: 100) != nil, "one the log had not stored")
        _ = fleet.take(SubscribeResponse(gap: EventGap(requestedBootId: "b1", afterSequence: 4, bootId: "b2", firstSequence: 1, bootEnded: true)), from: "h")
        for seq: UInt64 in 1...2 { #expect(fleet.take(hostEvent("b2", seq), from: "h", bytes: 100) == nil, "b2:\(seq) stored twice") }
        #expect(fleet.take(hostEvent("b2", 3), from: "h", bytes: 100) != nil)
        let added = fleet.log.range(after: before, upTo: fleet.log.newest).events
        #expect(added.map { $0.kind == .containerEventHostGap ? "gap" : "\($0.hostBootId ?? ""):\($0.hostSequence ?? 0)" } == ["gap", "b1:4", "b2:3"])
    }

    /// A second agent using a host's identity for a moment (a cloned
    /// machine: its own boot) moves the host's cursor to its boot; the
    /// host's real agent, registering again, resumes from its own boot's
    /// cursor: nothing it kept is stored twice. It was resubscribed from
    /// its oldest kept event (a false gap, then its history again; the
    /// fleet probe).
    @Test func anEarlierBootOfAHostResumesFromItsOwnCursor() throws {
        let (fleet, dir) = try scratchFleet()
        defer { _ = removeTree(dir) }
        for seq: UInt64 in 1...5 { #expect(fleet.take(hostEvent("real", seq), from: "h", bytes: 100) != nil) }
        // The clone: a gap (it has no "real" boot), then its own events.
        fleet.readmit("h", bootId: "clone")
        #expect(fleet.subscribeRequest(for: "h", credit: nil).bootId == "real")
        _ = fleet.take(SubscribeResponse(gap: EventGap(requestedBootId: "real", afterSequence: 5, bootId: "clone", firstSequence: 1)), from: "h")
        #expect(fleet.take(hostEvent("clone", 1), from: "h", bytes: 100) != nil)
        // The real agent again: from its own cursor.
        fleet.readmit("h", bootId: "real")
        let r = fleet.subscribeRequest(for: "h", credit: nil)
        #expect(r.bootId == "real" && r.afterSequence == 5, "\(r)")
        for seq: UInt64 in 1...5 { #expect(fleet.take(hostEvent("real", seq), from: "h", bytes: 100) == nil, "\(seq) stored twice") }
        #expect(fleet.take(hostEvent("real", 6), from: "h", bytes: 100) != nil)
        // A boot never seen: as before, from the cursor it has.
        fleet.readmit("h", bootId: "new")
        #expect(fleet.subscribeRequest(for: "h", credit: nil).bootId == "real")
    }

    /// The cursors kept aside (an earlier boot's, a removed host's) are
    /// saved with the cursors: a controller restarted while a clone held a
    /// host's name, or after a removal, had lost them, and the real agent's
    /// kept events were stored a second time.
    @Test func keptAsideCursorsOutliveARestart() throws {
        let dir = "/tmp/lmctfy-fleetevents-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try Sys.mkdir(dir, mode: 0o700)
        defer { _ = removeTree(dir) }
        func event(_ boot: String, _ seq: UInt64) -> SubscribeResponse {
            SubscribeResponse(event: ContainerEvent(bootId: boot, sequence: seq, container: "/a", kind: .containerEventCreated))
        }
        do {
            let fleet = try FleetEvents(stateDir: dir, capacity: 100)
            for seq: UInt64 in 1...5 { #expect(fleet.take(hostEvent("real", seq), from: "h", bytes: 100) != nil) }
            fleet.readmit("h", bootId: "clone")
            _ = fleet.take(SubscribeResponse(gap: EventGap(requestedBootId: "real", afterSequence: 5, bootId: "clone", firstSequence: 1)), from: "h")
            #expect(fleet.take(hostEvent("clone", 1), from: "h", bytes: 100) != nil)
            for seq: UInt64 in 1...3 { #expect(fleet.take(hostEvent("gone", seq), from: "g", bytes: 100) != nil) }
            fleet.forget("g")
            fleet.flushCursors()
        }
        let again = try FleetEvents(stateDir: dir, capacity: 100)
        #expect(again.subscribeRequest(for: "h", credit: nil).bootId == "clone")
        again.readmit("h", bootId: "real")
        let r = again.subscribeRequest(for: "h", credit: nil)
        #expect(r.bootId == "real" && r.afterSequence == 5, "\(r)")
        for seq: UInt64 in 1...5 { #expect(again.take(event("real", seq), from: "h", bytes: 100) == nil, "\(seq) stored twice") }
        #expect(again.subscribeRequest(for: "g", credit: nil).bootId == nil, "a removed host's cursor is not in use")
        again.readmit("g", bootId: "gone")
        let g = again.subscribeRequest(for: "g", credit: nil)
        #expect(g.bootId == "gone" && g.afterSequence == 3, "\(g)")
        // Both taken back into use: a second restart has them as cursors.
        again.flushCursors()
        let third = try FleetEvents(stateDir: dir, capacity: 100)
        #expect(third.subscribeRequest(for: "g", credit: nil).afterSequence == 3)
        #expect(third.subscribeRequest(for: "h", credit: nil).bootId == "real")
    }

    /// A host's gap reaches every fleet subscriber of that host, whatever
    /// container or kinds it asked for (one watching `--kind OOM` was never
    /// told that a host's events, OOMs among them, were lost).
    @Test func aHostsGapIsFilteredByItsHostOnly() {
        var filter = EventFilter()
        filter.container = "/jobs"
        filter.recursive = true
        filter.kinds = [.containerEventOom]
        var gap = ContainerEvent()
        gap.kind = .containerEventHostGap
        gap.host = "h"
        #expect(filter.matches(gap))
        filter.hosts = ["h"]
        #expect(filter.matches(gap))
        filter.hosts = ["other"]
        #expect(!filter.matches(gap))
        var created = ContainerEvent(container: "/jobs/a", kind: .containerEventCreated)
        created.host = "other"
        #expect(!filter.matches(created), "other events as before")
    }

    /// A gap above what the log keeps (its boot id 2 MB) is a HOST_GAP that
    /// says so, not the gap as it came: stored whole, the journal refused
    /// its record, stopped there, and the cursors stayed unwritten until
    /// the journal gave up. The journal keeps up, the cursor moves with
    /// the events after it.
    @Test func anOversizeGapIsStoredAsAGapThatSaysSo() throws {
        let dir = "/tmp/lmctfy-fleetevents-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try Sys.mkdir(dir, mode: 0o700)
        defer { _ = removeTree(dir) }
        let fleet = try FleetEvents(stateDir: dir, capacity: 100)
        let boot = String(repeating: "b", count: 2_000_000)
        let gap = SubscribeResponse(gap: EventGap(requestedBootId: "hb", afterSequence: 0, bootId: boot, firstSequence: 5))
        #expect(fleet.take(gap, from: "h", bytes: 2_000_040) == nil)
        #expect(fleet.take(SubscribeResponse(event: ContainerEvent(bootId: "hb", sequence: 5, container: "/a", kind: .containerEventCreated)),
                           from: "h", bytes: 100) != nil)
        let stored = fleet.log.range(after: 0, upTo: fleet.log.newest).events
        #expect(stored.count == 2 && stored[0].kind == .containerEventHostGap && stored[0].hostBootId == nil)
        #expect(stored[0].reason?.contains("a gap of 2000040 bytes") == true, "\(stored[0].reason ?? "")")
        #expect(fleet.flushCursors().caughtUp, "the journal has both")
        #expect(fleet.subscribeRequest(for: "h", credit: nil).afterSequence == 5)
    }
}
