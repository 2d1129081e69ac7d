// Container-name resolution (Sources/Lmctfy/ContainerName.swift).
//
// Input: the base name (the caller's container), a 0 byte, then the name to
// resolve; without a 0 byte the base is the root. The base is itself
// resolved first (an invalid base means the root).
// Properties, for every name that resolves:
//  - no segment is empty, ".", ".." or contains "/"; each is at most
//    maxSegmentLength bytes, starts with an alphanumeric and uses only
//    [A-Za-z0-9_.-]; path is "/" + the segments joined by "/";
//  - the result is a fixed point: resolving its path (from any base) gives it back;
//  - an absolute name does not depend on the base; a relative one resolves
//    as base.path + "/" + name does from the root;
// and a name with a character outside [A-Za-z0-9_./-] never resolves.
import Lmctfy

func isAlnum(_ u: UInt8) -> Bool {
    (u >= 0x61 && u <= 0x7A) || (u >= 0x41 && u <= 0x5A) || (u >= 0x30 && u <= 0x39)
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzNames(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = inputBytes(data, size)
    var base = ContainerName.root
    var rawBytes = bytes[...]
    if let zero = bytes.firstIndex(of: 0) {
        let b = String(decoding: bytes[..<zero], as: UTF8.self)
        base = (try? ContainerName.resolve(b, relativeTo: .root)) ?? .root
        rawBytes = bytes[(zero + 1)...]
    }
    let raw = String(decoding: rawBytes, as: UTF8.self)
    let name: ContainerName
    do {
        name = try ContainerName.resolve(raw, relativeTo: base)
    } catch {
        return 0
    }
    require(raw.utf8.allSatisfy { isAlnum($0) || $0 == 0x5F || $0 == 0x2D || $0 == 0x2E || $0 == 0x2F },
            "\(raw.debugDescription) resolved despite a character outside [A-Za-z0-9_./-]")
    for segment in name.components {
        require(!segment.isEmpty && segment != "." && segment != ".." && !segment.contains("/"),
                "\(raw.debugDescription) from \(base) resolved to \(name.components) (segment \(segment.debugDescription))")
        require(segment.utf8.count <= ContainerName.maxSegmentLength, "\(raw.debugDescription): a segment of \(segment.utf8.count) bytes")
        require(isAlnum(segment.utf8.first!), "\(raw.debugDescription): segment \(segment.debugDescription) starts with a non-alphanumeric")
        require(segment.utf8.allSatisfy { isAlnum($0) || $0 == 0x5F || $0 == 0x2D || $0 == 0x2E },
                "\(raw.debugDescription): segment \(segment.debugDescription) has a bad character")
    }
    require(name.path == "/" + name.components.joined(separator: "/"), "path \(name.path) for \(name.components)")
    require(!name.path.contains("//") && !name.path.hasSuffix("/") || name.isRoot, "path \(name.path) not clean")

    // A resolved name is a fixed point, whatever the base.
    let again = try? ContainerName.resolve(name.path, relativeTo: base)
    require(again == name, "resolving \(name.path) (from \(raw.debugDescription), base \(base.path)) gave \(String(describing: again))")
    let fromRoot = try? ContainerName.resolve(name.path, relativeTo: .root)
    require(fromRoot == name, "resolving \(name.path) from the root gave \(String(describing: fromRoot))")

    if raw.hasPrefix("/") {
        require((try? ContainerName.resolve(raw, relativeTo: .root)) == name, "\(raw.debugDescription) depends on the base")
    } else {
        let joined = base.path + "/" + raw
        if joined.utf8.count <= ContainerName.maxLength {
            let direct = try? ContainerName.resolve(joined, relativeTo: .root)
            require(direct == name, "\(raw.debugDescription) from \(base.path) is \(name.path) but \(joined) is \(String(describing: direct))")
        }
    }
    return 0
}
