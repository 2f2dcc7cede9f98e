"""Every artifact is byte-identical when a stage reruns on the same inputs (same machine).

Otherwise dvc.lock changes on a forced rerun and DVC reruns every stage downstream for nothing;
the LoRA's metadata order did exactly that about half the time.
"""

import hashlib

import pytest

from tests.test_e2e_dvc import copy_project, fast_params, run

pytestmark = pytest.mark.slow

OUTPUTS = ("models", "rounds", "eval", "logs", "metrics.json", "dvc.lock")


def digests(root) -> dict[str, str]:
    """md5 of every file the pipeline wrote."""
    out = {}
    for name in OUTPUTS:
        path = root / name
        for f in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if f.is_file():
                out[str(f.relative_to(root))] = hashlib.md5(f.read_bytes()).hexdigest()
    return out


def test_forced_rerun_writes_the_same_bytes(tmp_path):
    copy_project(tmp_path, fast_params(rounds=1))
    run(["dvc", "repro"], tmp_path)
    first = digests(tmp_path)
    assert len(first) > 20 and "models/round_1/pytorch_lora_weights.safetensors" in first

    run(["dvc", "repro", "--force"], tmp_path)
    second = digests(tmp_path)
    changed = sorted(k for k in first.keys() | second.keys() if first.get(k) != second.get(k))
    assert changed == []
    assert "Data and pipelines are up to date" in run(["dvc", "repro"], tmp_path).stdout
