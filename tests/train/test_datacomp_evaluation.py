"""DataComp's evaluation: clipflow's scores of a checkpoint on DataComp-layout evaluation sets are those of
DataComp's own evaluate.py (tests/data/datacomp/evaluation.jsonl, from make_expected_evaluation.py) on the same
sets and checkpoint, metric for metric; and a data folder without a set is refused, naming it."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from clipflow.errors import ClipflowError
from clipflow.evaluate import datacomp
from clipflow.evaluate.datacomp.hf_cache import arrow_files, read_table
from clipflow.evaluate.datacomp.tasks import SUMMARY, TASKS
from datacomp_evalsets import MODEL, MODEL_CONFIG, write_checkpoint, write_evalsets, write_hf_table

EXPECTED = Path(__file__).parents[1] / "data/datacomp"


@pytest.fixture(scope="module")
def evalsets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("datacomp_evaluation")
    write_checkpoint(folder / "checkpoint.pt")
    write_evalsets(folder / "sets")
    return folder


@pytest.fixture(scope="module")
def scores(evalsets):
    return datacomp.evaluate(MODEL, evalsets / "checkpoint.pt", evalsets / "sets", MODEL_CONFIG, device="cpu")


def same(ours, theirs) -> bool:
    return ours == theirs or (ours is not None and theirs is not None and math.isnan(ours) and math.isnan(theirs))


def test_every_task_has_datacomps_metrics_exactly(scores):
    expected = [json.loads(line) for line in (EXPECTED / "evaluation.jsonl").read_text().splitlines()]
    expected = {line["dataset"]: line for line in expected if line["metrics"].get("main_metric") is not None}
    assert list(expected) == [task.name for task in TASKS]  # DataComp's 38 scored tasks, in its order
    for task in TASKS:
        theirs, ours = expected[task.name]["metrics"], scores[task.name]
        assert expected[task.name]["key"] == task.key
        compared = [name for name in ours if name in theirs]
        assert set(compared) >= {"main_metric", task.main_metric}, task.name
        assert {name: ours[name] for name in compared if not same(ours[name], theirs[name])} == {}, task.name
    # the sets make the group metrics tell implementations apart: FMoW's worst region is "Other" (region 5)
    assert scores["FMoW"]["main_metric"] == 0 < scores["FMoW"]["acc_avg"]
    assert 0 < scores["GeoDE"]["main_metric"] < scores["GeoDE"]["acc_avg"]
    assert scores["Camelyon17"]["acc5"] is None and scores["ImageNet 1k"]["acc5"] is not None


def test_the_summary_is_datacomps_average_and_groups(scores):
    main = [scores[task.name]["main_metric"] for task in TASKS]
    assert scores[SUMMARY]["Average"] == np.mean(main)  # evaluate.py's average, over the 38 in its order
    # aggregate_scores.py reads the results through pandas' read_json, whose default float parser is not exact,
    # and sums its groups in set order: its scores agree to ~1e-15, not to the bit
    expected = json.loads((EXPECTED / "evaluation_summary.json").read_text())
    assert scores[SUMMARY] == pytest.approx(expected, rel=1e-13, abs=1e-15)
    assert list(scores[SUMMARY]) == ["ImageNet", "ImageNet dist. shifts", "VTAB", "Retrieval", "Average"]


def test_a_missing_evaluation_set_is_refused_naming_it_and_how_to_fetch_it(evalsets, tmp_path):
    sets = tmp_path / "sets"
    shutil.copytree(evalsets / "sets", sets)
    datacomp.check_sets(sets)
    shutil.rmtree(sets / "wds_wilds-fmow_test")
    shutil.rmtree(next((sets / "hf_cache").glob("nlphuji___winogavil")))
    (sets / "wds_imagenet1k_test/test/4.tar").unlink()  # the last of its five shards
    named = r"lacks 3 of DataComp's 38 .*ImageNet 1k \(.*wds_imagenet1k_test\), WinoGAViL \(nlphuji/winogavil in "
    named += r".*hf_cache\), FMoW \(.*wds_wilds-fmow_test\)"
    with pytest.raises(ClipflowError, match=named) as error:
        datacomp.evaluate(MODEL, evalsets / "checkpoint.pt", sets, MODEL_CONFIG, device="cpu")
    assert "download_evalsets.py" in str(error.value)


def test_hugging_face_sets_are_read_from_the_cache_of_datasets_2_8_too(tmp_path):
    """DataComp's environment (datasets 2.8) cached a hub data set under its parquet builder's name."""
    table = pa.table({"caption": pa.array([["a dog", "A DOG"], ["猫"]], pa.list_(pa.string()))})
    for layout, old in (("new", False), ("old", True)):
        write_hf_table(tmp_path / layout, "nlphuji/mscoco_2014_5k_test_image_text_retrieval", table, {}, old)
    old = read_table(tmp_path / "old", "nlphuji/mscoco_2014_5k_test_image_text_retrieval")
    assert old.equals(read_table(tmp_path / "new", "nlphuji/mscoco_2014_5k_test_image_text_retrieval"))
    assert old.column("caption").to_pylist() == [["a dog", "A DOG"], ["猫"]]
    assert not arrow_files(tmp_path / "old", "nlphuji/mscoco_2014_5k")  # another data set's name is not a prefix
