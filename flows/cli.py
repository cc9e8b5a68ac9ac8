"""The `dubflow` command line: sample, validate, run, demo, models, cache.

`run` checks everything that can be checked before the flow starts (run id, `--out` writable, cache
bounds, manifest, the remote cache's bucket, a configured Prefect API answering, model profile) and
exits 2 with one message; only then does it start Prefect (a temporary server of its own when none
is configured, which dies with this process) and load the models. The terminal gets one line per
finished pair with a pairs-left counter, the summary table and the last line; Prefect's per-task
logs only with `--verbose`, tracebacks only with `--debug`.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from dubflow.manifests.schema import ManifestError, language_name
from dubflow.tasks.validate import Manifest, validate_manifest

EXIT_OK, EXIT_FAILED, EXIT_INVALID_INPUT = 0, 1, 2
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143  # 128 + SIGINT, 128 + SIGTERM, as shells report them
EXIT_CODES = """\
exit codes:
  0    done: every pair delivered (run, demo), manifest valid (validate), weights complete (models check)
  1    some pairs failed or publishing failed (run, demo); problems found (validate, models); an
       unexpected error (its traceback with --debug)
  2    invalid input found before any work: bad arguments, manifest, --out, --run-id, profile, weights,
       --cache-remote, cluster (run, demo)
  130  interrupted (Ctrl-C); 143 terminated (SIGTERM)

rows: manifest rows are counted as a spreadsheet shows them (the header is row 1)."""
# No telemetry from our runs: the server's usage reports (an offline machine logs an error for each)
# and the libraries' that honour DO_NOT_TRACK.
SEND_PENDING_S = 10.0  # at most, for Prefect's logs and events still queued when the run ends
TELEMETRY_OFF = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
# Prefect's console handler only: its log still reaches the server (the UI keeps every task run's
# log); the summary table names every failed pair's reason. With --debug, errors with tracebacks.
CONSOLE_LOG_LEVEL = "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"
QUIET_PROGRESS_BARS = {"HF_HUB_DISABLE_PROGRESS_BARS": "1"}


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: the run stops, its temporary server with it."""


def entry_point() -> None:
    """The `dubflow` command: `main`, then the exit handlers, then the process ends without tearing
    the interpreter down (seconds of freeing torch and diffusers objects after the last line)."""
    code = main()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    started = process_started()  # the last line's wall time is the command's, from its start
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args, started)
    except KeyboardInterrupt as exc:
        print(f"dubflow: {'terminated' if isinstance(exc, Terminated) else 'interrupted'}", file=sys.stderr)
        return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED
    except Exception as exc:
        if args.debug:
            raise
        print(f"dubflow: {type(exc).__name__}: {exc}\n(run again with --debug for the traceback)", file=sys.stderr)
        return EXIT_FAILED


