// The one error type of lmctfy. Codes are the canonical status codes (gRPC
// numbering), which are also the CLI's exit status and the agent's stream
// status; messages name the container and the file or syscall involved.

/// Canonical status codes, numbered as in gRPC and the original lmctfy.
public enum StatusCode: Int32, Sendable, CaseIterable, CustomStringConvertible {
    /// Success (the CLI exits 0).
    case ok = 0
    /// The caller went away or asked to stop.
    case cancelled = 1
    /// An error with no better code (e.g. from the peer's status we do not know).
    case unknown = 2
    /// The request is wrong whatever the state: a bad name, spec or flag.
    case invalidArgument = 3
    /// A deadline passed before the operation finished.
    case deadlineExceeded = 4
    /// A container (or task, file, command) does not exist.
    case notFound = 5
    /// The container to create exists already.
    case alreadyExists = 6
    /// The kernel refused access (EACCES), or the caller is not allowed.
    case permissionDenied = 7
    /// A limit was reached (connections, streams, a kernel limit).
    case resourceExhausted = 8
    /// The state forbids it: e.g. destroying a busy container without force, or
    /// a filesystem mounted over a cgroup directory.
    case failedPrecondition = 9
    /// The operation was abandoned part way (a conflict).
    case aborted = 10
    /// A value outside its valid range.
    case outOfRange = 11
    /// Not supported here: a spec field this kernel or lmctfy cannot enforce (D11).
    case unimplemented = 12
    /// A bug or an unexpected failure of lmctfy or the system.
    case `internal` = 13
    /// Try again later: the kernel or the agent cannot do it now.
    case unavailable = 14
    /// Data was lost or corrupted.
    case dataLoss = 15
    /// The peer could not prove who it is (the agent's handshake).
    case unauthenticated = 16

    public var description: String {
        switch self {
        case .ok: "OK"
        case .cancelled: "CANCELLED"
        case .unknown: "UNKNOWN"
        case .invalidArgument: "INVALID_ARGUMENT"
        case .deadlineExceeded: "DEADLINE_EXCEEDED"
        case .notFound: "NOT_FOUND"
        case .alreadyExists: "ALREADY_EXISTS"
        case .permissionDenied: "PERMISSION_DENIED"
        case .resourceExhausted: "RESOURCE_EXHAUSTED"
        case .failedPrecondition: "FAILED_PRECONDITION"
        case .aborted: "ABORTED"
        case .outOfRange: "OUT_OF_RANGE"
        case .unimplemented: "UNIMPLEMENTED"
        case .internal: "INTERNAL"
        case .unavailable: "UNAVAILABLE"
        case .dataLoss: "DATA_LOSS"
        case .unauthenticated: "UNAUTHENTICATED"
        }
    }
}

/// An lmctfy failure: a canonical code, a message for humans, and the errno
/// of the failed syscall when there was one.
public struct LmctfyError: Error, Sendable, Equatable, CustomStringConvertible {
    /// What kind of failure; also the CLI's exit status and the agent's stream status.
    public var code: StatusCode
    /// For humans: names the container and the file or syscall involved.
    public var message: String
    /// The errno of the failed syscall behind the error, if there was one.
    public var errno: Int32?

    /// An error with this code, message and (optional) errno.
    public init(_ code: StatusCode, _ message: String, errno: Int32? = nil) {
        self.code = code
        self.message = message
        self.errno = errno
    }

    public var description: String { "\(code.rawValue): \(message)" }

    /// INVALID_ARGUMENT (3) with this message.
    public static func invalidArgument(_ m: String) -> LmctfyError { LmctfyError(.invalidArgument, m) }
    /// NOT_FOUND (5) with this message.
    public static func notFound(_ m: String) -> LmctfyError { LmctfyError(.notFound, m) }
    /// ALREADY_EXISTS (6) with this message.
    public static func alreadyExists(_ m: String) -> LmctfyError { LmctfyError(.alreadyExists, m) }
    /// FAILED_PRECONDITION (9) with this message.
    public static func failedPrecondition(_ m: String) -> LmctfyError { LmctfyError(.failedPrecondition, m) }
    /// UNIMPLEMENTED (12) with this message.
    public static func unimplemented(_ m: String) -> LmctfyError { LmctfyError(.unimplemented, m) }
    /// UNAVAILABLE (14) with this message.
    public static func unavailable(_ m: String) -> LmctfyError { LmctfyError(.unavailable, m) }
    /// INTERNAL (13) with this message.
    public static func internalError(_ m: String) -> LmctfyError { LmctfyError(.internal, m) }
}
