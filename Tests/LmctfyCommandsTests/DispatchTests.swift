// The command line itself, in-process and without root: dispatch, help and
// usage, flags, argument counts, exit codes (lmctfy-behaviour.md §1.1, D1, D2).
import Glibc
import Lmctfy
@testable import LmctfyCommands
import LmctfySystem
import Testing

@Suite struct DispatchTests {
    let machine: FakeMachine
    init() throws { machine = try FakeMachine() }

    @Test func bareLmctfyPrintsUsageToStderrAndExits5() {
        let r = machine.run()
        #expect(r.status == 5)
        #expect(r.stdout.isEmpty)
        #expect(r.stderr.hasPrefix("usage: lmctfy <command>"))
        #expect(r.stderr.contains("  list containers [-r] [<container name>]"))
    }

    @Test(arguments: [["help"], ["-h"], ["--help"], ["--lmctfy_print_help"]])
    func askedForHelpGoesToStdoutAndSucceeds(_ args: [String]) {
        let r = lmctfy(args, in: machine.environment)
        #expect(r.status == 0, "\(r)")
        #expect(r.stderr.isEmpty)
        #expect(r.stdout.hasPrefix("usage: lmctfy <command>"))
        #expect(r.stdout.contains("-o json"))
    }

    @Test(arguments: [["-V"], ["--version"], ["-V", "bogus"], ["list", "-V"]])
    func version(_ args: [String]) {
        let r = lmctfy(args, in: machine.environment)
        #expect(r.status == 0)
        #expect(r.stdout == "lmctfy version \(LmctfyVersion.string)\n")
    }

    @Test func unknownCommandGivesTheDeepestMenusUsageAndExits5() {
        var r = machine.run("bogus")
        #expect(r.status == 5)
        #expect(r.stderr.hasPrefix("Unknown command \"bogus\"\nusage: lmctfy <command>"))
        r = machine.run("list", "bogus")
        #expect(r.status == 5)
        #expect(r.stderr.contains("usage: lmctfy list <command>"))
        #expect(r.stderr.contains("  containers [-r] [<container name>]"))
        #expect(!r.stderr.contains("create"))
        r = machine.run("stats")
        #expect(r.status == 5)
        #expect(r.stderr.contains("usage: lmctfy stats <command>"))
        #expect(r.stdout.isEmpty)
    }

    @Test func taskVerbsCheckTheirArguments() {
        #expect(machine.run("run", "/parent").status == 3)                // no command
        #expect(machine.run("killall").status == 3)
        #expect(machine.run("pause", "/parent", "extra").status == 3)
        #expect(machine.run("resume").status == 3)
        #expect(machine.run("list", "pids", "/nope").status == 5)
        #expect(machine.run("list", "tids", "/parent").status == 0)
        #expect(machine.run("notify", "memory", "threshold", "/parent", "lots").status == 3)
        // A uint64 beyond int64: said to be out of range, not "not a number".
        let big = machine.run("notify", "memory", "threshold", "/parent", "18446744073709551615")
        #expect(big.status == 3 && big.stderr.contains("out of range"), "\(big)")
        #expect(machine.run("enter", "/parent", "abc").status == 9)      // as the original
        #expect(machine.run("enter", "/parent", "+5").status == 9)       // digits only
        #expect(machine.run("enter", "/nope", "1").status == 5)
        let r = machine.run("notify")
        #expect(r.status == 5)
        #expect(r.stderr.contains("container empty [-f] <container name>"))
        #expect(r.stderr.contains("memory threshold [-f] <container name> <bytes>"))
        #expect(machine.run("pause", "/").status == 9)                    // D7
        #expect(machine.run("killall", "/").status == 9)
    }

    @Test func runCommandWordsFollowTheReference() {
        #expect(RunCommand.argv(["echo hi"]) == ["/bin/sh", "-c", "echo hi"])
        #expect(RunCommand.argv(["ls", "-l"]) == ["ls", "-l"])
        #expect(RunCommand.argv(["ls"]) == ["ls"])
    }

