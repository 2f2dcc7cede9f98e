import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dbdpo.config import ScoreConfig
from dbdpo.pairs import normalize
from dbdpo.scoring import (
    TINY_CLIP,
    AestheticMlp,
    ClipSimilarity,
    ScorerError,
    build_scorers,
    load_aesthetic,
    load_hps,
    load_open_clip,
    score_images,
    score_loaded,
)


def images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in range(n)]


def test_is_and_ts_are_the_papers_cosines():
    model, preprocess, tokenizer = load_open_clip("tiny", None)
    concept, generated = images(3, seed=1), images(2, seed=2)
    texts = ["a toy in the jungle", "a toy in the snow"]
    scorer = ClipSimilarity(model, preprocess, tokenizer, concept, {"TS": lambda t: t})
    out = scorer(generated, texts)
    with torch.no_grad():
        g = F.normalize(model.encode_image(torch.stack([preprocess(i) for i in generated])), dim=-1)
        c = F.normalize(model.encode_image(torch.stack([preprocess(i) for i in concept])), dim=-1)
        t = F.normalize(model.encode_text(tokenizer(texts)), dim=-1)
    expected_is = [np.mean([float(g[i] @ c[j]) for j in range(3)]) for i in range(2)]
    expected_ts = [float(g[i] @ t[i]) for i in range(2)]
    np.testing.assert_allclose(out["IS"], expected_is, atol=1e-6)
    np.testing.assert_allclose(out["TS"], expected_ts, atol=1e-6)


def test_a_concept_image_has_is_one_against_itself():
    model, preprocess, tokenizer = load_open_clip("tiny", None)
    (img,) = images(1)
    scorer = ClipSimilarity(model, preprocess, tokenizer, [img], {"TS": lambda t: t})
    assert scorer([img], ["x"])["IS"][0] == pytest.approx(1.0, abs=1e-6)


def test_score_images_reads_files_and_runs_every_scorer(tmp_path):
    paths = []
    for i, img in enumerate(images(5)):
        img.save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    scorers = build_scorers(ScoreConfig(dino_model="tiny"), images(2, seed=3),
                            {"TS": lambda t: t.upper(), "TS_raw": lambda t: t})
    table = score_images(paths, ["a toy"] * 5, scorers, batch_size=2)
    assert list(table.columns) == ["IS", "TS", "TS_raw", "DINO"] and len(table) == 5
    assert table["DINO"].between(-1, 1).all() and table["IS"].between(-1, 1).all()
    single = score_images(paths[3:4], ["a toy"], scorers, batch_size=2)
    np.testing.assert_allclose(single.iloc[0].to_numpy(), table.iloc[3].to_numpy(), atol=1e-6)
    # evaluate scores what it sampled without reading it back: the same numbers (PNG is lossless)
    in_memory = score_loaded(images(5), paths, ["a toy"] * 5, scorers, batch_size=2)
    np.testing.assert_array_equal(in_memory.to_numpy(), table.to_numpy())


def test_a_non_finite_score_names_the_image_and_writes_nothing(tmp_path):
    """A scorer that divides by the image's brightness gives NaN on an all-black image (what a
    diverged model draws); it must stop the stage, not reach the pairs."""
    from PIL import Image

    paths = []
    for i, color in enumerate([(120, 60, 30), (0, 0, 0)]):
        Image.new("RGB", (8, 8), color).save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))

    def redness_share(imgs, texts):
        pixels = np.stack([np.asarray(img, dtype=np.float64) for img in imgs])
        with np.errstate(invalid="ignore"):
            return {"IS": pixels[..., 0].sum(axis=(1, 2)) / pixels.sum(axis=(1, 2, 3))}

    with pytest.raises(ScorerError, match=f"{tmp_path / '1.png'}: IS is not finite"):
        score_images(paths, ["a toy"] * 2, [redness_share], batch_size=2)
    with pytest.raises(ScorerError, match="eval/images/round_1/p1_k0.png: IS is not finite"):
        score_loaded([Image.new("RGB", (8, 8), c) for c in [(120, 60, 30), (0, 0, 0)]],
                     ["eval/images/round_1/p0_k0.png", "eval/images/round_1/p1_k0.png"], ["a toy"] * 2,
                     [redness_share], batch_size=1)


def test_normalization_exact():
    x = np.array([1.0, 2.0, 3.0, 6.0])
    np.testing.assert_allclose(normalize(x, "zscore"), (x - 3.0) / np.sqrt(3.5))
    np.testing.assert_allclose(normalize(x, "minmax"), [0.0, 0.2, 0.4, 1.0])
    np.testing.assert_array_equal(normalize(x, "none"), x)
    np.testing.assert_array_equal(normalize(np.ones(3), "zscore"), np.zeros(3))


