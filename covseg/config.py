"""Typed run configuration: one dataclass per concern, loaded from a recipe YAML, overridable from the CLI.

A recipe is a YAML file with ``data``, ``model`` and ``train`` sections (see ``covseg/recipes/``) and, optionally,
a ``tasks`` section of per-task settings merged over the shared ones for the task in use (``tasks: {binary:
{train: {augment: {rotate_deg: 5}}}}``). The resolved :class:`RunConfig` is saved as ``config.yaml`` beside every
run, so a run never depends on the recipe file again.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from covseg.errors import CovsegError
from covseg.intensity import NORMALIZATIONS
from covseg.splits import parse_split_name, split_settings

__all__ = [
    "DataConfig",
    "data_differences",
    "ModelConfig",
    "AugmentConfig",
    "TrainConfig",
    "RunConfig",
    "TASKS",
    "MAX_SEED",
    "MAX_LR",
    "MAX_WIDTH",
    "MAX_INPUT_SIZE",
    "RESIZE_MODES",
    "available_recipes",
    "load_recipe",
    "apply_overrides",
    "check_override_words",
    "text_override",
    "check_new_run",
    "config_to_dict",
    "config_from_dict",
]

RESIZE_MODES: tuple[str, ...] = ("stretch", "pad")  # how a slice reaches the square input (covseg.transforms)


TASKS = ("binary", "multiclass")


@dataclass
class DataConfig:
    """What data, which labels, which split, how images are normalised and sized."""

    task: str = "binary"  # "binary" | "multiclass"
    split: str = "cv:0"  # "official" | "cv:K" | "seed" | "paper"
    folds: int = 5
    split_seed: int = 0
    val_fraction: float = 0.1  # validation carved from the training images for split "official"
    input_size: int = 352  # square side the model sees; a multiple of 2**depth
    resize: str = "stretch"  # to input_size²: "stretch" (each side on its own) | "pad" (keep aspect, zero-pad; covseg.transforms)
    window_level: float = -600.0  # lung window for HU input
    window_width: float = 1500.0
    normalize: str = "none"  # per-slice intensity normalisation: "none" | "equalize" | "percentile" (covseg.intensity)
    pseudo_labels: str = ""  # folder from `covseg pseudo-label` (self-training); "" = none
    pseudo_ratio: float = 1.0  # pseudo-labelled slices drawn per epoch, per labelled training image

    @property
    def window(self) -> tuple[float, float]:
        """The lung window as ``(level, width)`` in HU, as the readers take it."""
        return (self.window_level, self.window_width)


def data_differences(there: Mapping[str, Any], here: DataConfig, keys: Iterable[str]) -> list[str]:
    """``"data.KEY A there, B here"`` for each of ``keys`` whose value in ``there`` (another run's ``data`` settings,
    as a mapping) differs from ``here``'s; a key ``there`` lacks (saved before the option existed) is skipped."""
    return [f"data.{k} {there[k]} there, {getattr(here, k)} here" for k in keys
            if k in there and there[k] != getattr(here, k)]


@dataclass
class ModelConfig:
    """Architecture: a name from :data:`covseg.models.MODELS` and its options."""

    name: str = "unet"
    width: int = 32
    depth: int = 4
    batch_norm: bool = True  # normalise after each convolution (false: none)
    norm: str = "batch"  # normalisation when batch_norm: "batch" | "instance" | "group" (U-Net; models.unet.NORMS)
    deep_supervision: bool = False  # extra losses on coarser decoder levels while training (U-Net, SegNet)
    block: str = "plain"  # U-Net's convolution blocks: "plain" | "residual" (covseg.models.unet.BLOCKS)
    dropout: float = 0.0  # U-Net: share of the bottleneck's channels dropped while training (Dropout2d), in [0, 1)
    # U-Net: share of each decoder level's channels dropped while training (Dropout2d), all levels but the top one
    decoder_dropout: float = 0.0
    # U-Net: an additive attention gate on each skip connection (Attention U-Net; covseg.models.unet.AttentionGate)
    attention: bool = False


@dataclass
class AugmentConfig:
    """On-the-fly augmentation of training batches (all off = the seed article's plain training)."""

    hflip: float = 0.0  # probability of a left-right flip
    vflip: float = 0.0
    rotate_deg: float = 0.0  # uniform rotation in [-rotate_deg, rotate_deg]
    scale: float = 0.0  # uniform zoom factor in [1 - scale, 1 + scale]
    gamma: float = 0.0  # intensity gamma in [1 - gamma, 1 + gamma]
    brightness: float = 0.0  # additive shift in [-brightness, brightness]
    contrast: float = 0.0  # scale about the image's mean by a factor in [1 - contrast, 1 + contrast]
    elastic: float = 0.0  # smooth local warp: largest shift as a fraction of the image side (0.02 = 7 px at 352)
    # train on a random square crop of this side (pixels) of each augmented image (0: the whole image); the
    # model still validates and predicts whole images. A multiple of 2**model.depth, at most data.input_size
    crop: int = 0
    # CutMix (Yun et al. 2019; French et al. 2020 for segmentation): with this probability each image of the batch
    # gets a random box (area a uniform share of the image, aspect kept) of another image of the batch, label map
    # included. Applied on the augmented (and cropped or progressively resized) batch, before lesion paste
    cutmix: float = 0.0
    # lesion paste, after CarveMix (Zhang et al., MICCAI 2021): with this probability each image of the batch gets
    # another image's lesions (every foreground label), with a margin of surrounding tissue up to 3 % of the side
    # drawn per image, pixels and labels, at the same place. Applied last, after CutMix
    lesion_paste: float = 0.0
    # simulated low resolution, after nnU-Net (Isensee et al. 2021): with this probability each image (not its label
    # map) is resampled down to a uniform share in [0.5, 1] of its side (nearest) and back up (bicubic), as slices
    # exported from smaller or blurrier originals look. Applied after the grey-level changes, before the crop
    lowres: float = 0.0
    # Gaussian noise, after nnU-Net: with this probability each image gets pixel noise of a standard deviation drawn
    # uniformly in [0, 0.1] (of the [0, 1] grey range), clamped to [0, 1]. Applied after the grey-level changes
    noise: float = 0.0
    # Gaussian blur, after nnU-Net: with this probability each image is smoothed by a Gaussian of a sigma drawn
    # uniformly in [0.5, 1] pixels (edges replicated). Applied after the noise, before simulated low resolution
    blur: float = 0.0


