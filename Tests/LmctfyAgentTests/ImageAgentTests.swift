// The agent's image methods: the transfer rules on ImageService directly
// (no root), and `lmctl image ...` against a real agent process (root:
// ROOT_ONLY), with an archive big enough to take several chunks.
import Glibc
import LmctfyBackend
import LmctfyImages
@testable import LmctfyAgent
import LmctfyProto
import LmctfyRPC
import LmctfySystem
import LmctfyTestSupport
import Testing

private final class Scratch {
    let dir: String
    init() throws {
        var template = Array("/tmp/lmctfy_imageagent_XXXXXX".utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw SystemError("mkdtemp", "/tmp", errno)
        }
        dir = String(cString: made)
    }
    deinit { try? Sys.removeTree(dir) }
}

/// The sample rootfs plus a 2.5 MiB file: three 1 MiB chunks.
private func bigArchive() -> [UInt8] {
    var t = TarBuilder()
    let big = (0..<(5 << 19)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ $0 >> 11) }
    t.add("big/", .directory)
    t.add("big/blob", .file, content: big)
    let sample = TarBuilder.sampleRootfs()
    return t.bytes + sample  // the sample ends with the two zero blocks
}

private func code(_ body: () throws(LmctfyError) -> Void) -> StatusCode? {
    do {
        try body()
        return nil
    } catch {
        return error.code
    }
}

@Suite(.serialized) struct ImageServiceTests {
    /// A refused upload is "the upload" in the message, not the agent's own
    /// file under .transfers (a path the caller can do nothing with).
    @Test func aRefusedUploadIsNamedAsTheCallersNotByTheAgentsFile() throws {
        let s = try Scratch()
        let service = ImageService(root: s.dir + "/store")
        do {
            _ = try service.importImage(ImportImageRequest(name: "junk", offset: 0, data: Array(repeating: 0x5a, count: 4096), commit: true))
            Issue.record("a non-archive was imported")
        } catch {
            #expect(error.code == .invalidArgument && error.message.contains("Cannot read the upload as an archive"), "\(error)")
            #expect(!error.message.contains(".transfers"), "\(error)")
        }
    }

