"""The command line a localization engineer trusts: inputs refused before any work (exit 2, one
message, no traceback), a short terminal with a pairs counter, smoke runs that say so, the stage
cache's size and pruning, a temporary Prefect server that never outlives its run.

The `dubflow` commands run as real processes (the console script of this checkout) with their own
Prefect home, so what is checked is what a user sees in a terminal.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import psutil
import pytest

from dubflow.flows.cli import build_parser, main
from dubflow.tasks.destination import InvalidDestinationError, check_writable_folder
from dubflow.tasks.publish import DeliveryFile, PairOutcome, publish_local
from dubflow.tasks.stage_cache import RESULT_FILE, StageCache, cache_entries, prune, run_lease, usage_by_stage

DUBFLOW = str(Path(sys.executable).with_name("dubflow"))
REFUSED_WITHIN_S = 60  # a generous bound on the subprocess; the check itself reads no picture
SHOT = "sc01_sh010"
LAST_LINE = re.compile(r"^dubflow: (\d+) of (\d+) pairs delivered, (\d+) failed; .*; wall (\d+\.\d) s$")


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of a user's terminal: no Prefect server configured (each run starts its own),
    output not a terminal, not CI; the session's model and stage cache."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("PREFECT_") and key not in ("CI", "DO_NOT_TRACK")}
    env["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    return env


def _two_pairs_of(samples: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    table = pd.read_csv(samples / "manifest.csv", dtype=str, keep_default_na=False)
    table = table[(table.shot_id == SHOT) & table.language.isin(["fr", "de"])].copy()
    table["source"] = [str(samples / source) for source in table.source]
    path = tmp_path_factory.mktemp("cli") / "manifest.csv"
    table.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def two_pairs(small_samples_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two pairs of one shot at a quarter of the sample's size: what these tests check does not
    depend on the picture's size."""
    return _two_pairs_of(small_samples_dir, tmp_path_factory)


