"""The multi-node path: two "nodes" × one process each on this machine (gloo), as a cluster
launcher would start them: Lightning's ``num_nodes=2`` with ``MASTER_ADDR``, ``MASTER_PORT``,
``NODE_RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` in the environment, one ``glowlab-train`` per
node, each with its own run dir. Only global rank 0 may write checkpoints, metrics, samples
and logs; ranks must hold the same weights after ActNorm's initialisation and at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import TINY_RUN

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 300


def _free_port() -> int:
    """A TCP port that nothing listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(node_rank: int, port: int, run_dir: Path, log: Path) -> subprocess.Popen:
    """Start node ``node_rank``'s ``python -m glowlab.train`` in its own process group."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC"))}
    env.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        NODE_RANK=str(node_rank),
        LOCAL_RANK="0",
        WORLD_SIZE="2",
        OMP_NUM_THREADS="1",
    )
    overrides = [
        *[a for a in TINY_RUN if a != "trainer.max_epochs=2"],
        "trainer=ddp_cpu",
        "trainer.devices=1",
        "trainer.num_nodes=2",
        "trainer.max_epochs=1",
        "logger=csv",
        f"hydra.run.dir={run_dir}",
    ]
    with open(log, "w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "glowlab.train", *overrides],
            cwd=run_dir.parent,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: killed with its children
        )


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def _written(run_dir: Path) -> set[str]:
    """What a run wrote besides Hydra's own per-process config and log."""
    return {
        str(p.relative_to(run_dir))
        for p in run_dir.rglob("*")
        if p.is_file() and ".hydra" not in p.parts and p.suffix != ".log"
    }


@pytest.mark.slow
def test_two_nodes_agree_and_only_global_rank_zero_writes(tmp_path: Path) -> None:
    port = _free_port()
    dirs = [tmp_path / f"node{i}" for i in range(2)]
    logs = [tmp_path / f"node{i}.out" for i in range(2)]
    for run_dir in dirs:
        run_dir.mkdir()
    procs = [_launch(i, port, dirs[i], logs[i]) for i in range(2)]
    deadline = time.monotonic() + TIMEOUT_S
    try:
        for proc in procs:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for proc in procs:
            _kill(proc)
    outputs = "\n".join(f"--- node {i}:\n{log.read_text()[-3000:]}" for i, log in enumerate(logs))
    assert [p.returncode for p in procs] == [0, 0], outputs

    metrics = json.loads((dirs[0] / "metrics.json").read_text())
    assert metrics["ranks_agree"] == {"after_actnorm_init": True, "at_end": True}
    assert metrics["steps"] == 4  # 128 images / (2 ranks × 16 a batch), one epoch
    assert metrics["test/bpd"] is not None and 0 < metrics["test/bpd"] < 16
    node0 = _written(dirs[0])
    assert "checkpoints/last.ckpt" in node0, sorted(node0)
    assert any(p.startswith("samples/") and p.endswith(".png") for p in node0), sorted(node0)
    assert Path(metrics["best_checkpoint"]).parent == dirs[0] / "checkpoints"
    assert _written(dirs[1]) == set(), f"global rank 1 wrote {sorted(_written(dirs[1]))}"
    assert not (dirs[1] / "checkpoints").exists() and not (dirs[1] / "samples").exists()
