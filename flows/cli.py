"""The `dubflow` command line: sample, validate, run, demo."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from dubflow.manifests.schema import ManifestError, language_name
from dubflow.tasks.validate import Manifest, validate_manifest

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dubflow", description="Batch localization: re-lip locked shots per language.")
    commands = parser.add_subparsers(dest="command", required=True)

    sample = commands.add_parser("sample", help="write synthetic locked shots, their stems and a manifest")
    sample.add_argument("dir", type=Path)

    validate = commands.add_parser("validate", help="check a manifest and its pictures; exit 0 if valid, 1 if not")
    validate.add_argument("manifest", type=Path)
    validate.add_argument("--languages", type=_language_list, default=None, help="comma-separated subset, e.g. fr,de")
    _strict_fit_option(validate)
    _endpoint_option(validate)

    run = commands.add_parser("run", help="localize every (shot, language) of a manifest")
    run.add_argument("manifest", type=Path)
    run.add_argument("--out", required=True, help="delivery folder, or s3://bucket/prefix")
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

    models = commands.add_parser("models", help="check or download LTX-2.3 LipDub weights")
    model_commands = models.add_subparsers(dest="models_command", required=True)
    check = model_commands.add_parser("check", help="files present, shapes as configured, every LoRA key applied")
    check.add_argument("dir", type=Path, nargs="?", default=None, help="weights directory (default: $DUBFLOW_LTX_WEIGHTS)")
    check.add_argument("--lora", type=Path, default=None, help="IC-LoRA file (default: the one in DIR)")
    check.add_argument("--checkpoint", type=Path, default=None,
                       help="official single-file checkpoint whose transformer replaces DIR's ($DUBFLOW_LTX_CHECKPOINT)")
    download = model_commands.add_parser("download", help="fetch the base and the gated IC-LoRA (token: $HF_TOKEN)")
    download.add_argument("dir", type=Path)

    _review_parsers(commands)

    demo = commands.add_parser("demo", help="generate sample shots and localize them on the smoke profile")
    demo.add_argument("--dir", type=Path, default=Path("dubflow-demo"), help="where samples and deliveries go")
    _delivery_options(demo)

    args = parser.parse_args(argv)
    if args.command == "sample":
        manifest_path = _sample(args.dir)
        print(f"wrote sample shots and {manifest_path} (+ manifest.parquet); stems in {args.dir / 'stems'}")
        return 0
    if args.command == "validate":
        try:
            manifest = validate_manifest(args.manifest, args.languages, args.endpoint_url, args.strict_fit)
        except ManifestError as exc:
            print(exc, file=sys.stderr)
            return 1
        for warning in manifest.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        print(summary_table(manifest))
        return 0
    if args.command == "run":
        separator = {f"separator_{key}": getattr(args, f"separator_{key}") for key in ("model", "repo", "device", "shifts")}
        return _run(args.manifest, args.out, args.languages, args.profile, args.run_id, endpoint_url=args.endpoint_url,
                    force=args.force, cluster=args.cluster, cache_remote=args.cache_remote, strict_fit=args.strict_fit,
                    **_delivery(args), **separator)
    if args.command == "models":
        return _models(args)
    if args.command in ("review", "retake"):
        return _review_command(args)
    if args.command == "demo":
        manifest_path = _sample(args.dir / "samples")
        print(f"sample shots in {manifest_path.parent}")
        return _run(manifest_path, args.dir / "deliveries", None, "smoke", None, **_delivery(args))
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


def _run(manifest: Path, out: str | Path, languages: list[str] | None, profile: str, run_id: str | None,
         **options: object) -> int:
    from dubflow.flows.localize import run_localization

    return run_localization(manifest, out, languages=languages, profile_name=profile, run_id=run_id, **options)


def _review_parsers(commands: argparse._SubParsersAction) -> None:
    review = commands.add_parser("review", help="open a delivery's review page (no server needed)")
    review.add_argument("run", help="a delivered run folder (download an S3 delivery first)")
    review.add_argument("--no-open", action="store_true", help="print the page's URL without opening a browser")
    retake = commands.add_parser("retake", help="run the rejected pairs of a review file again, with their next take")
    retake.add_argument("run", type=Path, help="the delivered run folder that was reviewed")
    retake.add_argument("review_file", type=Path, help="the review file exported by the run's review page")
    retake.add_argument("--manifest", type=Path, required=True, help="the manifest the reviewed run was made from")
    retake.add_argument("--out", default=None, help="delivery folder or s3://bucket/prefix (default: the run's folder)")
    retake.add_argument("--run-id", default=None, help="name of the new run (default: RUN's id + -retakeN)")
    retake.add_argument("--profile", default=None, help="model profile (default: the reviewed run's)")
    _endpoint_option(retake)
    _delivery_options(retake)


def _review_command(args: argparse.Namespace) -> int:
    from dubflow.flows.review import ReviewError, open_review, plan_retake

    try:
        if args.command == "review":
            print(open_review(args.run, open_browser=not args.no_open))
            return 0
        plan = plan_retake(args.run, args.review_file, args.manifest, args.run_id)
    except ReviewError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f"next manifest {plan.manifest}: " + (", ".join(f"{shot}/{language} take {take}"
                                                        for shot, language, take in plan.retakes) or "no rejected pairs"))
    return _run(plan.manifest, args.out or args.run.parent, None, args.profile or plan.profile, plan.run_id,
                endpoint_url=args.endpoint_url, review_history=[vars(take) for take in plan.history], **_delivery(args))


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
    from dubflow.media.audio import LoudnessProfileError, parse_loudness_profile

    try:
        return parse_loudness_profile(text).name
    except LoudnessProfileError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _shifts(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of shifts (0 or more)")
    return int(text)


def _models(args: argparse.Namespace) -> int:
    from dubflow.models.profiles import ltx_weights_dir
    from dubflow.models.weights import WeightsDownloadError, check_weights, download_weights

    if args.models_command == "download":
        try:
            directory = download_weights(args.dir)
        except WeightsDownloadError as exc:
            print(exc, file=sys.stderr)
            return 1
        print(f"downloaded to {directory}; next: dubflow models check {directory}")
        return 0
    checkpoint = args.checkpoint or os.environ.get("DUBFLOW_LTX_CHECKPOINT") or None
    report = check_weights(args.dir or ltx_weights_dir(), args.lora, checkpoint)
    print(report.render(), file=sys.stdout if report.ok else sys.stderr)
    return 0 if report.ok else 1


def _language_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


if __name__ == "__main__":
    sys.exit(main())
