// What the verbs and the agent act on. `lmctfy` runs them on this machine's
// cgroups (LocalBackend, in CL1); `lmctl` runs the very same verbs against
// an agent (RemoteBackend, over the RPC); the agent serves its RPCs with a
// LocalBackend. One set of verb semantics, three front doors.
//
// This module is the protocol and its vocabulary only: it links neither the
// cgroup library nor the RPC, so every front door can depend on it.
import LmctfyProto
import LmctfySystem

/// How `update` treats the fields a spec leaves out.
public enum UpdatePolicy: Sendable {
    /// Write only the fields the spec gives.
    case diff
    /// The spec is the whole new state: fields it leaves out go back to their
    /// defaults (D3). Create applies the spec with this policy.
    case replace
}

/// Which statistics `stats` gathers.
public enum StatsType: Sendable {
    /// The usual fields.
    case summary
    /// Every field.
    case full
}

/// The result of `run`: a detached command's pid, or how a foreground
/// (attached) command ended.
public enum RunOutcome: Sendable, Equatable {
    /// A detached command was started with this pid.
    case started(pid: Int32)
    /// A foreground command exited with this code.
    case exited(status: Int32)
    /// A foreground command was ended by this signal.
    case killed(signal: Int32)

    /// The exit status as a shell reports it (the code, or 128 + the
    /// signal); nil for a detached command.
    public var shellStatus: Int32? {
        switch self {
        case .started: nil
        case .exited(let status): status
        case .killed(let signal): 128 + signal
        }
    }
}

/// How a waiting `notify` learns that its caller gave up (the agent: the
/// peer cancelled, the deadline passed or the connection closed).
public struct NotifyCancellation: Sendable {
    /// The longest one wait lasts before `isCancelled` is asked again.
    public var pollMs: Int32
    /// Asked before every wait; true ends `notify` normally.
    public var isCancelled: @Sendable () -> Bool

    /// A cancellation check asked at least every `pollMs` milliseconds.
    public init(pollMs: Int32, isCancelled: @escaping @Sendable () -> Bool) {
        self.pollMs = pollMs
        self.isCancelled = isCancelled
    }
}

