// `lmctl image ...`: the agent's image store (PROTOCOL.md section 6.3). The
// archive is on lmctl's machine and moves in 1 MiB chunks of unary calls,
// so neither side holds it whole; an export is written beside its target
// and renamed into place at the end.
import Glibc
import LmctfyBackend
import LmctfyProto
import LmctfyRPC
import LmctfySystem

/// An ImageBackend whose every call is an RPC to one agent.
public final class RemoteImages: ImageBackend, @unchecked Sendable {
    // RpcClient is used from one thread at a time: lmctl runs one verb.
    let client: RpcClient
    /// Bytes per ImportImage/ExportImage call.
    static let chunk = 1 << 20

    public init(client: RpcClient) {
        self.client = client
    }

    static func summary(_ i: ImageInfo?) -> ImageSummary {
        ImageSummary(name: i?.name ?? "", entries: i?.entries ?? 0, bytes: i?.bytes ?? 0, created: i?.created ?? 0)
    }

    /// Ctrl-C during an upload aborts the transfer on the agent before
    /// lmctl dies of it: the agent kept an interrupted transfer open (and
    /// its partial file) for ten minutes, and four of them refused every
    /// import until then.
    @discardableResult
    public func importImage(_ archivePath: String, as name: String) throws(LmctfyError) -> ImageSummary {
        try InterruptWatch.around { (interrupted: () -> Bool) throws(LmctfyError) -> ImageSummary in
            try upload(archivePath, as: name, interrupted: interrupted)
        }
    }

    private func upload(_ archivePath: String, as name: String, interrupted: () -> Bool) throws(LmctfyError) -> ImageSummary {
        try ImageName.check(name)  // before sending anything
        let fd: Int32
        do {
            fd = try Sys.open(archivePath, O_RDONLY)
        } catch where error.errno == ENOENT {
            throw .notFound("Archive \"\(archivePath)\" does not exist")
        } catch {
            throw error.lmctfy(.invalidArgument, "Cannot open the archive")
        }
        defer { close(fd) }
        // A file or a pipe: a device (/dev/zero) or a directory is no
        // archive (/dev/zero was uploaded until the agent's disk was full;
        // lmctfy refused it as having no entries).
        var st = stat()
        if fstat(fd, &st) == 0, st.st_mode & S_IFMT != S_IFREG && st.st_mode & S_IFMT != S_IFIFO {
            throw .invalidArgument("Archive \"\(archivePath)\" is not a file or a pipe")
        }
        var transfer: String?
        var offset: UInt64 = 0
        /// The next piece; an interrupt while waiting for it aborts the
        /// transfer and ends lmctl (a pipe that gave nothing held Ctrl-C
        /// until it did: the handler restarts the read).
        func read() throws(LmctfyError) -> [UInt8] {
            guard Self.waitReadable(fd, interrupted: interrupted) else {
                abortTransfer()
                InterruptWatch.dieOfInterrupt()
            }
            do {
                return try Sys.readChunk(fd, upTo: Self.chunk, path: archivePath)
            } catch {
                abortTransfer()
                throw error.lmctfy(.invalidArgument, "Cannot read the archive")
            }
        }
        func abortTransfer() {
            if let transfer { _ = try? client.call(AgentMethods.importImage, ImportImageRequest(transferId: transfer, abort: true)) }
        }
        var next = try read()
        while true {
            let data = next
            // Read ahead, so the last chunk carries the commit.
            let following = data.isEmpty ? [] : try read()
            if interrupted() {
                abortTransfer()
                InterruptWatch.dieOfInterrupt()
            }
            let last = following.isEmpty
            // On a terminal: how much went up; the last call also unpacks.
            Progress.report(last ? "importing \(name): sent \(Progress.mib(offset + UInt64(data.count))), unpacking on the agent"
                                 : "importing \(name): sent \(Progress.mib(offset + UInt64(data.count)))")
            let request = ImportImageRequest(name: name, transferId: transfer, offset: offset, data: data, commit: last)
            let response: ImportImageResponse
            do {
                response = try client.call(AgentMethods.importImage, request)
            } catch {
                if !last { abortTransfer() }
                throw error
            }
            if last { return Self.summary(response.image) }
            transfer = response.transferId
            offset += UInt64(data.count)
            next = following
        }
    }

