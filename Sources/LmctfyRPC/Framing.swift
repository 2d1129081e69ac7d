// Framing (PROTOCOL.md section 1): a 4-byte big-endian length, then one
// protobuf Frame. The decoder accepts bytes in any chunking and checks each
// length against the limit before it waits for, or keeps, the body.
import LmctfyProto

/// Why a byte stream is not a valid sequence of frames. Every case maps to a
/// goaway reason; none of them is ever a crash.
public enum FrameError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The stream ended inside a frame: `have` of `needed` bytes arrived.
    case truncated(needed: Int, have: Int)
    /// The length prefix exceeds the limit.
    case oversize(length: UInt32, max: UInt32)
    /// The body is not a protobuf Frame.
    case garbage(length: Int)
    /// The frame has no kind, or one this version does not define.
    case unknownKind(Int32?)

    public var description: String {
        switch self {
        case .truncated(let needed, let have):
            "stream ended inside a frame (\(have) of \(needed) bytes)"
        case .oversize(let length, let max):
            "frame of \(length) bytes exceeds the limit of \(max)"
        case .garbage(let length):
            "frame body of \(length) bytes is not a valid Frame"
        case .unknownKind(let kind):
            kind.map { "unknown frame kind \($0)" } ?? "frame has no kind"
        }
    }

    /// The goaway reason a session sends for this error: TRUNCATED,
    /// FRAME_TOO_LARGE, or MALFORMED_FRAME.
    public var goAwayReason: GoAwayReason {
        switch self {
        case .truncated: .goawayTruncated
        case .oversize: .goawayFrameTooLarge
        case .garbage, .unknownKind: .goawayMalformedFrame
        }
    }
}

/// Encoding and decoding of single frames (PROTOCOL.md section 1).
public enum FrameCodec {
    /// The length prefix's size: 4 bytes, big-endian.
    public static let headerBytes = 4
    /// The limit before the handshake is done (PROTOCOL.md section 1).
    public static let helloMaxFrameBytes: UInt32 = 65536

    /// The frame's bytes on the wire, length prefix included.
    public static func encode(_ frame: Frame) -> [UInt8] {
        var out: [UInt8] = []
        append(frame, to: &out)
        return out
    }

    /// Appends the frame's bytes (length prefix included) to `out`: the
    /// agent builds a whole batch of answers in one buffer this way.
    public static func append(_ frame: Frame, to out: inout [UInt8]) {
        if FrameWire.isPlain(frame) {
            FrameWire.append(frame, to: &out)
            return
        }
        out += encodeGeneric(frame)
    }

    /// Through the generic (DynamicMessage) codec: every frame, slower. The
    /// reference the fast path is checked against (tests, fuzzing).
    public static func encodeGeneric(_ frame: Frame) -> [UInt8] {
        let body: [UInt8]
        do {
            body = try frame.serializedBytes()
        } catch {
            // Frame has no required fields, so protobuf-c cannot refuse it.
            preconditionFailure("cannot encode a Frame: \(error)")
        }
        let n = UInt32(body.count)
        return [UInt8(n >> 24), UInt8(n >> 16 & 0xff), UInt8(n >> 8 & 0xff), UInt8(n & 0xff)] + body
    }

    /// Decodes one frame body (no length prefix).
    public static func decodeBody(_ body: ArraySlice<UInt8>) throws(FrameError) -> Frame {
        let result = body.withUnsafeBytes { raw -> Result<Frame, FrameError> in
            do throws(FrameError) { return .success(try FrameWire.decode(raw)) } catch { return .failure(error) }
        }
        return try result.get()
    }

    /// Through the generic (DynamicMessage) codec: the reference the fast
    /// path is checked against (tests, fuzzing).
    public static func decodeGeneric(_ body: [UInt8]) throws(FrameError) -> Frame {
        let result = body.withUnsafeBytes { raw -> Result<Frame, FrameError> in
            do throws(FrameError) { return .success(try decodeGeneric(raw)) } catch { return .failure(error) }
        }
        return try result.get()
    }

    /// Unknown enum numbers are kept by protobuf-c, so the kind is checked
    /// on the raw value.
    static func decodeGeneric(_ body: UnsafeRawBufferPointer) throws(FrameError) -> Frame {
        let dynamic: DynamicMessage
        do {
            dynamic = try DynamicMessage(serializedBytes: Array(body), as: Frame.protoDescriptor)
        } catch {
            throw .garbage(length: body.count)
        }
        guard case .enumValue(let raw)? = dynamic.values(1).last else { throw .unknownKind(nil) }
        guard let kind = FrameKind(rawValue: raw), kind != .frameKindUnspecified else {
            throw .unknownKind(raw)
        }
        var frame = Frame(dynamic: dynamic)
        frame.kind = kind
        return frame
    }
}

