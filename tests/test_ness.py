"""NESS's numerical guarantees, checked as properties against brute-force computations."""

import copy
import itertools
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ness_sweep import ness, statistics

torch.set_default_dtype(torch.float32)


def low_energy_inputs(n: int, d: int, rank: int, noise: float, seed: int) -> torch.Tensor:
    """Inputs that live (almost) in a rank-``rank`` subspace of R^d: a real null space to find."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(d, rank, generator=g))[0]
    return torch.randn(n, rank, generator=g) @ basis.T + noise * torch.randn(n, d, generator=g)


def brute_force_patches(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """Each output position's receptive field, by explicit loops, in (c, ki, kj) order."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = conv.kernel_size, conv.stride, conv.padding, conv.dilation
    padded = F.pad(x, (pw, pw, ph, ph))
    n, c, h, w = padded.shape
    out_h = (h - dh * (kh - 1) - 1) // sh + 1
    out_w = (w - dw * (kw - 1) - 1) // sw + 1
    rows = []
    for b, i, j in itertools.product(range(n), range(out_h), range(out_w)):
        patch = [padded[b, ch, i * sh + ki * dh, j * sw + kj * dw]
                 for ch in range(c) for ki in range(kh) for kj in range(kw)]
        rows.append(torch.stack(patch))
    return torch.stack(rows)


CONVS = [
    dict(kernel_size=3, stride=1, padding=0, dilation=1),
    dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 2), dilation=(2, 1)),
    dict(kernel_size=2, stride=2, padding=1, dilation=2),
]


@pytest.mark.parametrize("samples_per_chunk", [1, 2, 5])
@pytest.mark.parametrize("geometry", CONVS)
def test_unfolded_gram_equals_brute_force_patches(geometry, samples_per_chunk, monkeypatch):
    """Also when the batch is split into chunks of samples (5 = whole batch, 2 = uneven chunks)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, bias=False, **geometry)
    x = torch.randn(5, 3, 7, 6)
    rows = brute_force_patches(x, conv)
    monkeypatch.setattr(statistics, "GRAM_CHUNK_VALUES", samples_per_chunk * (len(rows) // len(x)) * rows.shape[1])
    # The brute-force rows really are what the convolution multiplies by its weight...
    out = conv(x).permute(0, 2, 3, 1).reshape(-1, 4)
    torch.testing.assert_close(rows @ conv.weight.view(4, -1).T, out, rtol=1e-5, atol=1e-5)
    # ...and the library's unfolded Gram matrix equals theirs.
    expected = rows.double().T @ rows.double()
    with statistics.recording_grams({"conv": conv}) as grams:
        conv(x)
    torch.testing.assert_close(grams["conv"], expected, rtol=1e-10, atol=1e-10)


def brute_force_patches_1d(x: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """Each output position's receptive field along the signal, by explicit loops, in (c, k) order."""
    (k,), (s,), (p,), (d,) = conv.kernel_size, conv.stride, conv.padding, conv.dilation
    padded = F.pad(x, (p, p))
    n, c, length = padded.shape
    positions = (length - d * (k - 1) - 1) // s + 1
    rows = [torch.stack([padded[b, ch, i * s + j * d] for ch in range(c) for j in range(k)])
            for b, i in itertools.product(range(n), range(positions))]
    return torch.stack(rows)


CONVS_1D = [
    dict(kernel_size=3, stride=1, padding=0, dilation=1),
    dict(kernel_size=5, stride=2, padding=1, dilation=1),
    dict(kernel_size=3, stride=3, padding=2, dilation=2),
    dict(kernel_size=1, stride=2, padding=0, dilation=1),
]


