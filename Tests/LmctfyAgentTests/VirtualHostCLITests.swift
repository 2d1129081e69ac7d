// Virtual hosts through the front doors: the lmctfy CLI (create prints
// init_pid; a foreground run lands inside and passes on its exit status) and
// lmctl against a real lmctfy-agent (create reports init_pid through the
// agent; run inside; destroy leaves nothing).
import Glibc
import Lmctfy
import LmctfyProto
import LmctfyRPC
import LmctfySystem
import LmctfyTestSupport
import Testing

@Suite(.enabled(if: BusyboxRoot.unavailableReason == nil, "\(BusyboxRoot.unavailableReason ?? "")"), .serialized)
struct VirtualHostCLITests {
    func spec(_ root: BusyboxRoot, _ hostname: String) -> String {
        "virtual_host { virtual_hostname: '\(hostname)' } filesystem { rootfs: '\(root.rootfs)' "
            + "mounts { mount { source: '\(root.share)' target: '/share' } } }"
    }

    func initPid(_ out: [UInt8]) -> pid_t? {
        let text = String(decoding: out, as: UTF8.self).trimmingWhitespace
        guard text.hasPrefix("init_pid=\""), text.hasSuffix("\"") else { return nil }
        return pid_t(text.dropFirst(10).dropLast())
    }

    func inVirtualHost(_ pid: pid_t) -> Bool {
        Sys.inode("/proc/\(pid)/ns/pid")?.ino != Sys.inode("/proc/self/ns/pid")?.ino
            && (try? Sys.readFile("/proc/\(pid)/status"))?.contains("NSpid:\t\(pid)\t1") == true
    }

    @Test func lmctfyCreatesRunsInsideAndDestroys() throws {
        let root = try BusyboxRoot("cli")
        let name = RealCgroups.uniqueName("vhcli")
        let lmctfy = builtTool("lmctfy")
        defer { _ = try? TestProcess.capture([lmctfy, "destroy", "-f", name]) }
        let created = try TestProcess.capture([lmctfy, "create", name, spec(root, "vhcli")])
        #expect(created.status == 0, "\(String(decoding: created.stderr, as: UTF8.self))")
        let pid = try #require(initPid(created.stdout), "\(String(decoding: created.stdout, as: UTF8.self))")
        #expect(inVirtualHost(pid))
        // The foreground run (exec path): inside, with the command's status.
        let ran = try TestProcess.capture([lmctfy, "run", name, "/bin/sh", "-c", "hostname; cat /proc/1/comm; exit 5"])
        #expect(ran.status == 5)
        #expect(String(decoding: ran.stdout, as: UTF8.self) == "vhcli\nlmctfy-init\n")
        let json = try TestProcess.capture([lmctfy, "-o", "json", "create", name + "_j", spec(root, "j")])
        defer { _ = try? TestProcess.capture([lmctfy, "destroy", "-f", name + "_j"]) }
        #expect(String(decoding: json.stdout, as: UTF8.self).hasPrefix("{\"init_pid\":"))
        let destroyed = try TestProcess.capture([lmctfy, "destroy", "-f", name])
        #expect(destroyed.status == 0)
        #expect(try root.hostMounts().isEmpty)
    }

    @Test func lmctlDrivesAVirtualHostThroughTheAgent() throws {
        let root = try BusyboxRoot("agent")
        let agent = try AgentProcess()
        defer { agent.stop() }
        func lmctl(_ args: [String]) throws -> ChildResult {
            try TestProcess.capture([builtTool("lmctl"), "--agent", "unix://" + agent.socket] + args)
        }
        let name = RealCgroups.uniqueName("vhagent")
        defer { _ = try? lmctl(["destroy", "-f", name]) }
        let created = try lmctl(["create", name, spec(root, "vhagent")])
        #expect(created.status == 0, "\(String(decoding: created.stderr, as: UTF8.self))")
        let pid = try #require(initPid(created.stdout), "\(String(decoding: created.stdout, as: UTF8.self))")
        #expect(inVirtualHost(pid))
        // An attached run through the agent: inside, its exit status back.
        let ran = try lmctl(["run", name, "/bin/sh", "-c", "hostname > /share/host; exit 4"])
        #expect(ran.status == 4)
        #expect(try Sys.readFile(root.share + "/host") == "vhagent\n")
        // On a terminal (run -t): the agent's pseudo-terminal, inside.
        let onTerminal = try TestProcess.capture(["/bin/sh", "-c", "echo hi | '\(builtTool("lmctl"))' --agent unix://\(agent.socket) run -t \(name) "
                                                  + "/bin/sh -c '[ -t 0 ] && [ -t 1 ] && echo terminal; read l; echo got:$l; hostname; exit 5'"])
        let shown = String(decoding: onTerminal.stdout, as: UTF8.self)
        #expect(onTerminal.status == 5 && shown.contains("terminal\r\n") && shown.contains("got:hi\r\n") && shown.contains("vhagent\r\n"),
                "\(onTerminal)")
        // A detached one lands in the virtual host's pid namespace.
        let detached = try lmctl(["run", "-n", name, "/bin/sleep", "300"])
        #expect(detached.status == 0)
        let text = String(decoding: detached.stdout, as: UTF8.self).trimmingWhitespace
        let sleeper = try #require(pid_t(text.dropFirst(5).dropLast()), "\(text)")
        #expect(Sys.inode("/proc/\(sleeper)/ns/pid")?.ino == Sys.inode("/proc/\(pid)/ns/pid")?.ino)
        // Its init is the container's own (a migration's import starts a
        // new one): not a process the agent did not start, which made
        // lmctl migrate refuse every virtual host without --force. One
        // started behind the agent's back still is.
        let client = try RpcClient.connect(unixPath: agent.socket)
        defer { client.close() }
        #expect(try client.call(AgentMethods.exportSnapshot, ExportSnapshotRequest(name: name)).unrecordedPid == [])
        let foreign = try TestProcess.capture([builtTool("lmctfy"), "run", "-n", name, "/bin/sleep", "300"])
        let foreignPid = try #require(pid_t(String(decoding: foreign.stdout, as: UTF8.self).trimmingWhitespace.dropFirst(5).dropLast()))
        #expect(try client.call(AgentMethods.exportSnapshot, ExportSnapshotRequest(name: name)).unrecordedPid == [foreignPid])
        #expect(try lmctl(["destroy", "-f", name]).status == 0)
        #expect(try root.hostMounts().isEmpty)
    }
}
