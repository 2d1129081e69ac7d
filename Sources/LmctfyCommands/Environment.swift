// What the CLI needs from the machine, injectable so tests run every verb
// in-process: against a fake cgroup tree without root, or the real one.
// The verbs never see CL1 itself: the executable (lmctfy, lmctl) says which
// backend they act on.
import Glibc
import LmctfyBackend
import LmctfyProto
import LmctfySystem

/// The machine a command line acts on: the backend and the few things the
/// verbs do without one.
public struct CLIEnvironment: Sendable {
    /// Builds the backend every verb except `init` acts on (lmctfy: CL1 on
    /// this machine; lmctl: a connection to an agent). A failure is reported
    /// as "Failed to create a lmctfy instance" with its code.
    public var makeBackend: @Sendable () throws(LmctfyError) -> any ContainerBackend
    /// `init`: mounts and prepares the hierarchies an InitSpec asks for. It
    /// runs before there can be a backend (it mounts what one needs).
    public var initMachine: @Sendable (InitSpec) throws(LmctfyError) -> Void
    /// Reads a `-c` config file.
    public var readFile: @Sendable (String) throws(LmctfyError) -> [UInt8]
    /// The image store the `image` verbs act on (lmctfy: this machine's;
    /// lmctl: the agent's). Without one, they are refused with UNIMPLEMENTED.
    public var makeImages: @Sendable () throws(LmctfyError) -> any ImageBackend = { () throws(LmctfyError) in
        throw .unimplemented("images are not available in this environment")
    }
    /// The program's name in usage lines, the root help and `--version`:
    /// "lmctfy", or "lmctl" for the same verbs run by an agent.
    public var programName = "lmctfy"
    /// The root help's opening, in place of `usage: NAME <command>
    /// [<arguments>]` (lmctl: its forms with its connection flags), and what
    /// it adds after the verbs and flags (lmctl: its own verbs and flags).
    public var rootHelpHeader: String?
    public var rootHelpFooter = ""
    /// Whether a failure of `makeBackend` is reported as the original's
    /// "Failed to create a lmctfy instance" (lmctfy: CL1 could not start on
    /// this machine) or as any command's failure is (lmctl: the agent could
    /// not be reached, said as its own verbs say it).
    public var reportsInstanceFailure = true

    /// An environment over `makeBackend`; without `initMachine`, `init` is
    /// refused with UNIMPLEMENTED.
    public init(
        makeBackend: @escaping @Sendable () throws(LmctfyError) -> any ContainerBackend,
        initMachine: @escaping @Sendable (InitSpec) throws(LmctfyError) -> Void = { _ throws(LmctfyError) in
            throw .unimplemented("init is not available in this environment")
        },
        readFile: @escaping @Sendable (String) throws(LmctfyError) -> [UInt8] = CLIEnvironment.readConfigFile
    ) {
        self.makeBackend = makeBackend
        self.initMachine = initMachine
        self.readFile = readFile
    }

    /// The most a `-c` config file may hold (a spec is a few hundred bytes).
    public static let maxConfigBytes = 16 << 20

    /// Reads a `-c` config file; a failure (one larger than
    /// `maxConfigBytes` among them) is INVALID_ARGUMENT naming it.
    @Sendable
    public static func readConfigFile(_ path: String) throws(LmctfyError) -> [UInt8] {
        do {
            return try Sys.readBytes(path, maxBytes: maxConfigBytes)
        } catch where error.errno == EFBIG {
            throw .invalidArgument("Failed to read the config file \"\(path)\": larger than \(maxConfigBytes >> 20) MiB")
        } catch {
            throw .invalidArgument("Failed to read the config file \"\(path)\": \(error.reason)")
        }
    }
}