@dataclass
class TrainConfig:
    """Optimisation: loss, optimiser, schedule, budget, numerics."""

    loss: str = "dice_ce"  # see covseg.losses.LOSSES
    # the Dice term's sums: "batch" (whole batch, nnU-Net) | "sample" (per image, MONAI) |
    # "present" (per image, skipping (image, class) pairs whose truth lacks the class, as the metric)
    dice: str = "batch"
    # add the lesion (every foreground class together) to the Dice term as one more region (multiclass only)
    lesion_dice: bool = False
    # the Dice term's weight against the cross-entropy term's 1 (dice_ce and mfb_dice_ce only)
    dice_weight: float = 1.0
    # the Dice term as a Tversky index (Salehi et al. 2017): false negatives weighted beta, false positives 1 - beta;
    # 0.5 is Dice, more leans towards recall (*dice* losses only)
    tversky_beta: float = 0.5
    # apply tversky_beta to the lesion region alone (needs lesion_dice); each type keeps plain Dice (multiclass only)
    tversky_lesion_only: bool = False
    # add this multiple of the Lovasz-softmax loss per (image, class) pair (Berman et al. 2018; dice_ce / mfb_dice_ce only)
    lovasz_weight: float = 0.0
    # the cross-entropy term over only this fraction of the batch's hardest pixels (nnU-Net's TopK loss; 0.1 is its
    # DC_and_topk_loss); 1 = every pixel (ce, mfb_ce, dice_ce, mfb_dice_ce only)
    ce_topk: float = 1.0
    # label smoothing of the cross-entropy term (Szegedy et al. 2016; torch's CrossEntropyLoss label_smoothing): the
    # target is (1 - eps) one-hot + eps / C; 0 = off (ce, mfb_ce, dice_ce, mfb_dice_ce only)
    label_smoothing: float = 0.0
    # the cross-entropy term as a focal loss (Lin et al. 2017): each pixel's CE times (1 - p_truth) ** gamma; 0 = off
    # (ce, mfb_ce, dice_ce, mfb_dice_ce only; not with ce_topk or label_smoothing)
    focal_gamma: float = 0.0
    # mixup (Zhang et al. 2018): each batch becomes lam x + (1 - lam) x[partner], lam ~ Beta(mixup_alpha, mixup_alpha)
    # per batch, partners a cyclic shift of the batch; the loss is lam loss(y) + (1 - lam) loss(y[partner]); 0 = off.
    # Needs batch_size >= 2; a last batch of one image is left unmixed
    mixup_alpha: float = 0.0
    # learn only which lesion type each truth-lesion pixel is (covseg.losses.LesionTypeLoss; the background
    # output stays untrained): a type model for `--lesion-model`, which finds the lesions (multiclass only)
    types_only: bool = False
    # score the lesion (every foreground class together, as the binary task) and, on the truth's lesion pixels,
    # its type (covseg.losses.LesionAndTypeLoss): --lesion-model's two models in one network (multiclass only)
    lesion_and_type: bool = False
    optimizer: str = "adamw"  # "adam" | "adamw" | "sgd"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    # SGD's (Nesterov) momentum; nnU-Net trains with 0.99 (sgd only)
    momentum: float = 0.9
    # clip the gradients' global L2 norm to this before each step (torch.nn.utils.clip_grad_norm_; nnU-Net: 12); 0 = off
    grad_clip: float = 0.0
    schedule: str = "cosine"  # "constant" | "cosine" | "onecycle"
    epochs: int = 50
    # validate every N epochs and after the last (best.pt is chosen among those); training itself, and so last.pt,
    # does not change. Validation is ~8 % of an epoch of `default` on 2 CPU cores
    val_every: int = 1
    batch_size: int = 8
    # how each epoch draws its slices: "uniform" (shuffled, each slice once) | "class_balanced" (as many draws, with
    # replacement, each slice weighted by the sum, over the foreground classes its truth holds, of 1 / the number of
    # training slices holding that class, and slices without foreground by 1 / their number: a rarer class's slices
    # come up more often; nnU-Net's foreground oversampling, for whole slices)
    sampling: str = "uniform"
    seed: int = 0
    precision: str = "auto"  # "auto" (bf16 where supported) | "fp32" | "bf16"
    device: str = "cpu"  # "cpu" | "cuda" | "auto"
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    # decay of an exponential moving average of the weights, updated after every optimiser step and saved as
    # ema.pt with the trained network's batch-norm statistics (evaluate with --checkpoint ema); 0 = none.
    # 0.99 spans ~100 steps
    ema: float = 0.0
    # stochastic weight averaging (Izmailov et al. 2018): the last swa_epochs epochs train at the constant rate
    # swa_lr (the schedule runs over the epochs before them, from lr down to swa_lr) and their end-of-epoch weights
    # are averaged with equal weights into swa.pt, with batch-norm statistics recomputed over the training slices
    # (the run's model from then on: evaluate, predict, export and cv take it; --checkpoint last for the other); 0 = none
    swa_epochs: int = 0
    swa_lr: float = 0.0
    # semi-supervised consistency (covseg.consistency; French et al. 2020): weight of a soft cross-entropy that pulls
    # the student's predictions on CutMix-ed unlabelled slices towards its mean teacher's (decay teacher_decay);
    # consistency_batch unlabelled slices join every step. 0 = off
    consistency: float = 0.0
    consistency_batch: int = 4
    teacher_decay: float = 0.99
    # batch norm under the consistency term: "shared" = the mixed unlabelled slices join the labelled batch in one
    # forward pass (the running statistics are both's) and the teacher predicts with the student's running statistics;
    # "own" = the mixed slices pass alone, normalised by their own batch statistics without moving the running ones
    # (those stay the labelled slices', as inference uses them), and the teacher normalises the clean unlabelled
    # slices by their own batch statistics (Tarvainen & Valpola 2017)
    consistency_norm: str = "shared"
    # start from the weights `covseg pretrain` wrote (its folder or pretrained.pt; every tensor whose name and shape
    # match, so all but the output heads): self-supervised pretraining on unlabelled slices; or from a trained run
    # (its folder: last.pt) of the same network and split, to fine-tune it (a lesion-type model, train.types_only,
    # only where its untrained background output is not copied: covseg.pretrain.check_pretrained). "" = random weights
    init: str = ""
    # which of train.init's tensors to copy: "all" (every one whose name and shape match) | "encoder" (the
    # contracting path's only, `encoders.*`: the decoder, up-samplers and heads start from random weights, the usual
    # transfer-learning split; a restoration network's decoder learnt to paint grey levels back)
    init_parts: str = "all"
    # knowledge distillation (covseg.distill; Hinton et al. 2015): trained runs of the same task and split (folders or
    # .pt files, separated by commas; {fold} is the fold of a cv:K split) whose averaged probabilities, softened at
    # distill_temperature, the student's follow through a KL term of weight distill_weight. "" = none
    distill: str = ""
    distill_weight: float = 1.0
    distill_temperature: float = 1.0
    # progressive resizing (fast.ai; EfficientNetV2): the first floor(progressive_fraction * epochs) epochs train on
    # each augmented image resampled to progressive_size x progressive_size (the whole slice, fewer pixels), the rest
    # at data.input_size; validation and prediction always use data.input_size. 0 = off. A multiple of 2**model.depth
    progressive_size: int = 0
    progressive_fraction: float = 0.0  # in (0, 1) when progressive_size is set, e.g. 0.667: 80 of 120 epochs
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def progressive_epochs(self) -> int:
        """How many epochs, from the first, train at ``progressive_size`` (0 when off)."""
        # rounded first: 0.58 * 50 is 28.999999999999996 in binary floating point, and means 29
        return math.floor(round(self.progressive_fraction * self.epochs, 9)) if self.progressive_size else 0


