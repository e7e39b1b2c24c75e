"""The cluster journey on real parts: a one-node SLURM (with accounting) and a PostgreSQL server on this machine.

The session fixture starts them with ``scripts/local_cluster.sh start`` (root; the packages must be installed:
``scripts/local_cluster.sh install``, which ``.ci/run`` does) and stops at the end what it started. Elsewhere the
tests are skipped with the reason. Every job runs as a SLURM job through ``hydra/launcher=submitit_slurm``; each
test has its own folder (a reused submitit folder can return an old job's result once the controller's state is
wiped). Every wait is bounded.
"""

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from conftest import ROOT

pytestmark = pytest.mark.cluster
SCRIPT = ROOT / "scripts" / "local_cluster.sh"
DAEMONS = ["munged", "slurmctld", "slurmd", "slurmdbd", "sbatch", "sacct", "scancel", "squeue", "mariadbd"]
RUN_TIMEOUT_S = 300  # one multirun or sweep worker, submission to exit
SACCT_TIMEOUT_S = 60  # a finished job's final state reaching sacct
# Small jobs: 4 prompts per step, greedy evaluation only, one torch thread per SLURM CPU. (Task and model settings
# stay at the defaults: the shipped warm-up is used; another setting would train a new one, ~2 minutes.)
SMALL = ["trainer.prompts_per_step=4", "eval.samples=0", "trainer.num_threads=1"]


def script(cmd: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), cmd], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def cluster():
    """The cluster's environment (SLURM_CONF, LPREG_SLURM_PARTITION, LPREG_PG_URL), started if it is not running."""
    if not sys.platform.startswith("linux"):
        pytest.skip("the local cluster script runs on Linux only")
    running = script("status", 30).returncode == 0
    started = False
    if not running:
        missing = [d for d in DAEMONS if shutil.which(d) is None]
        if missing or not list(Path("/usr/lib/postgresql").glob("*/bin/postgres")):
            pytest.skip(f"SLURM/munge/mariadb/PostgreSQL not installed (missing {missing or ['postgres']}): "
                        "run `scripts/local_cluster.sh install` as root (.ci/run does)")
        if os.geteuid() != 0:
            pytest.skip("the local cluster is not running and starting it needs root: "
                        "`sudo scripts/local_cluster.sh start`")
        proc = script("start", 240)
        assert proc.returncode == 0, f"scripts/local_cluster.sh start failed:\n{proc.stderr[-4000:]}"
        started = True
    env = dict(re.findall(r"^export (\w+)=(.*)$", script("env", 10).stdout, flags=re.M))
    os.environ["SLURM_CONF"] = env["SLURM_CONF"]
    yield env
    if started:
        proc = script("stop", 240)
        assert proc.returncode == 0, proc.stderr


def slurm_args(env: dict) -> list[str]:
    return ["hydra/launcher=submitit_slurm", f"hydra.launcher.partition={env['LPREG_SLURM_PARTITION']}",
            "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=10"]


class Lpreg:
    """``python -m lpreg.run ARGS`` in the background, its output in a file (a pipe could fill and block it)."""

    started: list["Lpreg"] = []

    def __init__(self, args: list[str], cwd: Path, name: str = "lpreg"):
        self.sweep_dir = Path(next(a.split("=", 1)[1] for a in args if a.startswith("hydra.sweep.dir=")))
        self.started.append(self)
        self.log = cwd / f"{name}.log"
        with open(self.log, "w") as fh:
            self.proc = subprocess.Popen([sys.executable, "-m", "lpreg.run", *args], cwd=cwd, stdout=fh,
                                         stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)})

    def wait(self, timeout: float = RUN_TIMEOUT_S) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
            raise AssertionError(f"lpreg.run did not exit in {timeout} s; its output:\n{self.output()[-4000:]}") from None

    def output(self) -> str:
        return self.log.read_text()


@pytest.fixture(autouse=True)
def no_leftovers():
    """After each test: kill the runs it left running and cancel their SLURM jobs."""
    yield
    while Lpreg.started:
        run = Lpreg.started.pop()
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait(timeout=30)
        if ids := slurm_ids(run.sweep_dir):
            subprocess.run(["scancel", *ids], capture_output=True, timeout=30)


