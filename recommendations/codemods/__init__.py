"""Code fixes as libcst transforms, one module per family: loops (vectorized rewrites), fallbacks (CPU-fallback
ops), fused_ops (mx_driving), optimizer (torch_npu fused optimizers), migration (entry-point setup);
diffs turns a rewrite into a unified diff plus content hashes."""
