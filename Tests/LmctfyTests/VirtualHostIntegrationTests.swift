// Virtual hosts on the real kernel: a busybox-static rootfs built here, the
// init started in new pid/ipc/mnt/uts namespaces by the C shim, commands
// run inside, and nothing left behind (process, mount) after destroy.
import Glibc
import Lmctfy
import LmctfyProto
import LmctfySystem
import LmctfyTestSupport
import Testing

/// A busybox rootfs in a temp directory, with a host directory to share.
final class BusyboxRoot {
    let base: String
    var rootfs: String { base + "/rootfs" }
    /// A host directory the tests bind into the virtual host (writable).
    var share: String { base + "/share" }

    static let busybox = "/bin/busybox"
    static var unavailableReason: String? {
        if let r = RealCgroups.unavailableReason { return r }
        if !Sys.exists(busybox) { return "virtual host tests need busybox-static at /bin/busybox (tools/deps.sh)" }
        if !Sys.exists(builtTool("lmctfy-init")) { return "lmctfy-init was not built beside the tests (\(builtTool("lmctfy-init")))" }
        return nil
    }

    init(_ label: String) throws {
        base = "/tmp/\(RealCgroups.prefix)vh_\(getpid())_\(label)"
        _ = removeTree(base)
        for d in ["", "/rootfs", "/share", "/rootfs/bin", "/rootfs/proc", "/rootfs/sys", "/rootfs/dev", "/rootfs/etc",
                  "/rootfs/tmp", "/rootfs/share", "/rootfs/ro"] {
            guard mkdir(base + d, 0o755) == 0 else { throw SystemError("mkdir", base + d, errno) }
        }
        // busybox-static: no libc needed inside.
        let cp = try TestProcess.capture(["/bin/cp", Self.busybox, rootfs + "/bin/busybox"])
        guard cp.status == 0 else { throw SystemError("cp", Self.busybox, EIO) }
        for applet in ["sh", "cat", "hostname", "ls", "sleep", "true", "echo", "readlink", "touch", "grep"] {
            guard symlink("busybox", rootfs + "/bin/" + applet) == 0 else { throw SystemError("symlink", applet, errno) }
        }
    }

    deinit { _ = removeTree(base) }

    /// What the host's mount table says about this tree (should be nothing).
    func hostMounts() throws -> [String] {
        try Sys.readFile("/proc/self/mountinfo").split(separator: "\n").map(String.init).filter { $0.contains(base) }
    }
}

@Suite(.enabled(if: BusyboxRoot.unavailableReason == nil, "\(BusyboxRoot.unavailableReason ?? "")"))
struct VirtualHostIntegrationTests {
    let api: ContainerApi

    init() throws {
        setenv("LMCTFY_INIT", builtTool("lmctfy-init"), 1)
        api = try ContainerApi.detect()
    }

    func vhSpec(_ root: BusyboxRoot, hostname: String? = "vhtest", argv: [String] = [],
                mounts: [Mounts.Mount]? = nil) -> ContainerSpec {
        var vh = VirtualHostSpec(virtualHostname: hostname)
        if !argv.isEmpty { vh.init_ = VirtualHostSpec.Init(initArgv: argv) }
        let m = mounts ?? [Mounts.Mount(source: root.share, target: "/share"),
                           Mounts.Mount(source: root.share, target: "/ro", readOnly: true)]
        return ContainerSpec(filesystem: FilesystemSpec(rootfs: root.rootfs, mounts: Mounts(mount: m)), virtualHost: vh)
    }

    /// Whether pid has died (gone, or a zombie: it is not our child, and the
    /// machine's reaper may take its time), waiting up to 2 s.
    func gone(_ pid: pid_t) -> Bool {
        for _ in 0..<2000 {
            if kill(pid, 0) == -1 && errno == ESRCH { return true }
            if let stat = try? Sys.readFile("/proc/\(pid)/stat"), let close = stat.lastIndex(of: ")"),
               stat[stat.index(close, offsetBy: 2)] == "Z" { return true }
            usleep(1000)
        }
        return false
    }

    func nsInode(_ pid: String, _ kind: String) -> UInt64? { Sys.inode("/proc/\(pid)/ns/\(kind)")?.ino }

    /// Runs a shell line inside and waits; its output goes to /share/<file>.
    func runInside(_ c: Container, _ script: String) throws -> Int32 {
        var o = RunOptions(fdPolicy: .inherit)
        o.stdin = .devNull; o.stdout = .devNull; o.stderr = .devNull
        let pid = try c.run(["/bin/sh", "-c", script], options: o)
        switch try Sys.waitForExit(pid) {
        case .exited(let code): return code
        case .signaled(let s): return 128 + s
        }
    }

    func shared(_ root: BusyboxRoot, _ file: String) throws -> String {
        try Sys.readFile(root.share + "/" + file).trimmingWhitespace
    }

