"""Two default `dvc repro`s at once on one machine, against one alone (dbdpo.threads).

    python bench/concurrency.py [--out concurrency.json] [--fixed-threads N]

Clones the repository's committed HEAD three times into a temporary folder, runs `dvc repro`
in the first alone, then in the other two at the same time, and prints each wall time and the
ratio of the pair's (the later of the two to finish) to the one alone. Two runs sharing the
cores perfectly take twice as long as one; the issue's bar is 2.2x on 2 cores.

`--fixed-threads N` gives every run OMP_NUM_THREADS=N instead of the stages' share of the
cores: with N = the cores, that is what two runs did before stages shared them (each took
every core). The bench runs the default pipeline three times, two of them at once; the
fixed-thread comparison can take far longer (that is its point).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from code_version import code_commit  # bench/code_version.py

from dbdpo.threads import cores

ROOT = Path(__file__).resolve().parents[1]


def clone(work: Path, name: str) -> Path:
    """A clone of the committed HEAD (what `git clone` gives a user): the world's data and weights
    are in git, so `dvc repro` runs every stage there."""
    target = work / name
    subprocess.run(["git", "clone", "-q", str(ROOT), str(target)], check=True)
    return target


def start_repro(project: Path, fixed_threads: int | None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env |= {"HF_HUB_OFFLINE": "1", "DVC_NO_ANALYTICS": "1"}
    if fixed_threads is not None:
        env["OMP_NUM_THREADS"] = str(fixed_threads)
    log = (project / "repro.log").open("w")
    return subprocess.Popen(["dvc", "repro", "--quiet"], cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_all(runs: dict[str, subprocess.Popen], t0: float) -> dict[str, float]:
    """Each run's wall seconds from t0; exits naming the log of a run that failed."""
    seconds = {}
    while len(seconds) < len(runs):
        for name, run in runs.items():
            if name not in seconds and run.poll() is not None:
                if run.returncode != 0:
                    sys.exit(f"dvc repro in {name} failed (rc {run.returncode}); see its repro.log")
                seconds[name] = time.time() - t0
        time.sleep(0.5)
    return seconds


def metrics(project: Path) -> dict:
    return json.loads((project / "metrics.json").read_text())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    parser.add_argument("--fixed-threads", type=int, help="OMP_NUM_THREADS for every run instead of the shares")
    args = parser.parse_args(argv)
    commit = code_commit()
    with tempfile.TemporaryDirectory(prefix="dbdpo-concurrency-") as tmp:
        work = Path(tmp)
        alone, first, second = (clone(work, name) for name in ("alone", "first", "second"))
        t0 = time.time()
        one = wait_all({"alone": start_repro(alone, args.fixed_threads)}, t0)["alone"]
        print(f"one dvc repro alone: {one:.0f} s", flush=True)
        t0 = time.time()
        pair = wait_all({"first": start_repro(first, args.fixed_threads),
                         "second": start_repro(second, args.fixed_threads)}, t0)
        same = metrics(first) == metrics(second)
        result = {"cores": cores(), "threads": args.fixed_threads or "share", "alone_s": one,
                  "together_s": pair, "ratio": max(pair.values()) / one,
                  "together_metrics_equal": same, "alone_metrics_equal": metrics(alone) == metrics(first),
                  "commit": commit}
    print(f"two at once: {pair['first']:.0f} s and {pair['second']:.0f} s; "
          f"ratio {result['ratio']:.2f}x one alone (2.00x: the cores shared perfectly) on {result['cores']} cores")
    print(f"the two runs' metrics.json are {'identical' if same else 'different'}; "
          f"{'identical' if result['alone_metrics_equal'] else 'different'} to the run alone")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
