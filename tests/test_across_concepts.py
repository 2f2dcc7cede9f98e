"""Means over concepts with their standard error across concepts, and `dbdpo summary` over
project folders (each with the metrics.json its evaluate stage writes)."""

import json
import math

import pytest

from dbdpo.across_concepts import format_mean_se, mean_over_concepts, summarize
from dbdpo.errors import UserError
from tests.conftest import invoke_stage

HEADLINE = ("IS", "TS", "IS_gain", "TS_gain", "S_0.5_gain", "S_0.5_gain_se", "beyond_frontier")


def project(root, name: str, values: list[float]):
    """A project folder whose metrics.json holds `values` for HEADLINE's figures, in order."""
    folder = root / name
    folder.mkdir()
    (folder / "metrics.json").write_text(json.dumps(dict(zip(HEADLINE, values, strict=True))))
    return folder


def test_mean_and_standard_error_across_concepts_by_hand():
    mean = mean_over_concepts({"a": {"x": 1.0}, "b": {"x": 2.0}, "c": {"x": 6.0}})
    assert mean["x"]["mean"] == pytest.approx(3.0)
    # sample std over sqrt(3): sqrt(((1-3)^2 + (2-3)^2 + (6-3)^2) / 2) = sqrt(7)
    assert mean["x"]["se"] == pytest.approx(7.0 ** 0.5 / 3 ** 0.5)
    # one concept has no spread across concepts: no standard error, not a zero one
    assert mean_over_concepts({"a": {"x": 1.5}}) == {"x": {"mean": 1.5, "se": None}}
    assert format_mean_se({"mean": 0.25, "se": None}) == "+0.250 ± n/a"
    assert format_mean_se({"mean": -0.1234, "se": 0.0456}) == "-0.123 ± 0.046"


def test_summary_averages_each_figure_and_keeps_each_projects_own_errors_in_its_row(tmp_path):
    folders = [project(tmp_path, "dog", [0.30, 0.25, 0.2, -0.1, 0.05, 0.08, -0.3]),
               project(tmp_path, "cat", [0.20, 0.27, 0.4, 0.1, 0.25, 0.07, 0.1])]
    result = summarize(folders)
    assert result["count"] == 2 and list(result["concepts"]) == [str(f) for f in folders]
    assert result["concepts"][str(folders[0])]["S_0.5_gain_se"] == 0.08  # the project's images' spread, kept
    mean = result["mean"]
    assert "S_0.5_gain_se" not in mean  # across concepts the error is the concepts' spread
    assert mean["S_0.5_gain"]["mean"] == pytest.approx(0.15)
    assert mean["S_0.5_gain"]["se"] == pytest.approx(0.1)  # two values: |a - b| / 2
    assert mean["beyond_frontier"] == pytest.approx({"mean": -0.1, "se": 0.2})


def test_summary_warns_when_the_projects_differ_beyond_their_concepts(tmp_path, caplog):
    folders = [project(tmp_path, name, [0.3, 0.2, 0.1, 0.0, 0.05, 0.1, -0.2]) for name in ("dog", "cat")]
    for folder, noun, prompts, angle in [(folders[0], "dog", "live.txt", 25), (folders[1], "cat", "live2.txt", 25)]:
        (folder / "params.yaml").write_text(json.dumps({"concept": {"class_noun": noun}, "filter": {"angle": angle},
                                                        "evaluate": {"prompts": prompts, "steps": 10}}))
    summarize(folders)
    assert "differ" not in caplog.text  # another concept and its prompts: the comparison the mean is for
    (folders[1] / "params.yaml").write_text(json.dumps({"concept": {"class_noun": "cat"}, "filter": {"angle": 30},
                                                        "evaluate": {"prompts": "live2.txt", "steps": 20}}))
    summarize(folders)
    assert "the projects' params differ beyond the concept, so their mean mixes methods: evaluate.steps, " \
           "filter.angle" in caplog.text


def test_summary_refuses_what_it_cannot_average_naming_the_file(tmp_path):
    good = project(tmp_path, "good", [0.3, 0.2, 0.1, 0.0, 0.05, 0.1, -0.2])
    with pytest.raises(UserError, match=r"absent/metrics.json is missing: run `dvc repro` in .*absent"):
        summarize([good, tmp_path / "absent"])
    nan = project(tmp_path, "nan", [0.3, math.nan, 0.1, 0.0, 0.05, 0.1, -0.2])  # json writes NaN, json reads it
    with pytest.raises(UserError, match=r"nan/metrics.json: TS is nan, not a finite number"):
        summarize([good, nan])
    other_lambda = tmp_path / "lambda"
    other_lambda.mkdir()
    (other_lambda / "metrics.json").write_text(json.dumps({"IS": 0.3, "TS": 0.2, "S_0.7_gain": 0.1}))
    with pytest.raises(UserError, match=r"do not name the same figures .*S_0.5_gain.*S_0.7_gain.*pair.lambda"):
        summarize([good, other_lambda])
    (tmp_path / "torn").mkdir()
    (tmp_path / "torn" / "metrics.json").write_text('{"IS": 0.3,')
    with pytest.raises(UserError, match=r"torn/metrics.json is unreadable"):
        summarize([good, tmp_path / "torn"])
    with pytest.raises(UserError, match="given twice"):
        summarize([good, good])


def test_dbdpo_summary_prints_the_table_and_writes_the_json(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    project(tmp_path, "dog", [0.30, 0.25, 0.2, -0.1, 0.05, 0.08, -0.3])
    project(tmp_path, "cat", [0.20, 0.27, 0.4, 0.1, 0.25, 0.07, 0.1])
    result = invoke_stage("summary", "dog", "cat", "--out", "summary.json")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["project", "|", "IS", "|", "TS", "|", "IS_gain", "|", "TS_gain", "|", "S_0.5_gain",
                                "|", "beyond_frontier"]
    assert lines[1].split("|")[0].strip() == "dog" and lines[1].split("|")[5].strip() == "+0.050"
    assert [c.strip() for c in lines[3].split("|")][1:] == ["0.250 ± 0.050", "0.260 ± 0.010", "+0.300 ± 0.100",
                                                            "+0.000 ± 0.100", "+0.150 ± 0.100", "-0.100 ± 0.200"]
    assert lines[1].split("|")[1].strip() == "0.300"  # a score, unsigned
    written = json.loads((tmp_path / "summary.json").read_text())
    # as the several-concept pipeline's metrics.json: the mean and its standard error first
    assert list(written) == ["count", "mean", "se", "concepts"] and written["count"] == 2
    assert (written["mean"]["S_0.5_gain"], written["se"]["S_0.5_gain"]) == pytest.approx((0.15, 0.1))
    assert list(written["concepts"]) == ["dog", "cat"]

    missing = invoke_stage("summary", "dog", "bird")
    assert missing.exit_code == 2 and "bird/metrics.json is missing" in missing.output
    assert not (tmp_path / "bird").exists()
