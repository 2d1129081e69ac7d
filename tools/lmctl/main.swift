// Thin entry point: everything lives in LmctlCommands.
import LmctlCommands

LmctlCLI.main()
