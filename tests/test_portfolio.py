"""The portfolio (hpo.portfolio, search_space.start_queue): strong configurations a new study trains first."""

import json

import optuna
import pytest

import hpo
from hpo import catalog, portfolio, search_space
from hpo.cli import main
from hpo.config import OptimizationConfig
from hpo.exceptions import ConfigError

from .test_budget import FAST, Epochs, _study

IMAGE = (16, 16, 3)


# -- the greedy choice ---------------------------------------------------------------------------------------------

def test_select_adds_the_member_that_covers_the_tasks_the_default_is_weak_on():
    scores = [[0.9, 0.5, 0.9],   # the default: weak on task 1
              [0.5, 0.9, 0.5],   # strong where the default is weak
              [0.8, 0.8, 0.8],   # good everywhere, best nowhere
              [0.9, 0.5, 0.9]]   # the default again: adds nothing
    assert portfolio.select(scores, 3) == [0, 1]  # then nothing lowers the regret: fewer than 3
    assert portfolio.select(scores, 1) == [0]
    assert portfolio.select(scores, 2, first=None) == [2, 0]  # lowest regret alone first (0.1), then the default


def test_select_counts_a_failed_candidate_as_worst_and_breaks_ties_by_mean_then_index():
    scores = [[0.5, 0.5], [None, 0.9], [0.6, 0.9], [0.6, 0.9]]
    assert portfolio.select(scores, 2) == [0, 2]  # 2 and 3 tie on regret and mean: the lower index
    assert portfolio.select([[0.5, 0.5], [float("nan"), 0.9], [0.5, 0.8]], 2) == [0, 1]  # nan = -1, still best on t1
    assert portfolio.select([], 3) == [] and portfolio.select(scores, 0) == []


# -- the queue of a new study ----------------------------------------------------------------------------------------

@pytest.fixture()
def members(tmp_path, monkeypatch):
    """A portfolio file of two image members after the default."""
    path = tmp_path / "portfolios.json"
    chosen = [{"learning_rate": 0.003, "filters": 64}, {"conv_blocks": 1, "dropout": 0.1}]
    path.write_text(json.dumps({"image": {"members": chosen, "built": {"by": "a test"}}}))
    monkeypatch.setattr(portfolio, "PORTFOLIO_FILE", path)
    return chosen


def test_queue_is_default_then_initial_configs_then_portfolio_with_pins_and_no_duplicates(members):
    initial = [{"learning_rate": 0.005}, {}, {"learning_rate": 0.003, "filters": 64}]
    queue = search_space.start_queue("image", {"optimizer": "sgd"}, IMAGE, portfolio_size=3, initial=initial)
    attrs = [a for _, a in queue]
    # {} is the default again and the third initial config is portfolio member 2: both dropped
    assert attrs == [{"warm_start": True}, {"initial_config": 1}, {"initial_config": 3}, {"portfolio": 3}]
    default = search_space.default_params("image", {"optimizer": "sgd"}, IMAGE)
    assert queue[0][0] == default
    assert queue[1][0] == dict(default, learning_rate=0.005)
    assert queue[3][0]["conv_blocks"] == 1 and queue[3][0]["dropout"] == 0.1
    assert all(p["optimizer"] == "sgd" for p, _ in queue)  # pins win over every configuration
    for params, _ in queue:
        catalog.validate_params("image", params)  # complete and in range


def test_portfolio_size_and_warm_start_decide_how_much_of_the_portfolio_runs(members):
    assert [a for _, a in search_space.start_queue("image", None, IMAGE, portfolio_size=1)] == [{"warm_start": True}]
    two = search_space.start_queue("image", None, IMAGE, portfolio_size=2)
    assert [a for _, a in two] == [{"warm_start": True}, {"portfolio": 2}]
    assert two[1][0]["learning_rate"] == 0.003 and two[1][0]["filters"] == 64
    # no warm start: no default and no portfolio, but the user's own configurations still run first
    assert [a for _, a in search_space.start_queue("image", None, IMAGE, warm_start=False, portfolio_size=3,
                                                   initial=[{"dropout": 0.3}])] == [{"initial_config": 1}]
    assert portfolio.builtin("text") == []  # a modality without a portfolio


def test_a_member_is_fitted_to_a_small_image(members, tmp_path, monkeypatch):
    path = tmp_path / "deep.json"
    path.write_text(json.dumps({"image": {"members": [{"conv_blocks": 4}]}}))
    monkeypatch.setattr(portfolio, "PORTFOLIO_FILE", path)
    (params, _), = search_space.start_queue("image", None, IMAGE, portfolio_size=2)[1:]
    assert params["conv_blocks"] == catalog.max_conv_blocks(IMAGE) < 4
    # on 8x8 images it is capped to the default's 2 blocks: the same configuration, run once
    assert catalog.max_conv_blocks((8, 8, 3)) == 2
    assert [a for _, a in search_space.start_queue("image", None, (8, 8, 3), portfolio_size=2)] == [
        {"warm_start": True}]


# -- the shipped portfolio -------------------------------------------------------------------------------------------

