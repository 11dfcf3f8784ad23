"""Benchmark: the whole main job, ``rlrec quickstart``, timed as a user runs it.

Runs the CLI in a subprocess (imports included) into a temporary directory and writes flat,
unit-named keys to ``--out``: the wall time (``quickstart_seconds``, or ``tiny_seconds`` with
``--quick``, which runs ``--tiny``), seconds per stage, PPO's env steps per second, the
report's headline numbers and the machine (CPU count, load average at the start, since the
budgets are stated for 2 cores). Targets: <= 900 s (default), <= 90 s (tiny).

    python benchmarks/bench_quickstart.py --out bench_quickstart.json
    python benchmarks/bench_quickstart.py --quick --out bench_quickstart_tiny.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rlrec.data.dataset import write_json_atomic

TARGET_SECONDS = {"default": 900.0, "tiny": 90.0}


def _key(stage: str) -> str:
    words = re.sub(r"\(.*?\)", "", stage).strip().lower()
    return "stage_" + re.sub(r"[^a-z0-9]+", "_", words).strip("_") + "_seconds"


def run(tiny: bool, seed: int, keep: Path | None) -> dict[str, Any]:
    """Run the quickstart once; return the flat benchmark record."""
    with tempfile.TemporaryDirectory(prefix="bench-quickstart-") as tmp:
        out = keep if keep is not None else Path(tmp) / "qs"
        # The console script beside this interpreter: what a user runs.
        rlrec = str(Path(sys.executable).parent / "rlrec")
        # --force: a --keep folder from an earlier benchmark is replaced (never anything else).
        cmd = [rlrec, "quickstart", "--out", str(out), "--json", "--force"]
        cmd += ["--seed", str(seed)] + (["--tiny"] if tiny else [])
        load = os.getloadavg()[0]
        started = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            sys.stderr.write(done.stderr)
            raise SystemExit(f"quickstart failed with exit code {done.returncode}")
        summary = json.loads(done.stdout)
    mode = "tiny" if tiny else "default"
    record: dict[str, Any] = {
        "mode": mode,
        f"{mode if tiny else 'quickstart'}_seconds": round(seconds, 2),
        "target_seconds": TARGET_SECONDS[mode],
        "within_target": seconds <= TARGET_SECONDS[mode],
        "stages_total_seconds": summary["total_seconds"],
        "ppo_timesteps": summary["train"]["timesteps"],
        "ppo_fps": summary["train"]["fps"],
        "cpu_count": os.cpu_count(),
        "load_average_at_start": round(load, 2),
        "seed": seed,
    }
    record.update({_key(stage): value for stage, value in summary["seconds"].items()})
    record.update({k: v for k, v in summary["headline"].items()})
    return record


def main() -> None:
    """Parse arguments, run the benchmark, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="JSON file to write")
    parser.add_argument("--quick", action="store_true", help="run 'rlrec quickstart --tiny'")
    parser.add_argument("--seed", type=int, default=0, help="seed of the quickstart")
    parser.add_argument("--keep", type=Path, default=None, help="keep the output directory here")
    args = parser.parse_args()
    record = run(args.quick, args.seed, args.keep)
    write_json_atomic(args.out, record)
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