def slurm_ids(sweep_dir: Path) -> list[str]:
    """SLURM ids of the jobs submitit submitted for a multirun, in submission order: ``<array>_<index>`` for an
    array of several jobs (submitit's folder ``<array>/`` holds the array's submission), ``<id>`` for one job."""
    folder = sweep_dir / ".submitit"
    if not folder.is_dir():
        return []
    names = [p.name for p in folder.iterdir() if re.fullmatch(r"\d+(_\d+)?", p.name)]
    arrays = {n.split("_")[0] for n in names if "_" in n}
    ids = [n for n in names if n not in arrays]
    return sorted(ids, key=lambda i: tuple(map(int, i.split("_"))))


def sacct_states(ids: list[str], final: bool = True) -> dict[str, str]:
    """``{id: state}`` from SLURM accounting, polled until every job's state is final (bounded)."""
    deadline = time.time() + SACCT_TIMEOUT_S
    while True:
        out = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(ids)],
                             capture_output=True, text=True, timeout=30, check=True).stdout
        states = {i: s.split()[0] for i, s in (line.split("|") for line in out.splitlines()) if i in ids}
        done = len(states) == len(ids) and not {"PENDING", "RUNNING", "COMPLETING"} & set(states.values())
        if done or not final or time.time() > deadline:
            return states
        time.sleep(1)


def summary(job_dir: Path) -> dict:
    path = job_dir / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def cancel_when_running(sweep_dir: Path, job_dir_of, run: Lpreg, skip: int = 0, timeout: float = RUN_TIMEOUT_S):
    """``scancel`` each submitted job (after the first ``skip``) once its job folder says ``running``.

    ``job_dir_of(k)`` is the job folder of the k-th submitted job. Returns the cancelled ids when ``run`` exits.
    """
    cancelled: list[str] = []
    deadline = time.time() + timeout
    while run.proc.poll() is None:
        assert time.time() < deadline, f"the run did not exit within {timeout} s:\n{run.output()[-4000:]}"
        for k, jid in enumerate(slurm_ids(sweep_dir)):
            if k >= skip and jid not in cancelled and summary(job_dir_of(k)).get("status") == "running":
                subprocess.run(["scancel", jid], check=True, timeout=30)
                cancelled.append(jid)
        time.sleep(0.2)
    return cancelled


def drop_study(name: str, url: str) -> None:
    import optuna

    try:
        optuna.delete_study(study_name=name, storage=url)
    except KeyError:  # never created (the test failed before)
        pass


