"""The run config: one YAML file, validated by a pydantic schema, overridable key by key.

Relative paths in a config are taken from the working directory, as on the command line.
``load_config`` is the one entry point; every problem it finds becomes a ``ConfigError``
whose one-line message names the file, the dotted key and what is wrong.
"""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from medseg.datasets import LAYOUT_NAMES
from medseg.errors import ConfigError
from medseg.files import read_regular_text
from medseg.yaml_input import describe_validation_error, load_yaml

# The intensity rules of ``medseg.transforms.presets.NORMALIZATIONS``, named here so that
# reading a config imports no MONAI (a test keeps the two lists equal).
NormalizationChoice = Literal[
    "auto", "ct_window", "zscore_image", "zscore_body", "zscore_nonzero", "percentile"
]
Modality = Literal["mri", "ct", "em", "rgb"]


def _choices(names: list[str]) -> str:
    """``'a', 'b' or 'c'``: the choices as pydantic words a wrong literal's message."""
    quoted = [f"'{name}'" for name in names]
    return f"{', '.join(quoted[:-1])} or {quoted[-1]}" if len(quoted) > 1 else quoted[0]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    """Where the cases are and how they are split into training and validation.

    ``datalist`` (a MONAI-style JSON, paths relative to ``root``) replaces discovery;
    ``labels`` names the label values of a ``folder`` layout (``{liver: 1, tumour: 2}``);
    ``holdout`` (a fraction) replaces the k-fold split with one hold-out split.
    """

    layout: str
    root: Path
    datalist: Path | None = None
    labels: dict[str, int] | None = None
    fold: int = Field(0, ge=0)
    folds: int = Field(5, ge=2)
    holdout: float | None = Field(None, gt=0, lt=1)
    split_seed: int = 0

    @field_validator("layout")
    @classmethod
    def _known_layout(cls, layout: str) -> str:
        if layout not in LAYOUT_NAMES:
            raise ValueError(f"Input should be {_choices(list(LAYOUT_NAMES))}")
        return layout

    @model_validator(mode="after")
    def _fold_in_range(self) -> DataConfig:
        # After the whole section: ``folds`` is declared after ``fold``, so a field
        # validator on ``fold`` would read the default instead of the given value.
        if self.fold >= self.folds:
            raise ValueError(
                f"fold {self.fold} does not exist with folds={self.folds} (use 0..{self.folds - 1})"
            )
        return self


class NetworkConfig(_Section):
    """A network from the registry (``medseg.networks.available()``) and its preset.

    ``pooling: auto`` lets the plan match a UNet++'s depth and per-axis pooling to the patch
    (``options.features`` and ``options.strides``); ``fixed`` keeps the options as given.
    """

    name: str
    preset: str = "small"
    options: dict[str, Any] = Field(default_factory=dict)
    pooling: Literal["auto", "fixed"] = "auto"

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, preset: str) -> str:
        # The registry owns the preset names; it is imported only when a config is read.
        from medseg.networks import all_presets

        if preset not in all_presets():
            raise ValueError(f"Input should be {_choices(all_presets())}")
        return preset


class AugmentConfig(_Section):
    """Probability of each training augmentation (0 turns it off)."""

    flip: float = Field(0.5, ge=0, le=1)
    rotate90: float = Field(0.0, ge=0, le=1)
    affine: float = Field(0.0, ge=0, le=1)
    rotate_degrees: float = Field(15.0, ge=0, le=180)
    scale_range: float = Field(0.15, ge=0, lt=1)
    intensity_shift: float = Field(0.5, ge=0, le=1)
    intensity_scale: float = Field(0.5, ge=0, le=1)
    gamma: float = Field(0.0, ge=0, le=1)
    noise: float = Field(0.0, ge=0, le=1)
    blur: float = Field(0.0, ge=0, le=1)


