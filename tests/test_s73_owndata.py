"""Session 73, own data: a researcher's own labelled slices in the image/mask folder layout, the mistakes made in
laying them out (one line saying what is wrong and how to fix it), data sets too small for their split, and a
`covseg download --mirror` folder given one level too deep."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import covseg.download as dl
from covseg.cli import main
from covseg.datasets import load_dataset
from covseg.errors import CovsegError
from covseg.splits import kfold, make_split


def _png(path: Path, data: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(data, np.uint8)).save(path)


def _pairs(root: Path, stems: tuple[str, ...] = ("a", "b"), masks: str = "masks") -> Path:
    """Slices ``images/<stem>.png`` (4x3 grey) with masks ``<masks>/<stem>.png`` (label 1 at the top-left pixel)."""
    for stem in stems:
        _png(root / "images" / f"{stem}.png", np.full((4, 3), 100))
        label = np.zeros((4, 3))
        label[0, 0] = 1
        _png(root / masks / f"{stem}.png", label)
    return root


# ------------------------------------------------------------------------------------- half a folder layout


def test_images_without_a_masks_folder_say_which_folder_is_missing(tmp_path: Path) -> None:
    root = _pairs(tmp_path / "data", masks="mask")  # "mask/", not "masks/": not a masks folder
    with pytest.raises(CovsegError) as info:
        load_dataset(root, "binary")
    assert str(info.value) == (f"{root}: has images/ but no masks/, GT/ or labels/ folder beside it (other folders: "
                               f"mask/); put each image's mask, of the same name, in {root / 'masks'} (covseg predict "
                               "takes images without masks)")


def test_masks_without_an_images_folder_say_which_folder_is_missing(tmp_path: Path) -> None:
    root = _pairs(tmp_path / "data")
    for path in (root / "images").iterdir():
        path.unlink()
    (root / "images").rmdir()
    with pytest.raises(CovsegError) as info:
        load_dataset(root, "multiclass")
    assert str(info.value) == (f"{root}: has masks/ but no images/ or imgs/ folder beside it; put the slices, named "
                               f"as their masks, in {root / 'images'}")


def test_slices_lying_in_the_data_folder_itself_are_told_to_move_into_images(tmp_path: Path) -> None:
    for stem in ("2", "10", "1"):
        _png(tmp_path / f"{stem}.png", np.full((4, 3), 100))
    with pytest.raises(CovsegError) as info:
        load_dataset(tmp_path, "binary")
    assert str(info.value) == (f"{tmp_path}: holds 3 image files (1.png, ...) but no images/ and masks/ folders; move "
                               f"the slices into {tmp_path / 'images'} and their masks, of the same names, into "
                               f"{tmp_path / 'masks'} (covseg predict takes a folder of images as it is)")


def test_one_slice_in_the_data_folder_is_counted_in_the_singular(tmp_path: Path) -> None:
    _png(tmp_path / "a.png", np.full((4, 3), 100))
    with pytest.raises(CovsegError, match=r": holds 1 image file \(a\.png\) but no images/"):
        load_dataset(tmp_path, "binary")


def test_a_medseg_image_volume_alone_still_names_the_accepted_layouts(tmp_path: Path) -> None:
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.full((2, 2, 1), -1000.0, np.float32), np.eye(4)), str(tmp_path / "tr_im.nii.gz"))
    with pytest.raises(CovsegError, match=r": no data layout recognised; accepted layouts: .*tr_mask\.nii\.gz"):
        load_dataset(tmp_path, "binary")


def test_masks_named_otherwise_than_their_images_are_told_how_to_name_them(tmp_path: Path) -> None:
    root = _pairs(tmp_path / "data")
    for path in sorted((root / "masks").iterdir()):
        path.rename(path.with_name(f"{path.stem}_mask.png"))
    with pytest.raises(CovsegError) as info:
        load_dataset(root, "binary")
    assert str(info.value) == (f"{root / 'masks'}: no mask has the name of an image in {root / 'images'} (first image "
                               "a.png, first mask a_mask.png); name each mask as its image, in any supported format "
                               "(masks/a.png for images/a.png)")


def test_one_mask_misnamed_among_paired_ones_is_still_named_alone(tmp_path: Path) -> None:
    root = _pairs(tmp_path / "data", ("a", "b", "c"))
    (root / "masks" / "c.png").rename(root / "masks" / "c_mask.png")
    with pytest.raises(CovsegError, match=r"c_mask\.png: mask without an image \(no c_mask\.\* in "):
        load_dataset(root, "binary")


def test_the_cli_refuses_half_a_folder_layout_in_one_line_with_exit_2(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "data"
    _png(root / "images" / "a.png", np.full((4, 3), 100))
    assert main(["train", "--recipe", "tiny", "--data", str(root), "-o", str(tmp_path / "run"), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert err == (f"covseg: error: {root}: has images/ but no masks/, GT/ or labels/ folder beside it; put each "
                   f"image's mask, of the same name, in {root / 'masks'} (covseg predict takes images without masks)\n")
    assert not (tmp_path / "run").exists()


def test_a_correct_folder_layout_still_loads_aligned(tmp_path: Path) -> None:
    root = _pairs(tmp_path / "data")
    samples = load_dataset(root, "binary")
    assert [s.name for s in samples] == ["a", "b"]
    expected = np.zeros((4, 3), np.int64)
    expected[0, 0] = 1
    for sample in samples:
        np.testing.assert_array_equal(sample.mask, expected)
        np.testing.assert_allclose(sample.image, np.full((4, 3), 100 / 255), rtol=1e-6)


# ------------------------------------------------------------------------------------- too few images to split


def test_one_image_cannot_be_cross_validated_and_says_so_in_the_singular() -> None:
    with pytest.raises(CovsegError) as info:
        kfold(["a"], 3)
    assert str(info.value) == ("cannot make folds from 1 image: cross-validation needs at least 2; add images, or use "
                               "--split official with data.val_fraction=0 to train on all of them")


def test_more_folds_than_images_names_the_setting_to_change() -> None:
    with pytest.raises(CovsegError) as info:
        make_split(["a", "b", "c"], "cv:0", folds=5)
    assert str(info.value) == ("cannot make 5 folds from 3 images; use 2 to 3 folds (data.folds=3, or covseg cv "
                               "--folds 3)")


def test_one_fold_suggests_two() -> None:
    with pytest.raises(CovsegError, match=r"^cannot make 1 fold from 4 images; use 2 to 4 folds \(data\.folds=2, "):
        kfold(["a", "b", "c", "d"], 1)


def test_as_many_folds_as_images_still_split_one_image_a_fold() -> None:
    folds = kfold(["c", "a", "b"], 3)
    assert sorted(name for fold in folds for name in fold) == ["a", "b", "c"]
    assert [len(fold) for fold in folds] == [1, 1, 1]


def test_the_cli_refuses_three_images_in_five_folds_before_writing(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    root = _pairs(tmp_path / "data", ("a", "b", "c"))
    run = tmp_path / "run"
    assert main(["train", "--recipe", "tiny", "--data", str(root), "-o", str(run), "--epochs", "1", "--split", "cv:0",
                 "data.folds=5"]) == 2
    assert capsys.readouterr().err == ("covseg: error: cannot make 5 folds from 3 images; use 2 to 3 folds "
                                       "(data.folds=3, or covseg cv --folds 3)\n")
    assert not run.exists()


# ------------------------------------------------------------------------------------- download --mirror


TRAIN = "Dataset/TrainingSet/LungInfection-Train/Doctor-label/Imgs/1.jpg"
TRAIN_GT = "Dataset/TrainingSet/LungInfection-Train/Doctor-label/GT/1.png"


def _mirror_and_manifest(monkeypatch: pytest.MonkeyPatch, root: Path) -> Path:
    from conftest import fake_mirror

    return fake_mirror(monkeypatch, root, {TRAIN: b"image bytes", TRAIN_GT: b"mask bytes"})


@pytest.mark.parametrize("deeper", ["Dataset", "Dataset/TrainingSet"])
def test_a_mirror_folder_one_level_too_deep_names_the_folder_to_give(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                     deeper: str) -> None:
    mirror = _mirror_and_manifest(monkeypatch, tmp_path / "copy")
    given = mirror / deeper
    with pytest.raises(CovsegError) as info:
        dl.download("covid-semiseg", tmp_path / "data", mirror=str(given), progress=False)
    assert str(info.value) == (f"training split incomplete: 2 of 2 files missing or corrupt, first {TRAIN_GT} "
                               f"(missing from {given}); {given} is the mirror's Dataset/ folder or one inside it: "
                               f"pass --mirror {mirror.resolve()}, the folder that holds Dataset/")
    assert not (tmp_path / "data").exists()  # nothing fetched, no empty folders left


def test_an_empty_mirror_folder_keeps_the_plain_hint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _mirror_and_manifest(monkeypatch, tmp_path / "copy")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CovsegError, match=r"\(missing from .*empty\); pass --mirror DIR_OR_URL \(or set "
                                          r"COVSEG_MIRROR\) with a complete copy$"):
        dl.download("covid-semiseg", tmp_path / "data", mirror=str(tmp_path / "empty"), progress=False)


def test_a_mirror_missing_one_file_is_not_sent_up_a_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    mirror = _mirror_and_manifest(monkeypatch, tmp_path / "copy")
    (mirror / TRAIN_GT).unlink()
    with pytest.raises(CovsegError) as info:
        dl.download("covid-semiseg", tmp_path / "data", mirror=str(mirror), progress=False)
    assert str(info.value) == (f"training split incomplete: 1 of 2 files missing or corrupt, first {TRAIN_GT} "
                               f"(missing from {mirror}); pass --mirror DIR_OR_URL (or set COVSEG_MIRROR) with a "
                               "complete copy")
    root = tmp_path / "data" / "covid-semiseg"
    assert (root / TRAIN).read_bytes() == b"image bytes"  # the verified file is kept: a rerun resumes
    assert not list(root.rglob("*.part"))


def test_a_damaged_mirror_file_is_named_and_not_kept(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    mirror = _mirror_and_manifest(monkeypatch, tmp_path / "copy")
    (mirror / TRAIN_GT).write_bytes(b"mask bytez")
    with pytest.raises(CovsegError, match=rf"^training split incomplete: 1 of 2 files missing or corrupt, first "
                                          rf"{TRAIN_GT} \(fails its SHA-256 check in "):
        dl.download("covid-semiseg", tmp_path / "data", mirror=str(mirror), progress=False)
    root = tmp_path / "data" / "covid-semiseg"
    assert not (root / TRAIN_GT).exists() and not list(root.rglob("*.part"))


# ------------------------------------------------------------------------------------- evaluate --split test


def test_evaluate_split_test_on_own_folders_says_how_to_score_a_held_out_fold(tmp_path: Path) -> None:
    # before: "use --split cv:K to hold out folds of it", an option covseg evaluate does not take
    root = _pairs(tmp_path / "data")
    with pytest.raises(CovsegError) as info:
        load_dataset(root, "binary", split="test")
    assert str(info.value) == (f"{root}: the image/mask folder layout holds only training data, no test split; use "
                               "--split cv:K (covseg train --split cv:K) to hold out a fold of it, and score that fold "
                               "with covseg evaluate RUN --split heldout")


# ------------------------------------------------------------------------------------- masks saved for viewing


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_class_ids_multiplied_by_85_for_viewing_are_named_with_the_factor(tmp_path: Path, task: str) -> None:
    from covseg.datasets import read_mask
    from covseg.labels import get_scheme

    path = tmp_path / "m.png"
    _png(path, np.array([[0, 85], [170, 255]]))  # ids 0..3 x 85, as an 8-bit mask is often saved to be seen
    with pytest.raises(CovsegError) as info:
        read_mask(path, get_scheme(task))
    assert str(info.value) == (f"{path}: mask values [85, 170, 255] look like the class ids [1, 2, 3] multiplied by "
                               "85, as a mask saved for viewing; save the class ids themselves (each value divided by "
                               "85) as the pixel values")


def test_a_16_bit_mask_of_0_and_65535_is_named_with_its_possible_factors(tmp_path: Path) -> None:
    from covseg.datasets import read_mask
    from covseg.labels import BINARY

    path = tmp_path / "m.png"
    Image.fromarray(np.array([[0, 65535], [0, 0]], np.uint16)).save(path)
    # one value alone: a binary 0/65535 mask, or id 3 of a 0/21845/43690/65535 one; both readings are named
    with pytest.raises(CovsegError, match=r"m\.png: mask value 65535 looks like a class id multiplied for viewing, "
                                          r"which one this mask alone cannot tell \(id 1 times 65535 or id 3 times "
                                          r"21845\); save the class ids themselves"):
        read_mask(path, BINARY)


@pytest.mark.parametrize(("values", "task", "message"), [
    ([0, 5], "multiclass", r"label values \[5\] are outside the multiclass scheme"),  # a stray id: no factor
    ([0, 1, 255], "binary", r"label values \[255\] are neither binary"),  # 255 beside 1: not one step
    ([0, 100, 300, 350], "multiclass", r"label values \[100, 300, 350\] are outside"),  # 350 is 7 steps of 50
])
def test_other_values_outside_the_scheme_keep_the_plain_message(tmp_path: Path, values: list[int], task: str,
                                                                 message: str) -> None:
    from covseg.datasets import read_mask
    from covseg.labels import get_scheme

    path = tmp_path / "m.tif"
    Image.fromarray(np.array([values], np.int32)).save(path)
    with pytest.raises(CovsegError, match=message):
        read_mask(path, get_scheme(task))


def test_a_0_255_mask_is_still_binary_and_ids_0_to_3_still_read(tmp_path: Path) -> None:
    from covseg.datasets import read_mask
    from covseg.labels import BINARY, MULTICLASS

    _png(tmp_path / "b.png", np.array([[0, 255], [255, 0]]))
    np.testing.assert_array_equal(read_mask(tmp_path / "b.png", BINARY), [[0, 1], [1, 0]])
    _png(tmp_path / "m.png", np.array([[0, 1], [2, 3]]))
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png", MULTICLASS), [[0, 1], [2, 3]])
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png", BINARY), [[0, 1], [1, 1]])


def test_an_images_folder_read_for_unlabelled_slices_says_the_layout_holds_none(tmp_path: Path) -> None:
    # what reads unlabelled slices (covseg pretrain, train.consistency) is not told to add masks
    root = tmp_path / "data"
    _png(root / "images" / "a.png", np.full((4, 3), 100))
    with pytest.raises(CovsegError, match=rf"^{root}: the image/mask folder layout holds no unlabelled slices "):
        load_dataset(root, "binary", split="unlabelled")
    _png(tmp_path / "flat" / "a.png", np.full((4, 3), 100))
    with pytest.raises(CovsegError, match=r"flat: the image/mask folder layout holds no unlabelled slices "):
        load_dataset(tmp_path / "flat", "binary", split="unlabelled")


# ------------------------------------------------------------------------------------- files of other types


def test_masks_of_an_unread_type_are_named_not_reported_missing(tmp_path: Path) -> None:
    # before: "images/b.png: image without a mask (no b.* in masks)", with masks/b.bmp there
    root = _pairs(tmp_path / "data")
    (root / "masks" / "b.png").rename(root / "masks" / "b.bmp")
    with pytest.raises(CovsegError, match=r"masks[/\\]b\.bmp: unsupported file type '\.bmp'; use one of \.png, "):
        load_dataset(root, "binary")


def test_an_images_folder_of_an_unread_type_says_which_files_it_holds(tmp_path: Path) -> None:
    root = _pairs(tmp_path / "data")
    for path in sorted((root / "images").iterdir()):
        path.rename(path.with_suffix(".bmp"))
    with pytest.raises(CovsegError) as info:
        load_dataset(root, "binary")
    assert str(info.value) == (f"no images found in {root / 'images'}: it holds 2 files of other types (a.bmp, ...); "
                               "save the slices as one of .png, .jpg, .jpeg, .tif, .tiff, .nii, .nii.gz, .dcm")


def test_an_empty_images_folder_is_still_no_images_found(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    (tmp_path / "images" / ".DS_Store").write_bytes(b"x")  # hidden: not counted
    with pytest.raises(CovsegError) as info:
        load_dataset(tmp_path, "binary")
    assert str(info.value) == f"no images found in {tmp_path / 'images'}; check the data path"


def test_one_file_is_named_without_an_ellipsis_for_others(tmp_path: Path) -> None:
    from covseg.datasets import _first_of

    assert _first_of([tmp_path / "a.png"]) == "a.png"  # "(a.png, ...)" promised others that were not there
    assert _first_of([tmp_path / "a.png", tmp_path / "b.png"]) == "a.png, ..."


def test_a_mirror_next_to_the_root_finds_no_folder_above_it_instead_of_failing(tmp_path: Path) -> None:
    from covseg.download import _mirror_folder_above

    # /tmp holds the manifest path less its first two folders, which a mirror two folders above /tmp would explain:
    # there is none (/ is one above it), so no folder is named (it was an IndexError)
    import os
    import shutil

    probe = Path("/tmp") / f"covseg-s73-probe-{os.getpid()}"
    probe.mkdir()
    try:
        (probe / "1.jpg").write_text("x")
        assert _mirror_folder_above(Path("/tmp"), f"Dataset/TrainingSet/{probe.name}/1.jpg") is None
    finally:
        shutil.rmtree(probe)
    copy = tmp_path / "copy"
    (copy / "Dataset" / "TrainingSet").mkdir(parents=True)
    (copy / "Dataset" / "TrainingSet" / "x.jpg").write_text("x")
    assert _mirror_folder_above(copy / "Dataset", "Dataset/TrainingSet/x.jpg") == copy.resolve()
