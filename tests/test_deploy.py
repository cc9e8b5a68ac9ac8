"""deploy/: the Prefect deployments on a real Prefect server, a real process worker and a real flow
run; plus the other deployment files checked against the tools that read them (Prefect's own
templating and settings, the dask CLI, YAML).

The acceptance test starts `prefect server start` on a free loopback port with its own PREFECT_HOME,
creates both work pools of deploy/prefect.yaml (the Kubernetes one from
deploy/k8s-gpu-job-template.json, which the server validates), starts a process worker, runs
`prefect deploy --all` (the worker starting meanwhile), runs the on-demand deployment on one sample
shot and one language with `prefect deployment run --watch`, and checks the delivery. Every
subprocess gets an argument list and the test server's PREFECT_API_URL, and is stopped in a `finally`.
"""

from __future__ import annotations

import csv
import inspect
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
PREFECT_FILE = DEPLOY / "prefect.yaml"
K8S_TEMPLATE = DEPLOY / "k8s-gpu-job-template.json"
DASK_SPEC = DEPLOY / "dask-gpu-worker.yaml"
SERVER_ENV = DEPLOY / "server" / "prefect-server.env.example"
SERVER_COMPOSE = DEPLOY / "server" / "compose.yaml"
CI_WORKFLOW = DEPLOY / "ci" / "github-actions.yml"

# The virtualenv running the tests is the one that has prefect and dubflow installed; the worker
# must run flows with that same interpreter, so every command comes from its bin directory.
BIN = Path(sys.executable).parent
PREFECT = BIN / "prefect"
DASK = BIN / "dask"

# A registry name that can never resolve (.invalid is reserved, RFC 2606): the nightly deployment
# needs an image reference, and this one must never be mistaken for a real one.
TEST_IMAGE = "registry.invalid/dubflow:deploy-test"
SHOT, LANGUAGE = "sc01_sh020", "fr"  # the shortest sample shot (50 frames), one language
RUN_ID = "deploy-test"


