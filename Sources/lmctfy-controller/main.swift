// Thin entry point: everything lives in LmctfyController.
import LmctfyController

ControllerMain.main()
