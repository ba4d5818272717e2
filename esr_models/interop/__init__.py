"""Other tools: ONNX export, spandrel's architecture registry."""
