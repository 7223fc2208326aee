"""Settings validation: every bad value is refused by ``python -m ness_sweep.train`` in one line naming the
key (or the preset file), exit code 2, before any work; the sweep's config gets the same checks."""

import dataclasses
import typing

import pytest
import torch

import ness_sweep.train as train
from ness_sweep import config
from ness_sweep.config import MAX_SEED, UserError
from ness_sweep.methods import load_run_config, method_groups, shipped_groups, shipped_schema


@pytest.fixture
def no_work(monkeypatch, tmp_path):
    """Runs in an empty folder; loading a stream or training fails the test at once (and fast)."""
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.chdir(folder)
    for name in ("stream_for", "run_seed"):
        monkeypatch.setattr(train, name, lambda *a, **k: pytest.fail("work started on bad input"))
    return folder


def refused(args, capsys, folder) -> str:
    """The one error line of a refused command line; nothing printed to stdout, nothing created."""
    assert train.main(args) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert out == "" and list(folder.iterdir()) == []
    return lines[0]


def float_keys(schema: type, prefix: str = "") -> typing.Iterator[str]:
    """Every key of the schema typed float (or optional float), from the dataclasses themselves."""
    for name, hint in typing.get_type_hints(schema).items():
        if dataclasses.is_dataclass(hint):
            yield from float_keys(hint, f"{prefix}{name}.")
        elif hint in (float, typing.Optional[float]):
            yield f"{prefix}{name}"


def load_sweep_config(args):
    return config.load_sweep_config(args, method_groups)


def method_setting(key: str) -> list:
    """``key`` (``ewc.lambda=…``) with the method whose settings group it belongs to, if any."""
    method = shipped_groups().get(key.partition(".")[0])
    return [f"method={method}"] if method else []


def test_the_schema_has_the_float_keys_checked_below():
    assert {"train.lr", "train.weight_decay", "ness.threshold", "ewc.lambda", "lwf.temperature"} <= set(
        float_keys(shipped_schema()))


# ---- non-finite numbers ------------------------------------------------------------------------------

@pytest.mark.parametrize("key", list(float_keys(shipped_schema())) + ["ness.rank"])
@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "inf", "nan"])
def test_non_finite_numbers_are_refused_everywhere(key, value, no_work, capsys):
    if key == "ness.rank" and value in ("inf", "nan"):
        value = "." + value  # ness.rank takes any type: plain inf is the string "inf", refused as a non-number
    line = refused([*method_setting(key), f"{key}={value}"], capsys, no_work)
    assert line.startswith(f"error: {key}=") and "finite" in line


@pytest.mark.parametrize("key", ["trial.cpu", "trial.gpu"])
def test_non_finite_numbers_are_refused_in_sweep_settings(key):
    with pytest.raises(UserError, match=rf"^{key}=inf: must be a finite number"):
        load_sweep_config([f"{key}=inf"])


# ---- seeds ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args,key", [
    (["seed=99999999999999999999999"], "seed="),
    ([f"seed={MAX_SEED + 1}"], "seed="),
    (["seed=-1"], "seed="),
    (["seeds=[1,99999999999999999999999]"], "seeds="),
    (["seeds=[-3]"], "seeds="),
    (["seeds=5"], "seeds"),
    (["seeds={a: 1}"], "seeds"),
    (["seeds=[1.5]"], "seeds"),
])
def test_seeds_outside_numpys_range_are_refused(args, key, no_work, capsys):
    assert refused(args, capsys, no_work).startswith(f"error: {key}")


def test_the_largest_seed_is_accepted():
    assert load_run_config([f"seed={MAX_SEED}", "seeds=[0,4294967295]"]).seed == MAX_SEED


@pytest.mark.parametrize("args,key", [
    (["trial.seeds=[99999999999999999999999]"], "trial.seeds"),
    (["trial.seeds={a: 1}"], "trial.seeds"),
    (["sweep.seed=99999999999999999999999"], "sweep.seed"),
    (["sweep.seed=-1"], "sweep.seed"),
])
def test_sweep_seeds_are_checked_too(args, key):
    with pytest.raises(UserError) as error:
        load_sweep_config(args)
    assert str(error.value).startswith(key) and len(str(error.value).splitlines()) == 1


# ---- device --------------------------------------------------------------------------------------------

