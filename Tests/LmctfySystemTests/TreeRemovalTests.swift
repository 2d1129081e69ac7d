// Sys.removeTree on trees an archive could leave: thousands of levels deep
// (past PATH_MAX), with files, symlinks and directories at every level.
// The recursive removal crashed (its stack) on such a tree in the agent
// and the CLI (the virtual-host probe), and every later import with it.
import Glibc
import LmctfySystem
import Testing

@Suite struct TreeRemovalTests {
    @Test func aTreeThousandsOfLevelsDeepIsRemovedWithoutFollowingSymlinks() throws {
        let top = "/tmp/lmctfy-deeptree-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try Sys.mkdir(top, mode: 0o700)
        let outside = top + "-outside"
        try Sys.mkdir(outside, mode: 0o700)
        defer { rmdir(outside) }
        try Sys.createFile(outside + "/keep", "kept")
        defer { unlink(outside + "/keep") }
        var fd = open(top, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        try #require(fd >= 0)
        for level in 0..<6000 {
            #expect(mkdirat(fd, "d", 0o755) == 0)
            if level % 1000 == 0 {
                #expect(symlinkat(outside, fd, "link") == 0)
                let f = openat(fd, "f", O_CREAT | O_WRONLY | O_CLOEXEC, 0o644)
                #expect(f >= 0)
                close(f)
                #expect(mkdirat(fd, "e", 0o755) == 0)
            }
            let sub = openat(fd, "d", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            try #require(sub >= 0)
            close(fd)
            fd = sub
        }
        close(fd)
        try Sys.removeTree(top)
        #expect(!Sys.exists(top))
        #expect(try Sys.readFile(outside + "/keep") == "kept", "a symlink was followed")
    }
}