def test_a_multirun_runs_each_job_as_a_slurm_job(cluster, tmp_path):
    mr = tmp_path / "mr"
    run = Lpreg(["-m", "regularizer=lpreg,none", "trainer.steps=5", "eval.every=5", *SMALL, *slurm_args(cluster),
                 f"hydra.sweep.dir={mr}"], cwd=tmp_path)
    assert run.wait() == 0, run.output()[-4000:]
    ids = slurm_ids(mr)
    assert len(ids) == 2 and ids[0].endswith("_0") and ids[1].endswith("_1"), ids  # one array of two jobs
    assert sacct_states(ids) == {i: "COMPLETED" for i in ids}
    for job, reg in (("0_lpreg_s0", "lpreg"), ("1_none_s0", "none")):
        s = summary(mr / job)
        assert s["status"] == "completed" and s["regularizer"] == reg and s["final_step"] == 5
        steps = [json.loads(line)["step"] for line in (mr / job / "metrics.jsonl").read_text().splitlines()]
        assert sorted(set(steps)) == [0, 1, 2, 3, 4, 5]  # the initial evaluation, then the 5 steps
    with open(mr / "multirun_summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["job"], r["status"]) for r in rows] == [("0_lpreg_s0", "completed"), ("1_none_s0", "completed")]
    assert "| 0_lpreg_s0 | lpreg | 0 | completed |" in run.output()
    print(f"sacct: {sacct_states(ids)}")


def test_two_sweep_workers_share_a_postgresql_study(cluster, tmp_path):
    import optuna

    url, name = cluster["LPREG_PG_URL"], f"cluster_{uuid.uuid4().hex[:8]}"
    sw = tmp_path / "sw"
    # n_trials is the study's total: two workers share 4 trials (a race between two asks can add one)
    args = ["-m", "+sweep=lpreg_core", "sweep.n_trials=4", "sweep.startup_trials=1", f"sweep.name={name}",
            f"sweep.storage={url}", "trainer.steps=2", "eval.every=2", *SMALL, *slurm_args(cluster),
            f"hydra.sweep.dir={sw}"]
    workers = [Lpreg(args, cwd=tmp_path, name=f"worker{k}") for k in range(2)]  # the README's "several workers"
    try:
        codes = [w.wait() for w in workers]
        assert codes == [0, 0], "\n".join(w.output()[-3000:] for w in workers)
        study = optuna.load_study(study_name=name, storage=url)
        n = len(study.trials)
        assert n in (4, 5) and [t.state.name for t in study.trials] == ["COMPLETE"] * n
        assert sorted(t.number for t in study.trials) == list(range(n))  # no trial number used twice
        assert sorted(p.name for p in sw.glob("trial_*")) == [f"trial_{k:04d}_s0" for k in range(n)]
        for t in study.trials:
            assert t.value == pytest.approx(summary(sw / f"trial_{t.number:04d}_s0")["objective"])
        ids = slurm_ids(sw)
        assert len(ids) == n and sacct_states(ids) == {i: "COMPLETED" for i in ids}
        print(f"sacct: {sacct_states(ids)}")
    finally:
        drop_study(name, url)


def test_a_job_killed_by_slurm_fails_the_multirun(cluster, tmp_path):
    mr = tmp_path / "mr"
    jobs = ["0_none_s0", "1_none_s0"]  # job 1 is long: it is still running when it is cancelled
    run = Lpreg(["-m", "trainer.steps=2,400", "eval.every=0", *SMALL, *slurm_args(cluster), f"hydra.sweep.dir={mr}"],
                cwd=tmp_path)
    cancelled = cancel_when_running(mr, lambda k: mr / jobs[k], run, skip=1)
    assert run.wait() != 0, run.output()[-4000:]
    ids = slurm_ids(mr)
    assert cancelled == [ids[1]] and sacct_states(ids) == {ids[0]: "COMPLETED", ids[1]: "CANCELLED"}
    with open(mr / "multirun_summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["job"], r["status"]) for r in rows] == [("0_none_s0", "completed"), ("1_none_s0", "failed")]
    assert "1 of 2 jobs did not complete: 1_none_s0" in run.output()
    print(f"sacct: {sacct_states(ids)}")


def test_a_trial_killed_by_slurm_is_told_fail_and_the_sweep_goes_on(cluster, tmp_path):
    import optuna

    url, name = cluster["LPREG_PG_URL"], f"cluster_{uuid.uuid4().hex[:8]}"
    sw = tmp_path / "sw"
    run = Lpreg(["-m", "+sweep=lpreg_core", "sweep.n_trials=2", "sweep.startup_trials=1", f"sweep.name={name}",
                 f"sweep.storage={url}", "trainer.steps=400", "eval.every=0", *SMALL, *slurm_args(cluster),
                 f"hydra.sweep.dir={sw}"],
                cwd=tmp_path)
    try:
        cancelled = cancel_when_running(sw, lambda k: sw / f"trial_{k:04d}_s0", run)  # both trials' jobs
        assert run.wait() == 0, run.output()[-4000:]  # in a sweep, failed trials are the study's record
        study = optuna.load_study(study_name=name, storage=url)
        assert [t.state.name for t in study.trials] == ["FAIL", "FAIL"]
        ids = slurm_ids(sw)
        assert cancelled == ids and sacct_states(ids) == {i: "CANCELLED" for i in ids}
        assert json.loads((sw / "best.json").read_text())["n_trials"]["FAIL"] == 2
        with open(sw / "multirun_summary.csv") as fh:
            assert [(r["job"], r["status"]) for r in csv.DictReader(fh)] == [
                ("trial_0000_s0", "failed"), ("trial_0001_s0", "failed")]
        print(f"sacct: {sacct_states(ids)}")
    finally:
        drop_study(name, url)


def test_a_job_of_two_slurm_tasks_is_refused_with_the_way_to_go(cluster, tmp_path):
    """The native trainer is one process: a job launched as 2 SLURM tasks (submitit ``tasks_per_node=2``) stops before
    any work, each task saying why and what to use instead (backend=verl), and the multirun fails."""
    mr = tmp_path / "mr"
    run = Lpreg(["-m", "trainer.steps=2", "trainer.prompts_per_step=4", *slurm_args(cluster),
                 "hydra.launcher.tasks_per_node=2", f"hydra.sweep.dir={mr}"], cwd=tmp_path)
    assert run.wait() != 0
    ids = slurm_ids(mr)
    assert len(ids) == 1
    logs = "".join(p.read_text() for p in (mr / ".submitit" / ids[0]).glob("*_log.*"))
    assert "the native trainer is one process" in logs and "backend=verl" in logs
    assert not (mr / "0_none_s0" / "metrics.jsonl").exists()
