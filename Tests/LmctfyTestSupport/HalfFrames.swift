// Peers that each send most of one large frame and stop (the budget of
// incomplete frames, InboundBudget): each does its hello, then the header
// of a `frameBytes` frame and all of its body but `missing` bytes, as far
// as the daemon reads it, and holds the rest back.
import Glibc
import LmctfyProto
import LmctfyRPC
import LmctfySystem

public final class HalfFrames {
    public let links: [RawLink]

    public init(unixPath: String, count: Int, frameBytes: Int = 4 << 20, missing: Int = 1024) throws {
        var made: [RawLink] = []
        let bytes = [UInt8(frameBytes >> 24 & 0xff), UInt8(frameBytes >> 16 & 0xff), UInt8(frameBytes >> 8 & 0xff), UInt8(frameBytes & 0xff)]
            + [UInt8](repeating: 0, count: frameBytes - missing)
        for _ in 0..<count {
            let link = try RawLink(fd: try RpcSocket.connectUnix(path: unixPath),
                                   Session(dialler: .peerCredentials, name: "half-frame", now: MonotonicClock.milliseconds()))
            _ = fcntl(link.fd, F_SETFL, fcntl(link.fd, F_GETFL) | O_NONBLOCK)
            // As far as the daemon reads (it stops reading one that takes
            // the budget over): 100 ms without progress ends the sending.
            var off = 0
            var stalled = 0
            while off < bytes.count && stalled < 20 {
                let n = bytes[off...].withUnsafeBytes { Glibc.send(link.fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                if n > 0 {
                    off += n
                    stalled = 0
                } else {
                    usleep(5_000)
                    stalled += 1
                }
            }
            made.append(link)
        }
        links = made
    }

    /// The links the daemon closed with a GOAWAY of `reason`, waiting up
    /// to `waitMs` for at least `atLeast` of them.
    public func closed(_ reason: GoAwayReason, atLeast: Int, waitMs: UInt64) -> [RawLink] {
        let end = MonotonicClock.milliseconds() + waitMs
        var closed: [RawLink] = []
        repeat {
            for l in links where l.session.closeReason == nil { l.pump(ms: 1) { false } }
            closed = links.filter { $0.session.closeReason?.reason == reason }
        } while closed.count < atLeast && MonotonicClock.milliseconds() < end
        return closed
    }
}
