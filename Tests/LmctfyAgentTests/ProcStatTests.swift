// The start time and state a snapshot's processes are known by, parsed from
// /proc/<pid>/stat without strings (SnapshotKeeper.stat, on every Run).
import Glibc
@testable import LmctfyAgent
import LmctfySystem
import LmctfyTestSupport
import Testing

@Suite struct ProcStatTests {
    func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

    /// The fields after the command, as the kernel wrote them for `pid`.
    func kernelFields(_ pid: pid_t) throws -> [Substring] {
        let text = try Sys.readFile("/proc/\(pid)/stat")
        let close = try #require(text.lastIndex(of: ")"))
        return text[text.index(after: close)...].split(separator: " ")
    }

    @Test func aProcessIsReadAsTheKernelWritesIt() throws {
        // A stopped child: its state stays "T" between the two reads. (This
        // process's own state is its main thread's, which runs or sleeps as
        // it likes meanwhile: compared, that was a flaky test, seen failing
        // under ThreadSanitizer.)
        let pid = try TestProcess.spawn(["/bin/sleep", "1000"])
        defer { TestProcess.end(pid) }
        try Sys.kill(pid, SIGSTOP)
        // waitpid with WUNTRACED returns once the stop has happened (the
        // child is not reaped: TestProcess.end still ends it).
        var status: Int32 = 0
        let (waited, e) = Sys.retry { waitpid(pid, &status, WUNTRACED) }
        try #require(waited == pid, "waitpid: errno \(e)")
        // WIFSTOPPED and WSTOPSIG, which Swift does not import (as ExitStatus
        // decodes the other cases).
        try #require(status & 0xff == 0x7f && (status >> 8) & 0xff == SIGSTOP, "the child did not stop (wait status \(status))")
        let fields = try kernelFields(pid)
        try #require(fields[0] == "T", "a stopped child's state is \(fields[0])")
        let st = try #require(SnapshotKeeper.stat(pid))
        #expect(st.state == UInt8(ascii: "T"))
        #expect(st.startTime == UInt64(fields[19]))
        #expect(SnapshotKeeper.startTime(pid) == st.startTime)
        // This process: its start time, which never changes.
        let own = try kernelFields(getpid())
        #expect(SnapshotKeeper.stat(getpid())?.startTime == UInt64(own[19]))
    }

    @Test func aCommandWithSpacesAndParenthesesIsSkippedWhole() {
        let tail = " S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 987654 20 21\n"
        let st = SnapshotKeeper.parseStat(bytes("42 (a ) b) c)" + tail))
        #expect(st?.state == UInt8(ascii: "S") && st?.startTime == 987654)
    }

    @Test func aShortOrMalformedStatIsNothing() {
        #expect(SnapshotKeeper.parseStat(bytes("42 (x) S 1 2 3")) == nil)
        #expect(SnapshotKeeper.parseStat(bytes("42 x S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20")) == nil)
        #expect(SnapshotKeeper.parseStat(bytes("42 (x) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 12x4 20")) == nil)
        #expect(SnapshotKeeper.parseStat(bytes("42 (x) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 123456789012345678901 20")) == nil)
        #expect(SnapshotKeeper.stat(-1) == nil)
    }
}
