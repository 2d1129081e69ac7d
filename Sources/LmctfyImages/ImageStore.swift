// The image store: root filesystems for virtual hosts, unpacked from
// tarballs with libarchive into <root>/<name>/rootfs.
//
// An archive is hostile until proven otherwise. Every entry is checked
// before libarchive sees it (ArchivePolicy), and extraction then runs with
// libarchive's secure flags as a second line, on a thread whose working
// directory is the new image (so every path libarchive gets is relative):
// - absolute paths and ".." components: INVALID_ARGUMENT (3);
// - an entry whose path goes through a symlink the archive made (the
//   "link -> /etc, then link/passwd" trick), or that replaces a symlink or
//   is a symlink replacing something: 3;
// - a relative symlink target that climbs above the image root: 3.
//   Absolute targets are kept: inside the virtual host they resolve against
//   its own root, as the kernel does after pivot_root. Host-side code never
//   follows a symlink inside an image (the store itself does not);
// - a hard link whose target is not a regular file already unpacked: 3;
// - character and block devices and sockets: 3 (a virtual host's /dev is
//   made by the runtime, not shipped in an image); FIFOs are allowed.
// Owners are kept as numbers (never looked up by name on this host), modes
// as given (setuid included: images are root's; the store root is 0700).
// Import is atomic: it unpacks into <root>/.tmp-..., then renames that into
// place; a failure removes it, so a refused archive leaves nothing.
import CArchiveLoader
import CLmctfyShims
import Glibc
import LmctfyBackend
import LmctfySystem

/// The decisions about one archive entry, separated from libarchive so the
/// rules are testable on their own.
public struct ArchivePolicy: Sendable {
    /// What an entry is.
    public enum Kind: Sendable, Equatable {
        case directory, regular, symlink, hardlink, fifo, device, socket
    }

    /// Kinds of the paths accepted so far (relative, "/"-joined).
    private var seen: [String: Kind] = [:]
    /// The symlinks accepted so far: path -> target text.
    private var links: [String: String] = [:]

    public init() {}

    /// The path's components relative to the image root: no leading "/",
    /// no "..", "." and empty components dropped. nil for the root itself.
    public static func components(_ raw: String) throws(LmctfyError) -> [String]? {
        guard !raw.isEmpty else { throw .invalidArgument("archive entry with an empty path") }
        guard !raw.hasPrefix("/") else { throw .invalidArgument("archive entry \"\(raw)\" has an absolute path") }
        var out: [String] = []
        var bytes = 0
        for part in raw.split(separator: "/", omittingEmptySubsequences: true) {
            if part == "." { continue }
            if part == ".." { throw .invalidArgument("archive entry \"\(raw)\" has a \"..\" component") }
            out.append(String(part))
            bytes += part.utf8.count + 1
            if bytes > maxPathBytes {
                throw .invalidArgument("archive entry \"\(raw.prefix(100))...\" has a path longer than \(maxPathBytes) bytes "
                                       + "(its path in the store must stay within PATH_MAX, 4,096 bytes, to be exported or removed)")
            }
        }
        return out.isEmpty ? nil : out
    }

    /// The longest path an entry may have inside the image: an image the
    /// store accepted with 3,000 levels could not be exported (past
    /// PATH_MAX), and one of 6,000 crashed the removal (the probe).
    public static let maxPathBytes = 3072

    /// Whether a relative symlink target, resolved from the link's
    /// directory `parent` by its text alone, stays inside the root.
    public static func targetStaysInside(_ target: String, parent: [String]) -> Bool {
        if target.hasPrefix("/") { return true }
        var depth = parent.count
        for part in target.split(separator: "/", omittingEmptySubsequences: true) {
            if part == "." { continue }
            if part == ".." {
                depth -= 1
                if depth < 0 { return false }
            } else {
                depth += 1
            }
        }
        return true
    }

