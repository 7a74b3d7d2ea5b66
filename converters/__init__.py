"""Model importers and exporters. They emit and read edgedl IR only; they know nothing of kernels."""
