// Imports under way (state_dir/imports): an ImportSnapshot marks its
// container before it makes it and records the cgroup it made, and clears
// the mark once its copy is whole (processes started, frozen if the
// snapshot was). An agent killed part way left the copy half made (no
// processes, or thawed with SIGSTOPped ones beside a running source; a
// probe): the next start destroys what a mark names, if it is still the
// cgroup the import made.
import Glibc
import LmctfySystem

final class ImportMarks: Sendable {
    let directory: String

    init(directory: String) {
        self.directory = directory
    }

    /// One mark: the container's path and, once made, its cgroup id.
    struct Mark: Equatable {
        var path: String
        var cgroupId: UInt64?
    }

    private func file(_ path: String) -> String { directory + "/" + Sys.hex(Array(path.utf8)) }

    /// Marks `path` (before its create); a mark that cannot be written is
    /// said in the error (the import does not go ahead unmarked).
    func begin(_ path: String) throws(LmctfyError) {
        try write(Mark(path: path))
    }

    /// Records the cgroup the import made.
    func made(_ path: String, cgroupId: UInt64?) throws(LmctfyError) {
        try write(Mark(path: path, cgroupId: cgroupId))
    }

    /// Clears the mark (the import finished, or undid itself).
    func end(_ path: String) {
        _ = try? Sys.unlink(file(path))
    }

    private func write(_ m: Mark) throws(LmctfyError) {
        do {
            if !Sys.exists(directory) { try Sys.mkdir(directory, mode: 0o700) }
            try Sys.writeFileAtomically(file(m.path), Array((m.path + "\n" + (m.cgroupId.map(String.init) ?? "") + "\n").utf8), mode: 0o600)
        } catch {
            throw error.lmctfy(error.isNoSpace ? .resourceExhausted : .failedPrecondition, "Marking the import of \(m.path)")
        }
    }

    /// The marks left (by an agent that died under its imports).
    func left() -> [Mark] {
        let names = (try? Sys.subdirectoriesAndFiles(directory)) ?? []
        return names.sorted().compactMap { name in
            guard let text = try? Sys.readRegularFile(directory + "/" + name, maxBytes: 64 << 10) else { return nil }
            let lines = String(decoding: text, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false)
            guard let path = lines.first, path.hasPrefix("/"), file(String(path)) == directory + "/" + name else { return nil }
            return Mark(path: String(path), cgroupId: lines.count > 1 ? UInt64(lines[1]) : nil)
        }
    }
}
