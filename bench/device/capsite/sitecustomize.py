"""Simulate a smaller card: cap the CUDA caching allocator of every Python process at $CAP_GIB GiB.

Put this folder on PYTHONPATH (bench.calibrate does, for each case's process). An allocation past the cap raises
the same OutOfMemoryError as a full card. Importing torch here costs each process about a second, so only when asked.
"""
import os

if os.environ.get("CAP_GIB"):
    import torch

    if torch.cuda.is_available():
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(float(os.environ["CAP_GIB"]) * 2**30 / total, 0)
