"""Running a trained step model outside the training code: ``OnnxStep`` (onnxruntime, the [export] extra)."""
