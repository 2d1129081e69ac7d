// One kernel watch per (container, event) however many Notify calls listen
// to it (issue #11): the watcher records each event once, in the event log,
// and every listener streams it from there, so two listeners see one OOM
// with one sequence number instead of recording it twice.
//
// The watcher runs on a thread of its own while at least one listener is
// there (a listener that goes does not take the watch with it); each
// listener waits on the watch's change counter, bumped for every event and
// for the watch's end.
import Glibc
import LmctfyBackend
import LmctfyProto
import LmctfySystem

final class NotifyWatches: Sendable {
    struct Key: Hashable, Sendable {
        let container: String
        let kind: ContainerEventKind
        let threshold: Int64?
    }

    enum State: Sendable {
        case starting
        case watching
        /// The watch is over: the container went (NOT_FOUND), the watch could
        /// not be made, or nobody listened any more (nil).
        case ended(LmctfyError?)
    }

    final class Watch: Sendable {
        let key: Key
        let changes = ChangeCounter()
        let state = Mutexed(State.starting)
        /// Listeners, counted under the registry's lock.
        let listeners = Mutexed(0)
        /// The latest event the watch recorded (a listener joining after an
        /// EMPTY the watch fired because the container was already empty
        /// gets that event too, as a watch of its own would have given it).
        let lastEvent = Mutexed<ContainerEvent?>(nil)

        init(key: Key) { self.key = key }

        func set(_ s: State) {
            state.locked { $0 = s }
            changes.bump()
        }
    }

    private let watches = Mutexed<[Key: Watch]>([:])

    /// Joins the watch of `key`, starting it (through `start`, on a thread
    /// of its own) when it is new or has ended.
    func join(_ key: Key, start: @escaping @Sendable (Watch) -> Void) -> Watch {
        let (watch, isNew): (Watch, Bool) = watches.locked { all in
            if let w = all[key], case .ended = w.state.locked({ $0 }) {
                all[key] = nil
            }
            if let w = all[key] {
                w.listeners.locked { $0 += 1 }
                return (w, false)
            }
            let w = Watch(key: key)
            w.listeners.locked { $0 = 1 }
            all[key] = w
            return (w, true)
        }
        if isNew {
            // No thread (a task limit): the watch ends, its listeners are
            // told; the agent goes on.
            let rc = Threads.tryDetach { start(watch) }
            if rc != 0 {
                end(watch, LmctfyError(.resourceExhausted, "No thread for the watch of \(key.container): pthread_create: \(String(cString: strerror(rc)))"))
            }
        }
        return watch
    }

    /// A listener leaves; the watcher stops at its next check once none is left.
    func leave(_ watch: Watch) {
        watches.locked { _ in watch.listeners.locked { $0 -= 1 } }
    }

    /// The watcher asks whether to go on; when nobody listens the watch is
    /// ended and forgotten (a listener joining later starts a new one).
    func keepWatching(_ watch: Watch) -> Bool {
        watches.locked { all in
            if watch.listeners.locked({ $0 }) > 0 { return true }
            if all[watch.key] === watch { all[watch.key] = nil }
            return false
        }
    }

    /// The watch is over (its thread is done): forgotten, listeners woken.
    func end(_ watch: Watch, _ error: LmctfyError?) {
        watches.locked { all in
            if all[watch.key] === watch { all[watch.key] = nil }
        }
        watch.set(.ended(error))
    }

    /// How many watches run now (for tests).
    var count: Int { watches.locked { $0.count } }
}
