"""Model packages: a model directory as one ``NAME.medseg.zip`` file, checked on opening.

A package holds ``config.yaml`` and ``weights.safetensors`` (the model directory),
``plan.json`` and ``provenance.json`` (copies of those config sections, for a reader
without medseg) and ``manifest.json``: the SHA-256 and size of every other member.
Opening one reads it in memory, never extracting to disk and never unpickling: every
member must be a plain name the manifest lists (no folders, no ``..``, no links), its
declared size within ``MEMBER_LIMITS`` before a byte is inflated (zip bombs), and its
bytes must hash to the manifest's digest, so a damaged or altered package is refused
with one line naming the member. The manifest detects damage and casual edits; it is not
a signature (whoever can rewrite the zip can rewrite the manifest).
"""

from __future__ import annotations

import hashlib
import json
import re
import stat
import zipfile
from pathlib import Path
from typing import Any

import yaml

from medseg.errors import ConfigError
from medseg.files import require_regular_file, write_atomic
from medseg.pipelines.model_dir import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    ModelConfig,
    build_from_config,
    load_weights,
    parse_model_config,
)

SUFFIX = ".medseg.zip"
MANIFEST = "manifest.json"
FORMAT = "medseg-model-package"
VERSION = 1
PLAN_FILE = "plan.json"
PROVENANCE_FILE = "provenance.json"
# Largest size each member may declare: the paper presets' weights are under 300 MB.
MEMBER_LIMITS = {
    MANIFEST: 1 << 20,
    CONFIG_FILE: 1 << 20,
    PLAN_FILE: 1 << 20,
    PROVENANCE_FILE: 1 << 20,
    WEIGHTS_FILE: 4 << 30,
}
# Deflate compresses at most about 1032:1; a higher declared ratio is a crafted member.
MAX_RATIO = 1100


def package_name(model: str | Path) -> str:
    """The package's default name for ``model``: a model directory's or package's name, or
    its run's for a run's ``model/`` or checkpoint; an MLflow URI's parts. Unsafe characters
    become ``-``."""
    text = str(model).rstrip("/")
    if text.startswith(("runs:/", "models:/")):
        name = "-".join(part for part in text.split(":/", 1)[1].split("/") if part)
    else:
        path = Path(text).resolve()
        # A run's model/ or checkpoint is named after the run.
        in_run = path.name == "model" or path.suffix == ".pt"
        name = path.parent.name if in_run else path.name.removesuffix(SUFFIX)
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip(".-") or "model"


def package_bytes(config: ModelConfig, network: Any) -> dict[str, bytes]:
    """The members of a package of ``config`` and ``network``'s weights, manifest included."""
    from safetensors.torch import save

    from medseg import __version__

    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    members = {
        CONFIG_FILE: yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False).encode(),
        WEIGHTS_FILE: save(state, metadata={"medseg_version": __version__}),
        PLAN_FILE: json.dumps(config.plan, indent=1).encode(),
        PROVENANCE_FILE: json.dumps(config.provenance, indent=1).encode(),
    }
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "files": {
            name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
            for name, data in members.items()
        },
    }
    return {MANIFEST: json.dumps(manifest, indent=1).encode(), **members}


def write_package(model: str | Path, output_dir: Path, name: str | None = None) -> Path:
    """Write ``model`` (anything ``open_model`` takes) as ``output_dir/NAME.medseg.zip``,
    atomically; returns its path. ``name`` defaults to ``package_name(model)``."""
    from medseg.pipelines.model_dir import open_model

    config, network = open_model(model)
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError(f"{output_dir}: exists and is not a folder; choose another --output")
    output_dir.mkdir(parents=True, exist_ok=True)
    target = output_dir / f"{name or package_name(model)}{SUFFIX}"
    members = package_bytes(config, network)

    def write(path: Path) -> None:
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for member, data in members.items():
                archive.writestr(member, data)

    return write_atomic(target, write)


def _check_member(path: Path, info: zipfile.ZipInfo) -> None:
    name = info.filename
    if name not in MEMBER_LIMITS:
        raise ConfigError(f"{path}: unexpected member {name!r}; not a medseg model package")
    if stat.S_ISLNK(info.external_attr >> 16) or info.is_dir():
        raise ConfigError(f"{path}: member {name} is not a plain file")
    if info.file_size > MEMBER_LIMITS[name]:
        raise ConfigError(
            f"{path}: member {name} declares {info.file_size} bytes, more than the "
            f"{MEMBER_LIMITS[name]} a package may hold"
        )
    if info.compress_size and info.file_size / info.compress_size > MAX_RATIO:
        raise ConfigError(f"{path}: member {name} inflates {MAX_RATIO}x or more (a zip bomb)")


