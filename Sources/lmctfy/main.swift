// Thin entry point: the verbs live in LmctfyCommands; this wires CL1 on this
// machine in as their backend.
import Lmctfy
import LmctfyCommands
import LmctfySystem

// `nil` names mean the process that ran lmctfy (the calling shell), as in the
// original; a foreground `run` replaces lmctfy with the command.
let callerPid = Sys.getppid()
LmctfyCLI.main(environment: CLIEnvironment(
    makeBackend: { () throws(LmctfyError) in
        try LocalBackend.detect(callerPid: callerPid, foreground: LocalBackend.execForeground)
    },
    initMachine: LocalBackend.prepareMachine))
