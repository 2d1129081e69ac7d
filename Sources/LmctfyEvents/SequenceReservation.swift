// The bound a log's sequence numbers stay below across restarts (the
// controller's fleet log, EventLog.reserveSequences), kept in one small
// file that is written in place: two slots, each the bound and its
// complement in hex, written alternately and fdatasynced. An overwrite
// needs no new block, so the bound still moves on a full disk (it was
// replaced by a temp file and a rename, which a full disk refused: the
// controller could not start at all, and one running could not move its
// bound). A slot torn by a crash fails its check and the other one holds;
// the larger valid slot wins. The format before this one ("N\n" at
// offset 0) is still read, and never overwritten: the slots start past it.
import Glibc
import LmctfySystem

/// Used under the event log's lock.
final class SequenceReservation: @unchecked Sendable {
    let path: String
    private let fd: Int32
    /// The slot written last.
    private var slot = 0
    /// The bound the file held when it was opened (0: none).
    let saved: UInt64

    /// The first line of a new file (the old format's number sits there
    /// in a file an earlier version wrote).
    static let header = Array("lmctfy sequence reservation v2\n".utf8)
    static let slotOffsets = [64, 128]
    static let slotBytes = 34
    static var fileBytes: Int { slotOffsets[1] + slotBytes }

    /// Opens (or makes, 0600) the file and reads the bound it holds.
    init(path: String) throws(LmctfyError) {
        self.path = path
        let (f, e) = Sys.retry { Glibc.open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600) }
        guard f >= 0 else { throw Self.failure("open", path, e, "Opening the event log's sequence reservation") }
        fd = f
        var bytes = [UInt8](repeating: 0, count: Self.fileBytes)
        let n = bytes.withUnsafeMutableBytes { b in Sys.retry { pread(f, b.baseAddress, b.count, 0) }.0 }
        bytes = Array(bytes.prefix(max(0, n)))
        let (value, slot) = Self.parse(bytes)
        saved = value
        self.slot = slot
        if n <= 0 {
            // A new file: its header, and every block it will ever need.
            let w = Self.header.withUnsafeBytes { b in Sys.retry { pwrite(f, b.baseAddress, b.count, 0) } }
            if w.0 != Self.header.count {
                close(f)
                throw Self.failure("write", path, w.0 < 0 ? w.1 : ENOSPC, "Making the event log's sequence reservation")
            }
        }
        let a = posix_fallocate(f, 0, off_t(Self.fileBytes))
        if a != 0 && a != EOPNOTSUPP && a != EINVAL {
            close(f)
            throw Self.failure("posix_fallocate", path, a, "Making the event log's sequence reservation")
        }
    }

    /// A call on the file that failed with `e`: RESOURCE_EXHAUSTED on a
    /// full disk, FAILED_PRECONDITION otherwise.
    static func failure(_ call: String, _ path: String, _ e: Int32, _ what: String) -> LmctfyError {
        SystemError(call, path, e).lmctfy(Sys.isNoSpace(e) ? .resourceExhausted : .failedPrecondition, what)
    }

    deinit { close(fd) }

    /// The bound in `bytes` (the larger of the valid slots and an old
    /// format's number) and the slot that holds it.
    static func parse(_ bytes: [UInt8]) -> (UInt64, slot: Int) {
        var best: UInt64 = 0
        var slot = 1
        if let nl = bytes.prefix(21).firstIndex(of: 0x0a), nl > 0,
           let old = UInt64(String(decoding: bytes[..<nl], as: UTF8.self)) {
            best = old
        }
        for (i, offset) in slotOffsets.enumerated() where bytes.count >= offset + slotBytes {
            let text = String(decoding: bytes[offset..<(offset + slotBytes)], as: UTF8.self)
            let parts = text.split(separator: " ")
            guard parts.count == 2, parts[1].last == "\n",
                  let v = UInt64(parts[0], radix: 16), let c = UInt64(parts[1].dropLast(), radix: 16), c == ~v else { continue }
            if v >= best {
                best = v
                slot = i
            }
        }
        return (best, slot)
    }

    /// One slot's bytes.
    static func encoded(_ value: UInt64) -> [UInt8] {
        func hex(_ v: UInt64) -> String { String(v, radix: 16).leftPadded(16) }
        return Array((hex(value) + " " + hex(~value) + "\n").utf8)
    }

    /// Writes `value` into the slot not written last, and syncs it: 0, or
    /// the errno that stopped it.
    func write(_ value: UInt64) -> Int32 {
        let next = 1 - slot
        let bytes = Self.encoded(value)
        let (n, e) = bytes.withUnsafeBytes { b in Sys.retry { pwrite(fd, b.baseAddress, b.count, off_t(Self.slotOffsets[next])) } }
        guard n == bytes.count else { return n < 0 ? e : ENOSPC }
        let (r, se) = Sys.retry { fdatasync(fd) }
        guard r == 0 else { return se }
        slot = next
        return 0
    }
}
