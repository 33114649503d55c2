import dataclasses
import re
import typing
from pathlib import Path

import pytest

from hpo import config as cfg
from hpo.config import OptimizationConfig, config_from_options, parse_kv
from hpo.config_docs import options_help, options_markdown_table
from hpo.exceptions import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def make(**options):
    return config_from_options({"dataset": "synthetic_images", **options}, use_env=False)


def test_strings_are_converted_by_the_annotated_type():
    c = make(trials="8", validation_split="0.25", use_multi_gpu="no", timeout_minutes="none", mode="health")
    assert c.trials == 8 and isinstance(c.trials, int)
    assert c.validation_split == 0.25
    assert c.use_multi_gpu is False
    assert c.timeout_minutes is None
    assert c.mode == "health"


@pytest.mark.parametrize("text,expected", [("true", True), ("1", True), ("yes", True), ("YES", True),
                                           ("false", False), ("0", False), ("no", False)])
def test_booleans_accept_only_the_documented_words(text, expected):
    assert make(quiet=text).quiet is expected


@pytest.mark.parametrize("options,fragment", [
    ({"trails": "3"}, "unknown option 'trails' (did you mean trials?)"),
    ({"quiet": "maybe"}, "quiet='maybe' is not a boolean; allowed: true, false, 1, 0, yes, no"),
    ({"quiet": "2"}, "not a boolean"),
    ({"trials": "-1"}, "trials=-1 is out of range; allowed: >= 1"),
    ({"trials": "0"}, "trials=0 is out of range"),
    ({"trials": "2.5"}, "trials='2.5' is not a whole number"),
    ({"mode": "fast"}, "mode='fast' is not allowed; allowed: simple, health, pareto"),
    ({"validation_split": "1.5"}, "validation_split=1.5 is out of range; allowed: (0, 0.9]"),
    ({"validation_split": "0"}, "validation_split=0.0 is out of range"),
    ({"data_fraction": "abc"}, "data_fraction='abc' is not a number"),
    ({"concurrent_workers": "65"}, "concurrent_workers=65 is out of range; allowed: [1, 64]"),
    ({"min_epochs_per_trial": "5", "max_epochs_per_trial": "2"}, "min_epochs_per_trial=5 is above"),
    ({"run_name": "a:b"}, "run_name='a:b' is not a safe folder name"),
    ({"run_name": "../x"}, "not a safe folder name"),
    ({"health_weight": "nan"}, "not a finite number"),
    ({"activation": "sigmoid"}, "activation='sigmoid' is not allowed; activation is one of relu, elu, gelu, swish"),
    ({"conv_blocks": "9"}, "conv_blocks=9 is out of range; allowed: int in [1, 3]"),  # 16x16 input: at most 3
    ({"conv_blocks": "two"}, "conv_blocks='two' is not a valid int; allowed: int in [1, 3]"),  # the same range
    ({"dense_units": "128", "dense_layers": "0"},
     "dense_units=128 has no effect: dense_units applies only when dense_layers > 0, and dense_layers=0 is pinned"),
    ({"learning_rate": "abc"}, "learning_rate='abc' is not a valid float; allowed: float in [0.0001, 0.01] (log"),
    ({"lstm_units": "64"}, "lstm_units is a parameter of the LSTM (text) space and does not apply to image dataset"),
    ({"vocab_size": "100"}, "vocab_size does not apply to dataset synthetic_images"),
    ({"use_runpod_service": "true"}, "use_runpod_service=true needs runpod_endpoint_id"),
])
def test_each_bad_input_gets_its_own_clear_message(options, fragment):
    with pytest.raises(ConfigError) as info:
        make(**options)
    assert fragment in str(info.value)


@pytest.mark.parametrize("options,field", [
    ({"trails": "3"}, "trails"),
    ({"quiet": "maybe"}, "quiet"),
    ({"trials": "0"}, "trials"),
    ({"trials": "2.5"}, "trials"),
    ({"mode": "fast"}, "mode"),
    ({"validation_split": "1.5"}, "validation_split"),
    ({"data_fraction": "abc"}, "data_fraction"),
    ({"health_weight": "nan"}, "health_weight"),
    ({"seed": str(2**32)}, "seed"),
    ({"min_epochs_per_trial": "5", "max_epochs_per_trial": "2"}, "min_epochs_per_trial"),
    ({"epoch_budget": "2", "min_epochs_per_trial": "3"}, "epoch_budget"),
    ({"run_name": "a:b"}, "run_name"),
    ({"health_weights": "generalisation:1"}, "health_weights"),
    ({"storage": "ftp://x"}, "storage"),
    ({"storage": "sqlite://"}, "storage"),  # in memory: the study would vanish with the process
    ({"storage": "sqlite:///:memory:"}, "storage"),
    ({"activation": "sigmoid"}, "activation"),
    ({"conv_blocks": "9"}, "conv_blocks"),
    ({"pins": {"dropout": "0.9"}}, "dropout"),
    ({"lstm_units": "64"}, "lstm_units"),
    ({"vocab_size": "100"}, "vocab_size"),
    ({"use_runpod_service": "true"}, "use_runpod_service"),
    ({"dataset": "fashon_mnist"}, "dataset"),
    ({"dataset": None}, "dataset"),
])
def test_every_config_error_names_its_field(options, field):
    """The REST API reports ``ConfigError.field`` as the error's location (no guessing from the message)."""
    with pytest.raises(ConfigError) as info:
        config_from_options({"dataset": "synthetic_images", **options}, use_env=False)
    assert info.value.field == field, str(info.value)