def process_started() -> float:
    """When this process started, on the `time.monotonic` clock (Linux: from /proc; else now)."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started_after_boot = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime
    except (OSError, ValueError, IndexError):
        return time.monotonic()
    return time.monotonic() - (time.clock_gettime(time.CLOCK_BOOTTIME) - started_after_boot)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dubflow", description="Batch localization: re-lip locked shots per language.",
                                     epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"dubflow {metadata.version('dubflow')}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="print the traceback of an unexpected error")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, has_subcommands: bool = False) -> argparse.ArgumentParser:
        # --debug on the parser that parses last: a subcommand's default would overwrite its parent's.
        return commands.add_parser(name, help=help, description=help, parents=[] if has_subcommands else [common],
                                   epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)

    def subcommand(group: argparse._SubParsersAction, name: str, help: str) -> argparse.ArgumentParser:
        return group.add_parser(name, help=help, description=help, parents=[common])

    sample = command("sample", "write synthetic locked shots, their stems and a manifest")
    sample.add_argument("dir", type=Path, help="folder to write into (created if missing)")

    validate = command("validate", "check a manifest and its pictures; exit 0 if valid, 1 if not")
    validate.add_argument("manifest", type=Path, help="manifest file (.csv or .parquet)")
    validate.add_argument("--languages", type=_language_list, default=None, help="comma-separated subset, e.g. fr,de")
    _strict_fit_option(validate)
    _endpoint_option(validate)

    run = command("run", "localize every (shot, language) of a manifest")
    run.add_argument("manifest", type=Path, help="manifest file (.csv or .parquet); `dubflow validate` checks it")
    run.add_argument("--out", required=True, help="delivery folder (created if missing), or s3://bucket/prefix")
    run.add_argument("--languages", type=_language_list, default=None, help="comma-separated subset, e.g. fr,de")
    _strict_fit_option(run)
    run.add_argument("--profile", default="smoke", help="model profile: smoke | ltx-2.3 | ltx-2.3-random (default: smoke)")
    run.add_argument("--run-id", default=None, help="name of the delivery folder (default: UTC timestamp)")
    run.add_argument("--force", action="store_true",
                     help="compute every stage again instead of reusing stored results ($DUBFLOW_CACHE/work)")
    run.add_argument("--cache-remote", default=None, metavar="S3_PREFIX",
                     help="also keep stage results in s3://bucket/prefix, shared by every machine that runs "
                          "with it ($DUBFLOW_CACHE_REMOTE; store: --endpoint-url)")
    run.add_argument("--cluster", default=None, metavar="ADDRESS",
                     help="run the tasks on the Dask cluster at ADDRESS, e.g. tcp://scheduler:8786, whose GPU "
                          "workers declare --resources GPU=1 ($DUBFLOW_CLUSTER; default: this machine's GPUs)")
    _endpoint_option(run)
    _delivery_options(run)
    run.add_argument("--separator-model", default=None,
                     help="Demucs model or bag name (default: the profile's, htdemucs on ltx-2.3; $DUBFLOW_DEMUCS_MODEL)")
    run.add_argument("--separator-repo", type=Path, default=None,
                     help="local Demucs model folder (.th packages, .yaml bags) to load it from ($DUBFLOW_DEMUCS_REPO)")
    run.add_argument("--separator-device", default=None,
                     help="device for separation, e.g. cpu, cuda, cuda:1 (default: the profile's; $DUBFLOW_DEMUCS_DEVICE)")
    run.add_argument("--separator-shifts", type=_shifts, default=None,
                     help="time-shifted passes averaged (default 0: one pass; $DUBFLOW_DEMUCS_SHIFTS)")

    models = command("models", "check or download LTX-2.3 LipDub weights", has_subcommands=True)
    model_commands = models.add_subparsers(dest="models_command", required=True, metavar="SUBCOMMAND")
    check = subcommand(model_commands, "check", "files present, shapes as configured, every LoRA key applied")
    check.add_argument("dir", type=Path, nargs="?", default=None, help="weights directory (default: $DUBFLOW_LTX_WEIGHTS)")
    check.add_argument("--lora", type=Path, default=None, help="IC-LoRA file (default: the one in DIR)")
    check.add_argument("--checkpoint", type=Path, default=None,
                       help="official single-file checkpoint whose transformer, VAEs and vocoder replace DIR's "
                            "($DUBFLOW_LTX_CHECKPOINT)")
    check.add_argument("--upsampler", type=Path, default=None,
                       help="upstream's spatial upscaler file, replacing DIR's latent_upsampler/ ($DUBFLOW_LTX_UPSAMPLER)")
    download = subcommand(model_commands, "download", "fetch the base and the gated IC-LoRA into DIR (token: $HF_TOKEN)")
    download.add_argument("dir", type=Path, help="where the weights go; then export DUBFLOW_LTX_WEIGHTS=DIR")

    cache = command("cache", "the stage cache ($DUBFLOW_CACHE/work): size per stage, pruning", has_subcommands=True)
    cache_commands = cache.add_subparsers(dest="cache_command", required=True, metavar="SUBCOMMAND")
    subcommand(cache_commands, "du", "entries and disk use per stage")
    prune = subcommand(
        cache_commands, "prune",
        "remove results unused for longer than --older-than, then the least recently used down to --max-size; "
        "never one a running run uses (default: the bounds every run applies when it ends, "
        "$DUBFLOW_CACHE_MAX_AGE_DAYS=30 and $DUBFLOW_CACHE_MAX_GB=20)")
    prune.add_argument("--older-than", type=_non_negative, default=None, metavar="DAYS",
                       help="remove results not used for this many days")
    prune.add_argument("--max-size", type=_non_negative, default=None, metavar="GB",
                       help="then remove the least recently used until the cache holds at most this many GB")
    prune.add_argument("--dry-run", action="store_true", help="list what would be removed; remove nothing")

    review = command("review", "open a delivery's review page (no server needed)")
    review.add_argument("run", type=Path, help="a delivered run folder (download an S3 delivery first)")
    review.add_argument("--no-open", action="store_true", help="print the page's URL without opening a browser")
    retake = command("retake", "run the rejected pairs of a review file again, with their next take")
    retake.add_argument("run", type=Path, help="the delivered run folder that was reviewed")
    retake.add_argument("review_file", type=Path, help="the review file exported by the run's review page")
    retake.add_argument("--manifest", type=Path, required=True, help="the manifest the reviewed run was made from")
    retake.add_argument("--out", default=None, help="delivery folder or s3://bucket/prefix (default: the run's folder)")
    retake.add_argument("--run-id", default=None, help="name of the new run (default: RUN's id + -retakeN)")
    retake.add_argument("--profile", default=None, help="model profile (default: the reviewed run's)")
    _endpoint_option(retake)
    _delivery_options(retake)

    demo = command("demo", "generate sample shots and localize them on the smoke profile")
    demo.add_argument("--dir", type=Path, default=Path("dubflow-demo"), help="where samples and deliveries go")
    _delivery_options(demo)
    for runs in (run, demo, retake):
        runs.add_argument("--verbose", action="store_true", help="also print Prefect's log (every task run)")
    return parser


def _dispatch(args: argparse.Namespace, started: float) -> int:
    if args.command == "sample":
        manifest_path = _sample(args.dir)
        print(f"wrote sample shots and {manifest_path} (+ manifest.parquet); stems in {args.dir / 'stems'}")
        return EXIT_OK
    if args.command == "validate":
        try:
            manifest = validate_manifest(args.manifest, args.languages, args.endpoint_url, args.strict_fit)
        except ManifestError as exc:
            print(exc, file=sys.stderr)
            return EXIT_FAILED
        for warning in manifest.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        print(summary_table(manifest))
        return EXIT_OK
    if args.command == "run":
        separator = {f"separator_{key}": getattr(args, f"separator_{key}") for key in ("model", "repo", "device", "shifts")}
        request = RunRequest(args.manifest, args.out, args.languages, args.profile, args.run_id, args.endpoint_url,
                             args.cache_remote, args.cluster, args.strict_fit)
        return _run(request, started, args.verbose, args.debug, force=args.force, **_delivery(args), **separator)
    if args.command == "models":
        return _models(args)
    if args.command == "cache":
        return _cache(args)
    if args.command in ("review", "retake"):
        return _review_command(args, started)
    if args.command == "demo":
        manifest_path = _sample(args.dir / "samples")
        print(f"sample shots in {manifest_path.parent}")
        request = RunRequest(manifest_path, str(args.dir / "deliveries"), None, "smoke")
        return _run(request, started, args.verbose, args.debug, **_delivery(args))
    raise AssertionError(args.command)


def summary_table(manifest: Manifest) -> str:
    languages = ", ".join(f"{tag} ({language_name(tag)})" for tag in manifest.languages)
    return "\n".join(
        [
            f"manifest        {manifest.path}",
            f"shots           {len(manifest.shots)}",
            f"languages       {len(manifest.languages)}: {languages}",
            f"rows            {len(manifest.rows)}",
            f"picture seconds {float(manifest.picture_seconds):.3f}",
        ]
    )


def _sample(directory: Path) -> Path:
    from dubflow.manifests.samples import generate_samples

    return generate_samples(directory)


@dataclass(frozen=True)
class RunRequest:
    manifest: Path
    out: str
    languages: list[str] | None
    profile: str
    run_id: str | None = None
    endpoint_url: str | None = None
    cache_remote: str | None = None
    cluster: str | None = None
    strict_fit: bool = False


class InputError(Exception):
    """A run's input that cannot work, found before the flow starts (exit 2)."""