    /// Clients that died mid-upload (killed: they never aborted) held every
    /// transfer for 10 minutes, and every import and export was refused
    /// meanwhile. With all open, one untouched for 30 s gives way.
    @Test func abandonedTransfersGiveWayWhenAllAreOpen() throws {
        let s = try Scratch()
        final class FakeClock: @unchecked Sendable { var ms: UInt64 = 1_000_000 }
        let clock = FakeClock()
        let service = ImageService(root: s.dir + "/store") { clock.ms }
        var ids: [String] = []
        for i in 0..<ImageService.maxTransfers {
            ids.append(try #require(try service.importImage(ImportImageRequest(offset: 0, data: [UInt8(i)])).transferId))
            clock.ms += 1000
        }
        // All in use within the last 30 s: refused, nothing given up.
        clock.ms += 20_000
        #expect(code { () throws(LmctfyError) in _ = try service.importImage(ImportImageRequest(offset: 0, data: [9])) } == .resourceExhausted)
        // A live client touches its own (the second) meanwhile.
        _ = try service.importImage(ImportImageRequest(transferId: ids[1], offset: 1, data: [1]))
        clock.ms += 15_000
        // Now the oldest untouched one gives way, and only it.
        let fresh = try service.importImage(ImportImageRequest(offset: 0, data: [7]))
        #expect(fresh.transferId != nil)
        #expect(code { () throws(LmctfyError) in _ = try service.importImage(ImportImageRequest(transferId: ids[0], offset: 1, data: [1])) } == .notFound)
        #expect(try service.importImage(ImportImageRequest(transferId: ids[1], offset: 2, data: [2])).received == 3)
        #expect(try Sys.directoryEntries(s.dir + "/store/.transfers").count == ImageService.maxTransfers)
    }

    /// An export whose caller gave up while the agent packed stops, its
    /// archive gone; one whose caller went after the packing (killed: no
    /// abort) is dropped after a minute untouched, an import after 10.
    @Test func anAbandonedExportGoesSoon() throws {
        let s = try Scratch()
        final class FakeClock: @unchecked Sendable { var ms: UInt64 = 1_000_000 }
        let clock = FakeClock()
        let service = ImageService(root: s.dir + "/store") { clock.ms }
        try Sys.writeFileAtomically(s.dir + "/big.tar", bigArchive(), mode: 0o644)
        try service.store.importImage(s.dir + "/big.tar", as: "big")
        let transfers = s.dir + "/store/.transfers"
        #expect(code { () throws(LmctfyError) in _ = try service.exportImage(ExportImageRequest(name: "big"), cancelled: { true }) } == .cancelled)
        #expect(try Sys.directoryEntries(transfers) == [])
        let export = try service.exportImage(ExportImageRequest(name: "big", maxBytes: 1024))
        #expect(export.done == false)
        let upload = try service.importImage(ImportImageRequest(offset: 0, data: [1]))
        // A sweep whose `now` is older than a transfer's last use (a release
        // on another thread read the clock after it): nothing goes, no trap.
        clock.ms -= 1
        service.sweepIdle()
        clock.ms += 1
        clock.ms += ImageService.exportIdleMs + 1
        service.sweepIdle()
        #expect(code { () throws(LmctfyError) in
            _ = try service.exportImage(ExportImageRequest(transferId: export.transferId, offset: 1024))
        } == .notFound)
        #expect(try service.importImage(ImportImageRequest(transferId: upload.transferId, offset: 1, data: [2])).received == 2)
        clock.ms += ImageService.idleMs + 1
        service.sweepIdle()
        #expect(try Sys.directoryEntries(transfers) == [])
    }

    @Test func chunkedImportAndExportFollowTheRules() throws {
        let s = try Scratch()
        let service = ImageService(root: s.dir + "/store")
        let archive = bigArchive()
        let chunk = ImageService.maxChunk

        // Too big a chunk: 3, and no transfer is left open.
        #expect(code { () throws(LmctfyError) in
            _ = try service.importImage(ImportImageRequest(data: [UInt8](repeating: 0, count: chunk + 1)))
        } == .invalidArgument)

        // Upload in chunks; a wrong offset is 9 and keeps the transfer.
        let first = try service.importImage(ImportImageRequest(offset: 0, data: Array(archive[0..<chunk])))
        let id = try #require(first.transferId)
        #expect(first.received == UInt64(chunk))
        #expect(code { () throws(LmctfyError) in
            _ = try service.importImage(ImportImageRequest(transferId: id, offset: 7, data: [1]))
        } == .failedPrecondition)
        var offset = chunk
        while archive.count - offset > chunk {
            let r = try service.importImage(ImportImageRequest(transferId: id, offset: UInt64(offset), data: Array(archive[offset..<offset + chunk])))
            offset += chunk
            #expect(r.received == UInt64(offset))
        }
        let done = try service.importImage(ImportImageRequest(
            name: "big", transferId: id, offset: UInt64(offset), data: Array(archive[offset...]), commit: true))
        #expect(done.image?.name == "big")
        #expect(done.image?.entries == 16)
        // The transfer ended with the commit.
        #expect(code { () throws(LmctfyError) in
            _ = try service.importImage(ImportImageRequest(transferId: id, offset: UInt64(archive.count), data: [1]))
        } == .notFound)
        #expect(try Sys.directoryEntries(s.dir + "/store/.transfers") == [])

        // Export in chunks of 1 MiB reassembles a tar that imports to the same tree.
        var got: [UInt8] = []
        var exportId: String?
        var calls = 0
        while true {
            let r = try service.exportImage(ExportImageRequest(name: "big", transferId: exportId, offset: UInt64(got.count), compression: "gzip"))
            exportId = r.transferId
            got += r.data ?? []
            calls += 1
            #expect((r.data ?? []).count <= chunk)
            if r.done == true {
                #expect(r.size == UInt64(got.count))
                break
            }
        }
        #expect(calls >= 1)
        #expect(Array(got.prefix(2)) == [0x1f, 0x8b])
        #expect(try Sys.directoryEntries(s.dir + "/store/.transfers") == [])
        try Sys.writeFileAtomically(s.dir + "/back.tar.gz", got, mode: 0o644)
        let local = ImageStore(root: s.dir + "/local")
        try local.importImage(s.dir + "/back.tar.gz", as: "back")
        #expect(try treeSnapshot(local.rootfsPath(forImage: "back")) == treeSnapshot(service.store.rootfsPath(forImage: "big")))

        // A hostile archive through the service: 3, nothing left.
        var t = TarBuilder()
        t.add("../../evil", .file, content: [0x41])
        #expect(code { () throws(LmctfyError) in
            _ = try service.importImage(ImportImageRequest(name: "evil", data: t.archive, commit: true))
        } == .invalidArgument)
        #expect(try Sys.directoryEntries(s.dir + "/store") == [".transfers", "big"])
        #expect(try Sys.directoryEntries(s.dir + "/store/.transfers") == [])
        #expect(!Sys.exists(s.dir + "/evil"))

        // Abort, unknown ids, the transfer limit, bad names and compression.
        let open = try service.importImage(ImportImageRequest(data: [1, 2, 3]))
        _ = try service.importImage(ImportImageRequest(transferId: open.transferId, abort: true))
        #expect(try Sys.directoryEntries(s.dir + "/store/.transfers") == [])
        #expect(code { () throws(LmctfyError) in _ = try service.exportImage(ExportImageRequest(transferId: "nope")) } == .notFound)
        var ids: [String] = []
        for _ in 0..<ImageService.maxTransfers { ids.append(try service.importImage(ImportImageRequest(data: [1])).transferId ?? "") }
        #expect(code { () throws(LmctfyError) in _ = try service.importImage(ImportImageRequest(data: [1])) } == .resourceExhausted)
        for i in ids { _ = try service.importImage(ImportImageRequest(transferId: i, abort: true)) }
        #expect(code { () throws(LmctfyError) in
            _ = try service.importImage(ImportImageRequest(name: "../x", data: [1], commit: true))
        } == .invalidArgument)
        #expect(code { () throws(LmctfyError) in _ = try service.importImage(ImportImageRequest(abort: true)) } == .invalidArgument)
        // A commit with a bad name ends its transfer too.
        let named = try service.importImage(ImportImageRequest(data: [1]))
        #expect(code { () throws(LmctfyError) in
            _ = try service.importImage(ImportImageRequest(name: ".bad", transferId: named.transferId, offset: 1, commit: true))
        } == .invalidArgument)
        #expect(code { () throws(LmctfyError) in
            _ = try service.importImage(ImportImageRequest(transferId: named.transferId, offset: 1, data: [2]))
        } == .notFound)
        #expect(code { () throws(LmctfyError) in _ = try service.exportImage(ExportImageRequest(name: "big", compression: "zip")) } == .invalidArgument)
        #expect(code { () throws(LmctfyError) in _ = try service.exportImage(ExportImageRequest(name: "nothere")) } == .notFound)
        #expect(try service.listImages().images.map(\.name) == ["big"])
        _ = try service.removeImage(RemoveImageRequest(name: "big"))
        #expect(try service.listImages().images.isEmpty)
        #expect(try Sys.directoryEntries(s.dir + "/store/.transfers") == [])
    }
}

