"""Self-supervised pretraining (covseg.pretrain): corruptions, the restoration run, and train.init."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from covseg.checkpoint import build_model, read_checkpoint
from covseg.cli import main
from covseg.config import ModelConfig, apply_overrides, load_recipe
from covseg.errors import CovsegError
from covseg.pretrain import (PRETRAIN_OUTPUTS, PRETRAINED_FILE, PretrainOptions, check_pretrained, corrupt_batch,
                             corrupt_slice, init_from_pretrained, read_pretrained, restoration_network)

from conftest import TINY_OVERRIDES, add_unlabelled, write_semiseg

PRETRAIN_OVERRIDES = ["data.input_size=32", "model.width=4", "model.depth=2", "train.precision=fp32"]


def _image(seed: int = 0, height: int = 40, width: int = 36) -> np.ndarray:
    return np.random.default_rng(seed).random((height, width), dtype=np.float32)


def _only(**rates: float) -> PretrainOptions:
    off = {"nonlinear_rate": 0.0, "shuffle_rate": 0.0, "paint_rate": 0.0}
    return PretrainOptions(**{**off, **rates})


def test_no_corruption_leaves_the_slice_alone_and_every_corruption_is_seeded() -> None:
    image = _image()
    assert np.array_equal(corrupt_slice(image, np.random.default_rng(0), _only()), image)
    a = corrupt_slice(image, np.random.default_rng(7))
    b = corrupt_slice(image, np.random.default_rng(7))
    assert a.dtype == np.float32 and a.shape == image.shape and np.array_equal(a, b)
    assert 0.0 <= a.min() and a.max() <= 1.0
    batch = torch.from_numpy(np.stack([image, _image(1)]))[:, None]
    out = corrupt_batch(batch, np.random.default_rng(3))
    assert out.shape == batch.shape and out.dtype == torch.float32


@pytest.mark.parametrize("side", [16, 20, 29])
def test_local_shuffling_moves_pixels_of_the_smallest_slices_too(side: int) -> None:
    image = _image(height=side, width=side)  # windows up to a tenth of a side: 1 x 1 to 2 x 2 here
    changed = [not np.array_equal(corrupt_slice(image, np.random.default_rng(seed), _only(shuffle_rate=1.0)), image)
               for seed in range(5)]
    assert all(changed)


def test_local_shuffling_only_moves_pixels_and_the_grey_curve_keeps_or_reverses_their_order() -> None:
    image = _image()
    shuffled = corrupt_slice(image, np.random.default_rng(1), _only(shuffle_rate=1.0))
    assert not np.array_equal(shuffled, image)
    assert np.array_equal(np.sort(shuffled, axis=None), np.sort(image, axis=None))  # the same values, moved
    directions = set()
    corner = np.zeros((16, 16), np.float32)
    corner[0, 1] = 1.0
    for seed in range(8):  # a Bezier curve from (0, 0) to (1, 1) is monotone; inverted, it reverses the order
        curved = corrupt_slice(image, np.random.default_rng(seed), _only(nonlinear_rate=1.0))
        order = np.argsort(image, axis=None)
        steps = np.diff(curved.reshape(-1)[order])
        assert (steps >= -1e-6).all() or (steps <= 1e-6).all()
        directions.add("up" if (steps >= -1e-6).all() else "down")
        ends = corrupt_slice(corner, np.random.default_rng(seed), _only(nonlinear_rate=1.0))[0, :2]
        assert sorted(np.round(ends, 5).tolist()) == [0.0, 1.0]  # black and white stay the two ends
    assert directions == {"up", "down"}  # some curves are inverted, some not


def test_painting_keeps_part_of_the_slice_and_fills_the_rest_with_noise() -> None:
    image = np.full((48, 48), 0.5, np.float32)
    inpainted = corrupt_slice(image, np.random.default_rng(2), _only(paint_rate=1.0, outpaint_rate=0.0))
    outpainted = corrupt_slice(image, np.random.default_rng(2), _only(paint_rate=1.0, outpaint_rate=1.0))
    for painted in (inpainted, outpainted):
        kept = painted == 0.5
        assert 0.05 < kept.mean() < 0.95
    assert (inpainted == 0.5).mean() > (outpainted == 0.5).mean()  # in-painting keeps most; out-painting a box
    rows = np.flatnonzero((outpainted == 0.5).any(axis=1))
    assert rows.min() > 0 and rows.max() < 47  # out-painting keeps an inner box; the border is noise


@pytest.fixture(scope="module")
def unlabelled_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 labelled synthetic slices plus 10 unlabelled ones in the COVID-SemiSeg layout."""
    return add_unlabelled(write_semiseg(tmp_path_factory.mktemp("pre"), n=6, seed=4), n=10, seed=9, height=44, width=40)