def test_dataset_required_and_dataset_option_errors_name_their_field():
    with pytest.raises(ConfigError) as info:
        config_from_options({"trials": "3"}, use_env=False)
    assert info.value.field == "dataset"
    with pytest.raises(ConfigError) as info:
        config_from_options({"dataset": "gtsrb", "image_size": "4"}, use_env=False)
    assert info.value.field == "image_size"
    with pytest.raises(ConfigError) as info:
        parse_kv(["trials=3", "trials=4"])
    assert info.value.field == "trials"


def test_config_takes_its_vocabulary_from_the_light_core():
    from typing import get_args

    from hpo import catalog, protocol, scoring

    hints = typing.get_type_hints(OptimizationConfig)
    assert hints["dataset"] is str  # a built-in name (catalog.DATASET_NAMES) or the path of the user's own data
    assert get_args(hints["mode"]) == scoring.MODES
    assert get_args(hints["lr_schedule"]) == get_args(catalog.LrSchedule) == get_args(protocol.LrSchedule)
    assert cfg.Mode is scoring.Mode


def test_unknown_dataset_names_the_allowed_ones():
    with pytest.raises(ConfigError, match=r"allowed: mnist, fashion_mnist, .*did you mean fashion_mnist"):
        config_from_options({"dataset": "fashon_mnist"}, use_env=False)


def test_dataset_is_required():
    with pytest.raises(ConfigError, match="dataset is required"):
        config_from_options({"trials": "3"}, use_env=False)


@pytest.mark.parametrize("args,fragment", [
    (["trials"], "malformed argument 'trials'; expected key=value"),
    (["=3"], "malformed argument '=3'"),
    (["trials=3", "trials=4"], "trials is given twice"),
    (["two words=1"], "malformed argument"),
])
def test_malformed_key_value(args, fragment):
    with pytest.raises(ConfigError) as info:
        parse_kv(args)
    assert fragment in str(info.value)


def test_parse_kv_keeps_values_verbatim():
    assert parse_kv(["dataset=cifar10", "storage=sqlite:///a=b.db"]) == {"dataset": "cifar10",
                                                                         "storage": "sqlite:///a=b.db"}


def test_pins_reach_the_search_space():
    import optuna

    from hpo import search_space

    c = make(activation="relu", batch_norm="true", learning_rate="0.003", conv_blocks="2")
    assert c.pins == {"activation": "relu", "batch_norm": True, "learning_rate": 0.003, "conv_blocks": 2}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(10):
        params = search_space.suggest(study.ask(), "image", c.pins, input_shape=(16, 16, 3))
        assert params["activation"] == "relu" and params["batch_norm"] is True
        assert params["learning_rate"] == 0.003 and params["conv_blocks"] == 2


def test_config_is_frozen_and_validated_when_built_directly():
    c = OptimizationConfig(dataset="synthetic_text", trials=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.trials = 3  # type: ignore[misc]
    with pytest.raises(ConfigError, match="trials=0 is out of range"):
        OptimizationConfig(dataset="synthetic_text", trials=0)
    with pytest.raises(ConfigError, match="not a boolean"):
        OptimizationConfig(dataset="synthetic_text", quiet="perhaps")  # type: ignore[arg-type]


def test_dataset_options_fill_defaults_and_reach_the_shape():
    c = config_from_options({"dataset": "imdb", "sequence_length": "120", "vocab_size": "5000"}, use_env=False)
    assert c.dataset_options == {"vocab_size": 5000, "sequence_length": 120}
    assert c.dataset_info.input_shape == (120,)


def test_env_and_dotenv_fill_runpod_settings(tmp_path, monkeypatch):
    env_file = tmp_path / ".env"
    env_file.write_text("RUNPOD_ENDPOINT_ID=from-dotenv\nRUNPOD_API_KEY=sk-secret-dotenv\n")
    c = config_from_options({"dataset": "synthetic_images", "use_runpod_service": "true"}, env_file=env_file)
    assert c.runpod_endpoint_id == "from-dotenv"
    assert cfg.runpod_api_key(env_file) == "sk-secret-dotenv"
    monkeypatch.setenv("RUNPOD_ENDPOINT_ID", "from-environment")
    c = config_from_options({"dataset": "synthetic_images", "use_runpod_service": "true"}, env_file=env_file)
    assert c.runpod_endpoint_id == "from-environment"  # the real environment wins over .env
    c = config_from_options({"dataset": "synthetic_images", "runpod_endpoint_id": "explicit"}, env_file=env_file)
    assert c.runpod_endpoint_id == "explicit"  # an explicit option wins over both
    assert "sk-secret" not in repr(c.to_dict())  # the key never enters the config


def test_help_lists_every_key_with_type_and_default():
    text = options_help()
    for f in dataclasses.fields(OptimizationConfig):
        if f.name != "pins" and not f.metadata.get("internal"):
            assert re.search(rf"^  {f.name}\s", text, re.M), f.name
    assert "type: int >= 1; default: 20" in text
    assert "learning_rate" in text and "embedding_dim" in text


def test_readme_table_of_keys_is_in_sync():
    readme = (ROOT / "README.md").read_text()
    start, end = "<!-- options-table:start -->", "<!-- options-table:end -->"
    assert start in readme and end in readme
    table = readme.split(start, 1)[1].split(end, 1)[0].strip()
    assert table == options_markdown_table(), "run: python scripts/sync_readme.py (the README table)"
