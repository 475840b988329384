"""Export: TorchScript and ONNX files with the preprocessing they expect."""
