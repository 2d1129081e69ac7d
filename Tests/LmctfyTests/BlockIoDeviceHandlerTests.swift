// BlockIoHandler and DeviceHandler on fake v1 and v2 trees.
import Glibc
@testable import Lmctfy
import LmctfyProto
import LmctfySystem
import LmctfyTestSupport
import Testing

private typealias B = BlockIoSpec

private func throttle(_ op: B.OpType?, _ type: B.LimitType?, _ rules: [(Int64, Int64, UInt64)]) -> B.MaxLimit {
    B.MaxLimit(limits: rules.map { B.DeviceLimit(device: B.Device(major: $0.0, minor: $0.1), limit: $0.2) },
               opType: op, limitType: type)
}

private func throttles(_ limits: B.MaxLimit...) -> B {
    B(maxDeviceLimitSet: B.MaxLimitSet(maxLimits: limits))
}

@Suite struct BlockIoValidationTests {
    let h = BlockIoHandler()

    @Test(arguments: [UInt32(0), 101])
    func defaultWeightOutOfRange(_ w: UInt32) throws {
        let f = try FakeContainer.v2()
        let err = lmctfyError { try h.validate(spec(blockio: B(deviceLimitSet: B.DeviceLimitSet(defaultLimit: w))), dirs: f.dirs) }
        #expect(err?.code == .invalidArgument)
    }

    @Test func v1WeightWithoutBlkioWeightIsUnimplemented() throws {
        let f = try FakeContainer.v1()
        let err = lmctfyError { try h.validate(spec(blockio: B(deviceLimitSet: B.DeviceLimitSet(defaultLimit: 50))), dirs: f.dirs) }
        #expect(err?.code == .unimplemented)
        #expect(err?.message.contains("blockio.device_limit_set") == true)
        try f.seed("blkio", ["blkio.weight": "500\n"])
        #expect(lmctfyError { try h.validate(spec(blockio: B(deviceLimitSet: B.DeviceLimitSet(defaultLimit: 50))), dirs: f.dirs) } == nil)
    }

    @Test func v2WeightWithoutIoWeightIsUnimplemented() throws {
        let f = try FakeContainer.v2()
        f.remove("unified", "io.weight")
        let err = lmctfyError { try h.validate(spec(blockio: B(deviceLimitSet: B.DeviceLimitSet(defaultLimit: 50))), dirs: f.dirs) }
        #expect(err?.code == .unimplemented)
        #expect(err?.message.contains("blockio.device_limit_set") == true)
    }

    @Test(arguments: [CgroupVersion.v1, .v2])
    func incompleteThrottlesAreRefused(_ version: CgroupVersion) throws {
        let f = try version == .v1 ? FakeContainer.v1() : FakeContainer.v2()
        let bad = [
            throttles(throttle(nil, .bytesPerSecond, [(8, 0, 1)])),
            throttles(throttle(.read, nil, [(8, 0, 1)])),
            throttles(B.MaxLimit(limits: [B.DeviceLimit(device: B.Device(major: 8), limit: 1)], opType: .read, limitType: .ioPerSecond)),
            throttles(B.MaxLimit(limits: [B.DeviceLimit(limit: 1)], opType: .read, limitType: .ioPerSecond)),
            throttles(B.MaxLimit(limits: [B.DeviceLimit(device: B.Device(major: 8, minor: 0))], opType: .read, limitType: .ioPerSecond)),
        ]
        for b in bad {
            #expect(lmctfyError { try h.validate(spec(blockio: b), dirs: f.dirs) }?.code == .invalidArgument)
        }
        // Out of the kernel's unsigned 32-bit range: 4294967550 wrapped to
        // 254 there, another device (a probe); negative ones are named too.
        for (major, minor) in [(Int64(4_294_967_550), Int64(0)), (254, 4_294_967_296), (-1, 0)] {
            let err = lmctfyError { try h.validate(spec(blockio: throttles(throttle(.write, .bytesPerSecond, [(major, minor, 1)]))), dirs: f.dirs) }
            #expect(err?.code == .invalidArgument && err?.message.contains("device \(major):\(minor) is out of range") == true, "\(err?.message ?? "")")
        }
        // A device twice for one op and type (the last was written,
        // silently; the CLI probe), also across two entries; once per op
        // and type is fine.
        for b in [throttles(throttle(.read, .bytesPerSecond, [(8, 0, 1000), (8, 0, 2000)])),
                  throttles(throttle(.read, .bytesPerSecond, [(8, 0, 1000)]), throttle(.read, .bytesPerSecond, [(8, 0, 2000)]))] {
            let err = lmctfyError { try h.checkSpec(spec(blockio: b)) }
            #expect(err?.code == .invalidArgument && err?.message.contains("device 8:0 has two limits") == true, "\(String(describing: err))")
        }
        #expect(lmctfyError { try h.checkSpec(spec(blockio: throttles(throttle(.read, .bytesPerSecond, [(8, 0, 1000)]),
                                                                      throttle(.write, .bytesPerSecond, [(8, 0, 1000)])))) } == nil)
        let weights = B(deviceLimitSet: B.DeviceLimitSet(deviceLimits: [B.DeviceLimit(device: B.Device(major: 8, minor: 0), limit: 10),
                                                                        B.DeviceLimit(device: B.Device(major: 8, minor: 0), limit: 20)]))
        #expect(lmctfyError { try h.checkSpec(spec(blockio: weights)) }?.message.contains("device 8:0 is given twice") == true)
    }
}

