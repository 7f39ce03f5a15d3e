"""Relevance propagation (LRP) helpers: closed-form neuron relevance at a classifier's last linear layer."""

from __future__ import annotations

from medood.relevance.lrp import last_layer_relevance

__all__ = ["last_layer_relevance"]
