// A refusal expected of the library: the code and what the message says.
import LmctfySystem
import Testing

/// Expects `body` to fail with `code` and a message containing `text`;
/// `what` names the attempt in the test's report.
func expectRefused(_ what: String, _ code: StatusCode, containing text: String, _ body: () throws -> Void,
                   sourceLocation: SourceLocation = #_sourceLocation) {
    do {
        try body()
        Issue.record("\(what) was not refused", sourceLocation: sourceLocation)
    } catch {
        let e = error as? LmctfyError
        #expect(e?.code == code && e?.message.contains(text) == true, "\(what): \(error)", sourceLocation: sourceLocation)
    }
}