    @Test func menuHelpGoesToStdout() {
        let r = machine.run("update", "help")
        #expect(r.status == 0)
        #expect(r.stdout.contains("  diff [-c <config file>] <container name> [<container spec>]"))
        #expect(r.stdout.contains("  replace "))
    }

    @Test func leafHelpPrintsTheUsageLine() {
        var r = machine.run("create", "help")
        #expect(r.status == 0)
        #expect(r.stdout == "usage: lmctfy create [-c <config file>] <container name> [<container spec>]\n")
        r = machine.run("list", "containers", "help")
        #expect(r.stdout == "usage: lmctfy list containers [-r] [<container name>]\n")
        r = machine.run("stats", "full", "-h")
        #expect(r.status == 0)
        #expect(r.stdout == "usage: lmctfy stats full [-b] [<container name>]\n")
    }

    @Test func argumentCountsAreChecked() {
        var r = machine.run("create")
        #expect(r.status == 3)
        #expect(r.stderr == "Missing arguments\nusage: lmctfy create [-c <config file>] <container name> [<container spec>]\n")
        r = machine.run("destroy", "/a", "/b")
        #expect(r.status == 3)
        #expect(r.stderr == "Extraneous arguments\nusage: lmctfy destroy [-f] <container name>\n")
        r = machine.run("detect", "1", "2")
        #expect(r.status == 3)
        #expect(r.stderr.hasPrefix("Extraneous arguments\n"))
        #expect(r.stdout.isEmpty)
    }

    @Test(arguments: ["-x", "-rf", "--lmctfy_bogus", "--x", "-1"])
    func unknownFlagsExit3(_ flag: String) {
        let r = machine.run("list", "containers", flag)
        #expect(r.status == 3, "\(r)")
        #expect(r.stderr.hasPrefix("Unknown flag \"\(flag)\""))
        #expect(r.stderr.contains("usage: lmctfy list containers [-r] [<container name>]"))
        // The hint about combining only where the flag looks combined.
        #expect(r.stderr.contains("short flags cannot be combined") == (flag == "-rf"), "\(r.stderr)")
    }

    /// The original's rarer long flags: the command tree, the long version,
    /// output to another descriptor; those of its namespace helpers and
    /// kill loop are checked and accepted without effect. They were all
    /// "Unknown flag" (3), which broke scripts written for the original.
    @Test func theOriginalsRarerLongFlags() throws {
        var r = machine.run("--lmctfy_print_cmd_tree")
        #expect(r.status == 0 && r.stderr.isEmpty, "\(r)")
        #expect(r.stdout.hasPrefix("create\ndestroy\ndetect\nenter\nimage\n  export\n"), "\(r.stdout)")
        #expect(r.stdout.contains("\nnotify\n  container\n    empty\n  memory\n    oom\n    threshold\n"), "\(r.stdout)")
        r = machine.run("--lmctfy_print_cmd_tree_long")
        #expect(r.status == 0)
        #expect(r.stdout.contains("\nlist\n  containers [-r] [<container name>]\n      List subcontainers"), "\(r.stdout)")
        r = machine.run("--lmctfy_version_long")
        #expect(r.status == 0 && r.stdout == "lmctfy version \(LmctfyVersion.string)\n\(LmctfyVersion.details)", "\(r)")

        // Output to an open descriptor (a pipe here), nothing on stdout.
        var fds: [Int32] = [0, 0]
        #expect(pipe(&fds) == 0)
        defer { close(fds[0]) }
        r = machine.run("--lmctfy_output_fd=\(fds[1])", "detect")
        close(fds[1])
        #expect(r.status == 0 && r.stdout.isEmpty, "\(r)")
        var buf = [UInt8](repeating: 0, count: 256)
        let n = read(fds[0], &buf, buf.count)
        #expect(n > 0 && String(decoding: buf[0..<max(n, 0)], as: UTF8.self).hasPrefix("name=\""), "\(n)")
        // A descriptor that is not open, or not a number: 3, nothing done.
        r = machine.run("--lmctfy_output_fd", "1000", "detect")
        #expect(r.status == 3 && r.stderr == "Flag --lmctfy_output_fd=1000: descriptor 1000 is not open\n", "\(r)")
        r = machine.run("--lmctfy_output_fd=x", "detect")
        #expect(r.status == 3 && r.stderr.hasPrefix("Flag --lmctfy_output_fd takes a descriptor number"), "\(r)")

        r = machine.run("--lmctfy_use_namespaces=false", "--nscon_path", "/usr/local/bin/lmctfy-nscon", "--nsinit_uid=65534",
                        "--lmctfy_num_tries_for_unkillable=3", "--lmctfy_ms_delay_between_kills", "250", "detect")
        #expect(r.status == 0 && r.stdout.hasPrefix("name=\""), "\(r)")
        for bad in ["--nsinit_gid=-1", "--nscon_path=relative", "--lmctfy_use_namespaces=maybe"] {
            r = machine.run(bad, "detect")
            #expect(r.status == 3 && r.stdout.isEmpty, "\(bad): \(r)")
        }
    }

