"""What ``covseg predict`` will read and write, checked in full before a model loads.

Inputs are sorted into 3-D scans (:func:`covseg.predict.is_scan`: a NIfTI volume, a DICOM series folder, a folder
of 2-D images given a voxel size) and 2-D images (files, and the images directly in the folders given). Every
refusal is a one-line :class:`~covseg.errors.CovsegError`, raised before the models load, a scan is segmented or a
file is written: what cannot be read, outputs that would collide, overwrite an input or land in a run folder, an
input folder or the folder of an input image, replace the outputs of another scan (a NIfTI scan's; a folder scan's
are refused by :func:`covseg.predict.predict_scan` once it is read), lie beside an earlier predict's in a layout no
single predict makes (:func:`check_earlier_layout`), options that would be ignored. What can still fail later is only
what a scan's voxel data show once read whole.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from covseg.datasets import IMAGE_SUFFIXES, list_images, read_image
from covseg.dicom import looks_like_dicom
from covseg.errors import CovsegError
from covseg.fileio import check_output_folder, file_sha256, unwritable_reason
from covseg.predict import (SCAN_OUTPUTS, check_destinations, check_file_outputs, check_same_scan,
                            check_scan_not_overwritten, earlier_outputs, earlier_scan, is_scan, label_name, output_stem)
from covseg.run import is_run_folder
from covseg.volumes import check_spacing, check_volume, refuse_series_below
from covseg.wording import counted

__all__ = ["PredictPlan", "plan_predict", "check_earlier_layout", "scan_folders"]


@dataclass(frozen=True)
class PredictPlan:
    """The checked work of one ``covseg predict``: scans in the order given, each with the folder its outputs go to
    (``output`` itself for a scan predicted alone, else ``output/<stem>``), then the 2-D images, folders expanded."""

    scans: list[Path]
    scan_outputs: list[Path]
    files: list[Path]

    @property
    def together(self) -> bool:
        """Whether each scan writes into a folder of its own, ``output/<stem>`` (several scans, or scans beside 2-D
        images), not into ``output`` itself: :func:`covseg.predict.predict_scan`'s ``together``."""
        return _each_scan_in_a_subfolder(self.scans, self.files)


def _each_scan_in_a_subfolder(scans: Sequence[Path], files: Sequence[Path]) -> bool:
    """Whether the scans of one predict each write into ``-o``'s ``<stem>`` folder: several scans, or scans beside
    2-D images ``files``; one scan alone writes into ``-o`` itself."""
    return len(scans) > 1 or bool(files)


