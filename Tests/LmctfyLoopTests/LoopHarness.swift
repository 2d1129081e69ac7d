// What every loop test shares: a loop that is shut down at the end with the
// libuv invariants checked, a bounded wait, loop-only boxes, seeded bytes.
import Glibc
import LmctfyLoop
import LmctfySystem
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

/// Counts down from `count`; `wait` blocks until zero or the deadline:
/// LmctfySystem's Latch, with a bounded wait by default so that a test that
/// never gets its callback fails instead of hanging.
final class Latch: Sendable {
    private let latch: LmctfySystem.Latch

    init(_ count: Int = 1) { latch = LmctfySystem.Latch(count) }

    func signal() { latch.signal() }

    /// True when the count reached zero within `seconds`.
    func wait(seconds: Int = 20) -> Bool { latch.wait(seconds: seconds) }
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
    let address = try UnixSocketAddress(path, for: "bind")
    let rc = address.withSockaddr { bind(fd, $0, $1) }
    guard rc == 0 else { throw TestFailure("bind \(path): errno \(errno)") }
}

func fileMode(_ path: String) -> mode_t? {
    var st = stat()
    return lstat(path, &st) == 0 ? st.st_mode : nil
}
