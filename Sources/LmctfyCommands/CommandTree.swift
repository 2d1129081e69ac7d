// The command tree: menus of words leading to verbs (leaves). Dispatch walks
// it one word at a time (lmctfy-behaviour.md §1.1). Each verb's Leaf lives in
// the verb's own file; this file only arranges them.
import LmctfyBackend
import LmctfySystem

/// A verb: its synopsis and argument count, and what it does.
struct Leaf: Sendable {
    enum Action: Sendable {
        /// The usual case: the backend (the library instance, or the agent
        /// connection) is built first, and a failure to build it is reported
        /// as such (§1.1).
        case withApi(@Sendable (any ContainerBackend, Invocation) throws -> CommandOutput)
        /// `init` runs before there can be an instance (it mounts hierarchies).
        case withoutApi(@Sendable (Invocation) throws -> CommandOutput)
    }

    let name: String
    /// The arguments after the path, e.g. `[-f] <container name>`.
    let synopsis: String
    let summary: String
    let minArguments: Int
    /// nil: no upper bound.
    let maxArguments: Int?
    let action: Action
}

struct Menu: Sendable {
    let name: String
    let children: [CommandNode]

    func child(_ word: String) -> CommandNode? {
        children.first { $0.name == word }
    }
}

indirect enum CommandNode: Sendable {
    case menu(Menu)
    case leaf(Leaf)

    var name: String {
        switch self {
        case .menu(let m): m.name
        case .leaf(let l): l.name
        }
    }
}

enum CommandTree {
    /// Root commands in alphabetical order, as the original lists them.
    static let root = Menu(name: "lmctfy", children: [
        .leaf(CreateCommand.leaf),
        .leaf(DestroyCommand.leaf),
        .leaf(DetectCommand.leaf),
        .leaf(EnterCommand.leaf),
        .menu(ImageCommand.menu),
        .leaf(InitCommand.leaf),
        .leaf(KillAllCommand.leaf),
        .menu(Menu(name: "list", children: [
            .leaf(ListContainersCommand.leaf),
            .leaf(ListTasksCommand.pids),
            .leaf(ListTasksCommand.tids),
        ])),
        .menu(Menu(name: "notify", children: [
            .menu(Menu(name: "container", children: [.leaf(NotifyCommand.empty)])),
            .menu(Menu(name: "memory", children: [
                .leaf(NotifyCommand.oom),
                .leaf(NotifyCommand.threshold),
            ])),
        ])),
        .leaf(FreezeCommand.pause),
        .leaf(FreezeCommand.resume),
        .leaf(RunCommand.leaf),
        .leaf(SpecCommand.leaf),
        .menu(Menu(name: "stats", children: [
            .leaf(StatsCommand.summary),
            .leaf(StatsCommand.full),
        ])),
        .menu(Menu(name: "update", children: [
            .leaf(UpdateCommand.diff),
            .leaf(UpdateCommand.replace),
        ])),
    ])
}

/// Everything a verb gets besides the library instance.
struct Invocation {
    /// The positional arguments, decoded as UTF-8 (names, pids).
    let arguments: [String]
    /// The same arguments as given, for specs in the binary wire format.
    let rawArguments: [[UInt8]]
    let flags: Flags
    let environment: CLIEnvironment
    /// For commands that print as they go (`notify -f`).
    let stdout: any ByteSink
    /// For diagnostics printed before the error line (text format errors).
    let stderr: any ByteSink

    func argument(_ index: Int) -> String? {
        index < arguments.count ? arguments[index] : nil
    }


}