    /// Whether a symlink target, resolved from the link's directory
    /// `parent` as the kernel will resolve it once the image is unpacked
    /// (through the symlinks accepted so far, `..` of a link's directory
    /// climbing from where the link points), stays inside the root. By its
    /// text alone, `a/b -> ..` then `esc -> a/b/a/b/../../../etc` looked
    /// inside and pointed at the host's /etc. An absolute target restarts
    /// at the root and is kept, as an absolute link is (inside the virtual
    /// host it resolves against the virtual host's root, where `..` stays at the
    /// root); a relative chain climbing above the root, or more than 40
    /// links, is outside.
    public func resolvesInside(_ target: String, parent: [String]) -> Bool {
        var budget = 40  // the kernel's ELOOP
        var absolute = false
        func walk(_ target: String, from start: [String]) -> [String]? {
            if target.hasPrefix("/") { absolute = true }
            var at = target.hasPrefix("/") ? [] : start
            for part in target.split(separator: "/", omittingEmptySubsequences: true) {
                if part == "." { continue }
                if part == ".." {
                    if at.isEmpty {
                        if absolute { continue }
                        return nil
                    }
                    at.removeLast()
                    continue
                }
                at.append(String(part))
                guard let link = links[at.joined(separator: "/")] else { continue }
                budget -= 1
                if budget < 0 { return nil }
                at.removeLast()
                guard let resolved = walk(link, from: at) else { return nil }
                at = resolved
            }
            return at
        }
        return walk(target, from: parent) != nil
    }

    /// After the last entry: every symlink checked again against all the
    /// symlinks of the archive, since one accepted early can be redirected
    /// by a link made after it (`esc -> a/b/../..` first, `a/b -> ..` later).
    public func finish() throws(LmctfyError) {
        for (path, target) in links.sorted(by: { $0.key < $1.key }) {
            let parent = Array(path.split(separator: "/").dropLast().map(String.init))
            guard resolvesInside(target, parent: parent) else {
                throw .invalidArgument("archive entry \"\(path)\" is a symlink to \"\(target)\", which resolves outside the image")
            }
        }
    }

    /// Checks one entry and records it. `path` is its cleaned relative
    /// path; `linkTarget` the symlink's target text or the hard link's
    /// (cleaned, relative) target path.
    public mutating func admit(_ path: [String], kind: Kind, raw: String, linkTarget: String? = nil) throws(LmctfyError) {
        let joined = path.joined(separator: "/")
        for i in 1..<max(path.count, 1) where path.count > 1 {
            let prefix = path[0..<i].joined(separator: "/")
            if seen[prefix] == .symlink {
                throw .invalidArgument("archive entry \"\(raw)\" goes through the symlink \"\(prefix)\"")
            }
        }
        switch kind {
        case .device:
            throw .invalidArgument("archive entry \"\(raw)\" is a device node (images may not carry devices)")
        case .socket:
            throw .invalidArgument("archive entry \"\(raw)\" is a socket")
        case .symlink:
            guard let target = linkTarget, !target.isEmpty else {
                throw .invalidArgument("archive entry \"\(raw)\" is a symlink without a target")
            }
            guard Self.targetStaysInside(target, parent: Array(path.dropLast())),
                  resolvesInside(target, parent: Array(path.dropLast())) else {
                throw .invalidArgument("archive entry \"\(raw)\" is a symlink to \"\(target)\", outside the image")
            }
        case .hardlink:
            guard let target = linkTarget else {
                throw .invalidArgument("archive entry \"\(raw)\" is a hard link without a target")
            }
            guard seen[target] == .regular || seen[target] == .hardlink else {
                throw .invalidArgument("archive entry \"\(raw)\" is a hard link to \"\(target)\", which is not a file unpacked before it")
            }
        case .directory, .regular, .fifo:
            break
        }
        if let before = seen[joined] {
            if before == .symlink || kind == .symlink || (before == .directory) != (kind == .directory) {
                throw .invalidArgument("archive entry \"\(raw)\" replaces an earlier entry of another kind")
            }
        }
        seen[joined] = kind
        if kind == .symlink, let linkTarget { links[joined] = linkTarget }
    }
}

/// Root filesystems for virtual hosts, at `root` (one directory per image).
public struct ImageStore: ImageBackend {
    /// Where images live unless configured otherwise.
    public static let defaultRoot = "/var/lib/lmctfy/images"
    /// Overrides the default root (tests, a second store).
    public static let rootEnvironmentVariable = "LMCTFY_IMAGE_ROOT"