class TransformsConfig(_Section):
    """Preprocessing (shared by training and prediction) and training-time sampling.

    ``auto`` leaves a choice to the plan made from the training set's fingerprint
    (``medseg plan``, ``docs/planning.md``), resolved into the run's saved config.
    ``modality`` defaults to the layout's; ``spacing`` is a target voxel size in mm,
    ``auto`` (the training set's median, as nnU-Net) or None (keep each input's);
    ``patch_size`` the training patch and sliding-window size in voxels (``auto``: as large
    as the memory budget allows, up to the median image); ``normalization`` one of
    ``medseg.transforms.presets.NORMALIZATIONS``; ``foreground_crop`` crops to the body (CT)
    or the non-zero voxels; ``ct_window`` clips Hounsfield units before z-scoring
    (``auto``: the training foreground's 0.5-99.5 percentiles);
    ``slices`` > 1 feeds a 2D network that many adjacent slices as channels (2.5D);
    ``foreground_ratio`` of the training crops are centred on foreground, on any foreground
    voxel (``foreground_classes: any``) or on one of a class drawn with equal odds
    (``balanced``, as nnU-Net samples).
    """

    modality: Modality | None = None
    spacing: list[float] | Literal["auto"] | None = "auto"
    patch_size: list[int] | Literal["auto"] = "auto"
    normalization: NormalizationChoice = "auto"
    foreground_crop: bool | Literal["auto"] = "auto"
    ct_window: list[float] | Literal["auto"] = "auto"
    slices: int = Field(1, ge=1)
    samples_per_case: int = Field(2, ge=1)
    foreground_ratio: float = Field(0.67, ge=0, le=1)
    foreground_classes: Literal["any", "balanced"] = "any"
    cache: Literal["memory", "disk", "none"] = "memory"
    augment: AugmentConfig = Field(default_factory=AugmentConfig)

    @field_validator("patch_size")
    @classmethod
    def _patch_dims(cls, patch_size: Any) -> Any:
        if isinstance(patch_size, list) and (len(patch_size) not in (2, 3) or min(patch_size) < 1):
            raise ValueError(f"must be 2 or 3 positive sizes, got {patch_size}")
        return patch_size

    @field_validator("spacing")
    @classmethod
    def _positive_spacing(cls, spacing: Any) -> Any:
        if isinstance(spacing, list) and (len(spacing) not in (2, 3) or min(spacing) <= 0):
            raise ValueError(f"must be 2 or 3 positive spacings in mm, got {spacing}")
        return spacing

    @field_validator("ct_window")
    @classmethod
    def _ordered_window(cls, window: Any) -> Any:
        if isinstance(window, list) and (len(window) != 2 or window[0] >= window[1]):
            raise ValueError(f"must be [low, high] in HU with low < high, got {window}")
        return window

    @field_validator("slices")
    @classmethod
    def _odd_slices(cls, slices: int) -> int:
        if slices % 2 == 0:
            raise ValueError(f"must be odd (a centre slice and its neighbours), got {slices}")
        return slices


class StageConfig(_Section):
    """One stage of a staged schedule (H-DenseUNet: 2D, then 3D with 2D frozen, then all).

    ``mode`` sets the network's mode (H-DenseUNet: ``2d`` or ``hybrid``); ``freeze_2d``
    freezes its 2D part; ``lr_scale`` multiplies the learning rate during the stage.
    """

    epochs: int = Field(ge=1)
    mode: str | None = None
    freeze_2d: bool = False
    lr_scale: float = Field(1.0, gt=0)


