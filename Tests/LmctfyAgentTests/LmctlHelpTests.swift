// lmctl's help, usage lines and version (lmctfy-behaviour.md D2: help that
// was asked for goes to stdout, succeeds, and here calls no one). lmctl runs
// lmctfy's dispatcher, whose texts named lmctfy and left out lmctl's own
// verbs and flags; its own verbs took `--help` for an unknown flag or tried
// to dial the agent. In-process, against addresses where nothing listens.
import Glibc
import LmctfyProto
import LmctfySystem
import LmctfyTestSupport
import Testing
@testable import LmctfyCommands
@testable import LmctlCommands

@Suite struct LmctlHelpTests {
    /// Output that cannot be written (a full disk) is exit 15, said on
    /// stderr: it exited 0 (a probe of lmctfy, which shares the code).
    @Test func outputThatCannotBeWrittenIsDataLoss() throws {
        let r = try TestProcess.capture(["/bin/sh", "-c", "\(builtTool("lmctl")) --help > /dev/full"])
        #expect(r.status == 15, "\(r)")
        #expect(String(decoding: r.stderr, as: UTF8.self).contains("lmctl: the output could not be written: write(fd 1): No space left on device"), "\(r)")
    }

    /// A socket whose mode shuts the caller out is a permission (7), not
    /// an agent away (14: "try again"); agent.conf said 16.
    @Test(.enabled(if: Sys.exists("/usr/bin/setpriv") && getuid() == 0, "SKIPPED LOUDLY: needs root and setpriv (util-linux)"))
    func aSocketThatShutsTheCallerOutIsPermissionDenied() throws {
        let dir = "/tmp/lmctl-perm-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try Sys.mkdir(dir, mode: 0o755)
        defer { _ = removeTree(dir) }
        let path = dir + "/agent.sock"
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        defer { close(fd) }
        let bound = try UnixSocketAddress(path, for: "bind").withSockaddr { sa, length in bind(fd, sa, length) }
        try #require(bound == 0 && listen(fd, 4) == 0 && chmod(path, 0o600) == 0)
        // (Without the sanitizers' options: their suppression files are in
        // a checkout that user may not read, and a sanitized lmctl exits 66.)
        let r = try TestProcess.capture(["/usr/bin/env", "-u", "TSAN_OPTIONS", "-u", "ASAN_OPTIONS", "-u", "LSAN_OPTIONS",
                                         "-u", "UBSAN_OPTIONS", "/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                         builtTool("lmctl"), "--agent", "unix://" + path, "info"])
        #expect(r.status == 7 && String(decoding: r.stderr, as: UTF8.self).contains("Permission denied"), "\(r)")
    }

    /// Nothing listens here: a test that passes did not need an agent.
    static let nowhere = ["--agent", "unix:///nonexistent/lmctl-help.sock"]
    static let nowhereController = ["--controller", "unix:///nonexistent/lmctl-help-controller.sock"]

    func lmctl(_ args: [String]) -> (status: Int32, stdout: String, stderr: String) {
        let (out, err) = (BufferSink(), BufferSink())
        let status = LmctlCLI.run(args, stdout: out, stderr: err)
        return (status, out.text, err.text)
    }

    @Test(arguments: [["--help"], ["-h"], ["help"], ["--controller", "unix:///nonexistent/c.sock", "--help"]])
    func theRootHelpIsLmctls(_ args: [String]) {
        let r = lmctl((args.first == "--controller" ? [] : Self.nowhere) + args)
        #expect(r.status == 0, "\(r)")
        #expect(r.stderr.isEmpty)
        #expect(r.stdout.hasPrefix("usage: lmctl [--agent unix://PATH|tcp://HOST:PORT]"))
        #expect(!r.stdout.contains("lmctfy <command>") && !r.stdout.contains("usage: lmctfy"), "\(r.stdout)")
        // lmctfy's verbs, its flags (naming lmctl), then lmctl's own verbs and flags.
        #expect(r.stdout.contains("\n  list containers [-r] [<container name>]\n"))
        #expect(r.stdout.contains("-o json        output one JSON document"))
        #expect(r.stdout.contains("`lmctl <command> help`"))
        for h in LmctlCLI.ownVerbHelp { #expect(r.stdout.contains("\n  \(h.synopsis)\n      \(h.summary)\n"), "\(h.synopsis)") }
        let flags = r.stdout.split(separator: "lmctl's flags, before the verb:").last ?? ""
        for flag in LmctlCLI.ownFlags { #expect(flags.contains(" \(flag) "), "the help lacks \(flag)") }
        #expect(r.stdout.contains("default \(LmctlCLI.defaultAgent)"))
    }

    /// Every verb of lmctl's own has a line in its help (and the manual
    /// and completion, which OperatorToolsTests checks, are held to the
    /// same list).
    @Test func everyOwnVerbHasHelp() {
        let helped = Set(LmctlCLI.ownVerbHelp.map(\.verb))
        for verb in LmctlCLI.ownVerbs { #expect(helped.contains(verb), "lmctl's help lacks \(verb)") }
    }

    @Test func bareLmctlAndAnUnknownVerbGiveLmctlsUsageOnStderr() {
        for (args, status) in [([String](), Int32(5)), (["bogus"], 5), (["-x"], 3)] {
            let r = lmctl(Self.nowhere + args)
            #expect(r.status == status, "\(args): \(r)")
            #expect(r.stdout.isEmpty)
            #expect(r.stderr.contains("usage: lmctl") && !r.stderr.contains("lmctfy <command>"), "\(args): \(r.stderr)")
        }
    }

    @Test(arguments: [["--version"], ["-V"], ["list", "-V"]])
    func theVersionNamesLmctl(_ args: [String]) {
        let r = lmctl(Self.nowhere + args)
        #expect(r.status == 0)
        #expect(r.stdout == "lmctl version \(LmctfyVersion.string)\n")
    }

    /// lmctfy's verbs: their usage lines name lmctl, asked for or not.
    @Test func lmctfyVerbsUsageNamesLmctl() {
        var r = lmctl(Self.nowhere + ["destroy", "help"])
        #expect(r.status == 0 && r.stdout == "usage: lmctl destroy [-f] <container name>\n", "\(r)")
        r = lmctl(Self.nowhere + ["list", "--help"])
        #expect(r.status == 0 && r.stdout.hasPrefix("usage: lmctl list <command> [<arguments>]\n"), "\(r)")
        r = lmctl(Self.nowhere + ["destroy"])
        #expect(r.status == 3 && r.stderr == "Missing arguments\nusage: lmctl destroy [-f] <container name>\n", "\(r)")
    }

    /// Each of lmctl's own verbs: `-h`, `--help` after it or `help` right
    /// after it prints its usage and succeeds, at an agent or a controller,
    /// with nothing listening at either.
    @Test(arguments: ["info", "events", "top", "snapshot", "migrate", "checkpoint", "restore", "hosts", "create"])
    func ownVerbsHelp(_ verb: String) {
        let lines = LmctlCLI.ownVerbHelp.filter { $0.verb == verb }
        let expected = lines.map { "usage: lmctl \($0.synopsis)\n      \($0.summary)\n" }.joined()
        for peer in [Self.nowhere, Self.nowhereController, Self.nowhereController + ["--host", "h1"]] {
            for ask in [[verb, "--help"], [verb, "-h"], [verb, "help"], [verb, "NAME", "-o", "json", "--help"]] {
                let r = lmctl(peer + ask)
                #expect(r.status == 0, "\(peer + ask): \(r)")
                #expect(r.stderr.isEmpty, "\(peer + ask): \(r.stderr)")
                #expect(r.stdout == expected, "\(peer + ask): \(r.stdout)")
            }
        }
    }

    @Test func snapshotHelpOfOneFormIsThatForm() {
        let r = lmctl(Self.nowhere + ["snapshot", "import", "--help"])
        #expect(r.status == 0)
        #expect(r.stdout.hasPrefix("usage: lmctl snapshot import FILE") && !r.stdout.contains("snapshot export"), "\(r.stdout)")
        // `help` right after the form, as after any verb (it was a name:
        // "/help" asked of the agent, or a file named help).
        for (words, usage) in [(["snapshot", "export", "help"], "usage: lmctl snapshot export NAME"),
                               (["snapshot", "import", "help"], "usage: lmctl snapshot import FILE"),
                               (["stats", "-f", "help"], "usage: lmctl stats -f")] {
            let h = lmctl(Self.nowhere + words)
            #expect(h.status == 0 && h.stdout.contains(usage), "\(words): \(h)")
        }
    }

    /// `stats`: lmctfy's two forms, then lmctl's `-f`; `stats summary
    /// --help` is lmctfy's line alone.
    @Test func statsHelpAddsFollow() {
        var r = lmctl(Self.nowhere + ["stats", "--help"])
        #expect(r.status == 0 && r.stderr.isEmpty, "\(r)")
        #expect(r.stdout.hasPrefix("usage: lmctl stats <command> [<arguments>]\n"), "\(r.stdout)")
        #expect(r.stdout.contains("\n  summary [-b] [<container name>]\n") && r.stdout.contains("\n\nusage: lmctl stats -f [-o json] [NAME]\n"))
        r = lmctl(Self.nowhere + ["stats", "summary", "--help"])
        #expect(r.status == 0 && r.stdout == "usage: lmctl stats summary [-b] [<container name>]\n", "\(r)")
    }

    /// A word `help` that is an argument, not right after the verb, is
    /// the argument: `events NAME` with a container called help is a call
    /// (here, one that cannot reach the agent: 14).
    @Test func helpAsALaterArgumentIsAnArgument() {
        let r = lmctl(Self.nowhere + ["events", "/web", "help"])
        #expect(r.status != 0, "\(r)")
        #expect(r.stdout.isEmpty)
    }
}

@Suite struct LmctlEventLineTests {
    /// `events` without --after asks about the current boot: its gap line
    /// names that boot (it printed "events after :0").
    @Test func aGapLineNamesTheBootAskedAbout() {
        #expect(EventsCommand.gapLine(EventGap(requestedBootId: nil, afterSequence: 0, bootId: "b1", firstSequence: 77))
                == "gap: events after b1:0 are not kept; continuing from b1:77")
        #expect(EventsCommand.gapLine(EventGap(requestedBootId: "b0", afterSequence: 5, bootId: "b1", firstSequence: 1))
                == "gap: events after b0:5 are not kept; continuing from b1:1")
    }
}

@Suite struct LmctlArgumentTests {
    func lmctl(_ args: [String]) -> (status: Int32, stdout: String, stderr: String) {
        let (out, err) = (BufferSink(), BufferSink())
        let status = LmctlCLI.run(LmctlHelpTests.nowhere + args, stdout: out, stderr: err)
        return (status, out.text, err.text)
    }

    /// Words a verb does not take are 3 before anything is dialled (the
    /// agent here does not exist: dialling would be 14).
    @Test func wordsAVerbDoesNotTakeAreRefused() {
        var r = lmctl(["info", "--bogus", "extra"])
        #expect(r.status == 3 && r.stderr.contains("info takes no arguments but -o json, not \"--bogus\""), "\(r)")
        r = lmctl(["stats", "-f", "/a", "/b"])
        #expect(r.status == 3 && r.stderr.contains("stats -f takes one container name"), "\(r)")
        #expect(r.stderr.contains("usage: lmctl stats -f"), "\(r)")
        r = lmctl(["events", "/a", "/b"])
        #expect(r.status == 3 && r.stderr.contains("events takes one container name"), "\(r)")
        // A flag of lmctl's given twice: 3 (the last one was taken, silently).
        let (out, err) = (BufferSink(), BufferSink())
        let twice = LmctlCLI.run(LmctlHelpTests.nowhereController + ["--host", "a", "--host=b", "list", "containers"], stdout: out, stderr: err)
        #expect(twice == 3 && err.text.contains("--host is given twice"), "\(err.text)")
        // What info does take still reaches the agent (here: none, 14).
        #expect(lmctl(["-o", "json", "info"]).status == 14)
    }
}

extension LmctlArgumentTests {
    /// lmctfy's flags before one of lmctl's own verbs (which print text):
    /// `-o json snapshot export` was run as a restore ("usage: restore DIR"),
    /// `-o json top` said "Unknown flag". Now each names the verb and the
    /// words to drop, with 3, before any dial; after `--` the verb runs.
    @Test(arguments: [["top"], ["snapshot", "export", "/a"], ["migrate", "/a", "--to", "unix:///nonexistent/t.sock"],
                      ["checkpoint", "/a", "/tmp/d"], ["restore", "/tmp/d"]])
    func lmctfyFlagsBeforeOwnVerbsAreNamed(_ verb: [String]) {
        let r = lmctl(["-o", "json"] + verb)
        #expect(r.status == 3, "\(r)")
        #expect(r.stderr == "lmctl: \(verb[0]) prints text and takes none of lmctfy's flags: drop \"-o json\" before it\n", "\(r)")
        // `--` before the verb is no flag: it reaches the (missing) agent.
        if verb[0] != "top" { #expect(lmctl(["--"] + verb).status == 14) }
    }

    /// An agent that cannot be reached is reported alike by every verb,
    /// lmctfy's as lmctl's own: not as the original's "Failed to create a
    /// lmctfy instance", which is lmctfy's (CL1 not starting on its machine).
    @Test func anUnreachableAgentIsReportedAlike() {
        for args in [["list", "containers"], ["destroy", "/a"], ["info"], ["snapshot", "export", "/a"], ["image", "list"]] {
            let r = lmctl(args)
            #expect(r.status == 14, "\(args): \(r)")
            #expect(r.stderr.hasPrefix("Command exited with error message: 14: cannot connect to the agent"), "\(args): \(r)")
            #expect(!r.stderr.contains("lmctfy instance"), "\(args): \(r)")
        }
        // A controller that cannot be reached is called one (it said "the agent").
        let (out, err) = (BufferSink(), BufferSink())
        let status = LmctlCLI.run(LmctlHelpTests.nowhereController + ["hosts"], stdout: out, stderr: err)
        #expect(status == 14 && err.text.contains("cannot connect to the controller"), "\(err.text)")
    }
}
