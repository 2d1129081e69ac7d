// Thin entry point: the verbs live in LmctfyCommands; this wires CL1 on this
// machine in as their backend.
import Glibc
import Lmctfy
import LmctfyCommands
import LmctfyImages
import LmctfySystem

// Before any file is opened (Sys.openStandardDescriptors).
guard Sys.openStandardDescriptors() else { exit(1) }
// `nil` names mean the process that ran lmctfy (the calling shell), as in the
// original; a foreground `run` replaces lmctfy with the command.
let callerPid = Sys.getppid()
var environment = CLIEnvironment(
    makeBackend: { () throws(LmctfyError) in
        var backend = try LocalBackend.detect(callerPid: callerPid, foreground: LocalBackend.execForeground)
        // lmctfy ends once its verb is done: `run --create`'s signals stay
        // held until then.
        backend.signalsHeldUntilExit = true
        return backend
    },
    initMachine: LocalBackend.prepareMachine)
// The image store at $LMCTFY_IMAGE_ROOT or /var/lib/lmctfy/images.
environment.makeImages = { () throws(LmctfyError) in
    let store = ImageStore()
    try store.checkRoot()
    return store
}
LmctfyCLI.main(environment: environment)
