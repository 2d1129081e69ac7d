/// lmctfy's version, shared by every program: `lmctfy version`, the agent's
/// MachineInfo and its start-up log line.
public enum LmctfyVersion {
    /// The version string, e.g. "0.6.0-swift".
    public static let string = "0.6.0-swift"
}
