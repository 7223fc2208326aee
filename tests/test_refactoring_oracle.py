"""The refactoring oracle: fine-tuning"s and NESS"s accuracy matrices, trainable-parameter counts and NESS"s
ranks for a fixed seed on the embedded streams, recorded from commit 393b19e (the last commit before methods became
plug-ins, ``python -m ness_sweep.train ARGS train.epochs=3 seed=0 threads=1``) and embedded here. The redesign must
reproduce them bit for bit: any change in the order of float operations, the RNG draws or the data would show."""

import pytest

import ness_sweep

RECORDED_AT_393B19E = {
    "finetune_digits": {
        "args": ["method=finetune"],
        "acc_matrix": [
            [90.20044543429844, None, None, None, None],
            [87.52783964365256, 92.87305122494432, None, None, None],
            [58.57461024498886, 83.74164810690424, 92.87305122494432, None, None],
            [65.47884187082406, 83.74164810690424, 88.41870824053453, 93.54120267260579, None],
            [65.03340757238307, 81.51447661469933, 80.84632516703786, 88.8641425389755, 91.31403118040089],
        ],
        "trainable_params": [84480, 84480, 84480, 84480, 84480],
        "ranks": [{}, {}, {}, {}, {}],
    },
    "ness_digits": {
        "args": ["method=ness"],
        "acc_matrix": [
            [90.20044543429844, None, None, None, None],
            [90.64587973273942, 88.19599109131403, None, None, None],
            [90.86859688195992, 87.97327394209354, 82.85077951002228, None, None],
            [90.64587973273942, 88.41870824053453, 82.85077951002228, 83.29621380846325, None],
            [90.64587973273942, 88.64142538975501, 82.62806236080178, 83.29621380846325, 80.40089086859689],
        ],
        "trainable_params": [84480, 60416, 52992, 50176, 48384],
        "ranks": [{}, {"fc1": 14, "fc2": 212}, {"fc1": 3, "fc2": 194}, {"fc1": 1, "fc2": 185}, {"fc1": 0, "fc2": 179}],
    },
    "ness_stream_digits": {
        "args": ["method=ness", "ness.memory=stream", "ness.rank=0.5"],
        "acc_matrix": [
            [90.20044543429844, None, None, None, None],
            [90.20044543429844, 83.29621380846325, None, None, None],
            [90.20044543429844, 83.51893095768374, 78.84187082405346, None, None],
            [90.42316258351893, 83.51893095768374, 79.28730512249443, 80.84632516703786, None],
            [90.20044543429844, 83.51893095768374, 79.51002227171492, 80.84632516703786, 76.16926503340757],
        ],
        "trainable_params": [84480, 38912, 36096, 35584, 35328],
        "ranks": [{}, {"fc1": 14, "fc2": 128}, {"fc1": 3, "fc2": 128}, {"fc1": 1, "fc2": 128}, {"fc1": 0, "fc2": 128}],
    },
    "finetune_mnist1d": {
        "args": ["method=finetune", "benchmark=split_mnist1d"],
        "acc_matrix": [
            [95.63106796116504, None, None, None, None],
            [95.63106796116504, 82.56410256410257, None, None, None],
            [80.09708737864078, 60.51282051282051, 74.50980392156863, None, None],
            [79.6116504854369, 63.07692307692308, 75.49019607843137, 93.33333333333333, None],
            [68.93203883495146, 58.46153846153846, 65.68627450980392, 91.7948717948718, 63.0],
        ],
        "trainable_params": [4125, 4125, 4125, 4125, 4125],
        "ranks": [{}, {}, {}, {}, {}],
    },
    "ness_mnist1d": {
        "args": ["method=ness", "benchmark=split_mnist1d"],
        "acc_matrix": [
            [95.63106796116504, None, None, None, None],
            [95.63106796116504, 82.56410256410257, None, None, None],
            [95.63106796116504, 82.56410256410257, 62.745098039215684, None, None],
            [95.63106796116504, 82.56410256410257, 62.745098039215684, 90.25641025641026, None],
            [95.63106796116504, 82.56410256410257, 62.745098039215684, 90.25641025641026, 51.0],
        ],
        "trainable_params": [4125, 2475, 2325, 2250, 2325],
        "ranks": [{}, {"conv1": 0, "conv2": 39, "conv3": 50}, {"conv1": 0, "conv2": 35, "conv3": 48},
                  {"conv1": 0, "conv2": 34, "conv3": 46}, {"conv1": 0, "conv2": 35, "conv3": 48}],
    },
}


@pytest.mark.parametrize("name", sorted(RECORDED_AT_393B19E))
def test_accuracy_matrices_are_bit_identical_to_the_code_before_the_redesign(name):
    recorded = RECORDED_AT_393B19E[name]
    run = ness_sweep.train(*recorded["args"], "train.epochs=3", "seed=0", "threads=1", out=None).runs[0]
    assert run["acc_matrix"] == recorded["acc_matrix"]  # exact float equality, every cell
    assert run["trainable_params"] == recorded["trainable_params"]
    ranks = [{key.partition("/")[2]: rank for key, rank in task.items()} for task in run["diagnostics"]]
    # NESS's ranks, its diagnostics ``rank/<layer>`` (the MLP's layers 1 and 3 are named fc1 and fc2 since)
    assert ranks == recorded["ranks"]
