// `lmctfy notify memory oom <name>`, `notify memory threshold <name> <bytes>`,
// `notify container empty <name>`: wait for the event and print
// notification_status="0". With -f, keep following: one line per event until
// interrupted or the container goes away (then exit 5, D5).
import LmctfyBackend
import LmctfyProto
import LmctfySystem

enum NotifyCommand {
    static let oom = Leaf(
        name: "oom", synopsis: "[-f] <container name>",
        summary: "Wait for an out-of-memory event (-f: keep following).",
        minArguments: 1, maxArguments: 1,
        action: .withApi { api, call in try wait(api, call, EventSpec(oom: EventSpec.Oom()), "oom") })

    static let threshold = Leaf(
        name: "threshold", synopsis: "[-f] <container name> <bytes>",
        summary: "Wait until memory usage crosses <bytes> (-f: keep following).",
        minArguments: 2, maxArguments: 2,
        action: .withApi { api, call in
            guard let bytes = UInt64(call.arguments[1]) else {
                throw LmctfyError.invalidArgument("\"\(call.arguments[1])\" is not a number of bytes")
            }
            // A valid uint64 the spec's int64 cannot carry: said as such.
            guard bytes <= UInt64(Int64.max) else {
                throw LmctfyError.invalidArgument("\(bytes) bytes is out of range: a memory threshold is at most \(Int64.max)")
            }
            return try wait(api, call, EventSpec(memoryThreshold: .init(usage: Int64(bytes))), "memory_threshold")
        })

    static let empty = Leaf(
        name: "empty", synopsis: "[-f] <container name>",
        summary: "Wait until no task is left in a container or below it (-f: keep following).",
        minArguments: 1, maxArguments: 1,
        action: .withApi { api, call in
            try wait(api, call, EventSpec(containerEmpty: EventSpec.ContainerEmpty()), "container_empty")
        })

    static func wait(_ api: any ContainerBackend, _ call: Invocation, _ spec: EventSpec, _ event: String) throws -> CommandOutput {
        // The JSON line names the container as the backend has it once the
        // watch is in place: absolute (it echoed the name as typed, "web"
        // for /web). lmctl's agent resolves a relative name itself.
        var watched = call.arguments[0]
        func line() -> CommandOutput {
            let json = "{\"notification_status\":0,\"container\":\(JSONFormat.quote(watched)),\"event\":\"\(event)\"}"
            return CommandOutput(entries: [.pair(key: "notification_status", value: "0")], json: json)
        }
        let follow = call.flags.force
        var rendered: [UInt8]?
        // Until the output breaks (a write fails, a pipe's reader goes):
        // looked at after each event and at least once a second.
        let out = SendableSink(call.stdout)
        try api.notify(call.arguments[0], event: spec,
                       cancellation: follow ? NotifyCancellation(pollMs: 1000) { out.sink.isBroken } : nil,
                       onWatching: { (name: String) throws(LmctfyError) in watched = name },
                       onEvent: { (n: Int) throws(LmctfyError) -> Bool in
                           guard follow else { return false }
                           let text = rendered ?? line().render(call.flags.style)
                           rendered = text
                           for _ in 0..<n { call.stdout.write(text) }
                           return !call.stdout.isBroken
                       })
        return line()
    }
}

/// A sink asked from the cancellation check (which the backend may call
/// from its waiting thread: the CLI's only one).
private final class SendableSink: @unchecked Sendable {
    let sink: any ByteSink
    init(_ sink: any ByteSink) { self.sink = sink }
}