@Suite(.enabled(if: RealCgroups.available, "\(RealCgroups.unavailableReason ?? "")"), .serialized)
struct ImageLmctlTests {
    /// Ctrl-C (or SIGTERM, SIGHUP: a killed session) during `lmctl image
    /// import`: lmctl aborts the transfer on the agent, then dies of the
    /// signal. The agent kept an interrupted
    /// transfer (and its partial file) for ten minutes, and four of them
    /// refused every import until then. The archive is a FIFO, so the test
    /// decides when each piece arrives: the interrupt lands while lmctl
    /// waits for more, after the agent has opened the transfer, and lmctl
    /// ends without another piece (it waited in a read the handler
    /// restarted, until the pipe gave more; the virtual-host probe).
    @Test(arguments: [SIGINT, SIGTERM, SIGHUP])
    func anInterruptedImportLeavesNoTransferOpen(_ signal: Int32) throws {
        // A write to the FIFO after lmctl is gone is EPIPE, not the end of
        // the test runner.
        Sys.ignoreSIGPIPE()
        let s = try Scratch()
        let agent = try AgentProcess()
        defer { agent.stop() }
        let transfers = agent.dir + "/state/images/.transfers"
        let fifo = s.dir + "/archive.tar"
        #expect(mkfifo(fifo, 0o600) == 0)
        let pid = try TestProcess.spawnWithSignalsUnblocked([builtTool("lmctl"), "--agent", "unix://" + agent.socket, "image", "import", fifo, "cut"])
        var reaped = false
        defer { if !reaped { TestProcess.end(pid) } }
        let w = open(fifo, O_WRONLY | O_CLOEXEC)  // once lmctl has opened it
        try #require(w >= 0)
        defer { close(w) }
        let piece = [UInt8](repeating: 0x61, count: 65536)
        func send() { _ = piece.withUnsafeBytes { write(w, $0.baseAddress, $0.count) } }
        func held() -> [String] { ((try? Sys.subdirectoriesAndFiles(transfers)) ?? []).filter { !$0.hasPrefix(".") } }
        // Piece by piece until the agent holds a transfer.
        for _ in 0..<200 where held().isEmpty {
            send()
            usleep(20_000)
        }
        try #require(!held().isEmpty, "no transfer was opened")
        #expect(kill(pid, signal) == 0)
        var status: LmctfySystem.ExitStatus?
        for _ in 0..<250 where status == nil {
            status = TestProcess.reapIfExited(pid)
            usleep(20_000)
        }
        #expect(status != nil, "lmctl still waited for the pipe 5 s after the signal")
        if status == nil {
            send()  // its read returns, and it sees the interrupt
            status = TestProcess.waitForExit(pid)
        }
        reaped = status != nil
        #expect(status == .signaled(signal), "\(String(describing: status))")
        #expect(held().isEmpty, "the transfer was left open: \(held())")
    }

