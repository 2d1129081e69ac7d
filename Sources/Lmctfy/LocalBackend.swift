// The container backend over CL1 on this machine: what `lmctfy` runs its
// verbs on and what the agent serves its methods with. Semantics that the
// CLI and the agent share (D7: `/` refused by every verb that changes a
// container, i.e. update, destroy, killall, pause and resume; destroy
// without -f only when empty; killall -r deepest first) live here, once.
// So does the mapping of names when the backend serves a part of the
// machine (ContainerScope, the agent's root_container): every name in is
// resolved inside its root and every name out is relative to it.
import Glibc
import LmctfyProto
import LmctfySystem

/// CL1 on this machine. A value type holding its `ContainerApi`; safe to use
/// from any thread (each call blocks the calling thread).
public struct LocalBackend: ContainerBackend {
    /// How an attached (foreground) `run` runs the command: given the
    /// container (which `run` has just found to exist), the argv and the
    /// started-callback, it returns how the command ended (or only throws,
    /// when it replaces the process).
    public typealias Foreground = @Sendable (Container, [String], (Int32) throws(LmctfyError) -> Void)
        throws(LmctfyError) -> RunOutcome

    /// Where a spawned foreground command's stdio goes.
    public enum ForegroundStdio: Sendable {
        /// The caller's stdin, stdout and stderr (in-process lmctfy, tests).
        case inherit
        /// /dev/null: the agent's stdio is not its caller's, so an attached
        /// run's output is dropped until the protocol carries it.
        case devNull
    }

    /// The library instance every call goes through.
    public let api: ContainerApi
    /// Whose container `nil` names mean (lmctfy: its parent, the shell;
    /// the agent: itself), in the machine scope.
    public let callerPid: pid_t
    /// The part of the machine served. The machine scope: names are the
    /// machine's, relative ones against this process's container. Another
    /// root: names are relative to it, as the owner of a delegated
    /// container names its subtree (its root is "/", plays the part of the
    /// caller's container, and is refused where "/" is, D7).
    public let scope: ContainerScope
    /// How an attached `run` runs its command.
    public let foreground: Foreground
    /// What `initMachine` does (tests record the spec instead).
    public let initMachineHook: @Sendable (InitSpec) throws(LmctfyError) -> Void
    /// The process ends once its verb is done (the lmctfy executable): the
    /// signals `runInNewContainer` holds stay held until then, rather than
    /// going back to their defaults, which a signal landing between the
    /// cleanup and the exit then met (lmctfy died of it, its command's
    /// status lost; a probe: 3 of 19).
    public var signalsHeldUntilExit = false

    /// A backend over `api` on behalf of `callerPid`, serving `scope`. By
    /// default an attached `run` spawns with the caller's stdio and waits,
    /// and `initMachine` mounts what the spec asks for.
    public init(api: ContainerApi, callerPid: pid_t, scope: ContainerScope = .machine,
                foreground: @escaping Foreground = LocalBackend.spawnAndWait(stdio: .inherit),
                initMachine: @escaping @Sendable (InitSpec) throws(LmctfyError) -> Void = LocalBackend.prepareMachine) {
        self.api = api
        self.callerPid = callerPid
        self.scope = scope
        self.foreground = foreground
        self.initMachineHook = initMachine
    }

    /// This machine's hierarchies (`ContainerApi.detect`), on behalf of `callerPid`.
    public static func detect(callerPid: pid_t, foreground: @escaping Foreground) throws(LmctfyError) -> LocalBackend {
        LocalBackend(api: try ContainerApi.detect(), callerPid: callerPid, foreground: foreground)
    }

    /// Mounts and prepares what an InitSpec asks for (`ContainerApi.initMachine`).
    @Sendable
    public static func prepareMachine(_ spec: InitSpec) throws(LmctfyError) {
        _ = try ContainerApi.initMachine(spec)
    }

    /// lmctfy's foreground `run`: the process becomes the command (exec, as
    /// in the original), so this returns only by throwing.
    @Sendable
    public static func execForeground(
        _ container: Container, _ argv: [String], _ onStarted: (Int32) throws(LmctfyError) -> Void
    ) throws(LmctfyError) -> RunOutcome {
        try container.exec(argv)
    }