/// Every operation a verb or an agent method performs. Names are as the
/// user typed them (relative names resolve against the caller's
/// container); `nil` means "the caller's container" (the calling shell's,
/// locally). Where a method returns a container name, it is the absolute
/// name the backend resolved, so callers never resolve a name a second time.
///
/// Implementations are `Sendable`; a call blocks its thread (cgroup writes,
/// waiting for a process or an event) and must not run on an event loop.
public protocol ContainerBackend: Sendable {
    /// Creates a container isolating what `spec` names; returns its
    /// absolute name.
    @discardableResult
    func create(_ name: String, spec: ContainerSpec) throws(LmctfyError) -> String
    /// `create`, also reporting a virtual host's init pid (as the
    /// backend's machine sees it; nil for any other container), which
    /// `lmctfy create` prints as `init_pid`.
    func createReportingInit(_ name: String, spec: ContainerSpec) throws(LmctfyError) -> CreateOutcome
    /// `createReportingInit`, the container recording `origin`, a token
    /// its creator keeps (`containerOrigin`), before it is complete.
    func createReportingInit(_ name: String, spec: ContainerSpec, origin: String?) throws(LmctfyError) -> CreateOutcome
    /// What `create` would refuse before it makes anything (the name is
    /// taken, the parent missing or not isolating what the spec names, a
    /// section or value refused), found without making anything: a dry
    /// run. A backend that cannot tell without creating says UNIMPLEMENTED.
    func checkCreate(_ name: String, spec: ContainerSpec) throws(LmctfyError)
    /// Without `force`, refuses (9) a container with subcontainers,
    /// processes or threads. `/` is always refused (D7). Returns the
    /// absolute name of the container destroyed.
    @discardableResult
    func destroy(_ name: String, force: Bool) throws(LmctfyError) -> String
    /// `destroy`, returning every container it destroyed: with `force`,
    /// the subcontainers first (deepest first), then the container itself
    /// (absolute names), so each can be reported gone.
    func destroyReporting(_ name: String, force: Bool) throws(LmctfyError) -> [String]
    /// Applies `spec` with `policy`; returns the container's absolute name.
    @discardableResult
    func update(_ name: String, spec: ContainerSpec, policy: UpdatePolicy) throws(LmctfyError) -> String
    /// The container's spec as the kernel has it.
    func spec(_ name: String?) throws(LmctfyError) -> ContainerSpec
    /// The running init of the virtual host `name` is the top-level
    /// container of; nil for any other container, or an init gone.
    func virtualHostInit(_ name: String) -> Int32?
    /// The container's statistics.
    func stats(_ name: String?, type: StatsType) throws(LmctfyError) -> ContainerStats
    /// Absolute names of the subcontainers, sorted (`recursive`: every descendant).
    func listContainers(_ name: String?, recursive: Bool) throws(LmctfyError) -> [String]
    /// Pids (or, with `threads`, tids) of the container, sorted.
    func listTasks(_ name: String?, threads: Bool, recursive: Bool) throws(LmctfyError) -> [Int32]
    /// The container of a task; `nil`: the caller.
    func detect(_ tid: Int32?) throws(LmctfyError) -> String
    /// The absolute name `name` stands for, resolved as every other method
    /// resolves it (relative names against the caller's container).
    func resolve(_ name: String) throws(LmctfyError) -> String
    /// Starts `argv` in the container. `onStarted` gets the pid as soon as
    /// the command runs. Detached: returns `.started`. Attached: waits for
    /// the command and returns how it ended (a backend that replaces the
    /// calling process, lmctfy's foreground `run`, returns only by throwing).
    func run(_ name: String, argv: [String], detached: Bool,
             onStarted: (Int32) throws(LmctfyError) -> Void) throws(LmctfyError) -> RunOutcome
    /// Which container of its name `name` is now (its cgroup's inode), so
    /// that one made again under the name is told from it; nil: gone, or
    /// a backend that cannot tell.
    func containerIdentity(_ name: String) -> UInt64?
    /// The token `name`'s create was given (`createReportingInit`'s
    /// `origin`); nil: none, gone, or a backend that cannot tell.
    func containerOrigin(_ name: String) -> String?
    /// Kills a command `run` started detached whose pid its caller could
    /// not report (its process group, SIGKILL); false: a backend that
    /// cannot (its processes are on another machine).
    func abandonDetached(_ pid: Int32) -> Bool
    /// A foreground `run` whose stdout and stderr come back through
    /// `onOutput` (1 or 2, and a chunk), read until the command exits (nil:
    /// they go to /dev/null), and whose stdin is what `input` gives (nil:
    /// /dev/null). With `terminal`, the command runs on a pseudo-terminal
    /// of its size (its controlling terminal, in a session of its own; its
    /// TERM the terminal's):
    /// what it writes comes as stream 1, `input` is what is typed, and the
    /// input's end types the end-of-file character. A backend that cannot
    /// says UNIMPLEMENTED.
    func runCapturing(_ name: String, argv: [String], input: (any RunInput)?, terminal: RunTerminal?,
                      onStarted: (Int32) throws(LmctfyError) -> Void,
                      onOutput: ((Int32, [UInt8]) throws(LmctfyError) -> Void)?) throws(LmctfyError) -> RunOutcome
    /// The next foreground `run`'s stdin is this process's own (`run -i`):
    /// lmctl sends it to the agent. By default nothing to do (a local run
    /// inherits it anyway).
    func attachStdin() throws(LmctfyError)
    /// The next foreground `run` is on a terminal, this process's own
    /// (`run -t`): lmctl has the agent make one and passes its keys and size
    /// on. By default nothing to do (a local run inherits the terminal).
    func attachTerminal() throws(LmctfyError)
    /// `run` in a container made for the command (`run --create SPEC`):
    /// `name` is created with `spec` first; when the command cannot be
    /// started, the container is destroyed again. With `remove` (`--rm`),
    /// it is destroyed (with whatever is left in it) when the command ends;
    /// a backend that cannot see a detached command end refuses `remove`
    /// with `detached` before it makes anything. `tier`: a tier of the
    /// agent's policy (a backend without one refuses it).
    func runInNewContainer(_ name: String, spec: ContainerSpec, tier: String?, argv: [String], detached: Bool,
                           remove: Bool) throws(LmctfyError) -> RunOutcome
    /// Moves tasks into the container; `tids` empty: the caller.
    func enter(_ name: String, tids: [Int32]) throws(LmctfyError)
    /// Kills every process of the container (`recursive`: and of its
    /// subcontainers, deepest first).
    func killAll(_ name: String, recursive: Bool) throws(LmctfyError)
    /// Freezes or thaws the container, waiting until the kernel reports the
    /// new state; returns its absolute name.
    @discardableResult
    func setPaused(_ name: String, _ paused: Bool) throws(LmctfyError) -> String
    /// `setPaused`, saying also whether the container's freezer state
    /// changed (a pause of a paused container, a resume of a running one:
    /// no change, and the agent records no FREEZER event for it).
    func setPausedReporting(_ name: String, _ paused: Bool) throws(LmctfyError) -> (path: String, changed: Bool)
    /// Watches for `event`. `onWatching` gets the container's absolute name
    /// once the registration is in place, before any event; then `onEvent`
    /// gets the count of each delivery and returns whether to keep waiting.
    /// Returns when `onEvent` says stop or `cancellation` reports the caller
    /// gone (nil: wait for as long as it takes); throws NOT_FOUND when the
    /// container goes away (D5).
    func notify(_ name: String, event: EventSpec, cancellation: NotifyCancellation?,
                onWatching: (String) throws(LmctfyError) -> Void,
                onEvent: (Int) throws(LmctfyError) -> Bool) throws(LmctfyError)
    /// Mounts and prepares the hierarchies an InitSpec asks for.
    func initMachine(_ spec: InitSpec) throws(LmctfyError)
    /// A failure's message as the caller should read it: a backend serving
    /// part of the machine (an agent's root_container) names containers
    /// by the caller's names there, not by the machine's.
    func callerMessage(_ message: String) -> String
}

