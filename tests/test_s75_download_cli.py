"""Session 75: Ctrl-C or SIGTERM during covseg download says how to go on (needs the cli.py patch)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

import covseg.download as dl
from covseg.cli import main
from covseg.errors import Terminated

TRAIN = "Dataset/TrainingSet/LungInfection-Train/Doctor-label/Imgs/1.jpg"
TRAIN_GT = "Dataset/TrainingSet/LungInfection-Train/Doctor-label/GT/1.png"


@pytest.mark.parametrize(("stop", "status", "word"), [(KeyboardInterrupt(), 130, "interrupted"),
                                                      (Terminated(), 143, "terminated (SIGTERM)")])
def test_a_download_stopped_part_way_says_to_run_it_again(stop: KeyboardInterrupt, status: int, word: str,
                                                         monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                         capsys) -> None:
    files = {TRAIN: b"image bytes", TRAIN_GT: b"mask bytes"}
    for rel, data in files.items():
        (tmp_path / "mirror" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "mirror" / rel).write_bytes(data)
    monkeypatch.setattr(dl, "read_manifest", lambda name: {rel: hashlib.sha256(d).hexdigest()
                                                           for rel, d in files.items()})
    copy = dl._fetch_copy

    def copy_then_stop(src_root: Path, rel: str, part: Path) -> bool:
        if rel == TRAIN:  # the second file (GT/ sorts before Imgs/)
            raise stop
        return copy(src_root, rel, part)

    monkeypatch.setattr(dl, "_fetch_copy", copy_then_stop)
    args = ["download", "--mirror", str(tmp_path / "mirror"), "--data-dir", str(tmp_path / "data"), "--quiet"]
    assert main(args) == status
    # it was "covseg: interrupted" alone
    assert capsys.readouterr().err == (f"{word}; run the same covseg download again to go on (the files verified so "
                                       "far are not fetched again)\n")
    root = tmp_path / "data" / "covid-semiseg"
    assert (root / TRAIN_GT).read_bytes() == b"mask bytes" and not list(root.rglob("*.part"))
    monkeypatch.setattr(dl, "_fetch_copy", copy)
    assert main(args) == 0
    assert capsys.readouterr().out.startswith(f"covid-semiseg in {root}: training split: 2 files verified (1 fetched, "
                                              "1 already present)")
