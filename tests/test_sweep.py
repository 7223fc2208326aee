"""End to end on permuted_digits with a local Ray of 2 CPUs: the table, W&B runs, search, ASHA, Pareto, rerun."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import statistics
import struct
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ness_sweep import report, run
from ness_sweep.benchmarks import stream_for
from ness_sweep.config import argument_value
from ness_sweep.methods import load_run_config, make_trainer
from ness_sweep.sweep import plan as planning, tuner

NUM_TASKS = 5  # permuted_digits

EXPECTED_COLUMNS = {
    "trial_id": pa.string(), "status": pa.string(), "node_ip": pa.string(), "node_id": pa.string(),
    "benchmark": pa.string(), "method": pa.string(), "device": pa.string(),
    "train.epochs": pa.int64(), "train.lr": pa.float64(), "ness.threshold": pa.float64(), "ness.rank": pa.float64(),
    "seeds": pa.list_(pa.int64()), "task": pa.int64(), "acc_seen": pa.float64(), "valid_acc_seen": pa.float64(),
    "acc": pa.float64(), "bwt": pa.float64(), "forgetting": pa.float64(),
    "acc_std": pa.float64(), "bwt_std": pa.float64(), "forgetting_std": pa.float64(),
    "valid_acc": pa.float64(), "valid_bwt": pa.float64(), "valid_forgetting": pa.float64(),
    "stage": pa.string(), "confirms": pa.string(), "valid_acc_matrix": pa.list_(pa.list_(pa.float64())),
    "acc_matrix": pa.list_(pa.list_(pa.float64())), "diagnostics": pa.list_(pa.map_(pa.string(), pa.float64())),
    "trainable_params": pa.list_(pa.int64()), "seconds": pa.float64(),
}


def run_command(args):
    """``python -m ness_sweep.run`` in this process (sharing the test Ray); returns (exit code, stdout lines)."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = run.main(args)
    return code, printed.getvalue().splitlines()


def wandb_records(path: Path):
    """The records of an offline run's .wandb file (a LevelDB-style log of protobuf records)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    position, block, pending = 7, 32768, b""
    while position + 7 <= len(data):
        if block - position % block < 7:
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        chunk = data[position + 7:position + 7 + length]
        position += 7 + length
        if kind == 0:
            break
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def wandb_run(path: Path) -> dict:
    """Name, group, per-step history and final summary of one offline run."""
    found = {"history": [], "summary": {}}
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            found["name"], found["group"] = record.run.display_name, record.run.run_group
        elif kind == "history":
            found["history"].append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                                     for item in record.history.item})
        elif kind == "summary":
            for item in record.summary.update:
                found["summary"][item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return found


def recompute(row: dict, seed: int) -> dict:
    """The trial's configuration trained again here, without Ray."""
    own = ("ness.threshold", "ness.rank") if row["method"] == "ness" else ()  # a run takes its method's group only
    settings = [f"{key}={argument_value(row[key])}" for key in
                ("benchmark", "method", "train.epochs", "train.lr", *own, "device")]
    cfg = load_run_config([*settings, f"seed={seed}"])
    stream = stream_for(cfg, seed)
    return make_trainer(cfg, stream, log=None).run().to_dict()


@pytest.fixture(scope="module")
def six(ray_session, tmp_path_factory):
    """The shipped smoke space, 6 trials, every trial to the end (fifo), then its best 2 by valid_acc confirmed on
    2 fresh seeds each."""
    out = tmp_path_factory.mktemp("six")
    args = ["space=smoke", "sweep.num_samples=6", "sweep.scheduler=fifo", "sweep.name=six", "sweep.confirm_top=2",
            "sweep.confirm_seeds=2", f"output_dir={out}"]
    code, lines = run_command(args)
    assert code == 0, lines
    table = pq.read_table(out / "six" / "results.parquet")
    rows = table.to_pylist()
    return {"args": args, "lines": lines, "table": table, "rows": [r for r in rows if r["stage"] == "search"],
            "reruns": [r for r in rows if r["stage"] == "confirm"], "dir": out / "six"}


