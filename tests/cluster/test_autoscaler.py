"""`search.run --address` on a cluster that Ray's own autoscaler grows and shrinks.

The head starts with Ray's fake multi-node node provider (`RAY_FAKE_CLUSTER=1`,
`fake_autoscaler.yaml`): the real autoscaler, running in the head's monitor process, launches
worker nodes when trials wait for resources (each a local raylet with its node type's resources
and its own node id) and terminates them after `idle_timeout_minutes`. As on `cluster.yaml`'s
cluster, the head has no CPU and no GPU, and the sweep asks for one GPU per trial
(`--gpus-per-trial 1`), so every trial waits for a `gpu_worker` node that does not exist yet.
What happened is read from Ray itself: `ray.nodes()`, the autoscaler's status (the JSON that
`ray status` prints) and the `node_id` of each result row.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml
from cluster_harness import (
    MAX_EPOCHS,
    REPO,
    SWEEP_FLAGS,
    SWEEP_TIMEOUT,
    Sweep,
    check_continued_from_checkpoint,
    free_port,
    local_trial_rows,
    processes_mentioning,
)
from ray._private.ray_constants import DEBUG_AUTOSCALING_STATUS
from ray.core.generated.common_pb2 import NodeDeathInfo
from ray.experimental import internal_kv

pytestmark = pytest.mark.slow

CONFIG = Path(__file__).with_name("fake_autoscaler.yaml")
HEAD_TYPE, GPU_TYPE, CPU_TYPE = "ray.head.default", "gpu_worker", "cpu_worker"
IDLE_TIMEOUT_S = 15.0  # fake_autoscaler.yaml's idle_timeout_minutes: 0.25
SCALE_DOWN_TIMEOUT = 120  # seconds: the idle timeout plus the autoscaler's slack on a busy host
POLL_S = 0.5  # seconds between two looks at the cluster
MARK = "CXR_TUNE_FAKE_CLUSTER"  # env var every process of the cluster inherits: its temp dir
NODE_ID_ENV = "RAY_OVERRIDE_NODE_ID_FOR_TESTING"  # the fake provider's node id, per node


@dataclass
class Sample:
    """One look at the cluster, as Ray reports it."""

    time: float  # unix seconds
    alive: dict[str, dict[str, float]]  # node id -> resources, from ray.nodes()
    types: dict[str, str]  # node id -> node type of the active nodes, from the autoscaler
    pending: list[dict[str, float]]  # resource bundles waiting for a node, from the autoscaler


def pending_bundles(load: dict[str, Any]) -> list[dict[str, float]]:
    """Waiting bundles in the autoscaler's load report: tasks and actors (`resource_demand`)
    and placement groups (`pg_demand`, how Tune asks for each trial's resources)."""
    bundles = [bundle for bundle, _count in load.get("resource_demand") or []]
    for group, _count in load.get("pg_demand") or []:
        bundles += [bundle for bundle, _n in group.get("bundles", [])]
    return bundles


def marked_processes(temp_dir: str) -> dict[int, dict[str, str]]:
    """pid -> environment of every live process of the cluster in `temp_dir`."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            raw = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue  # gone, or not ours
        env = dict(
            item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item
        )
        if env.get(MARK) == temp_dir:
            found[int(pid)] = env
    return found


def ray_cli() -> str:
    """The `ray` command of the Python running the tests (its venv's bin/), else on PATH."""
    beside = Path(sys.executable).with_name("ray")
    found = str(beside) if beside.is_file() else shutil.which("ray")
    if found is None:
        pytest.fail("no `ray` command next to the test's Python or on PATH")
    return found


@dataclass
class FakeAutoscalingCluster:
    """A head node with Ray's autoscaler and fake provider, its launched nodes, and this test
    process connected to it as a driver (for `ray.nodes()` and the autoscaler's status)."""

    temp_dir: str
    port: int = field(default_factory=free_port)
    samples: list[Sample] = field(default_factory=list)
    head_id: str = ""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        config = yaml.safe_load(CONFIG.read_text())
        # Launched nodes join the GCS here (the provider's default is port 6379).
        config["provider"]["gcs_address"] = self.address
        config_file = Path(self.temp_dir) / "autoscaler.yaml"
        config_file.write_text(yaml.safe_dump(config))
        env = {
            **os.environ,
            "RAY_FAKE_CLUSTER": "1",
            "AUTOSCALER_UPDATE_INTERVAL_S": "1",  # seconds between autoscaler passes (default 5)
            "PYTHONPATH": str(REPO),  # trial processes on every node import search.trainable
            "TMPDIR": f"{self.temp_dir}/tmp",  # trials on a killed node leave files behind
            MARK: self.temp_dir,
        }
        command = [
            ray_cli(), "start", "--head",
            f"--port={self.port}", f"--autoscaling-config={config_file}",
            f"--temp-dir={self.temp_dir}", "--num-cpus=0", "--num-gpus=0",
            f"--memory={2**30}", f"--object-store-memory={100 * 2**20}",  # bytes
            "--include-dashboard=false", f"--dashboard-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}", "--disable-usage-stats",
            # Notice a dead node in ~1.5 s instead of Ray's default ~15 s.
            '--system-config={"health_check_period_ms":500,"health_check_failure_threshold":3}',
        ]  # fmt: skip
        started = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
        if started.returncode != 0:
            pytest.fail(f"ray start failed ({started.returncode}):\n{started.stderr[-3000:]}")
        if ray.is_initialized():
            pytest.fail("Ray is already initialized in the test process")
        ray.init(address=self.address, log_to_driver=False)
        self.head_id = ray.get_runtime_context().get_node_id()

    def sample(self) -> Sample:
        raw = internal_kv._internal_kv_get(DEBUG_AUTOSCALING_STATUS)
        status = json.loads(raw) if raw else {}
        report = status.get("autoscaler_report") or {}
        sample = Sample(
            time=time.time(),
            alive={n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"]},
            types=dict(report.get("node_type_mapping") or {}),
            pending=pending_bundles(status.get("load_metrics_report") or {}),
        )
        self.samples.append(sample)
        return sample

    def watch(self, until: Callable[[Sample], Any], timeout: float, what: str, log=str) -> Any:
        """Sample every POLL_S seconds until `until(sample)` is truthy; returns that value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = until(self.sample())
            if value:
                return value
            time.sleep(POLL_S)
        pytest.fail(f"timed out after {timeout} s waiting for {what}:\n{log()}")

    def launched(self, since: int = 0) -> dict[str, str]:
        """Node id -> type of every worker the autoscaler reported active since sample `since`."""
        return {
            node: kind
            for s in self.samples[since:]
            for node, kind in s.types.items()
            if node != self.head_id
        }

    def deaths(self) -> dict[str, str]:
        """Node id -> why Ray says each dead node died (a `NodeDeathInfo.Reason` name)."""
        return {
            n["NodeID"]: NodeDeathInfo.Reason.Name(n["DeathReason"])
            for n in ray.nodes()
            if not n["Alive"]
        }

    def autoscaler_log(self) -> str:
        """The autoscaler's own log (the head's monitor process): launches and terminations."""
        log = Path(self.temp_dir) / "session_latest" / "logs" / "monitor.log"
        return log.read_text(errors="replace") if log.is_file() else ""

    def kill_node(self, node_id: str) -> list[int]:
        """SIGKILL a launched node's raylet and every process it started, all at once, like a
        machine that loses power. The fake provider gives each node its id in NODE_ID_ENV; the
        raylet passes its environment on to its workers and agents."""
        pids = [
            p
            for p, env in marked_processes(self.temp_dir).items()
            if env.get(NODE_ID_ENV) == node_id
        ]
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        return pids

    def shutdown(self) -> None:
        """Stop the processes this test started, by pid (never `ray stop`: it stops every Ray
        on the machine); SIGTERM first, then SIGKILL what is left after 5 s."""
        ray.shutdown()
        for sig, wait_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 10.0)):
            for pid in marked_processes(self.temp_dir):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait_s
            while marked_processes(self.temp_dir) and time.monotonic() < deadline:
                time.sleep(0.2)


@pytest.fixture(scope="module")
def autoscaling(tmp_path_factory):
    temp_dir = tempfile.mkdtemp(prefix="r", dir="/tmp")  # short: Ray's socket paths
    (Path(temp_dir) / "tmp").mkdir()
    patch = pytest.MonkeyPatch()
    # Ray records the cluster address under RAY_TMPDIR: keep it out of the shared /tmp/ray.
    patch.setenv("RAY_TMPDIR", temp_dir)
    cluster = FakeAutoscalingCluster(temp_dir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.shutdown()
        patch.undo()
        leftovers = list(marked_processes(temp_dir)) + processes_mentioning(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
        # Every process of the cluster is gone: GCS, raylets, autoscaler, workers.
        assert leftovers == []


def gpu_workers_alive(sample: Sample) -> list[str]:
    return [node for node, res in sample.alive.items() if res.get("GPU", 0) > 0]


def only_the_head(sample: Sample) -> bool:
    """Ray and the autoscaler agree that no worker is left (the autoscaler's view lags
    ray.nodes() by up to one of its passes)."""
    return len(sample.alive) == 1 and len(sample.types) == 1


def timeline(samples: list[Sample]) -> str:
    """The samples where something changed: seconds, alive nodes, active types, waiting bundles."""
    lines, previous = [], None
    for s in samples:
        state = (
            sorted(n[-5:] for n in s.alive),
            sorted(f"{n[-5:]}:{t}" for n, t in s.types.items()),
            s.pending,
        )
        if state != previous:
            at = s.time - samples[0].time
            lines.append(f"{at:6.1f}s alive {state[0]} types {state[1]} pending {state[2]}")
        previous = state
    return "\n".join(lines)


def sweep_log(sweep: Sweep, cluster: FakeAutoscalingCluster) -> Callable[[], str]:
    first = len(cluster.samples)

    def log() -> str:
        return f"{sweep.tail()}\n--- the cluster ---\n{timeline(cluster.samples[first:])}"

    return log


# --- trials that wait for a GPU node make the autoscaler launch one ---------------------------


@dataclass
class ScaleOut:
    before: Sample
    samples: list[Sample]  # from the sweep's start until the workers were removed
    launched: dict[str, str]  # node id -> node type
    returncode: int
    rows: dict[str, list[dict[str, Any]]]
    summary: dict[str, Any]
    export: Path
    deaths: dict[str, str]  # node id -> NodeDeathInfo reason, once the workers were removed
    autoscaler_log: str  # its part of monitor.log
    log: str


@pytest.fixture(scope="module")
def scale_out(autoscaling, tmp_path_factory):
    """Two smoke trials, one GPU each, on a head with no GPU; then the cluster goes idle."""
    before = autoscaling.sample()
    first = len(autoscaling.samples)
    log_start = len(autoscaling.autoscaler_log())
    storage = tmp_path_factory.mktemp("storage")
    sweep = Sweep(
        [
            "--space", str(REPO / "spaces" / "smoke.py"), "--profile", "cpu",
            "--data", "phantom:small", "--address", autoscaling.address,
            "--gpus-per-trial", "1", "--cpus-per-trial", "1",
            "--num-samples", "2", "--max-concurrent", "2", "--seed", "0",
            "--wandb-mode", "disabled", "--storage", str(storage), "--name", "scale-out",
        ],
        cwd=tmp_path_factory.mktemp("driver"),
    )  # fmt: skip
    log = sweep_log(sweep, autoscaling)
    try:
        autoscaling.watch(
            lambda s: sweep.process.poll() is not None, SWEEP_TIMEOUT, "the sweep", log
        )
    finally:
        sweep.stop()
    autoscaling.watch(only_the_head, SCALE_DOWN_TIMEOUT, "scale-down", log)
    print(log())  # pytest shows it with a failure (or -rP)
    experiment = storage / "scale-out"
    summary_file = experiment / "summary.json"
    return ScaleOut(
        before=before,
        samples=autoscaling.samples[first:],
        launched=autoscaling.launched(first),
        returncode=sweep.process.returncode,
        rows=local_trial_rows(experiment),
        summary=json.loads(summary_file.read_text()) if summary_file.is_file() else {},
        export=experiment / "export",
        deaths=autoscaling.deaths(),
        autoscaler_log=autoscaling.autoscaler_log()[log_start:],
        log=log(),
    )


def test_before_the_sweep_only_the_head_runs_and_it_has_no_cpu_or_gpu(autoscaling, scale_out):
    # min_workers 0: no worker exists until something waits for one.
    assert list(scale_out.before.alive) == [autoscaling.head_id]
    head = scale_out.before.alive[autoscaling.head_id]
    assert head.get("CPU", 0) == 0 and head.get("GPU", 0) == 0


def test_waiting_trials_make_the_autoscaler_launch_gpu_workers(scale_out):
    samples = scale_out.samples
    first_up = next(i for i, s in enumerate(samples) if gpu_workers_alive(s))
    # Before any worker was up, the autoscaler saw the trials' one-GPU bundles waiting.
    assert any(b.get("GPU", 0) >= 1 for s in samples[:first_up] for b in s.pending), scale_out.log
    # It launched the type those bundles fit, never the CPU-only type the config also offers,
    # within max_workers, and its own log says so.
    assert {CPU_TYPE, GPU_TYPE} <= set(yaml.safe_load(CONFIG.read_text())["available_node_types"])
    assert set(scale_out.launched.values()) == {GPU_TYPE}, scale_out.launched
    assert 1 <= len(scale_out.launched) <= 2
    launches = re.findall(r"Launching (\d+) nodes, type (\S+)\.", scale_out.autoscaler_log)
    assert {kind for _n, kind in launches} == {GPU_TYPE}, launches
    # every node that appeared was launched (a launch may also be retried or cut short)
    assert sum(int(n) for n, _kind in launches) >= len(scale_out.launched), launches


def test_every_trial_ran_on_a_launched_worker(scale_out):
    assert len(scale_out.rows) == 2, scale_out.log
    for trial, rows in scale_out.rows.items():
        # Each epoch ran on a gpu_worker node the autoscaler started (the fake GPU has no CUDA,
        # so the trainable trained on the CPU there).
        assert rows and {r["node_id"] for r in rows} <= set(scale_out.launched), trial


def test_the_sweep_finishes_and_exports_the_best_checkpoint(scale_out):
    assert scale_out.returncode == 0, scale_out.log
    assert scale_out.summary["state"] == "finished"
    assert scale_out.summary["errors"] == []
    meta = json.loads((scale_out.export / "bundle.json").read_text())
    assert meta["source"]["trial"] in scale_out.rows
    assert (scale_out.export / "model.safetensors").is_file()
    assert (scale_out.export / "model.onnx").is_file()


def test_idle_workers_are_removed_after_the_idle_timeout(autoscaling, scale_out):
    last = scale_out.samples[-1]
    # Ray and the autoscaler agree: only the head is left.
    assert list(last.alive) == [autoscaling.head_id]
    assert last.types == {autoscaling.head_id: HEAD_TYPE}
    rows = [r for trial_rows in scale_out.rows.values() for r in trial_rows]
    for node in scale_out.launched:
        # The autoscaler retired it as idle, and Ray saw it shut down as asked (SIGTERM from the
        # provider), not crash.
        assert re.search(
            rf"Terminating the node with id {node} .*\(idle\)", scale_out.autoscaler_log
        ), scale_out.autoscaler_log[-3000:]
        assert scale_out.deaths[node] == "EXPECTED_TERMINATION"
        # Not before the idle timeout: up at least IDLE_TIMEOUT_S after its last result (or,
        # had it run none, after it came up). Result timestamps are whole seconds.
        up = [s.time for s in scale_out.samples if node in s.alive]
        last_busy = max([r["timestamp"] for r in rows if r["node_id"] == node] or [up[0]])
        gone_at = next(s.time for s in scale_out.samples if s.time > up[-1])
        assert gone_at - last_busy >= IDLE_TIMEOUT_S, (node, gone_at, last_busy)


# --- a launched worker dies mid-trial ---------------------------------------------------------


@dataclass
class NodeLoss:
    returncode: int
    killed: str  # node id
    killed_pids: list[int]
    killed_after_epoch: int
    launched: dict[str, str]
    alive_after: dict[str, dict[str, float]]
    deaths: dict[str, str]
    rows: dict[str, list[dict[str, Any]]]
    summary: dict[str, Any]
    log: str


@pytest.fixture(scope="module")
def node_loss(autoscaling, scale_out, tmp_path_factory):
    """Two trials on freshly launched workers; one worker is killed after its trial's first
    epoch (after scale_out, so the cluster starts from the head alone again)."""
    first = len(autoscaling.samples)
    storage = tmp_path_factory.mktemp("storage")
    experiment = storage / "node-loss"
    sweep = Sweep(
        [
            *SWEEP_FLAGS, "--address", autoscaling.address, "--gpus-per-trial", "1",
            "--num-samples", "2", "--storage", str(storage), "--name", "node-loss",
        ],
        cwd=tmp_path_factory.mktemp("driver"),
    )  # fmt: skip
    log = sweep_log(sweep, autoscaling)
    try:

        def worker_mid_trial(sample: Sample) -> tuple[str, int] | None:
            if sweep.process.poll() is not None:
                pytest.fail(f"search.run exited ({sweep.process.returncode}) first:\n{log()}")
            for rows in local_trial_rows(experiment).values():
                node = rows[-1]["node_id"] if rows else None
                if (
                    node in sample.alive
                    and node != autoscaling.head_id
                    and 2 <= rows[-1]["epoch"] < MAX_EPOCHS  # past epoch 1: a restart shows
                ):
                    return node, rows[-1]["epoch"]
            return None

        killed, killed_after = autoscaling.watch(
            worker_mid_trial, SWEEP_TIMEOUT, "a trial on a worker", log
        )
        pids = autoscaling.kill_node(killed)
        autoscaling.watch(
            lambda s: sweep.process.poll() is not None, SWEEP_TIMEOUT, "the sweep", log
        )
    finally:
        sweep.stop()
    print(log())
    summary_file = experiment / "summary.json"
    return NodeLoss(
        returncode=sweep.process.returncode,
        killed=killed,
        killed_pids=pids,
        killed_after_epoch=killed_after,
        launched=autoscaling.launched(first),
        alive_after=autoscaling.samples[-1].alive,
        deaths=autoscaling.deaths(),
        rows=local_trial_rows(experiment),
        summary=json.loads(summary_file.read_text()) if summary_file.is_file() else {},
        log=log(),
    )


def test_the_killed_node_was_a_launched_worker_and_is_gone(node_loss):
    assert node_loss.launched.get(node_loss.killed) == GPU_TYPE, node_loss.launched
    # Its raylet and trial process at least; Ray saw the node die unexpectedly.
    assert len(node_loss.killed_pids) >= 2
    assert node_loss.killed not in node_loss.alive_after
    assert node_loss.deaths[node_loss.killed] == "UNEXPECTED_TERMINATION"


def test_trial_of_a_killed_worker_continues_on_another_worker_from_its_checkpoint(node_loss):
    moved = [rows for rows in node_loss.rows.values() if rows[0]["node_id"] == node_loss.killed]
    assert len(moved) == 1, node_loss.log
    rows = moved[0]
    check_continued_from_checkpoint(
        rows, "node_id", node_loss.killed, node_loss.killed_after_epoch, replay_ok=True
    )
    # It went on on another node the autoscaler launched, never on the head.
    assert {r["node_id"] for r in rows} <= set(node_loss.launched)
    # Ray counted the node loss as a failure of that trial and retried it.
    failures = {r["trial_id"]: r["failures"] for r in node_loss.summary["trial_rows"]}
    assert failures[rows[0]["trial_id"]] >= 1


def test_every_trial_finishes_and_no_epoch_result_is_lost(node_loss):
    assert node_loss.returncode == 0, node_loss.log
    assert node_loss.summary["state"] == "finished"
    assert node_loss.summary["errors"] == []
    for trial, rows in node_loss.rows.items():
        # Every epoch reported, across both nodes: none lost; at most the one in flight at the
        # node's death reported twice (Ray restores the newest checkpoint it had registered).
        epochs = [r["epoch"] for r in rows]
        assert sorted(set(epochs)) == list(range(1, MAX_EPOCHS + 1)), trial
        assert len(epochs) - len(set(epochs)) <= 1, (trial, epochs)