def test_unknown_clip_model_and_missing_weights_are_clear_errors(tmp_path):
    with pytest.raises(ScorerError, match="score.clip_model='ViT-Nope' is not an open_clip model"):
        load_open_clip("ViT-Nope", None)
    with pytest.raises(ScorerError, match="set score.clip_pretrained to its local path"):
        load_open_clip("ViT-B-32", str(tmp_path / "missing.safetensors"))


def test_a_real_clip_scores_with_random_weights_only_when_asked_by_name(caplog):
    """score.clip_pretrained null on a real architecture once scored every image with random
    weights (IS 0.9997 ± 0.0001) behind a warning; now it is an error naming the key, and
    random weights come only with the `random` tag."""
    with pytest.raises(ScorerError, match=r"score.clip_pretrained is null for score.clip_model='RN50': name its "
                                          r"weights .* or `random` for random weights"):
        load_open_clip("RN50", None)
    with pytest.raises(ScorerError, match="score.aesthetic_clip_pretrained is null"):
        load_open_clip("ViT-L-14", None, keys=("score.aesthetic_clip", "score.aesthetic_clip_pretrained"))
    asked, _, _ = load_open_clip("tiny", "random", seed=3)
    default, _, _ = load_open_clip("tiny", None, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(asked.state_dict().values(), default.state_dict().values()))


def test_pickscore_is_scaled_clip_cosine_and_joins_the_scorers(tmp_path):
    from dbdpo.scoring import PickScore, load_pickscore

    model, processor = load_pickscore("tiny")
    generated = images(3, seed=4)
    texts = ["a toy in the snow", "a toy on a beach", "a toy"]
    out = PickScore(model, processor, lambda t: t)(generated, texts)["PickScore"]
    with torch.no_grad():
        inputs = processor(images=generated, text=texts, return_tensors="pt", padding="max_length", max_length=77)
        # transformers 5: the get_*_features outputs carry the projected embedding as pooler_output
        img = F.normalize(model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output, dim=-1)
        txt = F.normalize(model.get_text_features(input_ids=inputs["input_ids"],
                                                  attention_mask=inputs["attention_mask"]).pooler_output, dim=-1)
    expected = model.logit_scale.exp().item() * (img * txt).sum(-1).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5)
    scorers = build_scorers(ScoreConfig(pickscore_model="tiny", dino_model=None), images(1), {"TS": lambda t: t})
    paths = []
    for i, img in enumerate(generated):
        img.save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    assert list(score_images(paths, texts, scorers, batch_size=2).columns) == ["IS", "TS", "PickScore"]


def test_hps_is_the_unit_cosine_of_its_clip_loaded_from_the_released_file_layout(tmp_path):
    """HPSv2 ships a torch file {"state_dict": ...} of an open_clip ViT-H-14; a tiny CLIP in
    that layout loads through load_hps (weights_only) and scores HPSv2's own formula,
    diag(image_features @ text_features.T) of the model's unit-norm outputs."""
    source, preprocess, tokenizer = load_open_clip("tiny", None, seed=7)
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}, "epoch": 3},
               tmp_path / "HPS_v2.1_compressed.pt")  # DDP-saved keys, as a training run writes them
    model, _, _ = load_hps(str(tmp_path / "HPS_v2.1_compressed.pt"), TINY_CLIP)
    for (name, loaded), original in zip(model.state_dict().items(), source.state_dict().values()):
        assert torch.equal(loaded, original), name

    generated, texts = images(3, seed=5), ["a toy in the snow", "a toy on a beach", "a toy"]
    cfg = ScoreConfig(dino_model=None, hps_weights=str(tmp_path / "HPS_v2.1_compressed.pt"), hps_arch=TINY_CLIP)
    paths = []
    for i, img in enumerate(generated):
        img.save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    scores = score_images(paths, texts, build_scorers(cfg, images(1), {"TS": lambda t: t}), batch_size=2)
    assert list(scores.columns) == ["IS", "TS", "HPS"]
    with torch.no_grad():
        # open_clip's forward: unit-norm (image_features, text_features, logit_scale)
        image_features, text_features, _ = source(torch.stack([preprocess(Image.open(p).convert("RGB"))
                                                                for p in paths]), tokenizer(texts))
        expected = torch.diagonal(image_features @ text_features.T).numpy()
    np.testing.assert_allclose(scores["HPS"], expected, atol=1e-6)
    assert not np.allclose(scores["HPS"], scores["TS"])  # its own CLIP, not the IS/TS one


