"""The Python API, cell by cell as in a notebook: one run, a comparison, a small sweep, and its table.

Run from this folder (about a minute on 2 CPU cores):

    python notebook.py

``ness_sweep.train`` and ``ness_sweep.sweep`` take the command line's settings, as ``key=value`` strings or
keyword arguments (groups as dicts, dotted keys through ``**{...}``), and return results instead of printing
them. Bad input raises ``ness_sweep.config.UserError`` before any work.
"""

import ness_sweep

# %% One NESS run on the example benchmark (rotated digits, examples/my_benchmark.py), quietly.
run = ness_sweep.train(benchmark="my_benchmark:rotated_digits", train={"epochs": 3}, out=None)
print(f"NESS:      ACC {run.acc:.2f}  BWT {run.bwt:.2f}  ranks after task 2: {run.runs[0]['diagnostics'][1]}")

# %% The forgetting baseline on the same stream and seed.
baseline = ness_sweep.train("method=finetune", benchmark="my_benchmark:rotated_digits", train={"epochs": 3},
                            out=None)
print(f"fine-tune: ACC {baseline.acc:.2f}  BWT {baseline.bwt:.2f}")

# %% A small sweep over the threshold and learning rate with the example CNN; every trial is a row.
found = ness_sweep.sweep(space="smoke", benchmark="my_benchmark:rotated_digits", model="my_model:build",
                         train={"epochs": 2}, sweep={"num_samples": 3, "scheduler": "fifo"},
                         wandb={"mode": "disabled"}, output_dir="notebook_results", out=lambda line: None)
table = found.to_pandas()
print(table[["trial_id", "status", "acc", "bwt", "ness.threshold", "train.lr"]].to_string(index=False))

# %% The best trial's settings rerun it exactly: the same numbers, without Ray.
print(f"best trial {found.best['trial_id']}: ACC {found.best['acc']:.2f}")
rerun = ness_sweep.train(**found.best_config, out=None)
print(f"rerun of its settings: ACC {rerun.acc:.2f}")
