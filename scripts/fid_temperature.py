"""FID (and KID) of a checkpoint's samples at several temperatures, and the plot.

The model, the feature network and the reference statistics are loaded once; each temperature
decodes the same latent draw (seed 0), so only the temperature changes between points.

Example (the main job's checkpoint)::

    python scripts/fid_temperature.py logs/fmnist_glow_cpu/runs/<time>/checkpoints/last.ckpt \\
        --temperatures 0.5 0.6 0.7 0.8 0.9 1.0 --n 10000 --out docs/images

Writes ``fid_vs_temperature.png`` (the first metric) and ``fid_vs_temperature.json`` (every
number) to ``--out`` and prints a Markdown table. The feature network and reference statistics
are glowlab-eval's (``--features``, cached under ``--cache-dir``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from glowlab.metrics import build_metrics
from glowlab.metrics.base import Batch
from glowlab.outputs import save_image, write_text
from glowlab.tools.loading import build_datamodule, load_flow
from glowlab.tools.plots import line_plot


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt", type=Path)
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.6, 0.7, 0.8, 0.9, 1])
    parser.add_argument("--n", type=int, default=10_000, help="samples (and real images)")
    parser.add_argument("--metrics", nargs="+", default=["fid", "kid"])
    parser.add_argument("--features", default="auto", help="auto | inception | classifier")
    parser.add_argument("--cache-dir", default="logs/cache")
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args(argv)

    model, run_config = load_flow(args.ckpt)
    datamodule = build_datamodule(run_config, None, model)
    rows = []
    for t in args.temperatures:
        metrics = build_metrics(
            args.metrics,
            model,
            "--metrics",
            {"samples"},
            datamodule=datamodule,
            n=args.n,
            features=args.features,
            temperature=t,
            cache_dir=args.cache_dir,
        )
        started = time.perf_counter()
        batch = Batch.without_images(model)
        row = {"temperature": t}
        for metric in metrics:
            metric.update(batch)
            row.update(metric.compute())
        row["seconds"] = round(time.perf_counter() - started, 1)
        rows.append(row)
        print(json.dumps(row))
    keys = [metric.key for metric in metrics]
    args.out.mkdir(parents=True, exist_ok=True)
    series = {keys[0]: ([r["temperature"] for r in rows], [r[keys[0]] for r in rows])}
    title = f"{datamodule.name}: {keys[0]} of n={args.n} samples vs temperature"
    plot = line_plot(series, "temperature", keys[0], title)
    save_image(plot, args.out / "fid_vs_temperature.png")
    write_text(args.out / "fid_vs_temperature.json", json.dumps(rows, indent=1) + "\n")
    print("| T | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys))
    for r in rows:
        print(f"| {r['temperature']:g} | " + " | ".join(f"{r[k]:.4g}" for k in keys) + " |")


if __name__ == "__main__":
    main()
