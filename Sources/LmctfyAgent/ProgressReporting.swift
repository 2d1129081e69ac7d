// Progress of a call as responses (DestroyRequest/KillAllRequest
// want_progress): the library's reports on the call's thread, throttled
// (nothing for work done within Progress.delayMs, then at most five a
// second), with the machine's names of a root_container agent turned into
// the caller's.
import Lmctfy
import LmctfyProto
import LmctfySystem

extension Dispatcher {
    /// Runs `body` with this thread's progress reports sent on `context` as
    /// the responses `make` builds.
    func withProgress<Resp: ProtoMessage, T>(_ context: CallContext, make: @escaping (String) -> Resp?,
                                             body: () throws -> T) rethrows -> T {
        let root = (backend as? LocalBackend).flatMap { $0.scope.root.isRoot ? nil : $0.scope.root.description }
        let throttle = ThrottledProgress(intervalMs: 200) { message in
            if let response = make(Self.callerNames(message, root: root)) { context.emitProgress(response) }
        }
        return try Progress.with(throttle.report) { () throws -> T in try body() }
    }

    /// `message` with every word naming a container below `root` (the
    /// agent's root_container, as the machine names it) relative to it.
    static func callerNames(_ message: String, root: String?) -> String {
        guard let root else { return message }
        return message.split(separator: " ", omittingEmptySubsequences: false).map { word -> String in
            if word == root { return "/" }
            if word.hasPrefix(root + "/") { return String(word.dropFirst(root.count)) }
            if word.hasPrefix(root + ":") { return "/" + word.dropFirst(root.count) }
            return String(word)
        }.joined(separator: " ")
    }
}
