"""NCSN++ / DDPM++: released layouts, reference outputs of score_sde, FIR resampling, options."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from pds_lightning.models import DDPMpp, NCSNpp
from pds_lightning.models.layers import AttnBlock, default_init_
from pds_lightning.models.presets import build, demo, tiny
from pds_lightning.models.resampling import FIRConv2d, downsample_2d, upsample_2d

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
LAYOUTS = json.loads((FIXTURES / "score_sde_layouts.json").read_text())
# score_sde config fields that are not network arguments, and where the project config keeps them
ELSEWHERE = {"name", "ema_rate", "beta_min", "beta_max", "continuous", "sde"}


def yaml_name(score_sde_path: str) -> str:
    return score_sde_path[len("configs/"):-len(".py")].replace("/", "_")


def build_meta(init_args: dict) -> NCSNpp:
    with torch.device("meta"):  # shapes only: the 1024 px model has 100M parameters
        return NCSNpp(**init_args)


@pytest.mark.parametrize("path", sorted(LAYOUTS))
def test_shipped_config_reproduces_released_layout(path):
    released = LAYOUTS[path]
    model = yaml.safe_load((ROOT / "configs" / "score_sde" / f"{yaml_name(path)}.yaml").read_text())["model"]
    assert model["net"]["class_path"] == "pds_lightning.models.NCSNpp"
    args = model["net"]["init_args"]
    # a literal copy of the released config
    for field, value in released["config"].items():
        if field not in ELSEWHERE:
            assert args[field] == value, field
    assert model["ema_decay"] == released["config"]["ema_rate"]
    assert model["continuous"] is released["config"]["continuous"]
    sde_name = {"vesde": "VESDE", "vpsde": "VPSDE", "subvpsde": "SubVPSDE"}[released["config"]["sde"]]
    assert model["sde"]["class_path"] == f"pds_lightning.sde.{sde_name}"
    for field, value in model["sde"]["init_args"].items():
        assert value == released["config"][field], field

    net = build_meta(args)
    got = [(k, list(v.shape)) for k, v in net.state_dict().items()]
    want = [(k[len("module."):], shape) for k, shape in released["params"].items()]
    assert got == want
    assert sum(p.numel() for p in net.parameters()) == released["n_params"]


def fixture_net() -> NCSNpp:
    args = yaml.safe_load((FIXTURES / "ncsnpp_ve_tiny.yaml").read_text())["model"]["net"]["init_args"]
    net = NCSNpp(**args)
    ckpt = torch.load(FIXTURES / "ncsnpp_ve_tiny.checkpoint.pth", weights_only=True)
    net.load_state_dict({k[len("module."):]: v for k, v in ckpt["model"].items()}, strict=True)
    return net.eval()


def test_forward_matches_score_sde_reference():
    expected = torch.load(FIXTURES / "ncsnpp_ve_tiny.expected.pt", weights_only=True)
    sigma = 0.01 * (50 / 0.01) ** expected["t"]
    with torch.no_grad():
        out = fixture_net()(expected["x"], sigma)
    assert (out - expected["score_raw"]).abs().max() <= 1e-4


def naive_fir(x: torch.Tensor, up: int, down: int, pad: tuple[int, int], k1d) -> torch.Tensor:
    """Reference upfirdn on one [H, W] image by explicit sums (separable kernel)."""
    k = torch.tensor(k1d, dtype=torch.float64)
    k = torch.outer(k, k) / k.sum() ** 2 * up ** 2
    H, W = x.shape
    z = torch.zeros(H * up, W * up, dtype=torch.float64)
    z[::up, ::up] = x
    z = F.pad(z, (pad[0], pad[1], pad[0], pad[1]))
    n = k.shape[0]
    full = torch.stack([torch.stack([(z[i:i + n, j:j + n] * k.flip(0, 1)).sum()
                                     for j in range(z.shape[1] - n + 1)]) for i in range(z.shape[0] - n + 1)])
    return full[::down, ::down]


def test_fir_resampling_matches_explicit_sums():
    x = torch.randn(1, 1, 6, 6, dtype=torch.float64)
    kernel = (1, 3, 3, 1)
    assert torch.allclose(downsample_2d(x, kernel)[0, 0], naive_fir(x[0, 0], 1, 2, (1, 1), kernel))
    assert torch.allclose(upsample_2d(x, kernel)[0, 0], naive_fir(x[0, 0], 2, 1, (2, 1), kernel))
    # constant images stay constant away from the zero-padded border
    c = torch.full((1, 2, 8, 8), 3.0)
    assert torch.allclose(upsample_2d(c, kernel)[..., 2:-2, 2:-2], torch.tensor(3.0))
    assert torch.allclose(downsample_2d(c, kernel)[..., 1:-1, 1:-1], torch.tensor(3.0))


def test_fused_fir_conv_with_identity_weight_is_plain_resampling():
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    for up, reference in ((True, upsample_2d), (False, downsample_2d)):
        conv = FIRConv2d(3, 3, up=up, down=not up).double()
        with torch.no_grad():
            conv.weight.zero_()
            for c in range(3):
                conv.weight[c, c, 1, 1] = 1.0
        assert torch.allclose(conv(x), reference(x, (1, 3, 3, 1)))


def test_attention_matches_softmax_formula():
    torch.manual_seed(0)
    block = AttnBlock(8, skip_rescale=True, init_scale=1.0).double()
    x = torch.randn(2, 8, 4, 4, dtype=torch.float64)
    h = block.GroupNorm_0(x)
    q, k, v = (torch.einsum("bchw,cd->bdhw", h, n.W) + n.b[:, None, None]
               for n in (block.NIN_0, block.NIN_1, block.NIN_2))
    w = torch.softmax(torch.einsum("bchw,bcij->bhwij", q, k).reshape(2, 4, 4, 16) / math.sqrt(8), -1)
    a = torch.einsum("bhwij,bcij->bchw", w.reshape(2, 4, 4, 4, 4), v)
    a = torch.einsum("bchw,cd->bdhw", a, block.NIN_3.W) + block.NIN_3.b[:, None, None]
    assert torch.allclose(block(x), (x + a) / math.sqrt(2))


def test_default_init_is_fan_avg_variance_scaling():
    torch.manual_seed(0)
    w = default_init_(torch.empty(256, 128, 3, 3))
    assert w.var().item() == pytest.approx(1 / ((256 + 128) * 9 / 2), rel=0.03)
    assert default_init_(torch.empty(64, 64), scale=0.0).abs().max() < 1e-5  # init_scale 0 -> ~zero layer


OPTIONS = [
    dict(progressive="output_skip", progressive_input="input_skip", progressive_combine="sum"),
    dict(progressive="residual", progressive_input="residual", progressive_combine="sum"),
    dict(progressive="output_skip", progressive_input="input_skip", progressive_combine="cat"),
    dict(resblock_type="ddpm", fir=True, progressive="residual", progressive_input="input_skip"),
    dict(resblock_type="ddpm", fir=False, resamp_with_conv=True),
    dict(resblock_type="biggan", fir=False, embedding_type="positional", conditional=False),
]


@pytest.mark.parametrize("options", OPTIONS)
def test_options_run_and_scale_by_sigma_divides_by_sigma(options):
    torch.manual_seed(0)
    kwargs = tiny(image_size=8, num_channels=2, dropout=0.0, **options)
    divided = NCSNpp(**kwargs).eval()
    plain = NCSNpp(**{**kwargs, "scale_by_sigma": False}).eval()
    plain.load_state_dict(divided.state_dict())
    x = torch.rand(3, 2, 8, 8)
    if divided.embedding_type == "fourier":
        labels = torch.tensor([0.05, 1.0, 30.0])
        sigma = labels
    else:
        labels = torch.tensor([0, 400, 999])
        sigma = divided.sigmas[labels]
    with torch.no_grad():
        out = divided(x, labels)
        assert out.shape == x.shape
        assert torch.allclose(out * sigma[:, None, None, None], plain(x, labels), atol=1e-5)


def test_centered_flag_maps_unit_interval_to_symmetric():
    torch.manual_seed(0)
    net = NCSNpp(**tiny(image_size=8, dropout=0.0)).eval()
    centered = NCSNpp(**tiny(image_size=8, dropout=0.0, centered=True)).eval()
    centered.load_state_dict(net.state_dict())
    x, sigma = torch.rand(2, 3, 8, 8), torch.tensor([0.5, 2.0])
    with torch.no_grad():
        assert torch.allclose(net(x, sigma), centered(2 * x - 1, sigma), atol=1e-6)


def test_ddpmpp_defaults_and_presets():
    net = DDPMpp(nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), image_size=8)
    assert (net.embedding_type, net.progressive_input, net.scale_by_sigma, net.centered) == \
        ("positional", "none", False, True)
    assert sum(p.numel() for p in build("tiny").parameters()) == 82363  # the score_sde fixture's size
    demo_net = build("demo")
    assert 300_000 <= sum(p.numel() for p in demo_net.parameters()) <= 1_000_000
    assert demo()["image_size"] == 32 and demo()["num_channels"] == 1
    with torch.no_grad():
        assert build("tiny", image_size=8, kind="ddpmpp")(torch.rand(2, 3, 8, 8), torch.tensor([1.0, 900.0])).shape \
            == (2, 3, 8, 8)


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="progressive="):
        NCSNpp(**tiny(progressive="sideways"))
    with pytest.raises(ValueError, match="image_size=12"):
        NCSNpp(**tiny(image_size=12, ch_mult=(1, 2, 2, 2)))
    with pytest.raises(ValueError, match="preset"):
        build("huge")
