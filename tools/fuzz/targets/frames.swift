// FrameDecoder (Sources/LmctfyRPC/Framing.swift) on arbitrary bytes.
//
// Input: 2 bytes of limit (maxFrameBytes = that number), 1 byte n, n bytes
// of chunk sizes, then the byte stream.
// Properties:
//  - any chunking (the input's, and one byte at a time) yields the same
//    frames and the same error as the whole stream fed at once;
//  - the decoder never holds more than one incomplete frame's worth of bytes
//    within the limit (bufferedBytes < 4 + max after draining): it never
//    waits for, and so never buffers, a body it will refuse;
//  - an oversize length is refused as soon as its 4 header bytes are there;
//  - a decoded frame re-encodes to bytes that decode to the same frame;
//  - the fast codec (FrameWire) and the generic one agree: same frame or
//    same error for the stream taken as one body, same bytes on re-encoding.
import LmctfyProto
import LmctfyRPC

struct Outcome: Equatable {
    var frames: [Frame] = []
    var error: FrameError?
    var finish: FrameError?
}

func decode(_ pieces: [ArraySlice<UInt8>], max: UInt32, oneByteAtATime: Bool) -> Outcome {
    var decoder = FrameDecoder(maxFrameBytes: max)
    var out = Outcome()
    outer: for piece in pieces {
        decoder.feed(piece)
        while true {
            let frame: Frame?
            do {
                frame = try decoder.next()
            } catch {
                out.error = error
                if case .oversize = error, oneByteAtATime {
                    require(decoder.bufferedBytes == FrameCodec.headerBytes,
                            "oversize refused only after \(decoder.bufferedBytes) buffered bytes")
                }
                break outer
            }
            guard let frame else { break }
            out.frames.append(frame)
        }
        require(decoder.bufferedBytes < FrameCodec.headerBytes + Int(max),
                "\(decoder.bufferedBytes) bytes buffered with a limit of \(max)")
    }
    if out.error == nil {
        do { try decoder.finish() } catch { out.finish = error }
    }
    return out
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzFrames(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    var input = Choices(inputBytes(data, size))
    let max = UInt32(input.uint16())
    let n = Int(input.byte() & 15)
    var sizes: [UInt8] = []
    for _ in 0..<n { sizes.append(input.byte()) }
    let stream = Array(input.rest())

    let whole = decode([stream[...]], max: max, oneByteAtATime: false)
    let chunked = decode(chunks(stream, sizes: sizes[...]), max: max, oneByteAtATime: false)
    require(chunked == whole, "chunking \(sizes) changed the outcome: \(chunked) vs \(whole)")
    let bytewise = decode(stream.indices.map { stream[$0...$0] }, max: max, oneByteAtATime: true)
    require(bytewise == whole, "one byte at a time changed the outcome: \(bytewise) vs \(whole)")

    let fast = Result { () throws(FrameError) in try FrameCodec.decodeBody(stream[...]) }
    let generic = Result { () throws(FrameError) in try FrameCodec.decodeGeneric(stream) }
    require(fast == generic, "fast and generic decoders disagree: \(fast) vs \(generic)")

    for frame in whole.frames {
        let again = FrameCodec.encode(frame)
        require(again == FrameCodec.encodeGeneric(frame), "fast and generic encoders disagree on \(frame)")
        var decoder = FrameDecoder(maxFrameBytes: .max)
        decoder.feed(again)
        let back: Frame?
        do { back = try decoder.next() } catch {
            require(false, "a decoded frame re-encodes to bytes that do not decode: \(error) \(frame)")
            return 0
        }
        require(back == frame, "re-encoded frame decodes differently: \(String(describing: back)) vs \(frame)")
        require(decoder.bufferedBytes == 0, "re-encoding left \(decoder.bufferedBytes) bytes")
    }
    return 0
}
