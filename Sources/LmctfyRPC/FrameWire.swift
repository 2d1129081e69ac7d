// The frame codec on the RPC hot path: frames go straight between the Swift
// `Frame` and protobuf-c's generated Frame struct, without the generic
// DynamicMessage layer (profiling showed that layer's allocations and
// retain/release traffic were most of the agent's time per call). Frames
// with a `hello` or `goaway` (the handshake and the close, a few per
// connection), or a terminal's `window` (a resize), still take the generic
// path, which knows every message.
// Still protobuf-c on both sides: the bytes are what the generic codec gives
// (`FrameWireTests` and the frames fuzz target compare the two).
import CProtobufC
import LmctfyProto
import LmctfyWire

enum FrameWire {
    typealias CFrame = Containers__Lmctfy__Agent__Frame
    typealias CStatus = Containers__Lmctfy__Agent__RpcStatus

    /// Whether `frame` can take the fast path (no handshake, goaway or
    /// window part).
    @inline(__always)
    static func isPlain(_ frame: Frame) -> Bool { frame.hello == nil && frame.goaway == nil && frame.window == nil }

    /// Appends `frame` (length prefix, then body) to `out`. Plain frames only.
    static func append(_ frame: Frame, to out: inout [UInt8]) {
        var f = CFrame()
        containers__lmctfy__agent__frame__init(&f)
        if let kind = frame.kind {
            f.has_kind = 1
            f.kind = Containers__Lmctfy__Agent__FrameKind(rawValue: UInt32(bitPattern: kind.rawValue))
        }
        if let id = frame.streamId { f.has_stream_id = 1; f.stream_id = id }
        if let ms = frame.deadlineMs { f.has_deadline_ms = 1; f.deadline_ms = ms }
        if let credit = frame.credit { f.has_credit = 1; f.credit = credit }
        if let end = frame.inputEnd { f.has_input_end = 1; f.input_end = end ? 1 : 0 }
        withOptionalCString(frame.host) { host in
        f.host = UnsafeMutablePointer(mutating: host)
        withOptionalCString(frame.method) { method in
            f.method = UnsafeMutablePointer(mutating: method)
            withOptionalBytes(frame.payload) { payload in
                if let payload {
                    f.has_payload = 1
                    f.payload = ProtobufCBinaryData(len: payload.count,
                                                    data: UnsafeMutablePointer(mutating: payload.baseAddress))
                }
                guard let status = frame.status else { return pack(&f, to: &out) }
                var s = CStatus()
                containers__lmctfy__agent__rpc_status__init(&s)
                if let code = status.code { s.has_code = 1; s.code = code }
                withOptionalCString(status.message) { message in
                    s.message = UnsafeMutablePointer(mutating: message)
                    withUnsafeMutablePointer(to: &s) { sp in
                        f.status = sp
                        pack(&f, to: &out)
                        f.status = nil
                    }
                }
            }
        }
        }
    }

    private static func pack(_ f: inout CFrame, to out: inout [UInt8]) {
        let size = containers__lmctfy__agent__frame__get_packed_size(&f)
        let total = FrameCodec.headerBytes + size
        func write(_ p: UnsafeMutablePointer<UInt8>) {
            let n = UInt32(size)
            p[0] = UInt8(n >> 24)
            p[1] = UInt8(n >> 16 & 0xff)
            p[2] = UInt8(n >> 8 & 0xff)
            p[3] = UInt8(n & 0xff)
            let written = containers__lmctfy__agent__frame__pack(&f, p + FrameCodec.headerBytes)
            precondition(written == size, "protobuf-c packed \(written) of \(size) bytes")
        }
        // A big frame is packed into uninitialized memory, then appended:
        // room made with zeros first was an element-by-element loop in a
        // debug build (a 4 MB answer took ~0.1 s of the loop). A small one
        // goes into the room `out` keeps (no allocation).
        if total > 65536 {
            let frame = [UInt8](unsafeUninitializedCapacity: total) { buffer, count in
                write(buffer.baseAddress!)
                count = total
            }
            if out.isEmpty { out = frame } else { out.append(contentsOf: frame) }
            return
        }
        let start = out.count
        out.append(contentsOf: repeatElement(0, count: total))
        out.withUnsafeMutableBufferPointer { write($0.baseAddress! + start) }
    }

    /// Decodes one frame body; falls back to the generic codec for frames
    /// with a hello, a goaway or a window. Same errors as `FrameCodec.decodeBody`.
    static func decode(_ body: UnsafeRawBufferPointer) throws(FrameError) -> Frame {
        var one: UInt8 = 0
        let c: UnsafeMutablePointer<CFrame>? = withUnsafeMutablePointer(to: &one) { empty in
            let base = body.baseAddress?.assumingMemoryBound(to: UInt8.self) ?? UnsafePointer(empty)
            return containers__lmctfy__agent__frame__unpack(nil, body.count, base)
        }
        guard let c else { throw .garbage(length: body.count) }
        defer { containers__lmctfy__agent__frame__free_unpacked(c, nil) }
        let f = c.pointee
        guard f.has_kind != 0 else { throw .unknownKind(nil) }
        let raw = Int32(bitPattern: f.kind.rawValue)
        guard let kind = FrameKind(rawValue: raw), kind != .frameKindUnspecified else { throw .unknownKind(raw) }
        if f.hello != nil || f.goaway != nil || f.window != nil {
            return try FrameCodec.decodeGeneric(body)
        }
        var frame = Frame(kind: kind)
        if f.has_stream_id != 0 { frame.streamId = f.stream_id }
        if let m = f.method { frame.method = String(cString: m) }
        if let h = f.host { frame.host = String(cString: h) }
        if f.has_payload != 0 {
            if f.payload.len > 0, let data = f.payload.data {
                frame.payload = Array(UnsafeBufferPointer(start: data, count: f.payload.len))
            } else {
                frame.payload = []
            }
        }
        if f.has_deadline_ms != 0 { frame.deadlineMs = f.deadline_ms }
        if f.has_credit != 0 { frame.credit = f.credit }
        if f.has_input_end != 0 { frame.inputEnd = f.input_end != 0 }
        if let s = f.status {
            frame.status = RpcStatus(code: s.pointee.has_code != 0 ? s.pointee.code : nil,
                                     message: s.pointee.message.map { String(cString: $0) })
        }
        return frame
    }
}

@inline(__always)
private func withOptionalCString<R>(_ s: String?, _ body: (UnsafePointer<CChar>?) -> R) -> R {
    guard let s else { return body(nil) }
    return s.withCString { body($0) }
}

@inline(__always)
private func withOptionalBytes<R>(_ b: [UInt8]?, _ body: (UnsafeBufferPointer<UInt8>?) -> R) -> R {
    guard let b else { return body(nil) }
    return b.withUnsafeBufferPointer { buffer in
        // An empty array's base address may be nil; protobuf-c reads no byte of it.
        body(buffer)
    }
}
