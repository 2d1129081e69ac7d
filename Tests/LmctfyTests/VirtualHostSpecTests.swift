// The virtual host spec rules, on a fake cgroup tree (no root needed): every
// refusal happens before anything is made.
import Glibc
import Lmctfy
import LmctfyProto
import LmctfySystem
import LmctfyTestSupport
import Testing

struct VirtualHostSpecTests {
    @Test func refusalsComeFirstAndMakeNothing() throws {
        let tree = try FakeCgroupTree(.v1)
        let api = try ContainerApi(mounts: tree.mounts)
        let top = try ContainerName.resolve("/vh", relativeTo: .root)
        let rootfs = tree.root + "/rootfs"
        try Sys.mkdir(rootfs)
        func vh(_ fs: FilesystemSpec? = nil, _ v: VirtualHostSpec = VirtualHostSpec()) -> ContainerSpec {
            ContainerSpec(filesystem: fs ?? FilesystemSpec(rootfs: rootfs), virtualHost: v)
        }
        let cases: [(ContainerSpec, StatusCode, String)] = [
            (ContainerSpec(filesystem: FilesystemSpec(rootfs: rootfs)), .invalidArgument, "needs virtual_host"),
            (vh(FilesystemSpec(fdLimit: 5)), .unimplemented, "fd_limit"),
            (vh(FilesystemSpec(rootfs: "relative/image")), .invalidArgument, "Invalid characters in image name"),
            (vh(FilesystemSpec(rootfs: tree.root + "/none")), .invalidArgument, "is not a directory"),
            (vh(FilesystemSpec(rootfs: rootfs, mounts: Mounts(mount: [Mounts.Mount(source: "rel", target: "/x")]))),
             .invalidArgument, "absolute source"),
            (vh(FilesystemSpec(rootfs: rootfs, mounts: Mounts(mount: [Mounts.Mount(source: rootfs, target: "x")]))),
             .invalidArgument, "absolute target"),
            (vh(nil, VirtualHostSpec(virtualHostname: "a/b")), .invalidArgument, "not a valid host name"),
            (vh(nil, VirtualHostSpec(virtualHostname: "")), .invalidArgument, "not a valid host name"),
            (vh(nil, VirtualHostSpec(virtualHostname: "a\nb c")), .invalidArgument, "not a valid host name"),
            (vh(nil, VirtualHostSpec(virtualHostname: "tab\there")), .invalidArgument, "not a valid host name"),
            // A huge one is quoted by its start and its length, not whole.
            (vh(nil, VirtualHostSpec(virtualHostname: String(repeating: "x", count: 1_000_000))), .invalidArgument,
             "\"" + String(repeating: "x", count: 120) + "... (1000000 bytes in all)\" is not a valid host name"),
            (vh(nil, VirtualHostSpec(init_: .init(initArgv: [""]))), .invalidArgument, "init_argv[0] is empty"),
            (vh(nil, VirtualHostSpec(init_: .init(runSpec: RunSpec(uid: 5)))), .invalidArgument, "both uid and gid"),
            (vh(nil, VirtualHostSpec(init_: .init(runSpec: RunSpec(console: .init())))), .unimplemented, "console"),
            (vh(nil, VirtualHostSpec(network: Network(interface: "eth0", connection: .init()))), .invalidArgument, "exclusive"),
        ]
        for (spec, code, text) in cases {
            #expect { try api.create(top, spec: spec) } throws: { e in
                let e = e as? LmctfyError
                return e?.code == code && e?.message.contains(text) == true
            }
            #expect(try !api.exists(top), "\(text)")
        }
        // Nested: 12 as in the original, even with a valid spec.
        try api.create(top, spec: ContainerSpec())
        let sub = try ContainerName.resolve("/vh/sub", relativeTo: .root)
        #expect { try api.create(sub, spec: vh()) } throws: {
            ($0 as? LmctfyError) == LmctfyError(.unimplemented, "Nested Virtual Hosts are not yet supported.")
        }
        // Updating either section is 12.
        #expect { try api.get(top).update(vh(), policy: .diff) } throws: {
            ($0 as? LmctfyError)?.code == .unimplemented
        }
    }
}
