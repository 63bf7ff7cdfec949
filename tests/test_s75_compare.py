"""Session 75's walk through `covseg compare` (helper q1): a --force comparison that is stopped part-way leaves no
comparison.md, .json or .png describing the runs it has begun replacing; and the shared model contract of every
registered model."""
from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

from covseg import experiment
from covseg.config import apply_overrides, load_recipe
from covseg.datasets import load_dataset
from covseg.errors import CovsegError
from covseg.models import MODELS, create_model

from conftest import TINY_OVERRIDES

COMPARISON = ("comparison.md", "comparison.json", "comparison.png")


def _fake_metrics() -> dict:
    return {"images_with_class": {"background": 4, "infection": 4}, "n_images": 4,
            "per_image": {"dice": {"infection": 0.5, "mean_foreground": 0.5}, "iou": {"mean_foreground": 0.4}},
            "pixel_accuracy": 0.9, "mean_class_accuracy": 0.8, "infnet": {"meanDic": 0.45}}


def _stand_ins(monkeypatch: pytest.MonkeyPatch, stop_at: str | None) -> list[str]:
    """Training and scoring stood in for; training ``stop_at`` raises KeyboardInterrupt (Ctrl-C) as a real run
    stopped by it does. The figure is written as a placeholder. Returns the models 'trained', in order."""
    trained: list[str] = []

    def train(cfg, *args, **kwargs) -> float:
        trained.append(cfg.model.name)
        if cfg.model.name == stop_at:
            raise KeyboardInterrupt
        return 1.0

    monkeypatch.setattr(experiment, "train_or_resume", train)
    monkeypatch.setattr(experiment, "evaluate_run", lambda run, *args, **kwargs: (_fake_metrics(), run))
    monkeypatch.setattr(experiment, "plot_comparison", lambda models, table, path, **kwargs: path.write_bytes(b"png"))
    return trained


def _compared_once(tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple:
    """A finished comparison of U-Net and SegNet (stand-in training) in ``tmp_path / "cmp"``: its config, data
    folder, samples and folder."""
    config = experiment._fold_config(apply_overrides(load_recipe("tiny"), TINY_OVERRIDES), 0, 3)
    data = str(tiny_data)
    samples = load_dataset(data, "binary", split="train")
    out = tmp_path / "cmp"
    _stand_ins(monkeypatch, stop_at=None)
    experiment.compare_models(["unet", "segnet"], config, samples, data, out, progress=False, log=lambda m: None)
    return config, data, samples, out


@pytest.mark.parametrize("force, kept", [(True, False), (False, True)])
def test_a_stopped_forced_comparison_leaves_no_old_table(force: bool, kept: bool, tiny_data: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """--force retrains every run from the start, so once its first model trains the old comparison's figures
    describe runs that are gone (before: after Ctrl-C, comparison.md still showed the old U-Net's Dice beside a
    U-Net retrained with other settings). Without --force the runs are kept, and so is their table."""
    config, data, samples, out = _compared_once(tiny_data, tmp_path, monkeypatch)
    assert all((out / name).is_file() for name in COMPARISON)
    trained = _stand_ins(monkeypatch, stop_at="segnet")
    with pytest.raises(KeyboardInterrupt):
        experiment.compare_models(["unet", "segnet"], config, samples, data, out, force=force, progress=False,
                                  log=lambda m: None)
    assert trained == ["unet", "segnet"]
    assert [(out / name).is_file() for name in COMPARISON] == [kept] * 3


def test_a_refused_forced_comparison_keeps_the_old_table(tiny_data: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A --force comparison refused before anything trains (a bad model setting) leaves the old table as it was."""
    config, data, samples, out = _compared_once(tiny_data, tmp_path, monkeypatch)
    before = {name: (out / name).read_bytes() for name in COMPARISON}
    trained = _stand_ins(monkeypatch, stop_at=None)
    with pytest.raises(CovsegError, match="--models segnet with model.depth=9"):
        experiment.compare_models(["unet", "segnet"], config, samples, data, out, force=True, progress=False,
                                  log=lambda m: None, model_overrides={"segnet": ["model.depth=9"]})
    assert trained == [] and {name: (out / name).read_bytes() for name in COMPARISON} == before


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("classes", [2, 4])
def test_every_model_keeps_the_shared_contract(name: str, classes: int) -> None:
    """(B, 1, H, W) -> (B, C, H, W) logits in training and eval mode on a non-square batch, one SGD step changes
    the output, and the state dict loads into a fresh model of the same settings, giving the same logits."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=classes, width=4, depth=2)
    x = torch.randn(2, 1, 8, 12)
    out = model(x)
    assert out.shape == (2, classes, 8, 12) and out.dtype == torch.float32
    model.eval()
    before = model(x).detach()
    model.train()
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.nn.functional.cross_entropy(model(x), torch.randint(0, classes, (2, 8, 12))).backward()
    assert all(p.grad is not None for p in model.parameters())
    optimiser.step()
    model.eval()
    after = model(x).detach()
    assert after.shape == (2, classes, 8, 12) and not torch.equal(before, after)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh = create_model(name, num_classes=classes, width=4, depth=2)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    fresh.eval()
    assert torch.equal(fresh(x), after)
