// Tar archives for the image tests, built byte by byte (ustar) rather than
// with libarchive, so the reader is not tested against its own writer's
// ideas, and hostile entries (.., absolute paths, devices) are easy to make.
import Glibc
import LmctfySystem

/// A ustar archive built by hand: whatever names, types and link targets a
/// test wants, hostile ones included.
public struct TarBuilder {
    public init() {}

    public enum EntryType: UInt8 {
        case file = 0x30, hardlink = 0x31, symlink = 0x32, char = 0x33, block = 0x34, directory = 0x35, fifo = 0x36
    }

    public private(set) var bytes: [UInt8] = []

    public mutating func add(_ name: String, _ type: EntryType, mode: Int = 0o644, uid: Int = 0, gid: Int = 0,
                      link: String = "", content: [UInt8] = [], mtime: Int = 1_700_000_000) {
        var h = [UInt8](repeating: 0, count: 512)
        func put(_ offset: Int, _ width: Int, _ text: String) {
            for (i, b) in text.utf8.prefix(width).enumerated() { h[offset + i] = b }
        }
        func octal(_ offset: Int, _ width: Int, _ value: Int) {
            let digits = String(value, radix: 8)
            put(offset, width - 1, String(repeating: "0", count: max(0, width - 1 - digits.count)) + digits)
        }
        put(0, 100, name)
        octal(100, 8, mode)
        octal(108, 8, uid)
        octal(116, 8, gid)
        octal(124, 12, type == .file ? content.count : 0)
        octal(136, 12, mtime)
        h[156] = type.rawValue
        put(157, 100, link)
        put(257, 6, "ustar")
        put(263, 2, "00")
        octal(329, 8, 1)  // devmajor/devminor for the device entries
        octal(337, 8, 3)
        for i in 148..<156 { h[i] = 0x20 }
        let sum = h.reduce(0) { $0 + Int($1) }
        let digits = String(sum, radix: 8)
        put(148, 7, String(repeating: "0", count: 6 - digits.count) + digits)
        bytes += h
        if type == .file {
            bytes += content
            bytes += [UInt8](repeating: 0, count: (512 - content.count % 512) % 512)
        }
    }

    public var archive: [UInt8] { bytes + [UInt8](repeating: 0, count: 1024) }

    /// A small but complete rootfs: nested directories, a setuid binary, an
    /// absolute and a relative symlink, a hard link, a FIFO, owners.
    public static func sampleRootfs() -> [UInt8] {
        var t = TarBuilder()
        t.add("./", .directory, mode: 0o755)
        t.add("./bin/", .directory, mode: 0o755)
        t.add("./bin/tool", .file, mode: 0o4755, content: Array("#!/bin/sh\necho tool\n".utf8))
        t.add("./bin/tool-again", .hardlink, link: "./bin/tool")
        t.add("./etc/", .directory, mode: 0o755, mtime: 1_600_000_000)
        t.add("./etc/hostname", .file, mode: 0o644, content: Array("vhost\n".utf8))
        t.add("./etc/localtime", .symlink, mode: 0o777, link: "/usr/share/zoneinfo/UTC")
        t.add("./etc/name", .symlink, mode: 0o777, link: "hostname")
        t.add("./home/", .directory, mode: 0o700, uid: 1234, gid: 1234)
        t.add("./home/notes", .file, mode: 0o600, uid: 1234, gid: 1234, content: Array("private\n".utf8))
        t.add("./run/", .directory, mode: 0o755)
        t.add("./run/pipe", .fifo, mode: 0o600)
        t.add("./usr/", .directory, mode: 0o755)
        t.add("./usr/lib/", .directory, mode: 0o755)
        t.add("./usr/lib/up", .symlink, mode: 0o777, link: "../../etc/hostname")
        return t.archive
    }
}

/// A tree as lstat sees it: path → type, mode, owner, size, content hash or target, mtime.
public func treeSnapshot(_ root: String) throws -> [String: String] {
    var out: [String: String] = [:]
    func walk(_ rel: String) throws {
        for name in try Sys.directoryEntries(rel.isEmpty ? root : root + "/" + rel) {
            let child = rel.isEmpty ? name : rel + "/" + name
            let full = root + "/" + child
            guard let st = try Sys.linkStatus(full) else { continue }
            var what = "mode=\(String(st.st_mode, radix: 8)) uid=\(st.st_uid) gid=\(st.st_gid) nlink=\(st.st_nlink)"
            switch st.st_mode & S_IFMT {
            case S_IFDIR:
                what += " dir mtime=\(st.st_mtim.tv_sec)"
                out[child] = what
                try walk(child)
                continue
            case S_IFLNK:
                var buf = [CChar](repeating: 0, count: 4096)
                let n = readlink(full, &buf, buf.count)
                what += " -> " + String(decoding: buf[0..<max(n, 0)].map { UInt8(bitPattern: $0) }, as: UTF8.self)
            case S_IFREG:
                // FNV-1a of the content: big files compare cheaply.
                let hash = try Sys.readBytes(full).withUnsafeBufferPointer { b in
                    b.reduce(UInt64(0xcbf2_9ce4_8422_2325)) { ($0 ^ UInt64($1)) &* 0x100_0000_01b3 }
                }
                what += " size=\(st.st_size) mtime=\(st.st_mtim.tv_sec) fnv=\(String(hash, radix: 16))"
            case S_IFIFO:
                what += " fifo"
            default:
                what += " other"
            }
            out[child] = what
        }
    }
    try walk("")
    return out
}

