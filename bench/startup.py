"""How long a dbdpo command takes to answer when its work is small: the commands that read files
(`dbdpo show`, `check`, `status`) and the pair stage, each run as a user runs it (a fresh
process), against what every torch program pays before its first line of work (`python -c
'import torch'`), what a stage that trains, samples and scores imports (the model stack), and
the interpreter alone.

    python bench/startup.py [--repeat 5] [--out startup.json]

show, check and status run in the repository checkout (show reads eval/rounds.json, status
also runs `dvc status`); pair runs on a scored round of six images written into a temporary
project, so its own work is nothing next to its start. Prints each command's median wall time
over --repeat runs and its ratio to importing torch alone.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from code_version import code_commit  # bench/code_version.py

from dbdpo.provenance import RECORD_KEY, made_from

ROOT = Path(__file__).resolve().parents[1]
DBDPO = str(Path(sys.executable).parent / "dbdpo")  # the console script installed beside python
MODEL_STACK = "import dbdpo.training, dbdpo.sampling, dbdpo.scoring"


def scores_frame() -> pd.DataFrame:
    """Six images of two prompts as the score stage writes them, IS and TS rising together (so the
    angle filter keeps pairs)."""
    return pd.DataFrame({"image_id": [f"p{p}_k{k}" for p in range(2) for k in range(3)],
                         "prompt_id": [p for p in range(2) for _ in range(3)], "prompt": ["a sks toy"] * 6,
                         "path": [f"rounds/round_1/images/{i}.png" for i in range(6)], "IS": [0.1, 0.2, 0.3] * 2,
                         "TS": [0.1, 0.25, 0.3] * 2})


def scored_round(project: Path) -> Path:
    """`project` (an empty folder) with the repository's params and round_1 sampled and scored:
    the scores record the manifest and the images they were made from, as score writes them (the
    images are stand-in bytes: pair's Pick-a-Pic export only copies them). Returns round_1's folder."""
    shutil.copy(ROOT / "params.yaml", project / "params.yaml")
    out = project / "rounds/round_1"
    (out / "images").mkdir(parents=True)
    (out / "samples.parquet").write_bytes(b"the manifest score read")
    for i in range(6):
        (out / "images" / f"{i}.png").write_bytes(b"image %d" % i)
    scores = scores_frame()
    with contextlib.chdir(project):  # the record names its inputs relative to the project, as score writes it
        scores.attrs = {RECORD_KEY: made_from(Path("rounds/round_1/samples.parquet"), Path("rounds/round_1/images"))}
    scores.to_parquet(out / "scores.parquet")
    return out


def timed(argv: list[str], cwd: Path, repeat: int) -> list[float]:
    """Wall seconds of `repeat` runs of argv; exits naming the command if one fails."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DVC_NO_ANALYTICS": "1"}
    seconds = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
        seconds.append(time.perf_counter() - start)
        if result.returncode != 0:
            sys.exit(f"`{' '.join(argv)}` in {cwd} failed ({result.returncode}):\n{result.stderr}")
    return seconds


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="runs of each command (the median is reported)")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dbdpo-startup-") as tmp:
        project = Path(tmp)
        scored_round(project)
        commands = {"python -c pass": ([sys.executable, "-c", "pass"], ROOT),
                    "python -c 'import torch'": ([sys.executable, "-c", "import torch"], ROOT),
                    # what a stage that trains, samples and scores imports before its work
                    f"python -c '{MODEL_STACK}'": ([sys.executable, "-c", MODEL_STACK], ROOT),
                    "dbdpo show": ([DBDPO, "show"], ROOT),
                    "dbdpo check": ([DBDPO, "check"], ROOT),
                    "dbdpo status": ([DBDPO, "status"], ROOT),
                    "dbdpo pair --round round_1": ([DBDPO, "pair", "--round", "round_1"], project)}
        runs = {name: timed(command, cwd, args.repeat) for name, (command, cwd) in commands.items()}
    baseline = statistics.median(runs["python -c 'import torch'"])
    rows = [{"command": name, "median_s": statistics.median(s), "min_s": min(s),
             "ratio_to_torch_import": statistics.median(s) / baseline} for name, s in runs.items()]
    result = {"machine": platform.processor() or platform.machine(), "cores": os.cpu_count(),
              "repeat": args.repeat, "rows": rows, "commit": code_commit()}
    for row in rows:
        print(f"{row['command']:<28} {row['median_s']:6.2f} s  {row['ratio_to_torch_import']:5.2f}x importing torch")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
