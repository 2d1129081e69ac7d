// Sys.readAll and Sys.getxattr on a temp file: values shorter and longer
// than the scratch space each reads into first.
import Glibc
import LmctfySystem
import Testing

@Suite struct FileReadTests {
    func tempFile() throws -> String {
        var template = Array("/tmp/lmctfy-read-XXXXXX".utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        try #require(fd >= 0)
        close(fd)
        return String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    @Test(arguments: [0, 7, 16383, 16384, 16385, 100_000])
    func readAllReadsEveryByte(size: Int) throws {
        let path = try tempFile()
        defer { unlink(path) }
        let bytes = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
        try Sys.writeFileAtomically(path, bytes, mode: 0o600, durable: false)
        for shortReadEnds in [false, true] {
            let fd = try Sys.open(path, O_RDONLY)
            defer { close(fd) }
            #expect(try Sys.readAll(fd, path: path, shortReadEnds: shortReadEnds) == bytes)
        }
    }

    /// After a read that filled less than the buffer, `readAll` reads
    /// again (to the end) unless told a short read is the last: here a
    /// non-blocking pipe holding "first" whose writer is still open, so a
    /// second read is EAGAIN.
    @Test func aShortReadEndsTheReadOnlyWhenAsked() throws {
        for shortReadEnds in [false, true] {
            let (r, w) = try Sys.pipe()
            defer { close(r); close(w) }
            _ = fcntl(r, F_SETFL, fcntl(r, F_GETFL) | O_NONBLOCK)
            _ = "first".withCString { write(w, $0, 5) }
            let got = Result { () throws(SystemError) in try Sys.readAll(r, path: "pipe", shortReadEnds: shortReadEnds) }
            if shortReadEnds {
                #expect((try? got.get()).map { String(decoding: $0, as: UTF8.self) } == "first")
            } else {
                #expect(throws: SystemError.self) { try got.get() }
            }
        }
    }

    /// A record longer than the first buffer is read whole (ERANGE, then
    /// its own size); a missing one is nil; a file that is not there is an
    /// error with its errno.
    @Test func getxattrReadsShortAndLongValues() throws {
        let path = try tempFile()
        defer { unlink(path) }
        #expect(try Sys.getxattr(path, "user.lmctfy.test") == nil)
        // ext4 keeps at most a block of them.
        for length in [1, 255, 256, 257, 3000] {
            let value = String(repeating: "v", count: length - 1) + "!"
            let set = Result { () throws(SystemError) in try Sys.setxattr(path, "user.lmctfy.test", value) }
            if case .failure(let error) = set {
                Issue.record("user xattrs cannot be set on \(path): \(error)")
                return
            }
            #expect(try Sys.getxattr(path, "user.lmctfy.test") == value)
        }
        #expect(throws: SystemError.self) { _ = try Sys.getxattr(path + ".gone", "user.lmctfy.test") }
    }
}
