// The fleet's event log (issue #12): every connected host's events, taken
// from its agent's Subscribe stream, stored once in one log of the
// controller's own (an id kept in state_dir, so its sequence numbers go on
// across restarts), journaled in state_dir/fleet, and served to schedulers
// by the same hub, resume, gap and credit rules as an agent's (PROTOCOL.md
// section 9). Each host's last stored (boot id, sequence) is its cursor: a
// link that comes back (or a controller that restarts) subscribes again
// from there, and anything at or before it is a duplicate and dropped.
import Glibc
import LmctfyEvents
import LmctfyProto
import LmctfyRPC
import LmctfySystem

final class FleetEvents {
    struct Cursor: Equatable {
        var boot: String
        var sequence: UInt64
    }

    let log: EventLog
    let hub: EventHub
    private(set) var cursors: [String: Cursor] = [:]
    private let cursorsPath: String
    private var cursorsDirty = false
    /// What the journal found damaged when opened (for the controller's log).
    private(set) var journalDamage: String?

    /// Opens (or starts) the fleet log in `stateDir`.
    init(stateDir: String, capacity: Int, subscriberBuffer: Int = 1024) throws(LmctfyError) {
        let idPath = stateDir + "/fleet-id"
        var id = (try? Sys.readFile(idPath))?.trimmingWhitespace ?? ""
        if id.count != 32 {
            id = Sys.hex(Crypto.randomBytes(16))
            do { try Sys.writeFileAtomically(idPath, Array((id + "\n").utf8)) } catch {
                throw error.lmctfy(.failedPrecondition, "Writing the fleet log's id")
            }
        }
        log = EventLog(capacity: capacity, bootId: id, maxBytes: Self.maxLogBytes)
        journalDamage = try log.attachJournal(directory: stateDir + "/fleet")
        try log.reserveSequences(path: stateDir + "/fleet-sequence")
        hub = EventHub(log: log, buffer: subscriberBuffer)
        cursorsPath = stateDir + "/fleet-cursors"
        // Cursors: what was written at the last flush, then what the journal
        // holds after it (the journal is written before the cursors, so
        // what it has after the flush is newer). What it has from before is
        // in the cursors already, which can be further on: STATS samples are
        // not journaled, and a cursor taken back to the journal's last event
        // fetched them again after a restart (a subscriber resuming at the
        // controller got them twice).
        var flushedAt: UInt64 = 0
        if let bytes = try? Sys.readBytes(cursorsPath), let saved = try? FleetCursors(serializedBytes: bytes) {
            func each(_ list: [FleetCursor], _ body: (String, Cursor) -> Void) {
                for c in list {
                    if let host = c.host, let boot = c.bootId, let seq = c.sequence { body(host, Cursor(boot: boot, sequence: seq)) }
                }
            }
            each(saved.cursor) { host, c in cursors[host] = c }
            each(saved.earlier) { host, c in earlier[host, default: []].append(c) }
            each(saved.retired) { host, c in
                if retired.updateValue(c, forKey: host) == nil { retiredOrder.append(host) }
            }
            flushedAt = saved.fleetSequence ?? 0
        }
        for e in log.range(after: flushedAt, upTo: log.newest).events {
            guard let host = e.host, let boot = e.hostBootId, let seq = e.hostSequence else { continue }
            // A gap names the first sequence the host still had: not stored
            // yet (`take` puts the cursor before it).
            let gap = e.kind == .containerEventHostGap
            setCursor(host, Cursor(boot: boot, sequence: gap ? max(1, seq) - 1 : seq))
        }
        cursorsDirty = false
    }

    /// The request that resumes a host's events after its cursor (all
    /// the agent keeps, for a host never heard of).
    func subscribeRequest(for host: String, credit: UInt32?) -> SubscribeRequest {
        var r = SubscribeRequest()
        if let c = cursors[host] {
            r.bootId = c.boot
            r.afterSequence = c.sequence
        } else {
            r.afterSequence = 0
        }
        r.credit = credit
        return r
    }

