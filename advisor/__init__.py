"""npu-advise: profiling-driven optimization advisor for PyTorch training on Ascend NPUs."""
__version__ = "0.1.0"
