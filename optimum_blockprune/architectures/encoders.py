"""Encoders. BERT is post-norm: the residual add sits inside `BertSelfOutput` / `BertOutput`
(`LayerNorm(dense(x) + input)`), so the gate scales the dense output before the add-and-norm. A gate at 0 then
leaves the LayerNorm running, which is why gated scores are a proxy there and not an exact removal."""

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
        notes="post-norm encoder: gates on the dense outputs before each add-and-norm",
    ),
)

for _adapter in ENCODERS:
    register_architecture(_adapter)
