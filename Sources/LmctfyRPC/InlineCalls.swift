// Unary calls answered inside `Session.receive`, without a Frame, an action,
// a stream-table entry or an allocation per call (issue #10's profile: the
// per-frame Swift values, dictionaries and actions were most of the agent's
// user time for a Ping). Only the plainest REQUEST frames take this lane:
// fields 1 to 5 (kind, stream_id, method, payload, deadline_ms), each at most
// once, with the wire types the schema gives, varints of at most five bytes.
// Anything else -- a duplicate, an unknown field, a host, an odd varint --
// leaves the lane and takes the protobuf-c path, whose rules are then the
// only ones that apply, so both lanes decode every frame they accept alike
// (InlineCallTests and the session fuzz target compare them). The answer is
// the one the normal path writes, byte for byte: a RESPONSE carrying an OK
// status (version 2 and later) or RESPONSE then STATUS (version 1).

/// The owner of a session answers some methods at once, on the thread that
/// received them. An answer is always OK; anything else (a refusal, an
/// error, a request it cannot read) is left to the normal path by returning
/// false, which then produces the same outcome it always has.
public protocol InlineResponder: AnyObject {
    /// If `method` (its UTF-8 bytes) is answered inline and `request` (the
    /// payload) is one this responder can read: append the response message
    /// to `response` and return true. Otherwise leave `response` as it was
    /// and return false.
    func answerInline(method: UnsafeRawBufferPointer, request: UnsafeRawBufferPointer,
                      response: inout [UInt8]) -> Bool
}

/// What the plain-request scanner found in a frame body.
struct PlainRequest {
    var streamId: UInt32
    /// Offsets into the body.
    var method: Range<Int>
    var payload: Range<Int>
}

enum InlineWire {
    static let kindRequest: UInt32 = 2
    static let kindResponse: UInt8 = 3
    static let kindStatus: UInt8 = 4

    /// A varint of at most five bytes whose value fits 32 bits, at `i`;
    /// nil otherwise (the caller then leaves the lane).
    @inline(__always)
    static func varint32(_ p: UnsafeRawBufferPointer, _ i: inout Int) -> UInt32? {
        var value: UInt64 = 0
        var shift: UInt64 = 0
        while i < p.count, shift < 35 {
            let b = p[i]
            i += 1
            value |= UInt64(b & 0x7f) << shift
            if b & 0x80 == 0 { return value <= UInt64(UInt32.max) ? UInt32(value) : nil }
            shift += 7
        }
        return nil
    }

    /// The body as a plain REQUEST, or nil if it is anything else.
    static func scanRequest(_ p: UnsafeRawBufferPointer) -> PlainRequest? {
        var i = 0
        var seen: UInt8 = 0
        var kind: UInt32 = 0
        var id: UInt32 = 0
        var method = 0..<0
        var payload = 0..<0
        while i < p.count {
            guard let tag = varint32(p, &i) else { return nil }
            let field = tag >> 3
            let wireType = tag & 7
            guard field >= 1, field <= 5 else { return nil }
            let bit = UInt8(1) << UInt8(field)
            guard seen & bit == 0 else { return nil }
            seen |= bit
            switch field {
            case 1, 2, 5:
                guard wireType == 0, let v = varint32(p, &i) else { return nil }
                if field == 1 { kind = v } else if field == 2 { id = v }
            default:
                guard wireType == 2, let n = varint32(p, &i), Int(n) <= p.count - i else { return nil }
                let range = i..<(i + Int(n))
                i += Int(n)
                if field == 3 { method = range } else { payload = range }
            }
        }
        // Kind, stream id and a method are required; a payload may be absent.
        guard kind == kindRequest, seen & 0b1110 == 0b1110, !method.isEmpty else { return nil }
        return PlainRequest(streamId: id, method: method, payload: payload)
    }

