"""Internal helpers: atomic writes, every use of a private torch/Ignite/tensorboardX API, old paths."""
