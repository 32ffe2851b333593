"""A model's towers exported to ONNX beside a library, run by ONNX Runtime without importing torch.

`import torch, open_clip` costs seconds: more than a whole text query, and more than embedding the few new
pictures of a daily `search index`. The towers are exported once, from PyTorch, checked against it, and
kept beside the library (``sidecar``); later runs load them with ONNX Runtime (``runtime``).

- ``sidecar.py``: where an export lives and its state (ready, refused or missing); standard library only;
- ``runtime.py``: opening an ONNX Runtime session;
- ``export.py``: tracing a tower to ONNX and moving the files into place (needs torch and `onnx`);
- ``image.py``: the image tower, exported and run (the text tower's are in ``encoders.text``).
"""