def test_the_shipped_portfolio_is_valid_and_says_how_it_was_built():
    data = json.loads(portfolio.PORTFOLIO_FILE.read_text())
    assert set(data) == {"image", "sequence", "text"}
    assert portfolio.builtin("text") == []
    for modality, datasets in (("image", ("fashion_mnist", "synthetic_images")),
                               ("sequence", ("mnist1d", "synthetic_sequence"))):
        built = portfolio.built_on(modality)
        assert built["by"] == "bench/build_portfolio.py" and built["chosen"][0] == 0
        assert len(built["tasks"]) >= 2 and len(built["val_accuracy"]) == len(built["candidates"])
        members = portfolio.builtin(modality)
        assert len(members) <= portfolio.MAX_PORTFOLIO - 1
        assert members == [built["candidates"][i] for i in built["chosen"][1:]]
        for name in datasets:
            info = catalog.info(name)
            shape = info.input_shape if modality == "image" else None
            for params, _ in search_space.start_queue(modality, None, shape, portfolio_size=3):
                catalog.validate_params(modality, params)
                n = search_space.count_params(params, modality, info.input_shape, info.num_classes)
                assert n <= OptimizationConfig.__dataclass_fields__["max_params"].default


# -- initial_configs: bad files are clear errors --------------------------------------------------------------------

@pytest.mark.parametrize("content, fragment", [
    (None, "initial_configs: no such file"),
    ("[{", "is not readable JSON (line 1"),
    ('{"learning_rate": 0.003}', "must hold a JSON list of objects"),
    ('[{"learning_rate": 0.003}, {"lerning_rate": 0.003}]', "configuration 2 has unknown parameter(s) "
                                                            "lerning_rate; allowed: conv_blocks, filters"),
    ('[{"learning_rate": 5.0}]', "configuration 1: learning_rate=5.0 is out of range; allowed: float in"),
    ('[{"optimizer": "adamw2"}]', "configuration 1: optimizer='adamw2' is not allowed"),
])
def test_bad_initial_configs_name_the_file_entry_and_what_is_allowed(tmp_path, content, fragment):
    path = tmp_path / "configs.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as err:
        OptimizationConfig(dataset="synthetic_images", initial_configs=str(path))
    assert fragment in str(err.value) and err.value.field == "initial_configs"


def test_cli_bad_initial_configs_or_portfolio_size_exit_2_and_write_nothing(tmp_path, capsys):
    bad = tmp_path / "configs.json"
    bad.write_text('[{"dropout": 2}]')
    out = tmp_path / "results"
    assert main(["optimize", "dataset=synthetic_images", f"initial_configs={bad}", f"output_dir={out}"]) == 2
    err = capsys.readouterr().err
    assert "configuration 1: dropout=2 is out of range" in err and "Traceback" not in err
    assert main(["optimize", "dataset=synthetic_images", "portfolio_size=4", f"output_dir={out}"]) == 2
    assert "portfolio_size" in capsys.readouterr().err
    assert not out.exists()


# -- a whole run ------------------------------------------------------------------------------------------------------

def test_a_run_trains_default_initial_configs_and_portfolio_first_then_resumes_without_queueing_again(
        tmp_path, members):
    configs = tmp_path / "mine.json"
    configs.write_text(json.dumps([{"dropout": 0.4, "conv_blocks": 1}]))
    backend = Epochs()
    hpo.optimize(dataset="synthetic_images", trials=5, max_epochs_per_trial=2, pruner="none",
                 initial_configs=str(configs), portfolio_size=3, output_dir=str(tmp_path), run_name="p",
                 backend=backend, **FAST)
    first = [j.params for j in backend.jobs[:4]]
    queue = search_space.start_queue("image", None, IMAGE, portfolio_size=3, initial=[{"dropout": 0.4,
                                                                                       "conv_blocks": 1}])
    assert first == [p for p, _ in queue]  # in the queue's order, one worker
    study = _study(tmp_path, "p")
    assert [sorted(set(t.user_attrs) & {"warm_start", "initial_config", "portfolio"}) for t in study.trials[:4]] == [
        ["warm_start"], ["initial_config"], ["portfolio"], ["portfolio"]]
    assert not study.trials[4].user_attrs.keys() & {"warm_start", "initial_config", "portfolio", "near_default"}
    hpo.optimize(dataset="synthetic_images", trials=7, max_epochs_per_trial=2, pruner="none",
                 initial_configs=str(configs), portfolio_size=3, output_dir=str(tmp_path), run_name="p",
                 backend=backend, **FAST)
    study = _study(tmp_path, "p")
    assert len(study.trials) == 7
    assert sum(1 for t in study.trials if t.user_attrs.keys() & {"warm_start", "initial_config", "portfolio"}) == 4
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.WAITING]


def test_a_short_run_queues_no_more_than_it_trains(tmp_path, members):
    """trials=2 with a three-member portfolio: two trials queued and trained, none left waiting in the study."""
    backend = Epochs()
    result = hpo.optimize(dataset="synthetic_images", trials=2, max_epochs_per_trial=2, pruner="none",
                          portfolio_size=3, output_dir=str(tmp_path), run_name="s", backend=backend, **FAST)
    assert [t["state"] for t in result.trials] == ["complete", "complete"]
    study = _study(tmp_path, "s")
    assert len(study.trials) == 2 and study.trials[1].user_attrs.get("portfolio") == 2


def test_initial_configs_are_refused_over_the_rest_api(tmp_path):
    """A path on the server: its parameter names would tell a caller what the file holds."""
    from hpo.run_options import EndpointPolicy, server_owned_options

    secret = tmp_path / "secret.json"
    secret.write_text('[{"db_password": 1}]')
    options = {"dataset": "synthetic_images", "initial_configs": str(secret)}
    errors = server_owned_options(options, tmp_path, EndpointPolicy(env={}))
    assert [e["loc"] for e in errors] == [["body", "initial_configs"]]
    assert "initial_configs" not in options
    text = json.dumps(errors)
    assert "not allowed over the API" in text and "db_password" not in text
