// The agent's image methods (PROTOCOL.md section 6.3): the image store,
// with archives moved in and out in chunks of at most 1 MiB through
// transfers, files under <image_root>/.transfers that outlive no agent (the
// directory is emptied at start) and no caller for long (10 idle minutes).
import Glibc
import LmctfyBackend
import LmctfyImages
import LmctfyProto
import LmctfyRPC
import LmctfySystem
import Synchronization

/// The image store behind ImportImage, ExportImage, ListImages and RemoveImage.
public final class ImageService: Sendable {
    /// The largest chunk a call carries.
    public static let maxChunk = 1 << 20
    /// Transfers open at once.
    public static let maxTransfers = 4
    /// A transfer untouched for this long is dropped.
    public static let idleMs: UInt64 = 10 * 60 * 1000
    /// An export untouched for this long is dropped: its archive is whole
    /// on the agent's disk, and its caller reads chunk after chunk; one
    /// killed after the packing left the archive (gigabytes) for 10
    /// minutes (the virtual-host probe).
    public static let exportIdleMs: UInt64 = 60 * 1000
    /// When every transfer is open, one untouched for this long gives its
    /// place to a new one: a client that died mid-upload (killed, not
    /// interrupted, so it never aborted) held the store for 10 minutes,
    /// four of them every import and export. A live client touches its
    /// transfer with every chunk.
    public static let yieldIdleMs: UInt64 = 30 * 1000

    public let store: ImageStore
    private let transferDir: String

    private struct Transfer {
        var path: String
        var size: UInt64
        var lastUsedMs: UInt64
        var export: Bool
        /// A call is working on it: another call on the same transfer is
        /// refused (ABORTED) rather than interleaved, and the idle sweep
        /// leaves it alone.
        var busy: Bool
    }
    private let transfers = Mutex<[String: Transfer]>([:])

    /// Milliseconds, monotonic (a test's own clock).
    private let clock: @Sendable () -> UInt64

    /// The service over the store at `root`; leftover transfers of an
    /// earlier agent are deleted.
    public init(root: String, clock: @escaping @Sendable () -> UInt64 = { MonotonicClock.milliseconds() }) {
        self.clock = clock
        store = ImageStore(root: root)
        transferDir = root + "/.transfers"
        try? Sys.removeTree(transferDir)
    }

    /// Drops the transfers no caller has touched for long (`idleMs`, an
    /// export `exportIdleMs`) with their files: before a new one opens,
    /// and from the agent's sweep (once a minute).
    public func sweepIdle() {
        let now = clock()
        let stale: [String] = transfers.locked { t in
            // (A release on another thread may have read the clock after
            // `now`: a saturating difference, never a trap.)
            let old = t.filter { !$0.value.busy && Self.idle(now, $0.value.lastUsedMs) > ($0.value.export ? Self.exportIdleMs : Self.idleMs) }
            for k in old.keys { t[k] = nil }
            return old.values.map(\.path)
        }
        for p in stale { try? Sys.unlink(p) }
    }

    /// How long since `last` at `now`; 0 when `last` is later.
    static func idle(_ now: UInt64, _ last: UInt64) -> UInt64 { now > last ? now - last : 0 }

    /// Opens a transfer, claimed by the caller (busy) until `release` or `end`.
    private func newTransfer(export: Bool) throws(LmctfyError) -> (String, String) {
        let now = clock()
        // Drop the idle ones first.
        sweepIdle()
        let id = RemoteIds.newId()
        let path = transferDir + "/" + id
        let (admitted, yielded) = transfers.locked { t -> (Bool, String?) in
            var yielded: String?
            if t.count >= Self.maxTransfers,
               let oldest = t.filter({ !$0.value.busy && Self.idle(now, $0.value.lastUsedMs) > Self.yieldIdleMs })
                   .min(by: { $0.value.lastUsedMs < $1.value.lastUsedMs }) {
                t[oldest.key] = nil
                yielded = oldest.value.path
            }
            guard t.count < Self.maxTransfers else { return (false, yielded) }
            t[id] = Transfer(path: path, size: 0, lastUsedMs: now, export: export, busy: true)
            return (true, yielded)
        }
        if let yielded { try? Sys.unlink(yielded) }
        guard admitted else {
            throw .init(.resourceExhausted, "\(Self.maxTransfers) image transfers are open already, each used in the last \(Self.yieldIdleMs / 1000) s; try again later")
        }
        do {
            if !Sys.isDirectory(store.root) { try Sys.mkdir(store.root, mode: 0o700) }
            if !Sys.isDirectory(transferDir) { try Sys.mkdir(transferDir, mode: 0o700) }
        } catch where error.errno == EEXIST {
        } catch {
            end(id)
            throw error.lmctfy(.failedPrecondition, "Cannot make the transfer directory")
        }
        return (id, path)
    }

