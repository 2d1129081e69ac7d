// Container events: OOM, memory usage threshold, container empty (D10).
// Each registration is a Watch with one pollable descriptor, so an event
// loop (the agent's libuv loop) can poll it; NotificationCenter runs a
// listener thread for callback-style use; the CLI blocks on Watch.wait.
// The kernel side is each cgroup driver's EventSource:
//
//                 v1                                     v2
//  OOM            eventfd on memory.oom_control, counted inotify on memory.events (oom_kill grows)
//                 in its oom_kill (OomControlSource)
//  threshold      eventfd on memory.usage_in_bytes       memory.current polled every 50 ms (v2 has
//                                                        no threshold notification)
//  empty          cgroup.procs polled every 50 ms        inotify on cgroup.events (populated 0)
//                 (recursively)
// A container destroyed while watched delivers NOT_FOUND (D5).
import CLmctfyShims
import Glibc
import LmctfyProto
import LmctfySystem
import Synchronization

/// One registration: a pollable descriptor for an event loop, and `wait`
/// for a blocking caller. The kernel side is the cgroup version's
/// EventSource (see the drivers). Not thread-safe: one thread drives it.
public final class Watch: @unchecked Sendable {
    /// What a Watch waits for (one of an EventSpec's events).
    public enum Kind: Sendable, Equatable {
        /// A process of the container was killed by the OOM killer.
        case oom
        /// Memory usage reached the threshold, in bytes.
        case memoryThreshold(Int64)
        /// The container (with its subcontainers) has no processes left.
        case containerEmpty
        /// Its memory is under pressure (v1: memory.pressure_level at
        /// "medium"; v2: memory.events "high" growing). Not an EventSpec
        /// event: `Container.watchMemoryPressure()` makes it.
        case memoryPressure
    }

    /// The container watched (absolute name).
    public let container: ContainerName
    /// The event watched for.
    public let kind: Kind
    /// Readable when there may be something to collect with `collect()`.
    public var fd: Int32 { source?.fd ?? -1 }
    /// The cgroup directory whose existence is checked (the watched one).
    private let watchedDir: CgroupDir
    private var source: (any EventSource)?
    /// The watched directory's inode when the watch was made: a container
    /// destroyed and made again under its name at once is another
    /// container. Removing a cgroup signals its eventfds, and the check
    /// that it was gone found the new one there: a false OOM or threshold,
    /// then a watch of a deleted cgroup that heard nothing more.
    private let identity: UInt64?
    /// The container's own tasks directory and its identity, when the
    /// events come from another directory (memory events of a container
    /// that does not isolate memory come from its nearest ancestor's):
    /// the container's removal does not touch that one, and a waiter
    /// waited on after the destroy (the CLI's `notify` never ended).
    private let own: (dir: CgroupDir, identity: UInt64?)?

    /// The directories' identities are those of before the source was
    /// made (`Identities`): a container replaced meanwhile is gone for
    /// the watch, which would otherwise watch its successor.
    private init(container: ContainerName, kind: Kind, source: any EventSource, watchedDir: CgroupDir, ownDir: CgroupDir,
                 identities: Identities) {
        self.container = container
        self.kind = kind
        self.source = source
        self.watchedDir = watchedDir
        identity = identities.watched
        own = ownDir == watchedDir ? nil : (ownDir, identities.own)
    }

    /// The watched and own directories' inodes, taken before the kernel
    /// registration is made.
    struct Identities {
        let watched: UInt64?
        let own: UInt64?
        init(_ watched: CgroupDir, _ own: CgroupDir) {
            self.watched = watched.identity
            self.own = own == watched ? self.watched : own.identity
        }
    }

    /// A watch of `kind` on `dir` for `container`: the identities first,
    /// then the source.
    static func make(container: Container, kind: Kind, dir: CgroupDir,
                     source: () throws(LmctfyError) -> any EventSource) throws(LmctfyError) -> Watch {
        let identities = Identities(dir, container.tasksDir)
        return Watch(container: container.name, kind: kind, source: try source(), watchedDir: dir,
                     ownDir: container.tasksDir, identities: identities)
    }

    /// Whether the watched directory is still the one watched (not gone,
    /// not another made under its name).
    private var isSameDirectory: Bool {
        !ownIsGone && (identity == nil || watchedDir.identity == identity)
    }

    /// Whether the container's own directory, watched apart from its
    /// events' directory, is gone (or another now).
    private var ownIsGone: Bool {
        guard let own, own.identity != nil else { return false }
        return own.dir.identity != own.identity
    }