@pytest.fixture(scope="module")
def two_full_size_pairs(samples_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Full-size pairs for the signal tests: their run must still be working when the signal comes."""
    return _two_pairs_of(samples_dir, tmp_path_factory)


def _dubflow(args: list[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([DUBFLOW, *args], env=env, capture_output=True, text=True, timeout=timeout,
                          preexec_fn=lambda: os.umask(0o022))


def _assert_refused(result: subprocess.CompletedProcess, *phrases: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert all(phrase in result.stderr for phrase in phrases), result.stderr
    assert not result.stdout  # nothing started: no run line, no pair


# --- refused before any work ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["existing file", "under /proc", "under a file", "read-only folder"])
def test_a_bad_out_is_refused_before_any_work(kind: str, two_pairs: Path, cli_env: dict, tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    if kind == "read-only folder":
        if os.geteuid() == 0:
            pytest.skip("root writes into a read-only folder")
        read_only = tmp_path / "read-only"
        read_only.mkdir(mode=0o555)
    out = {"existing file": a_file, "under /proc": Path("/proc/dubflow-out"), "under a file": a_file / "out",
           "read-only folder": tmp_path / "read-only" / "out"}[kind]
    result = _dubflow(["run", str(two_pairs), "--out", str(out)], cli_env, timeout=REFUSED_WITHIN_S)
    _assert_refused(result, f"--out {out}")
    assert not list(Path(cli_env["PREFECT_HOME"]).glob("*.db"))  # no Prefect server was started


def test_missing_manifest_picture_profile_and_weights_are_refused_before_prefect(
    two_pairs: Path, cli_env: dict, tmp_path: Path
) -> None:
    out = str(tmp_path / "out")
    _assert_refused(_dubflow(["run", str(tmp_path / "missing.csv"), "--out", out], cli_env, REFUSED_WITHIN_S),
                    "missing.csv")
    no_picture = tmp_path / "no-picture.csv"
    no_picture.write_text(f"shot_id,source,language,script\nsh1,{tmp_path / 'gone.mov'},fr,Bonjour.\n")
    _assert_refused(_dubflow(["run", str(no_picture), "--out", out], cli_env, REFUSED_WITHIN_S), "gone.mov")
    _assert_refused(_dubflow(["run", str(two_pairs), "--out", out, "--profile", "ltx2"], cli_env, REFUSED_WITHIN_S),
                    "unknown model profile 'ltx2'")
    no_weights = {**cli_env, "DUBFLOW_LTX_WEIGHTS": str(tmp_path / "no-weights")}
    _assert_refused(_dubflow(["run", str(two_pairs), "--out", out, "--profile", "ltx-2.3"], no_weights,
                             REFUSED_WITHIN_S), "dubflow models download", str(tmp_path / "no-weights"))
    bad_bound = {**cli_env, "DUBFLOW_CACHE_MAX_GB": "lots"}
    _assert_refused(_dubflow(["run", str(two_pairs), "--out", out], bad_bound, REFUSED_WITHIN_S), "DUBFLOW_CACHE_MAX_GB")
    assert not (tmp_path / "out").exists()  # the --out probe leaves nothing behind
    assert not list(Path(cli_env["PREFECT_HOME"]).glob("*.db"))


def test_a_configured_prefect_api_that_does_not_answer_is_refused(two_pairs: Path, cli_env: dict, tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again below: nothing listens there
    env = {**cli_env, "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
    result = _dubflow(["run", str(two_pairs), "--out", str(tmp_path / "out")], env, REFUSED_WITHIN_S)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"the Prefect API at http://127.0.0.1:{port}/api does not answer" in result.stderr
    assert "into the run" not in result.stdout and not (tmp_path / "out").exists()


def test_the_out_probe_creates_nothing_and_refuses_what_cannot_be_written(tmp_path: Path) -> None:
    check_writable_folder(tmp_path / "new" / "deeper")
    assert not list(tmp_path.iterdir())
    (tmp_path / "kept").mkdir()
    check_writable_folder(tmp_path / "kept")
    assert not list((tmp_path / "kept").iterdir())
    with pytest.raises(InvalidDestinationError, match="exists and is not a folder"):
        check_writable_folder(Path("/etc/hostname") if Path("/etc/hostname").is_file() else Path(sys.executable))


# --- the terminal ------------------------------------------------------------------------------------


def test_a_run_prints_a_short_terminal_with_a_counter_and_says_smoke(
    two_pairs: Path, cli_env: dict, tmp_path: Path
) -> None:
    """--force: the takes run the model, whose loading is where the bars and the upsampler dump came from."""
    out = tmp_path / "out"
    began = time.monotonic()
    result = _dubflow(["run", str(two_pairs), "--out", str(out), "--run-id", "r1", "--force"], cli_env)
    measured = time.monotonic() - began
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert not result.stderr.strip(), result.stderr  # no log, no bar, no warning, no telemetry error
    assert len(lines) <= 14, result.stdout
    assert lines[0] == "dubflow run r1: 2 pairs (1 shot), smoke profile"
    assert lines[1].startswith("SMOKE PROFILE")
    pair_lines = [line for line in lines if line.startswith(SHOT) and "into the run" in line]
    assert len(pair_lines) == 2
    assert re.search(r"\[1 of 2 pairs, 0 failed, ~(\d+ min )?\d+ s left\]$", pair_lines[0]), pair_lines[0]
    assert pair_lines[1].endswith("[2 of 2 pairs, 0 failed, done]")
    assert sum(bool(LAST_LINE.match(line)) for line in lines) == 1 and LAST_LINE.match(lines[-1])
    for noise in ("INFO", "non-standard module", "it/s", "telemetry", "Traceback"):
        assert noise not in result.stdout
    # The last line's wall time is the command's: measured here around the whole process.
    reported = float(LAST_LINE.match(lines[-1]).group(4))
    assert 0.7 * measured <= reported <= measured + 0.1

    run_dir = out / "r1"
    delivery = json.loads((run_dir / "delivery.json").read_text())
    assert delivery["models"]["lipdub_lora"] == "tiny random IC-LoRA (smoke)"
    assert "lipdub" not in delivery["models"]["lipdub_base"] and "safetensors" not in json.dumps(delivery["models"])
    for name in ("delivery.json", "delivery.parquet", f"{SHOT}/fr/{SHOT}_fr_qc.json"):
        assert stat.S_IMODE((run_dir / name).stat().st_mode) == 0o644, name  # umask 022: others can read
    qc = json.loads((run_dir / SHOT / "fr" / f"{SHOT}_fr_qc.json").read_text())
    assert qc["notice"].startswith("SMOKE PROFILE")
    summary = (run_dir / SHOT / "fr" / f"{SHOT}_fr_qc.txt").read_text().splitlines()
    assert summary[1].startswith("SMOKE PROFILE: tiny random-weight models")


def test_version_help_texts_and_exit_codes(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0 and re.fullmatch(r"dubflow \d+\.\d+\.\d+\S*\n", capsys.readouterr().out)
    parser = build_parser()
    assert "exit codes:" in parser.format_help() and "130" in parser.format_help()

    def parsers(parser: object):
        yield parser
        for action in parser._actions:
            for child in getattr(action, "choices", None) or {}:
                if isinstance(action.choices, dict):
                    yield from parsers(action.choices[child])

    undocumented = [f"{p.prog} {action.dest}" for p in parsers(parser) for action in p._actions
                    if not action.help and not isinstance(action, argparse._SubParsersAction)]
    assert not undocumented


# --- models ------------------------------------------------------------------------------------------


def test_models_download_without_a_token_says_how_and_where_before_any_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no `hf auth login` token either
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: a request would fail otherwise
    target = tmp_path / "weights"
    assert main(["models", "download", str(target)]) == 1
    printed = capsys.readouterr()
    assert str(target) in printed.out
    assert "no Hugging Face token" in printed.err and "HF_TOKEN" in printed.err and str(target) in printed.err
    assert not target.exists()


# --- the stage cache ---------------------------------------------------------------------------------


def _store(cache: StageCache, stage: str, name: str, size: int) -> Path:
    def compute(folder: Path) -> Path:
        path = folder / "data.bin"
        path.write_bytes(os.urandom(size))
        return path

    return cache.result(stage, name, Path, compute).parent


def _age(folder: Path, days: float) -> None:
    when = time.time() - days * 86400
    os.utime(folder / RESULT_FILE, (when, when))


def test_cache_du_and_prune_remove_exactly_what_they_say(tmp_path: Path) -> None:
    root = tmp_path / "work"
    cache = StageCache(root)
    folders = {name: _store(cache, "lipdub", name, 100_000) for name in ("old", "older", "recent")}
    folders["mix"] = _store(cache, "remix", "mix", 50_000)
    _age(folders["old"], 40)
    _age(folders["older"], 50)
    _age(folders["mix"], 10)
    usage = usage_by_stage(root)
    assert usage["lipdub"][0] == 3 and usage["remix"][0] == 1
    assert usage["lipdub"][1] >= 300_000 and usage["remix"][1] >= 50_000

    by_age = prune(root, max_age_s=30 * 86400)
    assert sorted(entry.name for entry in by_age.removed) == ["old", "older"]
    assert not folders["old"].exists() and not folders["older"].exists()
    assert folders["recent"].exists() and folders["mix"].exists()
    assert not [p for p in (root / "lipdub").iterdir() if p.name.startswith(".")]  # nothing left half removed

    by_size = prune(root, max_bytes=usage_by_stage(root)["lipdub"][1])  # room for one of the two
    assert [entry.name for entry in by_size.removed] == ["mix"]  # the least recently used
    assert folders["recent"].exists() and by_size.bytes_left == sum(e.size for e in cache_entries(root))
    # A stored result is found again after a prune that kept it, and reused (its time updated).
    before = (folders["recent"] / RESULT_FILE).stat().st_mtime
    _age(folders["recent"], 1)
    assert cache.result("lipdub", "recent", Path, lambda folder: pytest.fail("recomputed")) .is_file()
    assert (folders["recent"] / RESULT_FILE).stat().st_mtime >= before


def test_prune_never_removes_what_a_running_run_uses(tmp_path: Path) -> None:
    """Another process holds a run's lease and reuses an old result; a prune down to nothing keeps
    that result, removes the rest, and once the run is gone (killed: its lease left behind) removes it."""
    root = tmp_path / "work"
    cache = StageCache(root)
    used, unused = _store(cache, "mux", "used", 10_000), _store(cache, "mux", "unused", 10_000)
    _age(used, 60)
    _age(unused, 60)
    holder = subprocess.Popen(
        [sys.executable, "-c", (
            "import sys, time\n"
            "from pathlib import Path\n"
            "from dubflow.tasks.stage_cache import StageCache, run_lease\n"
            "cache = StageCache(Path(sys.argv[1]))\n"
            "with run_lease(cache.root, cache.run):\n"
            "    cache.result('mux', 'used', Path, lambda folder: 1 / 0)\n"
            "    print('holding', flush=True)\n"
            "    time.sleep(600)\n"
        ), str(root)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "holding"
        report = prune(root, max_age_s=0, max_bytes=0)
        assert [entry.name for entry in report.removed] == ["unused"]
        assert report.kept_for_runs == 1 and report.live_runs == 1
        assert used.exists() and not unused.exists()
        assert "kept for 1 running run" in report.describe()
    finally:
        holder.kill()
        holder.wait()
    (lease,) = (root / ".runs").glob("*.json")  # SIGKILL: the lease stays, its process is gone
    report = prune(root, max_age_s=0)
    assert [entry.name for entry in report.removed] == ["used"] and report.live_runs == 0
    assert not lease.exists()


def test_a_run_in_this_process_keeps_what_it_wrote(tmp_path: Path) -> None:
    root = tmp_path / "work"
    cache = StageCache(root)
    with run_lease(root, cache.run):
        written = _store(cache, "qc", "mine", 1_000)
        assert prune(root, max_age_s=0, max_bytes=0).removed == ()
        assert written.exists()
    assert [entry.name for entry in prune(root, max_bytes=0).removed] == ["mine"]


def test_cache_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("DUBFLOW_CACHE", str(tmp_path))
    cache = StageCache(tmp_path / "work")
    kept, gone = _store(cache, "remix", "kept", 20_000), _store(cache, "remix", "gone", 20_000)
    _age(gone, 3)
    assert main(["cache", "du"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert re.match(r"remix\s+2\s+", table[1]) and table[-1].startswith("total")
    assert main(["cache", "prune", "--older-than", "2", "--dry-run"]) == 0
    assert "would remove remix/gone" in capsys.readouterr().out and gone.exists()
    assert main(["cache", "prune", "--older-than", "2"]) == 0
    printed = capsys.readouterr().out
    assert "removed remix/gone" in printed and "removed 1 result(s)" in printed
    assert kept.exists() and not gone.exists()


# --- delivery files ----------------------------------------------------------------------------------


def test_delivery_files_follow_the_umask(tmp_path: Path) -> None:
    source = tmp_path / "a.wav"
    source.write_bytes(b"RIFF")
    previous = os.umask(0o022)
    try:
        run_dir = publish_local(tmp_path / "out", "r", [DeliveryFile(source, "sh/sh_me.wav", "me", "sh", None)],
                                [PairOutcome("sh", "fr", "failed", "x", 0.0)], {})
    finally:
        os.umask(previous)
    for name in ("delivery.json", "delivery.parquet", "sh/sh_me.wav"):
        assert stat.S_IMODE((run_dir / name).stat().st_mode) == 0o644, name


# --- the temporary Prefect server --------------------------------------------------------------------


def _server_of(process: subprocess.Popen, timeout: float = 300) -> psutil.Process:
    """The run's Prefect server (a child process running uvicorn) once it answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the run ended first: {process.returncode}")
        for child in psutil.Process(process.pid).children(recursive=True):
            command = child.cmdline()
            if "uvicorn" in command:
                port = command[command.index("--port") + 1]
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2):
                        return child
                except OSError:
                    pass
        time.sleep(0.5)
    pytest.fail("no Prefect server answered")