/// What `createReportingInit` made.
public struct CreateOutcome: Sendable, Equatable {
    /// The container's absolute name.
    public var name: String
    /// A virtual host's init (nil for any other container).
    public var initPid: Int32?

    public init(name: String, initPid: Int32?) {
        self.name = name
        self.initPid = initPid
    }
}

extension ContainerBackend {
    /// By default: the message as it is.
    public func callerMessage(_ message: String) -> String { message }

    /// By default: none (a backend that cannot tell).
    public func virtualHostInit(_ name: String) -> Int32? { nil }

    /// By default: `destroy`, reporting the container alone.
    public func destroyReporting(_ name: String, force: Bool) throws(LmctfyError) -> [String] {
        [try destroy(name, force: force)]
    }

    /// By default: `create`, with no init to report.
    public func createReportingInit(_ name: String, spec: ContainerSpec) throws(LmctfyError) -> CreateOutcome {
        CreateOutcome(name: try create(name, spec: spec), initPid: nil)
    }

    /// By default: `setPaused`, taken for a change.
    public func setPausedReporting(_ name: String, _ paused: Bool) throws(LmctfyError) -> (path: String, changed: Bool) {
        (try setPaused(name, paused), true)
    }

    /// By default: cannot tell without creating.
    public func checkCreate(_ name: String, spec: ContainerSpec) throws(LmctfyError) {
        throw .unimplemented("This backend cannot check a create without making the container")
    }

    /// By default: cannot tell.
    public func containerIdentity(_ name: String) -> UInt64? { nil }

    /// By default: cannot tell.
    public func containerOrigin(_ name: String) -> String? { nil }

    /// By default: cannot.
    public func abandonDetached(_ pid: Int32) -> Bool { false }

    /// By default: `createReportingInit`, recording no origin.
    public func createReportingInit(_ name: String, spec: ContainerSpec, origin: String?) throws(LmctfyError) -> CreateOutcome {
        try createReportingInit(name, spec: spec)
    }

    /// By default: not possible.
    public func runCapturing(_ name: String, argv: [String], input: (any RunInput)?, terminal: RunTerminal?,
                             onStarted: (Int32) throws(LmctfyError) -> Void,
                             onOutput: ((Int32, [UInt8]) throws(LmctfyError) -> Void)?) throws(LmctfyError) -> RunOutcome {
        throw .unimplemented("This backend cannot attach a command's stdio to its caller")
    }

    /// By default: nothing to do.
    public func attachStdin() throws(LmctfyError) {}

    /// By default: nothing to do.
    public func attachTerminal() throws(LmctfyError) {}

    /// By default: `create`, then `run` (whose foreground must return),
    /// then `destroy`; a detached command's end is not seen, so `remove`
    /// with `detached` is refused.
    public func runInNewContainer(_ name: String, spec: ContainerSpec, tier: String?, argv: [String], detached: Bool,
                                  remove: Bool) throws(LmctfyError) -> RunOutcome {
        try createRunRemove(name, spec: spec, tier: tier, detached: detached, remove: remove) { () throws(LmctfyError) in
            try run(name, argv: argv, detached: detached)
        }
    }

