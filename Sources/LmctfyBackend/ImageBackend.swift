// What the `image` verbs act on: the image store on this machine (lmctfy:
// LmctfyImages' ImageStore) or an agent's (lmctl: over the RPC, the archive
// streamed in bounded chunks). Archive paths are always on the caller's
// machine.
import LmctfySystem

/// One image of a store.
public struct ImageSummary: Sendable, Equatable {
    /// The image's name (one segment: letters, digits, '_', '-', '.').
    public var name: String
    /// Entries unpacked (files, directories, links).
    public var entries: UInt64
    /// Bytes of regular file content.
    public var bytes: UInt64
    /// When it was imported, seconds since the epoch.
    public var created: Int64

    public init(name: String, entries: UInt64, bytes: UInt64, created: Int64) {
        self.name = name
        self.entries = entries
        self.bytes = bytes
        self.created = created
    }
}

/// A store of root filesystems for virtual hosts.
///
/// Implementations are `Sendable`; calls block their thread (unpacking,
/// writing, network) and must not run on an event loop.
public protocol ImageBackend: Sendable {
    /// Unpacks the rootfs archive at `archivePath` (tar, optionally gzip/xz/
    /// zstd/bzip2 compressed) as image `name`; atomic: on failure nothing is
    /// left. INVALID_ARGUMENT for a bad name or an archive that escapes its
    /// root; ALREADY_EXISTS for a name in use.
    @discardableResult
    func importImage(_ archivePath: String, as name: String) throws(LmctfyError) -> ImageSummary
    /// Writes image `name` as a tar to `archivePath` (gzip for .gz/.tgz, xz
    /// for .xz) in a fixed order (depth first, names sorted by their bytes),
    /// so the same tree gives the same bytes; NOT_FOUND if missing.
    func exportImage(_ name: String, to archivePath: String) throws(LmctfyError)
    /// Every image, by name.
    func listImages() throws(LmctfyError) -> [ImageSummary]
    /// Removes image `name`; NOT_FOUND if missing.
    func removeImage(_ name: String) throws(LmctfyError)
}

/// Image names, checked the same way on every side.
public enum ImageName {
    /// The longest name accepted.
    public static let maxLength = 128

    /// A valid name: 1...128 bytes of `[A-Za-z0-9_.-]`, starting with a
    /// letter or digit (like a container name's segment, so never `.`, `..`
    /// or a hidden file); INVALID_ARGUMENT otherwise.
    public static func check(_ name: String) throws(LmctfyError) {
        let bytes = Array(name.utf8)
        guard !bytes.isEmpty else { throw .invalidArgument("Image name is missing") }
        guard bytes.count <= maxLength else { throw .invalidArgument("Image name is longer than \(maxLength) bytes") }
        func alnum(_ b: UInt8) -> Bool {
            (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a)
        }
        guard bytes.allSatisfy({ alnum($0) || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: ".") }) else {
            throw .invalidArgument("Invalid characters in image name \"\(name)\" (letters, digits, '_', '-' and '.' only)")
        }
        guard alnum(bytes[0]) else {
            throw .invalidArgument("Image name \"\(name)\" starts with a non-alphanumeric character")
        }
    }
}

/// How an exported archive is compressed, chosen by its file name the same
/// way on every side (lmctfy's store, lmctl asking an agent's).
public enum ArchiveCompression: String, Sendable {
    case none = "", gzip, xz

    /// gzip for .gz/.tgz, xz for .xz/.txz, none for anything else but the
    /// suffixes of compressions import reads and export does not write
    /// (.zst, .bz2, ...): INVALID_ARGUMENT, rather than an uncompressed
    /// tar under a name that says otherwise.
    public static func forExport(_ path: String) throws(LmctfyError) -> ArchiveCompression {
        if path.hasSuffix(".gz") || path.hasSuffix(".tgz") { return .gzip }
        if path.hasSuffix(".xz") || path.hasSuffix(".txz") { return .xz }
        for other in [".zst", ".tzst", ".zstd", ".bz2", ".tbz2", ".tbz", ".lz4", ".lzma", ".tlz", ".Z"] where path.hasSuffix(other) {
            throw .invalidArgument("image export compresses with gzip (.gz, .tgz) or xz (.xz, .txz), or not at all; \"\(path)\" asks for \(other)")
        }
        return .none
    }
}