    /// Spawns the command (stdio as `stdio` says), reports its pid, and
    /// waits for it: for in-process use (tests, embedding) and the agent.
    public static func spawnAndWait(stdio: ForegroundStdio) -> Foreground {
        { (container: Container, argv: [String], onStarted: (Int32) throws(LmctfyError) -> Void) throws(LmctfyError) -> RunOutcome in
            var options = RunOptions(fdPolicy: .inherit)
            options.existenceChecked = true  // the container `run` got from `get`
            if stdio == .devNull {
                options.stdin = .devNull; options.stdout = .devNull; options.stderr = .devNull
                // No terminal of its caller's: its own process group, which
                // a caller that goes kills with it (kill(-pid)).
                options.ownSession = true
            }
            let pid = try container.run(argv, options: options)
            try onStarted(pid)
            return try waitOutcome(pid)
        }
    }

    /// How the command `pid` (a child) ended, once it has.
    static func waitOutcome(_ pid: Int32) throws(LmctfyError) -> RunOutcome {
        let status: ExitStatus
        do throws(SystemError) { status = try Sys.waitForExit(pid) } catch { throw error.lmctfy(.internal, "Failed to wait for pid \(pid)") }
        switch status {
        case .exited(let code): return .exited(status: code)
        case .signaled(let signal): return .killed(signal: signal)
        }
    }

    // MARK: Names (the scope's mapping, both ways)

    /// The machine's name for a caller's name: in the machine scope as the
    /// library resolves it (a relative name against the container of this
    /// process, as the original: lmctfy's own, not its caller's, which a
    /// missing name means), otherwise inside the scope's root.
    func machineName(_ name: String) throws(LmctfyError) -> ContainerName {
        scope.isMachine ? try api.resolve(name) : try scope.resolve(name)
    }

    /// The caller's name for a machine name (every name returned).
    func callerPath(_ name: ContainerName) throws(LmctfyError) -> String {
        guard let path = scope.path(name) else {
            throw .internalError("Container \"\(name)\" is outside the root container \"\(scope.root)\"")
        }
        return path
    }

    /// The container a caller's name names; NOT_FOUND (naming it as the
    /// caller does) if it does not exist.
    func get(_ name: String) throws(LmctfyError) -> Container {
        let resolved = try machineName(name)
        guard try api.exists(resolved) else { throw .notFound("Container \"\(try callerPath(resolved))\" does not exist") }
        return Container(name: resolved, api: api)
    }

    func container(_ name: String?) throws(LmctfyError) -> Container {
        if let name { return try get(name) }
        // The caller's container: the scope's root plays its part.
        return scope.isMachine ? try api.get(api.detect(pid: callerPid)) : try get("/")
    }

    /// Whether `error` is NOT_FOUND because `name` no longer exists
    /// (destroyed meanwhile), not a file it lacks.
    func wentAway(_ error: LmctfyError, _ name: ContainerName) -> Bool {
        error.code == .notFound && (try? api.exists(name)) == false
    }

    /// `body` on `c`; a NOT_FOUND from one of its files when it was
    /// destroyed meanwhile (another caller's destroy, in a race) says that
    /// it does not exist, as for a container missing before, instead of
    /// the file's openat2 text (a probe).
    func existing<T>(_ c: Container, _ body: (Container) throws(LmctfyError) -> T) throws(LmctfyError) -> T {
        do {
            return try body(c)
        } catch where wentAway(error, c.name) {
            throw .notFound("Container \"\(try callerPath(c.name))\" does not exist")
        }
    }

    /// D7 for the scope's root as for the machine's: `message` if `name` is it.
    func refuseRoot(_ name: ContainerName, _ message: String) throws(LmctfyError) {
        if name == scope.root { throw .failedPrecondition(message) }
    }

    // MARK: Verbs

    public func callerMessage(_ message: String) -> String {
        scope.callerMessage(message, mountPoints: Array(Set(api.mounts.v1.values)).sorted() + (api.mounts.unified.map { [$0] } ?? []))
    }

    /// Creates the container (`ContainerApi.create`); returns its absolute name.
    @discardableResult
    public func create(_ name: String, spec: ContainerSpec) throws(LmctfyError) -> String {
        try callerPath(api.create(try creatable(name, spec), spec: spec).name)
    }

