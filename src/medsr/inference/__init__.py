"""Using a model: upscaling of any size (tiling, precision, devices), batch runs, ONNX, hallucination maps.

upscaler.py      the tiled upscalers (PyTorch and onnxruntime) and `load_upscaler`
batch.py         resumable runs over many files (read-ahead, write-behind, ledger, summary)
onnx.py          export to ONNX and the optional onnxruntime packages
hallucination.py maps of where an output is not supported by its input
volume.py        through-plane SR of anisotropic volumes (thick slices made thin), arrays and NIfTI
"""
