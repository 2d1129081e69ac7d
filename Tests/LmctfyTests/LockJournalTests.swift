// The per-tree lock file through ContainerApi, on a fake v1 tree that acts
// like cgroupfs: its file is reused from the spares (no inode allocated or
// freed per create and destroy), and a journal acts only on its own tree.
import Glibc
@testable import Lmctfy
import LmctfyProto
import LmctfySystem
import LmctfyTestSupport
import Testing

@Suite struct LockJournalTests {
    static let spec = ContainerSpec(cpu: CpuSpec(limit: 500), memory: MemorySpec(limit: 100_000_000))

    private func machine() throws -> (FakeCgroupTree, FakeCgroupKernel, ContainerApi) {
        let tree = try FakeCgroupTree(.v1)
        let kernel = try FakeCgroupKernel(tree)
        try Sys.mkdir(tree.root + "/proc")
        let plan = FaultPlan(failAt: 0, errno: 0, filesystem: kernel)
        return (tree, kernel, try ContainerApi(mounts: tree.mounts(faults: plan), procRoot: tree.root + "/proc"))
    }

    private func inode(_ path: String) -> ino_t? {
        var st = stat()
        return lstat(path, &st) == 0 ? st.st_ino : nil
    }

    @Test func aDestroyedTreesLockFileIsTheNextTopLevelCreatesOne() throws {
        try #require(geteuid() == 0, "the spare lock files serve root only: run the tests as root")
        let (tree, _, api) = try machine()
        let locks = tree.root + "/locks"
        try api.create(try ContainerName.resolve("/a", relativeTo: .root), spec: Self.spec)
        let ino = try #require(inode(locks + "/a"))
        try api.destroy(try ContainerName.resolve("/a", relativeTo: .root))
        #expect(inode(locks + "/a") == nil, "the lock file stayed with its tree gone")
        func pooled() throws -> [ino_t?] { try Sys.subdirectoriesAndFiles(locks + "/.spare").map { inode(locks + "/.spare/" + $0) } }
        #expect(try pooled() == [ino])
        try api.create(try ContainerName.resolve("/b", relativeTo: .root), spec: Self.spec)
        #expect(inode(locks + "/b") == ino, "the create made a new file instead of taking the spare")
        #expect(try Sys.readFile(locks + "/b") == "", "the create's journal was not cleared")
        // A nested create keeps its tree's file and takes no spare.
        try api.create(try ContainerName.resolve("/b/sub", relativeTo: .root), spec: ContainerSpec())
        #expect(inode(locks + "/b") == ino)
        try api.destroy(try ContainerName.resolve("/b", relativeTo: .root))
        #expect(try pooled() == [ino])
    }

    /// A create or destroy refused because the name is a cgroup lmctfy did
    /// not make leaves no lock file (one per name tried was left in /run,
    /// and a spare was used up for each; a probe).
    @Test func aRefusalOnAForeignCgroupLeavesNoLockFile() throws {
        try #require(geteuid() == 0, "the spare lock files serve root only: run the tests as root")
        let (tree, _, api) = try machine()
        let locks = tree.root + "/locks"
        // A tree made and destroyed first: one spare in the pool.
        try api.create(try ContainerName.resolve("/a", relativeTo: .root), spec: Self.spec)
        try api.destroy(try ContainerName.resolve("/a", relativeTo: .root))
        func pooled() throws -> Int { try Sys.subdirectoriesAndFiles(locks + "/.spare").count }
        let spares = try pooled()
        for c in Controller.allCases where Sys.isDirectory(tree.root + "/" + c.rawValue) {
            try tree.seed(c.rawValue, ["foreign"], files: [:])
        }
        let foreign = try ContainerName.resolve("/foreign", relativeTo: .root)
        #expect(lmctfyError { try api.create(foreign, spec: Self.spec) }?.code == .alreadyExists)
        #expect(inode(locks + "/foreign") == nil, "a refused create left its lock file")
        #expect(lmctfyError { try api.destroy(foreign) }?.code == .notFound)
        #expect(inode(locks + "/foreign") == nil, "a refused destroy left its lock file")
        // Both files went back to the bounded pool: none was used up.
        let after = try pooled()
        #expect(after >= spares, "\(after) spares, \(spares) before")
    }