@pytest.fixture
def gpus(monkeypatch):
    """Pretend this machine has the given number of CUDA GPUs."""
    def have(count: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    return have


@pytest.mark.parametrize("count,device,available", [
    (0, "cuda", "no CUDA GPU"), (0, "cuda:0", "no CUDA GPU"), (1, "cuda:1", "cuda:0 to cuda:0"),
    (2, "cuda:7", "cuda:0 to cuda:1")])
def test_a_missing_cuda_device_is_refused(count, device, available, gpus, no_work, capsys):
    gpus(count)
    line = refused([f"device={device}"], capsys, no_work)
    assert line.startswith(f"error: device={device}: this machine has") and available in line


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "cuda:-1", "cpu:0"])
def test_device_names_are_checked(device, no_work, capsys):
    assert refused([f"device={device}"], capsys, no_work).startswith(f"error: device={device}: must be")


def test_devices_that_exist_are_accepted(gpus):
    gpus(2)
    assert load_run_config(["device=cuda:1"]).device == "cuda:1"
    gpus(0)
    assert load_run_config(["device=auto"]).device == "auto"  # a sweep resolves auto per trial
    assert load_sweep_config(["device=auto", "trial.gpu=0"]).device == "auto"


def test_a_sweep_joining_a_cluster_does_not_check_the_drivers_gpus(gpus, monkeypatch):
    gpus(0)
    with pytest.raises(UserError, match="device=cuda"):
        load_sweep_config(["device=cuda"])
    assert load_sweep_config(["device=cuda", "ray.address=auto"]).device == "cuda"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert load_sweep_config(["device=cuda"]).device == "cuda"


# ---- threads -------------------------------------------------------------------------------------------

def test_threads_default_to_one():
    assert load_run_config([]).threads == 1


@pytest.mark.parametrize("value", ["0", "-2", "1025", "99999999999999999999", "1.5", "many"])
def test_bad_thread_counts_are_refused(value, no_work, capsys):
    assert refused([f"threads={value}"], capsys, no_work).startswith("error: threads")


# ---- preset files --------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,says", [
    ("train:\n  lrr: 0.1\n", "train.lrr: unknown key"),
    ("benchmark: split_digits\nnonsense: 1\n", "nonsense: unknown key"),
    ("", "empty"),
    ("# only a comment\n", "empty"),
    ("- 1\n- 2\n", "not a mapping"),
    ("train: 5\n", "train: a group of settings"),
    ("seeds: 5\n", "seeds: must be a list"),  # an unset Optional[List] is still a list
    ("seed: [1, 2]\n", "seed"),
    ("preset: paper_cifar100\n", "cannot name another preset"),
    ("train: {lr: [\n", "not valid YAML"),
])
def test_a_bad_preset_file_is_named(text, says, tmp_path, no_work, capsys):
    preset = tmp_path / "preset.yaml"
    preset.write_text(text)
    line = refused([f"preset={preset}"], capsys, no_work)
    assert line.startswith(f"error: preset file {preset}: ") and says in line


def test_a_preset_is_checked_for_the_sweep_too(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("ness:\n  treshold: 0.1\n")
    with pytest.raises(UserError, match=f"^preset file {preset}: ness.treshold: unknown key"):
        load_sweep_config([f"preset={preset}"])


def test_a_failing_merge_under_an_interpolated_group_is_described_not_resolved(tmp_path, no_work, capsys):
    """Describing the error names the key from the schema; resolving ``${ness}`` into train would raise instead."""
    preset = tmp_path / "p.yaml"
    preset.write_text("train: ${ness}\n")
    assert refused([f"preset={preset}", "train.lr=[1]"], capsys, no_work).startswith("error: train.lr: ")


# ---- the shape of the command line ---------------------------------------------------------------------

@pytest.mark.parametrize("arg,says", [
    ("lr", "argument 'lr': expected key=value"),
    ("=5", "argument '=5': expected key=value"),
    ("train..lr=1", "argument 'train..lr=1': expected key=value"),
    ("+train.lr=1", "argument '+train.lr=1': expected key=value"),
    ("train=5", "train: a group of settings"),
    ("ness=[1]", "ness: a group of settings"),
    ("seeds=5", "seeds: must be a list"),
    ("seeds.x=1", "seeds: must be a list"),
    ("ness={rank: [1]}", "ness.rank"),
    ("train.epochs=1.5", "train.epochs"),
    ("train.lr.x=1", "train.lr"),
])
def test_malformed_arguments_name_the_key(arg, says, no_work, capsys):
    assert says in refused([arg], capsys, no_work)
