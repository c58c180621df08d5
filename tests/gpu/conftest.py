"""GPU tests run in their own pytest process on the CUDA machine; Unsloth must be imported before transformers."""
import importlib.util

import torch

if torch.cuda.is_available() and importlib.util.find_spec("unsloth") is not None:
    import unsloth  # noqa: F401