    /// Waits until `fd` has something to read (or is at its end, or in
    /// error: the read says which); false once `interrupted` (a signal ends
    /// the poll with EINTR, and it is asked every 200 ms besides).
    static func waitReadable(_ fd: Int32, interrupted: () -> Bool) -> Bool {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        while !interrupted() {
            if poll(&p, 1, 200) > 0 { return true }
        }
        return false
    }

    /// Ctrl-C (or SIGTERM) during a download ends the transfer on the agent
    /// and removes the partial file before lmctl dies of it: both were
    /// left (the file beside the target, the archive in the agent's store
    /// for 10 minutes; the virtual-host probe).
    public func exportImage(_ name: String, to archivePath: String) throws(LmctfyError) {
        try ImageName.check(name)
        let compression = try ArchiveCompression.forExport(archivePath).rawValue
        var stopped = false
        do throws(LmctfyError) {
            try InterruptWatch.around { (interrupted: () -> Bool) throws(LmctfyError) in
                try download(name, to: archivePath, compression: compression) { (transfer: String?) throws(LmctfyError) in
                    guard interrupted() else { return }
                    if let transfer { _ = try? client.call(AgentMethods.exportImage, ExportImageRequest(transferId: transfer, abort: true)) }
                    stopped = true
                    throw LmctfyError(.cancelled, "interrupted")
                }
            }
        } catch {
            if stopped { InterruptWatch.dieOfInterrupt() }
            throw error
        }
    }

    /// The export's calls; `check` is asked after each, with the transfer.
    private func download(_ name: String, to archivePath: String, compression: String,
                          check: (String?) throws(LmctfyError) -> Void) throws(LmctfyError) {
        // A device, FIFO or symlink (/dev/null, /dev/stdout) is written in
        // place; a rename over it would replace it with a file.
        try Sys.producingOutputFile(archivePath, token: String(getpid())) { (target, inPlace) throws(LmctfyError) in
            let fd: Int32
            do throws(SystemError) {
                fd = inPlace ? try Sys.open(target, O_WRONLY | O_TRUNC) : try Sys.open(target, O_WRONLY | O_CREAT | O_TRUNC, mode: 0o644)
            } catch {
                throw error.lmctfy(.failedPrecondition, "Cannot create \"\(archivePath)\"")
            }
            defer { close(fd) }
            var transfer: String?
            var offset: UInt64 = 0
            while true {
                let r = try client.call(AgentMethods.exportImage, ExportImageRequest(
                    name: name, transferId: transfer, offset: offset, maxBytes: UInt32(Self.chunk), compression: compression))
                transfer = r.transferId
                if r.done != true { try check(transfer) }
                guard r.offset ?? 0 == offset else { throw .internalError("the agent sent offset \(r.offset ?? 0), not \(offset)") }
                do throws(SystemError) {
                    try Sys.writeAll(fd, r.data ?? [])
                } catch {
                    throw error.lmctfy(.failedPrecondition, "Cannot write \"\(archivePath)\"")
                }
                offset += UInt64(r.data?.count ?? 0)
                Progress.report("exporting \(name): received \(Progress.mib(offset))")
                if r.done == true { break }
                guard !(r.data ?? []).isEmpty else { throw .internalError("the agent sent an empty chunk before the end") }
            }
        }
    }

    public func listImages() throws(LmctfyError) -> [ImageSummary] {
        try client.call(AgentMethods.listImages, ListImagesRequest()).images.map { Self.summary($0) }
    }

    public func removeImage(_ name: String) throws(LmctfyError) {
        _ = try client.call(AgentMethods.removeImage, RemoveImageRequest(name: name))
    }
}