    /// Ctrl-C (SIGINT, SIGTERM) during `lmctl image export`: lmctl ends the
    /// transfer on the agent and removes its partial file, then dies of
    /// the signal. Both were left (the file beside the target; the archive
    /// in the agent for 10 minutes; the virtual-host probe).
    @Test func anInterruptedExportLeavesNothingOnEitherSide() throws {
        let s = try Scratch()
        let agent = try AgentProcess()
        defer { agent.stop() }
        let transfers = agent.dir + "/state/images/.transfers"
        let lmctl = [builtTool("lmctl"), "--agent", "unix://" + agent.socket]
        // 64 MiB that does not compress: 64 calls, and a first call that packs a while.
        let made = try TestProcess.capture(["/bin/sh", "-c",
            "mkdir -p \(s.dir)/tree && head -c 67108864 /dev/urandom > \(s.dir)/tree/blob && tar -C \(s.dir)/tree -cf \(s.dir)/big.tar ."])
        try #require(made.status == 0, "\(String(decoding: made.stderr, as: UTF8.self))")
        let imported = try TestProcess.capture(lmctl + ["image", "import", s.dir + "/big.tar", "big"])
        try #require(imported.status == 0, "\(String(decoding: imported.stderr, as: UTF8.self))")
        func held() -> [String] { ((try? Sys.subdirectoriesAndFiles(transfers)) ?? []).filter { !$0.hasPrefix(".") } }
        func leftBeside(_ out: String) -> [String] { ((try? Sys.directoryEntries(s.dir)) ?? []).filter { $0.hasPrefix(out + ".tmp-") } }

        for (round, signal) in [SIGINT, SIGTERM].enumerated() {
            let out = "out\(round).tar"
            let pid = try TestProcess.spawnWithSignalsUnblocked(lmctl + ["image", "export", "big", s.dir + "/" + out])
            var reaped = false
            defer { if !reaped { TestProcess.end(pid) } }
            // Stopped as soon as its file is there (before its first call ends).
            for _ in 0..<5000 where leftBeside(out).isEmpty { usleep(1000) }
            try #require(!leftBeside(out).isEmpty, "lmctl never opened its file")
            #expect(kill(pid, SIGSTOP) == 0)
            #expect(kill(pid, signal) == 0)
            #expect(kill(pid, SIGCONT) == 0)
            let status = try Sys.waitForExit(pid)
            reaped = true
            #expect(status == .signaled(signal), "\(status)")
            #expect(leftBeside(out).isEmpty, "the partial file was left")
            #expect(!Sys.exists(s.dir + "/" + out))
            #expect(held().isEmpty, "round \(round): the agent kept \(held())")
        }
    }

