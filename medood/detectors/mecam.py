"""MECAM: multi-exit class activation maps and feature masking (Chen, Li, Shi & Ho, 2025).

Algorithm (methods.md §1.4), for an input ``x`` and a trained :class:`~medood.networks.nets.MultiExitResNet`:

1. one pass gives every exit's class activation map ``M_e``, the exit logits ``l_e = GAP(M_e)`` and the
   feature ``f(x) = GAP(layer4(x))``;
2. the predicted class is ``P = argmax l_4`` (the final exit), the same for every exit;
3. each selected exit's map is up-sampled to the input size (bilinear / trilinear), softmaxed over the classes
   voxel-wise, and its channel ``P`` kept: ``M^_e`` in ``[0, 1]``;
4. the exits are weighted by their own confidence ``c_e = max softmax(l_e)``: ``w_e = c_e / sum_S c``;
5. fused map ``M = clamp(sum_e w_e M^_e, 0, 1)``; masked input ``x' = x * (1 - M)`` (broadcast over channels);
6. ``s(x) = mean_d (f(x) - f(x'))^2``: masking the regions that carry the class evidence changes the features of
   in-distribution inputs more than those of OOD inputs, whose CAMs lack focused evidence.

Feature change (``change``): ``"mse"`` (the paper, above), ``"relative"`` (the MSE over ``mean_d f(x)^2``) or
``"cosine"`` (``1 - cos(f(x), f(x'))``). The two normalised ones do not grow with the feature norm, which the MSE
mostly follows on the demo bundles (``docs/benchmarks/mecam_diagnosis.md``, issue 23).

Score: the paper's ``s`` is higher for in-distribution inputs; medood returns **``-s``** (higher = more OOD).
Cost: two forward passes per input (the plain and the masked one).

Map: the fused CAM ``M`` (float32 ``(B, 1, *S)`` on the input grid) is returned as the map. It is an
**explanation** (where the classifier found evidence for its predicted class), not an anomaly segmentation:
``score_from_map = False``, so the score is never a reduction of the map and no mask threshold is derived from it.

Exits: any non-empty subset of the four exits (``exits``, 0 = shallowest); :meth:`MECAMDetector.score_subsets`
scores many subsets with one unmasked pass (the paper's exit ablation).

References:
    Chen, Li, Shi & Ho, "Unsupervised Out-of-Distribution Detection in Medical Imaging Using Multi-Exit Class
    Activation Maps and Feature Masking", arXiv 2505.08604, 2025 (code: https://github.com/windstormer/MECAM-OOD)
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from medood.detectors.base import OODDetector, OODOutput
from medood.detectors.registry import register_detector
from medood.detectors.stages import TrainingStage
from medood.losses import MECAM_EXIT_WEIGHTS, MultiExitStageLoss
from medood.networks.nets.multi_exit_resnet import MultiExitResNet
from medood.utils.enums import OODKeys

__all__ = ["CAM_GRIDS", "CHANGES", "MECAMDetector", "all_exit_subsets", "feature_change", "parse_exits"]

#: Where the exits' CAMs are fused: on the input grid (the paper) or on the finest fused CAM's grid.
CAM_GRIDS = ("input", "cam")
#: How the change of the pooled features under the mask is measured (see the module docstring).
CHANGES = ("mse", "relative", "cosine")


def feature_change(f: Tensor, g: Tensor, change: str = "mse") -> Tensor:
    """``(B,)`` change between pooled features ``f`` and ``g`` ``(B, D)`` (float32 or wider): one of :data:`CHANGES`.

    Raises:
        ValueError: an unknown ``change``.
    """
    if change == "mse":
        return (f - g).pow(2).mean(1)
    if change == "relative":
        return (f - g).pow(2).mean(1) / f.pow(2).mean(1).clamp_min(1e-12)
    if change == "cosine":
        return 1.0 - F.cosine_similarity(f, g, dim=1, eps=1e-12)
    raise ValueError(f"change must be one of {CHANGES}, got {change!r}")


def parse_exits(exits: Iterable[int] | str, num_exits: int = 4) -> tuple[int, ...]:
    """A validated, sorted exit subset: ``(0, 2, 3)``, ``[3]`` or the string ``"0,2,3"`` / ``"023"``.

    Raises:
        ValueError: an empty subset, a repeated exit or one outside ``0 .. num_exits - 1``.
    """
    if isinstance(exits, str):
        exits = [int(c) for c in exits.replace(",", "").replace(" ", "")]
    out = tuple(int(e) for e in exits)
    if not out or len(set(out)) != len(out) or not all(0 <= e < num_exits for e in out):
        raise ValueError(f"exits must be a non-empty set of distinct exits in 0..{num_exits - 1}, got {list(out)}")
    return tuple(sorted(out))


def all_exit_subsets(num_exits: int = 4) -> list[tuple[int, ...]]:
    """The ``2**num_exits - 1`` non-empty exit subsets (15 for four exits), smallest first."""
    idx = range(num_exits)
    return [s for k in range(1, num_exits + 1) for s in itertools.combinations(idx, k)]


@register_detector("mecam")
class MECAMDetector(OODDetector):
    """MECAM scores from a multi-exit classifier that the detector owns and trains on labelled ID images.

    Args:
        network: a :class:`~medood.networks.nets.MultiExitResNet` or its keyword arguments (``spatial_dims``
            required).
        exits: the exits whose CAMs are fused (0 = shallowest). Defaults to all four.
        exit_weights: the training loss weight of each exit. Defaults to ``(0.25, 0.5, 0.75, 1.0)``.
        epochs: training epochs of ``fit`` (the bundles train with their own recipe). Defaults to 30.
        lr: Adam learning rate of ``fit``. Defaults to 1e-3.
        cam_grid: where the CAMs are softmaxed and fused: ``"input"`` (the paper: every exit's CAM up-sampled to
            the input size first) or ``"cam"`` (on the grid of the finest fused exit's CAM, then the fused map is
            up-sampled to the input once: cheaper for 3D volumes, where up-sampling every class channel of every
            exit to the full volume costs about one forward pass; the maps differ only below the CAM's voxel size).
            Defaults to ``"input"``.
        change: the feature change of step 6: ``"mse"`` (the paper), ``"relative"`` or ``"cosine"``
            (:func:`feature_change`). Defaults to ``"mse"``.

    Example::

        det = MECAMDetector({"spatial_dims": 2, "in_channels": 3, "num_classes": 8})
        det.fit(labelled_loader, trainer=fit_detector)   # trains the multi-exit classifier (medood.engines)
        out = det.score(images)                     # out.image_score: -MSE, higher = more OOD
        cam = out.anomaly_map                       # fused CAM (B, 1, H, W): an explanation, not a mask
    """

    requires_training = True
    produces_map = True
    score_from_map = False

    def __init__(
        self,
        network: MultiExitResNet | Mapping[str, Any] | None = None,
        exits: Iterable[int] | str = (0, 1, 2, 3),
        exit_weights: Sequence[float] = MECAM_EXIT_WEIGHTS,
        epochs: int = 30,
        lr: float = 1e-3,
        cam_grid: str = "input",
        change: str = "mse",
    ) -> None:
        super().__init__()
        if network is None:
            raise ValueError("MECAMDetector needs its network: a MultiExitResNet or its kwargs (spatial_dims, ...)")
        self.net = network if isinstance(network, MultiExitResNet) else MultiExitResNet(**dict(network))
        if len(exit_weights) != self.net.num_exits:
            raise ValueError(f"exit_weights needs {self.net.num_exits} entries, got {list(exit_weights)}")
        self.exits = exits  # type: ignore[assignment]
        self.exit_weights = tuple(float(w) for w in exit_weights)
        self.epochs, self.lr = int(epochs), float(lr)
        if cam_grid not in CAM_GRIDS:
            raise ValueError(f"cam_grid must be one of {CAM_GRIDS}, got {cam_grid!r}")
        self.cam_grid = cam_grid
        if change not in CHANGES:
            raise ValueError(f"change must be one of {CHANGES}, got {change!r}")
        self.change = change

    @property
    def exits(self) -> tuple[int, ...]:
        """The fused exits (settable, e.g. ``det.exits = (2, 3)`` or ``"23"``; validated)."""
        return self._exits

    @exits.setter
    def exits(self, value: Iterable[int] | str) -> None:
        self._exits = parse_exits(value, self.net.num_exits)

    # ------------------------------------------------------------------ training (declared)
    def training_stages(self) -> tuple[TrainingStage, ...]:
        """One stage: the multi-exit classifier with the weighted multi-exit cross-entropy on ``label``."""
        return (
            TrainingStage(
                name="classifier",
                network="net",
                loss=MultiExitStageLoss,
                loss_kwargs={"weights": self.exit_weights},
                target_key=OODKeys.LABEL.value,
                epochs=self.epochs,
                lr=self.lr,
            ),
        )

    @classmethod
    def tiny_config(cls, spatial_dims: int) -> dict[str, Any]:
        """A four-stage network of a few hundred parameters on the 16-voxel toy images (3 classes, 1 channel)."""
        net = {"spatial_dims": spatial_dims, "in_channels": 1, "num_classes": 3, "layers": (1, 1, 1, 1),
               "widths": (4, 8, 8, 16), "stem_kernel": 3, "stem_stride": 1, "max_pool": False}  # fmt: skip
        return {"network": net, "epochs": 10, "lr": 1e-2}

    # ------------------------------------------------------------------ scoring
    def fused_cam(self, cams: Sequence[Tensor], size: Sequence[int], exits: Sequence[int] | None = None) -> Tensor:
        """Steps 2-5: the confidence-weighted fused CAM ``(B, 1, *size)`` in ``[0, 1]`` of the predicted class.

        Args:
            cams: every exit's CAM ``(B, C, *s_e)`` (:meth:`MultiExitResNet.forward_cams`).
            size: the input's spatial size.
            exits: the fused exits. Defaults to :attr:`exits`.
        """
        exits = self.exits if exits is None else parse_exits(exits, len(cams))
        logits = [c.flatten(2).mean(-1).float() for c in cams]
        pred = logits[-1].argmax(1)
        conf = torch.stack([logits[e].softmax(1).amax(1) for e in exits], 1)
        weights = conf / conf.sum(1, keepdim=True)
        mode = "bilinear" if len(size) == 2 else "trilinear"
        grid = tuple(int(s) for s in (size if self.cam_grid == "input" else cams[exits[0]].shape[2:]))
        n, c = cams[0].shape[:2]
        # softmax_P(z) = 1 / (1 + sum_{j != P} exp(z_j - z_P)); the differences are linear in the CAM, so they are
        # up-sampled instead of the C class maps (one channel fewer, the same map up to float rounding)
        others = torch.arange(c, device=pred.device).expand(n, c)
        others = others[others != pred[:, None]].view(n, c - 1)
        fused = torch.zeros(n, 1, *grid, device=cams[0].device)
        for i, e in enumerate(exits):
            cam = cams[e].float()
            spatial = [1] * (cam.ndim - 2)
            diff = cam.gather(1, others.view(n, c - 1, *spatial).expand(-1, -1, *cam.shape[2:]))
            diff = diff - cam.gather(1, pred.view(n, 1, *spatial).expand(-1, 1, *cam.shape[2:]))
            if tuple(diff.shape[2:]) != grid:
                diff = F.interpolate(diff, size=grid, mode=mode, align_corners=False)
            prob = torch.sigmoid(-torch.logsumexp(diff, 1, keepdim=True))  # 1 / (1 + sum exp(diff)), stable
            fused = fused + weights[:, i].view(-1, 1, *[1] * len(grid)) * prob
        if grid != tuple(size):
            fused = F.interpolate(fused, size=tuple(size), mode=mode, align_corners=False)
        return fused.clamp(0.0, 1.0)

    def _masked_change(self, x: Tensor, features: Tensor, cam: Tensor) -> Tensor:
        """Step 6: the change of ``f`` under ``x * (1 - M)`` (:attr:`change`; higher = more in-distribution)."""
        masked = self.net.features(x * (1.0 - cam).to(x.dtype))
        return feature_change(features.float(), masked.float(), self.change)

    def _image(self, features: Mapping[str, Tensor]) -> Tensor:
        key = OODKeys.IMAGE.value
        if key not in features:
            raise KeyError(f"MECAMDetector scores images: expected the key {key!r}, got {sorted(features)}")
        x = features[key].float()
        if x.ndim - 2 != self.net.spatial_dims:
            raise ValueError(
                f"the network is {self.net.spatial_dims}-D but the input has shape {tuple(x.shape)} "
                f"(expected (B, {self.net.in_channels}, *{self.net.spatial_dims} spatial dims))"
            )
        return x

    def score_features(self, features: Mapping[str, Tensor]) -> OODOutput:
        """Score ``{"image": (B, C, *S)}``: ``-change(f(x), f(x'))``, the fused CAM as the (explanation) map.

        ``extras``: ``feature_mse`` (the feature change of :attr:`change`, the paper's MSE by default; higher =
        ID) and ``pred_class`` (the final exit's class).
        """
        self.check_fitted()
        x = self._image(features)
        out = self.net.forward_cams(x)
        cam = self.fused_cam(out.cams, x.shape[2:])
        mse = self._masked_change(x, out.features, cam)
        pred = out.cams[-1].flatten(2).mean(-1).argmax(1)
        return OODOutput(-mse, cam, {"feature_mse": mse, "pred_class": pred})

    @torch.no_grad()
    def score_subsets(self, x: Tensor, subsets: Iterable[Iterable[int] | str] | str = "all") -> dict[str, Tensor]:
        """Scores of ``x`` for many exit subsets with one unmasked pass (plus one masked pass per subset).

        Args:
            x: images ``(B, C, *S)``.
            subsets: exit subsets (``[[3], [2, 3], "0123"]``), or ``"all"`` for the 15 (:func:`all_exit_subsets`).
                Defaults to ``"all"``.

        Returns:
            ``{"exits_0123": (B,) scores, "exits_3": ..., ...}`` (the exit digits), higher = more OOD.
        """
        self.check_fitted()
        x = self._image({OODKeys.IMAGE.value: x.to(self.device)})
        todo = all_exit_subsets(self.net.num_exits) if subsets == "all" else subsets
        chosen = [parse_exits(s, self.net.num_exits) for s in todo]
        out = self.net.forward_cams(x)
        return {
            "exits_" + "".join(map(str, s)): -self._masked_change(
                x, out.features, self.fused_cam(out.cams, x.shape[2:], s)
            )
            for s in chosen
        }