    /// The store's directory.
    public let root: String

    /// A store at `root`, or at $LMCTFY_IMAGE_ROOT, or at the default.
    /// Nothing is created until an import.
    public init(root: String? = nil) {
        self.root = Self.chooseRoot(root, environment: getenv(Self.rootEnvironmentVariable).map { String(cString: $0) })
    }

    /// The explicit root, else a non-empty environment value, else the default.
    public static func chooseRoot(_ explicit: String?, environment: String?) -> String {
        if let explicit { return explicit }
        if let environment, !environment.isEmpty { return environment }
        return defaultRoot
    }

    private func imageDir(_ name: String) -> String { root + "/" + name }

    /// The directory a virtual host uses as its root for image `name`
    /// (a `filesystem.rootfs` that is not an absolute path names an image).
    /// INVALID_ARGUMENT for a bad name, NOT_FOUND if there is no such image.
    public func rootfsPath(forImage name: String) throws(LmctfyError) -> String {
        // A relative store was 3 at import and 5 ("No image") here (the probe).
        try checkRoot()
        try ImageName.check(name)
        guard isImage(name) else { throw .notFound("No image \"\(name)\" in \(root)") }
        return imageDir(name) + "/rootfs"
    }

    /// Whether `name` is an image of the store: a directory with its rootfs
    /// directory, neither a symlink. One test for list, remove, create and
    /// export (a symlink in the store was "removed" by remove while the
    /// others said there was no such image; the probe).
    func isImage(_ name: String) -> Bool {
        func realDirectory(_ path: String) -> Bool {
            guard let st = try? Sys.linkStatus(path) else { return false }
            return st.st_mode & S_IFMT == S_IFDIR
        }
        return realDirectory(imageDir(name)) && realDirectory(imageDir(name) + "/rootfs")
    }

    /// A virtual host's `filesystem.rootfs` as a directory: an absolute
    /// path as it is, anything else an image of this store (resolved as
    /// `rootfsPath(forImage:)` does). The directory is the image itself,
    /// shared by every host booted from it: a host that must not change the
    /// image mounts it read-only or under an overlay of its own.
    public func resolveRootfs(_ rootfs: String) throws(LmctfyError) -> String {
        rootfs.hasPrefix("/") ? rootfs : try rootfsPath(forImage: rootfs)
    }

    // MARK: Import

    @discardableResult
    public func importImage(_ archivePath: String, as name: String) throws(LmctfyError) -> ImageSummary {
        try importImage(archivePath, as: name, shownAs: nil)
    }

    /// Unpacks the archive at `archivePath` as image `name`. `shownAs` is
    /// how messages name the archive (the agent's upload, whose file under
    /// `.transfers` is nothing its caller knows); its quoted path otherwise.
    @discardableResult
    public func importImage(_ archivePath: String, as name: String, shownAs: String?) throws(LmctfyError) -> ImageSummary {
        let shown = shownAs ?? "\"\(archivePath)\""
        try ImageName.check(name)
        guard !Sys.exists(imageDir(name)) else { throw .alreadyExists("Image \"\(name)\" exists already") }
        try Self.loadArchiveLibrary()
        // Opened here: the unpacking thread works in another directory, where
        // a relative path would name something else.
        // A directory opens, then reads as "Error reading fd 3".
        if Sys.isDirectory(archivePath) { throw .invalidArgument("\(shown) is a directory, not an archive") }
        let archiveFd: Int32
        do {
            archiveFd = try Sys.open(archivePath, O_RDONLY)
        } catch where error.errno == ENOENT {
            throw .notFound("The archive \(shown) does not exist")
        } catch {
            throw LmctfyError(.invalidArgument, "Cannot open the archive \(shown): \(String(cString: strerror(error.errno)))", errno: error.errno)
        }
        defer { Glibc.close(archiveFd) }
        try prepareRoot()
        sweepLeftovers()
        let token = try uniqueToken()
        let temp = root + "/.tmp-\(name)-\(token)"
        do {
            try Sys.mkdir(temp, mode: 0o700)
            try Sys.mkdir(temp + "/rootfs", mode: 0o755)
        } catch {
            throw error.lmctfy(.failedPrecondition, "Cannot create a directory for image \"\(name)\"")
        }
        do throws(LmctfyError) {
            let counts = try unpackOnOwnThread(shown, fd: archiveFd, into: temp + "/rootfs", name: name)
            // An empty archive (or /dev/zero, read as one) made an image no
            // virtual host could start from (the probe).
            if counts.entries == 0 {
                throw .invalidArgument("\(shown) has no entries: an image is a root filesystem (with at least its mount points proc and sys)")
            }
            let summary = ImageSummary(name: name, entries: counts.entries, bytes: counts.bytes, created: Int64(time(nil)))
            do {
                try Sys.writeFileAtomically(temp + "/info", Array(Self.infoText(summary).utf8), mode: 0o600)
            } catch {
                throw error.lmctfy(.internal, "Cannot write the description of image \"\(name)\"")
            }
            do {
                try Sys.rename(temp, imageDir(name))
            } catch where error.errno == EEXIST || error.errno == ENOTEMPTY {
                throw .alreadyExists("Image \"\(name)\" exists already")
            } catch {
                throw error.lmctfy(.internal, "Cannot move image \"\(name)\" into place")
            }
            return summary
        } catch {
            try? Sys.removeTree(temp)
            throw error
        }
    }

