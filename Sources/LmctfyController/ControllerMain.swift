// `lmctfy-controller [--config FILE] [--check-config] [--log-level LEVEL]`
import Glibc
import LmctfyProto
import LmctfyRPC
import LmctfySystem

/// The `lmctfy-controller` executable's entry point.
public enum ControllerMain {
    static let usage = """
        usage: lmctfy-controller [--config FILE] [--check-config] [--log-level trace|debug|info|warning|error]
          --config FILE     ControllerConfig in protobuf text format (default /etc/lmctfy/controller.conf)
          --check-config    parse and check the config, print "config OK", exit 0 (or the error, exit 3)
          --log-level L     override the config's log_level

        """

    public static func main() -> Never {
        // Before any descriptor is opened (Sys.openStandardDescriptors).
        guard Sys.openStandardDescriptors() else { exit(1) }
        SdNotify.captureFromEnvironment()
        let line = DaemonCommandLine.parse(Array(CommandLine.arguments.dropFirst()), defaultConfig: "/etc/lmctfy/controller.conf",
                                           usage: usage, fail: { fail($0) })
        let configPath = line.configPath
        let checkOnly = line.checkOnly
        let level = line.logLevel
        // Freed big frames go back to the kernel: RSS falls again after a burst.
        Sys.keepLargeBuffersOutOfTheHeap()
        // TLS, the hello's HMAC and enrolment use OpenSSL (loaded on first
        // use): without it, an error now rather than an abort later.
        do { try Crypto.loadOpenSSL() } catch { fail(error.message, code: error.code.rawValue) }
        var settings: ControllerSettings
        do {
            settings = try ControllerSettings.load(configPath)
        } catch {
            fail("\(error.message)", code: 3)
        }
        if let level { settings.logLevel = level }
        if checkOnly {
            print("config OK: \(configPath)")
            exit(0)
        }
        Sys.ignoreSIGPIPE()
        do {
            let controller = try Controller(settings: settings)
            try controller.start()
            SdNotify.notify("READY=1")
            exit(controller.waitUntilStopped() == 0 ? 0 : 1)
        } catch {
            fail("\(error.message)", code: error.code.rawValue)
        }
    }

    static func fail(_ message: String, code: Int32 = 3) -> Never {
        let line = "lmctfy-controller: \(message)\n"
        _ = line.withCString { write(2, $0, strlen($0)) }
        exit(code)
    }
}