    /// The largest response of a host's stream whose event is stored: what
    /// an agent sends is a few hundred bytes (a container name is at most
    /// 3,072), so this only stops a hostile or broken peer. A larger event
    /// (up to the link's 4 MiB frames) outgrew the journal's records, and
    /// its restart read lost it and every event after it, silently; it cost
    /// the log's memory by the megabyte and ended every subscriber whose
    /// frames are the default 64 KiB. It is stored as a HOST_GAP instead.
    static let maxEventBytes = 60 << 10

    /// What the fleet log keeps at most, in memory (of events, and again of
    /// STATS samples) and on disk, whatever `event_log_capacity` says: the
    /// oldest go first. 65,536 events of 60 KiB from a hostile agent held
    /// 3.75 GiB; the fleet's ordinary events, a few hundred bytes each,
    /// stay far below it.
    static let maxLogBytes = 256 << 20

    /// One response of a host's stream (`bytes` long): an event is stored
    /// unless it is at or before the host's cursor; a gap is stored as a
    /// HOST_GAP event, and so is an event above `maxEventBytes`. Returns
    /// the event stored (nil: a duplicate, a gap or a marker).
    @discardableResult
    func take(_ r: SubscribeResponse, from host: String, bytes: Int = 0) -> ContainerEvent? {
        if let e = r.event, let boot = e.bootId, let seq = e.sequence {
            if let c = cursors[host], c.boot == boot, seq <= c.sequence { return nil }  // already stored
            if bytes > Self.maxEventBytes {
                var gap = ContainerEvent()
                gap.kind = .containerEventHostGap
                gap.host = host
                gap.hostBootId = boot
                gap.hostSequence = seq == UInt64.max ? seq : seq + 1
                gap.reason = "event \(seq) of boot \(boot) was \(bytes) bytes, above the \(Self.maxEventBytes) the fleet log keeps: not stored"
                setCursor(host, Cursor(boot: boot, sequence: seq))
                log.append(gap)
                return nil
            }
            var fleet = e
            fleet.host = host
            fleet.hostBootId = boot
            fleet.hostSequence = seq
            setCursor(host, Cursor(boot: boot, sequence: seq))
            return log.append(fleet)
        } else if let g = r.gap {
            // An agent restart that lost nothing (it stopped cleanly, and
            // the fleet log has its boot through its last event): no
            // HOST_GAP, the host's stream goes on in its new boot. (Every
            // restart of every agent was a HOST_GAP, and consumers took
            // each for a loss; a soak probe.)
            if g.bootEnded == true, bytes <= Self.maxEventBytes, let boot = g.bootId, let first = g.firstSequence,
               let c = cursors[host], c.boot == g.requestedBootId, c.sequence >= (g.afterSequence ?? UInt64.max) {
                setCursor(host, resumed(host, boot: boot, before: first))
                return nil
            }
            // The agent no longer has what followed the cursor: said once,
            // then the host's stream goes on from the gap's first sequence.
            var e = ContainerEvent()
            e.kind = .containerEventHostGap
            e.host = host
            if bytes > Self.maxEventBytes {
                // Not as it came (its boot id unchecked, a record the
                // journal refuses stopped the journal and the cursors for
                // good); the cursor moves with the events that follow.
                e.reason = "a gap of \(bytes) bytes, above the \(Self.maxEventBytes) the fleet log keeps: its boot and sequence are not stored"
                log.append(e)
                return nil
            }
            e.hostBootId = g.bootId
            e.hostSequence = g.firstSequence
            log.append(e)
            if let boot = g.bootId, let first = g.firstSequence {
                setCursor(host, resumed(host, boot: boot, before: first))
            }
        }
        return nil
    }

    /// Where a host's stream goes on after a gap that leads to `boot`'s
    /// events from `first`: before `first`, or after what was stored of
    /// that boot already, if more. An agent that no longer knows the
    /// cursor's boot replays everything it keeps, from boots whose events
    /// are stored here (`earlier`): they were stored a second time, as new
    /// events under their old `host_event` ids, at every such restart (the
    /// policy probe).
    private func resumed(_ host: String, boot: String, before first: UInt64) -> Cursor {
        let stored = earlier[host]?.last { $0.boot == boot }?.sequence ?? 0
        return Cursor(boot: boot, sequence: max(first > 0 ? first - 1 : 0, stored))
    }

