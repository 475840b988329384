"""Job-array sharding: ``--num-parts N --part-id I`` splits the sorted cases stably, and
``medseg report merge`` accounts for every case of the batch, naming what is missing."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from medseg.errors import ConfigError
from medseg.pipelines.prediction.parts import Part
from medseg.pipelines.prediction.predict import predict

CASES = [f"BraTS2021_{i:05d}" for i in range(7)]


@pytest.fixture(scope="module")
def seven_cases(tmp_path_factory):
    from medseg.datasets.synthetic import synthesize

    root = tmp_path_factory.mktemp("seven")
    synthesize("brats", root, cases=7, shape=(32, 32, 32), seed=3)
    return root


@pytest.fixture(scope="module")
def three_parts(tmp_path_factory, brats_model_dir, seven_cases):
    """The output folder after parts 0, 1 and 2 of 3 ran, and each part's case ids."""
    output = tmp_path_factory.mktemp("parts") / "out"
    shares = []
    for part_id in range(3):
        report = predict(
            brats_model_dir,
            [str(seven_cases)],
            output,
            part=Part(part_id, 3),
            show_progress=False,
        )
        shares.append([case.case for case in report.cases])
    return output, shares


def test_every_case_falls_in_exactly_one_part_as_nnunet_splits(three_parts):
    output, shares = three_parts
    assert shares == [CASES[0::3], CASES[1::3], CASES[2::3]]
    for part_id in range(3):
        report = json.loads((output / f"predict_report.part-{part_id}-of-3.json").read_text())
        assert [case["case"] for case in report["cases"]] == shares[part_id]
        assert report["cohort"] == CASES
    assert not (output / "predict_report.json").exists()
    assert sorted(path.name for path in output.glob("BraTS*.nii.gz")) == [
        f"{case}.nii.gz" for case in CASES
    ]


def test_the_split_does_not_depend_on_the_input_order():
    shuffled = [CASES[i] for i in (4, 0, 6, 2, 5, 1, 3)]
    assert Part(1, 3).owns(shuffled) == set(CASES[1::3])


def test_merge_reports_all_seven_cases(three_parts, medseg_cli):
    output, _ = three_parts
    result = medseg_cli("report", "merge", output)
    assert result.code == 0, result.out + result.err
    merged = json.loads((output / "predict_report.json").read_text())
    assert [case["case"] for case in merged["cases"]] == CASES
    assert {case["status"] for case in merged["cases"]} == {"done"}
    assert merged["missing_cases"] == [] and merged["missing_parts"] == []


def test_merge_lists_the_cases_of_a_part_that_never_ran(tmp_path, three_parts, medseg_cli):
    source, shares = three_parts
    output = tmp_path / "out"
    shutil.copytree(source, output)
    (output / "predict_report.part-1-of-3.json").unlink()
    result = medseg_cli("report", "merge", output)
    assert result.code == 1
    for case_id in shares[1]:
        assert f"missing {case_id}" in result.out
    assert "no report from part 1" in result.out
    merged = json.loads((output / "predict_report.json").read_text())
    assert merged["missing_cases"] == shares[1]
    assert merged["missing_parts"] == [1]


@pytest.mark.parametrize(("part_id", "num_parts"), [(3, 3), (-1, 3), (0, 0)])
def test_a_part_outside_the_split_is_refused(part_id, num_parts):
    with pytest.raises(ConfigError, match="--"):
        Part(part_id, num_parts)


def test_cli_refuses_a_part_id_past_the_last_part(tmp_path, brats_model_dir, medseg_cli):
    result = medseg_cli(
        "predict", brats_model_dir, tmp_path, "-o", tmp_path / "out", "--num-parts", "3",
        "--part-id", "3",
    )  # fmt: skip
    assert result.code == 2
    assert "--part-id 3: must be 0 to 2" in result.err


def test_merge_without_part_reports_says_what_to_run(tmp_path, medseg_cli):
    result = medseg_cli("report", "merge", tmp_path)
    assert result.code == 2
    assert "no part reports" in result.err


def test_merge_refuses_a_pipe_under_a_report_name_without_blocking(tmp_path):
    from medseg.pipelines.prediction.report_merge import merge_reports

    os.mkfifo(tmp_path / "predict_report.part-0-of-2.json")
    with pytest.raises(ConfigError, match="not a regular file"):
        merge_reports(tmp_path)
