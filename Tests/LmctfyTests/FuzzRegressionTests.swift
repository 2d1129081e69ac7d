// Inputs the fuzz targets (tools/fuzz) found, as unit tests: each is also in
// tools/fuzz/regressions/<target>/, which tools/fuzz/run replays.
import Lmctfy
import LmctfySystem
import Testing

@Suite struct FuzzRegressionTests {
    /// tools/fuzz/regressions/names/relative-name-past-maxLength: a relative
    /// name joined onto a long base made a name longer than maxLength, which
    /// resolve then refuses as input (so the result was not a fixed point,
    /// and cgroup paths under it could pass PATH_MAX).
    @Test func aResolvedNameIsNeverLongerThanMaxLength() throws {
        let base = try ContainerName.resolve(
            "/" + Array(repeating: String(repeating: "a", count: 255), count: 12).joined(separator: "/"),
            relativeTo: .root)
        #expect(base.path.utf8.count == ContainerName.maxLength)
        do {
            let name = try ContainerName.resolve("b", relativeTo: base)
            #expect(name.path.utf8.count <= ContainerName.maxLength, "resolved to \(name.path.utf8.count) bytes")
            #expect((try? ContainerName.resolve(name.path, relativeTo: .root)) == name)
        } catch {
            #expect(error.code == .invalidArgument)
        }
    }
}