    /// NOT_FOUND when the container is gone though its events' directory
    /// (an ancestor's) is not, so its descriptor says nothing of it: for a
    /// caller polling the descriptor to look at now and then.
    public func goneWithoutSignal() -> LmctfyError? {
        guard ownIsGone else { return nil }
        return .notFound("Container \"\(container)\" was destroyed while a notification was registered")
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
        let n: Int
        do {
            n = try source.collect()
        } catch where error.code == .notFound {
            throw .notFound("Container \"\(container)\" was destroyed while a notification was registered")
        }
        guard isSameDirectory else {
            throw .notFound("Container \"\(container)\" was destroyed while a notification was registered (one made again under its name is another container)")
        }
        return n
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
            } else if try !watchedDir.exists() || !isSameDirectory {
                throw .notFound("Container \"\(container)\" was destroyed while a notification was registered")
            }
        }
    }

    static func nowMs() -> Int64 { Int64(MonotonicClock.milliseconds()) }

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
                // Usage is never below 0: a threshold of 0 or less is never
                // crossed (v1's kernel took a negative one as a failed
                // registration, "internal").
                guard usage > 0 else {
                    throw .invalidArgument("memory_threshold usage must be more than 0 bytes, not \(usage): it would never be crossed")
                }
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
        return try make(container: container, kind: kind, dir: dir) { () throws(LmctfyError) in
            try driver.eventSource(kind, dir: dir, container: container)
        }
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

    /// Starts watching for memory pressure on the memory this container
    /// uses (its own memory cgroup or the nearest above): the agent's
    /// eviction (CL2) wakes on it.
    public func watchMemoryPressure() throws(LmctfyError) -> Watch {
        guard try api.exists(name) else { throw .notFound("Container \"\(name)\" does not exist") }
        guard let dir = try api.driver.memoryEventDir(name) else {
            throw .notFound("No memory hierarchy to watch for \"\(name)\"")
        }
        let driver = api.driver
        return try Watch.make(container: self, kind: .memoryPressure, dir: dir) { () throws(LmctfyError) in
            try driver.eventSource(.memoryPressure, dir: dir, container: self)
        }
    }
}

/// Callback-style notifications: register → id; the callback runs on the
/// center's listener thread for every event until unregistered; a destroyed
/// container delivers NOT_FOUND once and ends the registration (D5).
/// Thread-safety: register/unregister from any thread; call shutdown() when done.
public final class NotificationCenter: Sendable {
    /// Called on the listener thread with the number of events of one
    /// delivery, or with the error that ended the registration (NOT_FOUND when
    /// the container was destroyed, D5). Must not block for long: one thread
    /// delivers every registration's events.
    public typealias Callback = @Sendable (Result<Int, LmctfyError>) -> Void

    private struct State {
        var watches: [Int: (Watch, Callback)] = [:]
        var nextId = 1
        var thread: pthread_t?
        var stopping = false
    }

    private let state = Mutex(State())
    private let epoll: Epoll
    private let wake: Int32

    /// A center with no registrations; its listener thread starts with the
    /// first `register`. INTERNAL if the epoll or wake-up eventfd cannot be made.
    public init() throws(LmctfyError) {
        do {
            epoll = try Epoll()
            wake = try EventFds.eventfd()
            try epoll.add(wake, key: 0)
        } catch {
            throw error.lmctfy(.internal, "Notifications")
        }
    }

    /// The listener thread keeps the center alive until `shutdown()`.
    deinit { Glibc.close(wake) }

    /// Stops the listener thread (waiting for a callback in progress) and
    /// drops every registration without calling back.
    public func shutdown() {
        let t = state.locked { s -> pthread_t? in
            s.stopping = true
            for (watch, _) in s.watches.values { watch.close() }
            s.watches.removeAll()
            return s.thread
        }
        EventFds.signal(wake)
        if let t, pthread_self() != t { pthread_join(t, nil) }
    }

    /// Registers for `spec` on `container`; ids start at 1.
    public func register(_ container: Container, _ spec: EventSpec, callback: @escaping Callback) throws(LmctfyError) -> Int {
        let watch = try container.watch(spec)
        let id = state.locked { s -> Int in
            let id = s.nextId
            s.nextId += 1
            s.watches[id] = (watch, callback)
            return id
        }
        do { try epoll.add(watch.fd, key: UInt64(id)) } catch {
            _ = state.locked { $0.watches.removeValue(forKey: id) }
            throw error.lmctfy(.internal, "Failed to watch for the event")
        }
        startIfNeeded()
        EventFds.signal(wake)
        return id
    }

    /// Stops a registration; INVALID_ARGUMENT for an unknown id.
    public func unregister(_ id: Int) throws(LmctfyError) {
        guard let (watch, _) = state.locked({ $0.watches.removeValue(forKey: id) }) else {
            throw .invalidArgument("No notification is registered with id \(id)")
        }
        epoll.remove(watch.fd)
        watch.close()
    }

    private func startIfNeeded() {
        state.locked { s in
            guard s.thread == nil else { return }
            s.thread = Threads.start { self.listen() }
        }
    }

    private func listen() {
        while true {
            // Timer-driven watches need no tick here: their fds become readable.
            let ready: [UInt64]
            do { ready = try epoll.wait(timeoutMs: 200) } catch {
                let all = state.locked { s -> [Callback] in
                    let a = s.watches.values.map(\.1)
                    s.watches.removeAll()
                    return a
                }
                for cb in all { cb(.failure(.init(.cancelled, "The notification listener failed"))) }
                return
            }
            if state.locked({ $0.stopping }) { return }
            // Nothing came: a container gone whose events come from an
            // ancestor's directory says so no other way.
            if ready.isEmpty {
                let gone = state.locked { s in s.watches.compactMap { id, w in w.0.goneWithoutSignal().map { (id, w.0, w.1, $0) } } }
                for (id, watch, callback, error) in gone {
                    _ = state.locked { $0.watches.removeValue(forKey: id) }
                    epoll.remove(watch.fd)
                    watch.close()
                    callback(.failure(error))
                }
            }
            for key in ready {
                let id = Int(key)
                if id == 0 { _ = try? EventFds.readCounter(wake); continue }
                guard let (watch, callback) = state.locked({ $0.watches[id] }) else { continue }
                do {
                    let count = try watch.collect()
                    if count > 0 { callback(.success(count)) }
                } catch {
                    _ = state.locked { $0.watches.removeValue(forKey: id) }
                    epoll.remove(watch.fd)
                    watch.close()
                    callback(.failure(error))
                }
            }
        }
    }
}
