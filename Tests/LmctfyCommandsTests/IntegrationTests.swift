// lmctfy on this machine's real cgroups, as root: through the built binary
// and in-process. Specs use pids only, which works today; cpu and memory
// are in CpuMemoryCLITests.swift.
import Foundation
import Glibc
import Lmctfy
import LmctfyCommands
import LmctfyProto
import LmctfySystem
import LmctfyTestSupport
import Testing

@Suite(.serialized, .enabled(if: RealCgroups.available, "\(RealCgroups.unavailableReason ?? "")"))
struct IntegrationTests {
    /// Output that cannot be written (a full disk) is a failure, said on
    /// stderr: `lmctfy list > /dev/full` exited 0 (a probe). (lmctl's:
    /// LmctlHelpTests.)
    @Test func outputThatCannotBeWrittenIsDataLoss() throws {
        let r = try TestProcess.capture(["/bin/sh", "-c", "\(builtTool("lmctfy")) detect > /dev/full"])
        #expect(r.status == 15, "\(r)")
        #expect(String(decoding: r.stderr, as: UTF8.self).contains("lmctfy: the output could not be written: write(fd 1): No space left on device"), "\(r)")
        // Nothing to write is no failure.
        #expect(try TestProcess.capture(["/bin/sh", "-c", "\(builtTool("lmctfy")) list containers /nonexistent_\(getpid()) > /dev/full"]).status == 5)
        // The same for the descriptor --lmctfy_output_fd names (it exited 0).
        let fd = try TestProcess.capture(["/bin/sh", "-c", "\(builtTool("lmctfy")) --lmctfy_output_fd=7 detect 7> /dev/full"])
        #expect(fd.status == 15, "\(fd)")
        #expect(String(decoding: fd.stderr, as: UTF8.self).contains("lmctfy: the output could not be written: write(fd 7): No space left on device"), "\(fd)")
        #expect(try TestProcess.capture(["/bin/sh", "-c", "\(builtTool("lmctfy")) --lmctfy_output_fd=7 detect 7> /dev/null"]).status == 0)
    }

    /// A follower (`notify -f`) whose output breaks ends with 15: after
    /// a write that failed (it wrote nothing more and waited on until
    /// killed), and without an event once a pipe's reader has gone while
    /// SIGPIPE is ignored (it waited on forever; a probe).
    @Test func aFollowerWhoseOutputBreaksEnds() throws {
        try withTestName("follow") { name throws in
            let lmctfy = builtTool("lmctfy")
            #expect(try TestProcess.capture([lmctfy, "create", name, "pids:{limit:100}"]).status == 0)
            let full = try TestProcess.capture(["/usr/bin/timeout", "-s", "KILL", "20", "/bin/sh", "-c", """
                \(lmctfy) notify container empty -f \(name) > /dev/full & pid=$!
                sleep 0.5; \(lmctfy) run \(name) /bin/sleep 0.2 > /dev/null
                wait $pid; echo "rc=$?"
                """])
            #expect(String(decoding: full.stdout, as: UTF8.self).contains("rc=15"), "\(full)")
            #expect(String(decoding: full.stderr, as: UTF8.self).contains("the output could not be written"), "\(full)")
            let gone = try TestProcess.capture(["/usr/bin/timeout", "-s", "KILL", "20", "/bin/sh", "-c", """
                { (trap '' PIPE; exec \(lmctfy) notify container empty -f \(name)); echo "rc=$?" >&2; } | true
                """])
            #expect(String(decoding: gone.stderr, as: UTF8.self).contains("rc=15"), "\(gone)")
        }
    }