def check_inputs(request: RunRequest) -> tuple[str, Manifest]:
    """What a run can be refused for before any model is involved, checked in plain Python, cheapest
    first: run id, `--out` (created, a probe file written and removed; an S3 bucket asked), cache
    bounds, `--cache-remote`, the manifest (as `dubflow validate`). Returns the run id and manifest."""
    from dubflow.tasks.destination import InvalidDestinationError, check_run_id, open_destination
    from dubflow.tasks.stage_cache import CACHE_REMOTE_ENV, CacheBoundsError, CacheRemoteError, cache_bounds, check_remote

    try:
        run_id = check_run_id(request.run_id or datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ"))
        open_destination(request.out, request.endpoint_url)
        cache_bounds()
        remote = request.cache_remote or os.environ.get(CACHE_REMOTE_ENV)
        if remote:
            check_remote(remote, request.endpoint_url)
        manifest = validate_manifest(request.manifest, request.languages, request.endpoint_url, request.strict_fit)
    except (InvalidDestinationError, CacheBoundsError, CacheRemoteError, ManifestError) as exc:
        raise InputError(str(exc)) from None
    return run_id, manifest


def check_profile(request: RunRequest) -> str | None:
    """The model profile resolved as the run will (its weights present; the smoke models built on
    first use). Returns its notice."""
    from dubflow.models.profiles import ProfileError, resolve_profile

    try:
        profile = resolve_profile(request.profile, remote_gpus=bool(request.cluster or os.environ.get("DUBFLOW_CLUSTER")))
    except ProfileError as exc:
        raise InputError(str(exc)) from None
    return profile.notice


def _run(request: RunRequest, started: float, verbose: bool, debug: bool, **options: object) -> int:
    _quiet_terminal(verbose, debug)
    try:
        run_id, manifest = check_inputs(request)
        api_url = check_prefect_api()  # before the profile: the smoke profile's check imports the models
        notice = check_profile(request)  # its first smoke build's bars: off by $HF_HUB_DISABLE_PROGRESS_BARS
    except InputError as exc:
        print(f"dubflow: {exc}", file=sys.stderr)
        return EXIT_INVALID_INPUT
    print(f"dubflow run {run_id}: {_count(len(manifest.rows), 'pair')} ({_count(len(manifest.shots), 'shot')}), "
          f"{request.profile} profile")
    if notice:
        print(notice)
    return _run_flow(request, run_id, started, verbose, api_url, **options)


def check_prefect_api() -> str | None:
    """The configured Prefect API ($PREFECT_API_URL or the Prefect profile's), which must answer; None
    when none is configured (the run then starts a temporary server of its own)."""
    from prefect.settings import get_current_settings

    from dubflow.flows.prefect_server import ApiUnreachableError, check_reachable

    configured = get_current_settings().api.url
    if configured:
        try:
            check_reachable(configured)
        except ApiUnreachableError as exc:
            raise InputError(str(exc)) from None
    return configured


def _run_flow(request: RunRequest, run_id: str, started: float, verbose: bool, api_url: str | None,
              **options: object) -> int:
    """The flow, on the configured Prefect API or a temporary server, with SIGTERM stopping it."""
    with _stopped_by_sigterm(), _prefect_api(api_url) as api_ready:
        from dubflow.flows.localize import run_localization  # torch, diffusers: while the server starts

        from prefect.exceptions import TerminationSignal

        api_ready()
        _silence_model_loading(verbose)
        try:
            return run_localization(request.manifest, request.out, languages=request.languages,
                                    profile_name=request.profile, run_id=run_id, endpoint_url=request.endpoint_url,
                                    cache_remote=request.cache_remote, cluster=request.cluster,
                                    strict_fit=request.strict_fit, started=started, **options)
        except TerminationSignal:  # Prefect's own SIGTERM handler while the flow runs
            raise Terminated() from None


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _quiet_terminal(verbose: bool, debug: bool) -> None:
    """Telemetry off always; Prefect's console log (errors with --debug) and the hub's progress bars
    off unless `verbose`. In the environment, before Prefect is imported: it reads it then, and the
    temporary server inherits it."""
    if "prefect" in sys.modules:
        return  # called in a process that set Prefect up already (tests): its settings stay as they are
    quiet = {} if verbose else {CONSOLE_LOG_LEVEL: "ERROR" if debug else "CRITICAL", **QUIET_PROGRESS_BARS}
    for key, value in {**TELEMETRY_OFF, **quiet}.items():
        os.environ.setdefault(key, value)


def _silence_model_loading(verbose: bool) -> None:
    """diffusers (which ignores $HF_HUB_DISABLE_PROGRESS_BARS) and transformers print loading bars,
    and diffusers a warning that dumps the whole latent upsampler (~28 lines) because it cannot
    verify the type of a component it has no registry entry for: LTX2LatentUpsamplerModel is the
    right class, so that one message is dropped."""
    if verbose:
        return
    import diffusers.utils.logging
    import transformers.utils.logging

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("diffusers.pipelines.pipeline_loading_utils").addFilter(
        lambda record: not str(record.msg).startswith("You have passed a non-standard module"))


@contextmanager
def _stopped_by_sigterm() -> Iterator[None]:
    """SIGTERM stops the run as Ctrl-C does, so the temporary server and the cache lease are released."""
    def terminate(signum: int, frame: object) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _prefect_api(configured: str | None) -> Iterator:
    """Prefect's API for the run: the configured one (checked by `check_prefect_api`), else a temporary
    server of our own that dies with this process. Yields a function that waits until the API answers."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from dubflow.flows.prefect_server import TemporaryServer

    if configured:
        yield lambda: None
        return
    server = TemporaryServer()
    server.start()
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            try:
                yield server.wait_ready
            finally:
                _send_pending_logs_and_events()
    finally:
        server.stop()


def _send_pending_logs_and_events() -> None:
    """Prefect sends logs and events from background workers; they are sent before the server stops,
    or each would retry a dead server at exit for over a minute."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        worker.drain_all(timeout=SEND_PENDING_S)


def _review_command(args: argparse.Namespace, started: float) -> int:
    from dubflow.flows.review import ReviewError, open_review, plan_retake

    try:
        if args.command == "review":
            print(open_review(args.run, open_browser=not args.no_open))
            return EXIT_OK
        plan = plan_retake(args.run, args.review_file, args.manifest, args.run_id)
    except ReviewError as exc:
        print(f"dubflow: {exc}", file=sys.stderr)
        return EXIT_INVALID_INPUT
    print(f"next manifest {plan.manifest}: " + (", ".join(f"{shot}/{language} take {take}"
                                                        for shot, language, take in plan.retakes) or "no rejected pairs"))
    request = RunRequest(plan.manifest, str(args.out or args.run.parent), None, args.profile or plan.profile,
                         plan.run_id, args.endpoint_url)
    return _run(request, started, args.verbose, args.debug, review_history=[vars(take) for take in plan.history],
                **_delivery(args))


def _delivery_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--loudness", type=_loudness, default="ebu-r128",
                        help="loudness profile: ebu-r128 (default) | netflix | atsc-a85 | streaming | "
                             "custom:TARGET_LUFS:TOLERANCE_LU:MAX_TRUE_PEAK_DBTP[:dialogue], e.g. custom:-20:1:-1")
    parser.add_argument("--allow-qc-warnings", action="store_true",
                        help="deliver pairs whose QC failed, with every failed check recorded in their QC report")
    parser.add_argument("--prores", action="store_true",
                        help="also deliver a ProRes 422 HQ + 24-bit PCM MOV mezzanine per pair")


