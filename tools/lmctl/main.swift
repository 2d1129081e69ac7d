// Thin entry point: everything lives in LmctlCommands.
import Glibc
import LmctlCommands
import LmctfySystem

// Before any socket is opened (Sys.openStandardDescriptors).
guard Sys.openStandardDescriptors() else { exit(1) }
LmctlCLI.main()
