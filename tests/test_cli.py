"""The CLI as a user runs it: a subprocess, real worker processes, a real run folder."""

import csv
import json
import os
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpo.cli import main
from hpo.rundir import list_runs

from .conftest import BackgroundHpo, hpo_env, interruptible, run_hpo, selected

FAST = ["max_epochs_per_trial=2", "data_fraction=0.5", "quiet=true", "plot_generation=none"]

E2E = "test_optimize_end_to_end_writes_a_consistent_run_folder"
FASHION = "test_fashion_mnist_smoke_run_on_the_debian_files"


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory):
    """The two independent real runs, started together when the module starts (a run keeps about one core busy);
    each test below asserts on its own run's result."""
    started: dict[str, tuple[BackgroundHpo, Path]] = {}
    wanted = selected(request, E2E, FASHION)
    try:
        if E2E in wanted:
            folder = tmp_path_factory.mktemp("e2e")
            started[E2E] = (BackgroundHpo("optimize", "dataset=synthetic_images", "trials=3", "max_epochs_per_trial=2",
                                          "pruner=none", "data_fraction=0.2", "run_name=smoke",
                                          f"output_dir={folder}", cwd=folder), folder)
        if FASHION in wanted:  # real data (package dataset-fashion-mnist), a small fraction, 2 trials of 1 epoch
            folder = tmp_path_factory.mktemp("fashion")
            started[FASHION] = (BackgroundHpo("optimize", "dataset=fashion_mnist", "trials=2", "max_epochs_per_trial=1",
                                              "data_fraction=0.03", "pruner=none", "run_name=fm",
                                              f"output_dir={folder}", "quiet=true", "max_params=300000",
                                              "plot_generation=none", cwd=folder, HPO_DATA_DIR=str(folder / "empty"),
                                              KERAS_HOME=str(folder / "keras")), folder)
        yield started
    finally:
        for run, _ in started.values():
            run.stop()


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_optimize_end_to_end_writes_a_consistent_run_folder(runs):
    background, tmp_path = runs[E2E]  # hpo optimize dataset=synthetic_images trials=3 max_epochs_per_trial=2 ...
    proc = background.result()
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "smoke"
    for name in ("config.json", "study.db", "trials.csv", "best.json", "best_model.keras"):
        assert (run / name).is_file(), name
    rows = read_csv(run / "trials.csv")
    assert [r["state"] for r in rows] == ["complete"] * 3
    best = json.loads((run / "best.json").read_text())
    best_row = max(rows, key=lambda r: float(r["value"]))
    assert int(best_row["number"]) == best["number"]
    assert float(best_row["test_accuracy"]) == pytest.approx(best["test_accuracy"])
    assert best["value"] == pytest.approx(best["val_accuracy"])  # mode=simple: validation accuracy
    with sqlite3.connect(run / "study.db") as db:
        states = db.execute("select state from trials").fetchall()
        top = db.execute("select max(value) from trial_values").fetchone()[0]
    assert [s for (s,) in states] == ["COMPLETE"] * 3
    assert top == pytest.approx(best["value"])
    assert f"best trial: #{best['number']}" in proc.stdout
    assert "run folder:" in proc.stdout
    # the saved model is the best trial's model
    import keras

    from hpo import datasets

    model = keras.models.load_model(run / "best_model.keras")
    data = datasets.load("synthetic_images", seed=42 + best["number"])
    _, acc = model.evaluate(data.x_test, data.y_test, verbose=0)
    assert acc == pytest.approx(best["test_accuracy"], abs=1e-5)
    # `hpo show` reads it back
    shown = run_hpo("show", str(run), cwd=tmp_path)
    assert shown.returncode == 0 and f"best trial: #{best['number']}" in shown.stdout
    config = json.loads((run / "config.json").read_text())
    assert config["config"]["trials"] == 3 and config["study_name"] == "smoke"