    /// Takes a removed host's cursor out of use, kept aside: a host
    /// registering under its name later resumes from it only if its agent's
    /// events are of the same boot (`readmit`), so that the same agent
    /// removed and registered again does not have its kept events stored a
    /// second time (each came into the fleet log again, as new); another
    /// machine, or the agent started again, starts afresh. At most
    /// `maxRetired` are kept aside, the oldest removal going first; they
    /// are saved with the cursors (a controller restarted meanwhile had
    /// lost them).
    func forget(_ host: String) {
        earlier[host] = nil
        guard let cursor = cursors.removeValue(forKey: host) else { return }
        cursorsDirty = true
        if retired.updateValue(cursor, forKey: host) == nil { retiredOrder.append(host) }
        while retiredOrder.count > Self.maxRetired {
            retired.removeValue(forKey: retiredOrder.removeFirst())
        }
    }

    /// A host registering: a cursor kept aside at its removal is its
    /// cursor again when its agent's events are of the same boot
    /// (`bootId`, its registration's); otherwise it is dropped. And an
    /// agent of one of the host's earlier boots (`earlier`) resumes from
    /// that boot's cursor.
    func readmit(_ host: String, bootId: String?) {
        if let cursor = retired.removeValue(forKey: host) {
            retiredOrder.removeAll { $0 == host }
            cursorsDirty = true
            if cursors[host] == nil, let bootId, cursor.boot == bootId {
                cursors[host] = cursor
                cursorsDirty = true
            }
        }
        if let bootId, let c = cursors[host], c.boot != bootId, let i = earlier[host]?.lastIndex(where: { $0.boot == bootId }) {
            let back = earlier[host]!.remove(at: i)
            setCursor(host, back)
        }
    }

    /// Each host's cursors of the boots before its current one (the latest
    /// `maxEarlierBoots`), saved with the cursors: an agent of one of those boots that
    /// registers again resumes from its own (`readmit`). A second agent
    /// using a host's identity for a moment (a cloned machine, a copied
    /// config) moved the cursor to its boot, and the host's real agent,
    /// back, had every event it kept stored a second time after a false gap
    /// (a probe).
    private var earlier: [String: [Cursor]] = [:]
    static let maxEarlierBoots = 8

    /// Moves `host`'s cursor; the one of another boot it had is kept in
    /// `earlier`.
    private func setCursor(_ host: String, _ c: Cursor) {
        if let old = cursors[host], old.boot != c.boot {
            var list = (earlier[host] ?? []).filter { $0.boot != old.boot && $0.boot != c.boot }
            list.append(old)
            if list.count > Self.maxEarlierBoots { list.removeFirst(list.count - Self.maxEarlierBoots) }
            earlier[host] = list
        }
        cursors[host] = c
        cursorsDirty = true
    }

    /// Cursors of removed hosts kept aside (`forget`), and their order.
    private var retired: [String: Cursor] = [:]
    private var retiredOrder: [String] = []
    static let maxRetired = 4096

    /// Writes the cursors if they moved (a timer calls it): what scrolled
    /// out of the journal still has its cursor after a restart. Not while
    /// the journal is behind (a full disk): a cursor must not pass an
    /// event the journal does not have, or a restart would neither find it
    /// on disk nor fetch it from its agent again. Returns how far behind
    /// the journal is (`startAgain`: see `EventLog.flushJournal`).
    @discardableResult
    func flushCursors(startAgain: ((@escaping @Sendable () -> Void) -> Void)? = nil) -> EventLog.JournalState {
        let journal = log.flushJournal(startAgain: startAgain)
        guard cursorsDirty, journal.caughtUp else { return journal }
        cursorsDirty = false
        func saved(_ host: String, _ c: Cursor) -> FleetCursor { FleetCursor(host: host, bootId: c.boot, sequence: c.sequence) }
        let saved = FleetCursors(cursor: cursors.keys.sorted().map { saved($0, cursors[$0]!) },
                                 fleetSequence: log.newest,
                                 earlier: earlier.keys.sorted().flatMap { host in earlier[host]!.map { saved(host, $0) } },
                                 retired: retiredOrder.compactMap { host in retired[host].map { saved(host, $0) } })
        if let bytes = try? saved.serializedBytes() {
            try? Sys.writeFileAtomically(cursorsPath, bytes, durable: false)
        }
        return journal
    }
}
