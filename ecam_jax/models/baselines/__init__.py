"""The compared networks of the paper's Table I other than U-Net, one file each, built to
the models' contract (docs/adding-a-model.md) and registered in ecam_jax.models.MODELS and
ecam_jax.models.variants.NETWORKS, so that `:variant=NAME` selects them like any variant."""