def test_six_trials_one_parquet_row_each_with_the_schema(six):
    table = six["table"]
    assert table.num_rows == 6 + 2 * 2 and len(six["rows"]) == 6
    assert len({r["trial_id"] for r in table.to_pylist()}) == 10
    for name, kind in EXPECTED_COLUMNS.items():
        assert table.schema.field(name).type == kind, name
    assert {r["status"] for r in table.to_pylist()} == {"TERMINATED"}
    meta = json.loads(table.schema.metadata[b"ness_sweep"])
    assert meta["metrics"] == ["valid_acc"] and meta["modes"] == ["max"] and meta["selected_on"] == "valid"
    assert set(meta["searched"]) == {"ness.threshold", "train.lr"}


def test_rows_agree_with_the_trials_own_results(six, ray_session):
    node_id = ray_session.get_runtime_context().get_node_id()
    for row in six["rows"]:
        R, V = row["acc_matrix"], row["valid_acc_matrix"]
        assert len(R) == NUM_TASKS and all(R[i][j] is None for i in range(NUM_TASKS) for j in range(i + 1, NUM_TASKS))
        last = R[-1]
        assert row["acc"] == pytest.approx(sum(last) / NUM_TASKS)
        assert row["bwt"] == pytest.approx(sum(last[j] - R[j][j] for j in range(NUM_TASKS - 1)) / (NUM_TASKS - 1))
        assert row["valid_acc"] == pytest.approx(sum(V[-1]) / NUM_TASKS) and V != R  # another split, other numbers
        assert row["valid_bwt"] == pytest.approx(
            sum(V[-1][j] - V[j][j] for j in range(NUM_TASKS - 1)) / (NUM_TASKS - 1))
        assert row["task"] == NUM_TASKS and row["acc_seen"] == pytest.approx(row["acc"])
        assert row["valid_acc_seen"] == pytest.approx(row["valid_acc"])
        assert row["train.epochs"] == 2 and row["method"] == "ness" and row["seeds"] == [0]
        assert len(row["diagnostics"]) == NUM_TASKS and len(row["trainable_params"]) == NUM_TASKS
        assert row["diagnostics"][0] == []
        assert all({k for k, _ in d} == {"rank/fc1", "rank/fc2"} for d in row["diagnostics"][1:])
        assert row["seconds"] > 0 and row["node_ip"] == "127.0.0.1" and row["node_id"] == node_id
    again = recompute(six["rows"][0], seed=0)
    assert again["acc_matrix"] == six["rows"][0]["acc_matrix"]
    assert again["valid_acc_matrix"] == six["rows"][0]["valid_acc_matrix"]


def test_each_trial_is_a_wandb_run_with_per_task_acc_seen_and_final_acc_bwt(six):
    runs = [wandb_run(p) for p in sorted((six["dir"] / "wandb").glob("offline-run-*/run-*.wandb"))]
    runs = [found for found in runs if found["name"] != "six-summary"]  # the sweep-level run: tests/test_wandb.py
    assert len(runs) == 6 + 4  # a run per search trial and per rerun
    by_trial = {r["trial_id"]: r for r in six["rows"] + six["reruns"]}
    for found in runs:
        row = by_trial[found["name"]]
        assert found["group"] == "six"
        assert [h["task"] for h in found["history"]] == list(range(1, NUM_TASKS + 1))
        assert found["history"][-1]["acc_seen"] == pytest.approx(row["acc"])
        assert found["history"][-1]["valid_acc_seen"] == pytest.approx(row["valid_acc"])
        assert found["summary"]["acc"] == pytest.approx(row["acc"])
        assert found["summary"]["bwt"] == pytest.approx(row["bwt"])


def test_seeded_search_proposes_the_same_first_configurations(six, tmp_path):
    plan = planning.build_plan(["space=smoke", f"output_dir={tmp_path}"])

    def first(searcher, n=6):
        return [tuple(sorted(searcher.suggest(f"t{i}").items())) for i in range(n)]

    proposed = first(tuner.make_searcher(plan))
    assert proposed == first(tuner.make_searcher(plan))
    ran = {tuple(sorted((k, r[k]) for k in ("ness.threshold", "train.lr"))) for r in six["rows"]}
    assert ran == set(proposed)  # the sweep ran exactly the seeded proposals
    reseeded = planning.build_plan(["space=smoke", "sweep.seed=1", f"output_dir={tmp_path}"])
    assert first(tuner.make_searcher(reseeded)) != proposed