class TrainConfig(_Section):
    """The optimisation recipe.

    ``batch_size`` is the global batch (volumes per step; each gives
    ``transforms.samples_per_case`` patches), split across ranks under torchrun (``auto``:
    planned from the memory budget); ``memory_gb`` is that budget (None: half the machine's
    memory on the CPU, the GPU's memory on CUDA);
    ``accumulate`` steps are summed before each update; ``precision`` is the CUDA mixed
    precision (``auto``: bf16 where supported, else fp16 with a gradient scaler; the CPU
    always runs fp32); ``early_stopping`` stops after that many validations without
    improvement; ``stages`` replaces ``epochs`` with a staged schedule; ``register_as`` names
    the model in the MLflow registry; ``prune`` runs UNet++ level selection at the end;
    ``init_from`` starts from a medseg model (directory, run, package, URI) or a local file
    of pretrained weights in a layout ``medseg.pipelines.training.weight_layouts`` reads.
    ``val_max_windows`` bounds each validation's forwards (None: every case's full sliding
    pass): a case whose pass needs more than its share is scored on that many fixed
    windows, and the best checkpoint gets a full pass at the end (README, "Validation").
    """

    epochs: int = Field(100, ge=1)
    batch_size: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"
    memory_gb: float | None = Field(None, gt=0)
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(1e-5, ge=0)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    schedule: Literal["cosine", "poly", "constant"] = "cosine"
    warmup_epochs: int = Field(0, ge=0)
    loss: Literal["dice_ce", "dice_focal", "ce", "dice"] = "dice_ce"
    class_weights: list[float] | None = None
    grad_clip: float | None = Field(12.0, gt=0)
    accumulate: int = Field(1, ge=1)
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    seed: int = 0
    val_every: int = Field(1, ge=1)
    val_max_windows: int | None = Field(200, ge=1)
    early_stopping: int | None = Field(None, ge=1)
    iterations_per_epoch: int | None = Field(None, ge=1)
    num_workers: int = Field(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    channels_last: bool = True
    stages: list[StageConfig] | None = None
    register_as: str | None = None
    prune: bool = False
    init_from: str | None = None

    @property
    def total_epochs(self) -> int:
        """Epochs of the whole run: the sum of the stages when there are stages."""
        return sum(stage.epochs for stage in self.stages) if self.stages else self.epochs

    def stage_at(self, epoch: int) -> StageConfig | None:
        """The stage that ``epoch`` (0-based) belongs to, or None without stages."""
        if not self.stages:
            return None
        for stage in self.stages:
            if epoch < stage.epochs:
                return stage
            epoch -= stage.epochs
        return self.stages[-1]


class InferConfig(_Section):
    """Sliding-window inference, shared by validation and ``medseg predict``;
    ``coarse_to_fine`` (with ``coarse_factor`` and ``coarse_margin_mm``) makes the model
    predict coarse to fine by default (``medseg predict --coarse-to-fine``)."""

    overlap: float = Field(0.5, ge=0, lt=1)
    sw_batch_size: int = Field(2, ge=1)
    mode: Literal["gaussian", "constant"] = "gaussian"
    tta: bool = False
    coarse_to_fine: bool = False
    coarse_factor: int = Field(2, ge=2)
    coarse_margin_mm: float = Field(10.0, ge=0)


class PostprocessConfig(_Section):
    """Label-map rules applied by ``medseg predict`` (``pipelines/prediction/postprocess.py``)."""

    largest_component: list[str] = Field(default_factory=list)
    min_component_ml: dict[str, float] = Field(default_factory=dict)
    fill_holes: list[str] = Field(default_factory=list)
    inside: dict[str, str] = Field(default_factory=dict)


def _display_text(text: str) -> str:
    # Names go into ITK-SNAP's quoted names, DICOM strings (backslash separates values)
    # and one-line file formats.
    if re.search(r'[\x00-\x1f\x7f"\\]', text):
        raise ValueError("must not hold control characters, quotes or backslashes")
    if text != text.strip():
        raise ValueError("must not start or end with white space")
    return text


# A label's name as viewers and DICOM show it (DICOM LO: at most 64 characters).
DisplayName = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(_display_text)]
# A short form for the NIfTI header's 80-byte description ("ET", "liver").
Abbreviation = Annotated[str, Field(min_length=1, max_length=16), AfterValidator(_display_text)]
Colour = tuple[
    Annotated[int, Field(ge=0, le=255)],
    Annotated[int, Field(ge=0, le=255)],
    Annotated[int, Field(ge=0, le=255)],
]


