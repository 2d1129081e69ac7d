// Every valid corpus file: our text parser + protobuf-c encoder must produce
// the bytes `protoc --encode` produces, and our printer must print what
// `protoc --decode` prints for those bytes.
import Foundation
import LmctfyProto
import Testing

struct CorpusCase: CustomTestStringConvertible, Sendable {
    let name: String
    let type: String
    let text: String
    var testDescription: String { name }

    static func load(_ folder: String) -> [CorpusCase] {
        let dir = Repo.corpus.appendingPathComponent(folder)
        let names = (try? FileManager.default.contentsOfDirectory(atPath: dir.path)) ?? []
        return names.filter { $0.hasSuffix(".txtpb") }.sorted().map { name in
            let text = (try? String(contentsOf: dir.appendingPathComponent(name), encoding: .utf8)) ?? ""
            let first = text.split(separator: "\n", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
            let type = first.hasPrefix("# type: ")
                ? String(first.dropFirst("# type: ".count)).trimmingCharacters(in: .whitespaces)
                : "containers.lmctfy.ContainerSpec"
            return CorpusCase(name: name, type: type, text: text)
        }
    }
}

@Suite struct CorpusTests {
    static let valid = CorpusCase.load("valid")

    @Test func corpusIsLargeEnough() {
        #expect(Self.valid.count >= 40, "the valid corpus must hold at least 40 specs")
    }

    @Test(arguments: valid)
    func textEncodesLikeProtoc(_ c: CorpusCase) throws {
        let descriptor = try #require(ProtoRegistry.shared.message(fullName: c.type), "unknown type \(c.type)")
        let message = try TextFormat.parse(c.text, as: descriptor)
        let ours = try message.serializedBytes()
        let reference = try Oracle.encode(c.text, type: c.type)
        #expect(reference.status == 0, "protoc rejected \(c.name): \(reference.stderr)")
        #expect(ours == [UInt8](reference.stdout), "\(c.name): binary differs from protoc --encode")

        // Printing: decode protoc's bytes with protobuf-c, print, compare.
        let decoded = try DynamicMessage(serializedBytes: [UInt8](reference.stdout), as: descriptor)
        #expect(decoded == message)
        let printed = TextFormat.print(decoded)
        #expect(printed == (try Oracle.decode([UInt8](reference.stdout), type: c.type)), "\(c.name): print differs from protoc --decode")

        // And what we print parses back to the same message.
        #expect(try TextFormat.parse(printed, as: descriptor) == message)
    }
}
