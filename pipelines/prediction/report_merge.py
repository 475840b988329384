"""``medseg report merge``: one ``predict_report.json`` from the reports of a split batch.

The runs of a split batch (``--num-parts``, or torchrun ranks) each write a report that
lists their own cases and, as ``cohort``, every case id of the whole batch. Merging joins
their cases, in cohort order, and names what no report accounts for: cases whose part
never ran or died before writing its report, and the parts with no report at all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.errors import ConfigError
from medseg.files import read_regular_text, write_text_atomic

MERGED = "predict_report.json"
PART_REPORTS = "predict_report.*.json"


@dataclass
class MergedReport:
    """The merged batch: ``cases`` (report entries as dicts, cohort order), the ``missing``
    case ids no report lists, the ``missing_parts`` that wrote no report, and ``path``."""

    path: Path
    cases: list[dict[str, Any]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    missing_parts: list[int] = field(default_factory=list)

    @property
    def failed(self) -> list[dict[str, Any]]:
        """The entries of cases that could not be segmented."""
        return [case for case in self.cases if case.get("status") == "failed"]


def _read(path: Path) -> dict[str, Any]:
    try:
        # A pipe under a report's name is refused by name, never read (it would block).
        report = json.loads(read_regular_text(path))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path}: not a readable report ({error})") from error
    if not isinstance(report, dict) or not isinstance(report.get("cohort"), list):
        raise ConfigError(f"{path}: not a part report of medseg predict (no cohort)")
    cases = report.get("cases", [])
    if not isinstance(cases, list) or not all(
        isinstance(entry, dict) and isinstance(entry.get("case"), str) for entry in cases
    ):
        raise ConfigError(f"{path}: its cases are not a list of case entries")
    return report


def merge_reports(output_dir: Path) -> MergedReport:
    """Merge the part reports in ``output_dir`` into ``output_dir/predict_report.json``.

    Raises ``ConfigError`` when there is no part report, one cannot be read, or the
    reports come from different batches (different cohorts or part counts).
    """
    output_dir = Path(output_dir)
    paths = sorted(output_dir.glob(PART_REPORTS))
    if not paths:
        raise ConfigError(
            f"{output_dir}: no part reports ({PART_REPORTS}); run medseg predict with "
            "--num-parts (or under torchrun) into this folder first"
        )
    reports = {path: _read(path) for path in paths}
    first_path, first = next(iter(reports.items()))
    for path, report in reports.items():
        for key in ("cohort", "num_parts"):
            if report.get(key) != first.get(key):
                raise ConfigError(
                    f"{path}: its {key} differs from {first_path.name}'s; "
                    "these reports come from different batches"
                )
    cohort = [str(case_id) for case_id in first["cohort"]]
    entries: dict[str, dict[str, Any]] = {}
    for report in reports.values():
        for entry in report.get("cases", []):
            kept = entries.get(entry["case"])
            # A case listed twice (a part run again) counts as its best outcome.
            if kept is None or kept.get("status") == "failed":
                entries[entry["case"]] = entry
    num_parts = int(first.get("num_parts") or 1)
    seen_parts = {int(report.get("part_id") or 0) for report in reports.values()}
    merged = MergedReport(
        path=output_dir / MERGED,
        cases=[entries[case_id] for case_id in cohort if case_id in entries],
        missing=[case_id for case_id in cohort if case_id not in entries],
        missing_parts=sorted(set(range(num_parts)) - seen_parts),
    )
    payload = {
        "model": first.get("model"),
        "num_parts": num_parts,
        "merged_from": [path.name for path in paths],
        "missing_parts": merged.missing_parts,
        "missing_cases": merged.missing,
        "cases": merged.cases,
    }
    write_text_atomic(merged.path, json.dumps(payload, indent=1))
    return merged