def plan_predict(inputs: Sequence[Path], output: Path, series: str | None = None,
                 spacing: Sequence[float] | None = None, overlays: bool = True,
                 scan_only: Sequence[str] = ()) -> PredictPlan:
    """Check every input and output of a prediction and say where each goes.

    ``series``: a DICOM SeriesInstanceUID to read; ``spacing``: ``(Z, Y, X)`` mm, which makes a folder of 2-D images
    one scan; ``overlays``: whether 2-D images get overlays (``False`` is refused when every input is a scan);
    ``scan_only``: the options given that act on scans only (their command-line names), refused, the first named,
    when every input is a 2-D image. Scans' headers are read (:func:`covseg.volumes.check_volume`); when scans
    and 2-D images are mixed, every image is read once too, since the images are predicted after the scans are
    published.
    """
    for item in inputs:
        if not item.exists():
            raise CovsegError(f"{item}: no such file or folder")
    check_output_folder(output)  # before the models load and the scans are segmented
    if is_run_folder(output) or any(is_run_folder(fold) for fold in output.glob("fold-*")):
        raise CovsegError(f"{output}: is a run or cross-validation folder; its files could be replaced by predictions: "
                          f"give -o a folder of its own, e.g. {output / 'predictions'}")
    for folder in (item for item in inputs if item.is_dir()):  # outputs there would be read as inputs next time
        if output.resolve().is_relative_to(folder.resolve()):  # the folder itself too
            raise CovsegError(f"{output}: is inside the input folder {folder}, where predictions would be taken for "
                              "inputs by the next run; give -o a folder outside it")
    scans = [item for item in inputs if is_scan(item, spacing)]
    for item in inputs:  # a file from a DICOM CD (IM000001, 1.2.840...; .IMA): not "an unsupported file type"
        if item.is_file() and item.name.upper() == "DICOMDIR":  # a DICOM CD's index: its series lie in folders
            refuse_series_below(item.parent)
        if (item.is_file() and item not in scans and not item.name.lower().endswith(IMAGE_SUFFIXES)
                and looks_like_dicom(item)):
            raise CovsegError(f"{item}: is a DICOM file without the .dcm suffix; give the folder holding its series "
                              f"(covseg predict {item.parent} -o OUT --model ...) to segment the scan, or copy the file "
                              "to a name ending in .dcm to predict it as one 2-D slice")
    files = [f for item in inputs if item not in scans for f in _images_in(item)]
    for item in inputs:  # its label map and overlay would lie among the images, and replace one of the same name
        # the folder it is named in and, for a symbolic link, the folder of the image it leads to
        if item.is_file() and item not in scans and output.resolve() in {item.absolute().parent.resolve(),
                                                                          item.resolve().parent}:
            raise CovsegError(f"{output}: is the folder of the input image {item}, where predictions would be mixed "
                              f"with the images and replace any of the same name ({label_name(item)}); give -o "
                              "a folder of its own")
    nested = next((f for f in files if f not in inputs and is_scan(f)), None)
    if nested is not None:
        check_volume(nested)  # one that cannot be read is refused as such, not pointed to
        raise CovsegError(f"{nested.parent}: holds the 3-D scan {nested.name}; give the file itself "
                          f"(covseg predict {nested} -o OUT --model ...)")
    if not scans and scan_only:  # every input is a 2-D slice: options that only act on scans would be ignored
        first = scan_only[0]
        hint = " (--spacing reads a folder of 2-D images as one scan: give the folder)" if spacing is not None else ""
        raise CovsegError(f"{first} acts on 3-D scans only, and every input here is a 2-D image{hint}; "
                          f"leave {first} out")
    if scans and not files and not overlays:  # a scan's report has no overlay images to leave out
        raise CovsegError("--no-overlays acts on 2-D images only, and every input here is a 3-D scan (its report.html "
                          "always draws its views); leave --no-overlays out")
    names = [output_stem(scan) for scan in scans]
    subfolders = _each_scan_in_a_subfolder(scans, files)
    if subfolders:
        clash = sorted({n for n in names if names.count(n) > 1 or not n})
        if clash:
            raise CovsegError(f"several scans would write to {output / clash[0]}; give scans distinct names "
                              "(or predict them one at a time, each with its own -o)")
    outs = [output / name if subfolders else output for name in names]
    for scan, out in zip(scans, outs):  # a scan's own file must not be replaced by what is written for it
        check_scan_not_overwritten(scan, out)
    check_earlier_layout(output, scans, names, files, overlays)
    for out in outs:  # a file where a scan's folder goes, or a folder where one of its files goes (helper 169)
        check_destinations(out.parent, [Path(out.name, name) for name in SCAN_OUTPUTS])
    for out in outs if subfolders else ():  # an earlier scan's folder made read-only: refused before any scan is
        why = unwritable_reason(out, folder=True)  # segmented, not once those before it are published
        if why:  # (output itself: checked above)
            raise CovsegError(f"{out}: cannot be written ({why}); this scan's folder inside -o {output}: make it "
                              "writable or remove it, or give -o another folder")
    if scans:  # a --spacing that is not three positive numbers is refused before the models load
        check_spacing(spacing)
    for scan in scans:
        check_volume(scan, series, spacing)
    for scan, out in zip(scans, outs):  # replacing another scan's outputs would lose them (a shell loop, one -o)
        # only where a report is there: hashing a large scan costs a disk read. A NIfTI's digest is its file's; a
        # DICOM series' or image folder's spans the files read, in slice order, and is checked once it is read
        if scan.is_file() and earlier_scan(out) is not None:
            check_same_scan(scan, file_sha256(scan), out, together=subfolders)
    if files:  # their outputs' names and places, before the models load (predict_files checks them again)
        _, labels, _ = check_file_outputs(files, output, overlays=overlays)
    if scans and files:  # the 2-D images are predicted after the scans are published: each is read once now
        taken = {**{name: "label map" for name in labels}, "predictions.json": "summary",
                 **({"overlays": "overlays folder"} if overlays else {})}
        _refuse_scan_folders_taken(scans, names, output, taken)
        for file in files:
            read_image(file)
    return PredictPlan(scans, outs, files)


def _images_in(item: Path) -> list[Path]:
    """:func:`covseg.datasets.list_images` of an input that is no scan; a folder without images of its own but DICOM
    series in folders below it (a patient's or a study's folder) is refused naming one
    (:func:`covseg.volumes.refuse_series_below`), not as a folder without images."""
    try:
        return list_images(item)
    except CovsegError:
        if item.is_dir():
            refuse_series_below(item)
        raise


def _refuse_scan_folders_taken(scans: Sequence[Path], names: Sequence[str], output: Path,
                               taken: dict[str, str]) -> None:
    """Refuse a scan whose folder ``output/<name>`` (``names``: the scans' output stems) would be one of the 2-D
    images' outputs there: ``taken`` maps such names (relative to ``output``) to what they are."""
    for scan, name in zip(scans, names):
        if name in taken:
            raise CovsegError(f"{scan}: its outputs would go to {output / name}, the 2-D images' {taken[name]}; "
                              "rename the scan, or predict it on its own with its own -o")


