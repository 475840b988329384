"""The model directory: ``config.yaml`` + ``weights.safetensors``, and nothing unpickled.

``config.yaml`` stores the network's registry name, preset, options and channel counts as
data (nnU-Net's habit), the preprocessing, the label scheme and the inference settings,
so a model rebuilds with no code path of its own.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from medseg import __version__
from medseg.config import non_finite_key
from medseg.datasets.base import LabelScheme
from medseg.errors import ConfigError
from medseg.files import apply_default_mode, read_regular_text, require_regular_file
from medseg.transforms.spec import Preprocessing
from medseg.yaml_input import describe_validation_error, load_yaml

CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "weights.safetensors"
# Key of the weights file's metadata holding ``parameter_counts`` (read without torch).
PARAMETERS_KEY = "medseg_parameters"


class Postprocessing(BaseModel):
    """Rules applied in this order, each naming structures of the label scheme.

    ``largest_component``: keep only the largest connected component; ``min_component_ml``:
    remove components smaller than the given volume; ``fill_holes``: fill enclosed holes;
    ``inside``: a structure that lives inside another (LiTS: ``{tumour: liver}``) is removed
    where it does not touch its container, and counts as part of the container for the
    other rules (the liver's largest component and holes include its tumours).
    """

    model_config = ConfigDict(extra="forbid")

    largest_component: list[str] = Field(default_factory=list)
    min_component_ml: dict[str, float] = Field(default_factory=dict)
    fill_holes: list[str] = Field(default_factory=list)
    inside: dict[str, str] = Field(default_factory=dict)

    def check(self, scheme: LabelScheme) -> None:
        """Raise ``ConfigError`` when a rule names a structure the scheme does not have."""
        named = [*self.largest_component, *self.min_component_ml, *self.fill_holes]
        named += [*self.inside, *self.inside.values()]
        unknown = sorted(set(named) - set(scheme.foreground))
        if unknown:
            known = ", ".join(scheme.foreground)
            raise ConfigError(f"postprocess names {', '.join(unknown)}; structures: {known}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NetworkSpec(_Strict):
    """Everything ``build_network`` needs: name, preset, options and channel counts."""

    name: str
    preset: str
    spatial_dims: int
    in_channels: int
    out_channels: int
    options: dict[str, Any] = Field(default_factory=dict)


class InferenceSpec(_Strict):
    """Sliding-window settings: window size (voxels), overlap, window batch, blending, and
    coarse-to-fine inference (``pipelines/prediction/coarse_to_fine.py``): on, the coarse pass's
    downsampling factor and the margin around its foreground (mm). ``bf16_agreement`` is the
    share of voxels (0-1) whose labels under bf16 equal fp32's on the validation cases,
    measured after training (``pipelines/bf16_agreement.py``; None: not measured); CPU
    prediction runs bf16 by default only where it is >= ``inference.BF16_AGREEMENT``."""

    roi_size: list[int]
    overlap: float = Field(0.5, ge=0, lt=1)
    sw_batch_size: int = Field(2, ge=1)
    mode: Literal["gaussian", "constant"] = "gaussian"
    coarse_to_fine: bool = False
    coarse_factor: int = Field(2, ge=2)
    coarse_margin_mm: float = Field(10.0, ge=0)
    bf16_agreement: float | None = Field(None, ge=0, le=1)

    @field_validator("roi_size")
    @classmethod
    def _roi_dims(cls, roi_size: list[int]) -> list[int]:
        if len(roi_size) not in (2, 3) or min(roi_size) < 1:
            raise ValueError(f"must be 2 or 3 positive sizes, got {roi_size}")
        return roi_size


class ModelConfig(_Strict):
    """The contents of a model directory's ``config.yaml``; ``plan`` is the plan training
    resolved its ``auto`` choices with (empty for a model trained without one), kept so
    that ``medseg info`` can show what prediction applies and why."""

    medseg_version: str = __version__
    network: NetworkSpec
    preprocessing: Preprocessing
    labels: dict[str, Any]
    inference: InferenceSpec
    postprocessing: Postprocessing = Field(default_factory=Postprocessing)
    provenance: dict[str, Any] = Field(default_factory=dict)
    plan: dict[str, Any] = Field(default_factory=dict)

    @property
    def scheme(self) -> LabelScheme:
        """The label scheme the network's output channels follow."""
        return LabelScheme.from_dict(self.labels)


def build_from_config(config: ModelConfig) -> Any:
    """Build (untrained) the network ``config.network`` describes."""
    return build_from_spec(config.network)


def build_from_spec(spec: NetworkSpec) -> Any:
    """Build (untrained) the network ``spec`` describes: registry name, preset, channel
    counts and the options that override the preset."""
    from medseg.networks import build_network

    return build_network(
        spec.name,
        spatial_dims=spec.spatial_dims,
        in_channels=spec.in_channels,
        out_channels=spec.out_channels,
        preset=spec.preset,
        **spec.options,
    )


def parameter_counts(network: Any, name: str) -> dict[str, Any]:
    """``{"parameters": trainable parameter count}`` of ``network`` (registered as ``name``),
    and for a prunable network (UNet++) ``"parameters_by_level": {level: count}``."""
    from medseg.networks import abilities, as_prunable

    counts: dict[str, Any] = {"parameters": sum(p.numel() for p in network.parameters())}
    if abilities(name).prunable:
        prunable = as_prunable(network)
        counts["parameters_by_level"] = {
            level: prunable.level_parameter_count(level) for level in range(1, prunable.levels + 1)
        }
    return counts


def recorded_parameter_counts(directory: Path) -> dict[str, Any] | None:
    """The ``parameter_counts`` a model directory's weights file recorded when it was
    saved, read from the file's header alone; None for a file from before they were."""
    from safetensors import safe_open

    try:
        with safe_open(str(Path(directory) / WEIGHTS_FILE), framework="numpy") as weights:
            recorded = (weights.metadata() or {}).get(PARAMETERS_KEY)
        counts = json.loads(recorded) if recorded else None
    except Exception:  # unreadable here: the caller loads the network and says why
        return None
    if not isinstance(counts, dict) or not isinstance(counts.get("parameters"), int):
        return None
    levels = counts.get("parameters_by_level")
    if isinstance(levels, dict):
        counts["parameters_by_level"] = {int(level): count for level, count in levels.items()}
    return counts


def save_model_dir(directory: Path, config: ModelConfig, network: Any) -> Path:
    """Write ``config`` and ``network``'s weights to ``directory``, replacing it whole.

    The files are written into a sibling temporary folder first, so a crash never leaves a
    half-written model directory in place. Returns ``directory``.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
        metadata = {
            "medseg_version": __version__,
            PARAMETERS_KEY: json.dumps(parameter_counts(network, config.network.name)),
        }
        save_file(state, staging / WEIGHTS_FILE, metadata=metadata)
        text = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
        (staging / CONFIG_FILE).write_text(text, encoding="utf-8")
        # mkdtemp makes the folder 0700 and safetensors writes 0600: a model is shared.
        for path in (staging, staging / WEIGHTS_FILE, staging / CONFIG_FILE):
            apply_default_mode(path)
        if directory.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old.", dir=directory.parent))
            directory.rename(retired / directory.name)
            staging.rename(directory)
            shutil.rmtree(retired)
        else:
            staging.rename(directory)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return directory


def read_model_config(directory: Path) -> ModelConfig:
    """Read and validate ``directory/config.yaml``; ``ConfigError`` names what is wrong."""
    path = Path(directory) / CONFIG_FILE
    if not Path(directory).is_dir():
        raise ConfigError(f"{directory}: model directory not found")
    try:
        text = read_regular_text(path)
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: missing; a model directory holds {CONFIG_FILE} and {WEIGHTS_FILE}"
        ) from None
    except (UnicodeDecodeError, OSError) as error:
        raise ConfigError(f"{path}: unreadable ({error})") from error
    return parse_model_config(text, str(path))


def parse_model_config(text: str, source: str) -> ModelConfig:
    """Validate the YAML ``text`` of a model's ``config.yaml`` (``source`` names it in
    errors); ``ConfigError`` names what is wrong."""
    try:
        config = ModelConfig.model_validate(load_yaml(text, source))
    except ValidationError as error:
        reason = describe_validation_error(error)
        raise ConfigError(f"{source}: not a medseg model config ({reason})") from error
    if "table" in config.labels:
        from medseg.pipelines.label_table import parse_label_table

        parse_label_table(config.labels["table"], config.scheme, source)
    # Provenance (training metrics, dataset statistics) is a record, not a setting: a NaN
    # there changes nothing the model computes.
    key = non_finite_key(config.model_dump(exclude={"provenance"}))
    if key:
        raise ConfigError(f"{source}: {key}: must be a finite number")
    return config


def load_weights(network: Any, state: Any, source: Path) -> None:
    """Load ``state`` into ``network`` after checking it fits and is finite.

    Raises ``ConfigError`` naming ``source`` and the first tensor that is missing, extra,
    of another shape, or holding NaN or infinite values (such weights segment every
    voxel as background without a word).
    """
    import torch

    expected = network.state_dict()
    if not isinstance(state, dict):
        raise ConfigError(f"{source}: holds no mapping of tensors")
    missing = [name for name in expected if name not in state]
    unexpected = [name for name in state if name not in expected]
    if missing or unexpected:
        first = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise ConfigError(
            f"{source}: weights do not fit this network ({len(missing)} missing, "
            f"{len(unexpected)} unexpected tensors; first: {first})"
        )
    for name, tensor in expected.items():
        value = state[name]
        if not isinstance(value, torch.Tensor):
            raise ConfigError(f"{source}: {name} is not a tensor")
        if tuple(value.shape) != tuple(tensor.shape):
            raise ConfigError(
                f"{source}: tensor {name} has shape {list(value.shape)}, the network needs "
                f"{list(tensor.shape)}"
            )
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ConfigError(f"{source}: tensor {name} holds NaN or infinite values")
    network.load_state_dict(state)


def load_model_dir(directory: Path) -> tuple[ModelConfig, Any]:
    """Read a model directory: its config and the network with its weights, in eval mode.

    Raises ``ConfigError`` when a file is missing or the weights do not fit the network.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config = read_model_config(directory)
    network = build_from_config(config)
    weights = Path(directory) / WEIGHTS_FILE
    try:
        require_regular_file(weights)
        state = load_file(weights)
    except FileNotFoundError:
        raise ConfigError(f"{weights}: missing") from None
    except (SafetensorError, OSError) as error:
        raise ConfigError(f"{weights}: not a safetensors file ({error})") from error
    load_weights(network, state, weights)
    return config, network.eval()