    @Test(arguments: Runner.allCases)
    func lifecycle(_ lmctfy: Runner) throws {
        try withTestName("life") { name throws in
            var r = try lmctfy("create", name, "pids:{limit:100}")
            #expect(r.status == 0, "\(r)")
            #expect(r.stdout.isEmpty && r.stderr.isEmpty)
            #expect(try lmctfy("spec", name).stdout == "pids {\n  limit: 100\n}\n")
            let json = try lmctfy("-o", "json", "spec", name).json()
            #expect((json["pids"] as? [String: Any])?["limit"] as? String == "100")

            #expect(try lmctfy("update", "diff", name, "pids:{limit:50}").status == 0)
            #expect(try lmctfy("spec", name).stdout == "pids {\n  limit: 50\n}\n")
            r = try lmctfy("update", "replace", name, "")
            #expect(r.status == 3, "replace must name every isolated resource: \(r)")
            #expect(try lmctfy("update", "replace", name, "pids:{limit:70}").status == 0)
            r = try lmctfy("-b", "spec", name)
            #expect(try ContainerSpec(serializedBytes: r.stdoutBytes) == ContainerSpec(pids: PidsSpec(limit: 70)))

            r = try lmctfy("stats", "summary", name)
            #expect(r.status == 0)
            #expect(r.stdout.hasPrefix("pids {\n  current: 0\n  limit: 70\n"), "\(r)")
            let stats = try lmctfy("-o", "json", "stats", "full", name).json()
            #expect((stats["pids"] as? [String: Any])?["current"] as? String == "0")

            #expect(try lmctfy("create", name + "/sub", "").status == 0)
            #expect(try lmctfy("list", "containers", name).stdout == "name=\"\(name)/sub\"\n")
            let all = try lmctfy("-v", "list", "containers", "-r", "/").stdout.split(separator: "\n")
            #expect(all.contains(Substring(name)) && all.contains(Substring(name + "/sub")))
            let listed = try lmctfy("-o", "json", "list", "containers", "-r", name).json()
            #expect(listed["containers"] as? [String] == [name + "/sub"])

            r = try lmctfy("destroy", name)
            #expect(r.status == 9)
            #expect(r.stderr.hasPrefix("Command exited with error message: 9: Subcontainers found"))
            #expect(try lmctfy("-o", "json", "destroy", "-f", name).json().isEmpty)
            #expect(Host.dirs(of: name).isEmpty)
            #expect(try lmctfy("spec", name).status == 5)
        }
    }

    @Test(arguments: Runner.allCases)
    func duplicateAndMissingContainers(_ lmctfy: Runner) throws {
        try withTestName("dup") { name throws in
            #expect(try lmctfy("create", name, "").status == 0)
            let r = try lmctfy("create", name, "pids:{limit:10}")
            #expect(r.status == 6)
            #expect(r.stderr.hasPrefix("Command exited with error message: 6: "))
            #expect(try lmctfy("destroy", name).status == 0)
            for args in [["destroy", name], ["destroy", "-f", name], ["spec", name], ["stats", "summary", name],
                         ["list", "containers", name], ["update", "diff", name, ""]] {
                let missing = try lmctfy.run(args)
                #expect(missing.status == 5, "\(args): \(missing)")
                #expect(missing.stdout.isEmpty)
            }
            // A parent that does not exist is 9, as the original's failed mkdir.
            #expect(try lmctfy("create", name + "/child", "").status == 9)
        }
    }

    @Test(arguments: Runner.allCases)
    func theRootIsNeverDestroyed(_ lmctfy: Runner) throws {
        for args in [["destroy", "/"], ["destroy", "-f", "/"], ["--lmctfy_force", "destroy", "/"]] {
            let r = try lmctfy.run(args)
            #expect(r.status == 9, "\(args): \(r)")
            #expect(r.stderr.contains("root container"))
        }
    }

    @Test(arguments: Runner.allCases)
    func destroyRefusesAContainerWithAProcess(_ lmctfy: Runner) throws {
        try withTestName("busy") { name throws in
            #expect(try lmctfy("create", name, "pids:{limit:100}").status == 0)
            let task = try SleepingTask(into: name)
            defer { task.end() }
            #expect(try lmctfy("detect", String(task.pid)).stdout == "name=\"\(name)\"\n")
            #expect(try lmctfy("-o", "json", "detect", String(task.pid)).json()["name"] as? String == name)

            let r = try lmctfy("destroy", name)
            #expect(r.status == 9)
            #expect(r.stderr.hasPrefix("Command exited with error message: 9: Processes found"))
            #expect(kill(task.pid, 0) == 0, "a refused destroy must not kill anything")

            task.end()
            #expect(try lmctfy("destroy", name).status == 0)
        }
    }

    @Test(arguments: Runner.allCases)
    func forcedDestroyKillsWhatIsInside(_ lmctfy: Runner) throws {
        try withTestName("force") { name throws in
            #expect(try lmctfy("create", name, "").status == 0)
            #expect(try lmctfy("create", name + "/inner", "").status == 0)
            let task = try SleepingTask(into: name + "/inner")
            defer { task.end() }
            let r = try lmctfy("destroy", "-f", name)
            #expect(r.status == 0, "\(r)")
            #expect(try Sys.waitForExit(task.pid) == .signaled(SIGKILL))
        }
    }