@dataclass
class RunConfig:
    """Everything one training run needs; saved whole beside the run."""

    recipe: str = "default"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def available_recipes() -> list[str]:
    """Names of the recipes shipped in the package."""
    folder = resources.files("covseg") / "recipes"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


class _DuplicateKey(Exception):
    """A mapping of a recipe names ``key`` twice, the second time on (1-based) ``line``."""

    def __init__(self, key: Any, line: int, sections: bool) -> None:
        super().__init__(key, line, sections)
        self.key, self.line, self.sections = key, line, sections


class _RecipeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key named twice in one mapping (``safe_load`` keeps the last, so a second
    ``train:`` section dropped every option of the first without a word). YAML's ``<<`` merge keys still merge."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                earlier = seen.get(key)
            except TypeError:  # an unhashable key: SafeLoader's own error says so
                continue
            if earlier is not None:
                sections = isinstance(earlier, yaml.MappingNode) and isinstance(value_node, yaml.MappingNode)
                raise _DuplicateKey(key, key_node.start_mark.line + 1, sections)
            seen[key] = value_node
        return super().construct_mapping(node, deep=deep)


def _read_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        data = yaml.load(text, Loader=_RecipeLoader)
    except _DuplicateKey as err:
        remedy = "merge the two sections" if err.sections else "keep one of them"
        raise CovsegError(f"{source}: line {err.line}: key {err.key!r} appears twice; {remedy}") from None
    except yaml.YAMLError as err:
        raise CovsegError(f"{source}: not valid YAML ({str(err).splitlines()[0]}); fix the recipe") from None
    except ValueError as err:  # a value YAML matched but could not build: a whole number of over 4300 digits
        raise CovsegError(f"{source}: a value YAML cannot read ({str(err).split(';')[0]}); fix the recipe") from None
    if data is None or data == {}:  # an empty or comment-only file: it would train every default, unasked
        raise CovsegError(f"{source}: holds no settings; give data/model/train sections (or name a built-in recipe, "
                          "e.g. --recipe default)")
    if not isinstance(data, dict):
        raise CovsegError(f"{source}: a recipe must be a mapping with data/model/train sections")
    return data


def load_recipe(name_or_path: str, task: str | None = None) -> RunConfig:
    """Load a shipped recipe by name (``default``, ``seed``, …) or a YAML file by path, for one task.

    ``task`` (``"binary"`` | ``"multiclass"``; default: the recipe's ``data.task``) picks which entry of the
    recipe's optional ``tasks`` section is merged over its shared settings, and becomes ``data.task``.
    """
    path = Path(name_or_path)
    # a shipped name wins over a run folder called the same in the working directory (covseg train -o tiny)
    shipped = not path.suffix and len(path.parts) == 1 and name_or_path in available_recipes()
    if not shipped and (path.suffix in (".yaml", ".yml") or path.exists()):
        if not path.is_file():
            raise CovsegError(f"{path}: recipe file not found; give a path to a YAML file or one of "
                              f"{', '.join(available_recipes())}")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise CovsegError(f"{path}: not UTF-8 text (byte {err.start}); save the recipe as UTF-8") from None
        data = _read_yaml(text, str(path))
        name = path.stem
    else:
        resource = resources.files("covseg") / "recipes" / f"{name_or_path}.yaml"
        if not resource.is_file():
            raise CovsegError(f"unknown recipe {name_or_path!r}: use one of {', '.join(available_recipes())} "
                              "or a path to a YAML file")
        data = _read_yaml(resource.read_text(encoding="utf-8"), f"recipe {name_or_path}")
        name = name_or_path
    data.setdefault("recipe", name)
    return config_from_dict(_settings_for_task(data, task, str(name_or_path)), source=str(name_or_path))


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _settings_for_task(data: dict[str, Any], task: str | None, source: str) -> dict[str, Any]:
    """The recipe's shared sections with its ``tasks[task]`` entry merged over them; ``tasks`` itself dropped."""
    data = dict(data)
    per_task = data.pop("tasks", None) or {}
    unknown = [key for key in per_task if key not in TASKS] if isinstance(per_task, dict) else []
    if unknown:  # as an unknown option is refused: a typo's close match suggested
        raise CovsegError(f"{source}: tasks: unknown task {unknown[0]!r}{_did_you_mean(unknown[0], TASKS)}; known: "
                          f"{', '.join(TASKS)}")
    if not isinstance(per_task, dict) or not all(value is None or isinstance(value, dict)
                                                 for value in per_task.values()):
        raise CovsegError(f"{source}: tasks must map {' / '.join(TASKS)} to data/model/train settings, "
                          f"got {per_task!r}")
    for name, entry in per_task.items():  # every task's entry, not only the one in use: a typo is told at once
        _check_keys(RunConfig, entry or {}, f"{source}: tasks: {name}")
        section = (entry or {}).get("data")
        other = section.get("task", name) if isinstance(section, dict) else name
        if other != name:  # it was overwritten by the entry's own task without a word
            raise CovsegError(f"{source}: tasks: {name}: data.task is {other!r}, but an entry under tasks is the "
                              f"{name} task's own settings; remove data.task there (or move the settings under "
                              f"tasks: {other})")
    if task is None:
        shared = data.get("data")
        task = shared.get("task", DataConfig.task) if isinstance(shared, dict) else DataConfig.task
    if task not in TASKS:
        raise CovsegError(f"{source}: task {task!r} is not one of {', '.join(TASKS)}{_did_you_mean(task, TASKS)}")
    data = _merge(data, per_task.get(task) or {})
    if isinstance(data.get("data", {}), dict):
        data = _merge(data, {"data": {"task": task}})
    return data