def _deployments() -> dict[str, dict]:
    config = yaml.safe_load(PREFECT_FILE.read_text())
    return {d["name"]: d for d in config["deployments"]}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop(process: subprocess.Popen) -> None:
    """Stop a process this test started, and its children (it leads its own process group)."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def _tail(path: Path, lines: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


def _run(args: list[str], env: dict[str, str], timeout: float, cwd: Path = REPO) -> subprocess.CompletedProcess:
    result = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def _run_together(commands: list[list[str]], env: dict[str, str], timeout: float) -> None:
    """Commands that do not depend on each other, run at once (each CLI call spends seconds starting);
    every one must succeed."""
    processes = [subprocess.Popen(args, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for args in commands]
    try:
        for args, process in zip(commands, processes):
            stdout, stderr = process.communicate(timeout=timeout)
            assert process.returncode == 0, f"{' '.join(args)} exited {process.returncode}\n{stdout}\n{stderr}"
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """A real Prefect server on a free loopback port; yields its API URL and the environment every
    CLI call and the worker get."""
    home = tmp_path_factory.mktemp("prefect-server")
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    # Nothing Prefect-related leaks in from the calling shell (an API URL, a profile, a key): only
    # what this test sets reaches the server, the CLI and the worker.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home / "home"),
        PREFECT_API_URL=api,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_UI_ENABLED="false",
        PREFECT_CLI_PROMPT="false",
        PREFECT_WORKER_QUERY_SECONDS="2",  # the worker polls every 2 s instead of 10
    )
    log = home / "server.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [str(PREFECT), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 90  # ~15 s on an idle machine; CI shares two cores
        while True:
            assert server.poll() is None, f"prefect server exited {server.returncode}:\n{_tail(log)}"
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"no /api/health answer within 90 s:\n{_tail(log)}"
            time.sleep(0.5)
        yield api, env
    finally:
        _stop(server)


@pytest.fixture(scope="module")
def one_pair_manifest(small_samples_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One sample shot with one language, its source as an absolute path (the worker's flow run
    does not start in the samples folder)."""
    with (small_samples_dir / "manifest.csv").open(newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["shot_id"] == SHOT and r["language"] == LANGUAGE]
    assert len(rows) == 1, "the sample manifest changed: pick another shot/language here"
    rows[0]["source"] = str((small_samples_dir / rows[0]["source"]).resolve())
    path = tmp_path_factory.mktemp("deploy-manifest") / "manifest.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_deployments_run_on_a_real_server_and_worker(prefect_api, one_pair_manifest: Path, tmp_path: Path) -> None:
    api, env = prefect_api
    deployments = _deployments()
    on_demand, nightly = deployments["on-demand"], deployments["nightly"]
    process_pool, k8s_pool = on_demand["work_pool"]["name"], nightly["work_pool"]["name"]
    started = time.monotonic()

    # The two pools, created at once. The server refuses a base job template whose job
    # configuration uses a variable the variables schema does not declare; the kubernetes type is
    # known to it without prefect-kubernetes installed (from the collection registry it ships).
    _run_together([[str(PREFECT), "work-pool", "create", process_pool, "--type", "process"],
                   [str(PREFECT), "work-pool", "create", k8s_pool, "--type", "kubernetes",
                    "--base-job-template", str(K8S_TEMPLATE)]], env, 120)
    pool = httpx.get(f"{api}/work_pools/{k8s_pool}", timeout=30).json()
    assert pool["type"] == "kubernetes"
    assert pool["base_job_template"] == json.loads(K8S_TEMPLATE.read_text())

    out = tmp_path / "deliveries"
    worker_log = tmp_path / "worker.log"
    with worker_log.open("w") as log:
        # Started outside the repository: the deployment imports the installed package and needs
        # no checkout as its working directory. It starts while the deployments are made, as a
        # worker already serving its pool would be: it finds the run once there is one.
        worker = subprocess.Popen(
            [str(PREFECT), "worker", "start", "--pool", process_pool, "--name", "deploy-test-worker"],
            env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        # From the repository root, as deploy/README.md says; DUBFLOW_IMAGE fills the nightly
        # deployment's image (the server checks it against the pool's variables schema).
        _run([str(PREFECT), "deploy", "--all", "--prefect-file", str(PREFECT_FILE.relative_to(REPO)), "--no-prompt"],
             {**env, "DUBFLOW_IMAGE": TEST_IMAGE}, 300)
        deployed = time.monotonic()

        got = httpx.get(f"{api}/deployments/name/localize/nightly", timeout=30).json()
        assert got["work_pool_name"] == k8s_pool
        assert got["job_variables"] == {"image": TEST_IMAGE}
        assert got["parameters"]["manifest"] == "/data/manifests/nightly/manifest.csv"
        assert got["parameters"]["profile"] == "ltx-2.3"
        ((schedule),) = got["schedules"]
        assert schedule["active"] is True
        assert schedule["schedule"]["cron"] == "0 2 * * *" and schedule["schedule"]["timezone"] == "UTC"
        demand = httpx.get(f"{api}/deployments/name/localize/on-demand", timeout=30).json()
        assert demand["work_pool_name"] == process_pool and demand["schedules"] == []
        assert demand["entrypoint"] == "dubflow.flows.localize.localize" and demand["pull_steps"] == []

        params = {"manifest": str(one_pair_manifest), "out": str(out), "languages": [LANGUAGE], "run_id": RUN_ID}
        run = subprocess.run(
            [str(PREFECT), "deployment", "run", "localize/on-demand", "--watch", "--watch-timeout", "300",
             *[arg for key, value in params.items() for arg in ("--param", f"{key}={json.dumps(value)}")]],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=360,
        )
    finally:
        _stop(worker)
    finished = time.monotonic()
    assert run.returncode == 0, f"{run.stdout}\n{run.stderr}\nworker log:\n{_tail(worker_log)}"

    flow_runs = httpx.post(f"{api}/flow_runs/filter", timeout=30,
                           json={"flow_runs": {"deployment_id": {"any_": [demand["id"]]}}}).json()
    assert len(flow_runs) == 1
    (flow_run,) = flow_runs
    assert flow_run["state"]["type"] == "COMPLETED", flow_run["state"]
    assert flow_run["parameters"]["languages"] == [LANGUAGE]

    delivery = json.loads((out / RUN_ID / "delivery.json").read_text())
    assert [(p["shot_id"], p["language"], p["status"]) for p in delivery["pairs"]] == [(SHOT, LANGUAGE, "delivered")]
    assert delivery["profile"]["name"] == "smoke"  # the deployment's default profile
    for entry in delivery["files"]:
        assert (out / RUN_ID / entry["path"]).is_file(), entry
    assert (out / RUN_ID / SHOT / LANGUAGE / f"{SHOT}_{LANGUAGE}.mp4").is_file()
    print(f"deploy: {deployed - started:.1f} s, run through the worker: {finished - deployed:.1f} s")


def test_every_yaml_under_deploy_parses() -> None:
    files = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])
    assert {PREFECT_FILE, DASK_SPEC, SERVER_COMPOSE, CI_WORKFLOW} <= set(files)
    for path in files:
        documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert documents and all(isinstance(d, dict) for d in documents), path


