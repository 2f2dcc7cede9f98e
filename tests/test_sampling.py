import numpy as np
import pandas as pd
import pytest
import yaml

from dbdpo.errors import ConfigError
from dbdpo.params import config_from_dict
from dbdpo.sampling import SAMPLE_COLUMNS, generate, plan_samples, write_samples
from dbdpo.world.backbone import build_world_pipeline
from tests.conftest import REPO


def test_plan_gives_each_image_its_own_seed():
    plan = plan_samples(["t0", "t1"], ["p0", "p1"], images_per_prompt=3, seed=100)
    assert [r.image_id for r in plan] == ["p0000_k00", "p0000_k01", "p0000_k02", "p0001_k00", "p0001_k01", "p0001_k02"]
    assert [r.seed for r in plan] == [100, 101, 102, 103, 104, 105]
    assert [r.prompt for r in plan] == ["p0"] * 3 + ["p1"] * 3


@pytest.mark.slow
def test_an_image_depends_on_its_seed_not_on_its_batch():
    pipe = build_world_pipeline()
    plan = plan_samples(["t"] * 2, ["a photo of sks toy", "a sks toy in the snow"], 2, seed=7)
    kw = dict(steps=3, guidance_scale=7.5, resolution=64)
    one_by_one = [np.asarray(i, dtype=int) for i in generate(pipe, plan, batch_size=1, **kw)]
    batched = [np.asarray(i, dtype=int) for i in generate(pipe, plan, batch_size=4, **kw)]
    for a, b in zip(one_by_one, batched):
        assert np.abs(a - b).max() <= 1  # batched CPU kernels may round differently by 1/255
    assert np.abs(one_by_one[0] - one_by_one[1]).mean() > 1  # different seeds, different images


def test_write_samples_is_atomic_and_complete(tmp_path):
    from PIL import Image

    plan = plan_samples(["t"], ["a sks toy"], 2, seed=0)
    images = [Image.new("RGB", (8, 8), (i * 100, 0, 0)) for i in range(2)]
    frame = write_samples(plan, images, tmp_path / "images", tmp_path / "samples.parquet")
    assert list(frame.columns) == SAMPLE_COLUMNS
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["p0000_k00.png", "p0000_k01.png"]
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "samples.parquet"), frame)
    # a failure halfway (one image missing) leaves neither a new image dir nor a manifest
    with pytest.raises(ValueError):
        write_samples(plan, images[:1], tmp_path / "again", tmp_path / "again.parquet")
    assert not (tmp_path / "again").exists() and not (tmp_path / "again.parquet").exists()
    assert not list(tmp_path.glob(".tmp-*"))


@pytest.mark.slow
def test_fixed_seeds_give_byte_identical_artifacts(tmp_path):
    plan = plan_samples(["t"], ["a photo of sks toy"], 2, seed=3)
    kw = dict(steps=3, guidance_scale=7.5, batch_size=2, resolution=64)
    for run in ("a", "b"):
        write_samples(plan, generate(build_world_pipeline(), plan, **kw), tmp_path / run / "images",
                      tmp_path / run / "samples.parquet")
    for name in ("p0000_k00.png", "p0000_k01.png"):
        assert (tmp_path / "a/images" / name).read_bytes() == (tmp_path / "b/images" / name).read_bytes()


@pytest.mark.parametrize("name", ["ddim", "dpmpp_2m", "euler_a"])
def test_the_scheduler_param_picks_diffusers_sampler_with_the_models_own_config(name):
    pipe = build_world_pipeline()
    plan = plan_samples(["t"], ["a sks toy in the snow"], 1, seed=5)
    kw = dict(steps=4, guidance_scale=7.5, resolution=64, batch_size=1)
    reference = np.asarray(generate(pipe, plan, scheduler="ddim", **kw)[0], dtype=int)
    image = np.asarray(generate(pipe, plan, scheduler=name, **kw)[0], dtype=int)
    expected = {"ddim": "DDIMScheduler", "dpmpp_2m": "DPMSolverMultistepScheduler",
                "euler_a": "EulerAncestralDiscreteScheduler"}[name]
    assert type(pipe.scheduler).__name__ == expected
    assert pipe.scheduler.config.prediction_type == "epsilon" and pipe.scheduler.config.num_train_timesteps == 1000
    if name == "dpmpp_2m":
        assert pipe.scheduler.config.algorithm_type == "dpmsolver++" and pipe.scheduler.config.solver_order == 2
    # another sampler draws another image from the same seed; the same one draws it again
    assert (np.abs(image - reference).mean() > 1) == (name != "ddim")
    again = np.asarray(generate(pipe, plan, scheduler=name, **kw)[0], dtype=int)
    assert np.array_equal(again, image)


def test_an_unknown_scheduler_is_refused_with_the_choices():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["evaluate"]["scheduler"] = "pndm"
    with pytest.raises(ConfigError, match="evaluate.scheduler='pndm' is invalid: expected one of ddim \\| dpmpp_2m "
                                          "\\| euler_a"):
        config_from_dict(raw)