/// Turns bytes, fed in arbitrary chunks, into whole frames.
/// Not thread-safe: one connection's reader owns it.
public struct FrameDecoder: Sendable {
    /// The largest length prefix accepted. Changing it applies to the next
    /// frame whose header has not been checked yet.
    public var maxFrameBytes: UInt32
    private var buffer: [UInt8] = []
    private var start = 0

    /// An empty decoder accepting frames of up to `maxFrameBytes` bytes.
    public init(maxFrameBytes: UInt32) {
        self.maxFrameBytes = maxFrameBytes
    }

    /// Bytes received but not yet returned as frames.
    public var bufferedBytes: Int { buffer.count - start }

    /// The memory the buffer holds (its capacity): at most 64 KiB, or not
    /// much over what is buffered once a large frame is consumed.
    public var heldBytes: Int { buffer.capacity }

    /// Appends received bytes (any chunking); `next()` takes the frames out.
    public mutating func feed(_ bytes: some Collection<UInt8>) {
        buffer.append(contentsOf: bytes)
    }

    /// The next whole frame, or nil if more bytes are needed. After an error
    /// the decoder is unusable (the connection must close).
    public mutating func next() throws(FrameError) -> Frame? {
        guard let body = try nextBody() else { return nil }
        return try decode(body)
    }

    /// The next whole frame's body as offsets into the buffer (for
    /// `withBody`), or nil if more bytes are needed; same checks as `next()`.
    /// Call `decode(_:)` or `skip()` for it before the next one.
    mutating func nextBody() throws(FrameError) -> Range<Int>? {
        let available = buffer.count - start
        guard available >= FrameCodec.headerBytes else { return nil }
        let length = UInt32(buffer[start]) << 24 | UInt32(buffer[start + 1]) << 16
            | UInt32(buffer[start + 2]) << 8 | UInt32(buffer[start + 3])
        // The check comes before we wait for (and so buffer) the body.
        guard length <= maxFrameBytes else { throw .oversize(length: length, max: maxFrameBytes) }
        let total = FrameCodec.headerBytes + Int(length)
        guard available >= total else { return nil }
        return (start + FrameCodec.headerBytes)..<(start + total)
    }

    /// Reads the bytes of a body `nextBody` returned.
    func withBody<R>(_ body: Range<Int>, _ f: (UnsafeRawBufferPointer) -> R) -> R {
        buffer.withUnsafeBytes { f(UnsafeRawBufferPointer(rebasing: $0[body])) }
    }

    /// Consumes the body `nextBody` returned and decodes it.
    mutating func decode(_ body: Range<Int>) throws(FrameError) -> Frame {
        start = body.upperBound
        defer { compact() }
        return try FrameCodec.decodeBody(buffer[body])
    }

    /// Consumes the body `nextBody` returned without decoding it.
    mutating func skip(_ body: Range<Int>) {
        start = body.upperBound
        compact()
    }

    /// At end of stream: an error if a frame was left incomplete.
    public func finish() throws(FrameError) {
        let available = buffer.count - start
        guard available > 0 else { return }
        var needed = FrameCodec.headerBytes
        if available >= FrameCodec.headerBytes {
            let length = UInt32(buffer[start]) << 24 | UInt32(buffer[start + 1]) << 16
                | UInt32(buffer[start + 2]) << 8 | UInt32(buffer[start + 3])
            needed += Int(length)
        }
        throw .truncated(needed: needed, have: available)
    }

    /// Drops consumed bytes once they are most of the buffer, so memory stays
    /// bounded by one frame plus one read, and gives back a large frame's
    /// memory: the budget counts `bufferedBytes`, so a peer that sends a
    /// 4 MiB frame and then the next one a byte a minute must not keep
    /// 4 MiB (removeFirst keeps the capacity) while it is counted as one.
    private mutating func compact() {
        if start == buffer.count {
            buffer.removeAll(keepingCapacity: buffer.capacity <= 65536)
            start = 0
        } else if start > 65536 && start * 2 > buffer.count {
            buffer = Array(buffer[start...])
            start = 0
        }
    }
}
