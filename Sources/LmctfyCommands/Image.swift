// `lmctfy image import|export|list|remove`: the image store of root
// filesystems for virtual hosts. lmctfy acts on this machine's store
// (LmctfyImages); lmctl on an agent's, the archive streamed from or to the
// file on the caller's machine.
import LmctfyBackend
import LmctfyProto
import LmctfySystem

enum ImageCommand {
    static let importLeaf = Leaf(
        name: "import",
        synopsis: "<archive file> <image name>",
        summary: "Unpack a rootfs tarball (tar, .gz, .xz, .zst, .bz2) into the image store; archives that escape their root are refused.",
        minArguments: 2, maxArguments: 2,
        action: .withoutApi(importImage))

    static let exportLeaf = Leaf(
        name: "export",
        synopsis: "<image name> <archive file>",
        summary: "Write an image back as a tar (gzip for .gz/.tgz, xz for .xz).",
        minArguments: 2, maxArguments: 2,
        action: .withoutApi(exportImage))

    static let listLeaf = Leaf(
        name: "list",
        synopsis: "",
        summary: "List the images, sorted.",
        minArguments: 0, maxArguments: 0,
        action: .withoutApi(listImages))

    static let removeLeaf = Leaf(
        name: "remove",
        synopsis: "<image name>",
        summary: "Remove an image from the store.",
        minArguments: 1, maxArguments: 1,
        action: .withoutApi(removeImage))

    static let menu = Menu(name: "image", children: [
        .leaf(exportLeaf), .leaf(importLeaf), .leaf(listLeaf), .leaf(removeLeaf),
    ])

    static func describe(_ s: ImageSummary) -> CommandOutput {
        CommandOutput(
            entries: [.pair(key: "image", value: s.name), .pair(key: "entries", value: String(s.entries)),
                      .pair(key: "bytes", value: String(s.bytes))],
            json: json(s))
    }

    static func json(_ s: ImageSummary) -> String {
        "{\"name\":\(JSONFormat.quote(s.name)),\"entries\":\(s.entries),\"bytes\":\(s.bytes),\"created\":\(s.created)}"
    }

    @Sendable
    static func importImage(_ call: Invocation) throws -> CommandOutput {
        let store = try call.environment.makeImages()
        return describe(try store.importImage(call.arguments[0], as: call.arguments[1]))
    }

    @Sendable
    static func exportImage(_ call: Invocation) throws -> CommandOutput {
        try call.environment.makeImages().exportImage(call.arguments[0], to: call.arguments[1])
        return .none
    }

    @Sendable
    static func listImages(_ call: Invocation) throws -> CommandOutput {
        let images = try call.environment.makeImages().listImages()
        return CommandOutput(
            entries: images.map { .pair(key: "image", value: $0.name) },
            json: "{\"images\":[\(images.map(json).joined(separator: ","))]}")
    }

    @Sendable
    static func removeImage(_ call: Invocation) throws -> CommandOutput {
        try call.environment.makeImages().removeImage(call.arguments[0])
        return .none
    }
}
