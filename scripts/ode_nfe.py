"""Function evaluations (NFE) of an ODE-based checkpoint (FFJORD, RNODE, flow matching).

For each checkpoint: the NFE summed over the model's ODE blocks for one batch of ``--n``
samples and for evaluating the bpd (one uniform dequantization draw) of the first ``--n``
test images (one solve serves the whole batch,
so these are also the NFE per sample), and the seconds each took.

    python scripts/ode_nfe.py logs/.../checkpoints/last.ckpt [more.ckpt ...] --n 16
"""

from __future__ import annotations

import argparse
import time

import torch

from glowlab.bijections.cnf import ODEFlow
from glowlab.tools.loading import build_datamodule, load_flow, split_loader


def _nfe(model: torch.nn.Module) -> int:
    return sum(block.last_nfe for block in model.modules() if isinstance(block, ODEFlow))


def measure(path: str, n: int) -> dict[str, float]:
    model, config = load_flow(path)
    if not any(isinstance(m, ODEFlow) for m in model.modules()):
        raise SystemExit(f"ode_nfe: error: {path} has no ODE blocks")
    images, _ = next(iter(split_loader(build_datamodule(config, model=model), "test", n)))
    x = images[:n]
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(0))  # one u ~ U[0, 1)
    torch.manual_seed(0)
    started = time.perf_counter()
    with torch.no_grad():
        bpd = model.bits_per_dim(x, noise=noise).mean().item()
    eval_nfe, eval_s = _nfe(model), time.perf_counter() - started
    started = time.perf_counter()
    model.sample(n, temperature=1.0)
    return {
        "bpd": round(bpd, 4),
        "eval_nfe": eval_nfe,
        "eval_s": round(eval_s, 2),
        "sample_nfe": _nfe(model),
        "sample_s": round(time.perf_counter() - started, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--n", type=int, default=16, help="images per batch")
    args = parser.parse_args()
    for path in args.checkpoints:
        print(path, measure(path, args.n))


if __name__ == "__main__":
    main()