@Suite struct BlockIoApplyTests {
    let h = BlockIoHandler()

    @Test func v1DiffWritesTheRules() throws {
        let f = try FakeContainer.v1()
        let b = throttles(throttle(.read, .bytesPerSecond, [(254, 0, 1_048_576)]), throttle(.write, .ioPerSecond, [(254, 0, 100)]))
        #expect(describe(try h.plan(b, policy: .diff, dirs: f.dirs, dir: f.dir("blkio"))) == [
            "blkio.throttle.read_bps_device <- \"254:0 1048576\"", "blkio.throttle.write_iops_device <- \"254:0 100\"",
        ])
        try h.apply(spec(blockio: b), policy: .diff, dirs: f.dirs)
        #expect(try f.value("blkio", "blkio.throttle.read_bps_device") == "254:0 1048576")
        #expect(try f.value("blkio", "blkio.throttle.write_iops_device") == "254:0 100")
    }

    @Test func v1ReplaceClearsRulesNotInTheSpec() throws {
        let f = try FakeContainer.v1()
        try f.seed("blkio", ["blkio.throttle.read_bps_device": "8:0 1000\n254:0 5\n", "blkio.throttle.write_iops_device": "254:0 7\n"])
        let b = throttles(throttle(.read, .bytesPerSecond, [(254, 0, 2000)]))
        #expect(describe(try h.plan(b, policy: .replace, dirs: f.dirs, dir: f.dir("blkio"))) == [
            "blkio.throttle.read_bps_device <- \"8:0 0\"", "blkio.throttle.read_bps_device <- \"254:0 2000\"",
            "blkio.throttle.write_iops_device <- \"254:0 0\"",
        ])
    }

    @Test func v1Weights() throws {
        let f = try FakeContainer.v1()
        try f.seed("blkio", ["blkio.weight": "500\n", "blkio.weight_device": "8:0 300\n"])
        let b = B(deviceLimitSet: B.DeviceLimitSet(defaultLimit: 20, deviceLimits: [B.DeviceLimit(device: B.Device(major: 254, minor: 0), limit: 80)]))
        #expect(describe(try h.plan(b, policy: .replace, dirs: f.dirs, dir: f.dir("blkio"))) == [
            "blkio.weight <- \"200\"", "blkio.weight_device <- \"8:0 0\"", "blkio.weight_device <- \"254:0 800\"",
        ])
        // REPLACE without weights goes back to the kernel default.
        #expect(describe(try h.plan(B(), policy: .replace, dirs: f.dirs, dir: f.dir("blkio"))) == [
            "blkio.weight <- \"500\"", "blkio.weight_device <- \"8:0 0\"",
        ])
    }

    @Test func v2Throttles() throws {
        let f = try FakeContainer.v2()
        let b = throttles(throttle(.read, .bytesPerSecond, [(254, 0, 1_048_576)]), throttle(.write, .ioPerSecond, [(254, 0, 0)]))
        // DIFF: only the keys given; 0 removes the limit.
        #expect(describe(try h.plan(b, policy: .diff, dirs: f.dirs, dir: f.dir("unified"))) == ["io.max <- \"254:0 rbps=1048576 wiops=max\""])
        // REPLACE: the weight back to its default, every key spelled out,
        // and devices no longer listed cleared.
        try f.seed("unified", ["io.max": "8:0 rbps=1000 wbps=max riops=max wiops=max\n"])
        #expect(describe(try h.plan(b, policy: .replace, dirs: f.dirs, dir: f.dir("unified"))) == [
            "io.weight <- \"default 100\"",
            "io.max <- \"8:0 rbps=max riops=max wbps=max wiops=max\"",
            "io.max <- \"254:0 rbps=1048576 riops=max wbps=max wiops=max\"",
        ])
    }

    @Test func v2Weights() throws {
        let f = try FakeContainer.v2()
        try f.seed("unified", ["io.weight": "default 100\n8:0 300\n"])
        let b = B(deviceLimitSet: B.DeviceLimitSet(defaultLimit: 50, deviceLimits: [B.DeviceLimit(device: B.Device(major: 254, minor: 0), limit: 2)]))
        let replaced = describe(try h.plan(b, policy: .replace, dirs: f.dirs, dir: f.dir("unified")))
        #expect(replaced == [
            "io.weight <- \"default 5000\"", "io.weight <- \"8:0 default\"", "io.weight <- \"254:0 200\"",
        ])
        #expect(describe(try h.plan(B(), policy: .diff, dirs: f.dirs, dir: f.dir("unified"))) == [])
    }
}

