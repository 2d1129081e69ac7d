// The image store: round trips, and hostile archives refused with 3 leaving
// nothing behind. Archives are built here byte by byte (ustar), not with
// libarchive, so the reader is not tested against its own writer's ideas.
import Glibc
import LmctfyBackend
import LmctfyImages
import LmctfySystem
import LmctfyTestSupport
import Testing

/// A scratch directory: <tmp>/store (the image store) and <tmp>/in (archives).
final class ImageScratch {
    let dir: String
    let store: ImageStore

    init() throws {
        var template = Array("/tmp/lmctfy_images_XXXXXX".utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw SystemError("mkdtemp", "/tmp", errno)
        }
        dir = String(cString: made)
        try Sys.mkdir(dir + "/in")
        store = ImageStore(root: dir + "/store")
    }

    deinit { try? Sys.removeTree(dir) }

    func write(_ name: String, _ bytes: [UInt8]) throws -> String {
        let path = dir + "/in/" + name
        try Sys.writeFileAtomically(path, bytes, mode: 0o644)
        return path
    }

    /// Everything in the store's directory (hidden temp dirs included).
    func storeEntries() -> [String] { (try? Sys.directoryEntries(store.root)) ?? [] }
}

private func code(_ body: () throws(LmctfyError) -> Void) -> StatusCode? {
    do {
        try body()
        return nil
    } catch {
        return error.code
    }
}

@Suite(.serialized) struct ImageStoreTests {
    /// What the store says of a name is the same for every verb (the
    /// probe): an empty archive is no image (3, nothing kept); a relative
    /// store is 3 for a create's lookup as for an import; a name in the
    /// store that is not an image (a symlink) is NOT_FOUND for remove too,
    /// and stays.
    @Test func theStoreAnswersAlikeForEveryVerb() throws {
        let s = try ImageScratch()
        let empty = try s.write("empty.tar", [UInt8](repeating: 0, count: 1024))
        #expect(code { () throws(LmctfyError) in try s.store.importImage(empty, as: "empty") } == .invalidArgument)
        #expect(s.storeEntries().filter { !$0.hasPrefix(".") } == [])
        #expect(code { () throws(LmctfyError) in _ = try ImageStore(root: "relative").rootfsPath(forImage: "x") } == .invalidArgument)
        try s.store.importImage(try s.write("good.tar", TarBuilder.sampleRootfs()), as: "good")
        #expect(symlink(s.store.root + "/good", s.store.root + "/alias") == 0)
        #expect(code { () throws(LmctfyError) in _ = try s.store.rootfsPath(forImage: "alias") } == .notFound)
        #expect(code { () throws(LmctfyError) in try s.store.removeImage("alias") } == .notFound)
        #expect(try Sys.linkStatus(s.store.root + "/alias") != nil)
        #expect(try s.store.listImages().map(\.name) == ["good"])
    }

