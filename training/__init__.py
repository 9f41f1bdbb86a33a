"""Tessera training: fine-tune, evaluate and export encoders into the `models/` contract.

Training imports the runtime's contract (`app.core.manifest`) and inference code to check
parity; the runtime never imports training.
"""
