// Sys.writeFileAtomically and Sys.linkStatus on a temp directory.
import Glibc
import LmctfySystem
import Testing

@Suite struct AtomicFileTests {
    func tempDir() throws -> String {
        var template = Array("/tmp/lmctfy-atomic-XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!).map { String(cString: $0) } }
        return try #require(made)
    }

    @Test func replacesWholeWithTheModeAndLeavesNoTempFile() throws {
        let dir = try tempDir()
        defer { for f in (try? Sys.subdirectoriesAndFiles(dir)) ?? [] { unlink(dir + "/" + f) }; rmdir(dir) }
        let path = dir + "/entry"
        try Sys.writeFileAtomically(path, Array("first, longer".utf8), mode: 0o600)
        try Sys.writeFileAtomically(path, Array("second".utf8), mode: 0o600)
        #expect(try Sys.readFile(path) == "second")
        #expect(try Sys.subdirectoriesAndFiles(dir) == ["entry"])
        let st = try #require(try Sys.linkStatus(path))
        #expect(st.st_mode & 0o777 == 0o600)
    }

    @Test func withoutDurabilityItStillReplacesWholeAndLeavesNoTempFile() throws {
        let dir = try tempDir()
        defer { for f in (try? Sys.subdirectoriesAndFiles(dir)) ?? [] { unlink(dir + "/" + f) }; rmdir(dir) }
        let path = dir + "/entry"
        try Sys.writeFileAtomically(path, Array("first, longer".utf8), mode: 0o600, durable: false)
        try Sys.writeFileAtomically(path, Array("second".utf8), mode: 0o600, durable: false)
        #expect(try Sys.readFile(path) == "second")
        #expect(try Sys.subdirectoriesAndFiles(dir) == ["entry"])
    }

    @Test func aFailedWriteKeepsTheOldContent() throws {
        let dir = try tempDir()
        defer { for f in (try? Sys.subdirectoriesAndFiles(dir)) ?? [] { unlink(dir + "/" + f) }; rmdir(dir) }
        let path = dir + "/entry"
        try Sys.writeFileAtomically(path, Array("old".utf8))
        // A symlink where the temp file goes: O_NOFOLLOW refuses it, and the
        // entry keeps what it had.
        #expect(symlink("/etc/passwd", dir + "/.tmp-entry") == 0)
        #expect(throws: SystemError.self) { try Sys.writeFileAtomically(path, Array("new".utf8)) }
        #expect(try Sys.readFile(path) == "old")
        #expect(try Sys.readFile("/etc/passwd").hasPrefix("root:"))
    }

    @Test func linkStatusDoesNotFollowAndSaysNilForNothing() throws {
        let dir = try tempDir()
        defer { unlink(dir + "/l"); rmdir(dir) }
        #expect(symlink(dir, dir + "/l") == 0)
        let st = try #require(try Sys.linkStatus(dir + "/l"))
        #expect(st.st_mode & S_IFMT == S_IFLNK)
        #expect(try Sys.linkStatus(dir + "/nothing") == nil)
    }
}