def test_hps_weights_missing_or_of_another_architecture_are_clear_errors(tmp_path):
    with pytest.raises(ScorerError, match=r"score.hps_weights='.*nope.pt': no such file. Download HPS_v2.1"):
        load_hps(str(tmp_path / "nope.pt"), "ViT-H-14")
    source, _, _ = load_open_clip("tiny", None)
    torch.save({"state_dict": source.state_dict()}, tmp_path / "tiny.pt")
    with pytest.raises(ScorerError, match=r"score.hps_weights='.*tiny.pt' for dbdpo-world-clip: cannot load"):
        load_hps(str(tmp_path / "tiny.pt"), "dbdpo-world-clip")
    with pytest.raises(ScorerError, match=r"score.hps_arch='ViT-Nope' is not an open_clip model name"):
        load_hps(str(tmp_path / "tiny.pt"), "ViT-Nope")


def saved_aesthetic(tmp_path, embed_dim: int, seed: int = 0):
    """A random aesthetic MLP saved as the predictor's released .pth is: a bare state dict."""
    torch.manual_seed(seed)
    mlp = AestheticMlp(embed_dim)
    torch.save(mlp.state_dict(), tmp_path / "aesthetic.pth")
    return mlp.eval(), str(tmp_path / "aesthetic.pth")


def test_aesthetic_is_the_mlp_on_the_unit_norm_clip_image_embedding(tmp_path):
    """load_aesthetic on a tiny CLIP (from a weights file, as ViT-L-14's would be) and an MLP
    in the released file's layout: each rating is mlp(normalize(E_I(x))), and the MLP is the
    five linear maps composed (no activation in the linearMSE head)."""
    clip, preprocess, _ = load_open_clip("tiny", None, seed=2)
    torch.save({"state_dict": clip.state_dict()}, tmp_path / "clip.pt")
    mlp, weights = saved_aesthetic(tmp_path, clip.visual.output_dim)
    scorer = load_aesthetic(weights, TINY_CLIP, str(tmp_path / "clip.pt"))
    generated = images(4, seed=6)
    out = scorer(generated, ["unused"] * 4)["Aesthetic"]
    with torch.no_grad():
        embeddings = F.normalize(clip.encode_image(torch.stack([preprocess(i) for i in generated])), dim=-1)
        linear = [m for m in mlp.layers if isinstance(m, torch.nn.Linear)]
        expected = embeddings
        for layer in linear:
            expected = expected @ layer.weight.T + layer.bias
    assert out.shape == (4,) and len(linear) == 5
    np.testing.assert_allclose(out, expected.squeeze(-1).numpy(), rtol=1e-5, atol=1e-6)
    cfg = ScoreConfig(dino_model=None, aesthetic_weights=weights, aesthetic_clip=TINY_CLIP,
                      aesthetic_clip_pretrained=str(tmp_path / "clip.pt"))
    scores = score_loaded(generated, [f"{i}" for i in range(4)], ["a toy"] * 4,
                          build_scorers(cfg, images(1), {"TS": lambda t: t}), batch_size=3)
    assert list(scores.columns) == ["IS", "TS", "Aesthetic"]
    np.testing.assert_allclose(scores["Aesthetic"], out, rtol=1e-6)


def test_aesthetic_weights_missing_or_for_another_embedding_size_are_clear_errors(tmp_path):
    with pytest.raises(ScorerError, match=r"score.aesthetic_weights='.*nope.pth': no such file. Download "
                                          r"sac\+logos\+ava1-l14-linearMSE.pth"):
        load_aesthetic(str(tmp_path / "nope.pth"), "ViT-L-14", "openai")
    _, weights = saved_aesthetic(tmp_path, 768)  # ViT-L-14's size; the tiny CLIP's is smaller
    with pytest.raises(ScorerError, match=r"not an aesthetic MLP on tiny's 32-d embeddings"):
        load_aesthetic(weights, "tiny", None)


class Payload:
    """Stands for code in a pickle: torch.load(weights_only=True) refuses to build it."""


def test_pickled_code_in_aesthetic_weights_is_refused_by_name(tmp_path):
    torch.save({"layers.0.weight": Payload()}, tmp_path / "mlp.pth")
    with pytest.raises(ScorerError, match=r"score.aesthetic_weights='.*mlp.pth': not loadable as tensors alone "
                                          r"\(UnpicklingError: .*\); a file that needs pickled code is refused"):
        load_aesthetic(str(tmp_path / "mlp.pth"), "tiny", None)


def test_missing_pickscore_weights_say_what_to_download(tmp_path):
    from dbdpo.scoring import load_pickscore

    with pytest.raises(ScorerError, match="download yuvalkirstain/PickScore_v1"):
        load_pickscore(str(tmp_path / "nope"))
