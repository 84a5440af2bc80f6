"""`search.run --address` on a real multi-node Ray cluster on loopback, with S3 storage.

The cluster is Ray's own `ray.cluster_utils.Cluster`: a head and worker nodes, each a real
raylet with its own loopback address (127.0.0.2, 127.0.0.3, ...) so a result's `node_ip` tells
the nodes apart; a node is killed with all its processes by `remove_node`. Storage is a moto S3
server on loopback. The sweeps run the real trainable on the small phantom at 32 px.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from cluster_harness import (
    MAX_EPOCHS,
    SWEEP_FLAGS,
    Sweep,
    check_continued_from_checkpoint,
    free_port,
    local_trial_rows,
    parse_rows,
    wait_for_exit,
    wait_until,
)
from ray.cluster_utils import Cluster

from trainables.experiment import EXPERIMENT_FILE

pytestmark = pytest.mark.slow

# Not 127.0.0.1: Ray rewrites that address to the host's public one when a driver joins.
HEAD_IP = "127.0.0.2"
WORKER_IPS = ("127.0.0.3", "127.0.0.4", "127.0.0.5")
BUCKET = "cxr-tune"
PREFIX = "experiments"


class LocalCluster:
    """A Ray head and worker nodes on loopback, one CPU each, sharing one temp dir."""

    def __init__(self, temp_dir: str) -> None:
        self.temp_dir = temp_dir
        self.cluster = Cluster(
            initialize_head=True,
            head_node_args=self._node_args(HEAD_IP)
            | {
                # Notice a dead node in ~1.5 s instead of Ray's default ~15 s.
                "_system_config": {
                    "health_check_period_ms": 500,
                    "health_check_failure_threshold": 3,
                },
            },
        )
        self.workers: dict[str, Any] = {}
        self._unused_ips = list(WORKER_IPS)

    def _node_args(self, ip: str) -> dict[str, Any]:
        return {
            "node_ip_address": ip,
            "num_cpus": 1,  # one trial per node at a time
            "memory": 2 * 2**30,  # bytes; two nodes fit in a small CI machine
            "object_store_memory": 100 * 2**20,  # bytes; trials pass nothing big through it
            "temp_dir": self.temp_dir,
            "include_dashboard": False,
            "dashboard_port": free_port(),
        }

    @property
    def address(self) -> str:
        return self.cluster.address

    def add_worker(self) -> str:
        """Start a worker node on a loopback address not used before; returns the address."""
        ip = self._unused_ips.pop(0)
        self.workers[ip] = self.cluster.add_node(**self._node_args(ip))
        self.cluster.wait_for_nodes()
        return ip

    def kill_worker(self, ip: str) -> None:
        """Kill the node's raylet and every process on it at once (no graceful shutdown)."""
        self.cluster.remove_node(self.workers.pop(ip), allow_graceful=False)

    def shutdown(self) -> None:
        self.cluster.shutdown()