    /// Loads libarchive (on first use: see lm_archive.h). Without it the
    /// store cannot unpack or pack: UNIMPLEMENTED naming the library.
    static func loadArchiveLibrary() throws(LmctfyError) {
        var err = [CChar](repeating: 0, count: 256)
        guard lm_archive_load(&err, err.count) == 0 else {
            throw .unimplemented(String(decoding: err.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }
    }

    private func prepareRoot() throws(LmctfyError) {
        if Sys.isDirectory(root) { return }
        var path = ""
        for part in root.split(separator: "/") {
            path += "/" + part
            if Sys.isDirectory(path) { continue }
            do {
                // 0700 all the way: the parent may be the agent's state_dir,
                // which the agent refuses unless it is private.
                try Sys.mkdir(path, mode: 0o700)
            } catch where error.errno == EEXIST {
                continue
            } catch {
                throw error.lmctfy(.failedPrecondition, "Cannot create the image store \(root)")
            }
        }
    }

    /// Removes the temporary directories (`.tmp-NAME-PID-RANDOM` of an
    /// import, `.rm-NAME-PID-RANDOM` of a removal) of processes that are
    /// gone: what a crash part way leaves. Best effort.
    public func sweepLeftovers() {
        guard let names = try? Sys.directoryEntries(root) else { return }
        for name in names where name.hasPrefix(".tmp-") || name.hasPrefix(".rm-") {
            let parts = name.split(separator: "-")
            guard parts.count >= 4, let pid = Int32(parts[parts.count - 2]), pid > 0 else { continue }
            do {
                try Sys.kill(pid, 0)
            } catch where error.errno == ESRCH {
                try? Sys.removeTree(root + "/" + name)
            } catch {}
        }
    }

    private func uniqueToken() throws(LmctfyError) -> String {
        do {
            let bytes = try Sys.randomBytes(6)
            return "\(getpid())-" + bytes.map { String($0, radix: 16) }.joined()
        } catch {
            throw error.lmctfy(.internal, "Cannot draw a random name")
        }
    }

    private final class Outcome: @unchecked Sendable {
        // Written by the unpacking thread before it ends; read after pthread_join.
        var result: Result<(entries: UInt64, bytes: UInt64), LmctfyError> = .failure(.internalError("the unpacking thread did not run"))
    }

    /// Unpacks on a thread of its own whose working directory is `dir`, so
    /// libarchive gets relative paths (its secure flags refuse absolute ones).
    private func unpackOnOwnThread(_ shown: String, fd: Int32, into dir: String, name: String) throws(LmctfyError) -> (entries: UInt64, bytes: UInt64) {
        let outcome = Outcome()
        // The caller's progress line (a terminal's, Progress) follows the unpacking.
        let report = Progress.current
        let thread = Threads.start {
            do throws(SystemError) {
                try Sys.chdirThisThreadOnly(dir)
            } catch {
                outcome.result = .failure(error.lmctfy(.internal, "Cannot enter the new image's directory"))
                return
            }
            do throws(LmctfyError) {
                outcome.result = .success(try Self.unpack(shown, fd: fd) { entries, bytes in
                    report?("importing \(name): \(entries) entries, \(Progress.mib(bytes)) unpacked")
                })
            } catch {
                outcome.result = .failure(error)
            }
        }
        pthread_join(thread, nil)
        return try outcome.result.get()
    }

    private static func archiveError(_ a: OpaquePointer?, _ what: String) -> String {
        if let a, let s = lm_archive_error_string(a) { return "\(what): \(String(cString: s))" }
        return what
    }

    /// A write of `a` that failed: RESOURCE_EXHAUSTED when the disk is
    /// full (libarchive says only "Write failed": its errno says why),
    /// otherwise `code`.
    private static func writeFailure(_ a: OpaquePointer?, _ what: String, _ code: StatusCode = .failedPrecondition) -> LmctfyError {
        let e = a.map { lm_archive_errno($0) } ?? 0
        let message = archiveError(a, what) + (e > 0 ? " (\(String(cString: strerror(e))))" : "")
        return LmctfyError(Sys.isNoSpace(e) ? .resourceExhausted : code, message, errno: e > 0 ? e : nil)
    }

    /// Reads the archive open at `fd` (`shown` names it in errors) and
    /// writes it below the working directory; `progress` hears the entries
    /// and bytes unpacked so far after each entry.
    private static func unpack(_ shown: String, fd: Int32,
                               progress: (UInt64, UInt64) -> Void = { _, _ in }) throws(LmctfyError) -> (entries: UInt64, bytes: UInt64) {
        guard let reader = lm_archive_read_new() else { throw .internalError("lm_archive_read_new failed") }
        defer { lm_archive_read_free(reader) }
        lm_archive_read_support_filter_all(reader)
        lm_archive_read_support_format_tar(reader)
        guard lm_archive_read_open_fd(reader, fd, 65536) == ARCHIVE_OK else {
            throw .invalidArgument(archiveError(reader, "Cannot read \(shown) as an archive"))
        }
        guard let writer = lm_archive_write_disk_new() else { throw .internalError("lm_archive_write_disk_new failed") }
        defer { lm_archive_write_free(writer) }
        let flags = ARCHIVE_EXTRACT_OWNER | ARCHIVE_EXTRACT_PERM | ARCHIVE_EXTRACT_TIME
            | ARCHIVE_EXTRACT_SECURE_SYMLINKS | ARCHIVE_EXTRACT_SECURE_NODOTDOT | ARCHIVE_EXTRACT_SECURE_NOABSOLUTEPATHS
        lm_archive_write_disk_set_options(writer, flags)
        // No lm_archive_write_disk_set_standard_lookup: owners stay numeric.

        var policy = ArchivePolicy()
        var entries: UInt64 = 0, bytes: UInt64 = 0
        var entry: OpaquePointer?
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let r = lm_archive_read_next_header(reader, &entry)
            if r == ARCHIVE_EOF { break }
            guard r >= ARCHIVE_WARN, let entry else {
                throw .invalidArgument(archiveError(reader, "Cannot read \(shown)"))
            }
            let raw = try Self.text(lm_archive_entry_pathname(entry), "an entry's path")
            guard let path = try ArchivePolicy.components(raw) else { continue }  // the root itself
            let kind: ArchivePolicy.Kind
            var target: String?
            if let hard = lm_archive_entry_hardlink(entry) {
                let hardRaw = try Self.text(hard, "the hard link target of \"\(raw)\"")
                let cleaned: [String]?
                do { cleaned = try ArchivePolicy.components(hardRaw) } catch {
                    // Named by the link, not by its target.
                    throw .invalidArgument("archive entry \"\(raw)\" is a hard link to \"\(hardRaw)\", outside the image")
                }
                guard let t = cleaned else {
                    throw .invalidArgument("archive entry \"\(raw)\" is a hard link to the root")
                }
                kind = .hardlink
                target = t.joined(separator: "/")
                lm_archive_entry_copy_hardlink(entry, target)
            } else {
                switch lm_archive_entry_filetype(entry) & S_IFMT {
                case S_IFDIR: kind = .directory
                case S_IFREG: kind = .regular
                case S_IFLNK:
                    kind = .symlink
                    target = try Self.text(lm_archive_entry_symlink(entry), "the symlink target of \"\(raw)\"")
                case S_IFIFO: kind = .fifo
                case S_IFCHR, S_IFBLK: kind = .device
                case S_IFSOCK: kind = .socket
                default: throw .invalidArgument("archive entry \"\(raw)\" has an unknown file type")
                }
            }
            try policy.admit(path, kind: kind, raw: raw, linkTarget: target)
            lm_archive_entry_copy_pathname(entry, path.joined(separator: "/"))

            let w = lm_archive_write_header(writer, entry)
            guard w >= ARCHIVE_WARN else {
                throw writeFailure(writer, "Cannot unpack \"\(raw)\"", .invalidArgument)
            }
            if kind == .regular && lm_archive_entry_size(entry) > 0 {
                while true {
                    let n = buffer.withUnsafeMutableBytes { lm_archive_read_data(reader, $0.baseAddress, $0.count) }
                    if n == 0 { break }
                    guard n > 0 else { throw .invalidArgument(archiveError(reader, "Cannot read \"\(raw)\" from the archive")) }
                    let written = buffer.withUnsafeBytes { lm_archive_write_data(writer, $0.baseAddress, n) }
                    guard written == n else {
                        throw writeFailure(writer, "Cannot write \"\(raw)\"")
                    }
                    bytes += UInt64(n)
                }
            }
            guard lm_archive_write_finish_entry(writer) >= ARCHIVE_WARN else {
                throw writeFailure(writer, "Cannot finish \"\(raw)\"")
            }
            entries += 1
            progress(entries, bytes)
        }
        try policy.finish()
        // Directory modes and times are set here, still in this thread's directory.
        guard lm_archive_write_close(writer) == ARCHIVE_OK else {
            throw writeFailure(writer, "Cannot finish unpacking \(shown)")
        }
        return (entries, bytes)
    }

    /// A name from the archive as text: refused (3) unless it is valid
    /// UTF-8, so that nothing is unpacked under a name other than its own
    /// (String(cString:) would replace bad bytes with U+FFFD).
    static func text(_ p: UnsafePointer<CChar>?, _ what: String) throws(LmctfyError) -> String {
        guard let p else { throw .invalidArgument("archive entry without \(what)") }
        guard let s = String(validatingCString: p) else {
            throw .invalidArgument("\(what) is not valid UTF-8 (\(String(cString: p)))")
        }
        return s
    }

    static func infoText(_ s: ImageSummary) -> String {
        "entries \(s.entries)\nbytes \(s.bytes)\ncreated \(s.created)\n"
    }

    static func parseInfo(_ name: String, _ text: String) -> ImageSummary {
        var s = ImageSummary(name: name, entries: 0, bytes: 0, created: 0)
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: " ", maxSplits: 1)
            guard parts.count == 2 else { continue }
            switch parts[0] {
            case "entries": s.entries = UInt64(parts[1]) ?? 0
            case "bytes": s.bytes = UInt64(parts[1]) ?? 0
            case "created": s.created = Int64(parts[1]) ?? 0
            default: break
            }
        }
        return s
    }

    // MARK: List and remove

    /// The store's root as configured ($LMCTFY_IMAGE_ROOT): an absolute
    /// path (3 otherwise), a directory if it exists (9 otherwise). A file
    /// or a relative path listed as an empty store.
    public func checkRoot() throws(LmctfyError) {
        guard root.hasPrefix("/") else {
            throw .invalidArgument("The image store \"\(root)\" (\(Self.rootEnvironmentVariable)) must be an absolute path")
        }
        if Sys.exists(root) && !Sys.isDirectory(root) {
            throw .failedPrecondition("The image store \"\(root)\" (\(Self.rootEnvironmentVariable)) is not a directory")
        }
    }

    public func listImages() throws(LmctfyError) -> [ImageSummary] {
        guard Sys.isDirectory(root) else { return [] }
        let names: [String]
        do {
            names = try Sys.directoryEntries(root)
        } catch {
            throw error.lmctfy(.failedPrecondition, "Cannot list the image store")
        }
        return names.filter { !$0.hasPrefix(".") && isImage($0) }.map { name in
            Self.parseInfo(name, (try? Sys.readFile(imageDir(name) + "/info")) ?? "")
        }
    }

    public func removeImage(_ name: String) throws(LmctfyError) {
        try ImageName.check(name)
        // What list shows, create and export use: a directory (not a
        // symlink to one) with its rootfs. Anything else of that name was
        // "removed" (exit 0) while create and export said there was no
        // such image (the probe).
        guard isImage(name) else { throw .notFound("No image \"\(name)\" in \(root)") }
        // Out of sight first (atomic), then deleted.
        let doomed = root + "/.rm-\(name)-\(try uniqueToken())"
        do {
            try Sys.rename(imageDir(name), doomed)
        } catch where error.errno == ENOENT {
            throw .notFound("No image \"\(name)\" in \(root)")
        } catch {
            throw error.lmctfy(.failedPrecondition, "Cannot remove image \"\(name)\"")
        }
        do {
            try Sys.removeTree(doomed)
        } catch {
            throw error.lmctfy(.failedPrecondition, "Image \"\(name)\" is gone from the store but not all of \(doomed) could be deleted")
        }
    }

    // MARK: Export

    public func exportImage(_ name: String, to archivePath: String) throws(LmctfyError) {
        try exportImage(name, to: archivePath, stop: { false })
    }

    /// `exportImage`, stopped (CANCELLED, the partial archive removed) once
    /// `stop` says so; it is asked before each entry and each 64 KiB.
    public func exportImage(_ name: String, to archivePath: String, stop: () -> Bool) throws(LmctfyError) {
        let rootfs = try rootfsPath(forImage: name)
        try Self.loadArchiveLibrary()
        // A device, FIFO or symlink (/dev/null, /dev/stdout) is written in
        // place; a rename over it would replace it with a file.
        let compression = try Compression.forExport(archivePath)
        try Sys.producingOutputFile(archivePath, token: try uniqueToken()) { (target, _) throws(LmctfyError) in
            try Self.pack(rootfs, to: target, compression: compression, stop: stop)
        }
    }

    typealias Compression = ArchiveCompression

    /// Writes the tree at `rootfs` as a pax tar to `path`: entries in byte
    /// order of their paths, owners as numbers, no atime/ctime (so the same
    /// tree gives the same bytes), hard links as links.
    static func pack(_ rootfs: String, to path: String, compression: Compression, stop: () -> Bool = { false }) throws(LmctfyError) {
        guard let writer = lm_archive_write_new() else { throw .internalError("lm_archive_write_new failed") }
        defer { lm_archive_write_free(writer) }
        lm_archive_write_set_format_pax_restricted(writer)
        switch compression {
        case .none: break
        case .gzip:
            lm_archive_write_add_filter_gzip(writer)
            lm_archive_write_set_filter_option(writer, "gzip", "timestamp", nil)  // no time in the header
        case .xz: lm_archive_write_add_filter_xz(writer)
        }
        guard lm_archive_write_open_filename(writer, path) == ARCHIVE_OK else {
            throw writeFailure(writer, "Cannot create \"\(path)\"")
        }
        guard let disk = lm_archive_read_disk_new() else { throw .internalError("lm_archive_read_disk_new failed") }
        defer { lm_archive_read_free(disk) }
        lm_archive_read_disk_set_behavior(disk, ARCHIVE_READDISK_NO_XATTR | ARCHIVE_READDISK_NO_ACL | ARCHIVE_READDISK_NO_FFLAGS)
        guard let resolver = lm_archive_entry_linkresolver_new() else { throw .internalError("lm_archive_entry_linkresolver_new failed") }
        defer { lm_archive_entry_linkresolver_free(resolver) }
        lm_archive_entry_linkresolver_set_strategy(resolver, lm_archive_format(writer))

        func write(_ rel: String) throws(LmctfyError) {
            if stop() { throw LmctfyError(.cancelled, "Export of \(rootfs) stopped") }
            let full = rootfs + "/" + rel
            guard var st = try? Sys.linkStatus(full) else { throw .failedPrecondition("Cannot stat \(full)") }
            guard let created = lm_archive_entry_new() else { throw .internalError("lm_archive_entry_new failed") }
            var entry: OpaquePointer? = created
            lm_archive_entry_copy_sourcepath(entry, full)
            guard lm_archive_read_disk_entry_from_file(disk, entry, -1, &st) >= ARCHIVE_WARN else {
                lm_archive_entry_free(entry)
                throw .failedPrecondition(archiveError(disk, "Cannot read \(full)"))
            }
            lm_archive_entry_copy_pathname(entry, rel)
            lm_archive_entry_set_uname(entry, nil)
            lm_archive_entry_set_gname(entry, nil)
            lm_archive_entry_unset_atime(entry)
            lm_archive_entry_unset_ctime(entry)
            lm_archive_entry_unset_birthtime(entry)
            var spare: OpaquePointer?
            lm_archive_entry_linkify(resolver, &entry, &spare)
            for e in [entry, spare] {
                guard let e else { continue }
                defer { lm_archive_entry_free(e) }
                guard lm_archive_write_header(writer, e) >= ARCHIVE_WARN else {
                    throw writeFailure(writer, "Cannot write the header of \(rel)")
                }
                guard lm_archive_entry_filetype(e) & S_IFMT == S_IFREG, lm_archive_entry_size(e) > 0,
                      let source = lm_archive_entry_sourcepath(e) else { continue }
                let sourcePath = String(cString: source)
                let fd: Int32
                do {
                    fd = try Sys.open(sourcePath, O_RDONLY | O_NOFOLLOW)
                } catch {
                    throw error.lmctfy(.failedPrecondition, "Cannot open \(sourcePath)")
                }
                defer { Glibc.close(fd) }
                var left = lm_archive_entry_size(e)
                while left > 0 {
                    if stop() { throw LmctfyError(.cancelled, "Export of \(rootfs) stopped") }
                    let chunk: [UInt8]
                    do {
                        chunk = try Sys.readChunk(fd, upTo: Int(min(left, 65536)), path: sourcePath)
                    } catch {
                        throw error.lmctfy(.failedPrecondition, "Cannot read \(sourcePath)")
                    }
                    guard !chunk.isEmpty else { throw .failedPrecondition("Cannot read \(sourcePath) (it shrank while exporting)") }
                    guard chunk.withUnsafeBytes({ lm_archive_write_data(writer, $0.baseAddress, $0.count) }) == chunk.count else {
                        throw writeFailure(writer, "Cannot write \(rel)")
                    }
                    left -= Int64(chunk.count)
                }
            }
        }
        func walk(_ rel: String) throws(LmctfyError) {
            let dir = rel.isEmpty ? rootfs : rootfs + "/" + rel
            let names: [String]
            do {
                names = try Sys.directoryEntries(dir)
            } catch {
                throw error.lmctfy(.failedPrecondition, "Cannot list \(dir)")
            }
            for name in names {
                let child = rel.isEmpty ? name : rel + "/" + name
                try write(child)
                // Never through a symlink: only real directories are walked.
                if let st = try? Sys.linkStatus(rootfs + "/" + child), st.st_mode & S_IFMT == S_IFDIR {
                    try walk(child)
                }
            }
        }
        try walk("")
        // Hard links whose other names were never seen (none in a whole tree,
        // but the resolver may still hold entries).
        var entry: OpaquePointer?
        var spare: OpaquePointer?
        while true {
            lm_archive_entry_linkify(resolver, &entry, &spare)
            guard let e = entry else { break }
            lm_archive_write_header(writer, e)
            lm_archive_entry_free(e)
            entry = nil
        }
        guard lm_archive_write_close(writer) == ARCHIVE_OK else {
            throw writeFailure(writer, "Cannot finish \"\(path)\"")
        }
    }
}
