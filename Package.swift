// swift-tools-version:6.0
// lmctfy: Let Me Contain That For You, in Swift for Linux.
// Layout and the reason for each target: ../shared/DESIGN.md and README.md.
import PackageDescription

// lmctfy, lmctl and lmctfy-agent link the Swift runtime statically. The CLIs
// are short-lived: loading libswiftCore and friends dynamically was about
// half of a call's wall time (tools/bench-startup measures it). For the
// long-lived agent it is free: a smaller RSS (nothing else on the machine
// shares those libraries now) for a bigger file. Only the Swift libraries are
// static; libuv, protobuf-c and OpenSSL stay Debian's shared libraries.
// The flag is per target, so debug builds (what the tests spawn) and release
// builds (tools/setup) produce the same kind of binary. LMCTFY_DYNAMIC_STDLIB=1
// drops it: only tools/bench-startup sets it, with its own --scratch-path,
// to measure what the static link buys.
//
// With it, GCC's C++ runtime and unwinder are linked statically too
// (tools/link/libstdc++.so says how): loading libstdc++.so.6 and libgcc_s,
// their relocations and CPU probing, took ~0.4 ms of every process
// (`lmctfy pause` 2.29 -> 1.84 ms; README, under tools/bench-startup); libc, libm
// and the Debian libraries stay shared (Debian's security updates apply).
//
// None of it in the sanitizer builds of tools/test (LMCTFY_SANITIZE=1): with
// -static-stdlib the sanitizer runtime's interceptors (malloc, free, ...)
// were not exported from the executable (gold: "Cannot export local symbol",
// ~14,000 times), so what libc allocated itself (strdup) and what the
// program allocated came from two heaps, and the ThreadSanitizer agent died
// at its first spawn (tools/sanitized-agent runs it). Nothing measures or ships
// those binaries.
let staticSwiftRuntime: [LinkerSetting] = {
    if Context.environment["LMCTFY_DYNAMIC_STDLIB"] == "1" || Context.environment["LMCTFY_SANITIZE"] == "1" { return [] }
    return [.unsafeFlags(["-static-stdlib", "-L\(Context.packageDirectory)/tools/link", "-Xclang-linker", "-static-libgcc"])]
}()

// lmctfy-init is linked statically (it runs in a rootfs without a libc).
// The sanitizer builds of tools/test set LMCTFY_SANITIZE=1: a sanitizer
// runtime cannot be linked into a static executable, and those builds run no
// virtual host (the virtual host suites need root and are skipped there).
let staticInit: [LinkerSetting] =
    Context.environment["LMCTFY_SANITIZE"] == "1" ? [] : [.unsafeFlags(["-static-executable"])]