@pytest.mark.parametrize("args,fragment", [
    (["dataset=synthetic_images", "trails=3"], "unknown option 'trails' (did you mean trials?)"),
    (["dataset=synthetic_images", "quiet=maybe"], "not a boolean"),
    (["dataset=synthetic_images", "trials=-2"], "out of range"),
    (["dataset=synthetic_images", "mode=best"], "allowed: simple, health, pareto"),
    (["dataset=synthetic_images", "trials"], "expected key=value"),
    (["dataset=nope"], "is not allowed (no built-in dataset and no file or folder of that name); allowed: mnist"),
    (["trials=3"], "dataset is required"),
])
def test_bad_input_exits_2_with_a_message_and_writes_nothing(tmp_path, capsys, args, fragment):
    out = tmp_path / "results"
    code = main(["optimize", *args, f"output_dir={out}"])
    err = capsys.readouterr().err
    assert code == 2
    assert fragment in err and "Traceback" not in err
    assert not out.exists()


def test_missing_dataset_files_exit_2_and_write_nothing(tmp_path, capsys, monkeypatch):
    from hpo import datafiles

    def no_network(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(datafiles, "_download", no_network)
    monkeypatch.setenv("HPO_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    out = tmp_path / "results"
    code = main(["optimize", "dataset=cifar10", f"output_dir={out}"])
    err = capsys.readouterr().err
    assert code == 2 and "cifar" in err and "Traceback" not in err
    assert not out.exists()


def test_a_run_whose_storage_cannot_be_opened_leaves_no_folder_behind(tmp_path, capsys):
    """The workers start before the study is opened; a start that fails there removes the folder it made (before:
    its lock file and logs/ stayed, and the run name was refused as "not an hpo run folder")."""
    out = tmp_path / "out"
    args = ["optimize", "dataset=synthetic_images", "trials=1", f"output_dir={out}", "run_name=a",
            f"storage=sqlite:///{tmp_path}/no/such/folder/x.db"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "cannot be opened" in err and "Traceback" not in err
    assert not (out / "a").exists()
    (out / "b" / "logs").mkdir(parents=True)  # what an older hpo left: the name is usable again
    (out / "b" / ".hpo.lock").write_text("")
    assert main(args[:4] + ["run_name=b", "storage=sqlite://"]) == 2  # in memory: refused before any folder
    assert "in-memory SQLite" in capsys.readouterr().err
    from hpo.config import config_from_options
    from hpo.rundir import prepare_run_dir

    _, resuming, _ = prepare_run_dir(config_from_options({"dataset": "synthetic_images", "output_dir": str(out),
                                                          "run_name": "b"}))
    assert resuming is False


def test_show_on_a_study_that_is_no_database_is_a_clear_error(tmp_path, capsys):
    from hpo.config import config_from_options
    from hpo.rundir import write_config

    run = tmp_path / "r"
    run.mkdir()
    write_config(run, config_from_options({"dataset": "synthetic_images", "run_name": "r"}))
    (run / "study.db").write_text("garbage")
    assert main(["show", str(run)]) == 2
    err = capsys.readouterr().err
    assert "cannot be read" in err and "not a database" in err and "Traceback" not in err


def test_a_reader_that_goes_away_is_no_error():
    """`hpo datasets | head -c 1`: the pipe closes before hpo writes; hpo ends quietly (before: a BrokenPipeError
    traceback and exit 1)."""
    proc = subprocess.Popen([sys.executable, "-m", "hpo", "datasets"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and b"Traceback" not in err and b"BrokenPipe" not in err, err


def test_usage_errors_exit_2(capsys, tmp_path):
    assert main(["frobnicate"]) == 2
    assert main([]) == 2
    assert main(["show"]) == 2
    assert main(["show", "/nonexistent/run"]) == 2
    capsys.readouterr()
    a_file = tmp_path / "x.txt"
    a_file.write_text("")
    assert main(["show", str(a_file)]) == 2 and "is a file, not a run folder" in capsys.readouterr().err
    assert main(["runs", str(a_file)]) == 2 and "is a file, not a folder" in capsys.readouterr().err


def test_a_rest_run_that_never_started_is_listed_and_shown_with_its_state(capsys, tmp_path):
    """A run of the REST server that failed before its study existed leaves only run_state.json: hpo runs lists it
    with its state (it was left out), hpo show says what happened (it said 'not an hpo run folder')."""
    from hpo.exceptions import BackendUnavailable
    from hpo.run_manager import RunManager

    def unavailable(config, run_dir):
        raise BackendUnavailable("no endpoint answers at http://127.0.0.1:9")

    manager = RunManager(tmp_path, backend_factory=unavailable)
    run = manager.submit({"dataset": "synthetic_images", "trials": 1, "run_name": "never", "plot_generation": "none"})
    run.thread.join(60)
    manager.shutdown()
    assert manager.status("never")["state"] == "failed" and not (tmp_path / "never" / "config.json").exists()
    assert [(r["name"], r["dataset"], r["state"], r["trials"]) for r in list_runs(tmp_path)] == [
        ("never", "synthetic_images", "failed", 0)]
    assert main(["runs", str(tmp_path)]) == 0
    assert [line.split()[:3] for line in capsys.readouterr().out.splitlines()[1:]] == [
        ["never", "synthetic_images", "failed"]]
    assert main(["show", str(tmp_path / "never")]) == 2
    err = capsys.readouterr().err
    assert ("is a run of the REST API that never started (failed: the execution backend is unavailable: no endpoint "
            "answers at http://127.0.0.1:9)") in err and "Traceback" not in err


def test_help_and_import_do_not_import_tensorflow():
    code = ("import sys, contextlib, io\n"
            "import hpo\n"
            "from hpo.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "    try:\n"
            "        main(['optimize', '--help'])\n"
            "    except SystemExit:\n"
            "        pass\n"
            "assert 'learning_rate' in out.getvalue() and 'concurrent_workers' in out.getvalue()\n"
            "bad = [m for m in ('tensorflow', 'keras') if m in sys.modules]\n"
            "assert not bad, bad\n")
    proc = subprocess.run([sys.executable, "-c", code], env=hpo_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([sys.executable, "-m", "hpo", "--help"], env=hpo_env(), capture_output=True, text=True)
    assert proc.returncode == 0 and "optimize" in proc.stdout


def test_datasets_command_lists_every_dataset(capsys):
    assert main(["datasets", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == {"mnist", "fashion_mnist", "cifar10", "cifar100", "gtsrb", "imdb", "reuters", "mnist1d",
                         "synthetic_images", "synthetic_text", "synthetic_sequence"}
    assert rows["mnist1d"]["modality"] == "sequence" and rows["mnist1d"]["input_shape"] == [40, 1]
    assert rows["gtsrb"]["classes"] == 43 and rows["cifar100"]["input_shape"] == [32, 32, 3]
    assert rows["fashion_mnist"]["available_offline"] is True  # Debian's dataset-fashion-mnist package
    assert rows["imdb"]["modality"] == "text"


def _wait_for_rows(csv_path: Path, n: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"hpo exited early ({proc.returncode}): {proc.stderr.read()[-3000:]}")
        if csv_path.exists() and sum(r["state"] == "complete" for r in read_csv(csv_path)) >= n:
            return
        time.sleep(0.2)
    raise AssertionError("timed out waiting for trials")


def test_ctrl_c_exits_130_and_the_run_resumes(tmp_path):
    # trials of 10 epochs (no early stop): once the first is recorded, the other three still have 30 epochs to train,
    # so the Ctrl-C (sent within a poll of that) always lands mid-run
    args = [sys.executable, "-m", "hpo", "optimize", "dataset=synthetic_images", "trials=4", "run_name=intr",
            f"output_dir={tmp_path}", "pruner=none", "max_epochs_per_trial=10", "early_stopping_patience=10",
            "data_fraction=0.2", "quiet=true", "plot_generation=none"]
    proc = subprocess.Popen(args, env=hpo_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=interruptible)
    _wait_for_rows(tmp_path / "intr" / "trials.csv", 1, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    [line] = [line for line in out.splitlines() if "Resume with: " in line]
    command = shlex.split(line.split("Resume with: ", 1)[1])  # every option given, this folder
    assert command[:2] == ["hpo", "optimize"] and "run_name=intr" in command and f"output_dir={tmp_path}" in command
    assert set(args[4:]) <= set(command[2:]), command  # max_epochs_per_trial=10 too: the same study goes on
    rows = read_csv(tmp_path / "intr" / "trials.csv")
    done = [r for r in rows if r["state"] == "complete"]
    assert len(done) >= 1 and len(done) < 4
    [listed] = list_runs(tmp_path)
    assert listed["state"] == "interrupted"
    # the printed command finishes the study without repeating completed trials
    resumed = run_hpo(*command[1:], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rows = read_csv(tmp_path / "intr" / "trials.csv")
    complete = [r for r in rows if r["state"] == "complete"]
    assert len(complete) == 4
    [listed] = list_runs(tmp_path)  # resumed to the end: finished, the interrupted trials not counted
    assert listed["state"] == "finished" and listed["trials"] == 4, listed
    retried = [r for r in rows if r["state"] == "interrupted"]
    assert retried and all(r["reason"].startswith("interrupted; retried as trial ") for r in retried)
    assert {r["number"] for r in done} <= {r["number"] for r in complete}
    params = [tuple(v for k, v in sorted(r.items()) if k.startswith("param_")) for r in complete]
    assert len(set(params)) == 4


def test_a_killed_run_resumes_to_exactly_the_asked_total(tmp_path):
    args = [sys.executable, "-m", "hpo", "optimize", "dataset=synthetic_images", "trials=4", "run_name=killed",
            f"output_dir={tmp_path}", "pruner=none", *FAST]
    proc = subprocess.Popen(args, env=hpo_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_rows(tmp_path / "killed" / "trials.csv", 2, proc)
    proc.kill()  # SIGKILL: no cleanup at all
    proc.communicate()
    first = [r for r in read_csv(tmp_path / "killed" / "trials.csv") if r["state"] == "complete"]
    assert 2 <= len(first) < 4
    resumed = run_hpo("optimize", "dataset=synthetic_images", "trials=4", "run_name=killed",
                      f"output_dir={tmp_path}", "pruner=none", *FAST, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rows = read_csv(tmp_path / "killed" / "trials.csv")
    complete = [r for r in rows if r["state"] == "complete"]
    assert len(complete) == 4
    params = [tuple(v for k, v in sorted(r.items()) if k.startswith("param_")) for r in complete]
    assert len(set(params)) == 4, "a completed trial was repeated"
    for r in first:  # earlier results are kept as they were
        same = [c for c in complete if c["number"] == r["number"]]
        assert same and same[0]["value"] == r["value"]


def test_fashion_mnist_smoke_run_on_the_debian_files(runs):
    """Real data (package dataset-fashion-mnist), a small fraction, 2 trials of 1 epoch (the runs fixture)."""
    background, tmp_path = runs[FASHION]
    proc = background.result()
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_csv(tmp_path / "fm" / "trials.csv")
    assert [r["state"] for r in rows] == ["complete", "complete"]
    best = json.loads((tmp_path / "fm" / "best.json").read_text())
    assert best["val_accuracy"] > 0.3  # 10 classes: chance is 0.1
    assert best["test_accuracy"] > 0.3


def test_a_parameter_of_another_space_names_the_users_own_data(tmp_path, capsys):
    import numpy as np

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "sig.npz", x=rng.normal(size=(200, 20)), y=np.arange(200) % 3)
    assert main(["optimize", f"dataset={tmp_path / 'sig.npz'}", "filters=32", f"output_dir={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err
    assert "filters is a parameter of the CNN (image) space and does not apply to sequence dataset" in err
    assert "sig.npz" in err and "dataset custom" not in err and "Traceback" not in err
