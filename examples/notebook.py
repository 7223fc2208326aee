"""The Python API, cell by cell as in a notebook: one run, a comparison, a small sweep, and its table.

Run from this folder (about a minute on 2 CPU cores):

    python notebook.py

``ness_sweep.train`` and ``ness_sweep.sweep`` take the command line's settings, as ``key=value`` strings or
keyword arguments (groups as dicts, dotted keys through ``**{...}``), and return results instead of printing
them. Bad input raises ``ness_sweep.config.UserError`` before any work.
"""

import ness_sweep

# %% One NESS run on the example benchmark (rotated digits, examples/my_benchmark.py), quietly.
run = ness_sweep.train(benchmark="my_benchmark:rotated_digits", train={"epochs": 2}, out=None)
print(f"NESS:      ACC {run.acc:.2f}  BWT {run.bwt:.2f}  ranks after task 2: {run.runs[0]['diagnostics'][1]}")

# %% The forgetting baseline on the same stream and seed.
baseline = ness_sweep.train("method=finetune", benchmark="my_benchmark:rotated_digits", train={"epochs": 2},
                            out=None)
print(f"fine-tune: ACC {baseline.acc:.2f}  BWT {baseline.bwt:.2f}")

# %% A small sweep over the threshold and learning rate with the example CNN, chosen on validation data; its
# best configuration is then rerun on two fresh seeds (the confirmation). Every trial and rerun is a row.
found = ness_sweep.sweep(space="smoke", benchmark="my_benchmark:rotated_digits", model="my_model:build",
                         train={"epochs": 2}, sweep={"num_samples": 2, "scheduler": "fifo", "confirm_top": 1,
                                                     "confirm_seeds": 2},
                         wandb={"mode": "disabled"}, out=lambda line: None)  # in ness_sweep_results/ (output_dir)
table = found.to_pandas()
columns = ["trial_id", "stage", "status", "valid_acc", "acc", "bwt", "ness.threshold", "train.lr"]
print(table[columns].to_string(index=False))

# %% The headline: the chosen configuration's test ACC on the fresh seeds, beside the search's own number.
acc, std = found.confirmed.mean_std("acc")
print(f"chosen trial {found.best['trial_id']}: search ACC {found.best['acc']:.2f}; "
      f"confirmed on seeds {found.confirmed.seeds}: ACC {acc:.2f} ± {std:.2f}")

# %% Its settings (with the confirmation's seeds) rerun the headline exactly, without Ray.
rerun = ness_sweep.train(**found.best_config, out=None)
print(f"rerun of its settings: ACC {rerun.acc:.2f} ± {rerun.to_dict()['acc_std']:.2f}")
