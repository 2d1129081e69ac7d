// Thin entry point: everything lives in LmctfyCommands.
import LmctfyCommands

LmctfyCLI.main()