def read_members(path: Path) -> dict[str, bytes]:
    """The checked members of the package at ``path`` (see the module's rules): each one
    the manifest lists, read in memory, its size and SHA-256 as the manifest says.

    Raises ``ConfigError`` naming ``path`` and the member at fault.
    """
    path = Path(path)
    try:
        require_regular_file(path)
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            names = [info.filename for info in infos]
            if len(set(names)) != len(names):
                raise ConfigError(f"{path}: a member name appears twice")
            for info in infos:
                _check_member(path, info)
            if MANIFEST not in names:
                raise ConfigError(f"{path}: no {MANIFEST}; not a medseg model package")
            manifest = _manifest(path, archive.read(MANIFEST))
            missing = sorted(set(manifest) - set(names))
            extra = sorted(set(names) - set(manifest) - {MANIFEST})
            if missing or extra:
                which = f"missing {missing[0]}" if missing else f"unlisted {extra[0]}"
                raise ConfigError(f"{path}: members differ from the manifest ({which})")
            members = {}
            for name, expected in manifest.items():
                data = archive.read(name)
                if len(data) != expected["size"] or (
                    hashlib.sha256(data).hexdigest() != expected["sha256"]
                ):
                    raise ConfigError(_altered(path, name))
                members[name] = data
    except FileNotFoundError:
        raise ConfigError(f"{path}: model package not found") from None
    except zipfile.BadZipFile as error:
        member = re.search(r"file (\S+)", str(error))
        if member:
            raise ConfigError(_altered(path, member.group(1))) from None
        raise ConfigError(f"{path}: not a zip file ({error})") from None
    # zlib and I/O errors of a damaged zip; encrypted members or unknown compression.
    except (OSError, EOFError, ValueError, RuntimeError, NotImplementedError) as error:
        raise ConfigError(f"{path}: unreadable ({type(error).__name__}: {error})") from None
    return members


def _altered(path: Path, member: str) -> str:
    return (
        f"{path}: {member} does not match the package's SHA-256 manifest; the file was "
        "damaged or altered, refusing it"
    )


def _manifest(path: Path, data: bytes) -> dict[str, dict[str, Any]]:
    try:
        manifest = json.loads(data)
        files = manifest["files"]
        if manifest.get("format") != FORMAT or not isinstance(files, dict):
            raise ValueError("not a medseg package manifest")
        for name, entry in files.items():
            if name not in MEMBER_LIMITS or name == MANIFEST:
                raise ValueError(f"lists unexpected member {name!r}")
            if not re.fullmatch(r"[0-9a-f]{64}", str(entry["sha256"])):
                raise ValueError(f"{name}: sha256 is not 64 hex digits")
            if not isinstance(entry["size"], int):
                raise ValueError(f"{name}: size is not an integer")
    except (ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"{path}: {MANIFEST} unusable ({error})") from None
    for required in (CONFIG_FILE, WEIGHTS_FILE):
        if required not in files:
            raise ConfigError(f"{path}: the manifest lists no {required}")
    return files


def open_package(path: str | Path) -> tuple[ModelConfig, Any]:
    """Load the model in the package at ``path``: ``(config, network)`` in eval mode.

    Raises ``ConfigError`` naming the package (and member) when it is not a package, is
    damaged or altered, or its config or weights are unusable.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    members = read_members(path)
    try:
        text = members[CONFIG_FILE].decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}!{CONFIG_FILE}: unreadable ({error})") from None
    config = parse_model_config(text, f"{path}!{CONFIG_FILE}")
    network = build_from_config(config)
    source = Path(f"{path}!{WEIGHTS_FILE}")
    try:
        state = load(members[WEIGHTS_FILE])
    except SafetensorError as error:
        raise ConfigError(f"{source}: not a safetensors file ({error})") from None
    load_weights(network, state, source)
    return config, network.eval()


def is_package(path: str | Path) -> bool:
    """Whether ``path`` names a model package (by its ``.medseg.zip`` suffix)."""
    return str(path).endswith(SUFFIX)
