"""A REST server that ran a real local run with every plot (plot_generation=all) never imported TensorFlow or Keras:
the plots of the best model were drawn by a process of their own, and are in the run folder and the report.

The server runs in a fresh Python process (the test process has imported TensorFlow elsewhere), with the real local
backend; the run is driven through the HTTP API (FastAPI's TestClient) and watched to its end on /runs/{id}/events.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from PIL import Image

from .conftest import hpo_env

RUN = dict(dataset="synthetic_images", trials=1, max_epochs_per_trial=1, data_fraction=0.2, plot_generation="all",
           pruner="none", quiet=True, run_name="tiny")
MODEL_PLOTS = {"confusion", "weights", "activations"}  # gradient norms are measured in health/pareto mode only


def test_a_server_that_ran_a_local_run_with_all_plots_never_imported_tensorflow(tmp_path):
    out = tmp_path / "runs"
    code = textwrap.dedent(f"""
        import json, re, sys
        from fastapi.testclient import TestClient
        from hpo.api import create_app

        with TestClient(create_app({str(out)!r}, token="")) as client:
            r = client.post("/runs", json={RUN!r})
            assert r.status_code == 201, r.text
            with client.stream("GET", "/runs/tiny/events") as events:  # the run's status until it ends
                kinds = [line for line in events.iter_lines() if line.startswith("event: ")]
            status = client.get("/runs/tiny").json()
            files = [f["name"] for f in client.get("/runs/tiny/files").json()["files"]]
            report = client.get("/runs/tiny/files/report.html").text
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras"))
        print(json.dumps({{"kinds": kinds, "state": status["state"], "error": status.get("error"), "files": files,
                          "figures": re.findall(r'<figure id="plot-([a-z]+)"', report), "loaded": loaded}}))
        assert loaded == [], loaded  # in this very process, after the run and its plots
    """)
    proc = subprocess.run([sys.executable, "-c", code], env=hpo_env(), cwd=tmp_path, capture_output=True, text=True,
                          timeout=1200)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-5000:])
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["loaded"] == []
    assert seen["state"] == "completed", seen
    assert seen["kinds"][-1] == "event: end"

    run_dir = out / "tiny"
    assert {f"plots/{name}.png" for name in MODEL_PLOTS} <= set(seen["files"]), seen["files"]
    for name in MODEL_PLOTS:  # written by the model-plot process, into this run's folder
        with Image.open(run_dir / "plots" / f"{name}.png") as im:
            im.verify()
            assert im.format == "PNG"
    assert (run_dir / "best_model.keras").is_file()
    assert MODEL_PLOTS | {"history", "timeline", "curves"} <= set(seen["figures"])  # and shown in the report