@Suite struct BlockIoReadTests {
    let h = BlockIoHandler()

    @Test func v1Spec() throws {
        let f = try FakeContainer.v1()
        var s = ContainerSpec()
        try h.readSpec(into: &s, dirs: f.dirs)
        #expect(s.blockio == B())
        try f.seed("blkio", ["blkio.throttle.read_bps_device": "8:0 1000\n254:0 5\n", "blkio.throttle.write_iops_device": "254:0 7\n"])
        try h.readSpec(into: &s, dirs: f.dirs)
        #expect(s.blockio == throttles(throttle(.read, .bytesPerSecond, [(8, 0, 1000), (254, 0, 5)]), throttle(.write, .ioPerSecond, [(254, 0, 7)])))
    }

    @Test func v2Spec() throws {
        let f = try FakeContainer.v2()
        try f.seed("unified", ["io.max": "254:0 rbps=1048576 wbps=max riops=max wiops=30\n", "io.weight": "default 5000\n8:0 200\n"])
        var s = ContainerSpec()
        try h.readSpec(into: &s, dirs: f.dirs)
        var expected = throttles(throttle(.read, .bytesPerSecond, [(254, 0, 1_048_576)]), throttle(.write, .ioPerSecond, [(254, 0, 30)]))
        expected.deviceLimitSet = B.DeviceLimitSet(defaultLimit: 50, deviceLimits: [B.DeviceLimit(device: B.Device(major: 8, minor: 0), limit: 2)])
        #expect(s.blockio == expected)
    }

    @Test func v1Stats() throws {
        let f = try FakeContainer.v1()
        try f.seed("blkio", [
            "blkio.throttle.io_service_bytes": "254:0 Read 4096\n254:0 Write 8192\n254:0 Sync 0\n254:0 Async 12288\n254:0 Discard 0\n254:0 Total 12288\n7:0 Read 1\n7:0 Write 0\nTotal 12289\n",
            "blkio.throttle.io_serviced": "254:0 Read 1\n254:0 Write 2\n254:0 Total 3\nTotal 3\n",
        ])
        var st = ContainerStats()
        try h.stats(into: &st, type: .summary, dirs: f.dirs)
        #expect(st.blockio == BlockIoStats(deviceStats: [
            BlockIoStats.DeviceStats(major: 7, minor: 0, readBytes: 1, writeBytes: 0),
            BlockIoStats.DeviceStats(major: 254, minor: 0, readBytes: 4096, writeBytes: 8192, readIos: 1, writeIos: 2),
        ]))
    }

    @Test func v2Stats() throws {
        let f = try FakeContainer.v2()
        try f.seed("unified", ["io.stat": "254:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n"])
        var st = ContainerStats()
        try h.stats(into: &st, type: .full, dirs: f.dirs)
        #expect(st.blockio == BlockIoStats(deviceStats: [
            BlockIoStats.DeviceStats(major: 254, minor: 0, readBytes: 4096, writeBytes: 8192, readIos: 1, writeIos: 2),
        ]))
    }
}

private typealias D = DeviceSpec

private func rule(_ p: D.DevicePermission?, _ t: D.DeviceType?, _ a: [D.DeviceAccess], _ major: Int64? = nil, _ minor: Int64? = nil) -> D.DeviceRestrictions {
    D.DeviceRestrictions(permission: p, type: t, access: a, major: major, minor: minor)
}