    /// A `-c` file that never ends (/dev/zero) is refused once past the
    /// limit; it was read until memory ran out and lmctfy crashed.
    @Test func anEndlessConfigFileIsRefused() {
        let r = machine.run("create", "-c", "/dev/zero", "/c")
        #expect(r.status == 3, "\(r)")
        #expect(r.stderr == "Command exited with error message: 3: Failed to read the config file \"/dev/zero\": larger than 16 MiB\n")
    }

    @Test func flagValuesAreChecked() {
        var r = machine.run("create", "-c")
        #expect(r.status == 3)
        #expect(r.stderr.hasPrefix("Config file not specified with -c flag.\n"))
        r = machine.run("-o", "xml", "detect")
        #expect(r.status == 3)
        #expect(r.stderr.hasPrefix("invalid style \"xml\""))
        r = machine.run("--lmctfy_output_style=xml", "detect")
        #expect(r.status == 3)
        r = machine.run("--lmctfy_force=maybe", "destroy", "/x")
        #expect(r.status == 3)
    }

    @Test func flagsAreReadAnywhereBeforeTheFirstArgument() {
        try? machine.container(["parent", "a"])
        try? machine.container(["parent", "a", "b"])
        for args in [["-r", "list", "containers", "/parent"], ["list", "-r", "containers", "/parent"],
                     ["list", "containers", "-r", "/parent"], ["--lmctfy_recursive", "list", "containers", "/parent"],
                     ["list", "containers", "--lmctfy_recursive=true", "/parent"]] {
            let r = lmctfy(args, in: machine.environment)
            #expect(r.status == 0, "\(args): \(r)")
            #expect(r.stdout == "name=\"/parent/a\"\nname=\"/parent/a/b\"\n", "\(args)")
        }
    }

    @Test func flagsAfterTheFirstArgumentAreArguments() {
        // D1: `-r` after the name is an extra argument, not a flag.
        let r = machine.run("list", "containers", "/parent", "-r")
        #expect(r.status == 3)
        #expect(r.stderr.hasPrefix("Extraneous arguments\n"))
    }

    @Test func doubleDashEndsFlags() {
        var r = machine.run("detect", "--", "-5")
        #expect(r.status == 3)
        #expect(r.stderr == "Command exited with error message: 3: \"-5\" is not a PID or TID\n")
        r = machine.run("--", "-r", "list")
        #expect(r.status == 5, "after --, -r is a command word")
    }

    @Test func libraryErrorsExitWithTheirCode() {
        let r = machine.run("destroy", "/missing")
        #expect(r.status == 5)
        #expect(r.stderr == "Command exited with error message: 5: Container \"/missing\" does not exist\n")
        #expect(r.stdout.isEmpty)
    }