    /// Ends a transfer and deletes its file.
    private func end(_ id: String) {
        if let t = transfers.locked({ $0.removeValue(forKey: id) }) { try? Sys.unlink(t.path) }
    }

    /// Lets the next call at a transfer (`size`: what it holds now).
    private func release(_ id: String, size: UInt64? = nil) {
        let now = clock()
        transfers.locked { t in
            t[id]?.busy = false
            t[id]?.lastUsedMs = now
            if let size { t[id]?.size = size }
        }
    }

    /// Claims an open transfer for one call.
    private func claim(_ id: String, export: Bool) throws(LmctfyError) -> Transfer {
        let now = clock()
        let result: Result<Transfer, LmctfyError> = transfers.locked { all in
            guard var t = all[id], t.export == export else {
                return .failure(.notFound("No image transfer \"\(id)\" (it ended, expired or never existed)"))
            }
            guard !t.busy else { return .failure(LmctfyError(.aborted, "Another call is working on image transfer \"\(id)\"")) }
            t.busy = true
            t.lastUsedMs = now
            all[id] = t
            return .success(t)
        }
        return try result.get()
    }

    static func info(_ s: ImageSummary) -> ImageInfo {
        ImageInfo(name: s.name, entries: s.entries, bytes: s.bytes, created: s.created)
    }

    func importImage(_ r: ImportImageRequest) throws(LmctfyError) -> ImportImageResponse {
        let data = r.data ?? []
        guard data.count <= Self.maxChunk else {
            throw .invalidArgument("ImportImage chunks are at most \(Self.maxChunk) bytes, not \(data.count)")
        }
        var transfer: Transfer
        let id: String
        if let given = r.transferId, !given.isEmpty {
            id = given
            transfer = try claim(given, export: false)
            if r.abort == true {
                end(id)
                return ImportImageResponse(transferId: id, received: transfer.size)
            }
        } else {
            guard r.abort != true else { throw .invalidArgument("ImportImage abort needs a transfer_id") }
            if r.commit == true { try ImageName.check(r.name ?? "") }  // before opening anything
            let (newId, path) = try newTransfer(export: false)
            id = newId
            transfer = Transfer(path: path, size: 0, lastUsedMs: 0, export: false, busy: true)
        }
        // The transfer is ours until release or end.
        var offsetMismatch = false
        do throws(LmctfyError) {
            if r.commit == true { try ImageName.check(r.name ?? "") }
            guard (r.offset ?? 0) == transfer.size else {
                offsetMismatch = true
                throw .failedPrecondition("ImportImage offset \(r.offset ?? 0) is not where the upload is: received \(transfer.size)")
            }
            if !data.isEmpty {
                try Self.keepRoom(after: data.count, in: transfer.path)
                do {
                    let fd = try Sys.open(transfer.path, O_WRONLY | O_CREAT | O_APPEND, mode: 0o600)
                    defer { close(fd) }
                    try Sys.writeAll(fd, data)
                } catch {
                    throw error.lmctfy(error.isNoSpace ? .resourceExhausted : .failedPrecondition, "Cannot store the upload")
                }
                transfer.size += UInt64(data.count)
            }
        } catch {
            // A wrong offset keeps the transfer (the caller may go on from
            // `received`); anything else, or any commit, ends it.
            if offsetMismatch && r.commit != true { release(id) } else { end(id) }
            throw error
        }
        guard r.commit == true else {
            release(id, size: transfer.size)
            return ImportImageResponse(transferId: id, received: transfer.size)
        }
        defer { end(id) }
        if !Sys.exists(transfer.path) { _ = try? Sys.createFile(transfer.path, "", mode: 0o600) }
        // The caller's archive is "the upload", not the agent's own file
        // under .transfers (its path is nothing the caller can use).
        let summary = try store.importImage(transfer.path, as: r.name ?? "", shownAs: "the upload")
        return ImportImageResponse(transferId: id, received: transfer.size, image: Self.info(summary))
    }