    @Test func aVirtualHostHasItsNamespacesHostnameRootAndInit() throws {
        let root = try BusyboxRoot("world")
        var initPid: pid_t = 0
        let hostHostname = try Sys.readFile("/proc/sys/kernel/hostname")
        try withTestContainer(api) { name in
            let c = try api.create(name, spec: vhSpec(root))
            initPid = try c.initPid()
            #expect(initPid > 1)
            // Our init, by descriptor, as pid 1 of a pid namespace one below ours.
            #expect(try Sys.readFile("/proc/\(initPid)/comm").trimmingWhitespace == "lmctfy-init")
            let status = try Sys.readFile("/proc/\(initPid)/status")
            #expect(status.contains("NSpid:\t\(initPid)\t1"), "\(status)")
            #expect(try c.processes(recursive: false) == [initPid])
            #expect(try api.detect(pid: initPid) == name)
            // New pid, ipc, mnt and uts namespaces; the network is ours (none asked).
            for kind in ["pid", "ipc", "mnt", "uts"] { #expect(nsInode(String(initPid), kind) != nsInode("self", kind), "\(kind)") }
            #expect(nsInode(String(initPid), "net") == nsInode("self", "net"))
            // A command inside: its own hostname, pid 1 is our init, it is init's
            // child's pid namespace, it sees only the rootfs and its mounts.
            let rc = try runInside(c, """
                hostname > /share/hostname; cat /proc/1/comm > /share/comm1; echo $$ > /share/pid; \
                ls / > /share/ls; cat /run/lmctfy/.machine.spec > /share/machine; \
                touch /ro/x 2>/dev/null && echo writable > /share/ro || echo readonly > /share/ro; \
                cat /proc/self/mountinfo > /share/mountinfo
                """)
            #expect(rc == 0)
            #expect(try shared(root, "hostname") == "vhtest")
            #expect(try shared(root, "comm1") == "lmctfy-init")
            #expect(Int(try shared(root, "pid")).map { $0 > 1 } == true)
            #expect(try shared(root, "ls").split(separator: "\n").sorted() ==
                    ["bin", "dev", "etc", "proc", "ro", "run", "share", "sys", "tmp"])
            #expect(try shared(root, "ro") == "readonly")
            #expect(try shared(root, "machine").contains("cgroup_mount"))
            // Nothing of the host's mount table inside but what was asked.
            let inside = try shared(root, "mountinfo")
            #expect(!inside.contains(" /sys/fs/cgroup"), "\(inside)")
            // The host's hostname and mounts are untouched.
            #expect(try Sys.readFile("/proc/sys/kernel/hostname") == hostHostname)
            let hostMounts = try root.hostMounts()
            #expect(hostMounts.isEmpty, "\(hostMounts)")
            // A detached run lands inside too, and is killed with the rest.
            let sleeper = try c.run(["/bin/sleep", "300"])
            #expect(nsInode(String(sleeper), "pid") == nsInode(String(initPid), "pid"))
            #expect(nsInode(String(sleeper), "mnt") == nsInode(String(initPid), "mnt"))
            #expect(try c.processes(recursive: false).sorted() == [initPid, sleeper].sorted())
            try api.destroy(name)
            // Dead (not our children: the machine's reaper reaps them).
            #expect(gone(initPid))
            #expect(gone(sleeper))
            #expect(try root.hostMounts().isEmpty)
        }
    }

    @Test func killingInitEndsTheVirtualHost() throws {
        let root = try BusyboxRoot("kill")
        try withTestContainer(api) { name in
            let c = try api.create(name, spec: vhSpec(root, hostname: nil))
            let initPid = try c.initPid()
            let sleeper = try c.run(["/bin/sleep", "300"])
            #expect(try c.processes(recursive: false).count == 2)
            #expect(kill(initPid, SIGKILL) == 0)
            var left = try c.processes(recursive: false)
            for _ in 0..<2000 where !left.isEmpty {
                usleep(1000)
                left = try c.processes(recursive: false)
            }
            #expect(left.isEmpty, "init's death must end every process of the virtual host, left: \(left)")
            #expect(gone(sleeper))
            #expect(try c.initPid() == 1)  // no init: no longer a virtual host
        }
    }

    @Test func initForwardsSigtermAndExits() throws {
        let root = try BusyboxRoot("term")
        try withTestContainer(api) { name in
            let c = try api.create(name, spec: vhSpec(root, hostname: nil))
            let initPid = try c.initPid()
            // A child that records the SIGTERM it gets from init.
            _ = try c.run(["/bin/sh", "-c", "trap 'echo term > /share/got; exit 0' TERM; while true; do sleep 0.05; done"])
            usleep(100_000)
            #expect(kill(initPid, SIGTERM) == 0)
            var left = try c.processes(recursive: false)
            for _ in 0..<4000 where !left.isEmpty {
                usleep(1000)
                left = try c.processes(recursive: false)
            }
            #expect(left.isEmpty)
            #expect((try? shared(root, "got")) == "term")
        }
    }

