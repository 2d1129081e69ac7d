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

    /// An output file a user names: a regular file (or none) is replaced
    /// atomically; a device, a FIFO or a symlink is written in place and
    /// stays what it was. `-o /dev/null` as root renamed a file over the
    /// machine's /dev/null. (A null device of the test's own, not the
    /// machine's: a regression must not break the machine.)
    @Test func outputFilesThatAreNotRegularAreWrittenInPlace() throws {
        let dir = try tempDir()
        defer { for f in (try? Sys.subdirectoriesAndFiles(dir)) ?? [] { unlink(dir + "/" + f) }; rmdir(dir) }
        // Regular: replaced, with the mode.
        try Sys.writeOutputFile(dir + "/plain", Array("one, longer".utf8), mode: 0o600)
        try Sys.writeOutputFile(dir + "/plain", Array("two".utf8), mode: 0o600)
        #expect(try Sys.readFile(dir + "/plain") == "two")
        #expect(!Sys.isWrittenInPlace(dir + "/plain") && !Sys.isWrittenInPlace(dir + "/absent"))
        // A symlink: the link stays, its target gets the bytes.
        try Sys.createFile(dir + "/target", "old")
        #expect(symlink(dir + "/target", dir + "/link") == 0)
        try Sys.writeOutputFile(dir + "/link", Array("through".utf8))
        #expect(try Sys.linkStatus(dir + "/link").map { $0.st_mode & S_IFMT } == S_IFLNK)
        #expect(try Sys.readFile(dir + "/target") == "through")
        // A null device (root only: mknod).
        if geteuid() == 0 {
            #expect(mknod(dir + "/null", S_IFCHR | 0o666, dev_t(1 << 8 | 3)) == 0)  // makedev(1, 3), a macro Swift does not import
            try Sys.writeOutputFile(dir + "/null", Array("gone".utf8))
            #expect(try Sys.linkStatus(dir + "/null").map { $0.st_mode & S_IFMT } == S_IFCHR)
        }
        #expect(Sys.isWrittenInPlace(dir + "/link"))
        #expect(try Sys.subdirectoriesAndFiles(dir).sorted() == (geteuid() == 0 ? ["link", "null", "plain", "target"] : ["link", "plain", "target"]))
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

    static func lmctfy(_ body: () throws(SystemError) -> Void) throws(LmctfyError) {
        do { try body() } catch { throw error.lmctfy(.internal, "writing") }
    }

    /// What the exports (lmctl's and lmctfy's image export) write through:
    /// a regular file's path gets a temporary renamed over it, removed when
    /// the writer fails (the old file kept); a symlink is written through.
    @Test func producingAnOutputFileLeavesNoTemporary() throws {
        let dir = try tempDir()
        defer { for f in (try? Sys.subdirectoriesAndFiles(dir)) ?? [] { unlink(dir + "/" + f) }; rmdir(dir) }
        let path = dir + "/out"
        try Sys.writeFileAtomically(path, Array("old".utf8))
        #expect(throws: LmctfyError.self) {
            try Sys.producingOutputFile(path, token: "t") { (target, inPlace) throws(LmctfyError) in
                #expect(target == path + ".tmp-t" && !inPlace)
                try Self.lmctfy { () throws(SystemError) in try Sys.writeFileAtomically(target, Array("partial".utf8)) }
                throw .unavailable("the writer failed")
            }
        }
        #expect(try Sys.readFile(path) == "old")
        #expect(try Sys.subdirectoriesAndFiles(dir) == ["out"])
        try Sys.producingOutputFile(path, token: "t") { (target, _) throws(LmctfyError) in
            try Self.lmctfy { () throws(SystemError) in try Sys.writeFileAtomically(target, Array("new".utf8)) }
        }
        #expect(try Sys.readFile(path) == "new")
        #expect(symlink(path, dir + "/link") == 0)
        try Sys.producingOutputFile(dir + "/link", token: "t") { (target, inPlace) throws(LmctfyError) in
            #expect(target == dir + "/link" && inPlace)
            try Self.lmctfy { () throws(SystemError) in
                let fd = try Sys.open(target, O_WRONLY | O_TRUNC)
                defer { close(fd) }
                try Sys.writeAll(fd, Array("through".utf8))
            }
        }
        #expect(try Sys.readFile(path) == "through")
        #expect(try Sys.subdirectoriesAndFiles(dir).sorted() == ["link", "out"])
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
