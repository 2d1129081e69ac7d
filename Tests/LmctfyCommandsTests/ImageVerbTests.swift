// `lmctfy image ...`: in-process against a store in a temp directory, and
// once through the built binary with LMCTFY_IMAGE_ROOT (spawns: ROOT_ONLY).
// Not called *CLITests on purpose: tools/test-v2 runs those in a qemu guest,
// which has no libarchive (it is dlopened, so the guest's library copying
// does not see it), and images do not depend on the cgroup version.
import Glibc
import LmctfyBackend
@testable import LmctfyCommands
import LmctfyImages
import LmctfySystem
import LmctfyTestSupport
import Testing

private final class Scratch {
    let dir: String
    init() throws {
        var template = Array("/tmp/lmctfy_imagecli_XXXXXX".utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw SystemError("mkdtemp", "/tmp", errno)
        }
        dir = String(cString: made)
    }
    deinit { try? Sys.removeTree(dir) }
}

@Suite(.serialized) struct ImageVerbTests {
    @Test func verbsInProcess() throws {
        let s = try Scratch()
        let archive = s.dir + "/root.tar"
        try Sys.writeFileAtomically(archive, TarBuilder.sampleRootfs(), mode: 0o644)
        var env = CLIEnvironment(makeBackend: { () throws(LmctfyError) in throw .unimplemented("no containers here") })
        let root = s.dir + "/store"
        env.makeImages = { () throws(LmctfyError) in ImageStore(root: root) }

        let imported = lmctfy(["image", "import", archive, "base"], in: env)
        #expect(imported.status == 0, "\(imported)")
        #expect(imported.stdout == "image=\"base\"\nentries=\"14\"\nbytes=\"34\"\n")
        #expect(lmctfy(["image", "list"], in: env).stdout == "image=\"base\"\n")
        let json = try lmctfy(["-o", "json", "image", "list"], in: env).json()
        let images = try #require(json["images"] as? [[String: Any]])
        #expect(images.first?["name"] as? String == "base")
        #expect(images.first?["entries"] as? Int == 14)

        let again = lmctfy(["image", "import", archive, "base"], in: env)
        #expect(again.status == 6)
        #expect(again.stderr.contains("exists already"))
        let bad = lmctfy(["image", "import", archive, "../up"], in: env)
        #expect(bad.status == 3)
        #expect(lmctfy(["image", "import", archive], in: env).status == 3)  // usage
        #expect(lmctfy(["image", "frobnicate"], in: env).status == 5)

        let out = s.dir + "/out.tar.xz"
        #expect(lmctfy(["image", "export", "base", out], in: env).status == 0)
        #expect(Array(try Sys.readBytes(out).prefix(6)) == [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00])  // xz magic
        #expect(lmctfy(["image", "export", "nothere", out + "2"], in: env).status == 5)
        #expect(lmctfy(["image", "remove", "base"], in: env).status == 0)
        #expect(lmctfy(["image", "remove", "base"], in: env).status == 5)
        #expect(lmctfy(["image", "list"], in: env).stdout == "")

        // Without a store (the default environment) the verbs say so.
        let plain = CLIEnvironment(makeBackend: { () throws(LmctfyError) in throw .unimplemented("no containers here") })
        #expect(lmctfy(["image", "list"], in: plain).status == 12)
    }

    @Test func builtBinaryHonoursTheStoreRootVariable() throws {
        let binary = try #require(BuiltBinary.path, "the lmctfy executable was not built next to the tests")
        let s = try Scratch()
        let root = s.dir + "/store"
        var t = TarBuilder()
        t.add("etc/", .directory)
        t.add("etc/passwd", .file, content: Array("root:x:0:0::/root:/bin/sh\n".utf8))
        t.add("dev/null", .char, mode: 0o666)
        try Sys.writeFileAtomically(s.dir + "/dev.tar", t.archive, mode: 0o644)
        try Sys.writeFileAtomically(s.dir + "/good.tar", TarBuilder.sampleRootfs(), mode: 0o644)
        func run(_ args: [String]) throws -> ChildResult {
            try TestProcess.capture(["/usr/bin/env", "LMCTFY_IMAGE_ROOT=\(root)", binary] + args)
        }
        let refused = try run(["image", "import", s.dir + "/dev.tar", "withdev"])
        #expect(refused.status == 3)
        #expect(String(decoding: refused.stderr, as: UTF8.self).contains("device node"))
        #expect(try run(["image", "import", s.dir + "/good.tar", "good"]).status == 0)
        #expect(Sys.isDirectory(root + "/good/rootfs/etc"))
        #expect(try Sys.directoryEntries(root) == ["good"])
        #expect(String(decoding: try run(["image", "list"]).stdout, as: UTF8.self) == "image=\"good\"\n")
    }
}