    @Test func badSpecsAreRefusedAndChangeNothing() throws {
        let root = try BusyboxRoot("bad")
        func refused(_ spec: ContainerSpec, _ code: StatusCode, _ text: String, nested: Bool = false) throws {
            try withTestContainer(api) { name in
                var target = name
                if nested {
                    try api.create(name, spec: ContainerSpec())
                    target = try ContainerName.resolve("sub", relativeTo: name)
                }
                #expect { try api.create(target, spec: spec) } throws: { e in
                    let e = e as? LmctfyError
                    return e?.code == code && e?.message.contains(text) == true
                }
                let exists = try api.exists(target)
                #expect(!exists)
            }
        }
        try refused(vhSpec(root), .unimplemented, "Nested Virtual Hosts", nested: true)
        var s = vhSpec(root); s.filesystem?.rootfs = root.base + "/missing"
        try refused(s, .invalidArgument, "is not a directory")
        s = vhSpec(root); s.filesystem?.rootfs = "busybox:latest"
        try refused(s, .unimplemented, "names an image")
        try refused(ContainerSpec(filesystem: FilesystemSpec(rootfs: root.rootfs)), .invalidArgument, "needs virtual_host")
        s = vhSpec(root, mounts: [Mounts.Mount(source: root.base + "/nope", target: "/share")])
        try refused(s, .invalidArgument, "does not exist")
        s = vhSpec(root, mounts: [Mounts.Mount(source: root.share, target: "/../etc")])
        try refused(s, .invalidArgument, "..")
        try refused(vhSpec(root, hostname: String(repeating: "h", count: 65)), .invalidArgument, "not a valid host name")
        s = vhSpec(root); s.virtualHost?.network = Network()
        try refused(s, .unimplemented, "network")
        s = vhSpec(root); s.filesystem?.fdLimit = 10
        try refused(s, .unimplemented, "fd_limit")
        #expect(try root.hostMounts().isEmpty)
    }

    @Test func failuresInsideTheChildNameTheStepAndErrno() throws {
        let root = try BusyboxRoot("fail")
        func failsInside(_ spec: ContainerSpec, _ text: String) throws {
            try withTestContainer(api) { name in
                #expect { try api.create(name, spec: spec) } throws: { e in
                    let e = e as? LmctfyError
                    return e?.code == .internal && e?.message.contains(text) == true
                }
                let exists = try api.exists(name)
                #expect(!exists)  // removed again: all or nothing
            }
        }
        // The target must exist inside the rootfs.
        try failsInside(vhSpec(root, mounts: [Mounts.Mount(source: root.share, target: "/nowhere")]),
                        "mounting on /nowhere: No such file or directory")
        try failsInside(vhSpec(root, argv: ["/no/such/init"]), "exec of init /no/such/init: No such file or directory")
        // A hostile rootfs: a symlink pointing at a host directory. The bind
        // resolves inside the new root, where that path does not exist: it is
        // refused, and nothing is mounted on the host's directory.
        let victim = root.base + "/victim"
        #expect(mkdir(victim, 0o755) == 0)
        #expect(symlink(victim, root.rootfs + "/escape") == 0)
        try failsInside(vhSpec(root, mounts: [Mounts.Mount(source: root.share, target: "/escape")]), "mounting on /escape")
        #expect(try root.hostMounts().isEmpty)
        #expect(try Sys.subdirectoriesAndFiles(victim).isEmpty)
    }

    @Test func anInitFromTheRootfsAndEnterChecks() throws {
        let root = try BusyboxRoot("argv")
        try withTestContainer(api) { name in
            // init_argv: a shell from the rootfs is pid 1.
            let c = try api.create(name, spec: vhSpec(root, argv: ["/bin/sh", "-c", "echo $$ > /share/initpid; exec sleep 300"]))
            let initPid = try c.initPid()
            var got = (try? shared(root, "initpid")) ?? ""
            for _ in 0..<2000 where got.isEmpty {
                usleep(1000)
                got = (try? shared(root, "initpid")) ?? ""
            }
            #expect(got == "1")
            // A task outside may not enter a virtual host (9), as in the original.
            let outsider = try TestProcess.spawn(["/bin/sleep", "300"])
            defer { TestProcess.end(outsider) }
            #expect { try c.enter([outsider]) } throws: { e in
                (e as? LmctfyError)?.code == .failedPrecondition
                    && (e as? LmctfyError)?.message.contains("different Virtual Host") == true
            }
            #expect(try c.processes(recursive: false) == [initPid])
        }
    }
}
