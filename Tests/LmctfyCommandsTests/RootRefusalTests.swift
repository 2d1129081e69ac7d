// D7 for every verb that changes a container (issue 9): update, destroy,
// killall (also -r), pause and resume of `/` are refused with 9 before
// anything is read or written. On a fake tree: nothing here needs root.
import Lmctfy
@testable import LmctfyCommands
import LmctfySystem
import Testing

@Suite struct RootRefusalTests {
    let machine: FakeMachine
    init() throws { machine = try FakeMachine() }

    @Test(arguments: [["update", "diff", "/", ""], ["update", "replace", "/", ""], ["update", "diff", "/", "pids:{limit:10}"],
                      ["update", "diff", "..", ""], ["destroy", "/"], ["destroy", "-f", "/"], ["killall", "/"],
                      ["killall", "-r", "/"], ["pause", "/"], ["resume", "/"]])
    func everyMutatingVerbRefusesTheRoot(_ args: [String]) {
        let r = lmctfy(args, in: machine.environment)
        #expect(r.status == 9, "\(args): \(r)")
        #expect(r.stderr.contains("root container \"/\""), "\(r)")
    }

    @Test func killallRecursiveOfTheRootTouchesNoSubcontainer() throws {
        // Before the refusal moved to the front, `killall -r /` emptied every
        // subcontainer (freeze, SIGKILL, thaw) and only then refused `/`.
        try machine.container(["victim"], procs: "2147483000\n", tasks: "2147483000\n")
        let r = machine.run("killall", "-r", "/")
        #expect(r.status == 9, "\(r)")
        #expect(!Sys.exists(machine.freezer + "/victim/freezer.state"), "the victim was frozen")
        #expect(try Sys.readFile(machine.freezer + "/victim/cgroup.procs") == "2147483000\n")
    }
}