def _check_keys(cls: type, values: dict[str, Any], where: str, path: str = "") -> None:
    """Refuse a key of ``values`` (a recipe's settings for dataclass ``cls``, sections nested) that names no option,
    as :func:`_build` does (a close match suggested), without building anything: a ``tasks`` entry of a task not
    in use is never built. Values are checked when the entry is used."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in values.items():
        if key not in fields:
            raise _unknown_option(key, fields, f"{where}: {path}" if path else where)
        default = _field_default(fields[key])
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            _check_keys(type(default), value, where, f"{path}.{key}" if path else key)


def _field_default(field: dataclasses.Field) -> Any:
    """A dataclass field's default value (its ``default_factory``'s product, else its ``default``)."""
    return field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default


def _unknown_option(key: Any, known: Iterable[str], here: str) -> CovsegError:
    """The refusal of ``key``, no option of ``known`` (at ``here``: the source and section), a close match
    suggested."""
    names = list(known)
    return CovsegError(f"{here}: unknown option {key!r}{_did_you_mean(key, names)}; known: {', '.join(names)}")


def _did_you_mean(key: Any, known: Iterable[str]) -> str:
    """`` did you mean 'input_size'?`` for a mistyped ``key`` close to one of ``known``; else empty."""
    names = [str(name) for name in known]
    # a case slip (TRAIN, Train.Epochs) first: difflib compares case-sensitively, and 'TRAIN' matched no 'train'
    close = [name for name in names if name.casefold() == str(key).casefold()] or difflib.get_close_matches(
        str(key), names, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_override_words(overrides: list[str]) -> None:
    """Refuse, in one line with the override as it should read, an override typed with spaces around its ``=``:
    one word with a space in its key (``'train.lr =0.1'``), or one split into shell words (``train.lr = 0.1``,
    ``train.lr =0.1``, ``train.lr= 0.1``), which read as overrides of no ``=`` or no key. Others are left to
    :func:`apply_overrides`."""
    for i, item in enumerate(overrides):
        key, sep, raw = item.partition("=")
        if sep and key.strip() and key != key.strip():
            raise CovsegError(f"override {item!r}: a space around '=' in the key; write it as one word without "
                              f"spaces: {key.strip()}={raw.strip()}")
        after = overrides[i + 1] if i + 1 < len(overrides) else None
        if after is None or not key.strip():
            continue
        words = None
        if not sep and after.startswith("="):  # train.lr = 0.1, train.lr =0.1
            value = after[1:]
            if not value.strip() and i + 2 < len(overrides) and "=" not in overrides[i + 2]:
                words, value = [item, after, overrides[i + 2]], overrides[i + 2]
            else:
                words = [item, after]
        elif sep and not raw and "=" not in after:  # train.lr= 0.1
            words, value = [item, after], after
        if words is not None:
            raise CovsegError(f"override {' '.join(words)!r} is split into {len(words)} words by the spaces around "
                              f"'='; write it as one word without spaces: {key.strip()}={value.strip()}")


def _build(cls: type, values: dict[str, Any], where: str, path: str = "") -> Any:
    # where: the recipe or source named; path: the section within it (train.augment), kept apart by ": " so that a
    # message reads "recipe.yaml: train.lr: ..." and never "the tiny recipe with the options given.train.lr: ..."
    here = f"{where}: {path}" if path else where
    if not isinstance(values, dict):
        raise CovsegError(f"{here}: expected a mapping, got {values!r}")
    kwargs: dict[str, Any] = {}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in values.items():
        if key not in fields:
            raise _unknown_option(key, fields, here)
        default = _field_default(fields[key])
        name = f"{path}.{key}" if path else key
        if dataclasses.is_dataclass(default):
            # a section with nothing under it (`train:` in YAML) reads as null: it leaves every setting at its default
            kwargs[key] = _build(type(default), {} if value is None else value, where, name)
        else:
            kwargs[key] = _coerce(value, default, f"{where}: {name}")
    return cls(**kwargs)


def _coerce(value: Any, default: Any, where: str) -> Any:
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):  # as the texts "1" / "0" below
            return bool(value)
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise CovsegError(f"{where}: expected true/false, got {value!r}")
    if isinstance(default, (int, float)) and isinstance(value, bool):
        raise CovsegError(f"{where}: expected a number, got {str(value).lower()}")
    if isinstance(default, (int, float)):
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise CovsegError(f"{where}: expected a number, got {value!r}") from None
        except OverflowError:  # a whole number past float's range (1e308): no setting takes one near it
            raise CovsegError(f"{where}: expected a number, got one past 1e308, too large for any setting; use a "
                              f"value of sensible size, such as {default}") from None
        if isinstance(default, int):
            if not number.is_integer():
                raise CovsegError(f"{where}: expected a whole number, got {value!r}")
            return int(number)
        return number
    if isinstance(default, str):
        if isinstance(value, (list, dict)):  # `train.distill=[a, b]` would become the text "['a', 'b']"
            kind = "list" if isinstance(value, list) else "mapping"
            raise CovsegError(f"{where}: expected text, got a YAML {kind} ({value!r}); write it as plain text "
                              "without [ ] or { } (where an option takes several paths, comma-separated: "
                              "runs/a,runs/b)")
        return "" if value is None else str(value)  # YAML's empty value (`init:`, `=null`): the option unset
    return value


_CHOICES = {
    ("data", "task"): TASKS,
    ("data", "normalize"): NORMALIZATIONS,
    ("data", "resize"): RESIZE_MODES,
    ("model", "name"): ("unet", "segnet"),  # covseg.models.MODELS
    ("model", "block"): ("plain", "residual"),  # covseg.models.unet.BLOCKS
    ("model", "norm"): ("batch", "instance", "group"),  # covseg.models.unet.NORMS
    ("train", "loss"): ("ce", "mfb_ce", "dice", "dice_ce", "mfb_dice_ce"),  # covseg.losses.LOSSES
    ("train", "dice"): ("batch", "sample", "present"),
    ("train", "optimizer"): ("adam", "adamw", "sgd"),
    ("train", "schedule"): ("constant", "cosine", "onecycle"),
    ("train", "sampling"): ("uniform", "class_balanced"),  # covseg.training.SAMPLINGS
    ("train", "consistency_norm"): ("shared", "own"),  # covseg.consistency.CONSISTENCY_NORMS
    ("train", "init_parts"): ("all", "encoder"),  # covseg.pretrain.INIT_PARTS
    ("train", "precision"): ("auto", "fp32", "bf16"),
    ("train", "device"): ("cpu", "cuda", "auto"),
}
_POSITIVE = {("data", "input_size"), ("data", "folds"), ("model", "width"), ("model", "depth"),
             ("train", "epochs"), ("train", "val_every"), ("train", "batch_size"), ("train", "lr"),
             ("train", "dice_weight"), ("data", "pseudo_ratio"), ("data", "window_width")}
_MAX_DEPTH = {"segnet": 5}  # SegNet's stages are VGG16's five (covseg.models.segnet.VGG16_BLOCKS)
#: the widest model.width a config takes: the recipes use 4 to 64, and far wider networks cannot be built (their
#: weights alone outgrow any memory; at 1e30 torch failed with a C++ backtrace)
MAX_WIDTH = 1024
#: the largest data.input_size a config takes: CT slices are 512 to 1024 pixels wide (the recipes use 64 to 512), and
#: far larger inputs cannot be trained (at 4096 the process was killed for memory; at 1e300 torch failed with a C++
#: backtrace)
MAX_INPUT_SIZE = 2048
#: the deepest model.depth any model takes: its bottleneck must keep 2 x 2 pixels of a MAX_INPUT_SIZE input
MAX_DEPTH = MAX_INPUT_SIZE.bit_length() - 2
#: the most torch threads train.threads takes: more than the cores of any one machine today (a few hundred)
MAX_THREADS = 1024
#: the most unlabelled slices train.consistency_batch adds to every step: the recipes use 4, and each one costs a
#: labelled slice's memory and time
MAX_CONSISTENCY_BATCH = 256
MAX_SEED = 2**32  # numpy's legacy seeds and every generator covseg seeds take values below this
#: the largest learning rate a new run (train.lr) or a pretraining (--lr) takes: the recipes use 3e-5 to 0.01, far
#: above it the weights diverge, and past float32's largest number torch's optimisers raise at their first step
MAX_LR = 1.0
FLOAT32_MAX = 3.4028234663852886e38  # torch.finfo(torch.float32).max: a larger number overflows to inf


def _validate(config: RunConfig, source: str) -> None:
    for (section, key), allowed in _CHOICES.items():
        value = getattr(getattr(config, section), key)
        if value not in allowed:
            raise CovsegError(f"{source}: {section}.{key} is {value!r}; use one of {', '.join(allowed)}")
    if not math.isfinite(config.data.window_level):
        raise CovsegError(f"{source}: data.window_level is {config.data.window_level}; it must be a finite HU "
                          "value, e.g. -600 (a lung window)")
    if not (math.isfinite(config.train.lr) and abs(config.train.lr) <= FLOAT32_MAX):  # no run trained past that
        raise CovsegError(f"{source}: train.lr is {config.train.lr}; it must be a finite learning rate in float32 "
                          "(at most 3.4e38), e.g. 0.001")
    for section, key in _POSITIVE:
        value = getattr(getattr(config, section), key)
        if not (value > 0 and math.isfinite(value)):
            raise CovsegError(f"{source}: {section}.{key} must be positive and finite, got {value}")
    if config.model.width > MAX_WIDTH:
        raise CovsegError(f"{source}: model.width is {config.model.width}, wider than covseg builds (at most "
                          f"{MAX_WIDTH}; the recipes use 4 to 64); use a smaller width, e.g. 32")
    if config.data.input_size > MAX_INPUT_SIZE:
        size = config.data.input_size
        shown = size if size < 10**9 else format(size, ".3g")  # 1e300 read as a 301-digit whole number
        raise CovsegError(f"{source}: data.input_size is {shown}, larger than covseg takes (at most "
                          f"{MAX_INPUT_SIZE}: the largest CT slices are 512 to 1024 pixels wide; the recipes use 64 "
                          "to 512); use a smaller size, e.g. 352 or 512")
    if not (math.isfinite(config.train.weight_decay) and config.train.weight_decay >= 0):
        raise CovsegError(f"{source}: train.weight_decay is {config.train.weight_decay:g}; it must be >= 0, "
                          "e.g. 0.0001 (0: none)")
    if not 0 <= config.train.momentum < 1:
        raise CovsegError(f"{source}: train.momentum is {config.train.momentum}; it must be in [0, 1), e.g. 0.9 or "
                          "nnU-Net's 0.99")
    if not (math.isfinite(config.train.grad_clip) and config.train.grad_clip >= 0):
        raise CovsegError(f"{source}: train.grad_clip is {config.train.grad_clip}; it must be a gradient norm > 0, "
                          "e.g. nnU-Net's 12, or 0 for no clipping")
    if not 0 <= config.train.threads <= MAX_THREADS:
        raise CovsegError(f"{source}: train.threads is {config.train.threads}; it must be 0 (torch's default) to "
                          f"{MAX_THREADS}, such as the number of cores")
    for section, key in (("data", "split_seed"), ("train", "seed")):  # numpy's seeds are non-negative
        value = getattr(getattr(config, section), key)
        if value < 0:
            raise CovsegError(f"{source}: {section}.{key} is {value}; it must be >= 0, e.g. 0")
        if value >= MAX_SEED:
            raise CovsegError(f"{source}: {section}.{key} is {value}; it must be below 2**32 ({MAX_SEED}), e.g. 0")
    if not 0 <= config.data.val_fraction < 1:
        raise CovsegError(f"{source}: data.val_fraction must be in [0, 1), got {config.data.val_fraction}")
    t = config.train
    if not (math.isfinite(t.consistency) and t.consistency >= 0) or t.consistency_batch < 2 or not 0 <= t.teacher_decay < 1:
        raise CovsegError(f"{source}: train.consistency {t.consistency}, train.consistency_batch {t.consistency_batch}, "
                          f"train.teacher_decay {t.teacher_decay}: need a weight >= 0, a batch >= 2 and a decay in [0, 1)")
    if t.consistency_batch > MAX_CONSISTENCY_BATCH:
        raise CovsegError(f"{source}: train.consistency_batch is {t.consistency_batch}; at most "
                          f"{MAX_CONSISTENCY_BATCH} unlabelled slices join a step (each costs a labelled slice's memory "
                          "and time), such as 4")
    if t.consistency > 0 and (t.augment.crop or t.types_only):
        what = "train.augment.crop" if t.augment.crop else "train.types_only"
        raise CovsegError(f"{source}: train.consistency does not combine with {what}; set one of them to 0 / false")
    if not (math.isfinite(t.distill_weight) and t.distill_weight >= 0):
        raise CovsegError(f"{source}: train.distill_weight is {t.distill_weight}; it must be >= 0, such as 1")
    if not (math.isfinite(t.distill_temperature) and t.distill_temperature > 0):
        raise CovsegError(f"{source}: train.distill_temperature is {t.distill_temperature}; it must be > 0, such as 1 "
                          "(the teachers' own probabilities) or 2 (softer)")
    if t.distill and t.types_only:
        raise CovsegError(f"{source}: train.distill does not combine with train.types_only (a type model learns only "
                          "the truth's lesion pixels); set one of them off")
    if not 0 <= config.train.ema < 1:
        raise CovsegError(f"{source}: train.ema is {config.train.ema}; it must be a decay in [0, 1), such as 0.99, "
                          "or 0 for no weight average")
    if t.swa_epochs < 0:
        raise CovsegError(f"{source}: train.swa_epochs is {t.swa_epochs}; it must be >= 0 (0 = no averaging)")
    if t.swa_epochs:
        if t.swa_epochs >= t.epochs or t.swa_epochs > t.epochs - t.progressive_epochs():
            raise CovsegError(f"{source}: train.swa_epochs is {t.swa_epochs} with train.epochs {t.epochs} (of which "
                              f"{t.progressive_epochs()} at train.progressive_size); average fewer epochs, all after "
                              "the progressive ones (e.g. a quarter of the run), or 0 for none")
        if not (math.isfinite(t.swa_lr) and 0 < t.swa_lr <= t.lr):
            raise CovsegError(f"{source}: train.swa_lr is {t.swa_lr:g}; with train.swa_epochs set it must be a "
                              f"learning rate in (0, train.lr = {t.lr:g}], such as half of train.lr")
        if t.ema > 0:
            raise CovsegError(f"{source}: train.swa_epochs and train.ema are two weight averages; set one of them to 0")
        if t.schedule == "onecycle":
            raise CovsegError(f"{source}: train.schedule onecycle has a warm-up and an anneal of its own; with "
                              "train.swa_epochs use cosine or constant before the constant train.swa_lr tail")
    elif t.swa_lr:
        raise CovsegError(f"{source}: train.swa_lr is {t.swa_lr:g} but train.swa_epochs is 0; set "
                          "train.swa_epochs too (e.g. a quarter of train.epochs), or leave train.swa_lr at 0")
    if not 0 < t.tversky_beta < 1:
        raise CovsegError(f"{source}: train.tversky_beta is {t.tversky_beta}; it must lie in (0, 1): 0.5 is plain "
                          "Dice, 0.7 weighs a missed pixel 0.7 and a false one 0.3")
    if not (math.isfinite(t.lovasz_weight) and t.lovasz_weight >= 0):
        raise CovsegError(f"{source}: train.lovasz_weight is {t.lovasz_weight}; it must be >= 0 (0: no Lovász term)")
    if not (math.isfinite(t.ce_topk) and 0 < t.ce_topk <= 1):
        raise CovsegError(f"{source}: train.ce_topk is {t.ce_topk}; it must lie in (0, 1]: the fraction of the "
                          "batch's hardest pixels the cross-entropy term keeps (1: all, nnU-Net's TopK 0.1)")
    if not (math.isfinite(t.focal_gamma) and t.focal_gamma >= 0):
        raise CovsegError(f"{source}: train.focal_gamma is {t.focal_gamma}; it must be >= 0 (0: plain cross-entropy, "
                          "Lin et al.'s focal loss takes 2)")
    if not (math.isfinite(t.mixup_alpha) and t.mixup_alpha >= 0):
        raise CovsegError(f"{source}: train.mixup_alpha is {t.mixup_alpha}; it must be >= 0 (0: no mixup; Zhang et "
                          "al. take 0.1 to 0.4: the Beta(alpha, alpha) each batch's mixing weight is drawn from)")
    if t.mixup_alpha and t.batch_size < 2:
        raise CovsegError(f"{source}: train.mixup_alpha mixes the images of a batch with each other, and "
                          f"train.batch_size is {t.batch_size}; set train.batch_size to 2 or more, or leave "
                          "train.mixup_alpha at 0")
    if not (math.isfinite(t.label_smoothing) and 0 <= t.label_smoothing < 1):
        raise CovsegError(f"{source}: train.label_smoothing is {t.label_smoothing}; it must lie in [0, 1): the share "
                          "of each pixel's cross-entropy target spread evenly over the classes (0: off, e.g. 0.1)")
    if t.tversky_lesion_only:
        if config.data.task != "multiclass":
            raise CovsegError(f"{source}: train.tversky_lesion_only is for the multiclass task (the binary task's "
                              "lesion is its one class); use train.tversky_beta alone")
        missing = [what for what, lacking in (("train.lesion_dice=true", not t.lesion_dice),
                                              ("a train.tversky_beta other than 0.5, e.g. 0.7", t.tversky_beta == 0.5))
                   if lacking]
        if missing:
            raise CovsegError(f"{source}: train.tversky_lesion_only applies train.tversky_beta to the lesion region "
                              f"of the Dice term; set {' and '.join(missing)}")
    if config.model.block != "plain" and config.model.name != "unet":
        raise CovsegError(f"{source}: model.block is {config.model.block!r}, but only U-Net has other blocks; "
                          f"leave model.block at plain for {config.model.name}")
    if not 0 <= config.model.dropout < 1:
        raise CovsegError(f"{source}: model.dropout is {config.model.dropout}; it must be a share in [0, 1), such as "
                          "0.2, or 0 for none")
    if not 0 <= config.model.decoder_dropout < 1:
        raise CovsegError(f"{source}: model.decoder_dropout is {config.model.decoder_dropout}; it must be a share in "
                          "[0, 1), such as 0.2, or 0 for none")
    for key in ("dropout", "decoder_dropout"):
        if getattr(config.model, key) and config.model.name != "unet":
            raise CovsegError(f"{source}: model.{key} is {getattr(config.model, key)}, but only U-Net has dropout; "
                              f"leave model.{key} at 0 for {config.model.name}")
    if config.model.attention and config.model.name != "unet":
        raise CovsegError(f"{source}: model.attention is true, but only U-Net has attention gates; leave "
                          f"model.attention at false for {config.model.name}")
    if config.model.norm != "batch" and config.model.name != "unet":
        raise CovsegError(f"{source}: model.norm is {config.model.norm!r}, but only U-Net has other normalisations; "
                          f"leave model.norm at batch for {config.model.name}")
    _validate_augment(config.train.augment, source)
    most = _MAX_DEPTH.get(config.model.name)
    if most is not None and config.model.depth > most:  # before the sizes, which a wrong depth makes look wrong
        raise CovsegError(f"{source}: model.depth is {config.model.depth}; {config.model.name} has at most {most} "
                          f"stages, so it must be 1..{most}")
    size, depth = config.data.input_size, config.model.depth
    if depth > MAX_DEPTH:  # before 2**depth is computed (depth 1100 overflowed a float, 1e300 would never end)
        fits = _deepest_fit(size)
        advice = f"at data.input_size {size} use model.depth={fits} or less" if fits else \
            f"e.g. model.depth=4 with data.input_size 352"
        shown = depth if depth < 10**9 else format(depth, ".3g")  # 1e300 read as a 301-digit whole number
        raise CovsegError(f"{source}: model.depth is {shown}; {config.model.name} takes at most {MAX_DEPTH} (its "
                          f"bottleneck must keep 2 x 2 pixels of an input of at most {MAX_INPUT_SIZE}); {advice}")
    _check_bottleneck("data.input_size", size, depth, source, input_size=True)  # before the multiple it makes odd
    _check_input_size(size, depth, config.model.name, source)
    try:  # refused here, not after the data has loaded
        kind, fold = parse_split_name(config.data.split)
    except CovsegError as err:
        raise CovsegError(f"{source}: data.split: {err}") from None
    if kind == "cv" and fold is not None and fold >= config.data.folds:
        raise CovsegError(f"{source}: data.split is {config.data.split}, but data.folds is {config.data.folds}; use "
                          f"cv:0 to cv:{config.data.folds - 1}, or more folds")
    _validate_progressive(config, source)
    crop = config.train.augment.crop
    if crop > config.data.input_size:
        raise CovsegError(f"{source}: train.augment.crop is {crop}, larger than data.input_size "
                          f"{config.data.input_size}; use a smaller crop, or 0 for whole images")
    _check_model_multiple("train.augment.crop", crop, config.model.depth, source)


def check_new_run(config: RunConfig) -> None:
    """Checks for a run about to begin, beyond :func:`validate`'s: settings that older covseg versions accepted and
    trained (so their saved runs must still load, evaluate and resume) but that do not train what they say.

    A ``train.lr`` above :data:`MAX_LR`, a crop larger than ``train.progressive_size`` (the progressive epochs could
    not cut it) or too small for the bottleneck (instance norm, or batch norm on a batch of one, fails on a 1 x 1
    map), ``model.batch_norm=false`` on SegNet (ignored: it always normalises) or beside a ``model.norm`` other than
    batch (no normalisation at all is built), a ``train.progressive_size`` whose fraction of the epochs rounds down
    to no epoch (ignored), ``train.distill`` with ``train.distill_weight=0`` (teachers run for a term weighted 0),
    ``model.deep_supervision`` at ``model.depth=1`` (no decoder level below the top, so no aux head: ignored), and an
    option set away from its default where the settings never read it (:func:`_unread_options`: ``data.val_fraction``
    on a split other than official, ``data.folds`` on one other than cv:K, ``train.momentum`` without SGD, the
    consistency, distillation, pseudo-label and ``train.init_parts`` options without the setting they tune) raise a
    one-line :class:`CovsegError`."""
    t, m = config.train, config.model
    if t.lr > MAX_LR:  # older versions took it: a saved run may hold one
        raise CovsegError(f"train.lr is {t.lr:g}, above the largest learning rate a run takes ({MAX_LR:g}; the "
                          "recipes use 3e-05 to 0.01); use a smaller one, e.g. 0.001")
    crop, progressive = t.augment.crop, t.progressive_size
    if crop > progressive > 0:  # a crop is cut from the resampled slice: larger than it, none would be cut
        raise CovsegError(f"train.augment.crop is {crop}, larger than train.progressive_size {progressive}, so "
                          f"the progressive epochs could not crop; use a crop of at most {progressive}, or "
                          "train.progressive_size=0 train.progressive_fraction=0")
    if crop:
        _check_bottleneck("train.augment.crop", crop, m.depth, "config")
    if progressive and not t.progressive_epochs():  # floor(fraction * epochs) is 0: no epoch trains at that size
        fix = (f"raise train.progressive_fraction to at least {math.ceil(1000 / t.epochs) / 1000:g}"
               if t.epochs > 1 else "raise train.epochs")
        raise CovsegError(f"train.progressive_fraction {t.progressive_fraction:g} of {t.epochs} epochs makes no "
                          f"progressive epoch; {fix}, or set train.progressive_size=0 train.progressive_fraction=0")
    if t.distill and not t.distill_weight:  # the teachers would be loaded and run for a term weighted 0
        raise CovsegError("train.distill is set but train.distill_weight is 0, so the teachers would be run for "
                          "nothing; set train.distill_weight > 0 or leave train.distill empty")
    if not m.batch_norm and m.name != "unet":  # SegNet always normalises (VGG16's batch norm)
        raise CovsegError(f"model.batch_norm is false, but only U-Net can leave out normalisation; leave "
                          f"model.batch_norm at true for {m.name}")
    if not m.batch_norm and m.norm != "batch":  # batch_norm false builds no norm at all
        raise CovsegError(f"model.batch_norm is false (no normalisation) but model.norm is {m.norm!r}; pick "
                          f"one: model.norm={m.norm} with model.batch_norm=true, or model.batch_norm=false with "
                          "model.norm=batch")
    if m.deep_supervision and m.depth == 1:  # the aux heads sit on the decoder levels below the top: none at depth 1
        raise CovsegError("model.deep_supervision is true but model.depth is 1, which has no coarser decoder level to "
                          "supervise; set model.depth to 2 or more, or model.deep_supervision=false")
    unread = _unread_options(config)
    if unread:
        option, value, needs, now = unread[0]
        shown = value if isinstance(value, str) else f"{value:g}"
        raise CovsegError(f"{option}={shown} only acts with {needs} ({now} here); drop {option} or set {needs}")


def _unread_options(config: RunConfig) -> list[tuple[str, float | str, str, str]]:
    """``(option, its value, the setting it needs, that setting now)`` for each option set away from its default that
    ``config``'s other settings never read, so that the run would train exactly as without it."""
    d, t = config.data, config.train
    consistency, distill = f"train.consistency {t.consistency:g}", "train.distill empty"
    # cv:K's folds, and seed's and paper's own fractions, fix the held-out images (covseg.splits.make_split)
    unread = [("data", "val_fraction", "val_fraction" not in split_settings(d.split), "data.split=official",
               f"data.split {d.split}"),
              ("data", "folds", "folds" not in split_settings(d.split), "data.split=cv:K", f"data.split {d.split}"),
              ("train", "momentum", t.optimizer != "sgd", "train.optimizer=sgd", f"train.optimizer {t.optimizer}"),
              ("train", "consistency_batch", not t.consistency, "train.consistency", consistency),
              ("train", "teacher_decay", not t.consistency, "train.consistency", consistency),
              ("train", "consistency_norm", not t.consistency, "train.consistency", consistency),
              ("train", "distill_weight", not t.distill, "train.distill", distill),
              ("train", "distill_temperature", not t.distill, "train.distill", distill),
              ("data", "pseudo_ratio", not d.pseudo_labels, "data.pseudo_labels", "data.pseudo_labels empty"),
              ("train", "init_parts", not t.init, "train.init", "empty")]
    defaults = {"data": DataConfig(), "train": TrainConfig()}
    return [(f"{section}.{key}", getattr(getattr(config, section), key), needs, now)
            for section, key, idle, needs, now in unread
            if idle and getattr(getattr(config, section), key) != getattr(defaults[section], key)]


