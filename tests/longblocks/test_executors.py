"""Stages as tasks beside the stage runner (longblocks.executors): the same bytes from `local`, a real
local Ray cluster and submitit's local executor (Slurm's code path) for a given number of tasks; the
same kept rows as one task from select on; the stepwise dedup keeps exactly the one-process dedup's
ids; a worker SIGKILLed mid-stage, a Ray node removed mid-stage and a driver killed and restarted each
end with the same bytes; a task that fails for its own reason is one line naming it, its siblings'
committed work kept; a rerun of a finished run changes nothing."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import cli, random_text
from dedup_corpus import planted_corpus
from longblocks.records import DOCUMENT_SCHEMA
from longblocks.store import input_files
from openai_double import ScriptedServer

pytestmark = pytest.mark.slow
EXE = str(Path(sys.executable).parent / "longblocks")


def data_bytes(stage: Path) -> str:
    """A digest of a stage's kept records as downstream reads them: every part's bytes, task after task."""
    digest = hashlib.sha256()
    for path in input_files(stage):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def kept_ids(stage: Path) -> set[str]:
    return {i for f in input_files(stage) for i in pq.read_table(f, columns=["id"])["id"].to_pylist()}


@pytest.fixture(scope="module")
def documents(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2,000 documents with planted near-duplicates and exact copies, as six parquet shards."""
    import random

    root = tmp_path_factory.mktemp("corpus") / "docs"
    root.mkdir()
    docs, _ = planted_corpus(seed=3, bases_per_language=60)  # 480 documents with near-duplicates
    rng = random.Random(1)
    from longblocks.records import make_document

    docs += [make_document(source="local", language="en", text=f"Filler {i}. " + random_text(rng, 120))
             for i in range(2000 - len(docs) - 40)]
    docs += [dict(docs[7], id=f"copy-{i:02d}", text=docs[7]["text"]) for i in range(40)]  # exact copies
    rows = [dict(d, id=d["id"]) for d in docs]
    for k in range(6):
        pq.write_table(pa.Table.from_pylist(rows[k::6], schema=DOCUMENT_SCHEMA), root / f"shard-{k}.parquet")
    return root


def pipeline(path: Path, out: Path, docs: Path, executor: str = "", extra: str = "") -> Path:
    path.write_text(f'[run]\nout = "{out}"\npart_size = 50\n[source]\nname = "local:{docs}"\n'
                    f'[select]\nmin_tokens = 50\nmax_tokens = 100000\n{extra}' + (f"[executor]\n{executor}" if executor else ""))
    return path


def test_local_ray_and_slurm_write_the_same_bytes_and_the_same_rows_as_one_task(documents: Path, tmp_path: Path) -> None:
    digests, ids = {}, {}
    for name, executor in (("one", ""), ("local", "tasks = 3\nworkers = 2\n"),
                           ("ray", 'kind = "ray"\ntasks = 3\nworkers = 2\n'),
                           ("slurm", 'kind = "slurm"\nslurm_cluster = "local"\ntasks = 3\n')):
        out = tmp_path / name
        # sample as one task in every run: from select on, tasks may not change which rows are kept
        per_stage = 'stages = { sample = { tasks = 1 } }\n' if executor else ""
        cli("longblocks", "-q", "run", str(pipeline(tmp_path / f"{name}.toml", out, documents, executor + per_stage)),
            timeout=600)
        digests[name] = {stage: data_bytes(out / stage) for stage in ("sample", "select", "dedup")}
        ids[name] = {stage: kept_ids(out / stage) for stage in ("select", "dedup")}
    assert digests["local"] == digests["ray"] == digests["slurm"], digests
    assert ids["one"] == ids["local"], "from select on, three tasks keep the rows one task keeps"
    one = json.loads((tmp_path / "one" / "dedup" / "manifest.json").read_text())
    three = json.loads((tmp_path / "ray" / "dedup" / "manifest.json").read_text())
    assert three["tasks"] == ["task-00000", "task-00001", "task-00002"] and three["status"] == "complete"
    assert (three["outputs"]["kept"], three["rejected"]) == (one["outputs"]["kept"], one["rejected"])
    assert one["rejected"]["near_duplicate"] >= 100, one["rejected"]  # the planted near-duplicates
    # a rerun of a finished run changes nothing, manifests included
    before = {p: p.read_bytes() for p in (tmp_path / "ray").rglob("*") if p.is_file() and ".slurm" not in p.parts}
    cli("longblocks", "-q", "run", str(tmp_path / "ray.toml"), timeout=600)
    assert {p: p.read_bytes() for p in (tmp_path / "ray").rglob("*")
            if p.is_file() and ".slurm" not in p.parts} == before


