// `lmctfy-agent [--config FILE] [--check-config] [--log-level LEVEL]`
import Glibc
import Lmctfy
import LmctfyProto
import LmctfyRPC
import LmctfySystem

/// The `lmctfy-agent` executable's entry point.
public enum AgentMain {
    static let usage = """
        usage: lmctfy-agent [--config FILE] [--check-config] [--log-level trace|debug|info|warning|error]
          --config FILE     AgentConfig in protobuf text format (default /etc/lmctfy/agent.conf)
          --check-config    parse and check the config, print "config OK", exit 0 (or the error, exit 3)
        A config error (unreadable file, bad syntax or value, key file not private)
        exits 3, with or without --check-config.
          --log-level L     override the config's log_level

        """

    /// Parses the arguments, loads the config (exiting with its error's status
    /// code, 3 for a bad argument), and runs the agent until it stops: exits 0
    /// after a clean stop, 1 otherwise. With `--check-config` it only checks.
    public static func main() -> Never {
        // Before any descriptor is opened (Sys.openStandardDescriptors): a
        // log line must not go into a socket.
        guard Sys.openStandardDescriptors() else { exit(1) }
        // systemd's Type=notify socket, kept and taken out of the environment
        // before anything can be spawned (SdNotify).
        SdNotify.captureFromEnvironment()
        SocketActivation.captureFromEnvironment()
        let line = DaemonCommandLine.parse(Array(CommandLine.arguments.dropFirst()), defaultConfig: "/etc/lmctfy/agent.conf",
                                           usage: usage, fail: { fail($0) })
        let configPath = line.configPath
        let checkOnly = line.checkOnly
        let level = line.logLevel
        // Freed big frames go back to the kernel: RSS falls again after a burst.
        Sys.keepLargeBuffersOutOfTheHeap()
        // Enrolment, snapshots, the request journal and TCP links use
        // OpenSSL (loaded on first use): without it, an error now rather
        // than an abort later.
        do { try Crypto.loadOpenSSL() } catch { fail(error.message, code: error.code.rawValue) }
        var settings: AgentSettings
        do {
            // Enrolment first (PROTOCOL.md section 3.2): the certificate the
            // settings load may not exist yet. A check only says so.
            if let text = try? Sys.readFile(configPath), let config = try? AgentConfig(textFormat: text),
               AgentEnrolment.isPending(config) {
                if checkOnly {
                    if let t = config.tls, let key = t.keyFile, let cert = t.certificateFile {
                        try AgentEnrolment.checkWritable(keyFile: key, certFile: cert, source: configPath)
                    }
                    print("config OK: \(configPath) (no certificate yet: it will enrol at \(config.controllerEnrollAddress ?? "?") first)")
                    exit(0)
                }
                try AgentEnrolment.enrollIfNeeded(config, source: configPath)
            }
            settings = try AgentSettings.load(configPath)
            // At start it is made if absent; a check only looks.
            try settings.checkStateDir(create: !checkOnly)
            let machine = MachineInfo.collect(cgroupVersion: 0, agentVersion: "", bootId: "")
            // The root container's limits, when it has one (read with CL1;
            // one that cannot be read is the start's to report).
            let root = settings.rootContainer.isRoot ? nil : try? ContainerApi.detect().get(settings.rootContainer).spec()
            try settings.checkPolicyFits(memory: machine.memoryBytes, cpus: machine.cpus.map(Int.init), root: root)
        } catch {
            // Whatever the cause (missing file, bad key file), it is the
            // operator's config to fix: 3, as the usage says.
            fail("\(error.message)", code: 3)
        }
        if let level { settings.logLevel = level }
        if checkOnly {
            print("config OK: \(configPath)")
            exit(0)
        }
        // libuv does not ignore SIGPIPE: a peer that leaves must not kill us.
        Sys.ignoreSIGPIPE()
        do {
            // A virtual host naming an image finds it in the agent's store.
            let api = try ContainerApi.detect(imageRoot: settings.imageRoot)
            let agent = Agent(settings: settings, api: api)
            try agent.start()
            // Listening: a Type=notify unit is now started (dependents may dial us).
            SdNotify.notify("READY=1")
            let rc = agent.waitUntilStopped()
            exit(rc == 0 ? 0 : 1)
        } catch {
            fail("\(error.message)", code: error.code.rawValue)
        }
    }

    static func fail(_ message: String, code: Int32 = 3) -> Never {
        let line = "lmctfy-agent: \(message)\n"
        _ = line.withCString { write(2, $0, strlen($0)) }
        exit(code)
    }
}