    /// `cancelled`: the caller gave up (its connection gone, its deadline
    /// passed): the packing stops and its archive goes (an interrupted
    /// lmctl left the agent packing, and the archive kept for 10 minutes;
    /// the virtual-host probe).
    func exportImage(_ r: ExportImageRequest, cancelled: @escaping () -> Bool = { false }) throws(LmctfyError) -> ExportImageResponse {
        let max = Int(min(UInt32(Self.maxChunk), r.maxBytes.map { $0 == 0 ? UInt32(Self.maxChunk) : $0 } ?? UInt32(Self.maxChunk)))
        let id: String
        let transfer: Transfer
        if let given = r.transferId, !given.isEmpty {
            id = given
            transfer = try claim(given, export: true)
            if r.abort == true {
                end(id)
                return ExportImageResponse(transferId: id, size: transfer.size, done: true)
            }
        } else {
            guard r.abort != true else { throw .invalidArgument("ExportImage abort needs a transfer_id") }
            let suffix: String
            switch r.compression ?? "" {
            case "", "tar": suffix = ".tar"
            case "gzip": suffix = ".tar.gz"
            case "xz": suffix = ".tar.xz"
            case let other: throw .invalidArgument("ExportImage compression \"\(other)\" is not \"\", \"gzip\" or \"xz\"")
            }
            _ = try store.rootfsPath(forImage: r.name ?? "")
            let (newId, base) = try newTransfer(export: true)
            id = newId
            let path = base + suffix
            transfers.locked { $0[id]?.path = path }
            do throws(LmctfyError) {
                try store.exportImage(r.name ?? "", to: path, stop: cancelled)
                if cancelled() { throw LmctfyError(.cancelled, "ExportImage: the caller gave up") }
                guard let st = try? Sys.linkStatus(path) else { throw .internalError("the exported archive vanished") }
                transfer = Transfer(path: path, size: UInt64(st.st_size), lastUsedMs: 0, export: true, busy: true)
            } catch {
                end(id)
                throw error
            }
        }
        let offset = r.offset ?? 0
        guard offset <= transfer.size else {
            release(id, size: transfer.size)
            throw LmctfyError(.outOfRange, "ExportImage offset \(offset) is past the end (\(transfer.size) bytes)")
        }
        let count = Int(min(UInt64(max), transfer.size - offset))
        var chunk: [UInt8] = []
        if count > 0 {
            do throws(SystemError) {
                let fd = try Sys.open(transfer.path, O_RDONLY)
                defer { close(fd) }
                chunk = try Sys.pread(fd, count: count, at: offset, path: transfer.path)
            } catch {
                end(id)
                throw error.lmctfy(.internal, "Cannot read the exported archive")
            }
            guard chunk.count == count else {
                end(id)
                throw LmctfyError.internalError("The exported archive \(transfer.path) shrank")
            }
        }
        let done = offset + UInt64(count) == transfer.size
        if done { end(id) } else { release(id, size: transfer.size) }
        return ExportImageResponse(transferId: id, size: transfer.size, offset: offset, data: chunk, done: done)
    }

    func listImages() throws(LmctfyError) -> ListImagesResponse {
        ListImagesResponse(images: try store.listImages().map(Self.info))
    }

    func removeImage(_ r: RemoveImageRequest) throws(LmctfyError) -> RemoveImageResponse {
        try store.removeImage(r.name ?? "")
        return RemoveImageResponse()
    }
}

/// Transfer ids: 16 random bytes in hex.
enum RemoteIds {
    static func newId() -> String {
        Sys.hex(Crypto.randomBytes(16))
    }
}

extension ImageService {
    /// The room an upload leaves on its file system: 5% of it, at most
    /// 64 MiB. An upload that never ended (`lmctl image import /dev/zero`)
    /// wrote until the disk was full, taking the agent's snapshot and
    /// journal writes in its state_dir down with it (a probe).
    static func reserveBytes(total: UInt64) -> UInt64 { min(64 << 20, total / 20) }

    /// RESOURCE_EXHAUSTED when `bytes` more at `path` would leave less
    /// than `reserveBytes` free.
    static func keepRoom(after bytes: Int, in path: String) throws(LmctfyError) {
        let dir = path.lastIndex(of: "/").map { String(path[..<$0]) } ?? "."
        guard let room = Sys.room(of: dir) else { return }
        let reserve = reserveBytes(total: room.total)
        guard room.free >= UInt64(bytes) + reserve else {
            throw LmctfyError(.resourceExhausted, "Cannot store the upload: it would leave less than \(reserve) bytes free "
                              + "on the agent's image store (kept for its state)")
        }
    }
}