@dataclass
class S3:
    client: Any
    endpoint: str

    def uri(self, prefix: str) -> str:
        host = self.endpoint.removeprefix("http://")
        return f"s3://{BUCKET}/{prefix}?endpoint_override={host}&scheme=http&region=us-east-1"

    def keys(self, prefix: str) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]

    def text(self, key: str) -> str:
        return self.client.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()

    def trial_rows(self, experiment: str) -> dict[str, list[dict[str, Any]]]:
        return {
            key.split("/")[-2]: parse_rows(self.text(key))
            for key in self.keys(experiment + "/")
            if key.endswith("/result.json")
        }

    def trial_statuses(self, experiment: str) -> dict[str, str]:
        """Trial dir -> status in the newest experiment state the driver synced to the bucket."""
        states = sorted(k for k in self.keys(experiment + "/experiment_state-"))
        if not states:
            return {}
        try:
            state = json.loads(self.text(states[-1]))
        except json.JSONDecodeError:
            return {}  # an upload in progress
        statuses = {}
        for trial_json, _metadata in state["trial_data"]:
            trial = json.loads(trial_json)
            statuses[Path(trial["relative_logdir"]).name] = trial["status"]
        return statuses


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on loopback, and the AWS environment that points boto3, pyarrow and
    every Ray node at it (set before the cluster starts, so raylets and trials inherit it)."""
    port = free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    patch = pytest.MonkeyPatch()
    endpoint = f"http://127.0.0.1:{port}"
    # No AWS_ENDPOINT_URL: the storage URI's own query string must carry the endpoint to the
    # driver and to every trial on every node (Ray's pyarrow storage layer).
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        patch.setenv(key, value)
    try:
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")

        def ready() -> bool:
            if server.poll() is not None:
                pytest.fail(f"moto server exited with {server.returncode}")
            try:
                client.list_buckets()
                return True
            except Exception:  # not listening yet
                return False

        wait_until(ready, 60)
        client.create_bucket(Bucket=BUCKET)
        yield S3(client, endpoint)
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
        log.close()
        patch.undo()


@pytest.fixture(scope="module")
def cluster(s3):
    temp_dir = tempfile.mkdtemp(prefix="r", dir="/tmp")  # short: Ray's socket paths
    (Path(temp_dir) / "ray").mkdir()
    (Path(temp_dir) / "tmp").mkdir()
    patch = pytest.MonkeyPatch()
    # Ray records the cluster address under RAY_TMPDIR: keep it out of the shared /tmp/ray.
    patch.setenv("RAY_TMPDIR", temp_dir)
    # Trials on a killed node never clean their temporary files: keep them in here too.
    patch.setenv("TMPDIR", f"{temp_dir}/tmp")
    local = None
    try:
        local = LocalCluster(temp_dir)
        yield local
    finally:
        if local is not None:
            local.shutdown()
        patch.undo()
        leftovers = wait_for_exit(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
        # Every Ray process the tests started is gone (raylets, GCS, workers).
        assert leftovers == []


# --- a worker node dies mid-trial --------------------------------------------------------------


@dataclass
class WorkerLoss:
    returncode: int
    worker_ip: str
    killed_after_epoch: int
    rows: dict[str, list[dict[str, Any]]]
    summary: dict[str, Any]
    log: str


@pytest.fixture(scope="module")
def worker_loss(cluster, tmp_path_factory):
    """Two trials, one per node; the worker node is killed after its trial's second (or a
    later) epoch, so a trial that restarts from scratch is told apart from one that continues."""
    worker_ip = cluster.add_worker()
    storage = tmp_path_factory.mktemp("storage")
    experiment = storage / "worker-loss"
    sweep = Sweep(
        [
            *SWEEP_FLAGS,
            "--address",
            cluster.address,
            "--storage",
            str(storage),
            "--name",
            "worker-loss",
            "--num-samples",
            "2",
        ],
        cwd=tmp_path_factory.mktemp("head"),
    )
    try:

        def worker_mid_trial() -> int:
            for rows in local_trial_rows(experiment).values():
                epochs = [r["epoch"] for r in rows if r.get("node_ip") == worker_ip]
                if epochs and 2 <= epochs[-1] < MAX_EPOCHS:  # past epoch 1: a restart shows
                    return epochs[-1]
            return 0

        killed_after = wait_until(worker_mid_trial, 180, sweep)
        cluster.kill_worker(worker_ip)
        returncode = sweep.wait()
    finally:
        sweep.stop()
    summary_file = experiment / "summary.json"
    return WorkerLoss(
        returncode=returncode,
        worker_ip=worker_ip,
        killed_after_epoch=killed_after,
        rows=local_trial_rows(experiment),
        summary=json.loads(summary_file.read_text()) if summary_file.is_file() else {},
        log=sweep.tail(),
    )


def test_sweep_spreads_its_trials_over_both_nodes(worker_loss):
    first_nodes = sorted(rows[0]["node_ip"] for rows in worker_loss.rows.values())
    # One trial started on the head, the other on the worker: Ray placed them on both nodes.
    assert first_nodes == sorted([HEAD_IP, worker_loss.worker_ip]), worker_loss.log


def test_trial_of_a_killed_worker_continues_on_another_node_from_its_checkpoint(worker_loss):
    moved = [
        rows for rows in worker_loss.rows.values() if rows[0]["node_ip"] == worker_loss.worker_ip
    ]
    assert len(moved) == 1, worker_loss.log
    rows = moved[0]
    check_continued_from_checkpoint(
        rows, "node_ip", worker_loss.worker_ip, worker_loss.killed_after_epoch, replay_ok=True
    )
    # Ray counted the node loss as a failure of that trial and retried it.
    failures = {r["trial_id"]: r["failures"] for r in worker_loss.summary["trial_rows"]}
    assert failures[rows[0]["trial_id"]] >= 1


def test_every_trial_finishes_and_no_epoch_result_is_lost(worker_loss):
    assert worker_loss.returncode == 0, worker_loss.log
    assert worker_loss.summary["state"] == "finished"
    assert worker_loss.summary["errors"] == []
    for trial, rows in worker_loss.rows.items():
        # Every epoch reported, across both nodes: none lost; at most the one in flight at the
        # node's death reported twice (Ray restores the newest checkpoint it had registered).
        epochs = [r["epoch"] for r in rows]
        assert sorted(set(epochs)) == list(range(1, MAX_EPOCHS + 1)), trial
        assert len(epochs) - len(set(epochs)) <= 1, (trial, epochs)


# --- the driver dies; the sweep resumes from S3 -------------------------------------------------


@dataclass
class DriverLoss:
    returncode: int
    experiment: str  # bucket key prefix of the experiment
    finished_before: dict[str, list[dict[str, Any]]]  # trials done when the driver died
    unfinished_before: list[str]
    killed_at: float  # unix seconds
    statuses: dict[str, str]  # trial dir -> status in the resumed experiment's final state
    rows: dict[str, list[dict[str, Any]]]  # of those trials
    keys: list[str]
    log: str


@pytest.fixture(scope="module")
def driver_loss(cluster, s3, tmp_path_factory):
    """Three trials on S3 storage; the driver is SIGKILLed once one trial has finished and
    another has run two epochs; a second driver, in a fresh directory, resumes from the bucket."""
    while len(cluster.workers) < 1:
        cluster.add_worker()
    name = "driver-loss"
    experiment = f"{PREFIX}/{name}"
    flags = [
        *SWEEP_FLAGS,
        "--address",
        cluster.address,
        "--storage",
        s3.uri(PREFIX),
        "--name",
        name,
        "--num-samples",
        "3",
    ]
    first = Sweep(flags, cwd=tmp_path_factory.mktemp("head-a"))
    try:

        def one_finished_one_checkpointed():
            statuses = s3.trial_statuses(experiment)
            rows = s3.trial_rows(experiment)
            done = {
                t: rows[t]
                for t, s in statuses.items()
                if s == "TERMINATED" and len(rows.get(t, [])) == MAX_EPOCHS
            }
            # Past its first epoch, so Ray's saved (uploaded) table names a checkpoint of it:
            # a trial that then started over at epoch 1 would be a lost checkpoint. And two
            # epochs or more from its end: the two first trials run side by side, so when one
            # has finished the other is about to (the bucket's rows lag the trial by a sync);
            # killed then, it would be a finished trial, not an interrupted one.
            running = [
                t
                for t, s in statuses.items()
                if s == "RUNNING" and 2 <= len(rows.get(t, [])) <= MAX_EPOCHS - 2
            ]
            return (done, running) if done and running else None

        finished_before, unfinished_before = wait_until(
            one_finished_one_checkpointed, 240, first, interval=0.2
        )
        killed_at = time.time()
        first.kill()
    finally:
        first.stop()
    second = Sweep([*flags, "--resume"], cwd=tmp_path_factory.mktemp("head-b"))
    try:
        returncode = second.wait()
    finally:
        second.stop()
    # A trial the first driver created after its last synced state is unknown to the resumed
    # experiment (its folder stays behind, empty): the final state says which trials count.
    statuses = s3.trial_statuses(experiment)
    rows = s3.trial_rows(experiment)
    return DriverLoss(
        returncode=returncode,
        experiment=experiment,
        finished_before=finished_before,
        unfinished_before=unfinished_before,
        killed_at=killed_at,
        statuses=statuses,
        rows={trial: rows.get(trial, []) for trial in statuses},
        keys=s3.keys(experiment + "/"),
        log=first.tail(15)
        + "\n--- resumed ---\n"
        + second.tail()
        + "".join(
            f"\n--- {key} ---\n{s3.text(key)[-3000:]}"
            for key in s3.keys(experiment + "/")
            if key.endswith("/error.txt")
        ),
    )


def test_results_and_checkpoints_land_in_the_bucket(driver_loss):
    keys = set(driver_loss.keys)
    exp = driver_loss.experiment
    # The project's experiment record and Ray's experiment state live next to the trials.
    assert f"{exp}/{EXPERIMENT_FILE}" in keys
    assert any(k.startswith(f"{exp}/experiment_state-") for k in keys)
    assert driver_loss.rows, driver_loss.log
    for trial in driver_loss.rows:
        assert {f"{exp}/{trial}/result.json", f"{exp}/{trial}/params.json"} <= keys
        # Workers uploaded the trainable's checkpoints (checkpoint.pt) straight to the bucket.
        assert any(
            k.startswith(f"{exp}/{trial}/checkpoint_") and k.endswith("/checkpoint.pt")
            for k in keys
        ), trial


def test_resume_from_the_bucket_finishes_the_sweep(driver_loss):
    assert driver_loss.returncode == 0, driver_loss.log
    # All three trials of the sweep finished, counted from the experiment state in the bucket.
    assert sorted(driver_loss.statuses.values()) == ["TERMINATED"] * 3, (
        driver_loss.statuses,
        driver_loss.log,
    )
    for trial, rows in driver_loss.rows.items():
        # Every trial reached its last epoch after the resume.
        epochs = {t: [r["epoch"] for r in r_] for t, r_ in driver_loss.rows.items()}
        assert rows[-1]["epoch"] == MAX_EPOCHS, f"{trial}: {epochs}\n{driver_loss.log}"


def test_resume_does_not_rerun_finished_trials(driver_loss):
    for trial, before in driver_loss.finished_before.items():
        # A trial finished before the driver died kept its results, with no new epochs.
        assert driver_loss.rows[trial] == before, trial


def test_interrupted_trial_resumes_from_its_checkpoint(driver_loss):
    for trial in driver_loss.unfinished_before:
        rows = driver_loss.rows[trial]
        resumed = [r for r in rows if r["timestamp"] > driver_loss.killed_at]
        assert resumed, (trial, driver_loss.log)
        # The resumed driver restored the trial's checkpoint: it did not start over at epoch 1.
        assert resumed[0]["epoch"] > 1, [r["epoch"] for r in rows]
