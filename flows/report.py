"""What a run tells its people: the progress artifact and the terminal's line per pair while it
runs, then the summary table, the QC digest and the last line (counts, device-seconds, wall time).
Nothing here changes a deliverable.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO
from uuid import UUID

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterId

from dubflow.tasks.publish import PairOutcome
from dubflow.tasks.stage_cache import CacheCounts

RECORDING_WAIT_S = 30.0  # how long the server may go without recording one more finished task run
_READ_PAGE = 200  # task runs per read (the API's default page limit)
PROGRESS_EVERY_S = 2.0


@dataclass(frozen=True)
class RunSummary:
    run_dir: str  # a local path or s3://bucket/prefix/run-id
    outcomes: tuple[PairOutcome, ...]
    notice: str | None
    cache: CacheCounts  # stage results computed and reused by this run
    device: str  # "GPU" or "CPU": where the model stages ran
    device_seconds: float  # time this run's model stages (LipDub, separation) held their devices (leases)
    wall_seconds: float
    pruned: str | None = None  # what the run's final cache prune removed, when it removed anything

    @property
    def failed(self) -> list[PairOutcome]:
        return [o for o in self.outcomes if o.status != "delivered"]

    def last_line(self) -> str:
        delivered = len(self.outcomes) - len(self.failed)
        return (f"dubflow: {delivered} of {len(self.outcomes)} pairs delivered, {len(self.failed)} failed; "
                f"{self.device_seconds:.1f} {self.device}-seconds held by model stages; wall {self.wall_seconds:.1f} s")

    def report(self) -> str:
        lines = [f"{'shot':<16} {'lang':<6} {'status':<10} {'seconds':>8}  reason"]
        for o in self.outcomes:
            lines.append(f"{o.shot_id:<16} {o.language:<6} {o.status:<10} {o.seconds:>8.1f}  {o.reason or ''}")
        delivered = len(self.outcomes) - len(self.failed)
        lines.append(f"{delivered} of {len(self.outcomes)} pairs delivered to {self.run_dir}")
        lines.append(f"delivery manifest: {self.run_dir}/delivery.json")
        if self.notice:
            lines.append(self.notice)
        if self.pruned:
            lines.append(self.pruned)
        lines.append(self.cache.describe())
        lines.append(self.last_line())
        return "\n".join(lines)


class Progress:
    """How far the run is, as pairs end (delivered or failed): the run's progress artifact, and on the
    terminal one line per pair with a "N of M pairs, K failed, ~T left" counter — a live rich bar
    under the lines on a terminal, the counter at the end of each line otherwise (output not a
    terminal, or $CI set). Written to the stream directly: a flow's `print` goes to Prefect's log.

    The artifact is updated at most every `PROGRESS_EVERY_S` and at the last pair, so that thousands
    of pairs ending together (a re-run served from the stage cache) cost a handful of requests."""

    def __init__(self, total: int, description: str, stream: TextIO | None = None) -> None:
        self.total, self.finished, self.failed = total, 0, 0
        self._description = description
        self._stream = stream or sys.stdout
        self._started = self._updated = time.monotonic()
        self._artifact_id = create_progress_artifact(
            progress=0.0, key="localization-progress", description=self._text()
        )
        self._bar = _live_bar(self._stream, total, self.counter())

    def pair_finished(self, shot_id: str, language: str, delivered: bool) -> None:
        self.finished += 1
        self.failed += not delivered
        line = (f"{shot_id:<16} {language:<6} {'delivered' if delivered else 'failed':<10} "
                f"done {time.monotonic() - self._started:7.1f} s into the run")
        if self._bar is None:
            self._stream.write(f"{line}   [{self.counter()}]\n")
            self._stream.flush()
        else:
            bar, task = self._bar
            bar.console.print(line, markup=False, highlight=False)
            bar.update(task, completed=self.finished, description=self.counter())
        if self.finished < self.total and time.monotonic() - self._updated < PROGRESS_EVERY_S:
            return
        update_progress_artifact(self._artifact_id, progress=100.0 * self.finished / max(self.total, 1),
                                 description=self._text())
        self._updated = time.monotonic()

    def counter(self) -> str:
        left = self.total - self.finished
        if not self.finished or not left:
            estimate = "estimating" if left else "done"
        else:
            estimate = f"~{_duration((time.monotonic() - self._started) / self.finished * left)} left"
        return f"{self.finished} of {self.total} pairs, {self.failed} failed, {estimate}"

    def close(self) -> None:
        """Take the live bar down (the lines stay)."""
        if self._bar is not None:
            self._bar[0].stop()
            self._bar = None

    def _text(self) -> str:
        return f"{self._description}: {self.finished} of {self.total} pairs finished"


def _live_bar(stream: TextIO, total: int, description: str):
    """A started rich progress bar and its task on a terminal; None when not a terminal or in CI."""
    if not stream.isatty() or os.environ.get("CI", "").lower() not in ("", "0", "false"):
        return None
    from rich.console import Console
    from rich.progress import BarColumn, Progress as RichProgress, TextColumn

    bar = RichProgress(TextColumn("{task.description}"), BarColumn(), console=Console(file=stream), transient=True)
    task = bar.add_task(description, total=total)
    bar.start()
    return bar, task


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {rest:02d} s" if minutes else f"{rest} s"


def read_run_seconds(client: SyncPrefectClient, task_run_ids: Iterable[UUID]) -> dict[UUID, float]:
    """Each task run's recorded run time, read in pages. The server records task runs from events,
    asynchronously: a stage that ended in milliseconds (a reused result) can be asked for before it
    is recorded, so the missing ones are asked for again while the server keeps recording more, and
    given up on after `RECORDING_WAIT_S` without progress (a large run's reads take longer than that)."""
    wanted = set(task_run_ids)
    seconds: dict[UUID, float] = {}
    progressed = time.monotonic()
    while True:
        missing = sorted(wanted - seconds.keys())
        for start in range(0, len(missing), _READ_PAGE):
            page = missing[start : start + _READ_PAGE]
            for run in client.read_task_runs(task_run_filter=TaskRunFilter(id=TaskRunFilterId(any_=page)),
                                             limit=len(page)):
                if run.end_time is not None and run.id not in seconds:
                    seconds[run.id] = run.total_run_time.total_seconds()
                    progressed = time.monotonic()
        if len(seconds) == len(wanted):
            return seconds
        if time.monotonic() - progressed > RECORDING_WAIT_S:
            raise TimeoutError(f"{len(wanted) - len(seconds)} finished task runs were still not recorded by the "
                               f"Prefect server after {RECORDING_WAIT_S:.0f} s without progress")
        time.sleep(0.2)


def publish_artifacts(summary: RunSummary, run_id: str, profile_name: str, qc_reports: dict[tuple[str, str], Path]) -> None:
    """The summary table and the QC digest of a finished run (``qc_reports``: delivered pairs' QC JSON)."""
    notice = f" — {summary.notice}" if summary.notice else ""
    create_table_artifact(
        key="localization-summary",
        table=[
            {"shot": o.shot_id, "language": o.language, "status": o.status, "seconds": round(o.seconds, 2),
             "output": f"{summary.run_dir}/{o.shot_id}/{o.language}" if o.status == "delivered" else "",
             "reason": o.reason or ""}
            for o in summary.outcomes
        ],
        description=f"dubflow run {run_id} ({profile_name} profile); stage results {summary.cache.describe()}; "
        f"{summary.last_line()}{notice}",
    )
    create_markdown_artifact(key="qc-digest", markdown=qc_digest(summary, qc_reports),
                             description=f"QC of dubflow run {run_id}{notice}")


def qc_digest(summary: RunSummary, qc_reports: dict[tuple[str, str], Path]) -> str:
    """Markdown: one row per pair with its checks passed, loudness and true peak as measured, and
    what failed; failed pairs with the stage and reason."""
    lines = [f"# QC digest — {summary.run_dir}", ""]
    if summary.notice:
        lines += [f"**{summary.notice}**", ""]
    lines += ["| shot | language | status | checks passed | loudness | true peak | failed checks / reason |",
              "|---|---|---|---|---|---|---|"]
    for outcome in summary.outcomes:
        report_path = qc_reports.get((outcome.shot_id, outcome.language))
        if report_path is None:
            lines.append(f"| {outcome.shot_id} | {outcome.language} | {outcome.status} | – | – | – | "
                         f"{_cell(outcome.reason or '')} |")
            continue
        report = json.loads(Path(report_path).read_text(encoding="utf-8"))
        checks = report["checks"]
        measured = {check["name"].split(" (")[0]: check["measured"] for check in checks}
        failed = [f"{check['name']}: {check['measured']} (expected {check['expected']})"
                  for check in checks if not check["passed"]]
        lines.append(
            f"| {outcome.shot_id} | {outcome.language} | {outcome.status} | "
            f"{sum(check['passed'] for check in checks)}/{len(checks)} | {measured.get('loudness', '–')} | "
            f"{measured.get('mix true peak', '–')} | {_cell('; '.join(failed))} |"
        )
    lines += ["", summary.last_line()]
    return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
