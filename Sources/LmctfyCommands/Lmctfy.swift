// What the `lmctfy` executable and the tests share about the CLI as a whole.

/// The version printed by `lmctfy -V` / `--version`.
public let lmctfyVersion = "0.6.0-swift"