    @inline(__always)
    static func appendVarint(_ v: UInt32, to out: inout [UInt8]) {
        var v = v
        while v >= 0x80 {
            out.append(UInt8(truncatingIfNeeded: v) | 0x80)
            v >>= 7
        }
        out.append(UInt8(v))
    }

    @inline(__always)
    static func varintSize(_ v: UInt32) -> Int {
        v < 1 << 7 ? 1 : v < 1 << 14 ? 2 : v < 1 << 21 ? 3 : v < 1 << 28 ? 4 : 5
    }

    /// A length prefix to fill in, the kind, and the stream id's tag
    /// (element by element: a literal array would be allocated each time).
    @inline(__always)
    static func appendHead(kind: UInt8, to out: inout [UInt8]) {
        out.append(0); out.append(0); out.append(0); out.append(0)
        out.append(0x08); out.append(kind); out.append(0x10)
    }

    /// RpcStatus{code: 0} as Frame field 6.
    @inline(__always)
    static func appendOK(to out: inout [UInt8]) {
        out.append(0x32); out.append(0x02); out.append(0x08); out.append(0x00)
    }

    @inline(__always)
    static func appendLength(_ n: Int, at start: Int, to out: inout [UInt8]) {
        let n = UInt32(n)
        out[start] = UInt8(n >> 24)
        out[start + 1] = UInt8(n >> 16 & 0xff)
        out[start + 2] = UInt8(n >> 8 & 0xff)
        out[start + 3] = UInt8(n & 0xff)
    }

    /// Appends the OK end of call `id` whose response message is `message`:
    /// RESPONSE carrying the status (version 2 on, `combined`), or RESPONSE
    /// then STATUS (version 1). The bytes are protobuf-c's for the same
    /// Frame (fields in number order). Returns false, appending nothing,
    /// when the RESPONSE would exceed `maxFrameBytes` (the normal path then
    /// says so).
    static func appendResponse(id: UInt32, message: [UInt8], combined: Bool, maxFrameBytes: UInt32,
                               to out: inout [UInt8]) -> Bool {
        guard message.count <= Int(UInt32.max) - 64 else { return false }
        let bodyHead = 2 + 1 + varintSize(id) + 1 + varintSize(UInt32(message.count))
        let bodyCount = bodyHead + message.count + (combined ? 4 : 0)
        guard bodyCount <= Int(maxFrameBytes) else { return false }
        let start = out.count
        appendHead(kind: kindResponse, to: &out)
        appendLength(bodyCount, at: start, to: &out)
        appendVarint(id, to: &out)
        out.append(0x22)
        appendVarint(UInt32(message.count), to: &out)
        out.append(contentsOf: message)
        // RpcStatus{code: 0} as field 6: 0x32 0x02 0x08 0x00.
        if combined {
            appendOK(to: &out)
        } else {
            let status = out.count
            appendHead(kind: kindStatus, to: &out)
            appendVarint(id, to: &out)
            appendOK(to: &out)
            appendLength(out.count - status - 4, at: status, to: &out)
        }
        return true
    }
}

/// Ping's messages by hand: PingRequest and PingResponse are both
/// `optional bytes data = 1`, and the answer echoes the data (an absent
/// field becomes an empty one, as the dispatcher's handler does). A request
/// with anything but field 1 is left to the normal path.
public enum PingWire {
    /// Appends the PingResponse for `request`; false (nothing appended) if
    /// the request is not made of field-1 bytes entries only.
    public static func answer(_ request: UnsafeRawBufferPointer, to out: inout [UInt8]) -> Bool {
        var i = 0
        var data = 0..<0
        while i < request.count {
            guard InlineWire.varint32(request, &i) == 0x0a, let n = InlineWire.varint32(request, &i),
                  Int(n) <= request.count - i else { return false }
            data = i..<(i + Int(n))  // the last one wins
            i += Int(n)
        }
        out.append(0x0a)
        InlineWire.appendVarint(UInt32(data.count), to: &out)
        out.append(contentsOf: UnsafeRawBufferPointer(rebasing: request[data]))
        return true
    }
}