    @Test(arguments: Runner.allCases)
    func hostileNamesCreateNothing(_ lmctfy: Runner) throws {
        let base = String(RealCgroups.uniqueName("hostile").dropFirst())
        let before = Host.topLevelEntries()
        let hostile = ["", "/\(base) x", "/\(base)<", "/_\(base)", "/.\(base)", "/\(base)/-x", "/\(base)/../.\(base)",
                       "/\(base)" + String(repeating: "a", count: 300), "\(base)\u{e9}"]
        for name in hostile {
            let r = try lmctfy("create", name, "")
            #expect(r.status == 3, "\(name.debugDescription): \(r)")
            #expect(r.stderr.hasPrefix("Command exited with error message: 3: "))
        }
        let new = Host.topLevelEntries().subtracting(before)
        // Other suites may be creating their own test containers meanwhile.
        #expect(new.allSatisfy { $0.hasPrefix(RealCgroups.prefix) && !$0.hasPrefix(base) }, "\(new)")
        #expect(!new.contains { $0.contains(base) })
    }

    @Test(arguments: Runner.allCases)
    func dotDotStaysInsideTheHierarchy(_ lmctfy: Runner) throws {
        try withTestName("dotdot") { name throws in
            let base = String(name.dropFirst())
            // However deep lmctfy itself is, enough `..` end at the root.
            let r = try lmctfy("create", String(repeating: "../", count: 12) + base, "")
            #expect(r.status == 0, "\(r)")
            #expect(Sys.isDirectory(Host.freezer + name))
            // Nothing named after it above the hierarchy's mount point.
            var dir = Host.freezer
            while let slash = dir.lastIndex(of: "/"), !dir.isEmpty {
                dir = String(dir[..<slash])
                #expect(!Sys.exists(dir + "/" + base), "\(dir)/\(base)")
            }
            #expect(try lmctfy("destroy", name).status == 0)
        }
    }

    @Test(arguments: Runner.allCases)
    func detectDefaultsToTheCaller(_ lmctfy: Runner) throws {
        // The binary's parent is this test process; in-process, our parent.
        let pid = lmctfy == .binary ? getpid() : getppid()
        let expected = try ContainerApi.detect().detect(pid: pid).path
        let r = try lmctfy("-o", "json", "detect")
        #expect(r.status == 0, "\(r)")
        #expect(try r.json()["name"] as? String == expected)
        #expect(try lmctfy("detect", "not-a-pid").status == 3)
        #expect(try lmctfy("detect", "2147483647").status == 5)
    }

    @Test func specFromAConfigFile() throws {
        try withTestName("file") { name throws in
            try withTempFile(try ContainerSpec(pids: PidsSpec(limit: 300)).serializedBytes()) { path throws in
                #expect(try Runner.binary("create", "-c", path, name).status == 0)
            }
            try withTempFile(Array("pids { limit: 400 }".utf8)) { path throws in
                #expect(try Runner.binary("update", "diff", "--lmctfy_config=\(path)", name).status == 0)
                let r = try Runner.binary("update", "diff", "-c", path, name, "pids:{limit:1}")
                #expect(r.status == 3)
            }
            #expect(try Runner.binary("spec", name).stdout == "pids {\n  limit: 400\n}\n")
            #expect(try Runner.binary("destroy", name).status == 0)
        }
    }

    @Test func usageErrorsFromTheBinary() throws {
        var r = try Runner.binary()
        #expect(r.status == 5)
        #expect(r.stdout.isEmpty && r.stderr.hasPrefix("usage: lmctfy"))
        r = try Runner.binary("help")
        #expect(r.status == 0 && r.stdout.hasPrefix("usage: lmctfy"))
        r = try Runner.binary("-V")
        #expect(r.stdout == "lmctfy version \(LmctfyVersion.string)\n")
        r = try Runner.binary("create")
        #expect(r.status == 3 && r.stderr.hasPrefix("Missing arguments\n"))
        r = try Runner.binary("nosuchverb")
        #expect(r.status == 5)
    }
}
