// Container events: OOM, memory usage threshold, container empty (D10).
// Each registration is a Watch with one pollable descriptor, so an event
// loop (the agent's libuv loop) can poll it; NotificationCenter runs a
// listener thread for callback-style use; the CLI blocks on Watch.wait.
// The kernel side is each cgroup driver's EventSource:
//
//                 v1                                     v2
//  OOM            eventfd on memory.oom_control          inotify on memory.events (oom_kill grows)
//  threshold      eventfd on memory.usage_in_bytes       memory.current polled every 50 ms (v2 has
//                                                        no threshold notification)
//  empty          cgroup.procs polled every 50 ms        inotify on cgroup.events (populated 0)
//                 (recursively)
// A container destroyed while watched delivers NOT_FOUND (D5).
import CLmctfyShims
import Glibc
import LmctfyProto
import LmctfySystem

/// One registration: a pollable descriptor for an event loop, and `wait`
/// for a blocking caller. The kernel side is the cgroup version's
/// EventSource (see the drivers). Not thread-safe: one thread drives it.
public final class Watch: @unchecked Sendable {
    public enum Kind: Sendable, Equatable {
        case oom
        case memoryThreshold(Int64)
        case containerEmpty
    }

    public let container: ContainerName
    public let kind: Kind
    /// Readable when there may be something to collect with `collect()`.
    public var fd: Int32 { source?.fd ?? -1 }
    /// The cgroup directory whose existence is checked (the watched one).
    private let watchedDir: CgroupDir
    private var source: (any EventSource)?

    init(container: ContainerName, kind: Kind, source: any EventSource, watchedDir: CgroupDir) {
        self.container = container
        self.kind = kind
        self.source = source
        self.watchedDir = watchedDir
    }

    /// Closes the descriptor; the watch delivers nothing more.
    public func close() { source = nil }

    /// The error a watch reports once its container is gone (D5).
    static func gone(_ dir: CgroupDir) -> LmctfyError {
        .notFound("Container of \(dir.path) was destroyed while a notification was registered")
    }

    /// After `fd` was readable: how many events happened (0: nothing yet).
    /// Throws NOT_FOUND once the container is gone (D5).
    public func collect() throws(LmctfyError) -> Int {
        guard let source else { return 0 }
        do {
            return try source.collect()
        } catch where error.code == .notFound {
            throw .notFound("Container \"\(container)\" was destroyed while a notification was registered")
        }
    }

    /// Blocks until at least one event (returns how many), the timeout
    /// (returns 0), or the container's destruction (throws NOT_FOUND).
    public func wait(timeoutMs: Int32 = -1) throws(LmctfyError) -> Int {
        let deadline = Self.nowMs() + Int64(timeoutMs)
        while true {
            if source?.pendingImmediately == true { return try collect() }
            let left = timeoutMs < 0 ? 1000 : deadline - Self.nowMs()
            if timeoutMs >= 0 && left <= 0 { return 0 }
            let ready: Bool
            do { ready = try EventFds.waitReadable(fd, timeoutMs: Int32(min(1000, left))) } catch {
                throw error.lmctfy(.internal, "Waiting for the notification failed")
            }
            if ready {
                let n = try collect()
                if n > 0 { return n }
            } else if try !watchedDir.exists() {
                throw .notFound("Container \"\(container)\" was destroyed while a notification was registered")
            }
        }
    }

    static func nowMs() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000
    }

    // MARK: Making watches

    static func make(api: ContainerApi, container: Container, spec: EventSpec) throws(LmctfyError) -> Watch {
        let kinds = [spec.oom != nil, spec.memoryThreshold != nil, spec.containerEmpty != nil].filter { $0 }.count
        guard kinds == 1 else {
            throw .invalidArgument("An EventSpec must name exactly one event (oom, memory_threshold or container_empty)")
        }
        let driver = api.driver
        let kind: Kind
        let dir: CgroupDir
        if spec.containerEmpty != nil {
            kind = .containerEmpty
            dir = container.tasksDir
        } else {
            if let threshold = spec.memoryThreshold {
                guard let usage = threshold.usage else { throw .invalidArgument("memory_threshold needs a usage") }
                kind = .memoryThreshold(usage)
            } else {
                kind = .oom
            }
            // Memory events: the nearest memory-isolating container (or the root).
            guard let d = try driver.memoryEventDir(container.name) else {
                throw .notFound("No memory hierarchy to watch for \"\(container.name)\"")
            }
            dir = d
        }
        let source = try driver.eventSource(kind, dir: dir, container: container)
        return Watch(container: container.name, kind: kind, source: source, watchedDir: dir)
    }

    static func timerFd(_ ms: Int) throws(LmctfyError) -> Int32 {
        do { return try EventFds.timer(periodMs: ms) } catch { throw error.lmctfy(.internal, "Failed to create a timer") }
    }
}

