"""The `dubflow` command line: sample, validate, run, demo."""

from __future__ import annotations

import argparse
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

    run = commands.add_parser("run", help="localize every (shot, language) of a manifest")
    run.add_argument("manifest", type=Path)
    run.add_argument("--out", type=Path, required=True, help="delivery directory")
    run.add_argument("--languages", type=_language_list, default=None, help="comma-separated subset, e.g. fr,de")
    run.add_argument("--profile", default="smoke", help="model profile: smoke | ltx-2.3 | ltx-2.3-random (default: smoke)")
    run.add_argument("--run-id", default=None, help="name of the delivery folder (default: UTC timestamp)")

    demo = commands.add_parser("demo", help="generate sample shots and localize them on the smoke profile")
    demo.add_argument("--dir", type=Path, default=Path("dubflow-demo"), help="where samples and deliveries go")

    args = parser.parse_args(argv)
    if args.command == "sample":
        manifest_path = _sample(args.dir)
        print(f"wrote sample shots and {manifest_path} (+ manifest.parquet); stems in {args.dir / 'stems'}")
        return 0
    if args.command == "validate":
        try:
            manifest = validate_manifest(args.manifest, args.languages)
        except ManifestError as exc:
            print(exc, file=sys.stderr)
            return 1
        print(summary_table(manifest))
        return 0
    if args.command == "run":
        return _run(args.manifest, args.out, args.languages, args.profile, args.run_id)
    if args.command == "demo":
        manifest_path = _sample(args.dir / "samples")
        print(f"sample shots in {manifest_path.parent}")
        return _run(manifest_path, args.dir / "deliveries", None, "smoke", None)
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


def _run(manifest: Path, out: Path, languages: list[str] | None, profile: str, run_id: str | None) -> int:
    from dubflow.flows.localize import run_localization

    return run_localization(manifest, out, languages=languages, profile_name=profile, run_id=run_id)


def _language_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


if __name__ == "__main__":
    sys.exit(main())
