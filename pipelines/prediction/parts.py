"""Split a batch into parts for cluster schedulers: ``medseg predict --num-parts N --part-id I``.

A SLURM job array or a Kubernetes indexed Job runs the same command once per index; each
run takes its own part of the cohort and writes its own report, which ``medseg report
merge`` later combines. The split is a pure function of the case ids, as in nnU-Net: the
ids are sorted and case ``i`` of that order goes to part ``i % N``, so every run, on any
node, agrees on it without talking to the others.
"""

from __future__ import annotations

from dataclasses import dataclass

from medseg.errors import ConfigError


@dataclass(frozen=True)
class Part:
    """Part ``part_id`` (0-based) of ``num_parts``; ``Part(0, 1)`` is the whole batch."""

    part_id: int = 0
    num_parts: int = 1

    def __post_init__(self) -> None:
        if self.num_parts < 1:
            raise ConfigError(f"--num-parts {self.num_parts}: must be 1 or more")
        if not 0 <= self.part_id < self.num_parts:
            raise ConfigError(
                f"--part-id {self.part_id}: must be 0 to {self.num_parts - 1} "
                f"for --num-parts {self.num_parts}"
            )

    @property
    def whole(self) -> bool:
        """Whether this part is the whole batch (no splitting)."""
        return self.num_parts == 1

    def owns(self, cohort: list[str]) -> set[str]:
        """The ids of ``cohort`` (every case id of the batch) that fall in this part."""
        return {
            case_id
            for index, case_id in enumerate(sorted(cohort))
            if index % self.num_parts == self.part_id
        }

    def report_name(
        self,
        rank: int = 0,
        world_size: int = 1,
        base: str = "predict_report",
        suffix: str = ".json",
    ) -> str:
        """The file name of this part's report (of torchrun rank ``rank`` of ``world_size``):
        ``predict_report.json``, ``predict_report.part-I-of-N.json``,
        ``predict_report.rank<R>.json`` or ``predict_report.rank<R>.part-I-of-N.json``; other
        per-part files name themselves alike with their own ``base`` and ``suffix``."""
        stem = base if world_size == 1 else f"{base}.rank{rank}"
        if self.whole:
            return f"{stem}{suffix}"
        return f"{stem}.part-{self.part_id}-of-{self.num_parts}{suffix}"
