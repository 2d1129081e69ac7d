// protoc as the oracle: the reference encoder and printer our codecs must
// match byte for byte. It is a hard requirement of the suite (tools/test
// installs protobuf-compiler); a missing protoc fails the tests loudly.
import Foundation
import Testing

enum Repo {
    /// The repository root, found from this file's path.
    static let root: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static let protoDir = root.appendingPathComponent("proto")
    static let corpus = root.appendingPathComponent("Tests/LmctfyProtoTests/Corpus")
}

struct ProcessResult {
    var status: Int32
    var stdout: Data
    var stderr: String
}

enum Oracle {
    static let protoFiles: [String] = {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: Repo.protoDir.path)) ?? []
        return names.filter { $0.hasSuffix(".proto") }.sorted()
    }()

    static func run(_ args: [String], stdin: Data) throws -> ProcessResult {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = args
        p.currentDirectoryURL = Repo.protoDir
        let inPipe = Pipe(), outPipe = Pipe(), errPipe = Pipe()
        p.standardInput = inPipe
        p.standardOutput = outPipe
        p.standardError = errPipe
        try p.run()
        // Write stdin from another thread so a large output can't deadlock us.
        let writer = Thread {
            inPipe.fileHandleForWriting.write(stdin)
            try? inPipe.fileHandleForWriting.close()
        }
        writer.start()
        let out = outPipe.fileHandleForReading.readDataToEndOfFile()
        let err = errPipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return ProcessResult(status: p.terminationStatus, stdout: out, stderr: String(decoding: err, as: UTF8.self))
    }

    /// `protoc --encode=type`: text on stdin, binary out.
    static func encode(_ text: String, type: String) throws -> ProcessResult {
        try run(["protoc", "-I.", "--encode=\(type)"] + protoFiles, stdin: Data(text.utf8))
    }

    /// `protoc --decode=type`: binary on stdin, text out.
    static func decode(_ bytes: [UInt8], type: String) throws -> String {
        let r = try run(["protoc", "-I.", "--decode=\(type)"] + protoFiles, stdin: Data(bytes))
        guard r.status == 0 else { throw OracleError("protoc --decode=\(type) failed: \(r.stderr)") }
        return String(decoding: r.stdout, as: UTF8.self)
    }
}

struct OracleError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}
