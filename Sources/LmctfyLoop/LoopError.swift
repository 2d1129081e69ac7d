// libuv reports failures as negative errno values (uv_errno_t); this keeps
// the value, which call failed and on what, so the agent can map it onto a
// canonical status without parsing strings.
import CLibUV
import LmctfySystem

/// A failed libuv call (or a loop that no longer takes work).
public struct LoopError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The libuv function (or operation) that failed, e.g. "uv_tcp_bind".
    public let call: String
    /// What it acted on: an address, a path, a signal; may be empty.
    public let target: String
    /// The negative libuv error code, comparable with `UV_Exxx.rawValue`.
    public let code: Int32

    /// The failure of `call` on `target` with the negative libuv code `code`.
    public init(_ call: String, _ target: String, _ code: Int32) {
        self.call = call
        self.target = target
        self.code = code
    }

    init(_ call: String, _ target: String, _ e: SystemError) {
        self.init(call, target, -e.errno)
    }

    /// The loop is shutting down or gone and accepts no new work or handles.
    static func shutDown(_ call: String) -> LoopError {
        LoopError(call, "loop is shutting down", UV_ECANCELED.rawValue)
    }

    /// libuv's symbolic name, e.g. "EADDRINUSE".
    public var name: String { String(cString: uv_err_name(code)) }
    /// uv_strerror's text for the code ("address already in use").
    public var reason: String { String(cString: uv_strerror(code)) }
    /// Whether the code is UV_ECANCELED: the operation was cancelled, or the
    /// loop is shutting down.
    public var isCancelled: Bool { code == UV_ECANCELED.rawValue }
    /// Whether the code is UV_EOF: the peer closed its end.
    public var isEOF: Bool { code == UV_EOF.rawValue }

    public var description: String {
        target.isEmpty ? "\(call): \(name) (\(reason))" : "\(call)(\(target)): \(name) (\(reason))"
    }

    /// As the one lmctfy error type, with the canonical code the agent
    /// reports for this kind of failure.
    public func lmctfy(_ context: String) -> LmctfyError {
        let status: StatusCode = switch code {
        case UV_EINVAL.rawValue, UV_ENAMETOOLONG.rawValue: .invalidArgument
        case UV_EACCES.rawValue, UV_EPERM.rawValue: .permissionDenied
        case UV_ENOENT.rawValue: .notFound
        case UV_EADDRINUSE.rawValue, UV_EEXIST.rawValue: .alreadyExists
        case UV_ECANCELED.rawValue: .cancelled
        case UV_ETIMEDOUT.rawValue: .deadlineExceeded
        case UV_EMFILE.rawValue, UV_ENFILE.rawValue, UV_ENOMEM.rawValue, UV_ENOBUFS.rawValue: .resourceExhausted
        default: .unavailable
        }
        return LmctfyError(status, "\(context): \(description)", errno: -code)
    }
}

/// Throws a LoopError when a libuv call returned a negative status.
@inline(__always)
func check(_ rc: Int32, _ call: String, _ target: @autoclosure () -> String = "") throws(LoopError) {
    if rc < 0 { throw LoopError(call, target(), rc) }
}
