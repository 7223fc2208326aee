"""ness_sweep: hyperparameter sweeps of NESS (null-space continual learning) on Ray Tune."""
