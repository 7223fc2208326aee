"""W&B offline: one run per trial plus the sweep-level run under output_dir, read back with wandb's own CLI.

``wandb leet inspect`` is wandb's reader of ``.wandb`` transaction logs: ``--json`` prints the records,
``--summary --json`` the run's summary and config as W&B would show them.
"""

from __future__ import annotations

import contextlib
import io
import json
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from ness_sweep import run
from ness_sweep.sweep import dashboards

NUM_TASKS = 5  # permuted_digits
TRIALS = 3


def wandb_cli(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "wandb", *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done


def read_run(run_dir: Path) -> dict:
    """One offline run as wandb reads it: its records, and its summary and config."""
    with ThreadPoolExecutor(2) as pool:
        records, summary = pool.map(lambda flags: wandb_cli("leet", "inspect", *flags, str(run_dir)).stdout,
                                    [["--json"], ["--summary", "--json"]])
    records = [json.loads(line) for line in records.splitlines() if line.startswith("{")]
    found = json.loads(summary)
    (header,) = [r["run"] for r in records if r["type"] == "run"]
    found.update(dir=run_dir, group=header["run_group"], job_type=header.get("job_type"),
                 history=[r["history"]["item"] for r in records if r["type"] == "history"],
                 staged=[entry["local_path"] for r in records if r["type"] == "artifact"
                         for entry in r["artifact"]["manifest"]["contents"]])
    return found


def table_file(found: dict, key: str) -> dict:
    """A table logged to the summary: W&B keeps it as JSON in the run's files."""
    reference = found["summary"][key]
    assert reference["_type"] == "table-file"
    return json.loads((found["dir"] / "files" / reference["path"]).read_text())


@pytest.fixture(scope="module")
def swept(ray_session, tmp_path_factory):
    out = tmp_path_factory.mktemp("wandb_sweep")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = run.main(["space=smoke", "train.epochs=1", f"sweep.num_samples={TRIALS}", "sweep.scheduler=fifo",
                         "sweep.confirm_top=0", "sweep.metric=acc", "sweep.select_on_test=true",  # the opt-in, shown
                         "sweep.name=wb", f"output_dir={out}"])  # wandb.mode: offline by default
    lines = printed.getvalue().splitlines()
    assert code == 0, lines
    sweep_dir = out / "wb"
    run_dirs = sorted((sweep_dir / "wandb").glob("offline-run-*"))
    with ThreadPoolExecutor(len(run_dirs)) as pool:
        runs = list(pool.map(read_run, run_dirs))
    return {"dir": sweep_dir, "lines": lines, "runs": runs,
            "rows": {r["trial_id"]: r for r in pq.read_table(sweep_dir / "results.parquet").to_pylist()}}


def trial_runs(swept) -> list:
    return [found for found in swept["runs"] if found["job_type"] != dashboards.SUMMARY_JOB_TYPE]


def test_one_offline_run_per_trial_plus_the_sweep_run_under_output_dir(swept):
    assert len(swept["runs"]) == TRIALS + 1
    assert sorted(found["name"] for found in swept["runs"]) == sorted([*swept["rows"], "wb-summary"])
    assert {found["group"] for found in swept["runs"]} == {"wb"}
    assert all(found["state"] == "finished" for found in swept["runs"])
    wandb_dir = swept["dir"] / "wandb"
    for found in swept["runs"]:  # the tables they will upload are staged beside them, not in the home folder
        assert found["staged"] and all(Path(path).is_relative_to(wandb_dir) for path in found["staged"])


def test_trial_summary_holds_acc_bwt_and_the_accuracy_matrix_table(swept):
    for found in trial_runs(swept):
        row, summary = swept["rows"][found["name"]], found["summary"]
        for key in ("acc", "bwt", "forgetting", "seconds"):
            assert summary[key] == pytest.approx(row[key]), key
        assert summary["trainable_params"] == row["trainable_params"] and summary["status"] == "TERMINATED"
        matrix = table_file(found, "acc_matrix")
        assert matrix["columns"] == ["after_task", *(f"task_{j}" for j in range(1, NUM_TASKS + 1))]
        assert [cells[0] for cells in matrix["data"]] == list(range(1, NUM_TASKS + 1))
        assert [cells[1:] for cells in matrix["data"]] == row["acc_matrix"]
        (heatmap,) = json.loads((found["dir"] / "files" / summary["acc_matrix_heatmap"]["path"]).read_text())["data"]
        assert heatmap["type"] == "heatmap" and heatmap["z"] == row["acc_matrix"]  # the report's figure
        assert (heatmap["zmin"], heatmap["zmax"]) == (0, 100)


def test_trial_run_has_its_resolved_config_and_per_task_accuracies_and_diagnostics(swept):
    for found in trial_runs(swept):
        row, config = swept["rows"][found["name"]], found["config"]
        assert config["train"]["lr"] == row["train.lr"] and config["ness"]["threshold"] == row["ness.threshold"]
        assert config["train"]["epochs"] == 1 and config["benchmark"] == "permuted_digits" and config["seeds"] == [0]
        history = found["history"]
        assert [h["task"] for h in history] == list(range(1, NUM_TASKS + 1))
        for t, h in enumerate(history):
            seen = [h[f"acc_task/{j + 1}"] for j in range(t + 1)]
            assert seen == pytest.approx(row["acc_matrix"][t][:t + 1])
            assert h["acc_seen"] == pytest.approx(sum(seen) / len(seen))
            logged = {key[len("diagnostics/"):]: value for key, value in h.items() if key.startswith("diagnostics/")}
            assert logged == dict(row["diagnostics"][t]) and (t == 0) == (logged == {})  # NESS: rank/<layer>


def test_sweep_run_holds_the_results_table(swept):
    (found,) = [found for found in swept["runs"] if found["job_type"] == dashboards.SUMMARY_JOB_TYPE]
    table = table_file(found, "results")
    for key in ("trial_id", "status", "train.lr", "ness.threshold", "ness.rank", "acc", "bwt", "forgetting"):
        assert key in table["columns"], key
    cells = [dict(zip(table["columns"], data)) for data in table["data"]]
    assert sorted(c["trial_id"] for c in cells) == sorted(swept["rows"])
    for c in cells:
        row = swept["rows"][c["trial_id"]]
        for key in ("status", "train.lr", "ness.threshold"):
            assert c[key] == row[key], key
        assert (c["acc"], c["bwt"]) == pytest.approx((row["acc"], row["bwt"]))


def test_printed_sync_command_covers_every_offline_run(swept):
    (line,) = [line for line in swept["lines"] if "wandb sync" in line]
    command = shlex.split(line.split(": ", 1)[1])
    assert command == ["wandb", "sync", str(swept["dir"] / "wandb")]
    listed = wandb_cli("sync", "--dry-run", *command[2:])
    assert f"Would sync {TRIALS + 1} run(s)" in listed.stdout + listed.stderr


def test_online_without_a_key_is_one_line_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no_netrc"))
    assert run.main(["space=smoke", "wandb.mode=online", f"output_dir={tmp_path / 'out'}"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: wandb.mode=online: no W&B API key") and "\n" not in error
    assert not (tmp_path / "out").exists()


def test_selecting_on_test_is_said_on_the_console_the_page_best_yaml_and_wandb(swept):
    assert "(selected on test)" in swept["lines"][0]
    assert f"best {TRIALS} by acc (max) (selected on test)" in swept["lines"]
    assert "<b>(selected on test)</b>" in (swept["dir"] / "report.html").read_text()
    assert "in the search (selected on test)" in (swept["dir"] / "best.yaml").read_text().splitlines()[0]
    (found,) = [found for found in swept["runs"] if found["job_type"] == dashboards.SUMMARY_JOB_TYPE]
    assert found["summary"]["selection"] == "selected on test"