    /// A journal left in a tree's lock file (an interrupted create) undoes
    /// what it lists; one that names another tree is not this lock's to act
    /// on, and is dropped without removing anything.
    @Test func aJournalNamingAnotherTreeUndoesNothing() throws {
        let (tree, _, api) = try machine()
        let locks = tree.root + "/locks"
        try Sys.mkdir(locks)
        let other = tree.root + "/cpu/other"
        try Sys.mkdir(other)
        defer { rmdir(other) }
        try Sys.createFile(locks + "/c", "create /other\nmkdir \(tree.root)/cpu\tother\n", mode: 0o600)
        try api.create(try ContainerName.resolve("/c", relativeTo: .root), spec: Self.spec)
        #expect(Sys.isDirectory(other), "a journal in /c's lock file removed another tree's directory")
        #expect(try Sys.readFile(locks + "/c") == "", "the foreign journal was kept")

        // Its own tree's journal is undone as always.
        try api.destroy(try ContainerName.resolve("/c", relativeTo: .root))
        let mine = tree.root + "/cpu/d"
        try Sys.mkdir(mine)
        defer { rmdir(mine) }
        try Sys.createFile(locks + "/d", "create /d\nmkdir \(tree.root)/cpu\td\n", mode: 0o600)
        try api.create(try ContainerName.resolve("/d", relativeTo: .root), spec: Self.spec)
        #expect(try api.exists(try ContainerName.resolve("/d", relativeTo: .root)))
    }

    /// A directory a create's mkdir found there already (someone else's) is
    /// journaled `kept` after its `mkdir` line, and a journal left behind
    /// (a crash, or an undo that could not remove everything) does not
    /// remove it: it was never the create's.
    @Test func aDirectoryTheCreateFoundThereIsNotUndone() throws {
        let (tree, _, api) = try machine()
        let name = try ContainerName.resolve("/e", relativeTo: .root)
        let foreign = tree.root + "/memory/e"
        try Sys.mkdir(foreign)
        defer { rmdir(foreign) }
        let foreignInode = inode(foreign)
        do {
            let lock = try #require(try ContainerLock.acquire(name, access: api.mounts.access, makesTop: true))
            defer { lock.release() }
            try lock.append("boot \(ContainerLock.bootId)\ncreate /e")
            let made = MadeDirs(lock: lock)
            let cpu = CgroupDir(mount: tree.root + "/cpu", segments: ["e"], access: api.mounts.access)
            try made.make(cpu)
            let memory = CgroupDir(mount: tree.root + "/memory", segments: ["e"], access: api.mounts.access)
            #expect(lmctfyError { try made.make(memory) }?.code == .alreadyExists)
            let journal = try lock.journal()
            #expect(journal.hasSuffix("mkdir \(tree.root)/memory\te\nkept \(tree.root)/memory\te\n"), "\(journal)")
            // The process dies here: the journal stays.
        }
        // The next holder of the tree's lock finishes the create: what it
        // made goes, what it found stays.
        #expect(lmctfyError { try api.create(name, spec: Self.spec) }?.code == .alreadyExists)
        #expect(!Sys.isDirectory(tree.root + "/cpu/e"), "the interrupted create's own directory was left")
        #expect(inode(foreign) == foreignInode, "the directory the create found there was removed (or made again)")
    }

    /// `recoverInterruptedTrees` (a daemon's start) finishes every tree's
    /// interrupted create at once, or the one tree it is limited to, and
    /// names what it undid; spares and empty journals are not trees to act on.
    @Test func interruptedCreatesAreUndoneWithoutTouchingTheirTrees() throws {
        let (tree, _, api) = try machine()
        let locks = tree.root + "/locks"
        try Sys.mkdir(locks)
        try Sys.mkdir(locks + "/.spare")
        for top in ["h", "k"] {
            try Sys.mkdir(tree.root + "/cpu/" + top)
            try Sys.createFile(locks + "/" + top, "boot \(ContainerLock.bootId)\ncreate /\(top)\nmkdir \(tree.root)/cpu\t\(top)\n", mode: 0o600)
        }
        try Sys.createFile(locks + "/e", "", mode: 0o600)
        let k = try ContainerName.resolve("/k", relativeTo: .root)
        var got = api.recoverInterruptedTrees(within: try ContainerName.resolve("/k/sub", relativeTo: .root))
        #expect(got.undone == [k] && got.failed.isEmpty, "\(got)")
        #expect(!Sys.isDirectory(tree.root + "/cpu/k"))
        #expect(Sys.isDirectory(tree.root + "/cpu/h"), "a tree outside `within` was finished")
        got = api.recoverInterruptedTrees()
        #expect(got.undone == [try ContainerName.resolve("/h", relativeTo: .root)] && got.failed.isEmpty, "\(got)")
        #expect(!Sys.isDirectory(tree.root + "/cpu/h"))
        #expect(try Sys.readFile(locks + "/h") == "" && Sys.readFile(locks + "/k") == "")
        #expect(api.recoverInterruptedTrees().undone.isEmpty)
    }
}
