"""Planning a 10,000-pair batch: client memory and time to submit every stage task (issue 7).

    .venv/bin/python bench/plan_10k.py [--shots 1000[,N...]] [--languages 10] [--repeats 1] [--after 15]
                                       [--submit-timeout 1500] [--api-probe 200] [--json FILE] [--keep]

A benchmark, not a test: it measures and reports, it asserts nothing about the figures.

What it does, all in a fresh temporary folder and on loopback only:

1. Writes one real locked shot with dubflow's own sample writer (`manifests.samples.write_sample_shot`:
   H.264 picture of a face-like shape + 24-bit PCM stereo soundtrack of a synthetic voice over chords
   and room tone; 96×64, 48 frames at 24 fps = 2 s), probes it with `media.io.probe`, and copies it
   to --shots files (`shots/plan_0000.mov`, ...): every shot is a valid, readable file of its own with
   its own shot id (the copies have equal bytes, hence equal sha256; the stage keys still differ, since
   they include the shot id). The manifest (`manifest.csv`) has one row per (shot, language) with
   `lock_sha256` filled, --languages BCP-47 tags from `LANGUAGES` (canonical forms the schema accepts,
   checked with `manifests.schema.parse_manifest` before anything runs) and a line in each language's
   own script.
2. Starts a real Prefect server (`prefect server start --host 127.0.0.1 --port <free port>`, argument
   list, its own PREFECT_HOME, UI and analytics off, the default SQLite database in that home) and waits
   a bounded time for `/api/health`.
3. Runs `dubflow run MANIFEST --out OUT --profile smoke --run-id plan10k` as a subprocess with
   PREFECT_API_URL pointing at that server, DUBFLOW_CACHE in the temporary folder (so the smoke
   models are built on first use inside the measured time) and nothing else Prefect- or
   cluster-related from the calling environment (so the flow uses its default thread runner).
   Its RSS (/proc/PID/status VmRSS, and VmHWM, the kernel's high-water mark) and CPU seconds
   (/proc/PID/stat) are sampled every --interval s; its stdout+stderr are read line by line and time
   stamped. Markers (seconds from process start): first output line; `Beginning flow run` (the flow
   run exists on the server); the loudness-profile line the flow prints after validation and the smoke
   model build; the flow's own `submitted N stage tasks for M pairs in X s` line.
4. When the submitted line appears: reads VmHWM at once and counts the task runs the server has
   recorded (`POST /api/task_runs/count`, total and per state type), then again every 2 s for --after s.
   The server is also asked every ~5 s while the run is submitting.
5. Stops the run (SIGTERM to its process group, SIGKILL after --stop-wait s).
6. With --api-probe N (default 200), times what the flow does against the server after submitting,
   on the same server: in a small flow run of its own, N `flows.report.Progress.pair_finished()` calls
   (one progress-artifact update each; `localize` makes one per finished pair) and N/10 reads of one
   page of 200 task runs by id (the request `flows.report.read_run_seconds` repeats for every 200 task
   runs of the batch); the JSON extrapolates both to the batch's pairs and task runs.
7. Stops the server the same way and writes the results JSON.

--shots takes a comma list (e.g. 50,250,1000): each size is a run of its own (fresh folder, server and
cache), --repeats times over.

The flow's thread runner starts executing smoke tasks (4 worker threads on a machine without a GPU)
as soon as the first one is submitted, so the submit figures include whatever that concurrent work
takes from the CPU and the GIL, and the server is recording those task runs while the client submits.
That is how `dubflow run` behaves; it is not subtracted.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from fractions import Fraction
from importlib import metadata
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# (tag, line in the language's own script); the tags are canonical BCP-47 forms the schema accepts.
LANGUAGES = (
    ("fr", "Nous partons à l'aube, avant que la ville ne se réveille."),
    ("de", "Wir brechen im Morgengrauen auf, bevor die Stadt erwacht."),
    ("es-419", "Salimos al amanecer, antes de que la ciudad despierte."),
    ("it", "Partiamo all'alba, prima che la città si svegli."),
    ("pt-BR", "Partimos ao amanhecer, antes que a cidade acorde."),
    ("ja", "街が目を覚ます前に、夜明けに出発します。"),
    ("ko", "도시가 깨어나기 전에 새벽에 떠납니다."),
    ("zh-Hans", "我们在黎明出发，在城市醒来之前。"),
    ("hi", "शहर के जागने से पहले हम भोर में निकलेंगे।"),
    ("ar", "سنغادر عند الفجر قبل أن تستيقظ المدينة."),
    ("nl", "We vertrekken bij dageraad, voordat de stad ontwaakt."),
    ("pl", "Wyruszamy o świcie, zanim miasto się obudzi."),
    ("sv", "Vi ger oss av i gryningen, innan staden vaknar."),
    ("tr", "Şehir uyanmadan önce şafakta yola çıkıyoruz."),
    ("ru", "Мы уходим на рассвете, пока город не проснулся."),
    ("uk", "Ми вирушаємо на світанку, поки місто не прокинулося."),
)
SUBMITTED = re.compile(r"submitted (\d+) stage tasks for (\d+) pairs in ([0-9.]+) s")
MARKERS = {
    "flow_run_started": re.compile(r"Beginning flow run"),
    "validated_and_profile_ready": re.compile(r"loudness profile "),
}
STATE_TYPES = ("SCHEDULED", "PENDING", "RUNNING", "COMPLETED", "FAILED", "CRASHED", "CANCELLED", "CANCELLING", "PAUSED")


# --------------------------------------------------------------------------- inputs


def write_inputs(folder: Path, shots: int, languages: int) -> tuple[Path, dict]:
    """The template shot, its copies and manifest.csv; returns the manifest path and what was written."""
    from dubflow.manifests.samples import SampleShot, write_sample_shot
    from dubflow.manifests.schema import canonical_language, parse_manifest
    from dubflow.media.files import sha256_file
    from dubflow.media.io import probe

    if not 1 <= languages <= len(LANGUAGES):
        raise SystemExit(f"--languages must be 1..{len(LANGUAGES)}")
    for tag, _ in LANGUAGES:
        assert canonical_language(tag) == tag, f"{tag} is not a canonical BCP-47 tag the schema accepts"
    started = time.monotonic()
    template = SampleShot("plan_template", 96, 64, Fraction(24), 48, "stereo", "A woman in a red scarf", {})
    (folder / "shots").mkdir(parents=True)
    (folder / "stems").mkdir()
    template_path = folder / "template.mov"
    write_sample_shot(template_path, folder / "stems", template, seed=0)
    info = probe(template_path)
    assert info.frame_count == 48 and info.audio and info.audio[0].channels == 2, info
    digest = sha256_file(template_path)
    rows = []
    for index in range(shots):
        shot_id = f"plan_{index:04d}"
        shutil.copyfile(template_path, folder / "shots" / f"{shot_id}.mov")
        for tag, line in LANGUAGES[:languages]:
            rows.append({"shot_id": shot_id, "source": f"shots/{shot_id}.mov", "lock_sha256": digest,
                         "language": tag, "script": line, "speaker": template.speaker})
    manifest = folder / "manifest.csv"
    with manifest.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    parsed, problems = parse_manifest(manifest)
    assert not problems and len(parsed) == shots * languages, problems[:5]
    return manifest, {
        "shots": shots, "languages": [tag for tag, _ in LANGUAGES[:languages]], "pairs": len(rows),
        "shot": {"width": info.width, "height": info.height, "frames": info.frame_count, "fps": str(info.fps),
                 "audio": f"{info.audio[0].channels} ch {info.audio[0].sample_rate} Hz",
                 "bytes": template_path.stat().st_size, "sha256": digest},
        "manifest_bytes": manifest.stat().st_size, "write_s": round(time.monotonic() - started, 2),
    }


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """The calling environment without anything that would point Prefect or the flow elsewhere."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "DUBFLOW_")) and k not in ("AWS_ENDPOINT_URL",)}
    env.update(extra)
    return env


