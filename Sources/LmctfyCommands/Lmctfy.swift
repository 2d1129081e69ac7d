// The `lmctfy` command tree. Each verb lives in a file of its own; this file
// only holds the root and the version.
import ArgumentParser

/// The version printed by `lmctfy -V` / `--version`.
public let lmctfyVersion = "0.6.0-swift"

public struct LmctfyCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "lmctfy",
        abstract: "Let Me Contain That For You: containers on Linux cgroups.",
        version: "lmctfy version \(lmctfyVersion)")

    public init() {}
}
