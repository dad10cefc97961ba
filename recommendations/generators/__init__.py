"""Fix generators and source scanners, one module per family; each registers itself with the decorators
of `npu_advise.recommendations.registry` (read its docstring to add one)."""