def _gone(server: psutil.Process, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if server.status() == psutil.STATUS_ZOMBIE:
                return True  # dead, waiting for init to reap it: no port, no memory
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "SIGKILL", "SIGSEGV"])
def test_no_prefect_server_outlives_a_stopped_run(how: str, two_full_size_pairs: Path, cli_env: dict,
                                                  tmp_path: Path) -> None:
    """Ctrl-C and SIGTERM stop the run and its server; SIGKILL and a crash (SIGSEGV, as a native
    library's fault) end the process at once, and the kernel stops the server."""
    process = subprocess.Popen([DUBFLOW, "run", str(two_full_size_pairs), "--out", str(tmp_path / "out"), "--force"],
                               env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        process.stdout.readline()  # the run's first line: checks passed, the server is starting
        server = _server_of(process)
        process.send_signal(getattr(signal, how))
        code = process.wait(timeout=300)
        assert _gone(server), f"Prefect server {server.pid} still running after {how}"
        stderr = process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()
    assert code == {"SIGINT": 130, "SIGTERM": 143, "SIGKILL": -signal.SIGKILL, "SIGSEGV": -signal.SIGSEGV}[how]
    assert "Traceback" not in stderr


def test_every_run_ends_by_applying_the_default_bound(prefect_server, two_pairs: Path, tmp_path: Path) -> None:
    """A result unused for longer than the default 30 days is pruned when a run ends; the run's own
    results stay."""
    from dubflow.flows.localize import localize
    from dubflow.models.profiles import cache_dir

    root = cache_dir() / "work"
    stale = _store(StageCache(root), "lipdub", "f" * 64, 1_000)
    _age(stale, 31)
    summary = localize(two_pairs, tmp_path / "out", run_id="bounded")
    assert not stale.exists()
    assert summary.pruned.startswith("stage cache: removed 1 result(s)")
    assert summary.report().splitlines()[-3] == summary.pruned
    assert localize(two_pairs, tmp_path / "out", run_id="again").cache.computed == {}  # nothing of its own pruned


def test_a_test_session_removes_its_folder_and_those_of_killed_sessions(tmp_path: Path) -> None:
    """A session in its own TMPDIR: a killed session's folder (its process gone) is removed when it
    starts, its own folder when it ends; a folder without the marker is left alone."""
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    killed = tmp_path / "dubflow-tests-killed"
    (killed / "cache").mkdir(parents=True)
    (killed / "pid").write_text(ended.stdout.strip())
    foreign = tmp_path / "dubflow-tests-foreign"
    foreign.mkdir()
    env = {key: value for key, value in os.environ.items() if key not in ("PREFECT_HOME", "DUBFLOW_CACHE")}
    session = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                              f"{Path(__file__)}::test_version_help_texts_and_exit_codes"],
                             env={**env, "TMPDIR": str(tmp_path)}, capture_output=True, text=True, timeout=300)
    assert session.returncode == 0, session.stdout + session.stderr
    assert sorted(path.name for path in tmp_path.glob("dubflow-tests-*")) == ["dubflow-tests-foreign"]
