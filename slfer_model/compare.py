"""`slfer compare`: one table over the report.json files that `slfer evaluate` wrote.

This module imports no torch, so that the command starts quickly.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

from pipeline.text import count_noun
from slfer_model.variants import VARIANTS, variant_label

logger = logging.getLogger(__name__)

REPORT_NAME = "report.json"

# Row order of comparison tables: the ablation table of the SLFER paper.
VARIANT_ORDER: tuple[str, ...] = tuple(VARIANTS)


class EvaluationError(Exception):
    """An input that evaluation or comparison cannot use; the message names the value and the fix."""


def compare_runs(runs: Sequence[Path]) -> int:
    """Log one table of accuracy and mean class accuracy over evaluated runs.

    Every run is read. A run or report that cannot be read gets one warning
    and is left out of the table. With no readable report at all, the
    messages are logged as errors and no table is logged.

    Args:
        runs: run folders (their `eval-*/report.json` files are read, one row
            per split), EVAL folders, folders of runs, or report.json files.

    Returns:
        Exit status: 0, or 1 when a run has no readable report.
    """
    reports, errors = read_reports([Path(run) for run in runs])
    if not reports:
        for error in errors:
            logger.error("%s", error)
        return 1

    for error in errors:
        logger.warning("%s", error)
    logger.info(
        "comparison of %s:\n%s", count_noun(len(reports), "evaluation"), format_comparison_table(reports),
    )
    return 1 if errors else 0


def read_reports(runs: Sequence[Path]) -> tuple[list[dict], list[str]]:
    """Read the reports of every run.

    Returns:
        The reports that could be read, and one error message for each run
        without a report and each report that could not be read.
    """
    reports, errors = [], []
    for run in runs:
        try:
            paths = find_reports(run)
        except EvaluationError as error:
            errors.append(str(error))
            continue

        for path in paths:
            try:
                reports.append(read_report(path))
            except EvaluationError as error:
                errors.append(str(error))
    return reports, errors


def find_reports(run: Path) -> list[Path]:
    """Find the report files of `run`, trying in turn the path itself and the patterns below.

    RUN/report.json is an EVAL folder, RUN/eval-*/report.json a run folder,
    RUN/*/report.json the --out folder of an evaluate call over several
    checkpoints, and RUN/*/eval-*/report.json a folder of run folders.
    """
    if run.is_file():
        return [run]
    patterns = (REPORT_NAME, f"eval-*/{REPORT_NAME}", f"*/{REPORT_NAME}", f"*/eval-*/{REPORT_NAME}")
    for pattern in patterns:
        found = sorted(run.glob(pattern))
        if found:
            return found
    # compare does not know which shards the run was trained on, so SHARDS stays a placeholder.
    raise EvaluationError(
        f"no {REPORT_NAME} found in {run}, its eval-* folders or its subfolders; "
        f"run slfer evaluate --shards SHARDS --checkpoint {run / 'best.pt'} first"
    )


def read_report(path: Path) -> dict:
    """Load one report.json and check that it has the fields of the comparison table."""
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise EvaluationError(
            f"cannot read {path} as JSON ({error}); run slfer evaluate again on its checkpoint to rewrite it"
        ) from error

    missing = [
        key for key in ("run", "split", "num_samples", "accuracy", "mean_class_accuracy")
        if not isinstance(report, dict) or key not in report
    ]
    if missing:
        raise EvaluationError(
            f"{path} is missing {', '.join(missing)}; pass a report.json written by slfer evaluate"
        )
    return report


def format_comparison_table(reports: Sequence[dict]) -> str:
    """Lay out one row per report: run, variant, split, images, TTA, accuracy and mean class accuracy."""
    header = ("run", "variant", "split", "images", "flip TTA", "accuracy %", "mean class acc. %")
    rows = [
        (
            report["run"], variant_label(report.get("variant"), report.get("se")), report["split"],
            str(report["num_samples"]),
            "yes" if report.get("tta_flip") else "no",
            f"{report['accuracy'] * 100:.2f}", f"{report['mean_class_accuracy'] * 100:.2f}",
        )
        for report in order_reports(reports)
    ]
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]
    lines = [header, tuple("-" * width for width in widths), *rows]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines)


def order_reports(reports: Sequence[dict]) -> list[dict]:
    """Sort reports like the ablation table: baseline, ct, st, ct+st, proposed, then unknown variants.

    The sort is stable, so runs of one variant keep the order they were given in.
    """
    def rank(report: dict) -> int:
        variant = report.get("variant")
        return VARIANT_ORDER.index(variant) if variant in VARIANT_ORDER else len(VARIANT_ORDER)

    return sorted(reports, key=rank)