private func devices(_ rules: D.DeviceRestrictions...) -> D {
    D(restrictionsSet: D.DeviceRestrictionsSet(restrictions: rules))
}

@Suite struct DeviceHandlerTests {
    let h = DeviceHandler()

    @Test func ruleLines() throws {
        #expect(try DeviceHandler.line(rule(.allow, .deviceChar, [.mknod, .read, .write], 1, 3)) == "c 1:3 rwm")
        #expect(try DeviceHandler.line(rule(.deny, .deviceAll, [.write, .read, .mknod])) == "a *:* rwm")
        #expect(try DeviceHandler.line(rule(.allow, .deviceBlock, [.read], 8)) == "b 8:* r")
        #expect(try DeviceHandler.line(rule(.allow, .deviceBlock, [.read], 8, -1)) == "b 8:* r")
    }

    /// -1 (or absent) is "any"; another negative number is refused, not
    /// widened to "any": `major:-5 minor:3` granted `c *:3`, every char
    /// device of minor 3.
    @Test func negativeDeviceNumbersOtherThanAnyAreRefused() throws {
        let f = try FakeContainer.v1()
        for (major, minor, field, value) in [(Int64(-5), Int64(3), "major", Int64(-5)), (1, -2, "minor", -2)] {
            let d = devices(rule(.allow, .deviceChar, [.read], 1, 3), rule(.allow, .deviceChar, [.read], major, minor))
            let err = lmctfyError { try h.validate(spec(device: d), dirs: f.dirs) }
            #expect(err == LmctfyError(.invalidArgument, "Invalid device restriction specification: \(field) \(value) (a device number, or -1 or absent for any)"))
            #expect(try f.value("devices", "devices.allow") == "")
        }
    }

    /// The kernel reads "a" as every device with every access: a DEVICE_ALL
    /// rule asking for less (READ only, or one major) granted (or denied)
    /// everything. Refused before anything is written.
    @Test func aNarrowerDeviceAllRuleIsRefused() throws {
        let f = try FakeContainer.v1()
        for r in [rule(.allow, .deviceAll, [.read]), rule(.deny, .deviceAll, [.write, .read]),
                  rule(.allow, .deviceAll, [.read, .write, .mknod], 1), rule(.allow, .deviceAll, [.read, .write, .mknod], -1, 3)] {
            let err = lmctfyError { try h.validate(spec(device: devices(rule(.allow, .deviceChar, [.read], 1, 3), r)), dirs: f.dirs) }
            #expect(err?.code == .invalidArgument && err?.message.contains("DEVICE_ALL rule covers every device") == true, "\(r)")
            #expect(try f.value("devices", "devices.allow") == "")
        }
        #expect(try DeviceHandler.line(rule(.allow, .deviceAll, [.read, .write, .mknod], -1, -1)) == "a *:* rwm")
        // A device number the kernel cannot hold.
        let big = lmctfyError { _ = try DeviceHandler.line(rule(.allow, .deviceChar, [.read], 4_294_967_296, 3)) }
        #expect(big?.code == .invalidArgument, "\(String(describing: big))")
    }

    @Test func invalidRules() throws {
        let f = try FakeContainer.v1()
        let bad = [
            rule(nil, .deviceChar, [.read], 1, 3),
            rule(.allow, nil, [.read], 1, 3),
            rule(.allow, .deviceChar, [], 1, 3),
            rule(.allow, .deviceChar, [.read, .write, .mknod, .read], 1, 3),
        ]
        for r in bad {
            // A bad rule after a good one: nothing is written.
            let d = devices(rule(.allow, .deviceChar, [.read], 1, 3), r)
            let err = lmctfyError { try h.validate(spec(device: d), dirs: f.dirs) }
            #expect(err == LmctfyError(.invalidArgument, "Invalid device restriction specification."))
            #expect(lmctfyError { _ = try h.plan(d, policy: .diff, dir: f.dir("devices")) } != nil)
            #expect(try f.value("devices", "devices.allow") == "")
        }
    }

    @Test func v2IsUnimplemented() throws {
        let f = try FakeContainer.v2()
        let err = lmctfyError { try h.validate(spec(device: devices(rule(.allow, .deviceAll, [.read]))), dirs: f.dirs) }
        #expect(err == LmctfyError(.unimplemented, "device rules need eBPF on cgroup v2, not implemented"))
    }

