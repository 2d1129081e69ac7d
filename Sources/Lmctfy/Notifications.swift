// Container events: OOM, memory usage threshold, container empty (D10).
// Each registration is a Watch with one pollable descriptor, so an event
// loop (the agent's libuv loop) can poll it; NotificationCenter runs a
// listener thread for callback-style use; the CLI blocks on Watch.wait.
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

/// One registration's kernel side. Not thread-safe: one thread drives it.
public final class Watch: @unchecked Sendable {
    public enum Kind: Sendable, Equatable {
        case oom
        case memoryThreshold(Int64)
        case containerEmpty
    }

    public let container: ContainerName
    public let kind: Kind
    /// Readable when there may be something to collect with `collect()`.
    public let fd: Int32
    private let api: ContainerApi
    /// The cgroup directory whose existence is checked (the watched one).
    private let watchedDir: CgroupDir
    private var lastCount: Int64 = 0
    private var wasAbove = false
    private var wasEmpty = false
    private var closed = false
    private var pendingImmediate = false

    init(api: ContainerApi, container: ContainerName, kind: Kind, fd: Int32, watchedDir: CgroupDir) {
        self.api = api
        self.container = container
        self.kind = kind
        self.fd = fd
        self.watchedDir = watchedDir
    }

    deinit { close() }

    public func close() {
        if !closed {
            Glibc.close(fd)
            closed = true
        }
    }

    /// After `fd` was readable: how many events happened (0: nothing yet).
    /// Throws NOT_FOUND once the container is gone (D5).
    public func collect() throws(LmctfyError) -> Int {
        let gone = { (w: Watch) -> LmctfyError in
            .notFound("Container \"\(w.container)\" was destroyed while a notification was registered")
        }
        if pendingImmediate {
            pendingImmediate = false
            return 1
        }
        switch (api.version, kind) {
        case (.v1, .oom), (.v1, .memoryThreshold):
            let n: UInt64
            do { n = try EventFds.readCounter(fd) } catch { throw error.lmctfy(.cancelled, "Reading the notification failed") }
            // Removing the cgroup also signals the eventfd.
            if !watchedDir.exists { throw gone(self) }
            return Int(n)
        case (.v2, .oom):
            let (_, isGone) = EventFds.drainInotify(fd)
            if isGone || !watchedDir.exists { throw gone(self) }
            let count = (try? watchedDir.readKeyValues("memory.events")["oom_kill"]) ?? lastCount
            defer { lastCount = count }
            return Int(max(0, count - lastCount))
        case (.v2, .containerEmpty):
            let (_, isGone) = EventFds.drainInotify(fd)
            if isGone || !watchedDir.exists { throw gone(self) }
            let empty = (try? watchedDir.readKeyValues("cgroup.events")["populated"]) == 0
            defer { wasEmpty = empty }
            return empty && !wasEmpty ? 1 : 0
        case (.v2, .memoryThreshold(let threshold)):
            _ = try? EventFds.readCounter(fd)
            guard watchedDir.exists else { throw gone(self) }
            let usage = (try? watchedDir.readInt("memory.current")) ?? nil ?? 0
            let above = usage >= threshold
            defer { wasAbove = above }
            return above != wasAbove ? 1 : 0
        case (.v1, .containerEmpty):
            _ = try? EventFds.readCounter(fd)
            guard api.exists(container) else { throw gone(self) }
            let empty = (try? Container(name: container, api: api).processes(recursive: true).isEmpty) ?? false
            defer { wasEmpty = empty }
            return empty && !wasEmpty ? 1 : 0
        }
    }

