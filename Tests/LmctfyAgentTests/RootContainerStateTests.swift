// A state_dir belongs to the root_container it was first used with: its
// snapshots and events name containers relative to that root.
import Glibc
@testable import LmctfyAgent
import LmctfySystem
import LmctfyTestSupport
import Testing

struct RootContainerStateTests {
    /// Another root on the same state_dir is refused (3), saying how to go
    /// on: a start on another root took every snapshot for a container
    /// destroyed while the agent was down and removed them all (a probe).
    @Test func aStateDirIsKeptForItsRootContainer() throws {
        let dir = "/tmp/lmctfy-rootstate-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try Sys.mkdir(dir, mode: 0o700)
        defer { _ = removeTree(dir) }
        try Agent.checkRootContainer(stateDir: dir, root: "/a")
        #expect(try Sys.readFile(dir + "/root-container") == "/a\n")
        try Agent.checkRootContainer(stateDir: dir, root: "/a")
        #expect { try Agent.checkRootContainer(stateDir: dir, root: "/a/b") } throws: { error in
            let e = error as? LmctfyError
            return e?.code == .invalidArgument && e?.message.contains("kept for root_container /a, not /a/b") == true
                && e?.message.contains("remove \(dir)/root-container") == true
        }
        // Taken over once the file is removed.
        try Sys.unlink(dir + "/root-container")
        try Agent.checkRootContainer(stateDir: dir, root: "/a/b")
        #expect(try Sys.readFile(dir + "/root-container") == "/a/b\n")
    }
}