def api_post(api: str, path: str, body: dict, timeout: float = 30.0) -> object:
    request = urllib.request.Request(f"{api}{path}", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def start_server(home: Path, wait_s: float) -> tuple[subprocess.Popen, str, float]:
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = clean_env(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
                    PREFECT_SERVER_UI_ENABLED="false", PREFECT_CLI_PROMPT="false")
    home.mkdir(parents=True)
    started = time.monotonic()
    with (home / "server.log").open("w") as log:
        server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                  env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  start_new_session=True)
    deadline = started + wait_s
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"prefect server exited {server.returncode}:\n{tail(home / 'server.log')}")
        try:
            with urllib.request.urlopen(f"{api}/health", timeout=2) as response:
                if response.status == 200:
                    return server, api, time.monotonic() - started
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            stop(server, 10)
            raise RuntimeError(f"no /api/health answer within {wait_s:.0f} s:\n{tail(home / 'server.log')}")
        time.sleep(0.5)


def stop(process: subprocess.Popen, wait_s: float) -> dict:
    """SIGTERM to the process group this script started, SIGKILL after `wait_s`."""
    if process.poll() is not None:
        return {"already_exited": process.returncode}
    started = time.monotonic()
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=wait_s)
        how = "SIGTERM"
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        how = "SIGKILL"
    return {"stopped_by": how, "returncode": process.returncode, "stop_s": round(time.monotonic() - started, 2)}


def tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


def count_task_runs(api: str) -> dict:
    """Task runs the server has recorded: total and per state type (zeros left out), and how long the ask took."""
    started = time.monotonic()
    try:
        counts = {"total": api_post(api, "/task_runs/count", {})}
        for state in STATE_TYPES:
            n = api_post(api, "/task_runs/count", {"task_runs": {"state": {"type": {"any_": [state]}}}})
            if n:
                counts[state.lower()] = n
    except (urllib.error.URLError, OSError, ValueError) as exc:
        counts = {"error": f"{type(exc).__name__}: {exc}"}
    counts["query_s"] = round(time.monotonic() - started, 3)
    return counts


# --------------------------------------------------------------------------- watching the client


def read_proc(pid: int) -> dict | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = {}
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024
        elif key == "Threads":
            fields[key] = int(value)
    after_name = stat.rsplit(")", 1)[1].split()
    fields["cpu_s"] = (int(after_name[11]) + int(after_name[12])) / CLOCK_TICKS  # utime, stime
    return fields


class Watcher:
    """Samples the client's /proc entries and reads its output; everything time stamped from `t0`."""

    def __init__(self, process: subprocess.Popen, t0: float, log_path: Path, interval: float):
        self.process, self.t0, self.interval = process, t0, interval
        self.samples: list[tuple[float, int, int, int, float]] = []  # t, rss, hwm, threads, cpu_s
        self.lines: list[tuple[float, str]] = []
        self.markers: dict[str, float] = {}
        self.submitted: dict | None = None
        self.submitted_event = threading.Event()
        self.done = threading.Event()
        self._log = log_path.open("w", encoding="utf-8")
        self._threads = [threading.Thread(target=self._sample, daemon=True),
                         threading.Thread(target=self._read, daemon=True)]
        for thread in self._threads:
            thread.start()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def _sample(self) -> None:
        while not self.done.is_set():
            fields = read_proc(self.process.pid)
            if fields is None or self.process.poll() is not None:
                break
            self.samples.append((round(self.now(), 2), fields.get("VmRSS", 0), fields.get("VmHWM", 0),
                                 fields.get("Threads", 0), fields["cpu_s"]))
            self.done.wait(self.interval)

    def _read(self) -> None:
        for raw in iter(self.process.stdout.readline, b""):
            t = self.now()
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.lines.append((t, line))
            self._log.write(f"{t:9.2f}  {line}\n")
            self._log.flush()
            self.markers.setdefault("first_output_line", t)
            for name, pattern in MARKERS.items():
                if name not in self.markers and pattern.search(line):
                    self.markers[name] = t
            match = SUBMITTED.search(line)
            if match and self.submitted is None:
                self.submitted = {"t": t, "tasks": int(match[1]), "pairs": int(match[2]), "flow_submit_s": float(match[3])}
                self.markers["submitted_line"] = t
                self.submitted_event.set()
        self.markers.setdefault("output_closed", self.now())

    def rss_at(self, t: float) -> int | None:
        """The last RSS sample taken at or before `t`."""
        upto = [s for s in self.samples if s[0] <= t]
        return upto[-1][1] if upto else None

    def peak_until(self, t: float) -> dict:
        upto = [s for s in self.samples if s[0] <= t]
        if not upto:
            return {}
        peak = max(upto, key=lambda s: s[1])
        return {"peak_rss_sampled_bytes": peak[1], "peak_rss_at_s": peak[0], "vmhwm_bytes": upto[-1][2],
                "threads": upto[-1][3], "cpu_s": upto[-1][4]}

    def close(self) -> None:
        self.done.set()
        for thread in self._threads:
            thread.join(timeout=10)
        self._log.close()


