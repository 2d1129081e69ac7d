// What a replay needs of a serialized ContainerEvent, read off the wire
// without decoding it: its boot and sequence (where the subscriber resumes)
// and its container, kind and host (the filter's). Decoding every event
// kept (a STATS sample's ContainerStats among them) and encoding again each
// one sent was most of a replay's cost: ~30 us an event of the agent's
// loop in a debug build, a replay filtered down to nothing costing as much
// as one of everything (a probe).
import LmctfyProto

struct PackedEventView: Equatable {
    var bootId: String?
    var sequence: UInt64?
    var container: String?
    /// nil: absent, or a value this build does not know (as decoded).
    var kind: ContainerEventKind?
    var host: String?

    /// nil when the bytes are not a message this reads (a group, a field
    /// cut short): the caller decodes them as before. A field given twice
    /// takes its last value, as a decoder does.
    init?(_ bytes: [UInt8]) {
        var i = 0
        let n = bytes.count
        func varint() -> UInt64? {
            var value: UInt64 = 0
            var shift: UInt64 = 0
            while i < n && shift < 64 {
                let b = bytes[i]
                i += 1
                value |= UInt64(b & 0x7f) << shift
                if b & 0x80 == 0 { return value }
                shift += 7
            }
            return nil
        }
        func string() -> String? {
            guard let length = varint(), length <= UInt64(n - i) else { return nil }
            let s = String(decoding: bytes[i..<(i + Int(length))], as: UTF8.self)
            i += Int(length)
            return s
        }
        while i < n {
            guard let tag = varint() else { return nil }
            let field = tag >> 3
            switch (field, tag & 7) {
            case (1, 2): guard let s = string() else { return nil }; bootId = s
            case (2, 0): guard let v = varint() else { return nil }; sequence = v
            case (4, 2): guard let s = string() else { return nil }; container = s
            case (5, 0): guard let v = varint() else { return nil }; kind = ContainerEventKind(rawValue: Int32(truncatingIfNeeded: v))
            case (12, 2): guard let s = string() else { return nil }; host = s
            case (_, 0): guard varint() != nil else { return nil }
            case (_, 1): guard n - i >= 8 else { return nil }; i += 8
            case (_, 5): guard n - i >= 4 else { return nil }; i += 4
            case (_, 2):
                guard let length = varint(), length <= UInt64(n - i) else { return nil }
                i += Int(length)
            default: return nil
            }
        }
    }

    /// The SubscribeResponse carrying the event `bytes`: field 1, as
    /// `SubscribeResponse(event:).serializedBytes()` writes it.
    static func subscribeResponse(_ bytes: [UInt8]) -> [UInt8] {
        var out: [UInt8] = [0x0a]
        out.reserveCapacity(bytes.count + 6)
        var length = UInt64(bytes.count)
        while length >= 0x80 {
            out.append(UInt8(truncatingIfNeeded: length) | 0x80)
            length >>= 7
        }
        out.append(UInt8(length))
        out += bytes
        return out
    }
}
