// The inventory's index of known containers agrees with a plain dictionary
// scanned in full, whatever order names come and go in.
@testable import LmctfyAgent
import Testing

struct KnownContainersTests {
    @Test func theIndexAgreesWithAFullScan() {
        var known = KnownContainers()
        var model: [String: Bool] = [:]
        var rng = SystemRandomNumberGenerator()
        let names = ["/a", "/a/b", "/a/b/c", "/a/b/d", "/a/bb", "/ab", "/ab/x", "/z", "/z/y/x", "/"]
        func scan(_ path: String) -> [String] {
            model.keys.filter { $0 == path || $0.hasPrefix(path + "/") }.sorted(by: >)
        }
        for step in 0..<5_000 {
            let name = names.randomElement(using: &rng)!
            let value: Bool? = Int.random(in: 0..<3, using: &rng) == 0 ? nil : Bool.random(using: &rng)
            known[name] = value
            model[name] = value
            for path in names {
                #expect(known.atOrBelow(path) == scan(path), "step \(step), \(path)")
                #expect(known[path] == model[path])
            }
            #expect(known.count == model.count && Set(known.keys) == Set(model.keys))
            if step % 500 == 0 { known = KnownContainers(model) }
        }
    }

    @Test func aChangeSaysWhichNamesItTouched() {
        var known = KnownContainers(["/a": false, "/a/b": true, "/c": false])
        known.startTracking()
        known["/a/b"] = nil
        known["/a/b"] = false  // back, with another value
        known["/d"] = false
        known["/c"] = false    // as it was
        known["/e"] = nil      // was not there
        let edits = known.stopTracking()
        #expect(edits.count == 4)
        #expect(edits["/a/b"] == .some(true) && edits["/d"] == .some(nil) && edits["/c"] == .some(false) && edits["/e"] == .some(nil))
        known["/f"] = true
        #expect(known.stopTracking().isEmpty, "not tracking")
    }
}