    @Test func roundTripGivesTheSameTreeAndTheSameBytes() throws {
        let s = try ImageScratch()
        let archive = try s.write("good.tar", TarBuilder.sampleRootfs())
        let summary = try s.store.importImage(archive, as: "good")
        #expect(summary.name == "good")
        #expect(summary.entries == 14)
        #expect(summary.bytes == UInt64("#!/bin/sh\necho tool\n".utf8.count + "vhost\n".utf8.count + "private\n".utf8.count))

        let rootfs = try s.store.rootfsPath(forImage: "good")
        #expect(rootfs == s.store.root + "/good/rootfs")
        #expect(try s.store.resolveRootfs("good") == rootfs)
        #expect(try s.store.resolveRootfs("/srv/rootfs") == "/srv/rootfs")
        #expect(code { () throws(LmctfyError) in _ = try s.store.resolveRootfs("missing") } == .notFound)
        #expect(code { () throws(LmctfyError) in _ = try s.store.resolveRootfs("../etc") } == .invalidArgument)
        let tree = try treeSnapshot(rootfs)
        #expect(tree["bin/tool"]?.hasPrefix("mode=104755") == true)
        #expect(tree["bin/tool"]?.contains("nlink=2") == true)
        #expect(tree["etc/localtime"]?.hasSuffix("-> /usr/share/zoneinfo/UTC") == true)
        #expect(tree["usr/lib/up"]?.hasSuffix("-> ../../etc/hostname") == true)
        #expect(tree["run/pipe"]?.hasSuffix("fifo") == true)
        #expect(tree["etc"]?.contains("mtime=1600000000") == true)
        if geteuid() == 0 {
            #expect(tree["home/notes"]?.contains("uid=1234 gid=1234") == true)
        }
        let ino1 = try Sys.linkStatus(rootfs + "/bin/tool")?.st_ino, ino2 = try Sys.linkStatus(rootfs + "/bin/tool-again")?.st_ino
        #expect(ino1 != nil && ino1 == ino2)

        // Export (gzip), import again: the same tree.
        let exported = s.dir + "/in/out.tar.gz"
        try s.store.exportImage("good", to: exported)
        #expect(Array(try Sys.readBytes(exported).prefix(2)) == [0x1f, 0x8b])
        try s.store.importImage(exported, as: "again")
        #expect(try treeSnapshot(try s.store.rootfsPath(forImage: "again")) == tree)

        // Plain tar exports of both are byte for byte the same (fixed order,
        // no atime/ctime, numeric owners).
        try s.store.exportImage("good", to: s.dir + "/in/a.tar")
        try s.store.exportImage("again", to: s.dir + "/in/b.tar")
        let a = try Sys.readBytes(s.dir + "/in/a.tar"), b = try Sys.readBytes(s.dir + "/in/b.tar")
        #expect(a == b)
        #expect(!a.isEmpty)
        // A symlink (as /dev/stdout is) is written through, not replaced.
        #expect(symlink(s.dir + "/in/a.tar", s.dir + "/in/link.tar") == 0)
        try s.store.exportImage("again", to: s.dir + "/in/link.tar")
        #expect(try Sys.linkStatus(s.dir + "/in/link.tar").map { $0.st_mode & S_IFMT } == S_IFLNK)
        #expect(try Sys.readBytes(s.dir + "/in/a.tar") == b)

        let listed = try s.store.listImages()
        #expect(listed.map(\.name) == ["again", "good"])
        #expect(listed.allSatisfy { $0.entries == 14 && $0.created > 0 })

        try s.store.removeImage("good")
        try s.store.removeImage("again")
        #expect(try s.store.listImages().isEmpty)
        #expect(s.storeEntries().isEmpty)
        #expect(code { () throws(LmctfyError) in try s.store.removeImage("good") } == .notFound)
        #expect(code { () throws(LmctfyError) in _ = try s.store.rootfsPath(forImage: "good") } == .notFound)
    }

