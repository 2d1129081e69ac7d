// LoopPoll: readiness of a descriptor the loop does not own (an eventfd, as
// the agent's watcher polls them), level-triggered, and closed without
// closing the descriptor.
import Glibc
import LmctfyLoop
import LmctfySystem
import Testing

@Suite struct LoopPollTests {
    @Test func anEventfdWakesThePollUntilItIsRead() throws {
        try withLoop { loop in
            let efd = try EventFds.eventfd()
            defer { close(efd) }
            let seen = LoopBox<[UInt64]>([])
            let poll = try loop.runAndWait {
                try LoopPoll(on: loop, fd: efd) { error in
                    #expect(error == nil)
                    // Level-triggered: read what is pending, or be called again.
                    seen.value.append((try? EventFds.readCounter(efd)) ?? 0)
                }
            }
            EventFds.signal(efd)
            EventFds.signal(efd)
            for _ in 0..<200 where (try? loop.runAndWait { seen.value.reduce(0, +) }) ?? 0 < 2 { usleep(5_000) }
            EventFds.signal(efd)
            for _ in 0..<200 where (try? loop.runAndWait { seen.value.reduce(0, +) }) ?? 0 < 3 { usleep(5_000) }
            let counts = try loop.runAndWait { seen.value }
            #expect(counts.reduce(0, +) == 3, "every signal counted: \(counts)")
            #expect(!counts.contains(0), "called only when there was something to read")
            // Closing the poll leaves the descriptor open and unwatched.
            let closed = LoopBox(false)
            try loop.runAndWait {
                poll.onClose = { closed.value = true }
                poll.close()
            }
            for _ in 0..<200 where !((try? loop.runAndWait { closed.value }) ?? true) { usleep(5_000) }
            #expect(try loop.runAndWait { closed.value })
            EventFds.signal(efd)
            usleep(20_000)
            #expect(try loop.runAndWait { seen.value.count } == counts.count, "no callback after the close")
            #expect(fcntl(efd, F_GETFD) >= 0, "the descriptor is still the caller's")
            #expect(try EventFds.readCounter(efd) == 1)
        }
    }

    @Test func aDescriptorThatCannotBePolledIsAnError() throws {
        try withLoop { loop in
            // A regular file: epoll refuses it (EPERM).
            let fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC)
            defer { close(fd) }
            let failed: Bool = try loop.runAndWait { () -> Bool in
                do {
                    _ = try LoopPoll(on: loop, fd: fd) { _ in }
                    return false
                } catch {
                    return true
                }
            }
            #expect(failed)
        }
    }
}