def test_the_stepwise_dedup_keeps_the_one_process_dedups_ids(documents: Path, tmp_path: Path) -> None:
    from longblocks.config import DedupSection, ExecutorSection, stage_spec
    from longblocks.executors import run_sharded
    from longblocks.pipeline import run

    one = run("dedup", DedupSection(), [documents], tmp_path / "one")
    four = run_sharded(stage_spec("dedup"), DedupSection(), {}, [documents], tmp_path / "four",
                       cfg=ExecutorSection(tasks=4), part_size=100, overwrite=False)
    assert kept_ids(tmp_path / "one") == kept_ids(tmp_path / "four")
    assert four["stats"]["clusters"] == one["stats"]["clusters"] and four["rejected"] == one["rejected"]
    # the exact copies are checked against their first copy: 39 pairs, not 40 x 39 / 2
    assert one["stats"]["candidate_pairs"] < 400, one["stats"]


def test_a_task_that_fails_for_its_own_reason_is_one_line_and_its_siblings_work_is_kept(documents: Path,
                                                                                         tmp_path: Path) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for shard in sorted(documents.glob("*.parquet"))[:3]:
        (inputs / shard.name).write_bytes(shard.read_bytes())
    damaged = inputs / "shard-1.parquet"
    damaged.write_bytes(damaged.read_bytes()[:200])  # only task 2 reads it
    from longblocks.config import ExecutorSection, SelectConfig
    from longblocks.errors import LongBlocksError
    from longblocks.executors import TASK, Task, engine

    cfg = ExecutorSection(kind="ray", tasks=3, retries=0)
    tasks = [Task("select", SelectConfig(min_tokens=50), {}, (str(f),), str(tmp_path / "select" / TASK.format(k)), k, 3,
                  50, False) for k, f in enumerate(sorted(inputs.glob("*.parquet")))]
    with pytest.raises(LongBlocksError) as failure:
        engine(cfg, "select", tmp_path / "select").run(tasks)
    line = str(failure.value)
    assert "select task 2/3 (1 input file(s)) failed" in line and str(damaged) in line and "cannot be read" in line
    assert "\n" not in line and "committed work is kept" in line
    for k in (0, 2):
        assert json.loads((tmp_path / "select" / TASK.format(k) / "manifest.json").read_text())["status"] == "complete"


def ray_workers() -> list[int]:
    """PIDs of Ray worker processes running a task (their process title is `ray::call`)."""
    import psutil

    return [p.pid for p in psutil.process_iter(["cmdline"]) if "ray::call" in " ".join(p.info["cmdline"] or [])]