    /// Each hostile archive: refused with 3, the store has nothing new (no
    /// image, no temp directory) and nothing was written outside it.
    @Test(arguments: [
        "dotdot", "dotdot-inside", "absolute", "through-symlink", "through-absolute-symlink",
        "symlink-escape", "symlink-escape-deep", "hardlink-absolute", "hardlink-dotdot", "hardlink-missing",
        "hardlink-to-symlink", "char-device", "block-device", "symlink-replaces-file", "file-replaces-symlink",
        "dir-replaced-by-symlink", "not-an-archive", "symlink-escape-through-link", "symlink-escape-link-made-later",
        "symlink-dotdot-of-link",
    ])
    func hostileArchiveIsRefusedAndLeavesNothing(_ kind: String) throws {
        let s = try ImageScratch()
        // An image already there must survive untouched.
        try s.store.importImage(try s.write("good.tar", TarBuilder.sampleRootfs()), as: "existing")
        let before = try treeSnapshot(s.store.root)
        let marker = "lmctfy_escape_\(getpid())_\(kind)"
        let outsideTargets = ["/tmp/" + marker, s.dir + "/" + marker, s.dir + "/in/" + marker]
        var t = TarBuilder()
        t.add("ok/", .directory, mode: 0o755)
        t.add("ok/first", .file, content: Array("unpacked before the bad entry\n".utf8))
        switch kind {
        case "dotdot": t.add("../../../" + marker, .file, content: [0x41])
        case "dotdot-inside": t.add("ok/../../../" + marker, .file, content: [0x41])
        case "absolute": t.add("/tmp/" + marker, .file, content: [0x41])
        case "through-symlink":
            t.add("escape", .symlink, link: "../../..")
            t.add("escape/" + marker, .file, content: [0x41])
        case "through-absolute-symlink":
            t.add("tmp", .symlink, link: "/tmp")
            t.add("tmp/" + marker, .file, content: [0x41])
        case "symlink-escape": t.add("up", .symlink, link: "../" + marker)
        case "symlink-escape-deep": t.add("ok/up", .symlink, link: "../x/../../" + marker)
        case "hardlink-absolute": t.add("h", .hardlink, link: "/etc/passwd")
        case "hardlink-dotdot": t.add("h", .hardlink, link: "../../../etc/passwd")
        case "hardlink-missing": t.add("h", .hardlink, link: "not/there")
        case "hardlink-to-symlink":
            t.add("shadow", .symlink, link: "/etc/shadow")
            t.add("h", .hardlink, link: "shadow")
        case "char-device": t.add("null", .char, mode: 0o666)
        case "block-device": t.add("sda", .block, mode: 0o660)
        case "symlink-replaces-file":
            t.add("f", .file, content: [0x41])
            t.add("f", .symlink, link: "/etc")
        case "file-replaces-symlink":
            t.add("f", .symlink, link: "/etc/passwd")
            t.add("f", .file, content: [0x41])
        case "dir-replaced-by-symlink":
            t.add("d/", .directory)
            t.add("d", .symlink, link: "/tmp")
            t.add("d/" + marker, .file, content: [0x41])
        // Escapes through another link of the archive (a probe's): by text
        // alone each stays inside; resolved as the kernel will, each is out.
        case "symlink-escape-through-link":
            t.add("a/", .directory)
            t.add("a/b", .symlink, link: "..")
            t.add("esc", .symlink, link: "a/b/a/b/a/b/../../../" + marker)
        case "symlink-escape-link-made-later":
            t.add("esc", .symlink, link: "a/b/../../" + marker)
            t.add("a/", .directory)
            t.add("a/b", .symlink, link: "..")
        case "symlink-dotdot-of-link":
            t.add("a/", .directory)
            t.add("a/b", .symlink, link: "..")
            t.add("c", .symlink, link: "a/b/..")
        case "not-an-archive": break
        default: Issue.record("unknown case \(kind)")
        }
        let bytes = kind == "not-an-archive" ? Array(repeating: 0x5a, count: 4096) : t.archive
        let archive = try s.write("hostile.tar", bytes)

        var error: LmctfyError?
        do {
            try s.store.importImage(archive, as: "hostile")
        } catch let e {
            error = e
        }
        #expect(error?.code == .invalidArgument, "\(kind): \(error.map { "\($0)" } ?? "accepted")")
        if kind == "hardlink-absolute" {  // named by the link (it said: entry "/etc/passwd" has an absolute path)
            #expect(error?.message.contains("archive entry \"h\" is a hard link to \"/etc/passwd\"") == true, "\(String(describing: error))")
        }
        #expect(s.storeEntries() == ["existing"], "\(kind) left \(s.storeEntries())")
        #expect(try treeSnapshot(s.store.root) == before, "\(kind) changed the existing image")
        for path in outsideTargets {
            #expect(!Sys.exists(path), "\(kind) wrote \(path)")
            try? Sys.unlink(path)
        }
        #expect(try Sys.directoryEntries(s.dir) == ["in", "store"])
    }

