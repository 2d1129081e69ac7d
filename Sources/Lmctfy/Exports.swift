// The backend protocol and its vocabulary (UpdatePolicy, StatsType, ...)
// live in LmctfyBackend so that front doors without CL1 (lmctl) can share
// them; CL1's own files use them as if they were declared here.
@_exported import LmctfyBackend
