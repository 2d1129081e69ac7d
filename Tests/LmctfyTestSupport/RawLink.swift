// A connection driven by hand on the test's thread (no client library in
// the way): a test decides when to read, what to send and how much credit
// to grant.
import Glibc
import LmctfyProto
import LmctfyRPC
import LmctfySystem

/// A connection driven by hand on the test's thread: a session over a
/// socket, read only when the test pumps it.
public final class RawLink {
    public let fd: Int32
    public var session: Session
    /// What came back: the responses' payloads, the statuses.
    public var responses: [[UInt8]] = []
    public var statuses: [CallStatus] = []
    /// Calls the peer made: their streams, methods and payloads.
    public var requests: [(stream: UInt32, method: String, payload: [UInt8])] = []
    private var buffer = [UInt8](repeating: 0, count: 65536)

    /// Does the hello (up to 5 s); UNAVAILABLE if it does not finish.
    public init(fd: Int32, _ session: Session) throws {
        self.fd = fd
        self.session = session
        send(self.session.start(now: MonotonicClock.milliseconds()))
        pump { self.session.isEstablished }
        guard self.session.isEstablished else { throw LmctfyError(.unavailable, "no handshake") }
    }

    deinit { close(fd) }

    /// Writes the actions' bytes; keeps what they deliver.
    public func send(_ actions: [SessionAction]) {
        for action in actions {
            switch action {
            case .write(let bytes):
                var off = 0
                while off < bytes.count {
                    let n = bytes[off...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                    if n <= 0 { return }
                    off += n
                }
            case .deliverResponse(_, let payload): responses.append(payload)
            case .deliverStatus(_, let status): statuses.append(status)
            case .deliverRequest(let stream, let method, let payload, _, _): requests.append((stream, method, payload))
            default: break
            }
        }
    }

    /// Opens a call; returns its stream.
    @discardableResult
    public func open(_ method: String, _ payload: [UInt8], deadlineMs: UInt32? = 60_000, host: String? = nil) -> UInt32 {
        let (id, actions) = session.openStream(method: method, payload: payload, deadlineMs: deadlineMs, host: host, now: MonotonicClock.milliseconds())
        send(actions)
        return id
    }

    /// Reads for up to `ms`, or until `done`.
    public func pump(ms: UInt64 = 5000, _ done: () -> Bool) {
        let end = MonotonicClock.milliseconds() + ms
        while !done() && MonotonicClock.milliseconds() < end {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, 5) > 0 else { continue }
            let n = recv(fd, &buffer, buffer.count, 0)
            guard n > 0 else { return }
            send(session.receive(buffer[0..<n], now: MonotonicClock.milliseconds()))
        }
    }
}

extension RawLink {
    /// Reads a Subscribe stream (the link's only stream) up to its
    /// `caught_up` marker or its end, within `ms`: the pids of its events,
    /// in order, and whether the marker came.
    public func readReplayPids(ms: UInt64 = 60_000) -> (pids: [Int32], caughtUp: Bool) {
        var pids: [Int32] = []
        var read = 0
        var caughtUp = false
        pump(ms: ms) {
            for r in responses[read...] {
                guard let s = try? SubscribeResponse(serializedBytes: r) else { continue }
                if let pid = s.event?.pid { pids.append(pid) }
                if s.caughtUp != nil { caughtUp = true }
            }
            read = responses.count
            return caughtUp || !statuses.isEmpty
        }
        return (pids, caughtUp)
    }
}
