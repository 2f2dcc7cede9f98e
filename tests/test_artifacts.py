import os
import stat

import pytest

from dbdpo.artifacts import atomic_dir, atomic_file, read_parquet, write_json
from dbdpo.errors import StaleInputError


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_a_nan_is_never_written(tmp_path):
    write_json({"IS": 0.5}, tmp_path / "metrics.json")
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        write_json({"IS": float("nan")}, tmp_path / "metrics.json")
    assert (tmp_path / "metrics.json").read_text() == '{\n  "IS": 0.5\n}\n'  # the earlier file, untouched
    assert list(tmp_path.iterdir()) == [tmp_path / "metrics.json"]


def test_outputs_get_the_umask_modes_not_mkstemps_private_ones(tmp_path, umask_022):
    write_json({"a": 1}, tmp_path / "m.json")
    with atomic_dir(tmp_path / "lora") as d:
        (d / "w.safetensors").write_bytes(b"x")
        (d / "sub").mkdir()
    assert mode(tmp_path / "m.json") == 0o644
    assert mode(tmp_path / "lora") == 0o755 and mode(tmp_path / "lora/sub") == 0o755
    assert mode(tmp_path / "lora/w.safetensors") == 0o644


def test_a_write_whose_rename_fails_leaves_no_temp_file(tmp_path):
    """A file written over a folder once left its .tmp- sibling behind after the failed rename."""
    (tmp_path / "lora.safetensors").mkdir()
    with pytest.raises(OSError), atomic_file(tmp_path / "lora.safetensors") as f:
        f.write_bytes(b"weights")
    assert [p.name for p in tmp_path.iterdir()] == ["lora.safetensors"]


def test_a_corrupt_table_is_named_with_what_to_do(tmp_path):
    """A truncated parquet once surfaced as a raw ArrowInvalid."""
    (tmp_path / "scores.parquet").write_bytes(b"PAR1 then nothing")
    with pytest.raises(StaleInputError, match=r"scores.parquet: unreadable \(ArrowInvalid: .*\); delete it and rerun "
                                              r"the stage that writes it"):
        read_parquet(tmp_path / "scores.parquet", ["IS"])


def test_leftovers_of_a_killed_write_are_removed_by_the_next_write(tmp_path):
    # what a SIGKILL during a write leaves behind (no except/finally runs)
    (tmp_path / ".tmp-images-abc123").mkdir()
    (tmp_path / ".tmp-images-abc123/p0000_k00.png").write_bytes(b"half")
    (tmp_path / ".old-images-def456").mkdir()
    (tmp_path / ".tmp-scores.parquet-xyz").write_bytes(b"half")
    (tmp_path / ".tmp-other-keep").mkdir()  # another target's: not ours to remove
    with atomic_dir(tmp_path / "images") as d:
        (d / "p0000_k00.png").write_bytes(b"whole")
    with atomic_file(tmp_path / "scores.parquet") as f:
        f.write_bytes(b"table")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-other-keep", "images", "scores.parquet"]
    assert (tmp_path / "images/p0000_k00.png").read_bytes() == b"whole"



def test_a_folder_digest_follows_content_and_names_not_location(tmp_path):
    from dbdpo.provenance import digest

    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        (folder / "sub").mkdir(parents=True)
        (folder / "x.bin").write_bytes(b"weights")
        (folder / "sub" / "y.txt").write_text("pairs")
    assert digest(a) == digest(b)  # same files, another place
    (b / "sub" / "y.txt").write_text("other pairs")
    assert digest(a) != digest(b)
    (b / "sub" / "y.txt").write_text("pairs")
    (b / "x.bin").rename(b / "z.bin")
    assert digest(a) != digest(b)  # a renamed file is another folder
    assert digest(a / "x.bin") == "63f4f1e9b725370f459720575cd5f953"  # md5 of the bytes