class CodedConcept(_Section):
    """A coded term as DICOM carries it: code ``value`` in coding ``scheme`` (``SCT`` is
    SNOMED CT) and its human-readable ``meaning``."""

    value: str = Field(min_length=1, max_length=16, pattern=r"^[A-Za-z0-9.\-]+$")
    scheme: str = Field("SCT", min_length=1, max_length=16, pattern=r"^[A-Za-z0-9_\-]+$")
    meaning: DisplayName


class LabelStyleConfig(_Section):
    """How one output label is named and shown; every key left out keeps the default
    (see ``medseg.pipelines.label_table``). ``colour`` is RGB 0-255; ``category`` and
    ``type`` are the DICOM SEG segmented-property codes (SNOMED CT)."""

    name: DisplayName | None = None
    abbreviation: Abbreviation | None = None
    colour: Colour | None = None
    category: CodedConcept | None = None
    type: CodedConcept | None = None


class TrackingConfig(_Section):
    """MLflow tracking; the URI comes from ``MLFLOW_TRACKING_URI`` or MLflow's default."""

    enabled: bool = True
    experiment: str = "medseg"
    run_name: str | None = None


class Config(_Section):
    """A whole run: data, network, transforms, training, inference, output and tracking;
    ``label_table`` restyles output labels by the model's label name (``medseg info``)."""

    data: DataConfig
    network: NetworkConfig
    transforms: TransformsConfig = Field(default_factory=TransformsConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    infer: InferConfig = Field(default_factory=InferConfig)
    postprocess: PostprocessConfig = Field(default_factory=PostprocessConfig)
    label_table: dict[str, LabelStyleConfig] = Field(default_factory=dict)
    output: Path = Path("runs/medseg")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with each ``key.sub=value`` override applied.

    Values are parsed as YAML (``3`` is an int, ``[1, 2]`` a list, ``null`` None).
    Raises ``ConfigError`` for an override without ``=`` or through a non-mapping key.
    """
    result = copy.deepcopy(raw)
    for override in overrides:
        key, separator, text = override.partition("=")
        if not separator or not key.strip():
            raise ConfigError(f"--set {override!r}: expected key=value, e.g. train.epochs=3")
        parts = key.strip().split(".")
        node = result
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise ConfigError(f"--set {override!r}: {where} is not a section")
            node = child
        node[parts[-1]] = load_yaml(text, f"--set {override!r}") if text.strip() else ""
    return result


def non_finite_key(data: Any, prefix: str = "") -> str | None:
    """The dotted key of the first NaN or infinite number in ``data`` (nested mappings and
    lists, as ``model_dump`` gives them), or None when every number is finite."""
    if isinstance(data, dict):
        items: Any = data.items()
    elif isinstance(data, list):
        items = enumerate(data)
    else:
        return None
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, float) and not math.isfinite(value):
            return name
        found = non_finite_key(value, f"{name}.") if isinstance(value, dict | list) else None
        if found:
            return found
    return None


def parse_config(raw: Any, source: str, overrides: list[str] | None = None) -> Config:
    """Validate a config mapping (``source`` names it in errors) after applying overrides.

    NaN and infinite numbers are refused wherever they are (``train.lr=inf`` trains to a
    NaN loss), including strings such as ``"inf"`` that pydantic reads as numbers.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a config must be a YAML mapping of sections")
    raw = apply_overrides(raw, overrides or [])
    try:
        config = Config.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(f"{source}: {describe_validation_error(error)}") from error
    key = non_finite_key(config.model_dump())
    if key:
        raise ConfigError(f"{source}: {key}: must be a finite number")
    return config


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read, override and validate the YAML config at ``path``.

    Raises ``ConfigError`` (exit status 2) when the file is missing, is not YAML, has an
    unknown key or a bad value; the message names the file and every offending key.
    """
    path = Path(path)
    try:
        text = read_regular_text(path)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read config ({error})") from error
    return parse_config(load_yaml(text, str(path)), str(path), overrides)


def config_to_dict(config: Config) -> dict[str, Any]:
    """The config as plain YAML-ready data (paths as strings)."""
    return config.model_dump(mode="json")


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested mappings into ``{"train.lr": 1e-4, ...}`` (for MLflow params)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat
