// Progress of a long verb on a terminal (lmctfy and lmctl alike): when
// stderr is a terminal, what the library (or, through lmctl, the agent)
// reports is drawn as one line on stderr, rewritten in place and erased
// when the verb ends, so that stdout and the error line stay as they were.
import LmctfySystem

public enum ProgressLine {
    /// Runs `body` with a progress line on `stderr` when it is a terminal
    /// (file descriptor 2); otherwise just runs it.
    public static func around<T>(stderr: any ByteSink, _ body: () throws -> T) throws -> T {
        guard stderr is FileDescriptorSink, Terminal.isTerminal(2) else { return try body() }
        let columns = Terminal.size(2)?.columns ?? 80
        let line = ThrottledProgress { message in
            stderr.write(Array(("\r" + String(message.prefix(max(10, columns - 1))) + "\u{1b}[K").utf8))
        }
        defer { if line.emitted { stderr.write(Array("\r\u{1b}[K".utf8)) } }
        return try Progress.with(line.report) { () throws -> T in try body() }
    }
}