    /// Blocks until at least one event (returns how many), the timeout
    /// (returns 0), or the container's destruction (throws NOT_FOUND).
    public func wait(timeoutMs: Int32 = -1) throws(LmctfyError) -> Int {
        let deadline = Self.nowMs() + Int64(timeoutMs)
        while true {
            if pendingImmediate { return try collect() }
            let left = timeoutMs < 0 ? 1000 : deadline - Self.nowMs()
            if timeoutMs >= 0 && left <= 0 { return 0 }
            let ready: Bool
            do { ready = try EventFds.waitReadable(fd, timeoutMs: Int32(min(1000, left))) } catch {
                throw error.lmctfy(.internal, "Waiting for the notification failed")
            }
            if ready {
                let n = try collect()
                if n > 0 { return n }
            } else if !watchedDir.exists {
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
        let layout = api.layout
        if spec.containerEmpty != nil {
            switch api.version {
            case .v1:
                // The first poll finding it empty is the event.
                let fd = try timer(50)
                return Watch(api: api, container: container.name, kind: .containerEmpty, fd: fd, watchedDir: container.tasksDir)
            case .v2:
                let dir = container.tasksDir
                let fd = try inotify(dir.file("cgroup.events"))
                let w = Watch(api: api, container: container.name, kind: .containerEmpty, fd: fd, watchedDir: dir)
                // Already empty: that is the event.
                w.pendingImmediate = (try? dir.readKeyValues("cgroup.events")["populated"]) == 0
                w.wasEmpty = w.pendingImmediate
                return w
            }
        }
        // Memory events: the nearest memory-isolating container (or the root).
        var memoryOwner = ContainerName.root
        for c in container.name.selfAndAncestors where layout.isolated(c).contains(.memory) {
            memoryOwner = c
            break
        }
        let dir: CgroupDir
        switch api.version {
        case .v1:
            guard let d = memoryOwner.isRoot ? layout.root(.memory) : layout.existingV1Dir(.memory, memoryOwner) else {
                throw .notFound("No memory hierarchy to watch for \"\(container.name)\"")
            }
            dir = d
        case .v2:
            dir = layout.tasksDir(memoryOwner)
        }
        if let threshold = spec.memoryThreshold {
            guard let usage = threshold.usage else { throw .invalidArgument("memory_threshold needs a usage") }
            switch api.version {
            case .v1:
                let fd = try register(dir, target: "memory.usage_in_bytes", args: " \(usage)")
                return Watch(api: api, container: container.name, kind: .memoryThreshold(usage), fd: fd, watchedDir: dir)
            case .v2:
                let fd = try timer(50)
                let w = Watch(api: api, container: container.name, kind: .memoryThreshold(usage), fd: fd, watchedDir: dir)
                w.wasAbove = ((try? dir.readInt("memory.current")) ?? nil ?? 0) >= usage
                return w
            }
        }
        switch api.version {
        case .v1:
            let fd = try register(dir, target: "memory.oom_control", args: "")
            return Watch(api: api, container: container.name, kind: .oom, fd: fd, watchedDir: dir)
        case .v2:
            let fd = try inotify(dir.file("memory.events"))
            let w = Watch(api: api, container: container.name, kind: .oom, fd: fd, watchedDir: dir)
            w.lastCount = (try? dir.readKeyValues("memory.events")["oom_kill"]) ?? 0
            return w
        }
    }

    /// cgroup v1: "<eventfd> <target fd> <args>" into cgroup.event_control.
    private static func register(_ dir: CgroupDir, target: String, args: String) throws(LmctfyError) -> Int32 {
        let efd: Int32
        do { efd = try EventFds.eventfd() } catch { throw error.lmctfy(.internal, "Failed to register listener for the event") }
        let tfd = open(dir.file(target), O_RDONLY | O_CLOEXEC)
        guard tfd >= 0 else {
            let e = errno
            Glibc.close(efd)
            throw SystemError("open", dir.file(target), e).lmctfy(.internal, "Failed to register listener for the event")
        }
        defer { Glibc.close(tfd) }
        do {
            try Sys.writeFile(dir.file("cgroup.event_control"), "\(efd) \(tfd)\(args)")
        } catch {
            Glibc.close(efd)
            throw error.lmctfy(.internal, "Failed to register listener for the event")
        }
        return efd
    }

    private static func timer(_ ms: Int) throws(LmctfyError) -> Int32 {
        do { return try EventFds.timer(periodMs: ms) } catch { throw error.lmctfy(.internal, "Failed to create a timer") }
    }

    private static func inotify(_ path: String) throws(LmctfyError) -> Int32 {
        do { return try EventFds.inotify(watching: path) } catch {
            throw error.lmctfy(error.errno == ENOENT ? .notFound : .internal, "Failed to watch \(path)")
        }
    }
}

extension Container {
    /// Starts watching for one event kind; poll `fd` or call `wait`.
    public func watch(_ spec: EventSpec) throws(LmctfyError) -> Watch {
        guard api.exists(name) else { throw .notFound("Container \"\(name)\" does not exist") }
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

