"""FeatureFitHandler(label_key=...): a per-case label of the batch (e.g. the domain of a multi-task host's case)
reaches the detector's fit, so the spectral bank knows which domain each signature is of."""

from __future__ import annotations

import torch
from monai.engines import SupervisedEvaluator
from monai.inferers import SimpleInferer
from monai.networks.nets import UNet

from medood.detectors.spectral import SpectralDetector
from medood.handlers.guard import FeatureFitHandler
from medood.networks.feature_maps import encoder_stages


def _batches(n: int, domain: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    grid = torch.stack(torch.meshgrid(*[torch.linspace(-1, 1, 16)] * 2, indexing="ij")).pow(2).sum(0)
    out = []
    for _ in range(n):
        stripes = 0.5 + 0.5 * torch.sign(torch.sin(torch.arange(16.0) * 3.0))[None].expand(16, 16)
        x = (grid < 0.6).float() * (0.5 + grid) if domain == 0 else stripes
        out.append(
            {"image": (x + 0.02 * torch.randn(16, 16, generator=g))[None, None], "domain": torch.tensor([domain])}
        )
    return out


def test_fit_labels_reach_the_detector_and_name_the_nearest_domain() -> None:
    torch.manual_seed(0)
    net = UNet(2, 1, 2, channels=(4, 8), strides=(2,), num_res_units=0).eval()
    det = SpectralDetector(layers=encoder_stages(net))
    loader = _batches(6, 0, 0) + _batches(6, 1, 1)
    SupervisedEvaluator(
        "cpu",
        loader,
        net,
        inferer=SimpleInferer(),
        val_handlers=[FeatureFitHandler(det, label_key="domain")],
        decollate=False,
    ).run()
    assert det.signature_domains.tolist() == [0] * 6 + [1] * 6
    feats: dict[str, torch.Tensor] = {}
    hooks = [
        dict(net.named_modules())[name].register_forward_hook(lambda _m, _i, o, name=name: feats.__setitem__(name, o))
        for name in det.layers
    ]
    for domain, seed in ((0, 5), (1, 6)):
        with torch.no_grad():
            net(torch.cat([b["image"] for b in _batches(2, domain, seed)]))
        assert det.nearest_domain(feats).tolist() == [domain, domain]
    for h in hooks:
        h.remove()
    plain = SpectralDetector(layers=det.layers)
    SupervisedEvaluator(
        "cpu", loader, net, inferer=SimpleInferer(), val_handlers=[FeatureFitHandler(plain)], decollate=False
    ).run()
    assert plain.signature_domains.numel() == 0, "no label_key: no labels"