@pytest.mark.parametrize("samples_per_chunk", [1, 2, 5])
@pytest.mark.parametrize("geometry", CONVS_1D)
def test_conv1d_gram_equals_brute_force_patches(geometry, samples_per_chunk, monkeypatch):
    """The rows of a Conv1d are its 1-D patches, exactly as the convolution sees them."""
    torch.manual_seed(0)
    conv = nn.Conv1d(3, 4, bias=False, **geometry)
    x = torch.randn(5, 3, 13)
    rows = brute_force_patches_1d(x, conv)
    monkeypatch.setattr(statistics, "GRAM_CHUNK_VALUES", samples_per_chunk * (len(rows) // len(x)) * rows.shape[1])
    out = conv(x).permute(0, 2, 1).reshape(-1, 4)
    torch.testing.assert_close(rows @ conv.weight.view(4, -1).T, out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(statistics.input_rows(conv, x), rows, rtol=0, atol=0)
    with statistics.recording_grams({"conv": conv}) as grams:
        conv(x)
    torch.testing.assert_close(grams["conv"], rows.double().T @ rows.double(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("samples_per_chunk", [1, 3, 7])
def test_linear_gram_in_chunks_equals_full(samples_per_chunk, monkeypatch):
    torch.manual_seed(0)
    linear, x = nn.Linear(6, 3, bias=False), torch.randn(7, 6)
    monkeypatch.setattr(statistics, "GRAM_CHUNK_VALUES", samples_per_chunk * 6)
    with statistics.recording_grams({"fc": linear}) as grams:
        linear(x)
    torch.testing.assert_close(grams["fc"], x.double().T @ x.double(), rtol=1e-12, atol=1e-12)


def small_body():
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.ReLU(), nn.Conv2d(4, 3, 2, stride=2),
                         nn.Flatten(), nn.Linear(3 * 3 * 3, 5, bias=False), nn.ReLU(), nn.Linear(5, 4))


def small_body_1d():
    """Padding, then stride with dilation: 9 positions → 6, then 3 × 6 features."""
    return nn.Sequential(nn.Conv1d(2, 4, 3, padding=1, bias=False), nn.ReLU(),
                         nn.Conv1d(4, 3, 2, stride=2, padding=2, dilation=2),
                         nn.Flatten(), nn.Linear(3 * 6, 5, bias=False), nn.ReLU(), nn.Linear(5, 4))


BODIES = {"conv2d": (small_body, (2, 6, 6)), "conv1d": (small_body_1d, (2, 9))}  # body, input shape


class Net(nn.Module):
    def __init__(self, body=None):
        super().__init__()
        self.body = small_body() if body is None else body
        self.heads = nn.ModuleList([nn.Linear(4, 2), nn.Linear(4, 2)])

    def forward(self, x, t):
        return self.heads[t](self.body(x))


@pytest.mark.parametrize("kind", BODIES)
def test_one_pass_statistics_equal_per_layer_passes(kind):
    torch.manual_seed(1)
    make_body, input_shape = BODIES[kind]
    net = Net(make_body())
    layers = statistics.adaptable_layers(net)
    assert list(layers) == ["0", "2", "4", "6"]
    data = [torch.randn(5, *input_shape) for _ in range(3)]
    calls = []
    handle = net.body.register_forward_hook(lambda *args: calls.append(1))
    together = statistics.collect_grams(net.body, layers, data)
    assert len(calls) == len(data)  # one forward per batch for all layers together
    handle.remove()
    for name, layer in layers.items():
        alone = statistics.collect_grams(net.body, {name: layer}, data)
        torch.testing.assert_close(together[name], alone[name], rtol=0, atol=0)
        assert together[name].dtype == torch.float64
        assert together[name].shape == (statistics.input_width(layer),) * 2


@pytest.mark.parametrize("kind", BODIES)
def test_zero_adapters_leave_network_unchanged_and_merge_keeps_outputs(kind):
    torch.manual_seed(2)
    make_body, input_shape = BODIES[kind]
    net = Net(make_body()).eval()
    x = torch.randn(4, *input_shape)
    before = net(x, 0)
    layers = statistics.adaptable_layers(net)
    bases = {name: torch.linalg.qr(torch.randn(statistics.input_width(layer), 3))[0] for name, layer in layers.items()}
    adapters = ness.attach_adapters(net, bases)
    torch.testing.assert_close(net(x, 0), before, rtol=0, atol=0)
    with torch.no_grad():
        for adapter in adapters.values():
            adapter.A.normal_()
    adapted = net(x, 0)
    assert (adapted - before).abs().max() > 1e-2  # the adapters do change the function
    ness.merge_adapters(net)
    assert not any(isinstance(m, ness.NullSpaceAdapter) for m in net.modules())
    torch.testing.assert_close(net(x, 0), adapted, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layer", [nn.Linear(64, 48, bias=True),
                                   nn.Conv2d(3, 8, (3, 2), stride=(2, 1), padding=(2, 1), dilation=(2, 1)),
                                   nn.Conv1d(3, 8, 3, stride=2, padding=2, dilation=2)])
@pytest.mark.parametrize("low_rank", [True, False])
def test_both_adapter_paths_compute_w_plus_a_bt(layer, low_rank, monkeypatch):
    torch.manual_seed(3)
    adapter = ness.NullSpaceAdapter(layer, torch.linalg.qr(torch.randn(statistics.input_width(layer), 5))[0])
    with torch.no_grad():
        adapter.A.normal_()
    monkeypatch.setattr(adapter, "_low_rank_is_cheaper", lambda rows: low_rank)
    weight = layer.weight + (adapter.A @ adapter.basis.T).view_as(layer.weight)
    if isinstance(layer, nn.Linear):
        x = torch.randn(7, 64)
        expected = F.linear(x, weight, layer.bias)
    else:
        one_d = isinstance(layer, nn.Conv1d)
        x = torch.randn(2, 3, 11) if one_d else torch.randn(2, 3, 9, 7)
        convolve = F.conv1d if one_d else F.conv2d
        expected = convolve(x, weight, layer.bias, layer.stride, layer.padding, layer.dilation)
        assert adapter._rows(x) == expected[:, 0].numel()  # samples × output positions
    torch.testing.assert_close(adapter(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layer", [nn.Conv2d(3, 8, (3, 2), stride=(2, 1), padding=(2, 1), dilation=(2, 1)),
                                   nn.Conv2d(3, 8, 3, padding=0, bias=False),
                                   nn.Conv1d(3, 8, 3, stride=2, padding=2, dilation=2),
                                   nn.Conv1d(3, 8, 5, padding=3)])
@pytest.mark.parametrize("low_rank", [True, False])
def test_zero_delta_adapter_equals_the_unwrapped_convolution_exactly(layer, low_rank, monkeypatch):
    """At A = 0 either path must give the frozen layer's own output, bit for bit."""
    torch.manual_seed(4)
    x = torch.randn(2, 3, 11) if isinstance(layer, nn.Conv1d) else torch.randn(2, 3, 9, 7)
    expected = layer(x)
    adapter = ness.NullSpaceAdapter(layer, torch.linalg.qr(torch.randn(statistics.input_width(layer), 5))[0])
    monkeypatch.setattr(adapter, "_low_rank_is_cheaper", lambda rows: low_rank)
    assert torch.equal(adapter(x), expected)


@pytest.mark.parametrize("layer", [nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"),
                                   nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular"),
                                   nn.Conv1d(3, 4, 3, padding=1, padding_mode="replicate"),
                                   nn.Conv2d(3, 4, 3, padding="same"),
                                   nn.Conv1d(3, 4, 3, padding="valid")])
def test_adapter_refuses_convolutions_not_zero_padded_by_integers(layer):
    """Their inputs are not the zero-padded patches B is computed from: wrapping them must fail at construction."""
    with pytest.raises(ValueError, match="needs integer zero padding"):
        ness.NullSpaceAdapter(layer, torch.eye(statistics.input_width(layer))[:, :2])


def test_selection_rules_on_known_singular_values():
    torch.manual_seed(4)
    s = torch.tensor([0.01, 0.1, 1.0, 10.0], dtype=torch.float64)
    u = torch.linalg.qr(torch.randn(6, 4, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))[0]
    inputs = u @ torch.diag(s) @ v.T
    sigma, vectors = statistics.spectrum(inputs.T @ inputs)
    torch.testing.assert_close(sigma, s, rtol=1e-6, atol=1e-9)
    # ‖I‖_F = sqrt(100.0101) ≈ 10.0005 and Σσ = 11.11: ε = 0.0095 keeps σ ≤ 0.0950 vs σ ≤ 0.1055.
    assert ness.select_rank(sigma, 0.0095, "frobenius") == 1
    assert ness.select_rank(sigma, 0.0095, "nuclear") == 2
    assert ness.select_rank(sigma, 0.2, "frobenius") == 3
    assert ness.select_rank(sigma, rank=3) == 3
    assert ness.select_rank(sigma, rank=0.5) == 2
    assert ness.select_rank(sigma, rank=1.0) == 4
    assert ness.select_rank(sigma, 0.0095, "frobenius", rank=3) == 1  # both: the smaller set
    assert ness.select_rank(sigma, 0.2, "frobenius", rank=2) == 2
    # The selected vectors are the right singular vectors of the smallest singular values.
    bases, sigma_max = ness.subspace_bases({"l": inputs.T @ inputs}, 0.0095, "nuclear", None)
    torch.testing.assert_close((bases["l"].T @ v[:, :2]).abs().sum(0), torch.ones(2, dtype=torch.float64))
    assert sigma_max["l"] == pytest.approx(0.1)


def test_negative_eigenvalues_are_clamped_not_nan():
    v = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))[0]
    g = v @ torch.diag(torch.tensor([-1e-12, 1.0, 4.0], dtype=torch.float64)) @ v.T
    sigma, _ = statistics.spectrum(g)
    assert not torch.isnan(sigma).any()
    assert sigma[0] == 0 and sigma[2] == pytest.approx(2.0)
    assert ness.select_rank(sigma, 1e-3, "frobenius") == 1


def train_new_task(layer, x_new, steps=200, lr=0.05):
    """Fit the layer's trainable parameters to a random target on new inputs."""
    target = torch.randn_like(layer(x_new)) * 3
    params = [p for p in layer.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        F.mse_loss(layer(x_new), target).backward()
        optimizer.step()


def layer_outputs(layer, x):
    """One row per sample (Linear) or per sample and output position (convolutions)."""
    out = layer(x)
    return out.movedim(1, -1).reshape(-1, out.shape[1]) if out.dim() > 2 else out


def constant_per_channel(n: int, spatial, seed: int) -> torch.Tensor:
    """Images or signals constant per channel (plus 1e-3 noise): unpadded patches span about two directions."""
    g = torch.Generator().manual_seed(seed)
    levels = torch.randn(n, 2, *[1] * len(spatial), generator=g)
    return levels.expand(n, 2, *spatial) + 1e-3 * torch.randn(n, 2, *spatial, generator=g)


@pytest.mark.parametrize("kind", ["linear", "conv", "conv1d"])
def test_null_space_update_bounds_change_on_previous_inputs(kind):
    torch.manual_seed(5)
    if kind == "linear":
        layer = nn.Linear(24, 10, bias=False)
        x_old = low_energy_inputs(400, 24, 12, 1e-3, seed=6)
        x_new = torch.randn(200, 24)
    elif kind == "conv":
        layer = nn.Conv2d(2, 6, 3, stride=1, bias=False)  # patches: 2 directions of 18
        x_old, x_new = constant_per_channel(40, (6, 6), seed=6), torch.randn(40, 2, 6, 6)
    else:
        layer = nn.Conv1d(2, 6, 3, stride=2, dilation=2, bias=False)  # patches: 2 directions of 6
        x_old, x_new = constant_per_channel(40, (12,), seed=6), torch.randn(40, 2, 12)
    finetuned = copy.deepcopy(layer)
    with torch.no_grad():
        before = layer_outputs(layer, x_old)
    with statistics.recording_grams({"l": layer}) as grams:
        layer(x_old)
    bases, sigma_max = ness.subspace_bases(grams, 1e-2, "frobenius", None)
    adapter = ness.NullSpaceAdapter(layer, bases["l"])
    assert 0 < adapter.rank < statistics.input_width(layer)
    train_new_task(adapter, x_new)
    train_new_task(finetuned, x_new)
    with torch.no_grad():
        a_norm = torch.linalg.matrix_norm(adapter.A, ord=2).item()
        assert a_norm > 0.1  # A really trained
        change = (layer_outputs(adapter, x_old) - before).norm(dim=1).max().item()
        finetune_change = (layer_outputs(finetuned, x_old) - before).norm(dim=1).max().item()
    bound = a_norm * sigma_max["l"]
    assert change <= bound * (1 + 1e-4) + 1e-6
    assert change < 0.05 * finetune_change


def test_groups_and_unsupported_layers_are_clear_errors():
    with pytest.raises(ValueError, match="groups=2"):
        statistics.check_adaptable(nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(ValueError, match="padding"):
        statistics.check_adaptable(nn.Conv2d(4, 4, 3, padding="same"))
    with pytest.raises(ValueError, match="Conv3d"):
        statistics.check_adaptable(nn.Conv3d(4, 4, 3))


@pytest.mark.parametrize("conv, message", [
    (nn.Conv1d(2, 4, 3, groups=2), "stem: Conv1d with groups=2 has no well-defined input rows (groups must be 1)"),
    (nn.Conv1d(2, 4, 3, padding="same"), "stem: Conv1d needs integer zero padding (got padding='same', "
                                         "padding_mode='zeros')"),
    (nn.Conv1d(2, 4, 3, padding=1, padding_mode="circular"), "stem: Conv1d needs integer zero padding "
                                                             "(got padding=(1,), padding_mode='circular')"),
])
def test_conv1d_without_well_defined_rows_is_a_one_line_error_naming_the_layer(conv, message):
    net = Net(nn.Sequential(OrderedDict([("stem", conv)])))
    with pytest.raises(ValueError) as error:
        statistics.adaptable_layers(net)
    assert str(error.value) == message
