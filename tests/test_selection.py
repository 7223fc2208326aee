"""The selection protocol's pure parts on hand-made rows: which search rows a sweep confirms, the winner, and the
per-method table (numbers worked out by hand below)."""

import pytest

from ness_sweep import selection


def search(trial_id, valid_acc, lr, method="ness", status="TERMINATED", acc=None):
    return {"trial_id": trial_id, "stage": "search", "status": status, "method": method, "train.lr": lr,
            "valid_acc": valid_acc, "acc": acc if acc is not None else valid_acc, "seeds": [0], "seconds": 2.0}


def rerun(confirms, seed, valid_acc, acc, status="TERMINATED"):
    return {"trial_id": f"{confirms}-{seed}", "stage": "confirm", "status": status, "confirms": confirms,
            "valid_acc": valid_acc if status == "TERMINATED" else None, "acc": acc if status == "TERMINATED" else None,
            "seeds": [seed], "seconds": 3.0}


ROWS = [search("a", 90.0, 0.1), search("b", 95.0, 0.2), search("c", 93.0, 0.2),  # c repeats b's settings
        search("d", 94.0, 0.3), search("e", None, 0.4, status="STOPPED"), search("f", 96.0, 0.5, method="gpm")]
SETTINGS = ["method", "train.lr"]


def test_the_best_distinct_settings_are_confirmed_overall_or_per_method():
    assert [r["trial_id"] for r in selection.to_confirm(ROWS, ["valid_acc"], ["max"], 3, SETTINGS, False)] == \
        ["f", "b", "d"]  # c has b's settings; e never finished
    assert [r["trial_id"] for r in selection.to_confirm(ROWS, ["valid_acc"], ["max"], 2, SETTINGS, True)] == \
        ["f", "b", "d"]  # two of ness, one of gpm (it has one)


def test_fresh_seeds_follow_the_largest_used():
    assert selection.fresh_seeds([0], 3) == [1, 2, 3] and selection.fresh_seeds([4, 9, 2], 2) == [10, 11]


def test_the_winner_is_the_best_complete_confirmed_validation_mean():
    rows = ROWS + [rerun("b", 1, 93.0, 92.0), rerun("b", 2, 95.0, 94.0),  # b: valid 94.0, acc 93.0 ± 1.414
                   rerun("d", 1, 96.0, 90.0), rerun("d", 2, 96.0, 91.0, status="DIVERGED"),  # d: best mean, incomplete
                   rerun("f", 1, 91.0, 90.0), rerun("f", 2, 93.0, 92.0)]  # f: valid 92.0
    found = selection.confirmations(rows, ["valid_acc"], ["max"])
    assert [c.row["trial_id"] for c in found] == ["b", "f", "d"]
    best = selection.winner(rows, ["valid_acc"], ["max"])
    assert best.row["trial_id"] == "b" and best.seeds == [1, 2]
    assert best.mean_std("acc") == pytest.approx((93.0, 2 ** 0.5))
    assert found[2].complete is False and found[2].mean_std("valid_acc") == (96.0, 0.0)
    lines = selection.per_method(rows, ["valid_acc"], ["max"])
    assert [(line.method, line.trials, line.confirmed.row["trial_id"]) for line in lines] == \
        [("ness", 5, "b"), ("gpm", 1, "f")]
    assert lines[0].confirmed.seconds == 3.0


def test_minimising_ranks_the_other_way():
    rows = [search("a", 3.0, 0.1), search("b", 1.0, 0.2)]
    assert [r["trial_id"] for r in selection.best_first(rows, ["valid_acc"], ["min"])] == ["b", "a"]