def _delivery(args: argparse.Namespace) -> dict[str, object]:
    return {"loudness": args.loudness, "allow_qc_warnings": args.allow_qc_warnings, "prores": args.prores}


def _strict_fit_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--strict-fit", action="store_true",
                        help="a line too long to say naturally in its shot is an error, not a warning")


def _endpoint_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--endpoint-url", type=_endpoint_url, default=None,
                        help="S3-compatible store for s3:// sources and --out (default: $AWS_ENDPOINT_URL, else AWS); "
                             "credentials come from the standard AWS chain")


def _endpoint_url(text: str) -> str:
    from dubflow.tasks.storage import check_endpoint_url

    try:
        return check_endpoint_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _loudness(text: str) -> str:
    from dubflow.media.loudness_profiles import LoudnessProfileError, parse_loudness_profile

    try:
        return parse_loudness_profile(text).name
    except LoudnessProfileError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _shifts(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of shifts (0 or more)")
    return int(text)


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (0 or more)")
    return value


def _models(args: argparse.Namespace) -> int:
    from dubflow.models.profiles import ltx_weights_dir
    from dubflow.models.weights import WeightsDownloadError, check_weights, download_weights

    if args.models_command == "download":
        print(f"downloading the LTX-2.3 base and the LipDub IC-LoRA into {args.dir}")
        try:
            directory = download_weights(args.dir)
        except WeightsDownloadError as exc:
            print(f"dubflow: {exc}", file=sys.stderr)
            return EXIT_FAILED
        print(f"downloaded to {directory}; next: dubflow models check {directory} && "
              f"export DUBFLOW_LTX_WEIGHTS={directory}")
        return EXIT_OK
    checkpoint = args.checkpoint or os.environ.get("DUBFLOW_LTX_CHECKPOINT") or None
    upsampler = args.upsampler or os.environ.get("DUBFLOW_LTX_UPSAMPLER") or None
    report = check_weights(args.dir or ltx_weights_dir(), args.lora, checkpoint, upsampler)
    print(report.render(), file=sys.stdout if report.ok else sys.stderr)
    return EXIT_OK if report.ok else EXIT_FAILED


def _cache(args: argparse.Namespace) -> int:
    from dubflow.models.profiles import cache_dir
    from dubflow.tasks.stage_cache import CacheBoundsError, cache_bounds, human_size, prune, usage_by_stage

    root = cache_dir() / "work"
    if args.cache_command == "du":
        usage = usage_by_stage(root)
        print(f"{'stage':<12} {'entries':>8} {'size':>10}   ({root})")
        for stage, (entries, size) in usage.items():
            print(f"{stage:<12} {entries:>8} {human_size(size):>10}")
        print(f"{'total':<12} {sum(e for e, _ in usage.values()):>8} {human_size(sum(s for _, s in usage.values())):>10}")
        return EXIT_OK
    try:
        max_age_s, max_bytes = cache_bounds()
    except CacheBoundsError as exc:
        print(f"dubflow: {exc}", file=sys.stderr)
        return EXIT_INVALID_INPUT
    if args.older_than is not None or args.max_size is not None:
        max_age_s = None if args.older_than is None else args.older_than * 86400
        max_bytes = None if args.max_size is None else int(args.max_size * 1e9)
    report = prune(root, max_age_s, max_bytes, dry_run=args.dry_run)
    for entry in report.removed:
        print(f"{'would remove' if args.dry_run else 'removed'} {entry.stage}/{entry.name} ({human_size(entry.size)})")
    print(report.describe(dry_run=args.dry_run))
    return EXIT_OK


def _language_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


if __name__ == "__main__":
    entry_point()
