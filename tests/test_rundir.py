"""Run folders are relocatable: nothing in them depends on their absolute path. A copied or moved folder keeps
`hpo show`, `hpo.load_results` and resume working; config.json records the default study as the folder's own."""

from __future__ import annotations

import json
import shutil

import hpo
from hpo.backends import Backend
from hpo.cli import main
from hpo.protocol import TrialResult
from hpo.rundir import LOCAL_STUDY, open_run_study

FAST = dict(max_epochs_per_trial=2, quiet=True, pruner="none", plot_generation="none")


class Instant(Backend):
    """A fake trainer: val accuracy is a known function of the params (no TensorFlow)."""

    name = "instant"

    def run(self, job, **kw):
        acc = 0.5 + 0.1 * job.params["conv_blocks"] - job.params["dropout"] / 10
        return TrialResult(trial_id=job.trial_id, status="completed", epochs_run=1, best_epoch=1,
                           val_metrics={"accuracy": acc, "loss": 1 - acc}, test_metrics={"accuracy": acc - 0.01},
                           executed_on="instant", history={"val_accuracy": [acc]})


def test_a_copied_run_folder_shows_loads_and_resumes_where_it_now_is(tmp_path, capsys):
    first = hpo.optimize(dataset="synthetic_images", trials=2, output_dir=str(tmp_path / "a"), run_name="r",
                         backend=Instant(), **FAST)
    original = tmp_path / "a" / "r"
    doc = json.loads((original / "config.json").read_text())
    assert doc["storage_url"] == LOCAL_STUDY and str(tmp_path) not in json.dumps(doc)

    copy = tmp_path / "elsewhere" / "r"
    shutil.copytree(original, copy)
    shutil.rmtree(tmp_path / "a")  # the original is gone: nothing may point back to it

    assert main(["show", str(copy)]) == 0
    out = capsys.readouterr().out
    assert "trials: 2 completed" in out and f"best trial: #{first.best_trial_number}" in out
    loaded = hpo.load_results(copy)
    assert loaded.best_value == first.best_value and len(loaded.trials) == 2

    resumed = hpo.optimize(dataset="synthetic_images", trials=4, output_dir=str(tmp_path / "elsewhere"),
                           run_name="r", backend=Instant(), **FAST)
    assert resumed.completed == 4 and resumed.run_dir == str(copy)
    study, _ = open_run_study(copy)
    assert len(study.trials) == 4  # the resumed trials went into the copy's own study.db
    assert not (tmp_path / "a").exists()


def test_a_folder_from_before_relocatable_runs_is_read_from_its_own_study(tmp_path, capsys):
    """Older folders recorded their study.db by absolute path; moved, they are read from the copy beside config.json."""
    hpo.optimize(dataset="synthetic_images", trials=1, output_dir=str(tmp_path / "a"), run_name="old",
                 backend=Instant(), **FAST)
    config_path = tmp_path / "a" / "old" / "config.json"
    doc = json.loads(config_path.read_text())
    doc["storage_url"] = f"sqlite:///{tmp_path / 'a' / 'old' / 'study.db'}"
    config_path.write_text(json.dumps(doc))
    shutil.move(tmp_path / "a" / "old", tmp_path / "moved")
    assert main(["show", str(tmp_path / "moved")]) == 0
    assert "trials: 1 completed" in capsys.readouterr().out


def test_show_on_a_folder_without_its_study_is_a_clear_error(tmp_path, capsys):
    hpo.optimize(dataset="synthetic_images", trials=1, output_dir=str(tmp_path), run_name="x", backend=Instant(),
                 **FAST)
    (tmp_path / "x" / "study.db").unlink()
    assert main(["show", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "has no study.db" in err and "Traceback" not in err


def _listed(tmp_path, rows):
    """hpo runs' row of a run folder whose trials.csv holds ``rows`` of (state, reason)."""
    from hpo.config import config_from_options
    from hpo.rundir import list_runs, write_config

    run = tmp_path / "r"
    run.mkdir(exist_ok=True)
    write_config(run, config_from_options({"dataset": "synthetic_images", "run_name": "r", "trials": "3"}))
    lines = ["number,state,reason"] + [f"{i},{state},{reason}" for i, (state, reason) in enumerate(rows)]
    (run / "trials.csv").write_text("\n".join(lines) + "\n")
    [row] = list_runs(tmp_path)
    return row


def test_hpo_runs_counts_neither_interrupted_nor_queued_trials_and_knows_a_resumed_run_finished(tmp_path):
    resumed = [("interrupted", "interrupted; retried as trial 3"), ("complete", ""), ("pruned", ""),
               ("complete", ""), ("waiting", "")]
    assert {"state": "finished", "trials": 3, "completed": 2}.items() <= _listed(tmp_path, resumed).items()
    pending = [("interrupted", "interrupted; retried when the run resumes"), ("complete", "")]
    assert _listed(tmp_path, pending)["state"] == "interrupted"
    assert _listed(tmp_path, pending)["trials"] == 1
