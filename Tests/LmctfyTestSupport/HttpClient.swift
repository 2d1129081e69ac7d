// A bare HTTP/1.1 client for the metrics endpoints' tests: one request per
// connection, bytes sent as given (malformed ones included), the answer
// read until the server closes.
import Glibc
import LmctfySystem

/// One HTTP exchange on a fresh connection: sends `request` as is (then,
/// with `halfClose`, shuts the sending side), reads until the server closes
/// (or 5 s pass). nil status when the server closed
/// without an answer.
public func httpExchange(port: UInt16? = nil, unixPath: String? = nil, _ request: [UInt8], halfClose: Bool = false) throws -> (status: Int?, headers: String, body: [UInt8]) {
    let fd: Int32
    if let unixPath {
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        let address = try UnixSocketAddress(unixPath, for: "connect")
        let rc = address.withSockaddr { connect(fd, $0, $1) }
        guard rc == 0 else { close(fd); throw SystemError("connect", unixPath, errno) }
    } else {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_port = port!.bigEndian
        a.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
        let rc = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard rc == 0 else { close(fd); throw SystemError("connect", "127.0.0.1:\(port!)", errno) }
    }
    defer { close(fd) }
    var timeout = timeval(tv_sec: 5, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    var sent = 0
    while sent < request.count {
        let n = request[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        if n <= 0 { break }  // the server may answer and close before reading it all
        sent += n
    }
    // The request is all there is: the server sees EOF after it.
    if halfClose { shutdown(fd, Int32(SHUT_WR)) }
    var got: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if n <= 0 { break }
        got += buffer[0..<n]
    }
    guard let end = got.firstRange(of: Array("\r\n\r\n".utf8)) else { return (nil, String(decoding: got, as: UTF8.self), []) }
    let head = String(decoding: got[..<end.lowerBound], as: UTF8.self)
    let status = head.split(separator: " ").dropFirst().first.flatMap { Int($0) }
    return (status, head, Array(got[end.upperBound...]))
}

public func get(_ path: String, port: UInt16? = nil, unixPath: String? = nil) throws -> (status: Int?, headers: String, body: [UInt8]) {
    try httpExchange(port: port, unixPath: unixPath, Array("GET \(path) HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".utf8))
}