    /// The machine name of a container to create here: not the scope's
    /// root (it exists), and no virtual host below a root other than the
    /// machine's (a virtual host is a top-level container of the machine;
    /// CL1's "nested" refusal alone named a container that looks top-level
    /// to the caller).
    private func creatable(_ name: String, _ spec: ContainerSpec) throws(LmctfyError) -> ContainerName {
        let resolved = try machineName(name)
        if resolved == scope.root { throw .alreadyExists("Can't create existing container \"/\"") }
        if spec.virtualHost != nil && !scope.isMachine {
            throw .unimplemented("Nested Virtual Hosts are not yet supported: a virtual host is a top-level container of the machine, and every container here is inside the root container \(scope.root.path) that names here are relative to")
        }
        return resolved
    }

    /// What the create would refuse before making anything, without
    /// making anything (`ContainerApi.checkCreate`).
    public func checkCreate(_ name: String, spec: ContainerSpec) throws(LmctfyError) {
        try api.checkCreate(try creatable(name, spec), spec: spec)
    }

    /// Creates the container and, for a virtual host, reports its init's pid.
    public func createReportingInit(_ name: String, spec: ContainerSpec) throws(LmctfyError) -> CreateOutcome {
        try createReportingInit(name, spec: spec, origin: nil)
    }

    public func createReportingInit(_ name: String, spec: ContainerSpec, origin: String?) throws(LmctfyError) -> CreateOutcome {
        let made = try api.create(try creatable(name, spec), spec: spec, virtualHostStdio: nil, origin: origin)
        let initPid = spec.virtualHost != nil ? try made.initPid() : nil
        return CreateOutcome(name: try callerPath(made.name), initPid: initPid)
    }

    /// Destroys the container; without `force` only an empty one. `/` is refused (D7).
    @discardableResult
    public func destroy(_ name: String, force: Bool) throws(LmctfyError) -> String {
        try destroyReporting(name, force: force).last!
    }

    /// `destroy`, with the subcontainers it destroyed first (deepest first),
    /// then the container.
    public func destroyReporting(_ name: String, force: Bool) throws(LmctfyError) -> [String] {
        let resolved = try machineName(name)
        // D7: the root holds every task on the machine (or in the scope);
        // never destroy it.
        try refuseRoot(resolved, "Destroying the root container \"/\" is not allowed")
        // A name that is not a visible container may still have lmctfy's
        // leftovers (an interrupted create or destroy): the library
        // destroy removes them, or says NOT_FOUND.
        let container = Container(name: resolved, api: api)
        let n = try callerPath(resolved)
        if !force, try api.exists(resolved) {
            // Only an empty container goes: the recursive destroy would
            // otherwise kill what is running in it.
            if !(try container.subcontainers(recursive: false)).isEmpty {
                throw .failedPrecondition("Subcontainers found in \"\(n)\"; use -f to destroy them too")
            }
            if !(try container.processes(recursive: false)).isEmpty {
                throw .failedPrecondition("Processes found in \"\(n)\"; use -f to kill them")
            }
            if !(try container.threads(recursive: false)).isEmpty {
                throw .failedPrecondition("Tourist threads found in \"\(n)\"; use -f to kill them")
            }
        }
        var gone: [String] = []
        for sub in try api.destroy(container.name) {
            // A subcontainer outside the scope cannot be below a container in it.
            if let path = scope.path(sub) { gone.append(path) }
        }
        return gone + [n]
    }

    /// Applies `spec` with `policy`; returns the absolute name.
    @discardableResult
    public func update(_ name: String, spec: ContainerSpec, policy: UpdatePolicy) throws(LmctfyError) -> String {
        let container = try get(name)
        try refuseRoot(container.name, "Updating the root container \"/\" is not allowed")
        try existing(container) { (c: Container) throws(LmctfyError) in try c.update(spec, policy: policy) }
        return try callerPath(container.name)
    }

    /// The running init of the virtual host `name` is the top-level
    /// container of; nil for any other container, or an init gone.
    public func virtualHostInit(_ name: String) -> Int32? {
        guard let c = try? get(name), c.name.depth == 1 else { return nil }
        return (try? c.virtualHostInit()) ?? nil
    }

    /// The container's spec as the kernel has it; `nil`: the caller's container.
    public func spec(_ name: String?) throws(LmctfyError) -> ContainerSpec {
        try existing(try container(name)) { (c: Container) throws(LmctfyError) in try c.spec() }
    }

    /// The container's statistics; `nil`: the caller's container.
    public func stats(_ name: String?, type: StatsType) throws(LmctfyError) -> ContainerStats {
        try existing(try container(name)) { (c: Container) throws(LmctfyError) in try c.stats(type) }
    }