@pytest.fixture(scope="module")
def pretrained(unlabelled_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pretrained") / "pre"
    assert main(["pretrain", "--recipe", "tiny", "--data", str(unlabelled_data), "-o", str(out), "--steps", "60",
                 "--crop", "0", "--batch-size", "4", "--lr", "0.01", "--quiet", *PRETRAIN_OVERRIDES]) == 0
    return out


def test_pretraining_learns_to_restore_and_writes_its_folder(pretrained: Path) -> None:
    file, data = read_pretrained(pretrained)
    assert file == pretrained / PRETRAINED_FILE
    assert data["steps"] == 60 and data["slices"] == 10 and data["normalize"] == "none"
    assert data["model_config"]["width"] == 4 and data["model_config"]["depth"] == 2
    with open(pretrained / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == list(range(10, 61, 10))
    losses = [float(r["loss"]) for r in rows]
    assert all(np.isfinite(losses)) and losses[-1] < 0.8 * losses[0]  # it does learn the restoration
    network = restoration_network(ModelConfig(**data["model_config"]))
    network.load_state_dict(data["model"])  # the saved weights are a whole one-output network


def _tiny_config(*extra: str):
    return apply_overrides(load_recipe("tiny"), [*PRETRAIN_OVERRIDES, *extra])


def test_init_copies_all_but_the_output_heads(pretrained: Path) -> None:
    config = _tiny_config("model.deep_supervision=true")
    model = build_model(config)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fresh = init_from_pretrained(model, pretrained, config)
    assert fresh and all(k.startswith(("head.", "aux_heads.")) for k in fresh)
    saved = read_pretrained(pretrained)[1]["model"]
    for key, value in model.state_dict().items():
        if key in fresh:
            assert torch.equal(value, before[key]), key
        else:
            assert torch.equal(value, saved[key]), key


def test_init_parts_encoder_copies_only_the_contracting_path(pretrained: Path) -> None:
    config = _tiny_config("model.deep_supervision=true", "train.init_parts=encoder", f"train.init={pretrained}")
    model = build_model(config)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fresh = init_from_pretrained(model, pretrained, config)
    saved = read_pretrained(pretrained)[1]["model"]
    assert set(fresh) == {k for k in before if not k.startswith("encoders.")}
    assert {k.split(".")[0] for k in fresh} == {"decoders", "upsamplers", "aux_heads", "head"}
    for key, value in model.state_dict().items():
        if key.startswith("encoders."):  # the bottleneck (the last encoder) too
            assert torch.equal(value, saved[key]), key
        else:  # the decoder keeps its random weights, though the pretraining's fit it
            assert torch.equal(value, before[key]), key
            if key in saved and saved[key].shape == value.shape and value.is_floating_point():
                assert not torch.equal(value, saved[key]), key


def test_init_refuses_another_network_or_normalisation(pretrained: Path, tmp_path: Path) -> None:
    with pytest.raises(CovsegError, match="model.width 4 there, 8 here"):
        init_from_pretrained(build_model(_tiny_config("model.width=8")), pretrained, _tiny_config("model.width=8"))
    with pytest.raises(CovsegError, match="data.normalize=percentile"):
        config = _tiny_config("data.normalize=percentile")
        init_from_pretrained(build_model(config), pretrained, config)
    with pytest.raises(CovsegError, match="model.block plain there, residual here"):
        config = _tiny_config("model.block=residual")
        init_from_pretrained(build_model(config), pretrained, config)
    check_pretrained(pretrained, _tiny_config("model.dropout=0.3"))  # dropout has no weights: it may differ
    older = read_pretrained(pretrained)[1]  # a pretraining from before model.block: plain blocks
    del older["model_config"]["block"]
    torch.save(older, tmp_path / "older.pt")
    check_pretrained(tmp_path / "older.pt", _tiny_config())
    with pytest.raises(CovsegError, match="model.block plain there, residual here"):
        check_pretrained(tmp_path / "older.pt", _tiny_config("model.block=residual"))
    with pytest.raises(CovsegError, match="no pretrained weights"):
        read_pretrained(tmp_path / "nothing")
    with pytest.raises(CovsegError, match="too small to corrupt"):
        corrupt_slice(np.zeros((12, 40), np.float32), np.random.default_rng(0))
    unfinished = read_pretrained(pretrained)[1]
    unfinished["steps"] = 30
    torch.save(unfinished, tmp_path / "unfinished.pt")
    with pytest.raises(CovsegError, match="stopped at step 30 of 60"):
        check_pretrained(tmp_path / "unfinished.pt", _tiny_config())
    bogus = tmp_path / "bogus.pt"
    torch.save({"format": "something-else"}, bogus)
    with pytest.raises(CovsegError, match="not a covseg pretrained checkpoint"):
        read_pretrained(bogus)


def test_a_run_starts_from_the_pretrained_weights(unlabelled_data: Path, pretrained: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert main(["train", "--recipe", "tiny", "--data", str(unlabelled_data), "--split", "cv:0", "--epochs", "1",
                 "-o", str(run), "--quiet", *TINY_OVERRIDES, f"train.init={pretrained}",
                 "train.lr=1e-12"]) == 0
    assert "weights from" in capsys.readouterr().err
    info = json.loads((run / "run.json").read_text())
    assert len(info["init_sha256"]) == 64
    trained = read_checkpoint(run / "last.pt")["model"]
    saved = read_pretrained(pretrained)[1]["model"]
    # one epoch at a vanishing learning rate: the convolutions are still the pretrained ones
    assert torch.allclose(trained["encoders.0.0.weight"], saved["encoders.0.0.weight"], atol=1e-6)
    assert not torch.equal(trained["head.weight"][:1], saved["head.weight"])

    # a resumed run takes its weights from last.pt: the pretrained folder may go, but may not change
    moved = pretrained.parent / "moved"
    pretrained.rename(moved)
    try:
        assert main(["train", "--resume", str(run), "--quiet"]) == 0
        assert "which is gone" in capsys.readouterr().err
        other = pretrained.parent / "other"
        assert main(["pretrain", "--recipe", "tiny", "--data", str(unlabelled_data), "-o", str(other), "--steps",
                     "1", "--crop", "0", "--quiet", *PRETRAIN_OVERRIDES]) == 0
        other.rename(pretrained)
        capsys.readouterr()
        assert main(["train", "--resume", str(run), "--quiet"]) == 2
        assert "changed since the run began" in capsys.readouterr().err
    finally:
        if pretrained.exists():
            shutil.rmtree(pretrained)
        moved.rename(pretrained)


def test_a_run_starts_its_encoder_only_from_the_pretrained_weights(unlabelled_data: Path, pretrained: Path,
                                                                   tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert main(["train", "--recipe", "tiny", "--data", str(unlabelled_data), "--split", "cv:0", "--epochs", "1",
                 "-o", str(run), "--quiet", *TINY_OVERRIDES, f"train.init={pretrained}", "train.init_parts=encoder",
                 "train.lr=1e-12"]) == 0
    err = capsys.readouterr().err
    assert f"the encoder's weights from {pretrained}" in err and "decoders" in err and "upsamplers" in err
    trained = read_checkpoint(run / "last.pt")["model"]
    saved = read_pretrained(pretrained)[1]["model"]
    assert torch.allclose(trained["encoders.0.0.weight"], saved["encoders.0.0.weight"], atol=1e-6)
    assert not torch.allclose(trained["decoders.0.0.weight"], saved["decoders.0.0.weight"], atol=1e-3)
    assert read_checkpoint(run / "last.pt")["config"]["train"]["init_parts"] == "encoder"


def test_pretraining_a_segnet_fits_a_segnet(unlabelled_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "pre"
    assert main(["pretrain", "--recipe", "tiny", "--data", str(unlabelled_data), "-o", str(out), "--steps", "2",
                 "--crop", "16", "--quiet", *PRETRAIN_OVERRIDES, "model.name=segnet"]) == 0
    config = _tiny_config("model.name=segnet")
    fresh = init_from_pretrained(build_model(config), out, config)
    assert fresh and all(k.startswith(("head", "aux_heads")) for k in fresh), fresh
    with pytest.raises(CovsegError, match="model.name segnet there, unet here"):
        init_from_pretrained(build_model(_tiny_config()), out, _tiny_config())


def test_pretraining_says_what_it_wrote_once(unlabelled_data: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pre"
    assert main(["pretrain", "--recipe", "tiny", "--data", str(unlabelled_data), "-o", str(out), "--steps", "2",
                 "--crop", "16", "--quiet", *PRETRAIN_OVERRIDES]) == 0
    captured = capsys.readouterr()
    # before: also "pretrained 2 steps in 0 s; restoration loss (MSE) ..." on stderr, the same figures again
    assert "pretrained 2 steps" not in captured.err and "restoration" not in captured.err, captured.err
    assert captured.out.startswith(f"wrote {out / PRETRAINED_FILE} (2 steps in ") and captured.out.count("\n") == 1
    assert " s, restoration MSE " in captured.out


def test_bad_pretraining_input_is_one_line_and_writes_nothing(unlabelled_data: Path, tiny_data: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pre"
    for crop in ("30", "8", "-32", "64"):
        assert main(["pretrain", "--recipe", "tiny", "--data", str(unlabelled_data), "-o", str(out), "--crop", crop,
                     "--quiet", *PRETRAIN_OVERRIDES]) == 2
        assert f"--crop {crop} must be a multiple of 4" in capsys.readouterr().err and not out.exists()
    assert main(["pretrain", "--recipe", "tiny", "--data", str(unlabelled_data), "-o", str(out), "--crop", "0",
                 "--quiet", *PRETRAIN_OVERRIDES, "data.input_size=30"]) == 2
    assert "divisible by 4" in capsys.readouterr().err and not out.exists()
    (out / "mine").mkdir(parents=True)
    assert main(["pretrain", "--recipe", "tiny", "--data", str(unlabelled_data), "-o", str(out), "--quiet",
                 *PRETRAIN_OVERRIDES]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["pretrain", "--recipe", "tiny", "--data", str(unlabelled_data), "-o", str(out), "--quiet",
                 "--force", *PRETRAIN_OVERRIDES]) == 2
    assert "not a pretraining folder" in capsys.readouterr().err and (out / "mine").is_dir()
    shutil.rmtree(out)
    assert main(["pretrain", "--recipe", "tiny", "--data", str(tiny_data), "-o", str(out), "--quiet"]) == 2
    assert "unlabelled" in capsys.readouterr().err and not out.exists()
    run = tmp_path / "run"
    assert main(["train", "--recipe", "tiny", "--data", str(tiny_data), "--split", "cv:0", "-o", str(run),
                 "--quiet", *TINY_OVERRIDES, f"train.init={tmp_path / 'missing'}"]) == 2
    err = capsys.readouterr().err
    assert "no pretrained weights there" in err and err.count("\n") == 1 and not run.exists()


def test_a_run_fine_tunes_a_trained_run_of_the_same_split(unlabelled_data: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    base = tmp_path / "base"
    common = ["--recipe", "tiny", "--data", str(unlabelled_data), "--epochs", "1", "--quiet"]
    assert main(["train", *common, "--split", "cv:0", "-o", str(base), *TINY_OVERRIDES]) == 0
    tuned = tmp_path / "tuned"
    assert main(["train", *common, "--split", "cv:0", "-o", str(tuned), *TINY_OVERRIDES, f"train.init={base}",
                 "train.lr=1e-12"]) == 0
    assert "every tensor copied" in capsys.readouterr().err
    start = read_checkpoint(base / "last.pt")["model"]
    after = read_checkpoint(tuned / "last.pt")["model"]
    # a vanishing learning rate: every weight, the output head's too, is still the base run's
    for key in ("encoders.0.0.weight", "head.weight"):
        assert torch.allclose(after[key], start[key], atol=1e-6), key
    # val_fraction is the official split's; on cv:0 it does not change what the base run held out
    config = apply_overrides(load_recipe("tiny"), [*TINY_OVERRIDES, "data.split=cv:0", "data.val_fraction=0.3"])
    assert check_pretrained(base, config)[0] == base / "last.pt"
    with pytest.raises(CovsegError, match=r"trained on another split \(data.folds 3 there, 4 here\)"):
        check_pretrained(base, apply_overrides(load_recipe("tiny"), [*TINY_OVERRIDES, "data.split=cv:0",
                                                                     "data.folds=4"]))
    # a run on another fold would train on weights that saw its held-out images: refused, nothing written
    other = tmp_path / "other"
    assert main(["train", *common, "--split", "cv:1", "-o", str(other), *TINY_OVERRIDES, f"train.init={base}"]) == 2
    err = capsys.readouterr().err
    assert "trained on another split (data.split cv:0 there, cv:1 here)" in err and err.count("\n") == 1
    assert not other.exists()
    # a cross-validation starting every fold from that one run: refused before fold 0 trains
    cv = tmp_path / "cv"
    assert main(["cv", "--recipe", "tiny", "--data", str(unlabelled_data), "--epochs", "1", "--quiet", "--folds", "3",
                 "-o", str(cv), *TINY_OVERRIDES, f"train.init={base}"]) == 2
    assert "trained on another split (data.split cv:0 there, cv:1 here)" in capsys.readouterr().err
    assert not list(cv.glob("fold-*/config.yaml"))
    # another network is refused as for a pretraining
    with pytest.raises(CovsegError, match="model.width 4 there, 8 here"):
        check_pretrained(base, apply_overrides(load_recipe("tiny"), [*TINY_OVERRIDES, "model.width=8"]))


def test_init_from_a_cross_validation_folder_says_to_name_the_fold_s_run(tmp_path: Path) -> None:
    cv = tmp_path / "cv"
    for k in (0, 1):
        (cv / f"fold-{k}").mkdir(parents=True)
        (cv / f"fold-{k}" / "last.pt").write_bytes(b"")
        (cv / f"fold-{k}" / "config.yaml").write_text("{}\n")  # a fold run's, as paired.fold_runs knows it
    # it was "CV: no pretrained weights there; make them with `covseg pretrain -o CV` ...", a folder pretrain refuses
    with pytest.raises(CovsegError) as caught:
        read_pretrained(cv)
    assert str(caught.value) == (f"train.init: {cv}: a cross-validation folder, not one run; give one trained "
                                 f"run of the same split (e.g. {cv / 'fold-0'} for --split cv:0) or a folder covseg pretrain "
                                 "wrote")


def test_force_replaces_only_a_finished_pretraining_and_keeps_it_when_the_new_one_fails(
        unlabelled_data: Path, pretrained: Path, tiny_run: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    common = ["pretrain", "--recipe", "tiny", "--data", str(unlabelled_data), "--steps", "2", "--crop", "0",
              "--quiet", *PRETRAIN_OVERRIDES]
    # a trained run folder holds a history.csv too: --force must not take it for a pretraining
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = sorted(p.name for p in run.iterdir())
    assert main([*common, "-o", str(run), "--force"]) == 2
    err = capsys.readouterr().err
    assert "is not a pretraining folder (it holds best.pt)" in err and err.count("\n") == 1
    assert sorted(p.name for p in run.iterdir()) == before
    # a pretraining that fails (the loss diverges: here NaN slices) leaves the one it was to replace as it was
    import covseg.pretrain

    old = tmp_path / "old"
    shutil.copytree(pretrained, old)
    kept = (old / PRETRAINED_FILE).read_bytes()
    monkeypatch.setattr(covseg.pretrain, "corrupt_batch", lambda clean, rng, options: torch.full_like(clean, np.nan))
    assert main([*common, "-o", str(old), "--force"]) == 2
    err = capsys.readouterr().err
    assert "the restoration loss became nan" in err and f"{old} is left as it was" in err
    assert (old / PRETRAINED_FILE).read_bytes() == kept and not list(tmp_path.glob(".old.*"))
    # so does Ctrl-C, and a new folder interrupted is not made at all
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(covseg.pretrain, "corrupt_batch", interrupted)
    for out in (old, tmp_path / "new"):
        with pytest.raises(KeyboardInterrupt):
            covseg.pretrain.pretrain(_tiny_config(), [np.zeros((40, 36), np.float32)] * 2, out,
                                     PretrainOptions(steps=3, batch_size=1, crop=0), force=True, progress=False,
                                     log=lambda message: None)
    assert (old / PRETRAINED_FILE).read_bytes() == kept and not (tmp_path / "new").exists()
    monkeypatch.undo()
    # and a finished one replaces it whole
    assert main([*common, "-o", str(old), "--force"]) == 0
    assert read_pretrained(old)[1]["steps"] == 2 and sorted(p.name for p in old.iterdir()) == sorted(PRETRAIN_OUTPUTS)


def test_pretraining_seed_and_input_size_are_refused_in_one_line(unlabelled_data: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    common = ["pretrain", "--recipe", "tiny", "--data", str(unlabelled_data), "-o", str(tmp_path / "p"), "--quiet"]
    assert main([*common, "--seed", str(2 ** 64), *PRETRAIN_OVERRIDES]) == 2
    assert "seed must be a whole number from 0 to 2**32 - 1" in capsys.readouterr().err
    # without --crop the crop follows the input size: the input size is what is blamed
    assert main([*common, *PRETRAIN_OVERRIDES, "data.input_size=30"]) == 2
    err = capsys.readouterr().err
    assert "divisible by 4, got 30x30" in err and "--crop" not in err and not (tmp_path / "p").exists()


def test_init_refuses_a_best_checkpoint_and_a_run_that_trained_on_held_out_images(
        tiny_data: Path, tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = apply_overrides(load_recipe("tiny"), [*TINY_OVERRIDES, "data.split=cv:0"])
    # best.pt was chosen on the validation images a run of its split holds out, whatever its file is called
    renamed = tmp_path / "weights.pt"
    shutil.copy(tiny_run / "best.pt", renamed)
    for given in (tiny_run / "best.pt", renamed):
        with pytest.raises(CovsegError, match="a run's best.pt, chosen on the validation images"):
            check_pretrained(given, config)
    assert check_pretrained(tiny_run, config)[0] == tiny_run / "last.pt"
    common = ["train", "--recipe", "tiny", "--data", str(tiny_data), "--split", "cv:0", "--epochs", "1", "--quiet"]
    student = tmp_path / "student"
    assert main([*common, "-o", str(student), *TINY_OVERRIDES, f"train.init={tiny_run / 'best.pt'}"]) == 2
    err = capsys.readouterr().err
    assert "a run's best.pt" in err and err.count("\n") == 1 and not student.exists()
    # the same split settings on other data split differently: the run's own split.json says what it trained on
    other = shutil.copytree(tiny_run, tmp_path / "other")
    split = json.loads((other / "split.json").read_text())
    held_out = split["val"]
    assert check_pretrained(other, config, held_out)[0] == other / "last.pt"
    split["train"].append(held_out[0])
    (other / "split.json").write_text(json.dumps(split))
    with pytest.raises(CovsegError, match=rf"trained on 1 of the images this run holds out \(first: {held_out[0]}\)"):
        check_pretrained(other, config, held_out)
    assert main([*common, "-o", str(student), *TINY_OVERRIDES, f"train.init={other}"]) == 2
    err = capsys.readouterr().err
    assert "trained on 1 of the images this run holds out" in err and err.count("\n") == 1 and not student.exists()
    # an unfinished run (interrupted at epoch 1 of 3): refused, as an unfinished teacher is
    unfinished = shutil.copytree(tiny_run, tmp_path / "unfinished")
    state = read_checkpoint(unfinished / "last.pt")
    state["epoch"] = 1
    torch.save(state, unfinished / "last.pt")
    with pytest.raises(CovsegError, match=r"train.init: .*last.pt holds epoch 1 of 3, an unfinished run; finish it first \(covseg train "
                                          r"--resume .*unfinished\)"):
        check_pretrained(unfinished, config)


def test_pretraining_keeps_what_appeared_at_its_output_while_it_trained(
        unlabelled_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import covseg.pretrain

    out = tmp_path / "pre"
    real = covseg.pretrain.corrupt_batch

    def meanwhile(*args, **kwargs):  # someone else writes to -o while the network trains
        (out / "mine").mkdir(parents=True, exist_ok=True)
        (out / "mine" / "notes.txt").write_text("keep me")
        return real(*args, **kwargs)

    monkeypatch.setattr(covseg.pretrain, "corrupt_batch", meanwhile)
    common = ["pretrain", "--recipe", "tiny", "--data", str(unlabelled_data), "-o", str(out), "--steps", "1",
              "--crop", "0", "--quiet", *PRETRAIN_OVERRIDES]
    for force in ([], ["--force"]):
        shutil.rmtree(out, ignore_errors=True)
        assert main([*common, *force]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and err.splitlines()[-1].startswith("covseg: error: the pretraining finished, "
                                                                          "but nothing was written")
        assert [p.name for p in out.iterdir()] == ["mine"] and (out / "mine" / "notes.txt").read_text() == "keep me"
        assert not list(tmp_path.glob(".pre.*"))


def test_pretraining_refuses_an_output_inside_its_data_folder(unlabelled_data: Path, capsys, monkeypatch) -> None:
    # fuzz helper 168: a pretraining written into the data folder; refused before the slices load
    import covseg.datasets

    def no_loading(*args, **kwargs):
        raise AssertionError("the slices were loaded before the output was refused")

    monkeypatch.setattr(covseg.datasets, "load_dataset", no_loading)
    inside = unlabelled_data / "Dataset" / "pre"
    assert main(["pretrain", "--recipe", "tiny", "--data", str(unlabelled_data), "-o", str(inside), "--steps", "1",
                 "--quiet", *PRETRAIN_OVERRIDES]) == 2
    assert capsys.readouterr().err == (f"covseg: error: {inside}: is inside the data folder {unlabelled_data}, where "
                                       "its files would be read as images or masks; give -o a folder outside it\n")
    assert not inside.exists()


def test_pretraining_refuses_training_overrides_it_would_not_use(unlabelled_data: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pre"
    common = ["pretrain", "--recipe", "tiny", "--data", str(unlabelled_data), "-o", str(out), "--steps", "1",
              "--crop", "0", "--quiet", *PRETRAIN_OVERRIDES]
    for override, advice in (("train.seed=3", "use --seed instead"), ("train.lr=0.5", "use --lr instead"),
                             ("train.epochs=99", "use --steps instead"),
                             ("train.weight_decay=0.1", "drop the override"),
                             ("train.augment.hflip=0.5", "drop the override")):
        assert main([*common, override]) == 2
        err = capsys.readouterr().err
        assert f"{override}: covseg pretrain does not use" in err and advice in err and err.count("\n") == 1
        assert not out.exists()
    assert main([*common, "train.device=cpu"]) == 0  # device, precision and threads it does use
    assert read_pretrained(out)[1]["run_config"]["train"]["device"] == "cpu"


def test_a_malformed_pretrained_checkpoint_is_refused_in_one_line(pretrained: Path, unlabelled_data: Path,
                                                                   tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    good = read_pretrained(pretrained)[1]
    weights = good["model"]
    cases = {"missing": ({"format": "covseg-pretrained-1", "model": weights},
                         "no model_config, steps, options, normalize"),
             "future": ({**good, "model_config": {**good["model_config"], "future_option": 1}},
                        "its model_config holds 'future_option', which this covseg does not know"),
             "width": ({**good, "model_config": {**good["model_config"], "width": "wide"}},
                       "its model_config: config: model.width: expected a number, got 'wide'"),
             "config": ({**good, "model_config": [4, 2]}, "its model_config is not a mapping"),
             "steps": ({**good, "steps": "60"}, "its steps and options.steps are not whole numbers"),
             "negative": ({**good, "steps": -1}, "its steps and options.steps are not whole numbers"),
             "bool": ({**good, "steps": True}, "its steps and options.steps are not whole numbers"),
             "keys": ({**good, "model": {0: next(iter(weights.values()))}}, "its model is not a state dict of tensors"),
             "options": ({**good, "options": None}, "its steps and options.steps are not whole numbers"),
             "normalize": ({**good, "normalize": None}, "its normalize is not text"),
             "weights": ({**good, "model": {}}, "its model is not a state dict of tensors")}
    for name, (payload, why) in cases.items():
        file = tmp_path / f"{name}.pt"
        torch.save(payload, file)
        with pytest.raises(CovsegError) as caught:
            read_pretrained(file)
        assert str(caught.value) == (f"train.init: {file}: not a covseg pretrained checkpoint ({why}); run covseg "
                                     "pretrain again")
    run = tmp_path / "run"
    assert main(["train", "--recipe", "tiny", "--data", str(unlabelled_data), "--split", "cv:0", "-o", str(run),
                 "--quiet", *TINY_OVERRIDES, f"train.init={tmp_path / 'missing.pt'}"]) == 2
    err = capsys.readouterr().err
    assert "not a covseg pretrained checkpoint (no model_config" in err and err.count("\n") == 1
    assert "Traceback" not in err and not run.exists()


def test_a_trained_checkpoint_with_unreadable_settings_is_refused_in_one_line(
        tiny_data: Path, tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from covseg.checkpoint import load_model

    config = apply_overrides(load_recipe("tiny"), [*TINY_OVERRIDES, "data.split=cv:0"])
    for name, edit, why in (("future", lambda c: c["model"].update(future_option=1),
                             "config: model: unknown option 'future_option'"),
                            ("train", lambda c: c.update(train=3), "config: train: expected a mapping, got 3")):
        other = shutil.copytree(tiny_run, tmp_path / name)
        state = read_checkpoint(other / "last.pt")
        edit(state["config"])
        torch.save(state, other / "last.pt")
        with pytest.raises(CovsegError, match=rf"last.pt: its run settings cannot be read \({why}"):
            check_pretrained(other, config)
        with pytest.raises(CovsegError, match=rf"last.pt: its run settings cannot be read \({why}.*; give a .pt "
                                              "file that this covseg's train wrote"):
            load_model(other, "last")
        run = tmp_path / f"run-{name}"
        assert main(["train", "--recipe", "tiny", "--data", str(tiny_data), "--split", "cv:0", "-o", str(run),
                     "--quiet", *TINY_OVERRIDES, f"train.init={other}"]) == 2
        err = capsys.readouterr().err
        assert "its run settings cannot be read" in err and err.count("\n") == 1 and not run.exists()


def _one_step(data: Path, out: Path) -> list[str]:
    """``covseg pretrain`` arguments for one tiny step on ``data`` into ``out``."""
    return ["pretrain", "--recipe", "tiny", "--data", str(data), "-o", str(out), "--steps", "1", "--batch-size", "2",
            "--quiet", *PRETRAIN_OVERRIDES]


def test_a_learning_rate_past_the_bound_is_refused_in_one_line(unlabelled_data: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "p"
    # before: 1e39 (finite in Python, not in float32) raised a traceback from AdamW; 2 trained on
    for lr, shown in (("1e39", "1e+39"), ("2", "2")):
        assert main([*_one_step(unlabelled_data, out), "--lr", lr]) == 2
        err = capsys.readouterr().err
        assert f"--lr {shown} is above the largest learning rate pretraining takes (1)" in err
        assert err.count("\n") == 1 and not out.exists()


def test_a_negative_learning_rate_is_refused_without_naming_the_weight_decay(unlabelled_data: Path, tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "p"
    for lr in ("-1", "0", "nan"):
        assert main([*_one_step(unlabelled_data, out), "--lr", lr]) == 2
        err = capsys.readouterr().err
        assert "the pretraining learning rate must be a positive number" in err and "weight decay" not in err
        assert err.count("\n") == 1 and not out.exists()
    from covseg.pretrain import check_options
    with pytest.raises(CovsegError, match=r"^the pretraining weight decay must be a number >= 0 \(got -0.1\)$"):
        check_options(PretrainOptions(weight_decay=-0.1), _tiny_config())


def test_a_crop_leaving_a_1x1_bottleneck_is_refused_in_one_line(unlabelled_data: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "p"
    common = [*_one_step(unlabelled_data, out), "model.depth=4", "model.norm=instance"]
    # before: accepted (16 is a multiple of 16), then the first step failed on "a 16x16 image"
    assert main([*common, "--crop", "16"]) == 2
    err = capsys.readouterr().err
    assert "--crop 16 leaves a model of depth 4 a 1x1 bottleneck; use a crop of at least 32" in err
    assert err.count("\n") == 1 and not out.exists()
    assert main([*common, "--crop", "32", "--lr", "1"]) == 0


def test_weights_that_became_infinite_are_not_saved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import covseg.pretrain

    class Overflowing(torch.optim.AdamW):
        """AdamW whose step leaves every weight infinite (the loss, taken before it, stays finite)."""

        def step(self, closure: object = None) -> None:
            with torch.no_grad():
                for group in self.param_groups:
                    for weight in group["params"]:
                        weight.fill_(np.inf)

    monkeypatch.setattr(torch.optim, "AdamW", Overflowing)
    out = tmp_path / "pre"
    # before: pretrained.pt was written with the infinite weights
    with pytest.raises(CovsegError, match=r"weights became infinite or NaN by step 1; lower --lr \(.*pre was not made"):
        covseg.pretrain.pretrain(_tiny_config(), [np.zeros((40, 36), np.float32)] * 2, out,
                                 PretrainOptions(steps=1, batch_size=1, crop=0), progress=False,
                                 log=lambda message: None)
    assert not out.exists()


def test_force_refuses_a_folder_holding_a_folder_under_a_pretraining_file_name(
        unlabelled_data: Path, pretrained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # before: history.csv/notes.txt passed as a pretraining's history.csv, and --force deleted the notes
    old = tmp_path / "old"
    shutil.copytree(pretrained, old)
    (old / "history.csv").unlink()
    (old / "history.csv").mkdir()
    (old / "history.csv" / "notes.txt").write_text("precious\n")
    assert main(["pretrain", "--recipe", "tiny", "--data", str(unlabelled_data), "--steps", "2", "--crop", "0",
                 "--quiet", *PRETRAIN_OVERRIDES, "-o", str(old), "--force"]) == 2
    err = capsys.readouterr().err
    assert "is not a pretraining folder (it holds history.csv)" in err and err.count("\n") == 1
    assert (old / "history.csv" / "notes.txt").read_text() == "precious\n"


def test_a_pretraining_records_its_data_folder_in_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # before: "data" held the path as typed, relative to wherever the command ran
    import covseg.pretrain

    (tmp_path / "slices").mkdir()
    monkeypatch.chdir(tmp_path)
    covseg.pretrain.pretrain(_tiny_config(), [np.zeros((40, 36), np.float32)] * 2, tmp_path / "out",
                             PretrainOptions(steps=2, batch_size=1, crop=0), data_path="slices", progress=False,
                             log=lambda message: None)
    assert read_pretrained(tmp_path / "out")[1]["data"] == str((tmp_path / "slices").resolve())


def test_ctrl_c_after_the_last_step_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # before: "interrupted at step 4 of 3"; Ctrl-C here arrives during the check of the weights after step 3
    import covseg.pretrain

    calls = {"n": 0}
    real = torch.isfinite

    def isfinite(tensor: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] > 3:  # one loss check per step, then the weights
            raise KeyboardInterrupt
        return real(tensor)

    monkeypatch.setattr(torch, "isfinite", isfinite)
    said: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        covseg.pretrain.pretrain(_tiny_config(), [np.zeros((40, 36), np.float32)] * 2, tmp_path / "out",
                                 PretrainOptions(steps=3, batch_size=1, crop=0), progress=False, log=said.append)
    assert said[-1].startswith("interrupted after its 3 steps; nothing written"), said[-1]
    assert not (tmp_path / "out").exists()