    @Test func otherErrorsAreUnknown() {
        struct Oops: Error {}
        #expect(LmctfyCLI.statusError(Oops()).code == .unknown)
        #expect(LmctfyCLI.statusError(LmctfyError.alreadyExists("x")).code == .alreadyExists)
    }

    @Test func aLibraryThatCannotStartIsReportedWithItsCode() {
        var env = machine.environment
        env.makeBackend = { () throws(LmctfyError) -> any ContainerBackend in throw .notFound("no freezer") }
        let r = lmctfy(["list", "containers"], in: env)
        #expect(r.status == 5)
        #expect(r.stderr == "Failed to create a lmctfy instance with error 'no freezer'\n")
        // init needs no instance.
        #expect(lmctfy(["init", ""], in: env).status == 0)
    }

    @Test func detectDefaultsToTheParentAndChecksThePid() throws {
        var r = machine.run("detect")
        #expect(r.status == 0)
        #expect(r.stdout == "name=\"/parent\"\n")
        r = machine.run("detect", "abc")
        #expect(r.status == 3)
        r = machine.run("detect", "99999999999")
        #expect(r.status == 3)
        r = machine.run("detect", "777")
        #expect(r.status == 5)
    }

    @Test func destroyRefusesTheRootAndNonEmptyContainers() throws {
        var r = machine.run("destroy", "/")
        #expect(r.status == 9)
        #expect(r.stderr.contains("root container"))
        r = machine.run("destroy", "-f", "/")
        #expect(r.status == 9)

        try machine.container(["withsub"])
        try machine.container(["withsub", "sub"])
        r = machine.run("destroy", "/withsub")
        #expect(r.status == 9)
        #expect(r.stderr.hasPrefix("Command exited with error message: 9: Subcontainers found"))

        try machine.container(["busy"], procs: "123\n", tasks: "123\n")
        r = machine.run("destroy", "/busy")
        #expect(r.status == 9)
        #expect(r.stderr.hasPrefix("Command exited with error message: 9: Processes found"))

        try machine.container(["tourist"], procs: "", tasks: "456\n")
        r = machine.run("destroy", "/tourist")
        #expect(r.status == 9)
        #expect(r.stderr.hasPrefix("Command exited with error message: 9: Tourist threads found"))
    }

    @Test func createAndListOnAFakeTree() throws {
        var r = machine.run("create", "/made", "")
        #expect(r.status == 0, "\(r)")
        #expect(r.stdout.isEmpty)
        #expect(Sys.isDirectory(machine.freezer + "/made"))
        r = machine.run("create", "/made", "")
        #expect(r.status == 6)
        // Relative names resolve against lmctfy's own container ("/" here).
        r = machine.run("create", "made/sub", "")
        #expect(r.status == 0, "\(r)")
        #expect(Sys.isDirectory(machine.freezer + "/made/sub"))
        r = machine.run("-o", "json", "list", "containers", "/made")
        #expect(try r.json()["containers"] as? [String] == ["/made/sub"])
        r = machine.run("-o", "json", "list", "containers", "/made/sub")
        #expect(try r.json()["containers"] as? [String] == [])
    }

    @Test func hostileNamesAreRefusedBeforeAnythingIsMade() throws {
        let before = try Sys.subdirectories(machine.freezer)
        for name in ["", "a b", "/a<b", "/_x", "/.x", "/ok/-x", "../.bad",
                     "/" + String(repeating: "a", count: 300)] {
            let r = machine.run("create", name, "")
            #expect(r.status == 3, "\(name): \(r)")
        }
        #expect(try Sys.subdirectories(machine.freezer) == before)
        // `..` cannot leave the hierarchy: from "/" it stays at "/".
        #expect(machine.run("create", "../../x", "").status == 0)
        #expect(Sys.isDirectory(machine.freezer + "/x"))
        #expect(!Sys.exists(machine.tree.root + "/x"))
    }
}
