// The one error type of lmctfy. Codes are the canonical status codes (gRPC
// numbering), which are also the CLI's exit status and the agent's stream
// status; messages name the container and the file or syscall involved.

/// Canonical status codes, numbered as in gRPC and the original lmctfy.
public enum StatusCode: Int32, Sendable, CaseIterable, CustomStringConvertible {
    case ok = 0
    case cancelled = 1
    case unknown = 2
    case invalidArgument = 3
    case deadlineExceeded = 4
    case notFound = 5
    case alreadyExists = 6
    case permissionDenied = 7
    case resourceExhausted = 8
    case failedPrecondition = 9
    case aborted = 10
    case outOfRange = 11
    case unimplemented = 12
    case `internal` = 13
    case unavailable = 14
    case dataLoss = 15
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
    public var code: StatusCode
    public var message: String
    public var errno: Int32?

    public init(_ code: StatusCode, _ message: String, errno: Int32? = nil) {
        self.code = code
        self.message = message
        self.errno = errno
    }

    public var description: String { "\(code.rawValue): \(message)" }

    public static func invalidArgument(_ m: String) -> LmctfyError { LmctfyError(.invalidArgument, m) }
    public static func notFound(_ m: String) -> LmctfyError { LmctfyError(.notFound, m) }
    public static func alreadyExists(_ m: String) -> LmctfyError { LmctfyError(.alreadyExists, m) }
    public static func failedPrecondition(_ m: String) -> LmctfyError { LmctfyError(.failedPrecondition, m) }
    public static func unimplemented(_ m: String) -> LmctfyError { LmctfyError(.unimplemented, m) }
    public static func unavailable(_ m: String) -> LmctfyError { LmctfyError(.unavailable, m) }
    public static func internalError(_ m: String) -> LmctfyError { LmctfyError(.internal, m) }
}