def scan_folders(output: Path) -> list[str]:
    """The names, sorted, of the folders directly in ``output`` that hold a scan's outputs (a covseg ``report.json``
    that :func:`covseg.predict.earlier_scan` reads), as a predict of several scans, or of scans beside 2-D images,
    writes them; hidden folders (a staging folder a crash left) are not counted. Empty where ``output`` is none or
    cannot be listed (a folder one may write in but not read)."""
    try:
        entries = list(output.iterdir()) if output.is_dir() else []
    except OSError:
        return []
    return sorted(p.name for p in entries if p.is_dir() and not p.name.startswith(".") and earlier_scan(p) is not None)


def _listed(folders: Sequence[str], shown: int = 3) -> str:
    """``a/, b/, c/ and 2 more``: the first ``shown`` of ``folders``, then how many more."""
    more = f" and {len(folders) - shown} more" if len(folders) > shown else ""
    return ", ".join(f"{name}/" for name in folders[:shown]) + more


def check_earlier_layout(output: Path, scans: Sequence[Path], names: Sequence[str], files: Sequence[Path],
                         overlays: bool = True) -> None:
    """Refuse, in one line, a predict of ``scans`` (their output stems ``names``) and 2-D images ``files`` into
    ``output`` where its outputs would lie beside an earlier predict's in a layout no single predict makes, or be
    written into one of its outputs.

    One scan alone writes its four files into ``output`` itself; several scans, or scans beside 2-D images, each into
    ``output/<stem>/``; 2-D images their label maps, ``overlays/`` and ``predictions.json`` into ``output``. So the
    scans' folders and 2-D outputs of two predicts may meet in one ``output`` (one predict of both writes them so),
    but a lone scan's files may not lie beside other scans' folders (:func:`scan_folders`) or among 2-D label maps
    (those an earlier ``predictions.json`` lists), nor anything else beside a lone scan's files (``output``'s own
    ``report.json``: the same scan alone again is :func:`covseg.predict.check_same_scan`'s to judge). A scan's folder
    must not be an earlier 2-D output, nor an earlier scan's folder one of the 2-D images' label maps, their
    ``predictions.json`` or (with ``overlays``) their ``overlays``."""
    alone = bool(scans) and not _each_scan_in_a_subfolder(scans, files)
    slices = earlier_outputs(output)
    if alone:
        stem = names[0]
        folders = scan_folders(output)
        if folders:
            whose = "a folder of its" if len(folders) == 1 else "folders of their"
            held = f"{counted(len(folders), 'scan')} in {whose} own ({_listed(folders)})"
            raise CovsegError(f"{output}: holds the outputs of {held}; a scan given alone writes into -o itself, where "
                              f"its outputs would lie beside theirs; give -o {output / stem} (its folder when the "
                              "scans are given together), or a new folder")
        if slices:
            raise CovsegError(f"{output}: holds the label maps of {counted(len(slices), '2-D image')} "
                              "(predictions.json); a scan given alone writes into -o itself, where its outputs would "
                              f"lie among them; give -o {output / stem} (its folder when given beside 2-D images), or "
                              "a new folder")
        return
    lone = earlier_scan(output)
    if lone is not None:
        what = " and ".join(part for part, given in (("the folders of this predict's scans", scans),
                                                      ("the 2-D images' label maps", files)) if given)
        what = what if scans else f"{what} and predictions.json"
        raise CovsegError(f"{output}: holds the outputs of one scan given alone, {lone[0]}; {what} would lie beside "
                          "them; give -o a new folder, or move the scan's outputs into a folder of their own")
    if slices:  # the scans' folders must not be what an earlier predict of 2-D images wrote there
        taken = {**{name: "label map" for name in slices}, "predictions.json": "summary",
                 **({"overlays": "overlays folder"} if (output / "overlays").exists() else {})}
        _refuse_scan_folders_taken(scans, names, output, taken)
    if files:  # an earlier scan's folder (a scan named 1.png.nii.gz) where a file goes: "remove it" would lose it
        for name, what in {**{label_name(f): "label map" for f in files}, "predictions.json": "summary"}.items():
            earlier = earlier_scan(output / name)
            if earlier is not None:
                raise CovsegError(f"{output / name}: holds the outputs of the scan {earlier[0]}, where the 2-D "
                                  f"images' {what} would go; give -o a new folder")
    earlier = earlier_scan(output / "overlays")
    if files and overlays and earlier is not None:
        raise CovsegError(f"{output / 'overlays'}: holds the outputs of the scan {earlier[0]}, where the 2-D images' "
                          "overlays would go; give -o a new folder, or leave the overlays out (--no-overlays)")