    /// Absolute names of the subcontainers, sorted.
    public func listContainers(_ name: String?, recursive: Bool) throws(LmctfyError) -> [String] {
        try existing(try container(name)) { (c: Container) throws(LmctfyError) in try c.subcontainers(recursive: recursive) }
            .map { (n: ContainerName) throws(LmctfyError) in try callerPath(n) }
    }

    /// Pids or tids of the container, sorted.
    public func listTasks(_ name: String?, threads: Bool, recursive: Bool) throws(LmctfyError) -> [Int32] {
        try existing(try container(name)) { (c: Container) throws(LmctfyError) in
            threads ? try c.threads(recursive: recursive) : try c.processes(recursive: recursive)
        }
    }

    /// The absolute name `name` stands for (the caller's).
    public func resolve(_ name: String) throws(LmctfyError) -> String {
        try callerPath(machineName(name))
    }

    /// The container of a task; `nil`: the caller (the scope's root, "/").
    /// NOT_FOUND for a task outside the scope's root.
    public func detect(_ tid: Int32?) throws(LmctfyError) -> String {
        if tid == nil && !scope.isMachine { return "/" }
        let pid = tid ?? callerPid
        let name = try api.detect(pid: pid)
        guard let path = scope.path(name) else {
            throw .notFound("TID \(pid) is outside the root container \"\(scope.root)\" that names here are relative to")
        }
        return path
    }

    /// Detached: a new session, stdio on /dev/null, not our child (D6). Attached: `foreground`.
    public func run(_ name: String, argv: [String], detached: Bool,
                    onStarted: (Int32) throws(LmctfyError) -> Void) throws(LmctfyError) -> RunOutcome {
        // A destroy racing the run (another caller's) says the container
        // does not exist, not the openat2 text of the file it took away
        // (a probe: 1 to 7 times in 1,000 mixed operations).
        try existing(try get(name)) { (c: Container) throws(LmctfyError) -> RunOutcome in
            guard detached else { return try foreground(c, argv, onStarted) }
            var options = RunOptions(fdPolicy: .detached)
            options.existenceChecked = true  // `get` just looked
            let pid = try c.run(argv, options: options)
            try onStarted(pid)
            return .started(pid: pid)
        }
    }

    /// `run --create SPEC [--rm]`. The foreground command is spawned and
    /// waited for, not exec'd: lmctfy stays outside the container to
    /// destroy it when the command ends (`remove`) or cannot start (an exec
    /// that failed left lmctfy inside it). From before the create until the
    /// destroy is over (`ForegroundJobSignals`): SIGINT and SIGQUIT are
    /// ignored, as system(3) does, so that ^C at the terminal ends the
    /// command and lmctfy then removes the container; SIGTERM and SIGHUP
    /// are passed on to the command while it runs (a `kill` of lmctfy left
    /// the command running and its container there), held after it (a
    /// second signal cut the destroy short), and before it starts they stop
    /// it from starting: the container made is removed and the outcome is
    /// that signal's (143 for SIGTERM). Signals lmctfy was started with
    /// ignored (nohup) stay ignored, in the command too.
    public func runInNewContainer(_ name: String, spec: ContainerSpec, tier: String?, argv: [String], detached: Bool,
                                  remove: Bool) throws(LmctfyError) -> RunOutcome {
        guard !detached else {
            return try createRunRemove(name, spec: spec, tier: tier, detached: true, remove: remove) { () throws(LmctfyError) in
                try run(name, argv: argv, detached: true)
            }
        }
        return try ForegroundJobSignals.around(restoring: !signalsHeldUntilExit) { (job: ForegroundJobSignals) throws(LmctfyError) -> RunOutcome in
            var stopped: (signal: Int32, error: LmctfyError)?
            do throws(LmctfyError) {
                return try createRunRemove(name, spec: spec, tier: tier, detached: false, remove: remove) { () throws(LmctfyError) -> RunOutcome in
                    if let signal = job.caught {
                        let error = LmctfyError(.cancelled, "Signal \(signal) came before the command started in \(name): not started")
                        stopped = (signal, error)
                        throw error
                    }
                    return try existing(try get(name)) { (c: Container) throws(LmctfyError) -> RunOutcome in
                        var options = RunOptions(fdPolicy: .inherit)
                        options.existenceChecked = true  // `get` just looked
                        options.ignoredSignals = job.ignoredAtStart
                        let pid = try c.run(argv, options: options)
                        job.forward(to: pid)
                        defer { job.hold() }
                        return try Self.waitOutcome(pid)
                    }
                }
            } catch {
                // Not started for a signal, and the container made for it
                // removed (the error is that one unchanged): ended by it.
                if let stopped, stopped.error == error { return .killed(signal: stopped.signal) }
                throw error
            }
        }
    }

