"""Session 75 (helper q2): pseudo.json's verdicts follow from the figures it records, at the limits too; task refusals."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import covseg.selftrain as selftrain
from covseg.errors import CovsegError
from covseg.selftrain import PseudoLabelRule, check_pseudo_labels, keeps, make_pseudo_labels


# figures of the real demo teacher's slices (session 75): unrounded, as recorded, and a rule whose limit is the latter
CASES = [((0.0737234, 0.9054989), (0.073723, 0.9055), PseudoLabelRule(0.9055, 0.07, 0.08)),  # --min-confidence
         ((0.41227664, 0.90414), (0.41228, 0.90414), PseudoLabelRule(0.9, 0.41228, 0.5)),  # --min-fraction
         ((0.0737234, 0.9054989), (0.073723, 0.9055), PseudoLabelRule(0.9, 0.07, 0.073723))]  # --max-fraction


@pytest.mark.parametrize(("figures", "recorded", "rule"), CASES)
def test_a_limit_equal_to_a_recorded_figure_keeps_the_slice(figures: tuple[float, float],
                                                            recorded: tuple[float, float], rule: PseudoLabelRule,
                                                            tiny_run: Path, unl_data: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A teacher whose every slice has lesion fraction and confidence ``figures``, which pseudo.json records as
    ``recorded``: a limit set to the recorded figure keeps the slices, as the options' help ("at least this", "least
    ... to keep") reads against pseudo.json (the unrounded figures were refused), and every row's verdict is the
    rule applied to its recorded figures."""
    def statistics(probs: np.ndarray) -> tuple[np.ndarray, float, float]:
        labels = np.zeros(probs.shape[1:], dtype=np.uint8)
        labels[0, 0] = 1
        return (labels, *figures)

    monkeypatch.setattr(selftrain, "slice_statistics", statistics)
    out = tmp_path / "pseudo"
    make_pseudo_labels(tiny_run, out, str(unl_data), rule, progress=False, log=lambda _: None)
    summary = json.loads((out / "pseudo.json").read_text())
    assert summary["kept"] == summary["total"] == 4
    for row in summary["slices"]:
        assert (row["fraction"], row["confidence"]) == recorded
        assert row["kept"] == keeps(PseudoLabelRule(**summary["rule"]), row["fraction"], row["confidence"])


def test_a_binary_student_refuses_a_multiclass_teachers_labels(tmp_path: Path) -> None:
    """The reverse of test_selftrain's binary labels offered to a multiclass student: a multiclass teacher's
    pseudo-labels (class ids up to 3) are refused by a binary student, naming the teacher to use."""
    (tmp_path / "pseudo.json").write_text(json.dumps({
        "task": "multiclass", "teacher_images": ["1"], "rule": {}, "kept": 1,
        "slices": [{"name": "u0", "fraction": 0.1, "confidence": 0.95, "kept": True}]}))
    with pytest.raises(CovsegError, match="multiclass task, not binary; make them with a binary teacher"):
        check_pseudo_labels(tmp_path, "binary", ["2"])
