// What a command prints on success, and how each output style renders it
// (lmctfy-behaviour.md §1.2, D15). Commands build a CommandOutput; only the
// dispatcher writes it, and only when the command succeeded.
import Glibc
import LmctfyProto
import LmctfySystem

/// Where the CLI writes: bytes, because `-b` prints binary protobuf.
public protocol ByteSink: AnyObject {
    /// Writes `bytes` in full (or drops them, if the sink cannot write).
    func write(_ bytes: [UInt8])
    /// Whether a write failed, or the reader of a pipe went away: a
    /// command that prints as it goes (`notify -f`, `events -f`) stops
    /// then (they waited on, writing nothing, until killed; a probe).
    var isBroken: Bool { get }
}

extension ByteSink {
    func write(_ text: String) { write(Array(text.utf8)) }
    public var isBroken: Bool { false }
}

/// Collects everything written, for tests.
public final class BufferSink: ByteSink {
    /// Everything written so far, in order.
    public private(set) var bytes: [UInt8] = []
    /// An empty sink.
    public init() {}
    /// Appends what is written to `bytes` (never fails).
    public func write(_ bytes: [UInt8]) { self.bytes += bytes }
    /// The bytes as UTF-8 text (invalid sequences repaired).
    public var text: String { String(decoding: bytes, as: UTF8.self) }
}

/// Writes straight to a file descriptor (1 or 2). A failed write is kept
/// (`failure`), not thrown: the command goes on, and `exitStatus` says at
/// the end that its output was lost.
public final class FileDescriptorSink: ByteSink {
    let fd: Int32
    /// The first write that failed (ENOSPC on a full disk, EBADF on a
    /// closed descriptor); nil: none.
    public private(set) var failure: SystemError?
    /// A sink writing to `fd`, which the caller keeps open and owns.
    public init(fd: Int32) { self.fd = fd }
    /// Writes all of `bytes` to the descriptor (retrying short writes).
    public func write(_ bytes: [UInt8]) {
        guard failure == nil else { return }
        do { try Sys.writeAll(fd, bytes) } catch { failure = error }
    }

    /// A failed write, or a pipe whose reader is gone (poll's POLLERR on
    /// its write end; SIGPIPE may be ignored), kept as `failure`.
    public var isBroken: Bool {
        if failure == nil {
            var p = pollfd(fd: fd, events: 0, revents: 0)
            if poll(&p, 1, 0) == 1 && p.revents & Int16(POLLERR) != 0 { failure = SystemError("write", "the output", EPIPE) }
        }
        return failure != nil
    }

    /// Why nothing written to the descriptor could arrive, checked before
    /// a command whose output is its only result (`run -n`'s pid): closed,
    /// opened for reading only, or a pipe whose reader is gone; nil: it
    /// can be written (a full disk is found only by writing).
    public var unwritable: String? {
        let mode = fcntl(fd, F_GETFL)
        if mode == -1 { return "descriptor \(fd) is not open" }
        if mode & O_ACCMODE == O_RDONLY { return "descriptor \(fd) is open for reading only" }
        if isBroken { return "descriptor \(fd) is a pipe nobody reads" }
        return nil
    }

    /// The exit status of a command whose output went to `stdout`: its
    /// own, or 15 (DATA_LOSS) when it succeeded but its output could not
    /// be written, said on `stderr` (`lmctfy list > /dev/full` exited 0).
    public static func exitStatus(_ status: Int32, program: String, stdout: FileDescriptorSink, stderr: any ByteSink) -> Int32 {
        guard status == 0, let failure = stdout.failure else { return status }
        stderr.write("\(program): the output could not be written: \(failure)\n")
        return StatusCode.dataLoss.rawValue
    }
}

/// How results are printed, chosen with `-o` (default `pairs`); D15.
public enum OutputStyle: String, Sendable, CaseIterable {
    /// `pairs`: key="value" (C-escaped) per line; `values`: the values alone;
    /// `long`: the key padded to 20, " | ", the value, a blank line; `json`:
    /// the command's JSON document.
    case pairs, values, long, json
}

