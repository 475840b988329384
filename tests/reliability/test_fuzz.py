"""Property-based fuzzing (hypothesis) of the image readers, ``medseg check``, ``medseg
predict`` and the config loader over mutated NIfTI headers and bytes and mutated YAML.

The invariants every input must keep: exit status 0, 1 or 2; one line per failure, naming
the file; no traceback; inputs byte-identical afterwards; nothing in the output folder
but complete files. Examples are few and tiny and nothing is stored between runs, so the
whole module stays within about 30 s.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medseg.datasets.synthetic import synthesize
from tests.reliability.test_bad_inputs import fingerprint

SHAPE = (16, 16, 8)
HEADER = 352
FUZZ = settings(
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def clean_case(tmp_path_factory) -> dict[str, bytes]:
    """The bytes of one small LiTS phantom case: its volume and its segmentation."""
    root = tmp_path_factory.mktemp("fuzz_source")
    synthesize("lits", root, cases=1, shape=SHAPE, seed=9)
    return {name: (root / name).read_bytes() for name in ("volume-0.nii", "segmentation-0.nii")}


def mutations(size: int):
    """Byte edits, mostly in the header, and an optional truncation."""
    offset = st.one_of(st.integers(0, HEADER - 1), st.integers(0, size - 1))
    edits = st.lists(st.tuples(offset, st.integers(0, 255)), min_size=1, max_size=6)
    return st.tuples(edits, st.one_of(st.none(), st.integers(0, size)), st.booleans())


def mutate(data: bytes, mutation) -> tuple[bytes, bool]:
    """``data`` with the edits applied and cut; the bool says to gzip it (a .nii.gz)."""
    edits, cut, compressed = mutation
    changed = bytearray(data)
    for offset, value in edits:
        changed[offset % len(changed)] = value
    if cut is not None:
        changed = changed[:cut]
    return (gzip.compress(bytes(changed)) if compressed else bytes(changed)), compressed


def write_mutated(folder: Path, stem: str, data: bytes, mutation) -> Path:
    content, compressed = mutate(data, mutation)
    path = folder / f"{stem}.nii{'.gz' if compressed else ''}"
    path.write_bytes(content)
    return path


def assert_complete_outputs(folder: Path) -> None:
    """Every file left in an output folder is whole: no temporary, lock or partial file."""
    if not folder.exists():
        return
    for path in folder.iterdir():
        assert not path.name.startswith("."), path
        if path.name.endswith(".nii.gz"):
            np.asarray(nib.load(path).dataobj)  # raises on a partial file


@settings(FUZZ, max_examples=100)
@given(mutation=mutations(SHAPE[0] * SHAPE[1] * SHAPE[2] * 2 + HEADER))
def test_reading_a_mutated_header_gives_a_header_or_a_named_refusal(
    mutation, clean_case, tmp_path_factory
):
    from medseg.datasets.headers import ImageHeader, UnusableImageError, inspect_image

    folder = tmp_path_factory.mktemp("read")
    path = write_mutated(folder, "case", clean_case["volume-0.nii"], mutation)
    before = path.read_bytes()
    try:
        header = inspect_image(path)
    except UnusableImageError as error:
        assert str(error) and "\n" not in str(error)
    else:
        assert isinstance(header, ImageHeader)
        assert len(header.shape) in (1, 2, 3) and header.channels >= 1
        assert header.affine is None or np.isfinite(header.affine).all()
    assert path.read_bytes() == before


@settings(FUZZ, max_examples=30)
@given(mutation=mutations(SHAPE[0] * SHAPE[1] * SHAPE[2] * 2 + HEADER))
def test_check_of_a_mutated_case_exits_cleanly_naming_the_file(
    mutation, clean_case, tmp_path_factory, medseg_cli
):
    root = tmp_path_factory.mktemp("check")
    (root / "segmentation-0.nii").write_bytes(clean_case["segmentation-0.nii"])
    path = write_mutated(root, "volume-0", clean_case["volume-0.nii"], mutation)
    before = fingerprint(root)
    result = medseg_cli("check", "lits", root)
    assert result.code in (0, 1, 2), result
    assert "Traceback" not in result.out + result.err
    problems = [line for line in result.out.splitlines() if line.startswith("problem")]
    assert all(root.name in line for line in problems), problems
    if result.code == 1:
        assert len(problems) == 1 and path.name in problems[0], result.out
    if result.code == 2:
        assert len(result.err.strip().splitlines()) == 1, result.err
    assert fingerprint(root) == before


@settings(FUZZ, max_examples=25)
@given(mutation=mutations(SHAPE[0] * SHAPE[1] * SHAPE[2] * 2 + HEADER))
def test_predict_of_a_mutated_case_exits_cleanly_and_leaves_only_complete_files(
    mutation, clean_case, tmp_path_factory, ct_model_dir, medseg_cli
):
    work = tmp_path_factory.mktemp("predict")
    inputs = work / "in"
    inputs.mkdir()
    (inputs / "good.nii").write_bytes(clean_case["volume-0.nii"])
    path = write_mutated(inputs, "mutated", clean_case["volume-0.nii"], mutation)
    before = fingerprint(inputs)
    result = medseg_cli("predict", ct_model_dir, inputs, "-o", work / "out")
    assert result.code in (0, 1, 2), result
    assert "Traceback" not in result.out + result.err
    failures = [line for line in result.out.splitlines() if line.startswith("failed")]
    if result.code == 1:
        assert len(failures) == 1 and path.name in failures[0], result.out
    if result.code == 2:
        assert len(result.err.strip().splitlines()) == 1, result.err
    if result.code in (0, 1):
        assert (work / "out" / "good.nii.gz").is_file()
    assert fingerprint(inputs) == before
    assert_complete_outputs(work / "out")


CONFIG = """\
data: {layout: lits, root: data, fold: 0, folds: 5}
network: {name: unetpp, preset: tiny, options: {features: [4, 8, 16]}}
transforms: {patch_size: [32, 32, 16], spacing: [1.0, 1.0, 2.5], ct_window: [-100, 200]}
train: {epochs: 10, batch_size: 2, lr: 0.001, class_weights: [1, 2, 3]}
infer: {overlap: 0.5, sw_batch_size: 2}
output: runs/fuzz
tracking: {enabled: false, experiment: fuzz}
"""
YAML_PIECES = [*":{}[],&*!|>-#'\"\n 0.e", ".inf", ".nan", "&a", "*a", "!!python/name:os"]


@settings(FUZZ, max_examples=150)
@given(
    edits=st.lists(
        st.tuples(
            st.integers(0, len(CONFIG)),
            st.integers(0, 6),
            st.one_of(st.sampled_from(YAML_PIECES), st.text(max_size=3)),
        ),
        min_size=1,
        max_size=5,
    )
)
def test_loading_a_mutated_config_gives_a_config_or_one_line(edits, tmp_path_factory):
    from medseg.config import Config, load_config
    from medseg.errors import ConfigError

    text = CONFIG
    for position, removed, inserted in edits:
        text = text[:position] + inserted + text[position + removed :]
    path = tmp_path_factory.mktemp("config") / "config.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    try:
        config = load_config(path)
    except ConfigError as error:
        message = str(error)
        assert message.startswith(str(path)) and "\n" not in message
        assert len(message) < 2000
    else:
        assert isinstance(config, Config)
        assert config.data.fold < config.data.folds and config.train.lr > 0


def test_the_mutations_reach_the_refusals(clean_case, tmp_path):
    """A cut file and a NaN written into the sform's first row, each one mutation as the
    strategies make them, are refused by name (the fuzzing is not all no-ops)."""
    from medseg.datasets.headers import UnusableImageError, inspect_image

    cut = write_mutated(tmp_path, "cut", clean_case["volume-0.nii"], ([(0, 92)], 1000, False))
    with pytest.raises(UnusableImageError, match="truncated"):
        inspect_image(cut)
    nan_row = [(280, 0), (281, 0), (282, 0xC0), (283, 0x7F)]  # srow_x[0] = NaN (little endian)
    nan = write_mutated(tmp_path, "nan", clean_case["volume-0.nii"], (nan_row, None, True))
    with pytest.raises(UnusableImageError, match="affine holds NaN"):
        inspect_image(nan)