let package = Package(
    name: "lmctfy",
    products: [
        .executable(name: "lmctfy", targets: ["lmctfy"]),
        .executable(name: "lmctl", targets: ["lmctl"]),
        .executable(name: "lmctfy-agent", targets: ["lmctfy-agent"]),
        .executable(name: "lmctfy-controller", targets: ["lmctfy-controller"]),
        .executable(name: "lmctfy-protogen", targets: ["lmctfy-protogen"]),
        .executable(name: "lmctfy-bench", targets: ["lmctfy-bench"]),
        .executable(name: "lmctfy-test-helper", targets: ["lmctfy-test-helper"]),
        .executable(name: "lmctfy-init", targets: ["lmctfy-init"]),
        .library(name: "LmctfyProto", targets: ["LmctfyProto"]),
        .library(name: "LmctfyRPC", targets: ["LmctfyRPC"]),
        .library(name: "LmctfyLoop", targets: ["LmctfyLoop"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-log", from: "1.5.0"),
    ],
    targets: [
        // System libraries from Debian packages; module maps only.
        .systemLibrary(
            name: "CLibUV", pkgConfig: "libuv",
            providers: [.apt(["libuv1-dev"])]),
        .systemLibrary(
            name: "CProtobufC", pkgConfig: "libprotobuf-c",
            providers: [.apt(["libprotobuf-c-dev"])]),
        // OpenSSL's headers (libssl-dev) for the TCP hello's HMAC-SHA256
        // and TLS: types and declarations only, nothing linked; the
        // functions come from CLmctfyOpenSSL, which loads libssl on first use.
        .systemLibrary(
            name: "COpenSSL",
            providers: [.apt(["libssl-dev"])]),
        .target(name: "CLmctfyOpenSSL"),

        // Rootfs tarballs for the image store (LmctfyImages): Debian's
        // libarchive (libarchive-dev for the headers), dlopened on first use
        // so that programs pay for loading it (and libxml2, ICU) only then.
        .target(name: "CArchiveLoader"),

        // protoc-c output for proto/*.proto plus a descriptor registry.
        // Written only by tools/gen-proto; never edit by hand.
        .target(
            name: "LmctfyWire",
            dependencies: ["CProtobufC"]),

        // What Swift must not do itself (see the header): between fork and
        // exec, macro and glibc wrappers.
        .target(name: "CLmctfyShims"),
        // Casts between libuv handle types, for LmctfyLoop only: kept out of
        // CLmctfyShims so that importing CL1 does not expose libuv.
        .target(name: "CLmctfyUV", dependencies: ["CLibUV"]),

        // libmicrohttpd (Debian libmicrohttpd-dev) behind plain C calls, and
        // the HTTP server on the loop plus Prometheus's text format over it:
        // the agent's and the controller's metrics endpoints.
        .target(name: "CLmctfyHTTP", linkerSettings: [.linkedLibrary("microhttpd")]),
        .target(name: "LmctfyHTTP", dependencies: ["CLmctfyHTTP", "LmctfyLoop", "LmctfySystem"]),

        // Swift value types for every message, binary/text/JSON codecs.
        .target(
            name: "LmctfyProto",
            dependencies: ["LmctfyWire", "CProtobufC"]),

        // One wrapper per syscall; LmctfyError and the status codes.
        .target(name: "LmctfySystem", dependencies: ["CLmctfyShims"]),

        // The agent protocol (docs/PROTOCOL.md): framing, handshake and stream
        // multiplexing as a transport-free state machine, plus a blocking client.
        .target(
            name: "LmctfyRPC",
            dependencies: ["LmctfyProto", "LmctfyWire", "CProtobufC", "LmctfySystem", "COpenSSL", "CLmctfyOpenSSL"]),
        // The libuv wrapper the agent runs on: one loop thread owning every
        // handle, work offloaded to a pool, TCP/Unix streams, timers, signals.
        .target(
            name: "LmctfyLoop",
            dependencies: ["CLibUV", "CLmctfyUV", "LmctfySystem"]),

        // The ContainerBackend protocol the verbs and the agent act on, and its
        // vocabulary; no CL1, so lmctl shares it without linking cgroup code.
        .target(
            name: "LmctfyBackend",
            dependencies: ["LmctfyProto", "LmctfySystem"]),

        // CL1: containers, names, cgroup v1/v2 layouts, resource handlers, and
        // LocalBackend (the backend over them).
        .target(
            name: "Lmctfy",
            dependencies: ["LmctfyBackend", "LmctfySystem", "LmctfyProto", "CLmctfyShims", "LmctfyImages"]),

        // The image store: rootfs tarballs unpacked (hostile ones refused)
        // for virtual hosts, and packed back. CL1 resolves image names with it.
        .target(
            name: "LmctfyImages",
            dependencies: ["CArchiveLoader", "CLmctfyShims", "LmctfyBackend", "LmctfySystem"]),

        // Fake cgroup trees, the root gate, unique test containers.
        .target(
            name: "LmctfyTestSupport",
            dependencies: ["Lmctfy", "LmctfySystem", "LmctfyProto", "LmctfyRPC"],
            path: "Tests/LmctfyTestSupport"),

        // CLI verbs, one file each, on any ContainerBackend; testable without spawning.
        .target(
            name: "LmctfyCommands",
            dependencies: ["LmctfyBackend", "LmctfySystem", "LmctfyProto"]),

        // lmctfy: the verbs on LocalBackend (CL1 on this machine).
        .executableTarget(
            name: "lmctfy", dependencies: ["LmctfyCommands", "Lmctfy", "LmctfyImages", "LmctfySystem"], linkerSettings: staticSwiftRuntime),

        // lmctl: the lmctfy verbs against an agent. Never links CL1 (Lmctfy).
        .target(
            name: "LmctlCommands",
            dependencies: ["LmctfyBackend", "LmctfyCommands", "LmctfyProto", "LmctfyRPC", "LmctfySystem"]),
        .executableTarget(
            name: "lmctl", dependencies: ["LmctlCommands", "LmctfySystem"], path: "tools/lmctl", linkerSettings: staticSwiftRuntime),

        // The agent: RPC dispatch onto CL1, listeners, config, events.
        // One event log and its subscribers, for the agent and the
        // controller alike: numbered events, a bounded ring, a journal on
        // disk, and the hub that serves Subscribe with credit.
        .target(
            name: "LmctfyEvents",
            dependencies: ["LmctfyProto", "LmctfyRPC", "LmctfySystem"]),
        // CL2: tiers, admission against capacity, overcommit, eviction order.
        // Arithmetic over values only (no sockets, no cgroupfs).
        .target(
            name: "LmctfyPolicy",
            dependencies: ["LmctfyProto", "LmctfySystem"]),
        .target(
            name: "LmctfyAgent",
            dependencies: ["Lmctfy", "LmctfyBackend", "LmctfyPolicy", "LmctfyImages", "LmctfyProto", "LmctfyRPC", "LmctfySystem", "LmctfyLoop", "LmctfyEvents",
                           "LmctfyHTTP", .product(name: "Logging", package: "swift-log")]),
        .executableTarget(name: "lmctfy-agent", dependencies: ["LmctfyAgent"], linkerSettings: staticSwiftRuntime),
        // The controller: agents dial home to it; it routes clients' calls to
        // hosts. Loop and RPC as the agent's; never CL1 (it touches no cgroup).
        .target(
            name: "LmctfyController",
            dependencies: ["LmctfyProto", "LmctfyRPC", "LmctfySystem", "LmctfyLoop", "LmctfyEvents", "LmctfyHTTP",
                           .product(name: "Logging", package: "swift-log")]),
        .executableTarget(name: "lmctfy-controller", dependencies: ["LmctfyController"], linkerSettings: staticSwiftRuntime),

        // tools/run-bench's measuring side (the C baseline is built by the script).
        .executableTarget(
            name: "lmctfy-bench",
            dependencies: ["Lmctfy", "LmctfyProto", "LmctfySystem", "LmctfyRPC", "LmctfyPolicy"],
            path: "tools/bench"),

        // The default init of a virtual host (C, linked statically: it runs
        // after pivot_root in a root filesystem that may have no libc).
        .executableTarget(
            name: "lmctfy-init", path: "Sources/lmctfy-init",
            linkerSettings: staticInit),

        // Workloads for the integration tests (OOM, fork loops), in C.
        // `netns` mode: the inside of a virtual host for the lm_net tests.
        .executableTarget(name: "lmctfy-test-helper", dependencies: ["CLmctfyShims"], path: "tools/test-helper"),

        // Generates Sources/LmctfyProto/Generated from the protobuf-c descriptors.
        .executableTarget(
            name: "lmctfy-protogen",
            dependencies: ["LmctfyWire", "CProtobufC"],
            path: "tools/protogen"),

        .testTarget(
            name: "LmctfyTests",
            dependencies: ["Lmctfy", "LmctfyImages", "LmctfySystem", "LmctfyProto", "LmctfyTestSupport"]),
        .testTarget(
            name: "LmctfyCommandsTests",
            dependencies: ["LmctfyCommands", "Lmctfy", "LmctfyImages", "LmctfySystem", "LmctfyProto", "LmctfyTestSupport"]),
        .testTarget(
            name: "LmctfyRPCTests",
            dependencies: ["LmctfyRPC", "LmctfyProto", "LmctfySystem", "LmctfyTestSupport"]),
        .testTarget(
            name: "LmctfyAgentTests",
            dependencies: ["LmctfyAgent", "LmctfyEvents", "LmctfyImages", "LmctlCommands", "LmctfyCommands", "LmctfyRPC", "Lmctfy", "LmctfyProto",
                           "LmctfySystem", "LmctfyTestSupport", "LmctfyPolicy", "LmctfyHTTP"]),
        .testTarget(
            name: "LmctfyControllerTests",
            dependencies: ["LmctfyController", "LmctfyAgent", "LmctfyEvents", "LmctlCommands", "LmctfyCommands", "LmctfyRPC", "Lmctfy", "LmctfyProto",
                           "LmctfySystem", "LmctfyTestSupport", "LmctfyPolicy", "LmctfyHTTP"]),
        .testTarget(
            name: "LmctfyPolicyTests",
            dependencies: ["LmctfyPolicy", "LmctfyProto", "LmctfySystem"]),
        .testTarget(
            name: "LmctfyLoopTests",
            dependencies: ["LmctfyLoop", "LmctfySystem", "CLibUV", "CLmctfyShims", "LmctfyTestSupport"]),
        .testTarget(
            name: "LmctfySystemTests",
            dependencies: ["LmctfySystem", "LmctfyTestSupport"]),
        .testTarget(
            name: "LmctfyProtoTests",
            dependencies: ["LmctfyProto", "LmctfyWire", "CProtobufC", "CLmctfyShims", "LmctfyTestSupport"],
            exclude: ["Corpus"]),
    ]
)

// Release builds (the agent and the CLIs as tools/setup installs them, and
// what tools/run-bench measures) optimize across module boundaries: the
// generic helpers of LmctfySystem (Mutexed, Lock) and LmctfyProto are
// specialized in their callers instead of running through runtime generic
// metadata. About 3 % of the agent's CPU per create-run-destroy here
// (tools/run-bench, lifecycle); debug builds (the tests) are unchanged.
for target in package.targets where target.type != .system && !target.name.hasPrefix("C") {
    target.swiftSettings = (target.swiftSettings ?? [])
        + [.unsafeFlags(["-cross-module-optimization"], .when(configuration: .release))]
}
