// `lmctl --host H image ...` through a controller: every chunk of a
// transfer is routed to the same host, and only that host's store changes.
import Glibc
import LmctfySystem
import LmctfyTestSupport
import Testing

@Suite(.enabled(if: RealCgroups.available, "\(RealCgroups.unavailableReason ?? "")"), .serialized)
struct ImageControllerTests {
    @Test func imagesGoToTheHostNamed() throws {
        let fleet = try Fleet.twoHosts()
        var t = TarBuilder()
        t.add("big/", .directory)
        t.add("big/blob", .file, content: (0..<(3 << 19)).map { UInt8(truncatingIfNeeded: $0 >> 3) })  // 1.5 MiB: two chunks
        let archive = fleet.dir + "/image.tar"
        try Sys.writeFileAtomically(archive, t.bytes + TarBuilder.sampleRootfs(), mode: 0o644)

        let imported = try fleet.lmctl(["--host", "alpha", "image", "import", archive, "base"])
        #expect(imported.status == 0, "\(imported.err)")
        #expect(Sys.isDirectory(fleet.dir + "/agent-a/images/base/rootfs/big"))
        #expect(!Sys.exists(fleet.dir + "/agent-b/images/base"))
        #expect(try fleet.lmctl(["--host", "alpha", "image", "list"]).out == "image=\"base\"\n")
        #expect(try fleet.lmctl(["--host", "beta", "image", "list"]).out == "")

        let out = fleet.dir + "/back.tar.gz"
        let exported = try fleet.lmctl(["--host", "alpha", "image", "export", "base", out])
        #expect(exported.status == 0, "\(exported.err)")
        // Back into beta: the same tree on both hosts.
        let again = try fleet.lmctl(["--host", "beta", "image", "import", out, "base"])
        #expect(again.status == 0, "\(again.err)")
        #expect(try treeSnapshot(fleet.dir + "/agent-b/images/base/rootfs") == treeSnapshot(fleet.dir + "/agent-a/images/base/rootfs"))

        #expect(try fleet.lmctl(["--host", "beta", "image", "remove", "base"]).status == 0)
        #expect(try fleet.lmctl(["--host", "beta", "image", "remove", "base"]).status == 5)
        #expect(try fleet.lmctl(["--host", "alpha", "image", "list"]).out == "image=\"base\"\n")
    }
}
