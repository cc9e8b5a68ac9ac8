"""`dubflow review RUN` (open a delivery's review page) and `dubflow retake RUN REVIEW_FILE` (turn the
review file the page exports into the next run).

A retake writes the next manifest beside the original one: every rejected pair gets the next take
number (and the edited line, when the reviewer gave one), every other row is copied as it is. The
stage cache does the rest: approved pairs have unchanged inputs, so the next run reuses every stage
of theirs, and only the rejected pairs are computed again. The verdicts travel with the run as take
history (`review/history.json`), which the new delivery's review page shows.
"""

from __future__ import annotations

import csv
import io
import json
import re
import webbrowser
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from dubflow.manifests.schema import parse_manifest, read_table
from dubflow.media.files import atomic_write_bytes, sha256_file
from dubflow.tasks.publish import DELIVERY_MANIFEST
from dubflow.tasks.review import REVIEW_FOLDER, REVIEW_FORMAT, ReviewedTake, load_history
from dubflow.tasks.storage import check_name, is_s3_uri

VERDICTS = ("approved", "rejected")
_RETAKE_SUFFIX = re.compile(r"^(.*)-retake(\d+)$")


class ReviewError(Exception):
    """A review page, review file or retake that cannot be used; the message says why and what to do."""


def review_page(run: str | Path) -> Path:
    """The index page of a delivered run folder."""
    if is_s3_uri(run):
        raise ReviewError(f"{run} is on S3: download the run folder first (e.g. `aws s3 sync {run} ./{Path(str(run)).name}`)"
                          " and give that folder; the page needs no server, its paths are relative")
    page = Path(run) / REVIEW_FOLDER / "index.html"
    if not page.is_file():
        raise ReviewError(f"{page} does not exist: give a run folder that dubflow delivered "
                          f"(it holds {DELIVERY_MANIFEST} and {REVIEW_FOLDER}/)")
    return page.resolve()


def open_review(run: str | Path, open_browser: bool = True) -> str:
    """The page's file:// URL, opened in the default browser when `open_browser`."""
    url = review_page(run).as_uri()
    if open_browser:
        webbrowser.open(url)
    return url


def read_review_file(path: Path) -> tuple[str, list[ReviewedTake]]:
    """(run id, verdicts) of a review file exported by the review page."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ReviewError(f"{path}: not a readable review file ({exc}); export it from the review page") from None
    if not isinstance(document, dict) or document.get("format") != REVIEW_FORMAT:
        raise ReviewError(f"{path}: not a {REVIEW_FORMAT} review file; export it from the review page")
    names = {field.name for field in fields(ReviewedTake)}
    reviews = []
    for index, record in enumerate(document.get("reviews") or [], start=1):
        if (not isinstance(record, dict) or not names >= set(record) or record.get("verdict") not in VERDICTS
                or not isinstance(record.get("take"), int) or not all(isinstance(record.get(k), str)
                                                                      for k in ("shot_id", "language"))):
            raise ReviewError(f"{path}: review {index} is not a verdict on one take "
                              f"(shot_id, language, take, verdict {' or '.join(VERDICTS)}); export the file again")
        reviews.append(ReviewedTake(**record))
    return str(document.get("run_id", "")), reviews


@dataclass(frozen=True)
class RetakePlan:
    manifest: Path  # the next manifest, beside the original
    run_id: str  # of the next run
    history: list[ReviewedTake]  # every verdict so far, for the next review page
    retakes: tuple[tuple[str, str, int], ...]  # (shot, language, new take) of the rejected pairs
    profile: str  # the reviewed run's model profile


def plan_retake(run_dir: Path, review_file: Path, manifest: Path, run_id: str | None = None) -> RetakePlan:
    """Check that the review file and the manifest belong to the delivered run, then write the next manifest."""
    run_dir, manifest = Path(run_dir), Path(manifest)
    try:
        delivery = json.loads((run_dir / DELIVERY_MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ReviewError(f"{run_dir}: no readable {DELIVERY_MANIFEST} ({exc}); give the delivered run folder") from None
    reviewed_run, reviews = read_review_file(review_file)
    if reviewed_run != delivery["run_id"]:
        raise ReviewError(f"{review_file} reviews run {reviewed_run!r}, but {run_dir} is run {delivery['run_id']!r}")
    if not manifest.is_file() or sha256_file(manifest) != delivery["source_manifest"]["sha256"]:
        raise ReviewError(f"{manifest} is not the manifest run {delivery['run_id']!r} was made from "
                          f"({delivery['source_manifest']['name']}, sha256 {delivery['source_manifest']['sha256']})")
    rows, problems = parse_manifest(manifest)
    if problems:
        raise ReviewError(f"{manifest}: " + "; ".join(str(problem) for problem in problems))
    by_pair = {(row.shot_id, row.language): row for row in rows}
    table = read_table(manifest)
    columns = table.columns if "take" in table.columns else (*table.columns, "take")
    cells_by_row = {number: dict(cells) for number, cells in table.records}  # keyed by spreadsheet row
    retakes = []
    for review in reviews:
        row = by_pair.get((review.shot_id, review.language))
        if row is None or row.take != review.take:
            found = f"take {row.take}" if row else "no row"
            raise ReviewError(f"{review_file}: {review.shot_id}/{review.language} take {review.take} was reviewed, "
                              f"but {manifest} has {found} for it")
        if review.verdict == "rejected":
            cells = cells_by_row[row.row]
            cells["take"] = str(row.take + 1)
            if review.new_script.strip():
                cells["script"] = review.new_script.strip()
            retakes.append((row.shot_id, row.language, row.take + 1))
    next_run = check_name(run_id or _next_run_id(delivery["run_id"]))
    out = manifest.with_name(f"{manifest.stem}.{next_run}.csv")  # beside it: relative sources still resolve
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(cells_by_row.values())
    atomic_write_bytes(out, text.getvalue().encode("utf-8"))
    history = load_history(run_dir) + [ReviewedTake(**{**asdict(r), "run_id": delivery["run_id"]}) for r in reviews]
    return RetakePlan(out, next_run, history, tuple(retakes), delivery["profile"]["name"])


def _next_run_id(run_id: str) -> str:
    match = _RETAKE_SUFFIX.match(run_id)
    return f"{match[1]}-retake{int(match[2]) + 1}" if match else f"{run_id}-retake1"
