// What every loop test shares: a loop that is shut down at the end with the
// libuv invariants checked, a bounded wait, loop-only boxes, seeded bytes.
import Glibc
import LmctfyLoop
import LmctfyTestSupport
import Testing

/// Runs `body` with a started loop, then shuts it down and checks that
/// uv_loop_close returned 0 and that nothing is left open.
func withLoop(_ name: String = #function, _ body: (EventLoop) throws -> Void) throws {
    let loop = EventLoop(name: name)
    try loop.start()
    defer { expectCleanShutdown(loop) }
    try body(loop)
}

func expectCleanShutdown(_ loop: EventLoop, sourceLocation: SourceLocation = #_sourceLocation) {
    let rc = loop.shutdown()
    #expect(rc == 0, "uv_loop_close returned \(rc)", sourceLocation: sourceLocation)
    #expect(loop.loopCloseResult == 0, sourceLocation: sourceLocation)
    #expect(loop.liveHandleCount == 0, "handles left", sourceLocation: sourceLocation)
    #expect(loop.liveConnectionCount == 0, "connections left", sourceLocation: sourceLocation)
    #expect(loop.strayHandleCount == 0, "unknown handles", sourceLocation: sourceLocation)
    #expect(loop.pendingOffloadCount == 0, "offloads left", sourceLocation: sourceLocation)
}

/// Counts down from `count`; `wait` blocks until zero or the deadline.
final class Latch: @unchecked Sendable {
    // @unchecked Sendable: `remaining` is only touched with `mutex` held.
    private var mutex = pthread_mutex_t()
    private var cond = pthread_cond_t()
    private var remaining: Int

    init(_ count: Int = 1) {
        remaining = count
        pthread_mutex_init(&mutex, nil)
        pthread_cond_init(&cond, nil)
    }

    deinit {
        pthread_cond_destroy(&cond)
        pthread_mutex_destroy(&mutex)
    }

    func signal() {
        pthread_mutex_lock(&mutex)
        remaining -= 1
        if remaining <= 0 { pthread_cond_broadcast(&cond) }
        pthread_mutex_unlock(&mutex)
    }

    /// True when the count reached zero within `seconds`.
    func wait(seconds: Int = 20) -> Bool {
        var deadline = timespec()
        clock_gettime(CLOCK_REALTIME, &deadline)
        deadline.tv_sec += seconds
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        while remaining > 0 {
            if pthread_cond_timedwait(&cond, &mutex, &deadline) == ETIMEDOUT { return remaining <= 0 }
        }
        return true
    }
}

/// Mutable state for loop callbacks. Touched only on the loop thread, and
/// read by the test after `runAndWait` or `shutdown` ordered the accesses.
final class LoopBox<T>: @unchecked Sendable {
    // @unchecked Sendable: see above; the tests keep to it.
    var value: T
    init(_ value: T) { self.value = value }
}


func randomBytes(_ count: Int, seed: UInt64) -> [UInt8] {
    var g = SplitMix64(seed: seed)
    return (0..<count).map { _ in UInt8.random(in: .min ... .max, using: &g) }
}

/// A fresh private directory for socket files (removed by the caller).
func makeTempDir() throws -> String {
    var template = Array("/tmp/lmctfy-loop-XXXXXX".utf8CString)
    guard mkdtemp(&template) != nil else { throw TestFailure("mkdtemp: errno \(errno)") }
    return String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

/// Leaves a socket file nobody listens on: bind, then close without unlink,
/// as a crashed daemon does.
func makeStaleSocket(_ path: String) throws {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw TestFailure("socket: errno \(errno)") }
    defer { close(fd) }
    var addr = sockaddr_un()
    addr.sun_family = sa_family_t(AF_UNIX)
    let bytes = Array(path.utf8)
    withUnsafeMutableBytes(of: &addr.sun_path) { $0.copyBytes(from: bytes) }
    let rc = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
        }
    }
    guard rc == 0 else { throw TestFailure("bind \(path): errno \(errno)") }
}

func fileMode(_ path: String) -> mode_t? {
    var st = stat()
    return lstat(path, &st) == 0 ? st.st_mode : nil
}