def test_progress_is_one_line_per_finished_trial(six):
    progress = [line for line in six["lines"] if line.startswith("[")]
    assert len(progress) == 6 + 4 and all(" done " in line for line in progress)
    assert sum(line.startswith("[") and "/4]" in line for line in six["lines"]) == 4  # the confirmation counts its own


def test_the_confirmation_reruns_the_best_by_validation_on_fresh_seeds(six):
    """The two search rows with the best valid_acc, each rerun on seeds 1 and 2 (the search used 0), with exactly
    their settings; Optuna never saw a rerun (tests/test_optuna_study.py: it sees validation numbers only)."""
    top = sorted(six["rows"], key=lambda r: -r["valid_acc"])[:2]
    assert {r["confirms"] for r in six["reruns"]} == {r["trial_id"] for r in top}
    settings = [c for c in json.loads(six["table"].schema.metadata[b"ness_sweep"])["config_columns"]]
    for row in top:
        reruns = [r for r in six["reruns"] if r["confirms"] == row["trial_id"]]
        assert sorted(r["seeds"][0] for r in reruns) == [1, 2]
        assert all({k: r[k] for k in settings} == {k: row[k] for k in settings} for r in reruns)
    assert all(r["confirms"] is None for r in six["rows"])


def test_the_winner_is_the_best_confirmed_validation_mean_and_its_rerun_line_gives_the_headline(six, tmp_path):
    means = {}
    for rerun in six["reruns"]:
        means.setdefault(rerun["confirms"], []).append(rerun)
    winner = max(means, key=lambda t: statistics.fmean(r["valid_acc"] for r in means[t]))
    accs = [r["acc"] for r in means[winner]]
    lines = six["lines"]
    headline = next(line for line in lines if line.startswith("winner by confirmed valid_acc: "))
    assert f"trial {winner}: ACC {statistics.fmean(accs):.2f} ± {statistics.stdev(accs):.2f}" in headline
    searched = next(r for r in six["rows"] if r["trial_id"] == winner)
    assert f"the search measured ACC {searched['acc']:.2f}" in headline and "fresh seeds 1, 2" in headline
    line = lines[lines.index("rerun the winner on its confirmation seeds:") + 1].strip()
    words = shlex.split(line)
    assert words[:3] == ["python", "-m", "ness_sweep.train"]
    assert {"threads=1", "device=cpu", "seeds=[1,2]"} <= set(words)
    output = tmp_path / "rerun.json"
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"  # `python` is this interpreter
    done = subprocess.run(f"{line} output={output}", shell=True, capture_output=True, text=True,
                          env={**os.environ, "PATH": path})
    assert done.returncode == 0, done.stderr
    rerun = json.loads(output.read_text())
    assert (rerun["acc"], rerun["acc_std"]) == pytest.approx((statistics.fmean(accs), statistics.stdev(accs)), abs=1e-9)
    best_yaml = (six["dir"] / "best.yaml").read_text()
    assert best_yaml.startswith(f"# trial {winner} in the search: valid_acc ") and "\n# confirmed: " in best_yaml
    preset = load_run_config([f"preset={six['dir'] / 'best.yaml'}"])
    assert preset.train.lr == searched["train.lr"] and list(preset.seeds) == [1, 2]


