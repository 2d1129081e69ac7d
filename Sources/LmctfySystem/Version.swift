/// lmctfy's version, shared by every program: `lmctfy version`, the agent's
/// MachineInfo and its start-up log line.
public enum LmctfyVersion {
    /// The version string, e.g. "0.6.0-swift".
    public static let string = "0.6.0-swift"
    /// What `--lmctfy_version_long` adds to the version line.
    public static let details = "a Swift rewrite of lmctfy 0.5.0 (its command line, its ContainerSpec and field numbers), for cgroup v1 and v2\n"
}
