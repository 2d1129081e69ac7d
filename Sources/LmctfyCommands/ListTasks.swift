// `lmctfy list pids|tids [-r] [<name>]`: cgroup.procs / tasks, sorted and
// (with -r) merged over every subcontainer.
import LmctfyBackend

enum ListTasksCommand {
    static let pids = leaf("pids", key: "pid", threads: false)
    static let tids = leaf("tids", key: "tid", threads: true)

    static func leaf(_ name: String, key: String, threads: Bool) -> Leaf {
        Leaf(name: name, synopsis: "[-r] [<container name>]",
             summary: "List the \(threads ? "threads" : "processes") of a container (-r: and of its subcontainers).",
             minArguments: 0, maxArguments: 1,
             action: .withApi { api, call in
                 let ids = try api.listTasks(call.argument(0), threads: threads, recursive: call.flags.recursive)
                 var out = CommandOutput.list(key: key, jsonKey: name, ids.map(String.init))
                 out.json = "{\"\(name)\":[\(ids.map(String.init).joined(separator: ","))]}"
                 return out
             })
    }
}
