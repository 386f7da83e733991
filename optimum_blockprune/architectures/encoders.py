"""Encoders. BERT is post-norm: the residual add sits inside `BertSelfOutput` / `BertOutput`
(`LayerNorm(dense(x) + input)`), so a gate on a branch leaves the LayerNorm running at 0: a proxy, not removal.
At block granularity the gate therefore interpolates the whole layer, h + alpha * (layer(h) - h), which at 0 is
exactly the layer removed; sublayer gates stay on the dense outputs before each add-and-norm."""

from __future__ import annotations

from .base import ArchitectureAdapter
from .registry import register_architecture

ENCODERS = (
    ArchitectureAdapter(
        "bert",
        layers_attribute="encoder.layer",
        branches=("attention.output.dense", "output.dense"),
        block_kind="encoder",
        task="feature-extraction",
        gate_zero_removes=False,
        block_gate="interpolate",
        notes="post-norm encoder: one gate on the whole layer, h + α(layer(h) − h), exact at 0; sublayer gates on "
        "the dense outputs before each add-and-norm (a proxy)",
    ),
)

for _adapter in ENCODERS:
    register_architecture(_adapter)
