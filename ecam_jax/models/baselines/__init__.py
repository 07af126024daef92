"""The compared networks of the paper's Table I other than U-Net: each a Flax module with
its options beside it (`<network>_options.py`), registered in ecam_jax/models/registry.py,
so that `:variant=NAME` selects it like any variant (docs/adding-a-model.md)."""
