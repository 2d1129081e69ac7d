import Glibc

/// A pthread mutex for small critical sections.
public final class Lock: @unchecked Sendable {
    private var mutex = pthread_mutex_t()

    public init() { pthread_mutex_init(&mutex, nil) }
    deinit { pthread_mutex_destroy(&mutex) }

    public func locked<T>(_ body: () throws -> T) rethrows -> T {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return try body()
    }
}

/// A value behind a lock.
public final class Mutexed<T>: @unchecked Sendable {
    private let lock = Lock()
    private var value: T

    public init(_ value: T) { self.value = value }

    public func locked<R>(_ body: (inout T) throws -> R) rethrows -> R {
        try lock.locked { try body(&value) }
    }
}

/// Plain threads, for work that must not sit on a pool (waiting on events or
/// processes) and for tests that need a second actor.
public enum Threads {
    /// Starts `body` on a new thread; join it with pthread_join.
    public static func start(_ body: @escaping @Sendable () -> Void) -> pthread_t {
        spawn(body, detached: false)
    }

    /// Starts `body` on a new thread nobody joins.
    public static func detach(_ body: @escaping @Sendable () -> Void) {
        _ = spawn(body, detached: true)
    }

    private final class Box: @unchecked Sendable {
        let body: @Sendable () -> Void
        init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    }

    private static func spawn(_ body: @escaping @Sendable () -> Void, detached: Bool) -> pthread_t {
        var t = pthread_t()
        var attr = pthread_attr_t()
        pthread_attr_init(&attr)
        if detached { pthread_attr_setdetachstate(&attr, Int32(PTHREAD_CREATE_DETACHED)) }
        let rc = pthread_create(&t, &attr, { arg in
            Unmanaged<Box>.fromOpaque(arg!).takeRetainedValue().body()
            return nil
        }, Unmanaged.passRetained(Box(body)).toOpaque())
        pthread_attr_destroy(&attr)
        precondition(rc == 0, "pthread_create failed: \(rc)")
        return t
    }
}