extension Container {
    /// Starts watching for one event kind; poll `fd` or call `wait`.
    public func watch(_ spec: EventSpec) throws(LmctfyError) -> Watch {
        guard try api.exists(name) else { throw .notFound("Container \"\(name)\" does not exist") }
        return try Watch.make(api: api, container: self, spec: spec)
    }
}

/// Callback-style notifications: register → id; the callback runs on the
/// center's listener thread for every event until unregistered; a destroyed
/// container delivers NOT_FOUND once and ends the registration (D5).
/// Thread-safety: register/unregister from any thread; call shutdown() when done.
public final class NotificationCenter: @unchecked Sendable {
    public typealias Callback = @Sendable (Result<Int, LmctfyError>) -> Void

    private let lock = Lock()
    private var watches: [Int: (Watch, Callback)] = [:]
    private var nextId = 1
    private let epfd: Int32
    private let wake: Int32
    private var thread: pthread_t?
    private var stopping = false

    public init() throws(LmctfyError) {
        epfd = epoll_create1(Int32(EPOLL_CLOEXEC))
        guard epfd >= 0 else { throw SystemError("epoll_create1", "", errno).lmctfy(.internal, "Notifications") }
        do { wake = try EventFds.eventfd() } catch { throw error.lmctfy(.internal, "Notifications") }
        add(fd: wake, id: 0)
    }

    /// The listener thread keeps the center alive until `shutdown()`.
    deinit {
        Glibc.close(epfd)
        Glibc.close(wake)
    }

    /// Stops the listener thread (waiting for a callback in progress) and
    /// drops every registration without calling back.
    public func shutdown() {
        let t = lock.locked { () -> pthread_t? in
            stopping = true
            for (watch, _) in watches.values { watch.close() }
            watches.removeAll()
            return thread
        }
        EventFds.signal(wake)
        if let t, pthread_self() != t { pthread_join(t, nil) }
    }

    private func add(fd: Int32, id: Int) {
        var ev = epoll_event()
        ev.events = EPOLLIN.rawValue
        ev.data.u64 = UInt64(id)
        _ = epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev)
    }

    /// Registers for `spec` on `container`; ids start at 1.
    public func register(_ container: Container, _ spec: EventSpec, callback: @escaping Callback) throws(LmctfyError) -> Int {
        let watch = try container.watch(spec)
        let id = lock.locked { () -> Int in
            let id = nextId
            nextId += 1
            watches[id] = (watch, callback)
            return id
        }
        add(fd: watch.fd, id: id)
        startIfNeeded()
        EventFds.signal(wake)
        return id
    }

    /// Stops a registration; INVALID_ARGUMENT for an unknown id.
    public func unregister(_ id: Int) throws(LmctfyError) {
        let removed = lock.locked { watches.removeValue(forKey: id) }
        guard let (watch, _) = removed else { throw .invalidArgument("No notification is registered with id \(id)") }
        _ = epoll_ctl(epfd, EPOLL_CTL_DEL, watch.fd, nil)
        watch.close()
    }

    private func startIfNeeded() {
        lock.locked {
            guard thread == nil else { return }
            let box = Unmanaged.passRetained(self)
            var t = pthread_t()
            pthread_create(&t, nil, { arg in
                let center = Unmanaged<NotificationCenter>.fromOpaque(arg!).takeRetainedValue()
                center.listen()
                return nil
            }, box.toOpaque())
            thread = t
        }
    }

    private func listen() {
        var events = [epoll_event](repeating: epoll_event(), count: 32)
        while true {
            // Timer-driven watches need no tick here: their fds become readable.
            let n = epoll_wait(epfd, &events, Int32(events.count), 200)
            if lock.locked({ stopping }) { return }
            if n < 0 {
                if errno == EINTR { continue }
                let all = lock.locked { () -> [(Watch, Callback)] in
                    let a = Array(watches.values)
                    watches.removeAll()
                    return a
                }
                for (_, cb) in all { cb(.failure(.init(.cancelled, "The notification listener failed"))) }
                return
            }
            for i in 0..<Int(n) {
                let id = Int(events[i].data.u64)
                if id == 0 { _ = try? EventFds.readCounter(wake); continue }
                guard let (watch, callback) = lock.locked({ watches[id] }) else { continue }
                do {
                    let count = try watch.collect()
                    if count > 0 { callback(.success(count)) }
                } catch {
                    _ = lock.locked { watches.removeValue(forKey: id) }
                    _ = epoll_ctl(epfd, EPOLL_CTL_DEL, watch.fd, nil)
                    watch.close()
                    callback(.failure(error))
                }
            }
        }
    }
}