    @Test func lmctlImageRoundTripThroughTheAgent() throws {
        let s = try Scratch()
        let agent = try AgentProcess()
        defer { agent.stop() }
        let storeRoot = agent.dir + "/state/images"
        func lmctl(_ args: [String]) throws -> ChildResult {
            try TestProcess.capture([builtTool("lmctl"), "--agent", "unix://" + agent.socket] + args)
        }
        let archive = s.dir + "/big.tar"
        try Sys.writeFileAtomically(archive, bigArchive(), mode: 0o644)

        // A device is no archive (/dev/zero was uploaded until the agent's
        // disk was full; a probe), nor is a directory.
        for notAFile in ["/dev/zero", s.dir] {
            let r = try lmctl(["image", "import", notAFile, "zero"])
            #expect(r.status == 3 && String(decoding: r.stderr, as: UTF8.self).contains("is not a file or a pipe"), "\(r)")
        }
        let imported = try lmctl(["image", "import", archive, "base"])
        #expect(imported.status == 0, "\(String(decoding: imported.stderr, as: UTF8.self))")
        #expect(String(decoding: imported.stdout, as: UTF8.self).hasPrefix("image=\"base\"\nentries=\"16\"\n"))
        #expect(String(decoding: try lmctl(["image", "list"]).stdout, as: UTF8.self) == "image=\"base\"\n")

        // What the agent unpacked is what a local import of the same file gives.
        let local = ImageStore(root: s.dir + "/local")
        try local.importImage(archive, as: "base")
        let want = try treeSnapshot(local.rootfsPath(forImage: "base"))
        #expect(try treeSnapshot(storeRoot + "/base/rootfs") == want)

        // Export through lmctl (xz), import locally: the same tree again.
        let out = s.dir + "/out.tar.xz"
        let exported = try lmctl(["image", "export", "base", out])
        #expect(exported.status == 0, "\(String(decoding: exported.stderr, as: UTF8.self))")
        try local.importImage(out, as: "again")
        #expect(try treeSnapshot(local.rootfsPath(forImage: "again")) == want)

        // Hostile: 3, and the agent's store holds only "base".
        var t = TarBuilder()
        t.add("ok", .file, content: [0x41])
        t.add("link", .symlink, link: "/")
        t.add("link/tmp/lmctfy_agent_escape_\(getpid())", .file, content: [0x41])
        try Sys.writeFileAtomically(s.dir + "/evil.tar", t.archive, mode: 0o644)
        let refused = try lmctl(["image", "import", s.dir + "/evil.tar", "evil"])
        #expect(refused.status == 3)
        #expect(String(decoding: refused.stderr, as: UTF8.self).contains("goes through the symlink"))
        #expect(!Sys.exists("/tmp/lmctfy_agent_escape_\(getpid())"))
        #expect(try Sys.directoryEntries(storeRoot).filter { !$0.hasPrefix(".") } == ["base"])
        #expect(try Sys.directoryEntries(storeRoot + "/.transfers") == [])

        #expect(try lmctl(["image", "import", archive, "base"]).status == 6)
        #expect(try lmctl(["image", "remove", "base"]).status == 0)
        #expect(try lmctl(["image", "remove", "base"]).status == 5)
        #expect(String(decoding: try lmctl(["image", "list"]).stdout, as: UTF8.self) == "")
    }
}
