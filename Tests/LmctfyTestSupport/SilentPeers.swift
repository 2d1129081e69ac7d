// TCP peers that connect and never say a word (a slowloris, or a port scan
// that holds its sockets): what a daemon does with them, without a client
// library in the way.
import Glibc
import LmctfyRPC

public final class SilentPeers {
    /// The sockets, in the order they connected; -1 once the daemon closed it.
    public private(set) var fds: [Int32]
    /// What the daemon wrote to each before it closed it (a GOAWAY saying why).
    public private(set) var said: [[UInt8]]

    /// Connects `count` sockets to 127.0.0.1:`port`, one after the other.
    public init(port: UInt16, count: Int) throws {
        fds = []
        said = Array(repeating: [], count: count)
        for _ in 0..<count { fds.append(try RpcSocket.connectTCP(host: "127.0.0.1", port: port)) }
    }

    deinit { for fd in fds where fd >= 0 { close(fd) } }

    /// Closes socket `i` from our side.
    public func hangUp(_ i: Int) {
        guard fds[i] >= 0 else { return }
        close(fds[i])
        fds[i] = -1
    }

    /// Indices of the sockets closed (by the daemon, or hung up).
    public var closed: [Int] { fds.indices.filter { fds[$0] < 0 } }
    /// Indices of the sockets still open.
    public var open: [Int] { fds.indices.filter { fds[$0] >= 0 } }

    /// Reads what the daemon sends until at least `n` sockets are closed or
    /// `waitMs` have passed; then once more without waiting, so a socket the
    /// daemon closed by then is seen as closed.
    public func waitUntilClosed(atLeast n: Int, waitMs: Int) {
        var waited = 0
        repeat {
            let step = closed.count >= n ? 0 : 20
            pollOnce(timeoutMs: Int32(step))
            waited += step
            if step == 0 { return }
        } while waited < waitMs
        pollOnce(timeoutMs: 0)
    }

    private func pollOnce(timeoutMs: Int32) {
        let live = open
        guard !live.isEmpty else { return }
        var p = live.map { pollfd(fd: fds[$0], events: Int16(POLLIN), revents: 0) }
        guard poll(&p, nfds_t(p.count), timeoutMs) > 0 else { return }
        var buf = [UInt8](repeating: 0, count: 4096)
        for (k, i) in live.enumerated() where p[k].revents != 0 {
            let got = read(fds[i], &buf, buf.count)
            if got > 0 {
                said[i] += buf[0..<got]
            } else {
                close(fds[i])
                fds[i] = -1
            }
        }
    }
}