# --------------------------------------------------------------------------- machine


def machine_info() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    meminfo = {line.split(":")[0]: line.split(":")[1].strip() for line in Path("/proc/meminfo").read_text().splitlines()}

    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {
        "cpu": next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
                    platform.processor()),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "mem_total": meminfo.get("MemTotal"),
        "mem_available_at_start": meminfo.get("MemAvailable"),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "prefect": version("prefect"),
        "dubflow": version("dubflow"),
        "torch": version("torch"),
        "database": "SQLite (Prefect's default, PREFECT_HOME/prefect.db of the benchmark's server)",
        "server": "prefect server start, 1 worker process, services on, UI off, same machine as the client",
        "task_runner": "dubflow's default: ThreadPoolTaskRunner(max_workers=4) (no GPU visible)",
    }


# --------------------------------------------------------------------------- the flow's API calls after submitting


def api_probe(calls: int) -> dict:
    """Run in a subprocess pointed at the benchmark's server (``--api-probe N``): inside a flow run, as
    `localize` does, time N `Progress.pair_finished()` calls (one progress-artifact update each: what
    the flow does once per finished pair) and N/10 (at least 5) reads of one page of task runs by id
    (`read_run_seconds`' request: 200 ids, those the server has first, then unknown ones)."""
    from uuid import uuid4

    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterId

    from dubflow.flows.report import _READ_PAGE, Progress

    @flow(name="plan-10k-api-probe")
    def probe() -> dict:
        progress = Progress(calls, "plan_10k api probe")
        updates = []
        for _ in range(calls):
            started = time.perf_counter()
            progress.pair_finished()
            updates.append(time.perf_counter() - started)
        with get_client(sync_client=True) as client:
            known = [run.id for run in client.read_task_runs(limit=_READ_PAGE)]
            page = (known + [uuid4() for _ in range(_READ_PAGE)])[:_READ_PAGE]
            reads = []
            for _ in range(max(5, calls // 10)):
                started = time.perf_counter()
                client.read_task_runs(task_run_filter=TaskRunFilter(id=TaskRunFilterId(any_=page)), limit=len(page))
                reads.append(time.perf_counter() - started)
        return {"progress_updates": len(updates), "progress_update_s": _stats(updates),
                "page_reads": len(reads), "page_ids": len(page), "page_ids_known": len(known),
                "page_read_s": _stats(reads)}

    return probe()


def _stats(values: list[float]) -> dict:
    ordered = sorted(values)
    return {"median": round(statistics.median(ordered), 5), "mean": round(statistics.fmean(ordered), 5),
            "p90": round(ordered[int(0.9 * (len(ordered) - 1))], 5), "total": round(sum(ordered), 3)}


def run_api_probe(env: dict[str, str], calls: int, timeout_s: float) -> dict:
    try:
        done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--api-probe", str(calls)], env=env,
                              capture_output=True, text=True, timeout=timeout_s, start_new_session=True)
    except subprocess.TimeoutExpired:
        return {"error": f"no answer within {timeout_s:.0f} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("API_PROBE "):
            return json.loads(line[len("API_PROBE "):])
    return {"error": f"exit {done.returncode}", "stderr_tail": done.stderr.splitlines()[-10:]}


# --------------------------------------------------------------------------- one run


def mib(n: int | None) -> float | None:
    return None if n is None else round(n / 2**20, 1)


def run_once(shots: int, languages: int, args: argparse.Namespace) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"dubflow-plan-{shots}x{languages}-"))
    server = client = watcher = None
    result: dict = {"shots": shots, "languages": languages, "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}
    try:
        manifest, inputs = write_inputs(work / "inputs", shots, languages)
        result["inputs"] = inputs
        print(f"{inputs['pairs']} pairs ({shots} shots x {languages} languages) written in {inputs['write_s']} s "
              f"under {work}", flush=True)

        server, api, server_start_s = start_server(work / "server-home", args.server_wait)
        result["server"] = {"health_after_s": round(server_start_s, 1)}
        print(f"Prefect server healthy after {server_start_s:.1f} s", flush=True)

        env = clean_env(PREFECT_HOME=str(work / "client-home"), PREFECT_API_URL=api,
                        DUBFLOW_CACHE=str(work / "cache"), PYTHONUNBUFFERED="1", COLUMNS="1000")
        command = [sys.executable, "-m", "dubflow.flows.cli", "run", str(manifest), "--out", str(work / "out"), "--profile", "smoke",
                   "--run-id", "plan10k"]
        result["client_command"] = ["dubflow", "run", "MANIFEST", "--out", "OUT", "--profile", "smoke",
                                    "--run-id", "plan10k"]
        t0 = time.monotonic()
        client = subprocess.Popen(command, env=env, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, start_new_session=True)
        watcher = Watcher(client, t0, work / "client.log", args.interval)
        during: list[dict] = []  # the server's count while the client submits
        next_count = 5.0
        while not watcher.submitted_event.wait(0.5):
            if client.poll() is not None or watcher.now() > args.submit_timeout:
                break
            if watcher.now() >= next_count:
                during.append({"t": round(watcher.now(), 1), **count_task_runs(api),
                               "client_rss_mib": mib(watcher.samples[-1][1]) if watcher.samples else None})
                next_count = watcher.now() + 5.0
                print(f"  t={during[-1]['t']:7.1f} s  client RSS {during[-1]['client_rss_mib']} MiB, "
                      f"server task runs {during[-1].get('total')}", flush=True)

        submitted = watcher.submitted
        if submitted:
            t_sub = submitted["t"]
            proc_now = read_proc(client.pid) or {}
            at_line = count_task_runs(api)
            print(f"submitted line at {t_sub:.1f} s: {submitted}; server task runs {at_line}", flush=True)
            after: list[dict] = []
            deadline = time.monotonic() + args.after
            while time.monotonic() < deadline and client.poll() is None:
                time.sleep(2.0)
                after.append({"t": round(watcher.now(), 1), **count_task_runs(api),
                              "client_rss_mib": mib(watcher.samples[-1][1]) if watcher.samples else None})
            distinct = shots + 5 * inputs["pairs"]  # one separation per shot + lipdub, remix, mux, subtitles, qc per pair
            validated_t = watcher.markers.get("validated_and_profile_ready")
            rss_validated = watcher.rss_at(validated_t) if validated_t is not None else None
            peak = watcher.peak_until(t_sub)
            result["submitted"] = {
                **submitted,
                "distinct_tasks_submitted": distinct,
                "flow_submit_us_per_task": round(1e6 * submitted["flow_submit_s"] / distinct, 1),
                "client": {**peak, "vmhwm_read_after_line_bytes": proc_now.get("VmHWM"),
                           "rss_read_after_line_bytes": proc_now.get("VmRSS"),
                           "cpu_s_read_after_line": proc_now.get("cpu_s"),
                           "rss_at_validated_bytes": rss_validated},
                "server_task_runs_at_line": {"t": round(t_sub, 1), **at_line},
                "server_task_runs_after": after,
            }
            result["outcome"] = "submitted"
        elif client.poll() is not None:
            result["outcome"] = f"client exited {client.returncode} before the submitted line"
        else:
            result["outcome"] = f"no submitted line within {args.submit_timeout:.0f} s"
        result["server_task_runs_during_submit"] = during
        result["markers_s"] = {k: round(v, 2) for k, v in sorted(watcher.markers.items(), key=lambda kv: kv[1])}
        result["rss_at_markers_mib"] = {k: mib(watcher.rss_at(watcher.markers[k])) for k in result["markers_s"]}
        result["client_until_stopped"] = watcher.peak_until(float("inf"))
        result["client_exited_by_itself"] = client.poll()
        result["client_stop"] = stop(client, args.stop_wait)
        if args.api_probe and submitted:
            result["api_probe"] = probe = run_api_probe(env, args.api_probe, 300)
            if "progress_update_s" in probe:
                pages = -(-result["submitted"]["distinct_tasks_submitted"] // probe["page_ids"])
                probe["extrapolated"] = {
                    "progress_updates_for_all_pairs_s": round(inputs["pairs"] * probe["progress_update_s"]["median"], 1),
                    "read_run_seconds_pages_per_pass": pages,
                    "read_run_seconds_one_pass_s": round(pages * probe["page_read_s"]["median"], 1),
                }
            print(f"api probe: {probe}", flush=True)
    finally:
        if client is not None and "client_stop" not in result:
            result["client_stop"] = stop(client, args.stop_wait)
        if watcher is not None:
            watcher.close()
            step = max(1, len(watcher.samples) // 60)
            result["rss_timeline"] = [{"t": s[0], "rss_mib": mib(s[1]), "hwm_mib": mib(s[2]), "threads": s[3],
                                       "cpu_s": s[4]} for s in watcher.samples[::step]]
            result["client_output_head"] = [f"{t:.2f} {line[:300]}" for t, line in watcher.lines[:12]]
            result["client_output_tail"] = [f"{t:.2f} {line[:300]}" for t, line in watcher.lines[-8:]]
        if server is not None:
            result["server_stop"] = stop(server, args.stop_wait)
            db = work / "server-home" / "prefect.db"
            result.setdefault("server", {})["sqlite_bytes"] = db.stat().st_size if db.exists() else None
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return result


def summarize(run: dict) -> None:
    print(f"{run['shots']} shots x {run['languages']} languages: {run.get('outcome')}")
    for name, t in run.get("markers_s", {}).items():
        print(f"  {name:<30} {t:8.2f} s   RSS {run['rss_at_markers_mib'].get(name)} MiB")
    submitted = run.get("submitted")
    if submitted:
        client = submitted["client"]
        print(f"  flow's own submit time         {submitted['flow_submit_s']:8.1f} s for {submitted['distinct_tasks_submitted']} "
              f"task submissions ({submitted['tasks']} stage futures) / {submitted['pairs']} pairs")
        print(f"  client peak RSS to that line   {mib(client.get('peak_rss_sampled_bytes'))} MiB sampled, VmHWM "
              f"{mib(client.get('vmhwm_read_after_line_bytes'))} MiB; CPU {client.get('cpu_s_read_after_line')} s")
        print(f"  server task runs at the line   {submitted['server_task_runs_at_line']}")
        if submitted["server_task_runs_after"]:
            print(f"  server task runs later         {submitted['server_task_runs_after'][-1]}")
    print(f"  client stop: {run.get('client_stop')}; server stop: {run.get('server_stop')}")


def summary_by_size(runs: list[dict]) -> dict:
    """Per size, the median over repeats of the headline figures; and, between the smallest and the largest
    size, the extra submit time and memory per extra task submitted (what does not depend on size cancels)."""
    by_size: dict[str, dict] = {}
    for shots in sorted({run["shots"] for run in runs}):
        done = [run for run in runs if run["shots"] == shots and run.get("submitted")]
        if not done:
            continue

        def median(get, digits: int = 2) -> float:
            return round(statistics.median(get(run) for run in done), digits)

        by_size[str(shots)] = {
            "pairs": done[0]["submitted"]["pairs"],
            "tasks_submitted": done[0]["submitted"]["distinct_tasks_submitted"],
            "runs": len(done),
            "first_output_line_s": median(lambda r: r["markers_s"]["first_output_line"]),
            "validated_s": median(lambda r: r["markers_s"].get("validated_and_profile_ready", float("nan"))),
            "submitted_line_s": median(lambda r: r["markers_s"]["submitted_line"]),
            "flow_submit_s": median(lambda r: r["submitted"]["flow_submit_s"]),
            "rss_at_validated_mib": median(lambda r: mib(r["submitted"]["client"]["rss_at_validated_bytes"])),
            "vmhwm_at_submitted_line_mib": median(lambda r: mib(r["submitted"]["client"]["vmhwm_read_after_line_bytes"])),
            "client_cpu_s_at_submitted_line": median(lambda r: r["submitted"]["client"]["cpu_s_read_after_line"]),
            "server_task_runs_at_line": median(lambda r: r["submitted"]["server_task_runs_at_line"].get("total", 0)),
            "server_task_runs_last_count": median(lambda r: (r["submitted"]["server_task_runs_after"] or [{}])[-1].get("total", 0)),
            "last_count_s_after_line": median(lambda r: (r["submitted"]["server_task_runs_after"] or [{"t": r["submitted"]["t"]}])[-1]["t"]
                                              - r["submitted"]["t"]),
            "progress_update_median_s": median(lambda r: r.get("api_probe", {}).get("progress_update_s", {}).get("median", float("nan")), 4),
            "progress_updates_all_pairs_s": median(lambda r: r.get("api_probe", {}).get("extrapolated", {}).get("progress_updates_for_all_pairs_s", float("nan"))),
            "read_run_seconds_one_pass_s": median(lambda r: r.get("api_probe", {}).get("extrapolated", {}).get("read_run_seconds_one_pass_s", float("nan"))),
        }
    if len(by_size) >= 2:
        small, large = by_size[min(by_size, key=int)], by_size[max(by_size, key=int)]
        extra = large["tasks_submitted"] - small["tasks_submitted"]
        by_size["marginal_per_task"] = {
            "between": [min(by_size, key=int), max(by_size, key=int)],
            "submit_us": round(1e6 * (large["flow_submit_s"] - small["flow_submit_s"]) / extra, 1),
            "vmhwm_kib": round(1024 * (large["vmhwm_at_submitted_line_mib"] - small["vmhwm_at_submitted_line_mib"]) / extra, 2),
        }
    return by_size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shots", default="1000", help="shots per run; a comma list runs each size in turn")
    parser.add_argument("--languages", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=1, help="runs per size")
    parser.add_argument("--after", type=float, default=15.0, help="seconds to keep counting task runs after submission")
    parser.add_argument("--submit-timeout", type=float, default=1500.0,
                        help="give up waiting for the submitted line this many seconds after the client started")
    parser.add_argument("--server-wait", type=float, default=120.0)
    parser.add_argument("--stop-wait", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between RSS samples")
    parser.add_argument("--api-probe", type=int, default=200,
                        help="after stopping the run, time this many progress updates on the same server (0: skip)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep each run's temporary folder")
    args = parser.parse_args()

    machine = machine_info()
    print(f"{machine['cpu']}, {machine['cpus_usable']} usable CPUs, {machine['mem_total']} RAM, "
          f"load {machine['load_average_at_start']}; Python {machine['python']}, prefect {machine['prefect']}", flush=True)
    sizes = [int(part) for part in args.shots.split(",")]
    runs = []
    for repeat in range(args.repeats):
        for shots in sizes:
            run = run_once(shots, args.languages, args)
            run["repeat"] = repeat + 1
            runs.append(run)
            summarize(run)
    result = {"benchmark": "plan_10k", "command": ["bench/plan_10k.py", *sys.argv[1:]], "machine": machine,
              "summary": summary_by_size(runs), "runs": runs}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"results in {args.json}")
    return 0 if all(run.get("outcome") == "submitted" for run in runs) else 1


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--api-probe":
        print("API_PROBE " + json.dumps(api_probe(int(sys.argv[2]))), flush=True)
        sys.exit(0)
    sys.exit(main())
