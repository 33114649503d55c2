"""What users of other CLIs try first: `--key value` / `--key=value`, options in a TOML or YAML file with the
command line overriding it, `hpo runs` to list runs, and type errors that name the allowed range."""

from __future__ import annotations

import json

import pytest

import hpo
from hpo.backends import Backend
from hpo.cli import main
from hpo.cli_options import merge_options_file, normalize_key_values
from hpo.config import config_from_options
from hpo.protocol import TrialResult


class Instant(Backend):
    name = "instant"

    def run(self, job, **kw):
        acc = 0.5 + 0.1 * job.params["conv_blocks"] - job.params["dropout"] / 10
        return TrialResult(trial_id=job.trial_id, status="completed", epochs_run=1, best_epoch=1,
                           val_metrics={"accuracy": acc, "loss": 1 - acc}, test_metrics={"accuracy": acc},
                           executed_on="instant", history={"val_accuracy": [acc]})


def test_double_dash_options_are_read_as_key_values():
    assert normalize_key_values(["--dataset", "mnist", "--trials=8", "mode=health", "--quiet", "--seed", "3"]) == \
        ["dataset=mnist", "trials=8", "mode=health", "quiet=true", "seed=3"]
    assert normalize_key_values(["--max-epochs-per-trial", "4"]) == ["max_epochs_per_trial=4"]


def test_double_dash_on_the_command_line_is_understood_and_checked(tmp_path, capsys):
    assert main(["optimize", "--dataset", "nosuch", f"--output_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "dataset='nosuch' is not allowed" in err and "unrecognized arguments" not in err
    assert main(["optimize", "--dataset=synthetic_images", "--trials", "abc", f"--output_dir={tmp_path}"]) == 2
    assert "trials='abc' is not a whole number; allowed: int or none >= 1" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("name, text", [
    ("run.toml", 'dataset = "synthetic_images"\ntrials = 3\nmode = "health"\nactivation = "elu"\nquiet = true\n'),
    ("run.yaml", "dataset: synthetic_images\ntrials: 3\nmode: health\nactivation: elu\nquiet: true\n"),
])
def test_options_from_a_file_with_the_command_line_overriding_it(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    config = config_from_options(merge_options_file({"config": str(path), "trials": "5"}))
    assert (config.dataset, config.trials, config.mode, config.quiet) == ("synthetic_images", 5, "health", True)
    assert config.pins == {"activation": "elu"}  # a search parameter in the file pins it, as on the command line


@pytest.mark.parametrize("name, text, words", [
    ("bad.toml", "dataset = [1, 2]\n", "option dataset must be a single value"),
    ("bad.yaml", "- just\n- a list\n", "must hold a table of options"),
    ("bad.ini", "dataset=x\n", "unknown file type .ini"),
    ("broken.toml", "dataset = \n", "cannot be read"),
])
def test_a_bad_options_file_is_a_clear_error_and_writes_nothing(tmp_path, capsys, name, text, words):
    (tmp_path / name).write_text(text)
    assert main(["optimize", f"config={tmp_path / name}", f"output_dir={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_hpo_runs_lists_the_runs_of_a_folder(tmp_path, capsys):
    for name, trials in (("first", 2), ("second", 3)):
        hpo.optimize(dataset="synthetic_images", trials=trials, output_dir=str(tmp_path), run_name=name,
                     backend=Instant(), quiet=True, plot_generation="none", pruner="none", max_epochs_per_trial=2)
    (tmp_path / "not-a-run").mkdir()
    assert main(["runs", str(tmp_path), "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == {"first", "second"}
    assert rows["second"]["trials"] == 3 and rows["first"]["trials"] == 2
    assert rows["first"]["state"] == "finished" and rows["first"]["dataset"] == "synthetic_images"
    best = json.loads((tmp_path / "second" / "best.json").read_text())["value"]
    assert rows["second"]["best"] == best
    assert main(["runs", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "second" in out and "finished" in out
    assert main(["runs", str(tmp_path / "missing")]) == 2
