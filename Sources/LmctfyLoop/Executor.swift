// The loop as a Swift SerialExecutor: an actor whose unownedExecutor is the
// loop runs every method on the loop thread, so it may own handles and
// loop-affine state, and the compiler, not a runtime check, keeps other
// threads out.
//
//     actor Agent {
//         let loop: EventLoop
//         nonisolated var unownedExecutor: UnownedSerialExecutor { loop.asUnownedSerialExecutor() }
//     }

extension EventLoop: SerialExecutor {
    /// Runs `job` on the loop thread after the work queued before it. Traps if
    /// the loop has shut down (the task would otherwise never resume).
    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        let queued = execute { job.runSynchronously(on: self.asUnownedSerialExecutor()) }
        // A dropped job is a task that never resumes, holding whatever it
        // holds forever; failing loudly is kinder.
        precondition(queued, "\(name): a task was scheduled on a loop that has shut down")
    }

    /// This loop as the serial executor of an actor that runs on it.
    public func asUnownedSerialExecutor() -> UnownedSerialExecutor {
        UnownedSerialExecutor(ordinary: self)
    }

    /// Lets `assumeIsolated` and the runtime's isolation checks ask the loop.
    public func isIsolatingCurrentContext() -> Bool? { inLoop }

    /// Traps unless called on the loop thread (the runtime's isolation check).
    public func checkIsolated() { assertInLoop() }
}
