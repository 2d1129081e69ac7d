// Test support: a subscriber's replay run to its end, as a daemon's loop
// runs it (a part a turn), into a connection that takes everything.
import LmctfyEvents
import LmctfyProto

extension EventHub {
    /// Subscribes `key` and returns what its replay sent, in order, up to
    /// and with the caught-up marker.
    func replayed(_ key: Key, _ r: SubscribeRequest, filter: EventFilter = EventFilter()) throws -> [SubscribeResponse] {
        try subscribe(key, r, filter: filter)
        var out: [SubscribeResponse] = []
        var turns = 0
        while replaying.contains(key) && turns < 100_000 {
            turns += 1
            _ = advance(deliver: { k, bytes in
                if k == key, let r = try? SubscribeResponse(serializedBytes: bytes) { out.append(r) }
                return true
            }, lagged: { _, _ in }, room: { _ in .max / 2 })
        }
        return out
    }
}
