// Imports under way (state_dir/imports): an ImportSnapshot marks its
// container before it makes it and records the cgroup it made, and clears
// the mark once its copy is whole (processes started, frozen if the
// snapshot was). An agent killed part way left the copy half made (no
// processes, or thawed with SIGSTOPped ones beside a running source; a
// probe): the next start destroys what a mark names, if it is still the
// cgroup the import made. Killed between the create and that record, the
// copy was kept as a container made while the agent was down (the agent
// probe: 5 of 14 kills): the create records the mark's token on the
// container, and a container with it is the import's. A Run that makes its
// container (remove_when_done) is marked alike until the container's
// intent says one-shot: killed before, its container stayed for good.
import Glibc
import LmctfySystem

final class ImportMarks: Sendable {
    let directory: String

    init(directory: String) {
        self.directory = directory
    }

    /// One mark: the container's path, once made its cgroup id, the token
    /// its create recorded on it (`ContainerBackend.containerOrigin`), and
    /// whether it is a Run's container (remove_when_done) rather than an
    /// import's.
    struct Mark: Equatable {
        var path: String
        var cgroupId: UInt64?
        var token: String?
        var oneShot = false
    }

    private func file(_ path: String) -> String { directory + "/" + Sys.hex(Array(path.utf8)) }

    /// A fresh token for a create to record.
    static func newToken() -> String {
        String(UInt64.random(in: 1...UInt64.max), radix: 16) + String(UInt64.random(in: 1...UInt64.max), radix: 16)
    }

    /// Marks `path` (before its create, which records `token`); a mark
    /// that cannot be written is said in the error (the import does not go
    /// ahead unmarked).
    func begin(_ path: String, token: String, oneShot: Bool = false) throws(LmctfyError) {
        try write(Mark(path: path, token: token, oneShot: oneShot))
    }

    /// Records the cgroup the import made.
    func made(_ path: String, cgroupId: UInt64?, token: String) throws(LmctfyError) {
        try write(Mark(path: path, cgroupId: cgroupId, token: token))
    }

    /// Clears the mark (the import finished, or undid itself).
    func end(_ path: String) {
        _ = try? Sys.unlink(file(path))
    }

    private func write(_ m: Mark) throws(LmctfyError) {
        do {
            if !Sys.exists(directory) { try Sys.mkdir(directory, mode: 0o700) }
            let text = [m.path, m.cgroupId.map(String.init) ?? "", m.token ?? "", m.oneShot ? "oneshot" : ""].joined(separator: "\n") + "\n"
            // Not synced: a mark is for an agent that dies, not a machine
            // (its cgroups go with a reboot; one made again after it has
            // no token). A Run with create and remove_when_done paid two
            // fsyncs for it.
            try Sys.writeFileAtomically(file(m.path), Array(text.utf8), mode: 0o600, durable: false)
        } catch {
            throw error.lmctfy(error.isNoSpace ? .resourceExhausted : .failedPrecondition, "Marking the import of \(m.path)")
        }
    }

    /// The marks left (by an agent that died under its imports).
    func left() -> [Mark] {
        let names = (try? Sys.subdirectoriesAndFiles(directory)) ?? []
        // A write killed before its rename left its temporary file (the
        // agent probe found six): nothing reads it.
        for name in names where name.hasPrefix(".tmp-") { _ = try? Sys.unlink(directory + "/" + name) }
        return names.sorted().compactMap { name in
            guard let text = try? Sys.readRegularFile(directory + "/" + name, maxBytes: 64 << 10) else { return nil }
            let lines = String(decoding: text, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false)
            guard let path = lines.first, path.hasPrefix("/"), file(String(path)) == directory + "/" + name else { return nil }
            return Mark(path: String(path), cgroupId: lines.count > 1 ? UInt64(lines[1]) : nil,
                        token: lines.count > 2 && !lines[2].isEmpty ? String(lines[2]) : nil,
                        oneShot: lines.count > 3 && lines[3] == "oneshot")
        }
    }
}
