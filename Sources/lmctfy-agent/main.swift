// Thin entry point: everything lives in LmctfyAgent.
import LmctfyAgent

AgentMain.main()
