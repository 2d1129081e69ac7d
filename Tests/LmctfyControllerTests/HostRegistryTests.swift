// The inventory's store on its own (no network): a new name-to-key binding
// is kept at once, before any save (as after a SIGKILL), the rest at the
// next save; a save folds the bindings in.
import Glibc
@testable import LmctfyController
import LmctfyProto
import LmctfySystem
import LmctfyTestSupport
import Testing

@Suite struct HostRegistryTests {
    @Test func aBindingSurvivesARestartWithoutASave() throws {
        let dir = "/tmp/lmctfy-hostregistry-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try Sys.mkdir(dir, mode: 0o700)
        defer { _ = removeTree(dir) }
        let store = FileHostStore(path: dir + "/hosts")
        let first = try HostRegistry(store: store)
        _ = try first.register(HostIdentity(hostName: "alpha", cpus: 2), keyId: "key-a", conn: 1)
        // No flush: the controller is killed here.
        let second = try HostRegistry(store: store)
        #expect(second.hosts["alpha"]?.keyId == "key-a" && second.hosts["alpha"]?.state == .hostDisconnected)
        #expect { _ = try second.register(HostIdentity(hostName: "alpha"), keyId: "key-b", conn: 2) }
            throws: { ($0 as? LmctfyError)?.code == .permissionDenied }
        // The rightful key is welcome; a save folds the binding file in.
        _ = try second.register(HostIdentity(hostName: "alpha", cpus: 4), keyId: "key-a", conn: 3)
        second.flush()
        #expect(((try? Sys.readFile(dir + "/hosts.bindings")) ?? "").isEmpty)
        let third = try HostRegistry(store: store)
        #expect(third.hosts["alpha"]?.keyId == "key-a" && third.hosts["alpha"]?.identity?.cpus == 4)
        #expect(third.hosts.count == 1)
    }

    @Test func aDamagedInventoryIsRefusedNotGuessed() throws {
        let dir = "/tmp/lmctfy-hostregistry-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try Sys.mkdir(dir, mode: 0o700)
        defer { _ = removeTree(dir) }
        try Sys.createFile(dir + "/hosts", "\u{ff}\u{ff}garbage", mode: 0o600)
        #expect { _ = try HostRegistry(store: FileHostStore(path: dir + "/hosts")) }
            throws: { ($0 as? LmctfyError)?.code == .dataLoss }
    }
}