/// Key/value lines in one of the CLI's output styles, `json` the document
/// `-o json` prints (lmctl's own verbs, printed as lmctfy's are).
public func renderOutput(_ pairs: [(String, String)], json: String, style: OutputStyle) -> [UInt8] {
    CommandOutput(entries: pairs.map { .pair(key: $0.0, value: $0.1) }, json: json).render(style)
}

/// One line of output: a key and value, or text printed exactly as it is
/// (the protobuf text of `spec` and `stats`).
enum OutputEntry: Equatable {
    case pair(key: String, value: String)
    case raw(String)
}

/// A command's result. `json` is the whole document `-o json` prints, so
/// each command chooses its own shape ({"containers":[...]}, proto3 JSON).
struct CommandOutput {
    var entries: [OutputEntry] = []
    var json: String = "{}"
    /// Set by `spec -b` / `stats -b`: printed instead of everything else.
    var binary: [UInt8]?
    /// The CLI's exit status on success (`run` passes on its command's).
    var exitStatus: Int32 = 0
    /// Undoes what the command did when its output could not be written
    /// (`run -n`: the command whose pid was lost); what to say on stderr.
    var undoIfUnwritten: (@Sendable () -> String?)?

    /// Commands that print nothing (create, destroy, update, init); `{}` in JSON.
    static let none = CommandOutput()

    /// One `key="value"` per item, and {"<jsonKey>":[...]} as JSON.
    static func list(key: String, jsonKey: String, _ values: [String]) -> CommandOutput {
        CommandOutput(
            entries: values.map { .pair(key: key, value: $0) },
            json: "{\(JSONFormat.quote(jsonKey)):[\(values.map(JSONFormat.quote).joined(separator: ","))]}")
    }

    /// A protobuf message: raw text format, proto3 JSON, or binary with -b.
    static func message<M: ProtoMessage>(_ message: M, binary: Bool) throws -> CommandOutput {
        if binary { return CommandOutput(binary: try message.serializedBytes()) }
        return CommandOutput(entries: [.raw(message.textFormatString)], json: message.jsonString())
    }

    func render(_ style: OutputStyle) -> [UInt8] {
        if let binary { return binary }
        if style == .json { return Array((json + "\n").utf8) }
        var out = ""
        for entry in entries {
            switch entry {
            case .raw(let text):
                out += text
            case .pair(let key, let value):
                let key = Self.sanitizedKey(key)
                switch style {
                case .pairs: out += "\(key)=\"\(Self.cEscaped(value))\"\n"
                case .values: out += value + "\n"
                case .long: out += key.padding(toLength: 20) + " | " + value + "\n\n"
                case .json: break
                }
            }
        }
        return Array(out.utf8)
    }

    /// Keys are `[A-Za-z0-9][-A-Za-z0-9_.]*` so scripts can split on `=`;
    /// any other byte becomes `_` (as the original's OutputMap does).
    static func sanitizedKey(_ key: String) -> String {
        var out = [UInt8]()
        for (i, u) in key.utf8.enumerated() {
            let alnum = (u >= 0x30 && u <= 0x39) || (u >= 0x41 && u <= 0x5A) || (u >= 0x61 && u <= 0x7A)
            let ok = alnum || (i > 0 && (u == 0x2D || u == 0x5F || u == 0x2E))
            out.append(ok ? u : 0x5F)
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// C escaping, byte by byte, as the original's CEscape: a value always
    /// stays on one line between its quotes.
    static func cEscaped(_ value: String) -> String {
        TextFormat.cEscape(Array(value.utf8))
    }
}

extension String {
    /// Left-justified in `width` columns; longer strings are kept whole.
    func padding(toLength width: Int) -> String {
        count >= width ? self : self + String(repeating: " ", count: width - count)
    }
}
