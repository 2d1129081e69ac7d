// Work for a loop's next turn, asked for any number of times before it
// runs and run once: what other connections have waiting is served first
// (EventLoop.execute runs what its work queues at the next wake-up).
/// Loop thread only.
public final class NextTurn: @unchecked Sendable {
    private let loop: EventLoop
    private let body: () -> Void
    private var queued = false

    /// `body` runs on `loop`'s thread, at the turn after each `ask`.
    public init(on loop: EventLoop, _ body: @escaping () -> Void) {
        self.loop = loop
        self.body = body
    }

    /// Runs the body at the loop's next turn, unless that is asked already.
    public func ask() {
        guard !queued else { return }
        queued = true
        _ = loop.execute { [weak self] in
            guard let self else { return }
            self.queued = false
            self.body()
        }
    }
}