    /// The container's cgroup inode (`Container.cgroupId`).
    public func containerIdentity(_ name: String) -> UInt64? {
        (try? get(name))?.cgroupId()
    }

    /// A detached command is its own session's leader: its group goes.
    public func abandonDetached(_ pid: Int32) -> Bool {
        guard pid > 1 else { return false }
        _ = kill(-pid, SIGKILL)
        _ = kill(pid, SIGKILL)
        return true
    }

    /// The token its create was given (`Container.origin`).
    public func containerOrigin(_ name: String) -> String? {
        (try? get(name))?.origin()
    }

    /// A foreground command with its stdout and stderr on pipes, read here
    /// (64 KiB at a time, `onOutput`) until the command exits: its pidfd
    /// says when, and what is in the pipes then is read to the end without
    /// waiting, so a process it left behind holding them does not keep the
    /// call (the agent's attached Run). With `input`, its stdin is a pipe
    /// written here with what `input` gives, closed at its end; input the
    /// command does not read (it closed its stdin, or exited) is dropped.
    /// Without: /dev/null, as the output without `onOutput`. (A caller
    /// feeding input ignores SIGPIPE, as the agent does: the command may
    /// close its stdin first.) Its own session. When `onStarted` or `onOutput` throws (the caller went),
    /// the whole job is killed and reaped before the error goes on.
    public func runCapturing(_ name: String, argv: [String], input: (any RunInput)?, terminal: RunTerminal?,
                             onStarted: (Int32) throws(LmctfyError) -> Void,
                             onOutput: ((Int32, [UInt8]) throws(LmctfyError) -> Void)?) throws(LmctfyError) -> RunOutcome {
        try existing(try get(name)) { (c: Container) throws(LmctfyError) -> RunOutcome in
            var fds: [Int32] = []
            defer { for fd in fds { close(fd) } }
            var out: (Int32, Int32)?, err: (Int32, Int32)?, into: (Int32, Int32)?
            var pty: (master: Int32, slave: Int32)?
            do throws(SystemError) {
                if let terminal {
                    pty = try Terminal.openPseudoTerminal()
                    fds += [pty!.master, pty!.slave]
                    try Terminal.setWindow(pty!.master, terminal.window)
                    try Terminal.setModes(pty!.slave, terminal.modes)
                } else {
                    if onOutput != nil {
                        out = try Sys.pipe()
                        fds += [out!.0, out!.1]
                        err = try Sys.pipe()
                        fds += [err!.0, err!.1]
                    }
                    if input != nil {
                        into = try Sys.pipe()
                        fds += [into!.0, into!.1]
                    }
                }
            } catch {
                guard terminal != nil else { throw error.lmctfy(.resourceExhausted, "Pipes for the stdio of a command in \(name)") }
                // No devpts on this machine (a minimal VM) is not a
                // shortage that passes: said so.
                let missing = [ENOENT, ENODEV, ENXIO].contains(error.errno)
                throw error.lmctfy(missing ? .failedPrecondition : .resourceExhausted,
                                   missing ? "This machine has no pseudo-terminals for a command in \(name) (is devpts mounted?)"
                                           : "A pseudo-terminal for a command in \(name)")
            }
            var options = RunOptions(fdPolicy: .inherit)
            options.existenceChecked = true  // `get` just looked
            if let pty {
                options.stdin = .fd(pty.slave)
                options.stdout = .fd(pty.slave)
                options.stderr = .fd(pty.slave)
                options.controllingTerminal = true
                // This process's environment, its TERM the terminal's.
                options.environment = Sys.environment().filter { !$0.hasPrefix("TERM=") } + ["TERM=" + terminal!.term]
            } else {
                options.stdin = into.map { .fd($0.0) } ?? .devNull
                options.stdout = out.map { .fd($0.1) } ?? .devNull
                options.stderr = err.map { .fd($0.1) } ?? .devNull
            }
            options.ownSession = true
            let pid = try c.run(argv, options: options)
            // Only the child has its ends now: ours see its end (and it,
            // ours: the close of its stdin).
            for end in [out?.1, err?.1, into?.0, pty?.slave].compactMap({ $0 }) { close(end) }
            var outputs: [(fd: Int32, stream: Int32)] = []
            if let out, let err { outputs = [(out.0, 1), (err.0, 2)] }
            // A terminal's output is read whether or not anyone wants it:
            // a command writing to a full one would wait forever.
            if let pty {
                outputs = [(pty.master, 1)]
                // Non-blocking: what it holds is gathered into one chunk
                // (a terminal gives at most 4 KiB a read).
                _ = fcntl(pty.master, F_SETFL, fcntl(pty.master, F_GETFL) | O_NONBLOCK)
            }
            fds = outputs.map(\.fd)
            var feed: StdinFeed?
            if let input, let writeEnd = into?.1 ?? pty?.master {
                // The feed's to close (at the input's end, or below); a
                // terminal's master stays ours, its end typed as ^D.
                _ = fcntl(writeEnd, F_SETFL, fcntl(writeEnd, F_GETFL) | O_NONBLOCK)
                feed = StdinFeed(input: input, fd: writeEnd, terminal: pty != nil)
            }
            defer { feed?.closeFd() }
            do throws(LmctfyError) {
                try onStarted(pid)
                input?.start()
                try Self.pumpStdio(pid: pid, outputs: outputs, feed: feed, gather: pty != nil) { (stream: Int32, bytes: [UInt8]) throws(LmctfyError) in
                    try onOutput?(stream, bytes)
                }
            } catch {
                _ = try? Sys.kill(-pid, SIGKILL)
                _ = try? Sys.kill(pid, SIGKILL)
                _ = try? Sys.waitForExit(pid)
                throw error
            }
            return try Self.waitOutcome(pid)
        }
    }

