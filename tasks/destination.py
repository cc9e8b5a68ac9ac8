"""Where a run is delivered, checked before any work starts: the run id, a local folder that can be
written (a probe file is created and removed in it), or an S3 prefix whose bucket answers.

Kept apart from `publish` (pandas, Prefect) so that the command line can refuse a bad `--out` in
about a second, before Prefect or any model is loaded.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

from dubflow.tasks.storage import (
    S3Uri,
    S3UriError,
    StorageError,
    check_bucket,
    check_name,
    is_s3_uri,
    looks_like_url,
    parse_s3_uri,
    s3_client,
)


class InvalidDestinationError(StorageError):
    """`--out` cannot be delivered to; found before any work starts."""


@dataclass(frozen=True)
class Destination:
    """Where a run is delivered: a local folder, or an S3 prefix and the endpoint that serves it."""

    folder: Path | None = None
    s3: S3Uri | None = None
    endpoint_url: str | None = None


def check_run_id(run_id: str) -> str:
    """`run_id` names the delivery folder: checked before any work starts."""
    try:
        return check_name(run_id)
    except ValueError as exc:
        raise InvalidDestinationError(f"run id: {exc}", "choose another --run-id") from None


def open_destination(out: str | Path, endpoint_url: str | None = None) -> Destination:
    """`out` checked before any work starts: a local folder this process can create files in, or
    `s3://bucket[/prefix]` whose bucket exists and answers the credentials of the AWS chain."""
    if not is_s3_uri(out):
        if isinstance(out, str) and looks_like_url(out):
            # Not echoed: a URL may carry a signature or credentials.
            raise InvalidDestinationError("--out is a URL dubflow cannot deliver to",
                                          "give a folder or s3://bucket/prefix")
        folder = Path(out)
        check_writable_folder(folder)
        return Destination(folder=folder)
    try:
        prefix = parse_s3_uri(str(out), prefix=True)
        client = s3_client(endpoint_url)
    except S3UriError as exc:
        raise InvalidDestinationError(f"--out / --endpoint-url: {exc}", "fix the URI and run again") from None
    try:
        check_bucket(client, prefix, "write to")
    except StorageError as exc:
        raise InvalidDestinationError(exc.what, exc.hint, endpoint_wide=exc.endpoint_wide) from None
    return Destination(s3=prefix, endpoint_url=endpoint_url)


def check_writable_folder(folder: Path) -> None:
    """Try now what publishing will do in `folder`: create it (and missing parents), create and remove
    a file in it (read-only mounts, /proc, an existing file, missing permission). Folders created
    for the probe are removed again: a run refused later leaves nothing behind."""
    if folder.exists() and not folder.is_dir():
        raise InvalidDestinationError(f"--out {folder} exists and is not a folder",
                                      "give a folder (it is created if missing)")
    missing = [path for path in (folder, *folder.parents) if not path.exists()]
    probe = folder / f".dubflow-write-probe-{uuid.uuid4().hex[:8]}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise InvalidDestinationError(f"--out {folder} cannot be written: {exc.strerror or type(exc).__name__}",
                                      "give a folder you can create files in") from None
    finally:
        for path in missing:  # deepest first
            try:
                path.rmdir()
            except OSError:
                pass  # never created, or no longer empty (another run is publishing there)