def test_report_prints_the_same_from_parquet_alone(six, capsys):
    assert report.main([str(six["dir"])]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    start = six["lines"].index(printed[0])
    assert six["lines"][start:start + len(printed)] == printed


def test_asha_stops_weak_trials_early(ray_session, tmp_path):
    space = tmp_path / "hopeless_lr.yaml"
    space.write_text("description: one learning rate learns in one epoch, one cannot, one diverges\n"
                     "search: {train.lr: {choice: [0.05, 1.0e-6, 1.0e+12]}}\n"
                     "fixed: {train.epochs: 1}\n"
                     # seed 4 proposes 1e12, 0.05, 0.05, 1e-6, 1e-6, 0.05: weak trials come after strong ones
                     "sweep: {num_samples: 6, scheduler: asha, max_concurrent: 1, seed: 4, confirm_top: 0}\n")
    code, lines = run_command([f"space={space}", "sweep.name=asha", f"output_dir=file://{tmp_path}"])  # a URI
    assert code == 0, lines
    rows = pq.read_table(tmp_path / "asha" / "results.parquet").to_pylist()
    stopped = [r for r in rows if r["status"] == "STOPPED"]
    assert stopped and all(r["task"] < NUM_TASKS and r["acc"] is None for r in stopped)
    assert all(r["task"] == NUM_TASKS for r in rows if r["status"] == "TERMINATED")
    assert any("stopped" in line for line in lines if line.startswith("["))
    diverged = [r for r in rows if r["status"] == "DIVERGED"]  # a result, not an error to retry
    assert diverged and all(r["train.lr"] == 1e12 and "loss became" in r["error"] for r in diverged)


def test_two_objectives_give_a_pareto_front_and_seeds_give_mean_and_std(ray_session, tmp_path):
    space = tmp_path / "methods.yaml"
    space.write_text("search: {method: {choice: [ness, finetune]}, train.lr: {loguniform: [0.01, 0.1]}}\n"
                     "fixed: {train.epochs: 1}\n")
    code, lines = run_command([f"space={space}", "sweep.metric=[valid_acc,valid_bwt]", "sweep.mode=[max,max]",
                               "sweep.confirm_top=0", "sweep.num_samples=2", "trial.seeds=[1,2]", "sweep.name=pareto",
                               f"output_dir={tmp_path}"])
    assert code == 0, lines
    rows = pq.read_table(tmp_path / "pareto" / "results.parquet").to_pylist()
    assert len(rows) == 4 and {r["status"] for r in rows} == {"TERMINATED"}

    assert sorted(r["method"] for r in rows) == ["finetune", "finetune", "ness", "ness"]  # one study each, 2 trials

    def dominated(r):
        a, b = "valid_acc", "valid_bwt"
        return any(o[a] >= r[a] and o[b] >= r[b] and (o[a], o[b]) != (r[a], r[b]) for o in rows)

    front = {r["trial_id"] for r in rows if not dominated(r)}
    assert front
    assert any(line.startswith("Pareto front over valid_acc (max), valid_bwt (max)") for line in lines)
    shown = {line.split()[2].rstrip(":") for line in lines if line.strip().startswith("# trial ")}
    assert shown == front
    row = rows[0]
    assert row["seeds"] == [1, 2]
    runs = [recompute(row, seed) for seed in (1, 2)]
    assert row["acc"] == pytest.approx(statistics.fmean(r["acc"] for r in runs))
    assert row["acc_std"] == pytest.approx(statistics.stdev(r["acc"] for r in runs))
    assert row["bwt_std"] == pytest.approx(statistics.stdev(r["bwt"] for r in runs))


def test_resuming_a_finished_sweep_keeps_its_trials_and_reruns_no_confirmed_row(six):
    before = {r["trial_id"]: (r["acc"], r["seconds"]) for r in six["rows"] + six["reruns"]}
    code, lines = run_command([*six["args"], "resume=true"])
    assert code == 0, lines
    after = pq.read_table(six["dir"] / "results.parquet").to_pylist()
    assert {r["trial_id"]: (r["acc"], r["seconds"]) for r in after} == before  # training again would add seconds
    assert {r["status"] for r in after} == {"TERMINATED"}


def winner_of(six):
    """The confirmed search row with the best mean valid_acc over its reruns, and those reruns."""
    reruns = {}
    for rerun in six["reruns"]:
        reruns.setdefault(rerun["confirms"], []).append(rerun)
    winner = max(reruns, key=lambda t: statistics.fmean(r["valid_acc"] for r in reruns[t]))
    return winner, reruns[winner]


def test_the_wandb_summary_run_holds_the_confirmed_headline(six):
    runs = [wandb_run(p) for p in sorted((six["dir"] / "wandb").glob("offline-run-*/run-*.wandb"))]
    (summary,) = [found["summary"] for found in runs if found["name"] == "six-summary"]
    winner, reruns = winner_of(six)
    accs = [r["acc"] for r in reruns]
    assert summary["winner"] == winner and summary["selection"] == "selected on validation"
    assert (summary["confirmed/acc"], summary["confirmed/acc_std"]) == pytest.approx(
        (statistics.fmean(accs), statistics.stdev(accs)))
    assert summary["search/acc"] == next(r["acc"] for r in six["rows"] if r["trial_id"] == winner)