    @Test func replaceDeniesEverythingFirst() throws {
        let f = try FakeContainer.v1()
        let d = devices(rule(.allow, .deviceChar, [.read, .write, .mknod], 1, 3), rule(.deny, .deviceChar, [.mknod], 1, 3),
                        rule(.allow, .deviceBlock, [.read], 8))
        #expect(describe(try h.plan(d, policy: .replace, dir: f.dir("devices"))) == [
            "devices.deny <- \"a\"", "devices.allow <- \"c 1:3 rwm\"", "devices.deny <- \"c 1:3 m\"", "devices.allow <- \"b 8:* r\"",
        ])
        #expect(describe(try h.plan(d, policy: .diff, dir: f.dir("devices"))).first == "devices.allow <- \"c 1:3 rwm\"")
        try h.apply(spec(device: devices(rule(.allow, .deviceChar, [.read], 1, 5))), policy: .diff, dirs: f.dirs)
        #expect(try f.value("devices", "devices.allow") == "c 1:5 r")
    }

    /// A container that allows only listed devices gets only the
    /// difference: what a rule loses denied, then what one gains allowed;
    /// nothing it keeps is denied, and "a" is never written (the kernel
    /// refuses it in a cgroup with children).
    @Test func aListOfAllowedDevicesChangesByItsDifference() throws {
        let f = try FakeContainer.v1()
        try f.seed("devices", ["devices.list": "c 1:3 rwm\nc 1:5 rw\nb 8:* r\n"])
        let dir = f.dir("devices")
        let keep = devices(rule(.allow, .deviceChar, [.read, .write, .mknod], 1, 3), rule(.allow, .deviceChar, [.read, .write], 1, 5),
                           rule(.allow, .deviceBlock, [.read], 8))
        #expect(describe(try h.plan(keep, policy: .replace, dir: dir)) == [], "a replace that changes nothing writes nothing")
        let change = devices(rule(.allow, .deviceChar, [.read, .write, .mknod], 1, 3), rule(.deny, .deviceChar, [.write, .mknod], 1, 3),
                             rule(.allow, .deviceChar, [.read], 1, 8))
        #expect(describe(try h.plan(change, policy: .replace, dir: dir)) == [
            "devices.deny <- \"b 8:* r\"", "devices.deny <- \"c 1:3 wm\"", "devices.deny <- \"c 1:5 rw\"", "devices.allow <- \"c 1:8 r\"",
        ])
        // DIFF from what it has; a deny of every device empties the list.
        #expect(describe(try h.plan(devices(rule(.deny, .deviceChar, [.mknod], 1, 3), rule(.allow, .deviceChar, [.write], 1, 8)),
                                    policy: .diff, dir: dir)) == ["devices.deny <- \"c 1:3 m\"", "devices.allow <- \"c 1:8 w\""])
        #expect(describe(try h.plan(devices(rule(.deny, .deviceAll, [.read, .write, .mknod]), rule(.allow, .deviceBlock, [.read], 8)),
                                    policy: .diff, dir: dir)) == ["devices.deny <- \"c 1:3 rwm\"", "devices.deny <- \"c 1:5 rw\""])
        // Every device allowed, asked or had: one write per rule.
        #expect(describe(try h.plan(devices(rule(.allow, .deviceAll, [.read, .write, .mknod])), policy: .replace, dir: dir))
                == ["devices.deny <- \"a\"", "devices.allow <- \"a *:* rwm\""])
    }

    /// A deny the v1 kernel would not apply (it takes access away only from
    /// a rule of the same numbers) is refused, saying which allowed rule is
    /// in the way: one inside a wider allowed rule, one over narrower ones,
    /// from a list the container has or one the spec makes from nothing.
    @Test func aDenyTheKernelWouldNotApplyIsRefused() throws {
        let f = try FakeContainer.v1()
        try f.seed("devices", ["devices.list": "c 1:* rw\nb 8:3 r\n"])
        let dir = f.dir("devices")
        for (d, policy, wider) in [
            (devices(rule(.deny, .deviceChar, [.write], 1, 3)), UpdatePolicy.diff, "c 1:* rw"),
            (devices(rule(.deny, .deviceBlock, [.read], 8)), .diff, "b 8:3 r"),
            (devices(rule(.allow, .deviceChar, [.read, .write], 1), rule(.deny, .deviceChar, [.write], 1, 3)), .replace, "c 1:* rw"),
        ] {
            let err = lmctfyError { _ = try h.plan(d, policy: policy, dir: dir) }
            #expect(err?.code == .invalidArgument && err?.message.contains("while \"\(wider)\" is allowed") == true, "\(String(describing: err))")
        }
        // Other access, other numbers, or the same rule: applied as before.
        #expect(describe(try h.plan(devices(rule(.deny, .deviceChar, [.mknod], 1, 3), rule(.deny, .deviceChar, [.write], 2, 3),
                                            rule(.deny, .deviceChar, [.write], 1)), policy: .diff, dir: dir)) == ["devices.deny <- \"c 1:* w\""])
        // From a container that allows every device: the spec's own list.
        let all = try FakeContainer.v1()
        try all.seed("devices", ["devices.list": "a *:* rwm\n"])
        let err = lmctfyError {
            _ = try h.plan(devices(rule(.deny, .deviceAll, [.read, .write, .mknod]), rule(.allow, .deviceChar, [.read, .write], 1),
                                   rule(.deny, .deviceChar, [.write], 1, 3)), policy: .diff, dir: all.dir("devices"))
        }
        #expect(err?.code == .invalidArgument && err?.message.contains("while \"c 1:* rw\" is allowed") == true, "\(String(describing: err))")
        #expect(describe(try h.plan(devices(rule(.deny, .deviceChar, [.write], 1, 3)), policy: .diff, dir: all.dir("devices")))
                == ["devices.deny <- \"c 1:3 w\""], "every device allowed: a deny is an exception the kernel keeps")
    }

    /// A container with children cannot be told "a" (EINVAL from the
    /// kernel): refused before anything is written, saying why.
    @Test func everyDeviceInAContainerWithChildrenIsRefusedFirst() throws {
        let f = try FakeContainer.v1()
        let dir = f.dir("devices")
        #expect(mkdir(dir.path + "/child", 0o755) == 0)
        let err = lmctfyError { _ = try h.plan(devices(rule(.allow, .deviceChar, [.read], 1, 3)), policy: .replace, dir: dir) }
        #expect(err?.code == .failedPrecondition && err?.message.contains("while it has subcontainers") == true, "\(String(describing: err))")
        #expect(describe(try h.plan(devices(rule(.allow, .deviceChar, [.read], 1, 3)), policy: .diff, dir: dir)) == ["devices.allow <- \"c 1:3 r\""])
    }

    @Test func readBack() throws {
        let f = try FakeContainer.v1()
        try f.seed("devices", ["devices.list": "c 1:3 rwm\nb 8:* r\na *:* w\n"])
        var s = ContainerSpec()
        try h.readSpec(into: &s, dirs: f.dirs)
        #expect(s.device == devices(rule(.allow, .deviceChar, [.mknod, .read, .write], 1, 3), rule(.allow, .deviceBlock, [.read], 8),
                                    rule(.allow, .deviceAll, [.write])))
        try f.blank("devices", ["devices.list"])
        try h.readSpec(into: &s, dirs: f.dirs)
        #expect(s.device == devices(rule(.deny, .deviceAll, [.read, .write, .mknod])))
    }
}

@Suite struct PidsHandlerTests {
    /// -1 or 1...PID_MAX_LIMIT; above it the kernel refuses pids.max with
    /// EINVAL, which came back as 14 (UNAVAILABLE) after the create had
    /// begun: now 3 before anything is made.
    @Test(arguments: [Int64(0), -2, PidsHandler.maxLimit + 1, .max])
    func outOfRangeLimitsAreRefused(_ limit: Int64) throws {
        let f = try FakeContainer.v1()
        var s = ContainerSpec()
        s.pids = PidsSpec(limit: limit)
        let err = lmctfyError { try PidsHandler().validate(s, dirs: f.dirs) }
        #expect(err == LmctfyError(.invalidArgument, "pids.limit must be -1 (unlimited) or 1 to 4194304 (the kernel's PID_MAX_LIMIT), not \(limit)"))
    }

    @Test(arguments: [Int64(-1), 1, PidsHandler.maxLimit])
    func limitsInRangeAreTaken(_ limit: Int64) throws {
        let f = try FakeContainer.v1()
        var s = ContainerSpec()
        s.pids = PidsSpec(limit: limit)
        #expect(lmctfyError { try PidsHandler().validate(s, dirs: f.dirs) } == nil)
    }
}
