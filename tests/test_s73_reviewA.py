"""Session 73's review (area reviewA) of the day's predict / own-data changes: a mask holding one class multiplied
for viewing is not given a factor it cannot show, an input image reached through a symbolic link in -o's folder is
refused as the image itself would be, and a scan report's empty bar chart says no lung lesion, not no lesion."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covseg.datasets import read_mask
from covseg.errors import CovsegError
from covseg.labels import BINARY, MULTICLASS
from covseg.predict_plan import plan_predict


def _png(path: Path, values: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.uint8)).save(path)
    return path


def test_a_viewing_mask_of_consolidation_alone_is_not_told_to_divide_by_170(tmp_path: Path) -> None:
    # a 0/85/170/255 mask (ids 0..3 x 85) of a slice with consolidation only holds 0/170: the day's message said "the
    # class ids [1] multiplied by 170 ... each value divided by 170", which turns consolidation into ground glass
    path = _png(tmp_path / "m.png", np.array([[0, 170], [170, 0]]))
    with pytest.raises(CovsegError) as info:
        read_mask(path, MULTICLASS)
    assert str(info.value) == (f"{path}: mask value 170 looks like a class id multiplied for viewing, which one this "
                               "mask alone cannot tell (id 1 times 170 or id 2 times 85); save the class ids themselves "
                               "as the pixel values, each value divided by the factor the masks were saved with")
    # every reading with a step of at least 50: 150 = 1 x 150, 2 x 75, 3 x 50; 128 = 1 x 128, 2 x 64 (3 does not
    # divide it); 100: 2 x 50 still a step, 3 does not divide it
    for value, readings in ((150, "id 1 times 150 or id 2 times 75 or id 3 times 50"),
                            (128, "id 1 times 128 or id 2 times 64"), (100, "id 1 times 100 or id 2 times 50")):
        _png(path, np.array([[0, value]]))
        with pytest.raises(CovsegError, match=rf"mask value {value} looks like a class id multiplied for viewing, "
                                              rf"which one this mask alone cannot tell \({readings}\); "):
            read_mask(path, BINARY)


def test_two_ids_or_more_still_name_their_one_factor(tmp_path: Path) -> None:
    # 0/170/255: ids 2 and 3 times 85 (the factor two ids fix); 0/85/170: ids 1 and 2
    for values, ids in (([0, 170, 255], [2, 3]), ([0, 85, 170], [1, 2])):
        path = _png(tmp_path / "m.png", np.array([values]))
        shown = [v for v in values if v]
        with pytest.raises(CovsegError, match=rf"mask values \[{', '.join(map(str, shown))}\] look like the class ids "
                                              rf"\[{', '.join(map(str, ids))}\] multiplied by 85, "):
            read_mask(path, MULTICLASS)


def test_an_input_image_linked_into_the_output_folder_is_refused_as_the_image_itself(tmp_path: Path) -> None:
    # in/0.jpg -> ../data/0.jpg: `predict in/0.jpg -o in` wrote in/0.png and in/overlays/ among the user's images
    # (the check compared -o with the folder the link leads to only)
    image = _png(tmp_path / "data" / "0.jpg", np.full((16, 16), 90))
    link = tmp_path / "in" / "0.jpg"
    link.parent.mkdir()
    link.symlink_to(Path("..") / "data" / "0.jpg")
    with pytest.raises(CovsegError, match=rf"^{tmp_path / 'in'}: is the folder of the input image {link}, where "
                                          r"predictions would be mixed with the images and replace any of the same "
                                          r"name \(0\.png\); give -o a folder of its own$"):
        plan_predict([link], tmp_path / "in")
    with pytest.raises(CovsegError, match=r"is the folder of the input image"):  # the image's own folder, as before
        plan_predict([link], tmp_path / "data")
    assert plan_predict([link], tmp_path / "out").files == [link]
    assert plan_predict([image], tmp_path / "in").files == [image]  # the link's folder holds no input here


def test_a_scan_with_effusion_alone_is_not_charted_as_without_lesion(monkeypatch: pytest.MonkeyPatch) -> None:
    # the table lists 12 mL of pleural effusion; the bars (shares of the lungs, which effusion is not) are all 0: the
    # chart said "no lesion found" beside the effusion the page reports
    from covseg import report_html

    drawn = []
    real = report_html._fig_uri
    monkeypatch.setattr(report_html, "_fig_uri", lambda fig: drawn.append(fig) or real(fig))
    part = {"lung_ml": 100.0, "lesion_ml": 0.0, "lesion_percent": 0.0, "severity": 0,
            "class_ml": {"ggo": 0.0, "consolidation": 0.0, "pleural_effusion": 12.0},
            "class_percent": {"ggo": 0.0, "consolidation": 0.0}}
    report = {"input": {"path": "chest.nii.gz", "kind": "nifti", "shape": [4, 16, 16], "spacing_mm": [1.0, 1.0, 1.0],
                        "sha256": "0" * 64},
              "model": {"name": "unet", "task": "multiclass"}, "figures": {"right": part, "left": part, "total": part},
              "warnings": [], "seconds": {"total": 1.0}}
    lesions = np.zeros((4, 16, 16), np.int64)
    lesions[1, 2:4, 2:4] = 3  # effusion
    report_html.render_report(report, np.full(lesions.shape, -800.0), True, lesions,
                              np.ones(lesions.shape, np.uint8), MULTICLASS, (1.0, 1.0, 1.0))
    assert [t.get_text() for t in drawn[0].axes[0].texts] == ["no lung lesion found"]