    /// A command's stdin fed from a RunInput, one chunk at a time: a pipe
    /// (closed at the input's end), or a pseudo-terminal's master (the
    /// input's end typed as the end-of-file character, window sizes set).
    final class StdinFeed {
        let input: any RunInput
        /// The write end (non-blocking); -1 once closed (or, a terminal,
        /// once it refused a write).
        private(set) var fd: Int32
        /// A terminal's master, not ours to close.
        let terminal: Bool
        /// What is left of the chunk being written, and whether it was the last.
        private var pending: ArraySlice<UInt8> = []
        private var holding = false
        private var pendingEnd = false
        /// The input's end has been taken and written (or dropped).
        private(set) var done = false
        /// The last byte typed on a terminal (nil: none yet).
        private var lastTyped: UInt8?

        init(input: any RunInput, fd: Int32, terminal: Bool = false) {
            self.input = input
            self.fd = fd
            self.terminal = terminal
        }

        /// What to poll: the pipe for room while a chunk waits, else the
        /// input for its next chunk; nil when done.
        var pollFd: pollfd? {
            if done { return nil }
            if holding && fd >= 0 { return pollfd(fd: fd, events: Int16(POLLOUT), revents: 0) }
            return pollfd(fd: input.readyFd, events: Int16(POLLIN), revents: 0)
        }

        /// Writes what it can without waiting: chunks as they come, until the
        /// pipe is full or no chunk waits.
        func pump() {
            while !done {
                if !holding {
                    guard let chunk = input.take() else { return }
                    if terminal, fd >= 0, let window = chunk.window {
                        // Gone (EIO) is seen by the write below.
                        try? Terminal.setWindow(fd, window)
                    }
                    // A terminal's end of input is its end-of-file
                    // character typed (VEOF, ^D unless the command changed
                    // it; twice after a partial line, the first only
                    // passing the line on), the terminal staying open.
                    var bytes = chunk.bytes
                    if terminal && chunk.end, let eof = endOfFileCharacter() {
                        let partial = (bytes.last ?? lastTyped).map { $0 != UInt8(ascii: "\n") && $0 != UInt8(ascii: "\r") } ?? false
                        bytes += partial ? [eof, eof] : [eof]
                    }
                    if let last = chunk.bytes.last { lastTyped = last }
                    pending = bytes[...]
                    pendingEnd = chunk.end
                    holding = true
                }
                while fd >= 0 && !pending.isEmpty {
                    let n = pending.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
                    if n > 0 {
                        pending = pending.dropFirst(n)
                    } else if n < 0 && errno == EINTR {
                        continue
                    } else if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) {
                        return  // full: polled for room
                    } else {
                        // The command closed its stdin (EPIPE; a terminal
                        // nobody has open, EIO): the rest is dropped, as a
                        // pipe's writer's is.
                        closeFd()
                    }
                }
                // Written (or dropped): the next chunk may come.
                holding = false
                pending = []
                input.consumed()
                if pendingEnd {
                    closeFd()
                    done = true
                }
            }
        }

