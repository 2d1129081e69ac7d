// What the CLI needs from the machine, injectable so tests run every verb
// in-process: against a fake cgroup tree without root, or the real one.
import Glibc
import Lmctfy
import LmctfyProto
import LmctfySystem

public struct CLIEnvironment: Sendable {
    /// The default task for `detect`, `list`, `spec` and `stats`: the
    /// process that ran lmctfy (the calling shell), as in the original.
    public var parentPid: pid_t
    /// Builds the library instance every verb except `init` starts with.
    public var makeApi: @Sendable () throws(LmctfyError) -> ContainerApi
    /// Mounts and prepares the hierarchies an InitSpec asks for.
    public var initMachine: @Sendable (InitSpec) throws(LmctfyError) -> Void
    /// Reads a `-c` config file.
    public var readFile: @Sendable (String) throws(LmctfyError) -> [UInt8]
    /// `run` without -n: runs the command in the container with lmctfy's
    /// stdio and returns its exit status. Live, lmctfy becomes the command
    /// (exec, as in the original), so this returns only by throwing.
    public var runForeground: @Sendable (Container, [String]) throws(LmctfyError) -> Int32

    public init(
        parentPid: pid_t,
        makeApi: @escaping @Sendable () throws(LmctfyError) -> ContainerApi,
        initMachine: @escaping @Sendable (InitSpec) throws(LmctfyError) -> Void = { _ throws(LmctfyError) in
            throw .unimplemented("init is not available in this environment")
        },
        readFile: @escaping @Sendable (String) throws(LmctfyError) -> [UInt8] = CLIEnvironment.readConfigFile,
        runForeground: @escaping @Sendable (Container, [String]) throws(LmctfyError) -> Int32 = CLIEnvironment.execForeground
    ) {
        self.parentPid = parentPid
        self.makeApi = makeApi
        self.initMachine = initMachine
        self.readFile = readFile
        self.runForeground = runForeground
    }

    /// Overrides the backend (lmctl: a connection to an agent); nil: CL1
    /// on this machine through makeApi.
    public var remoteBackend: (@Sendable () throws(LmctfyError) -> any ContainerBackend)?

    /// The backend the verbs act on.
    public func makeBackend() throws(LmctfyError) -> any ContainerBackend {
        if let remoteBackend { return try remoteBackend() }
        return LocalBackend(api: try makeApi(), callerPid: parentPid, runForeground: runForeground,
                            initMachine: initMachine)
    }

    @Sendable
    public static func execForeground(_ container: Container, _ argv: [String]) throws(LmctfyError) -> Int32 {
        try container.exec(argv)
    }

    /// For in-process use (tests, embedding): spawn with lmctfy's stdio and
    /// wait, instead of replacing the process.
    @Sendable
    public static func spawnAndWait(_ container: Container, _ argv: [String]) throws(LmctfyError) -> Int32 {
        let pid = try container.run(argv, options: RunOptions(fdPolicy: .inherit))
        do {
            // Exit status as a shell reports it: the code, or 128 + the signal.
            return try Sys.waitForExit(pid).shellStatus
        } catch {
            throw error.lmctfy(.internal, "Failed to wait for \(argv[0])")
        }
    }

    /// This machine: /proc, the mounted hierarchies, the real parent.
    public static var live: CLIEnvironment {
        CLIEnvironment(
            parentPid: Sys.getppid(),
            makeApi: { () throws(LmctfyError) in try ContainerApi.detect() },
            initMachine: { (spec: InitSpec) throws(LmctfyError) in _ = try ContainerApi.initMachine(spec) })
    }

    @Sendable
    public static func readConfigFile(_ path: String) throws(LmctfyError) -> [UInt8] {
        do {
            return try Sys.readBytes(path)
        } catch {
            throw .invalidArgument("Failed to read the config file \"\(path)\": \(error.reason)")
        }
    }
}