    @Test func namesAreCheckedBeforeAnythingIsMade() throws {
        let s = try ImageScratch()
        let archive = try s.write("good.tar", TarBuilder.sampleRootfs())
        for bad in ["", ".", "..", ".hidden", "-dash", "a/b", "../x", "a b", "é", String(repeating: "a", count: 129)] {
            #expect(code { () throws(LmctfyError) in try s.store.importImage(archive, as: bad) } == .invalidArgument, "'\(bad)'")
            #expect(code { () throws(LmctfyError) in _ = try s.store.rootfsPath(forImage: bad) } == .invalidArgument, "'\(bad)'")
            #expect(code { () throws(LmctfyError) in try s.store.removeImage(bad) } == .invalidArgument, "'\(bad)'")
        }
        #expect(!Sys.exists(s.store.root), "a refused name created the store")
        for good in ["debian", "debian-12.5", "a_b", "9", String(repeating: "a", count: 128)] {
            #expect(code { () throws(LmctfyError) in try ImageName.check(good) } == nil, "'\(good)'")
        }
        try s.store.importImage(archive, as: "dup")
        #expect(code { () throws(LmctfyError) in try s.store.importImage(archive, as: "dup") } == .alreadyExists)
        #expect(code { () throws(LmctfyError) in try s.store.importImage(s.dir + "/in/missing.tar", as: "x") } == .notFound)
        #expect(code { () throws(LmctfyError) in try s.store.importImage(s.dir + "/in", as: "x") } == .invalidArgument)
        #expect(code { () throws(LmctfyError) in try s.store.exportImage("missing", to: s.dir + "/in/x.tar") } == .notFound)
        #expect(!Sys.exists(s.dir + "/in/x.tar"))
        #expect(s.storeEntries() == ["dup"])
        // A compression export does not write is refused, not written as a
        // plain tar under a name that says otherwise.
        for suffix in [".tar.zst", ".tar.bz2", ".tbz2"] {
            #expect(code { () throws(LmctfyError) in try s.store.exportImage("dup", to: s.dir + "/in/x" + suffix) } == .invalidArgument)
            #expect(!Sys.exists(s.dir + "/in/x" + suffix))
        }
        #expect(try ArchiveCompression.forExport("a.tgz") == .gzip && ArchiveCompression.forExport("a.tar.xz") == .xz
                && ArchiveCompression.forExport("a.tar") == .none)
    }

    /// The store's root as $LMCTFY_IMAGE_ROOT gives it: a relative path
    /// (3) or a file (9) listed as an empty store.
    @Test func aStoreRootThatCannotBeOneIsRefused() throws {
        let s = try ImageScratch()
        #expect(code { () throws(LmctfyError) in try ImageStore(root: "relative/store").checkRoot() } == .invalidArgument)
        let file = s.dir + "/in/file"
        try Sys.writeFileAtomically(file, Array("x".utf8))
        #expect(code { () throws(LmctfyError) in try ImageStore(root: file).checkRoot() } == .failedPrecondition)
        #expect(code { () throws(LmctfyError) in try ImageStore(root: s.dir + "/not-yet").checkRoot() } == nil)
        #expect(code { () throws(LmctfyError) in try s.store.checkRoot() } == nil)
    }

    @Test func namesThatAreNotUTF8AreRefusedNotRenamed() throws {
        let s = try ImageScratch()
        var t = TarBuilder()
        t.add("caf\u{e9}.txt", .file, content: [0x41])  // valid: kept as is
        let good = try s.store.importImage(try s.write("utf8.tar", t.archive), as: "utf8")
        #expect(good.entries == 1)
        #expect(try Sys.directoryEntries(s.store.rootfsPath(forImage: "utf8")) == ["caf\u{e9}.txt"])
        // A Latin-1 name (0xe9 alone) would become "caf\u{fffd}.txt": refused.
        var bytes = TarBuilder()
        bytes.add("cafX.txt", .file, content: [0x41])
        var archive = bytes.archive
        archive[3] = 0xe9
        // Fix the header checksum for the changed byte (X = 0x58 -> 0xe9).
        let sum = archive[0..<512].enumerated().reduce(0) { $0 + (148..<156 ~= $1.offset ? 0x20 : Int($1.element)) }
        let digits = String(sum, radix: 8)
        for (i, b) in (String(repeating: "0", count: 6 - digits.count) + digits).utf8.enumerated() { archive[148 + i] = b }
        let path = try s.write("latin1.tar", archive)
        var refusal: LmctfyError?
        do { try s.store.importImage(path, as: "latin1") } catch { refusal = error }
        #expect(refusal?.code == .invalidArgument)
        #expect(refusal?.message.contains("not valid UTF-8") == true, "\(String(describing: refusal))")
        #expect(s.storeEntries() == ["utf8"])
    }

    @Test func leftoversOfDeadImportsAreSwept() throws {
        let s = try ImageScratch()
        try s.store.importImage(try s.write("good.tar", TarBuilder.sampleRootfs()), as: "first")
        // pid 999999999 cannot exist (pid_max is at most 4194304); ours does.
        for name in [".tmp-dead-999999999-ab", ".rm-gone-x-999999999-cd", ".tmp-mine-\(getpid())-ef"] {
            try Sys.mkdir(s.store.root + "/" + name)
            try Sys.mkdir(s.store.root + "/" + name + "/rootfs")
        }
        try s.store.importImage(try s.write("good2.tar", TarBuilder.sampleRootfs()), as: "second")
        #expect(s.storeEntries() == [".tmp-mine-\(getpid())-ef", "first", "second"])
        #expect(try s.store.listImages().map(\.name) == ["first", "second"])
    }

    @Test func policyRules() throws {
        #expect(try ArchivePolicy.components("./a//b/./c/") == ["a", "b", "c"])
        #expect(try ArchivePolicy.components("./") == nil)
        #expect(code { () throws(LmctfyError) in _ = try ArchivePolicy.components("a/../b") } == .invalidArgument)
        // A path its store could not export or remove (past PATH_MAX there).
        #expect(code { () throws(LmctfyError) in _ = try ArchivePolicy.components(String(repeating: "d/", count: 1600) + "f") } == .invalidArgument)
        #expect(try ArchivePolicy.components(String(repeating: "d/", count: 1500) + "f")?.count == 1501)
        #expect(code { () throws(LmctfyError) in _ = try ArchivePolicy.components("/a") } == .invalidArgument)
        #expect(code { () throws(LmctfyError) in _ = try ArchivePolicy.components("") } == .invalidArgument)
        #expect(ArchivePolicy.targetStaysInside("../b", parent: ["a"]))
        #expect(!ArchivePolicy.targetStaysInside("../../b", parent: ["a"]))
        #expect(ArchivePolicy.targetStaysInside("/anything/../..", parent: []))
        #expect(!ArchivePolicy.targetStaysInside("x/../../y", parent: []))
        #expect(ArchivePolicy.targetStaysInside("./x/./y", parent: []))
        // Through the links accepted so far, as the kernel resolves them.
        var p = ArchivePolicy()
        try p.admit(["usr"], kind: .directory, raw: "usr")
        try p.admit(["usr", "lib"], kind: .directory, raw: "usr/lib")
        try p.admit(["lib"], kind: .symlink, raw: "lib", linkTarget: "usr/lib")
        #expect(p.resolvesInside("lib/../bin", parent: []))        // usr/bin
        #expect(!p.resolvesInside("lib/../../../etc", parent: [])) // usr/lib, usr, /, out
        #expect(p.resolvesInside("../../etc", parent: ["usr", "lib"]))
        try p.admit(["r"], kind: .symlink, raw: "r", linkTarget: "/")
        #expect(p.resolvesInside("r/../..", parent: []))           // absolute: stays at the root
        try p.admit(["loop"], kind: .symlink, raw: "loop", linkTarget: "loop")
        #expect(!p.resolvesInside("loop/x", parent: []))           // ELOOP
        // "loop" itself loops: refused once the archive has been read.
        #expect(code { () throws(LmctfyError) in try p.finish() } == .invalidArgument)
    }

    @Test func defaultRootAndEnvironmentOverride() {
        #expect(ImageStore.chooseRoot(nil, environment: nil) == "/var/lib/lmctfy/images")
        #expect(ImageStore.chooseRoot(nil, environment: "") == "/var/lib/lmctfy/images")
        #expect(ImageStore.chooseRoot(nil, environment: "/tmp/elsewhere") == "/tmp/elsewhere")
        #expect(ImageStore.chooseRoot("/x", environment: "/tmp/elsewhere") == "/x")
    }
}
