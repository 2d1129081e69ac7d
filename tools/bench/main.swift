// lmctfy-bench: lifecycle throughput of the CL1 library on the real kernel.
// Run through tools/run-bench, which builds it in release mode and runs the
// C baseline (same mkdir/write/rmdir work) in the same run for the ratio.
//
// usage: lmctfy-bench create-destroy N
import Glibc
import Lmctfy
import LmctfyProto
import LmctfySystem

func now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) * 1e6 + Double(ts.tv_nsec) / 1e3
}

func fail(_ message: String) -> Never {
    let line = "lmctfy-bench: \(message)\n"
    _ = line.withCString { write(2, $0, strlen($0)) }
    exit(1)
}

let args = CommandLine.arguments
guard args.count == 3, args[1] == "create-destroy", let n = Int(args[2]), n > 0 else {
    fail("usage: lmctfy-bench create-destroy N")
}

do {
    let api = try ContainerApi.detect()
    let spec = try ContainerSpec(textFormat: "cpu { limit: 500 max_limit: 1000 } memory { limit: 104857600 }")
    let names = try (0..<n).map { try ContainerName.resolve("/lmctfy_bench_\(getpid())_\($0)", relativeTo: .root) }
    let t0 = now()
    for name in names { try api.create(name, spec: spec) }
    let t1 = now()
    for name in names { try api.destroy(name) }
    let t2 = now()
    print("swift create_us=\(String(format1: (t1 - t0) / Double(n))) destroy_us=\(String(format1: (t2 - t1) / Double(n))) total_us=\(String(format1: (t2 - t0) / Double(n)))")
} catch {
    fail("\(error)")
}

extension String {
    init(format1 v: Double) {
        let tenths = Int((v * 10).rounded())
        self = "\(tenths / 10).\(tenths % 10)"
    }
}
