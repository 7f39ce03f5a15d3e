"""Small ``nn.Module`` helpers shared by detectors and networks."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ResizableBuffers"]


class ResizableBuffers(nn.Module):
    """Mixin: ``load_state_dict`` resizes the module's own buffers to the shapes in the state dict.

    Fitted statistics have data-dependent shapes (class means, PCA bases, memory banks, stored signatures): an
    unfitted module holds empty placeholders, so every own buffer takes the incoming shape before loading.
    """

    def _load_from_state_dict(  # type: ignore[override]
        self,
        state_dict: dict,
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list,
        unexpected_keys: list,
        error_msgs: list,
    ) -> None:
        for name, buf in self._buffers.items():
            key = prefix + name
            if buf is not None and key in state_dict and state_dict[key].shape != buf.shape:
                incoming = state_dict[key]
                self._buffers[name] = torch.empty(incoming.shape, dtype=incoming.dtype, device=buf.device)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
