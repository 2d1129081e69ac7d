// Destroying containers: recursive, children first, processes killed; the
// root never (D7).
import Glibc
import LmctfyProto
import LmctfySystem

extension ContainerApi {
    /// Destroys a container and everything below it, children first, killing
    /// their processes. Stops at the first failure; what was destroyed stays
    /// destroyed, and what is left can be destroyed again. The root cannot
    /// be destroyed (D7).
    public func destroy(_ name: ContainerName) throws(LmctfyError) {
        guard !name.isRoot else { throw .failedPrecondition("Destroying the root container \"/\" is not allowed") }
        let container = try get(name)
        for sub in try container.subcontainers(recursive: true).reversed() {
            try destroyOne(sub)
        }
        try destroyOne(name)
    }

    private func destroyOne(_ name: ContainerName) throws(LmctfyError) {
        do {
            try Container(name: name, api: self).killAll()
        } catch where error.code == .notFound {
            return  // already gone
        }
        // rmdir every place the container may have a directory and take
        // ENOENT as "it has none there": one syscall each instead of a stat
        // and an rmdir; a hierarchy's later candidates (cpu's /batch) are
        // not tried once one went. The tasks directory goes last, so a
        // container whose destroy failed part way still exists and can be
        // destroyed again.
        for candidates in try driver.removalGroups(name) {
            for d in candidates {
                do {
                    if try d.remove() { break }
                } catch {
                    throw LmctfyError(error.code == .permissionDenied ? .permissionDenied : .failedPrecondition,
                                      "Unable to delete directory of container \"\(name)\": \(error.message)", errno: error.errno)
                }
            }
        }
    }
}
