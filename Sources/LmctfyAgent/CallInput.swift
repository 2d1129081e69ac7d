// A call's input (protocol version 4, PROTOCOL.md section 4.5): the INPUT
// frames its caller sends, taken by the call's thread (a foreground Run's
// stdin). The loop delivers them; the call's thread takes them one at a time
// and each one dealt with is granted again, so at most `window` frames
// (64 KiB each at most) wait here per call.
import LmctfyBackend
import LmctfySystem
import Synchronization
import Glibc

final class CallInput: RunInput {
    /// INPUT frames granted at the start; each one taken up is granted again.
    static let window: UInt32 = 4

    let readyFd: Int32
    private let queue = Mutex<[(bytes: [UInt8], end: Bool)]>([])
    /// Sends the caller a grant of more INPUT frames (through the loop).
    private let grant: @Sendable (UInt32) -> Void

    /// nil when no eventfd could be made.
    init?(grant: @escaping @Sendable (UInt32) -> Void) {
        guard let fd = try? EventFds.eventfd() else { return nil }
        readyFd = fd
        self.grant = grant
    }

    deinit { close(readyFd) }

    /// Loop thread: one INPUT frame.
    func deliver(_ bytes: [UInt8], end: Bool) {
        queue.locked { q in
            q.append((bytes, end))
            EventFds.signal(readyFd)
        }
    }

    func start() { grant(Self.window) }

    func take() -> (bytes: [UInt8], end: Bool)? {
        queue.locked { q in
            guard !q.isEmpty else { return nil }
            let chunk = q.removeFirst()
            if q.isEmpty { _ = try? EventFds.readCounter(readyFd) }
            return chunk
        }
    }

    func consumed() { grant(1) }
}
