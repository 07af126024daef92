"""Exporting a trained model for deployment (`--mode=export`, docs/export.md).

An export folder holds the inference network twice, as `model.onnx` (ONNX Runtime, Triton,
MONAI Deploy: `onnx_model.py`) and as `model.stablehlo` (JAX alone, no ecam_jax:
`stablehlo.py`), and `preprocessing.json`, the input and output contract and the
provenance (`contract.py`). `folder.py` writes and verifies a folder, `network.py` says
what network it holds, `runtimes.py` runs either artifact and `segment.py` segments a
volume from the contract alone, as `python -m ecam_jax.export_check` does.
"""
