"""The shipped `default` and `large` models keep their measured quality: on a fixed sample of the
TEST split of ../shared/data (paper protocol, x3, as in medsr.evaluation.quality and
docs/RESULTS.md) each beats bicubic in PSNR by a stated margin, in SSIM, and on every image.

The sample is every third image of each test split (sorted by path, so every class is in it): 36
brain MRI and 36 chest X-ray images, about half a minute a model on a 2-core CPU. On the 50-image
test sample of docs/RESULTS.md they gain +2.35 / +1.57 dB (default) and +2.57 / +1.77 dB (large)
over bicubic on brain MRI / chest X-ray. The margins below are well under those: they leave room for
the smaller sample and numerical noise, not for a model that lost its gain.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import DATA, needs_data

from medsr import metrics
from medsr.data import degrade, load_arrays, scan, select
from medsr.evaluation.quality import Method
from medsr.io.types import as_unit

pytestmark = [pytest.mark.slow, pytest.mark.shared, needs_data]

SCALE = 3
EVERY = 3  # every third test image
# data set -> (PSNR margin over bicubic in dB, SSIM margin over bicubic), both on the sample's mean
MARGINS = {"brain-mri": (2.0, 0.05), "chest-xray": (1.2, 0.015)}


@pytest.fixture(scope="module", params=["default", "large"])
def shipped_model(request):
    from medsr.inference.upscaler import load_upscaler

    upscaler, _ = load_upscaler(request.param, precision="fp32", tile=0)
    assert upscaler.scale == SCALE
    return Method(request.param, upscaler)


def scores(method: Method, lr: np.ndarray, hr: torch.Tensor) -> tuple[float, float]:
    sr = torch.from_numpy(method.run(lr, SCALE))[None, None]
    assert sr.shape == hr.shape
    return metrics.psnr(sr, hr, SCALE).item(), metrics.ssim(sr, hr, SCALE).item()


@pytest.mark.parametrize("dataset", sorted(MARGINS))
def test_shipped_models_beat_bicubic_on_the_test_split(dataset, shipped_model):
    test = select(scan(DATA / dataset), "test")
    sample = test[::EVERY]
    assert len(sample) == 36 and len({it.label for it in sample}) == len({it.label for it in test})
    arrays, kept = load_arrays(sample)
    assert len(arrays) == len(sample)
    bicubic, model = [], []
    for array in arrays:
        lr, hr = degrade.make_pair(as_unit(array)[0], "paper", SCALE)
        assert lr.shape == (50, 50) and hr.shape == (150, 150)
        hr_t = torch.from_numpy(hr)[None, None]
        bicubic.append(scores(Method("bicubic"), lr, hr_t))
        model.append(scores(shipped_model, lr, hr_t))
    bicubic, model = np.array(bicubic), np.array(model)
    psnr_gain, ssim_gain = (model - bicubic).mean(axis=0)
    psnr_margin, ssim_margin = MARGINS[dataset]
    summary = f"{dataset}: {shipped_model.name} {model[:, 0].mean():.2f} dB vs bicubic {bicubic[:, 0].mean():.2f} dB ({psnr_gain:+.2f}), " \
              f"SSIM {model[:, 1].mean():.4f} vs {bicubic[:, 1].mean():.4f} ({ssim_gain:+.4f})"
    assert psnr_gain >= psnr_margin, summary
    assert ssim_gain >= ssim_margin, summary
    worst = kept[int(np.argmin(model[:, 0] - bicubic[:, 0]))].key
    assert (model[:, 0] > bicubic[:, 0]).all(), f"{summary}; worse than bicubic on {worst}"