def test_a_worker_killed_and_the_driver_killed_mid_stage_end_with_the_same_bytes(documents: Path,
                                                                                  tmp_path: Path) -> None:
    """A Ray worker SIGKILLed while its task runs: Ray runs the task again, which resumes from its
    committed parts. Then the driver itself SIGKILLed mid-stage and the command run again."""
    executor = 'kind = "ray"\ntasks = 3\nworkers = 2\nstages = { sample = { tasks = 1 } }\n'
    slow = ""
    reference = tmp_path / "reference"
    cli("longblocks", "-q", "run", str(pipeline(tmp_path / "ref.toml", reference, documents, executor, slow)), timeout=600)
    for name, victim in (("worker", "worker"), ("driver", "driver")):
        out = tmp_path / name
        config = pipeline(tmp_path / f"{name}.toml", out, documents, executor, slow)
        driver = subprocess.Popen([EXE, "-q", "run", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True, start_new_session=True)
        # mid-stage: dedup's hashing, the longest task of the run, has committed a part
        marker = out / "dedup" / "signatures" / "task-00000" / "consumed" / "part-00001.parquet"
        deadline = time.monotonic() + 300
        while not marker.exists() and time.monotonic() < deadline and driver.poll() is None:
            time.sleep(0.01)
        assert marker.exists(), driver.stderr.read() if driver.poll() is not None else "no part committed in time"
        if victim == "worker":
            workers = ray_workers()
            assert workers, "no Ray worker running a task"
            os.kill(workers[0], signal.SIGKILL)
            _, stderr = driver.communicate(timeout=600)
            assert driver.returncode == 0, stderr[-3000:]
        else:
            os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray cluster it started
            driver.wait()
            cli("longblocks", "-q", "run", str(config), timeout=600)
        for stage in ("sample", "select", "dedup"):
            assert data_bytes(out / stage) == data_bytes(reference / stage), (name, stage)


def test_a_ray_node_removed_mid_stage_ends_with_the_same_bytes(documents: Path, tmp_path: Path) -> None:
    """A cluster of a head and two worker nodes (ray.cluster_utils.Cluster); one worker node is
    removed while the select tasks run: the tasks it held run again elsewhere and resume."""
    import ray
    from ray.cluster_utils import Cluster

    from longblocks.config import load_pipeline
    from longblocks.pipeline import run_pipeline

    reference = tmp_path / "reference"
    cli("longblocks", "-q", "run", str(pipeline(tmp_path / "ref.toml", reference, documents,
                                                "tasks = 4\nstages = { sample = { tasks = 1 } }\n")), timeout=600)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0}, connect=False)
    workers = [cluster.add_node(num_cpus=2) for _ in range(2)]
    cluster.wait_for_nodes()
    out = tmp_path / "nodes"
    cfg = load_pipeline(pipeline(tmp_path / "nodes.toml", out, documents,
                                 f'kind = "ray"\naddress = "{cluster.address}"\ntasks = 4\nretries = 3\n'
                                 'stages = { sample = { tasks = 1 } }\n'))
    errors: list[BaseException] = []

    def drive() -> None:
        try:
            run_pipeline(cfg)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(exc)

    try:
        thread = threading.Thread(target=drive)
        thread.start()
        marker = out / "dedup" / "signatures" / "task-00000" / "consumed" / "part-00001.parquet"
        deadline = time.monotonic() + 300
        while not marker.exists() and time.monotonic() < deadline and thread.is_alive():
            time.sleep(0.01)
        cluster.remove_node(workers[0])
        thread.join(timeout=600)
        assert not errors, errors
    finally:
        ray.shutdown()
        cluster.shutdown()
    for stage in ("sample", "select", "dedup"):
        assert data_bytes(out / stage) == data_bytes(reference / stage), stage


def test_an_llm_pipeline_publishes_the_same_bytes_on_ray_and_slurm_as_local(tmp_path: Path) -> None:
    """The quickstart's shape (sample to publish) with the LLM stages against the scripted OpenAI
    TEST DOUBLE, as two tasks per stage: the published shards are byte for byte the same."""
    docs = tmp_path / "docs"
    docs.mkdir()
    import random

    rng = random.Random(0)
    for i in range(8):
        (docs / f"{i:02d}.md").write_text(f"[[mode:good]] doc {i} " + random_text(rng, 90))
    published = {}
    with ScriptedServer() as server:
        for name, executor in (("local", "tasks = 2\n"), ("ray", 'kind = "ray"\ntasks = 2\n'),
                               ("slurm", 'kind = "slurm"\nslurm_cluster = "local"\ntasks = 2\n')):
            out = tmp_path / name
            (tmp_path / f"{name}.toml").write_text(
                f'[run]\nout = "{out}"\npart_size = 2\n[source]\nname = "local:{docs}"\n[select]\nmin_tokens = 10\n'
                f'[generate]\nmodel = "m"\nbase_url = "{server.base_url}"\nn_questions = 2\n'
                f'[judge]\nmodel = "j"\nbase_url = "{server.base_url}"\n'
                f'[[respond.responders]]\nname = "r"\nmodel = "r"\nbase_url = "{server.base_url}"\n'
                f'[publish]\nlicense = "cc-by-4.0"\n[executor]\n{executor}')
            cli("longblocks", "-q", "run", str(tmp_path / f"{name}.toml"), timeout=600)
            published[name] = {p.name: p.read_bytes() for p in (out / "publish" / "data").glob("*.parquet")}
    assert published["local"] and published["local"] == published["ray"] == published["slurm"]
