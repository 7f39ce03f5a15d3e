"""Networks trained by medood detectors (plain ``nn.Module``s, ``spatial_dims`` first where it applies)."""

from __future__ import annotations

from medood.networks.nets.ar_cache import KVCache, cached_forward
from medood.networks.nets.multi_exit_resnet import FinalExitClassifier, MultiExitOutput, MultiExitResNet
from medood.networks.nets.token_transformer import TokenTransformer
from medood.networks.nets.vq_tokenizer import SliceTokenizer

__all__ = [
    "FinalExitClassifier",
    "KVCache",
    "MultiExitOutput",
    "MultiExitResNet",
    "SliceTokenizer",
    "TokenTransformer",
    "cached_forward",
]
