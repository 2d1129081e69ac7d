// A call's input (protocol version 4, PROTOCOL.md section 4.5): the INPUT
// frames its caller sends, taken by the call's thread (a foreground Run's
// stdin). The loop delivers them; the call's thread takes them one at a time
// and each one dealt with is granted again. Every frame granted is held
// against the agent's InputBudget until it has been dealt with or its call
// has ended, so what the agent may have to hold of its callers' input at
// once is bounded (64 KiB a frame), however many calls there are.
import LmctfyBackend
import LmctfyRPC
import LmctfySystem
import Synchronization
import Glibc

/// The INPUT frames granted and not yet dealt with, over all calls, at most
/// `frames`; a call whose grant does not fit waits (its caller with it)
/// until others' frames are dealt with or their calls end, first come first
/// served.
final class InputBudget: Sendable {
    let frames: Int
    private struct State {
        var granted = 0
        var waiting: [CallInput] = []
    }
    private let state = Mutex(State())

    /// `agentBytes`: the agent's limit on what it holds for its callers
    /// (limits.max_agent_buffered_bytes); input may hold a quarter of it,
    /// 8 frames at least.
    init(agentBytes: Int) {
        frames = max(8, agentBytes / 4 / Session.maxInputBytes)
    }

    /// How many frames are granted now (tests, metrics).
    var granted: Int { state.locked { $0.granted } }

    /// `input` asks for `n` more frames: what fits is granted at once, the
    /// rest when there is room.
    func request(_ input: CallInput, _ n: Int) {
        let grants: [(CallInput, Int)] = state.locked { s in
            // A call waits exactly while it is owed something.
            if input.owed == 0 { s.waiting.append(input) }
            input.owed += n
            return Self.serve(&s, frames)
        }
        for (i, n) in grants { i.send(n) }
    }

    /// One frame of `input` dealt with.
    func release(_ input: CallInput) {
        let grants: [(CallInput, Int)] = state.locked { s in
            s.granted -= 1
            input.outstanding -= 1
            return Self.serve(&s, frames)
        }
        for (i, n) in grants { i.send(n) }
    }

    /// `input`'s call has ended: what it was granted and did not use comes
    /// back, and what it asked for is dropped.
    func close(_ input: CallInput) {
        let grants: [(CallInput, Int)] = state.locked { s in
            s.granted -= input.outstanding
            input.outstanding = 0
            input.owed = 0
            s.waiting.removeAll { $0 === input }
            return Self.serve(&s, frames)
        }
        for (i, n) in grants { i.send(n) }
    }

    /// Grants the waiting calls what fits, in order (the lock held).
    private static func serve(_ s: inout State, _ frames: Int) -> [(CallInput, Int)] {
        var grants: [(CallInput, Int)] = []
        while let first = s.waiting.first, s.granted < frames {
            let n = min(first.owed, frames - s.granted)
            first.owed -= n
            first.outstanding += n
            s.granted += n
            if n > 0 { grants.append((first, n)) }
            if first.owed == 0 { s.waiting.removeFirst() }
        }
        return grants
    }
}

final class CallInput: RunInput, @unchecked Sendable {
    // @unchecked Sendable: `owed` and `outstanding` are only touched with
    // the budget's lock held; the rest is immutable or behind `queue`.

    /// INPUT frames granted at the start; each one dealt with is granted again.
    static let window = 4

    let readyFd: Int32
    private let queue = Mutex<(chunks: [(bytes: [UInt8], end: Bool, window: TerminalWindow?)], ended: Bool, closed: Bool)>(([], false, false))
    /// Sends the caller a grant of more INPUT frames (through the loop).
    private let grant: @Sendable (UInt32) -> Void
    private let budget: InputBudget
    /// Frames asked of the budget and not yet granted; frames granted and
    /// not yet dealt with (the budget's lock).
    var owed = 0
    var outstanding = 0

    /// nil when no eventfd could be made.
    init?(budget: InputBudget, grant: @escaping @Sendable (UInt32) -> Void) {
        guard let fd = try? EventFds.eventfd() else { return nil }
        readyFd = fd
        self.budget = budget
        self.grant = grant
    }

    deinit { Glibc.close(readyFd) }

    /// Loop thread: one INPUT frame.
    func deliver(_ bytes: [UInt8], end: Bool, window: TerminalWindow? = nil) {
        queue.locked { q in
            q.chunks.append((bytes, end, window))
            EventFds.signal(readyFd)
        }
    }

    func start() { budget.request(self, Self.window) }

    func take() -> (bytes: [UInt8], end: Bool, window: TerminalWindow?)? {
        queue.locked { q in
            guard !q.chunks.isEmpty else { return nil }
            let chunk = q.chunks.removeFirst()
            if chunk.end { q.ended = true }
            if q.chunks.isEmpty { _ = try? EventFds.readCounter(readyFd) }
            return chunk
        }
    }

    /// One frame dealt with: its place in the budget goes back, and one
    /// more is asked for unless the input has ended.
    func consumed() {
        let (ended, closed) = queue.locked { ($0.ended, $0.closed) }
        guard !closed else { return }
        budget.release(self)
        if !ended { budget.request(self, 1) }
    }

    /// The call has ended: whatever it was granted and did not use goes
    /// back to the budget, and it asks for nothing more. Once.
    func close() {
        let first: Bool = queue.locked { q in
            defer { q.closed = true }
            return !q.closed
        }
        if first { budget.close(self) }
    }

    /// The budget: `n` frames granted to this call.
    func send(_ n: Int) { grant(UInt32(n)) }
}