def _download(uri: str) -> Path:
    from medseg.pipelines.tracking import limit_http_retries

    # Without a cap MLflow retried an unreachable server for 263 s, warning seven times.
    limit_http_retries()
    import mlflow

    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    except Exception as error:  # MLflow raises many types for a bad URI or an offline server
        raise ConfigError(
            f"{uri}: cannot fetch the model ({str(error).splitlines()[0]})"
        ) from error


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` is a training run's directory: its ``config.yaml`` is the run's
    config, and the model is in ``model/`` below it."""
    return path.is_dir() and not (path / WEIGHTS_FILE).exists() and (path / "model").is_dir()


def open_model(spec: str | Path) -> tuple[ModelConfig, Any]:
    """Load a model given as a model directory, a run directory, a model package
    (``NAME.medseg.zip``), a training checkpoint
    (``checkpoint_*.pt``, read with the run's ``model/config.yaml``) or an MLflow URI
    (``runs:/ID/model``, ``models:/NAME/VERSION``). Returns ``(config, network)`` in eval
    mode; raises ``ConfigError`` when it is none of these or is broken.
    """
    text = str(spec)
    if text.startswith(("runs:/", "models:/")):
        folder = _download(text)
        # A registered MLflow PyTorch model carries the model directory's files in extra_files/.
        if not (folder / CONFIG_FILE).exists() and (folder / "extra_files" / CONFIG_FILE).exists():
            folder = folder / "extra_files"
        return load_model_dir(folder)
    path = Path(text)
    if is_run_dir(path):
        path = path / "model"
    from medseg.pipelines.package import is_package, open_package

    if is_package(path):
        return open_package(path)
    if path.is_file() and path.suffix == ".pt":
        from medseg.pipelines.checkpoints import load_checkpoint

        config = read_model_config(path.parent / "model")
        network = build_from_config(config)
        load_weights(network, load_checkpoint(path)["network"], path)
        return config, network.eval()
    return load_model_dir(path)