def test_deployment_parameters_are_the_flows_own() -> None:
    from prefect.flows import load_flow_from_entrypoint

    for name, deployment in _deployments().items():
        flow = load_flow_from_entrypoint(deployment["entrypoint"])
        assert flow.name == "localize", name
        signature = inspect.signature(flow.fn)
        unknown = set(deployment["parameters"]) - set(signature.parameters)
        assert not unknown, f"{name}: parameters the flow does not take: {unknown}"
        required = {p for p, v in signature.parameters.items() if v.default is inspect.Parameter.empty}
        if deployment.get("schedules"):
            # A scheduled run has no one to supply the rest: every required parameter is set here.
            assert required <= set(deployment["parameters"]), name
            flow.validate_parameters(deployment["parameters"])
        else:
            flow.validate_parameters({**{p: "x" for p in required}, **deployment["parameters"]})


def test_k8s_job_template_renders_a_gpu_job() -> None:
    """Render the template as a worker does (Prefect's own templating: variable defaults, then the
    deployment's job variables) and check the Job a GPU node would get."""
    from prefect.utilities.templating import apply_values

    template = json.loads(K8S_TEMPLATE.read_text())
    assert set(template) == {"job_configuration", "variables"}
    properties = template["variables"]["properties"]
    values = {key: spec["default"] for key, spec in properties.items() if "default" in spec}
    values["image"] = TEST_IMAGE
    rendered = apply_values(template["job_configuration"], values)
    assert "{{" not in json.dumps(rendered), "a placeholder with no value left in the rendered job"
    job = rendered["job_manifest"]
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == TEST_IMAGE
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    env = {e["name"]: e for e in container["env"]}
    assert env["DUBFLOW_LTX_WEIGHTS"]["value"] == "/weights/ltx-2.3"
    assert env["HF_HOME"]["value"].startswith("/cache/") and env["DUBFLOW_CACHE"]["value"].startswith("/cache/")
    assert env["PREFECT_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "prefect-api-key"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert set(mounts) == set(volumes)
    assert volumes["model-cache"]["persistentVolumeClaim"]["claimName"] == "dubflow-model-cache"
    # Every path the environment names lies on a mounted volume.
    for name in ("DUBFLOW_LTX_WEIGHTS", "DUBFLOW_CACHE", "HF_HOME", "TORCH_HOME"):
        assert any(env[name]["value"].startswith(path + "/") for path in mounts.values()), name
    # The nightly deployment's paths are on the data volume too.
    nightly = _deployments()["nightly"]["parameters"]
    for parameter in ("manifest", "out"):
        assert nightly[parameter].startswith(mounts["data"] + "/"), parameter


def test_dask_gpu_worker_spec_starts_real_workers_with_one_gpu_each(tmp_path: Path) -> None:
    """The worker arguments of deploy/dask-gpu-worker.yaml, given to the real `dask worker` CLI
    against a local scheduler: the worker must register with resources {GPU: 1} and one thread."""
    documents = [d for d in yaml.safe_load_all(DASK_SPEC.read_text()) if d]
    by_kind: dict[str, list[dict]] = {}
    for d in documents:
        by_kind.setdefault(d["kind"], []).append(d)
    (service,) = by_kind["Service"]
    workloads = {d["metadata"]["name"]: d for d in by_kind["Deployment"]}
    worker_spec = workloads["dubflow-dask-gpu-worker"]["spec"]["template"]["spec"]
    (container,) = worker_spec["containers"]
    args = [*container["command"], *container.get("args", [])]
    assert args[:2] == ["dask", "worker"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1  # one worker process per GPU
    scheduler_port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "comm")
    assert args[2] == f"tcp://{service['metadata']['name']}:{scheduler_port}"
    assert args[args.index("--resources") + 1] == "GPU=1"
    threads = int(args[args.index("--nthreads") + 1])
    assert threads > 1  # the CPU stages run beside the worker's one GPU task

    from distributed import Client

    port = _free_port()
    env = {**os.environ, "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    log = tmp_path / "dask.log"
    with log.open("w") as out:
        scheduler = subprocess.Popen([str(DASK), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                      "--no-dashboard"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        worker = None
        try:
            worker = subprocess.Popen([str(DASK), "worker", f"tcp://127.0.0.1:{port}", *args[3:], "--no-dashboard",
                                       "--host", "127.0.0.1"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                      start_new_session=True)
            with Client(f"tcp://127.0.0.1:{port}", timeout=60) as client:
                client.wait_for_workers(1, timeout=90)
                (info,) = client.scheduler_info()["workers"].values()
            assert info["resources"] == {"GPU": 1}, _tail(log)
            assert info["nthreads"] == threads
        finally:
            if worker is not None:
                _stop(worker)
            _stop(scheduler)


def _env_file(path: Path) -> dict[str, str]:
    entries = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path.name}: not KEY=VALUE: {line!r}"
            entries[key.strip()] = value.strip()
    return entries


def test_server_settings_are_real_prefect_settings_and_carry_no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    # The set `prefect config set` checks names against (aliases included).
    from prefect.settings import Settings
    from prefect.settings.legacy import _get_valid_setting_names

    valid = _get_valid_setting_names(Settings)
    env = _env_file(SERVER_ENV)
    compose = yaml.safe_load(SERVER_COMPOSE.read_text())
    names = set(env)
    for service in compose["services"].values():
        names |= set(service.get("environment", {}))
    # PREFECT_REDIS_MESSAGING_* belong to prefect-redis, which is not installed here (it is in the
    # server image); deploy/README.md says how they were checked.
    prefect_names = {n for n in names if n.startswith("PREFECT_") and not n.startswith("PREFECT_REDIS_")}
    assert prefect_names, "no Prefect settings found"
    assert not prefect_names - valid, f"not Prefect {sys.modules['prefect'].__version__} settings: {prefect_names - valid}"
    # Values too: Prefect's settings model must accept every one of them (durations, sets, ...).
    for key, value in env.items():
        if key in prefect_names:
            monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.server.events.messaging_broker == "prefect_redis.messaging"
    assert settings.server.concurrency.lease_storage == "prefect_redis.lease_storage"
    for key, value in env.items():
        if re.search(r"PASSWORD|SECRET|TOKEN|API_KEY|AUTH_STRING", key):
            assert value == "", f"{SERVER_ENV.name}: {key} must be left empty in the template"
    for service in compose["services"].values():
        for key, value in service.get("environment", {}).items():
            if re.search(r"PASSWORD|SECRET|TOKEN|API_KEY|AUTH_STRING|CONNECTION_URL|DOCKET_URL", key):
                assert "${" in str(value), f"compose: {key} must come from a variable, not be written in the file"


def test_ci_workflow_validates_then_watches_the_run_with_secrets_only() -> None:
    workflow = yaml.safe_load(CI_WORKFLOW.read_text())
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` key as True
    assert any(p.startswith("manifests/") for p in triggers["push"]["paths"])
    assert "manifest" in triggers["workflow_dispatch"]["inputs"]
    steps = [s for job in workflow["jobs"].values() for s in job["steps"]]
    scripts = "\n".join(s.get("run", "") for s in steps)
    assert "dubflow validate" in scripts
    assert re.search(r"prefect deployment run 'localize/on-demand'.*--watch", scripts, re.S)
    assert scripts.index("dubflow validate") < scripts.index("prefect deployment run")
    text = CI_WORKFLOW.read_text()
    for secret in ("PREFECT_API_URL", "PREFECT_API_KEY"):
        assert f"${{{{ secrets.{secret} }}}}" in text
        # A secret reaches the scripts through the environment only, never spelled in a script.
        assert f"secrets.{secret}" not in scripts
        assert not re.search(rf"echo[^\n]*\${secret}", scripts)