def _check_model_multiple(option: str, side: int, depth: int, source: str) -> None:
    """A training image side must be a multiple of ``2**depth`` (the U-Net's down-steps)."""
    step = 2**depth
    if side % step:
        raise CovsegError(f"{source}: {option} is {side}; a model of depth {depth} needs a multiple of {step}, "
                          f"such as {max(step, side // step * step)}")


def _check_input_size(size: int, depth: int, name: str, source: str) -> None:
    """``data.input_size`` must be a multiple of ``2**depth``: the side every image is brought to, in training and
    in use (a config read from an exported ONNX file too). Says what training's size check says
    (:func:`covseg.models.check_input_size`)."""
    step = 2**depth
    if size % step:
        nearest = max(step, (size + step // 2) // step * step)  # whole numbers: step / 2 overflowed a float
        raise CovsegError(f"{source}: data.input_size is {size}; {name} with depth {depth} needs height and width "
                          f"divisible by {step}, got {size}x{size}; use a multiple of {step}, such as {nearest}")


def _check_bottleneck(option: str, side: int, depth: int, source: str, input_size: bool = False) -> None:
    """A training image side must leave the bottleneck at least 2 pixels a side (batch norm needs more than one
    value per channel, even in a batch of one). ``input_size``: ``side`` is ``data.input_size``, and the advice
    names the deepest model that fits it."""
    if side < 2 * 2**depth:
        advice = ""
        if input_size:
            fits = _deepest_fit(side)
            advice = f"; use a data.input_size of at least {2 * 2**depth} (a multiple of {2**depth})" + \
                (f", or model.depth={fits} or less" if fits else "")
        raise CovsegError(f"{source}: {option} is {side}; a model of depth {depth} needs at least {2 * 2**depth} "
                          f"(2 x 2**depth), so that its bottleneck keeps 2 x 2 pixels{advice}")


def _deepest_fit(size: int) -> int:
    """The deepest model.depth (0: none) whose bottleneck keeps 2 x 2 pixels of a ``size`` input that is a multiple
    of its 2**depth."""
    depth = max(0, min(size.bit_length() - 2, MAX_DEPTH))  # 2 * 2**depth <= size
    while depth and size % 2**depth:
        depth -= 1
    return depth


def _validate_progressive(config: RunConfig, source: str) -> None:
    """``train.progressive_size`` and ``train.progressive_fraction``: both off, or a smaller valid size and a share
    of the epochs in (0, 1)."""
    size, fraction = config.train.progressive_size, config.train.progressive_fraction
    if size == 0 and fraction == 0:
        return
    if size <= 0 or not 0 < fraction < 1:
        raise CovsegError(f"{source}: train.progressive_size is {size} and train.progressive_fraction is {fraction}; "
                          "set both, the fraction in (0, 1) (e.g. train.progressive_size=256 "
                          "train.progressive_fraction=0.667), or neither")
    if size >= config.data.input_size:
        raise CovsegError(f"{source}: train.progressive_size is {size}, not smaller than data.input_size "
                          f"{config.data.input_size}; use a smaller size, or 0 to train at data.input_size throughout")
    _check_model_multiple("train.progressive_size", size, config.model.depth, source)
    _check_bottleneck("train.progressive_size", size, config.model.depth, source)


def _validate_augment(augment: AugmentConfig, source: str) -> None:
    """Flip probabilities lie in [0, 1]; factors about 1 and the elastic warp in [0, 1); the rest are >= 0."""
    for field_ in dataclasses.fields(augment):
        value = getattr(augment, field_.name)
        if field_.name in ("hflip", "vflip", "cutmix", "lesion_paste", "lowres", "noise", "blur"):
            ok, rule = 0 <= value <= 1, "a probability in [0, 1]"
        elif field_.name in ("scale", "gamma", "contrast", "elastic"):
            ok, rule = 0 <= value < 1, "in [0, 1)"
        elif field_.name == "rotate_deg":  # +-180 degrees already reaches every angle
            ok, rule = 0 <= value <= 180, ">= 0 and <= 180 (degrees: 180 already reaches every angle)"
        else:
            ok, rule = value >= 0, ">= 0"
        if not (ok and math.isfinite(value)):
            raise CovsegError(f"{source}: train.augment.{field_.name} is {value}; it must be {rule}")


def config_from_dict(data: dict[str, Any], source: str = "config") -> RunConfig:
    """Build a :class:`RunConfig` from nested dicts, rejecting unknown keys, wrong types and bad values."""
    config = _build(RunConfig, data, source)
    config.data.split = _canonical_split(config.data.split)
    _validate(config, source)
    return config


def _canonical_split(split: str) -> str:
    """``split`` as covseg writes it: ``cv:01`` holds out the images of ``cv:1``, and is ``cv:1`` (so that run folders,
    pseudo-label folds and ``train.init`` compare it alike); anything else as given (a bad name is refused later)."""
    try:
        kind, fold = parse_split_name(split)
    except CovsegError:
        return split
    return f"cv:{fold}" if kind == "cv" else split


def config_to_dict(config: RunConfig) -> dict[str, Any]:
    """Nested plain dict of ``config`` (YAML/JSON/checkpoint-safe)."""
    return dataclasses.asdict(config)


def _decimal(text: str) -> int | float | str:
    """``text`` as a decimal whole number or, failing that, a decimal number; the text itself where it is neither
    (then refused as not a number, with the text as typed)."""
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    return text


_YAML_NULLS = ("", "~", "null", "Null", "NULL")  # YAML's spellings of no value
# a text override read as YAML only where it opens a quoted text ("runs/a b") or a list or mapping (refused by
# _coerce, so that train.distill=[a, b] does not become the text "['a', 'b']")
_YAML_TEXT_STARTS = ('"', "'", "[", "{")


def text_override(raw: str) -> Any:
    """What the override text ``raw`` sets a text option to, as :func:`apply_overrides` reads it: the text as typed
    (stripped), None for YAML's spellings of no value, and YAML's reading where it opens a quoted text, a list or a
    mapping (``"multiclass"`` -> ``multiclass``; raises ``yaml.YAMLError`` or ``ValueError`` where YAML cannot)."""
    text = raw.strip()
    if not text.startswith(_YAML_TEXT_STARTS):
        # YAML would read 06 as 6, `#pre` as a comment (""), `runs/a #1` as "runs/a", and a leading & | > as an
        # anchor or block scalar. Only null / ~ unset it (YAML's no value)
        return None if text in _YAML_NULLS else text
    return yaml.safe_load(raw)


def apply_overrides(config: RunConfig, overrides: list[str], source: str = "override") -> RunConfig:
    """Apply ``section.key=value`` overrides (e.g. ``train.epochs=3``, ``train.augment.hflip=0.5``); a setting the
    result refuses is reported as from ``source`` (the CLI names the recipe and the options given)."""
    check_override_words(overrides)
    data = config_to_dict(config)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise CovsegError(f"override {item!r} is not of the form section.key=value (e.g. train.epochs=3)")
        node = data
        parts = key.split(".")
        if len(parts) == 1 and not isinstance(data.get(key), dict):  # `recipe=NAME` would only rename the recipe
            if key == "recipe":
                raise CovsegError(f"override {item!r}: recipe: set the recipe with --recipe; overrides are data.*, "
                                  "model.* or train.* options (e.g. train.epochs=3)")
            raise CovsegError(f"override {item!r}: {key!r} is not a section.option; overrides are data.*, model.* or "
                              "train.* options (e.g. train.epochs=3)")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise CovsegError(f"override {item!r}: no section {part!r}"
                                  f"{_did_you_mean(part, [k for k, v in node.items() if isinstance(v, dict)])}; "
                                  f"sections: {', '.join(k for k, v in node.items() if isinstance(v, dict))}")
            node = node[part]
        if parts[-1] not in node:
            raise CovsegError(f"override {item!r}: unknown option {parts[-1]!r}{_did_you_mean(parts[-1], node)}; "
                              f"known: {', '.join(node)}")
        current = node[parts[-1]]
        if isinstance(current, str) and not raw.strip().startswith(_YAML_TEXT_STARTS):
            node[parts[-1]] = text_override(raw)  # a text option takes the text as typed
            continue
        # a number or true/false stripped: a tab after one (`model.width=16\t`) is no YAML, though it means 16. A
        # quoted text, list or mapping is read as text_override reads it (the CLI's data.task), raw
        text = raw if isinstance(current, str) else raw.strip()
        try:
            value = yaml.safe_load(text) if text else text
        except yaml.YAMLError:
            raise CovsegError(f"override {item!r}: not a YAML value; close its brackets or quotes") from None
        except ValueError as err:  # a value YAML matched but could not build: a whole number of over 4300 digits
            raise CovsegError(f"override {key}: a value YAML cannot read ({str(err).split(';')[0]}); use a value "
                              "of sensible size") from None
        if isinstance(current, dict):  # a whole section would reset the keys it does not name to their defaults
            named = [k for k in value if k in current and not isinstance(current[k], dict)] \
                if isinstance(value, dict) else []
            first = next(iter(current))
            example = f"{named[0]}={value[named[0]]}" if named else f"{first}={current[first]}"
            raise CovsegError(f"override {item!r}: {key} is a section, not an option; set its keys one by one, "
                              f"e.g. {key}.{example}")
        if (isinstance(current, (int, float)) and not isinstance(current, bool)
                and isinstance(value, (int, float)) and not isinstance(value, bool)
                and (isinstance(value, int) or math.isfinite(value))):  # an int past float's range: _coerce refuses
            # a number option reads the text as a decimal number: YAML 1.1 reads 010 as octal 8, 1:30 as 90
            # (base 60) and 0b101 as 5. YAML's .inf / .nan and true / false keep their meaning (and refusals)
            value = _decimal(raw.strip())
        node[parts[-1]] = value
    return config_from_dict(data, source=source)