        /// The terminal's end-of-file character now (its master's termios
        /// are its slave's); nil when disabled or the terminal is gone.
        private func endOfFileCharacter() -> UInt8? {
            var t = termios()
            guard fd >= 0, tcgetattr(fd, &t) == 0 else { return nil }
            let eof = withUnsafeBytes(of: t.c_cc) { $0[Int(VEOF)] }
            return eof == 0 ? nil : eof  // 0: _POSIX_VDISABLE
        }

        /// Closes the pipe (the command reads its end of file); once. A
        /// terminal's master is only let go of.
        func closeFd() {
            guard fd >= 0 else { return }
            if !terminal { close(fd) }
            fd = -1
        }
    }

    /// Reads `outputs` (stream 1 and 2) into `onOutput` and feeds the
    /// command's stdin from `feed` until it has exited (or, without a feed
    /// still going, its outputs have ended), then reads what the outputs
    /// still hold without waiting.
    /// `gather`: the outputs are non-blocking, and each chunk is what one
    /// read and those that follow at once without waiting give (up to 64 KiB).
    static func pumpStdio(pid: Int32, outputs: [(fd: Int32, stream: Int32)], feed: StdinFeed?, gather: Bool = false,
                          _ onOutput: (Int32, [UInt8]) throws(LmctfyError) -> Void) throws(LmctfyError) {
        let exit: Int32
        do throws(SystemError) { exit = try Sys.pidfdOpen(pid) } catch {
            throw error.lmctfy(.resourceExhausted, "A pidfd for the command \(pid)")
        }
        defer { close(exit) }
        var open = outputs
        var buffer = [UInt8](repeating: 0, count: 65536)
        // One read of `fd`: false once it has ended (a terminal nobody
        // has open: EIO) or, draining, is empty.
        func readOnce(_ fd: Int32, _ stream: Int32, draining: Bool = false) throws(LmctfyError) -> Bool {
            var n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            while gather && n > 0 && n < buffer.count {
                let more = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress! + n, $0.count - n) }
                if more <= 0 { break }  // nothing more now (or ended: seen at the next read)
                n += more
            }
            if n > 0 {
                try onOutput(stream, Array(buffer[0..<n]))
                return true
            }
            // (A terminal's master is non-blocking when it is fed too.)
            return n < 0 && (errno == EINTR || (!draining && (errno == EAGAIN || errno == EWOULDBLOCK)))
        }
        var exited = false
        while !exited && (!open.isEmpty || feed?.done == false) {
            var polled = open.map { pollfd(fd: $0.fd, events: Int16(POLLIN), revents: 0) }
            let feedPoll = feed?.pollFd
            if let feedPoll { polled.append(feedPoll) }
            polled.append(pollfd(fd: exit, events: Int16(POLLIN), revents: 0))
            guard poll(&polled, nfds_t(polled.count), -1) >= 0 || errno == EINTR else {
                throw LmctfyError(.internal, "poll for the stdio of pid \(pid)", errno: errno)
            }
            exited = polled.last!.revents != 0
            var still: [(fd: Int32, stream: Int32)] = []
            for (i, o) in open.enumerated() {
                if polled[i].revents == 0 {
                    still.append(o)
                } else if try readOnce(o.fd, o.stream) {
                    still.append(o)
                }
            }
            open = still
            if !exited, feedPoll != nil, polled[polled.count - 2].revents != 0 { feed?.pump() }
        }
        // Exited: what its output holds now, without waiting for whatever
        // it left running to close it.
        for o in open {
            _ = fcntl(o.fd, F_SETFL, fcntl(o.fd, F_GETFL) | O_NONBLOCK)
            while try readOnce(o.fd, o.stream, draining: true) {}
        }
    }

    /// Moves `tids` (empty: the caller) into the container.
    /// Below a root container, only tasks inside it: any task on the
    /// machine was moved in (PID 1, another agent's; then `killall` killed
    /// it), through an agent whose `detect` refused the same task (the
    /// fleet probe).
    public func enter(_ name: String, tids: [Int32]) throws(LmctfyError) {
        let c = try get(name)
        let tasks = tids.isEmpty ? [callerPid] : tids
        if !scope.isMachine {
            for tid in tasks where scope.path(try api.detect(pid: tid)) == nil {
                throw LmctfyError(.permissionDenied, "TID \(tid) is outside the root container \"\(scope.root)\": only its tasks may enter its containers")
            }
        }
        try existing(c) { (c: Container) throws(LmctfyError) in try c.enter(tasks) }
    }

    /// Kills every process (D9); `recursive`: subcontainers first, deepest first.
    public func killAll(_ name: String, recursive: Bool) throws(LmctfyError) {
        let c = try get(name)
        // D7, before any subcontainer is touched: `killall -r /` would
        // otherwise empty every container on the machine and only then refuse.
        try refuseRoot(c.name, "Killing every process of the root container \"/\" is not allowed")
        try existing(c) { (c: Container) throws(LmctfyError) in
            if recursive {
                // A caller inside the tree, before any subcontainer is
                // emptied (the kill of its own container refused it after
                // those before it were killed; a probe).
                try c.refuseIfCallerInside("emptied")
                // Under the tree's lock, as a destroy: what it resumes is
                // journaled there, and a kill itself killed part way
                // (SIGKILL) has the next holder of the lock pause again
                // those it had resumed (they were left running).
                try api.locked(c.name) { lock throws(LmctfyError) in
                    // Below a paused ancestor nothing can be emptied: refused before
                    // anything is touched, as destroy does, when there is anything
                    // to kill (a tree without processes is left as it is). A paused
                    // container inside the tree is resumed first, outermost first,
                    // so that each one's kill can thaw it (its processes are being
                    // killed anyway).
                    let subs = try c.subcontainers(recursive: true)
                    let paused = try c.pausedAncestors()
                    if !paused.isEmpty {
                        guard try api.anyHasTasks([c.name] + subs) else { return }
                        try c.refuseUnderPausedAncestors("emptied", paused)
                    }
                    // A kill that stops part way pauses again what it resumed and
                    // did not empty (an emptied one stays thawed, as a kill leaves it).
                    try api.withTreeResumed([c.name] + subs, journal: lock) { emptied throws(LmctfyError) in
                        for sub in subs.reversed() {
                            do throws(LmctfyError) {
                                try api.get(sub).killAll()
                            } catch where wentAway(error, sub) {
                                // Destroyed since the listing (another caller's
                                // destroy): nothing of it is left to empty. The
                                // kill failed with 5 (a probe).
                            }
                            emptied.insert(sub)
                        }
                        try c.killAll()
                    }
                }
                return
            }
            try c.killAll()
        }
    }

    /// Freezes or thaws, waiting for the kernel; returns the absolute name.
    @discardableResult
    public func setPaused(_ name: String, _ paused: Bool) throws(LmctfyError) -> String {
        try setPausedReporting(name, paused).path
    }

    public func setPausedReporting(_ name: String, _ paused: Bool) throws(LmctfyError) -> (path: String, changed: Bool) {
        let container = try get(name)
        try refuseRoot(container.name, "The root container \"/\" cannot be \(paused ? "paused" : "resumed")")
        let changed = try existing(container) { (c: Container) throws(LmctfyError) in try c.setFrozen(paused) }
        return (try callerPath(container.name), changed)
    }

    /// Registers a Watch, reports the watched name, then waits (in `pollMs` slices when cancellable).
    public func notify(_ name: String, event: EventSpec, cancellation: NotifyCancellation?,
                       onWatching: (String) throws(LmctfyError) -> Void,
                       onEvent: (Int) throws(LmctfyError) -> Bool) throws(LmctfyError) {
        let container = try get(name)
        let watch = try container.watch(event)
        defer { watch.close() }
        try onWatching(try callerPath(container.name))
        guard let cancellation else {
            while try onEvent(try watch.wait()) {}
            return
        }
        while !cancellation.isCancelled() {
            let n = try watch.wait(timeoutMs: cancellation.pollMs)
            if n > 0, !(try onEvent(n)) { return }
        }
    }

    /// Runs the init hook (by default `ContainerApi.initMachine`).
    public func initMachine(_ spec: InitSpec) throws(LmctfyError) {
        try initMachineHook(spec)
    }
}
