"""Session 76: the benchmarks' printed label agreements are rounded down (covseg.wording.agreement_percent), as
covseg's own messages are: as ``.4%`` a share just under the 99.9 % bf16 bar (0.99899996) read "99.9000%", the
bar, and one under 1 (0.9999999) read "100.0000%"; compile_probe's float32 mean printed ``.5f`` read a few
differing pixels as "1.00000". Each test runs the script's own formatting function, on tiny inputs."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

from covseg.inference import BF16_MIN_AGREEMENT

JUST_UNDER_BAR = 0.99899996  # printed "99.9000%" as .4%
JUST_UNDER_ONE = 0.9999999  # printed "100.0000%" as .4%


def _script(name: str):
    """A script of benchmarks/ as a module (not a package: its folder goes on sys.path, as when it is run)."""
    folder = Path(__file__).parents[1] / "benchmarks"
    if str(folder) not in sys.path:
        sys.path.append(str(folder))
    spec = importlib.util.spec_from_file_location(f"benchmarks_s76_{name}", folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bf16_check_does_not_print_a_share_under_the_bar_as_the_bar() -> None:
    line = _script("bf16_check").summary_line("folded", [JUST_UNDER_BAR, JUST_UNDER_ONE, 1.0], BF16_MIN_AGREEMENT)
    assert line == ("folded   3 batches: median 99.9999%, min 99.8999%, 2 of 3 >= 99.9%: "
                    "99.8999% 99.9999% 100.0000%")


def test_int8_check_does_not_print_a_share_under_the_bar_as_the_bar_or_under_one_as_100() -> None:
    dice = {"lesion": 0.5, "mean_foreground": 0.5}
    rows = [{"run": "fold-0", "agreement": JUST_UNDER_BAR, "export_agreement": JUST_UNDER_ONE,
             "fp32": dice, "int8": {"lesion": 0.25, "mean_foreground": 0.25}},
            {"run": "fold-1", "agreement": JUST_UNDER_BAR, "export_agreement": 1.0, "fp32": dice, "int8": dice}]
    lines = _script("int8_check").report_lines(rows)
    assert lines[0] == "fold-0: lesion 0.5000 -> 0.2500 (-0.2500)  same label 99.8999% (export check 99.9999%)"
    assert lines[1].endswith("same label 99.8999% (export check 100.0000%)")
    assert lines[2].startswith("lesion: fp32 0.5000, int8 0.3750, paired -0.1250 ± ")
    assert lines[-1] == "same label: 99.8999% of the held-out pixels (mean over runs); min 99.8999%"


def test_onednn_int8_flags_a_share_under_the_bar_without_printing_it_as_the_bar() -> None:
    batch_line = _script("onednn_int8").batch_line
    assert batch_line("heldout", 8, JUST_UNDER_BAR, JUST_UNDER_ONE, BF16_MIN_AGREEMENT) == \
        "heldout  batch of 8: int8 99.8999% (< bar), bf16 99.9999%"
    assert batch_line("train", 8, BF16_MIN_AGREEMENT, 1.0, BF16_MIN_AGREEMENT) == \
        "train    batch of 8: int8 99.9000%, bf16 100.0000%"


def test_compile_probe_does_not_print_a_few_differing_pixels_as_full_agreement() -> None:
    logits_line = _script("compile_probe").logits_line  # importing it no longer compiles or times anything
    fused = torch.zeros(262_144, 2, 1, 1)  # one pixel an image: a cheap arg-max
    compiled = fused.clone()
    compiled[0, 1] = 1  # 1 of 262,144 pixels labelled otherwise: 0.9999961..., ".5f" read "1.00000"
    assert logits_line(compiled, fused) == "max |diff| 1.0000; label agreement 99.999%"
    assert logits_line(fused, fused) == "max |diff| 0.0000; label agreement 100.000%"