    /// `runInNewContainer` with the command started (and, in the
    /// foreground, waited for) by `start`.
    public func createRunRemove(_ name: String, spec: ContainerSpec, tier: String?, detached: Bool, remove: Bool,
                                start: () throws(LmctfyError) -> RunOutcome) throws(LmctfyError) -> RunOutcome {
        if tier != nil {
            throw .failedPrecondition("--tier puts the container in a tier of an agent's policy: there is none here (lmctl run --create SPEC --tier T, at an agent with a policy)")
        }
        if remove && detached {
            throw .failedPrecondition("--rm with -n needs an agent (lmctl run): nothing here stays to see a detached command end")
        }
        try create(name, spec: spec)
        let made = containerIdentity(name)
        let outcome: RunOutcome
        do {
            outcome = try start()
        } catch {
            throw removeMadeContainer(name, after: error)
        }
        // (A detached command's outcome has no exit status.)
        // Not when the name is another container's by now (this one was
        // destroyed, and one made again under its name: it was destroyed
        // with its processes; a probe).
        if remove, let status = outcome.shellStatus, made == nil || containerIdentity(name) == made {
            do {
                try destroy(name, force: true)
            } catch where error.code == .notFound {
                // Destroyed by another caller meanwhile: gone, as asked (the
                // command's status stands; it was 5 here, a probe).
            } catch {
                throw LmctfyError(error.code, "The command ended (exit status \(status)) but its container \(name) could not be removed: \(error.message)")
            }
        }
        return outcome
    }

    /// Destroys the container made for a command that did not start;
    /// returns the error to report (the start's, and the destroy's too when
    /// the container stays).
    public func removeMadeContainer(_ name: String, after cause: LmctfyError) -> LmctfyError {
        do {
            try destroy(name, force: true)
            return cause
        } catch where error.code == .notFound {
            return cause
        } catch {
            return LmctfyError(cause.code, "\(cause.message); the container \(name) made for it could not be removed: \(error.message)")
        }
    }

    /// `run` for the verbs: nothing to do when the command starts.
    public func run(_ name: String, argv: [String], detached: Bool) throws(LmctfyError) -> RunOutcome {
        try run(name, argv: argv, detached: detached) { (_: Int32) throws(LmctfyError) in }
    }

    /// `notify` for the verbs: calls `onEvent` with the count of each
    /// delivery; returns after the first unless `follow`, and otherwise ends
    /// by throwing (NOT_FOUND when the container goes away, D5).
    public func notify(_ name: String, event: EventSpec, follow: Bool, onEvent: (Int) -> Void) throws(LmctfyError) {
        try notify(name, event: event, cancellation: nil,
                   onWatching: { (_: String) throws(LmctfyError) in },
                   onEvent: { (n: Int) throws(LmctfyError) -> Bool in
                       onEvent(n)
                       return follow
                   })
    }
}

/// A foreground command's stdin fed from elsewhere (the agent's Run with
/// `attach_input`: its caller's INPUT frames). The backend takes chunks as
/// they come and writes them to the command's stdin pipe, one at a time.
/// The terminal a foreground run is on (`lmctl run -t`): its size at the
/// start, its type (the command's TERM) and the modes set on it before the
/// command starts (its caller's terminal's; none: the kernel's defaults).
public struct RunTerminal: Sendable, Equatable {
    public var window: TerminalWindow
    public var term: String
    public var modes: [TerminalSetting]

    public init(window: TerminalWindow, term: String, modes: [TerminalSetting] = []) {
        self.window = window
        self.term = term
        self.modes = modes
    }

    /// Whether `term` can be a TERM: 1 to 64 letters, digits and "._+-".
    public static func isValidTerm(_ term: String) -> Bool {
        !term.isEmpty && term.utf8.count <= 64
            && term.utf8.allSatisfy { c in
                (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a) || c == 0x2e || c == 0x5f || c == 0x2b || c == 0x2d
            }
    }
}

extension TerminalMode {
    /// The mode as a terminal takes it (an absent number or value is 0:
    /// out of range, refused by `TerminalSetting.refusal`).
    public var setting: TerminalSetting { TerminalSetting(opcode: opcode ?? 0, value: value ?? 0) }

    public init(_ setting: TerminalSetting) { self.init(opcode: setting.opcode, value: setting.value) }
}

public protocol RunInput: AnyObject, Sendable {
    /// Polls readable while `take` has a chunk.
    var readyFd: Int32 { get }
    /// The command has started: input may come now.
    func start()
    /// The next chunk, or nil when none waits; `end`: nothing follows;
    /// `window`: the caller's terminal has this size now (before `bytes`;
    /// for a command on a terminal).
    func take() -> (bytes: [UInt8], end: Bool, window: TerminalWindow?)?
    /// A chunk taken has been written (or dropped: the command closed its
    /// stdin): room for one more.
    func consumed()
}
