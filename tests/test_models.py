"""Model families: shapes, key names, conditioning, save -> load round trips, strict configs."""

from __future__ import annotations

import json

import pytest
import torch

import vaekit
from helpers import tiny_train
from vaekit.config import from_dict
from vaekit.errors import VaekitError
from vaekit.models import MODELS, PRESETS
from vaekit.models.conv import ConvConfig, ConvVAE
from vaekit.models.mlp import MLPVAE, MLPConfig


def test_pytorch_example_preset_has_the_784_400_20_layout():
    preset = PRESETS.get("pytorch-example")
    cfg = from_dict(MLPConfig, {**preset["model_config"], "data_shape": [1, 28, 28]})
    shapes = {k: tuple(v.shape) for k, v in MLPVAE(cfg).state_dict().items()}
    assert shapes == {
        "encoder.layers.0.weight": (400, 784), "encoder.layers.0.bias": (400,),
        "encoder.mean.weight": (20, 400), "encoder.mean.bias": (20,),
        "encoder.logvar.weight": (20, 400), "encoder.logvar.bias": (20,),
        "decoder.layers.0.weight": (400, 20), "decoder.layers.0.bias": (400,),
        "decoder.out.weight": (784, 400), "decoder.out.bias": (784,),
    }
    assert cfg.activation == "relu" and cfg.likelihood == "bernoulli"


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 8, 8), (3, 64, 64)])
def test_conv_vae_round_trips_image_shapes(shape):
    m = ConvVAE(ConvConfig(data_shape=shape, latent_dim=5, channels=(8, 16)))
    x = torch.rand(2, *shape)
    q = m.encode(x)
    assert q.mean.shape == (2, 5)
    assert m.decode(q.mean).shape == (2, *shape)
    assert m.sample(3).shape == (3, *shape)


@pytest.mark.parametrize("name", ["mlp", "conv"])
def test_conditional_models_use_the_label(name):
    cls = MODELS.get(name)
    m = cls(cls.config_class(data_shape=(1, 8, 8), latent_dim=3, num_classes=4))
    z = torch.randn(1, 3).repeat(2, 1)
    out = m.decode(z, torch.tensor([0, 3]))
    assert out.shape == (2, 1, 8, 8)
    assert not torch.allclose(out[0], out[1])  # same z, different class -> different image
    with pytest.raises(VaekitError, match="conditional"):
        m.encode(torch.rand(2, 1, 8, 8))


def test_conv_config_refuses_non_image_data():
    with pytest.raises(VaekitError, match="image data"):
        ConvConfig(data_shape=(13,))


def test_save_load_gives_identical_outputs(tmp_path):
    model, _ = tiny_train(tmp_path / "run", epochs=1)
    loaded = vaekit.load(tmp_path / "run", precision="fp32")  # bit-exact: inference in the weights' own precision
    assert not loaded.training
    x = torch.rand(5, 1, 8, 8)
    assert torch.equal(model.encode(x).mean, loaded.encode(x).mean)
    assert torch.equal(model.encode(x).logvar, loaded.encode(x).logvar)
    z = torch.randn(5, 4)
    assert torch.equal(model.decode(z), loaded.decode(z))
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert torch.equal(model.sample(3, generator=g1), loaded.sample(3, generator=g2))


def test_load_rebuilds_from_config_json_alone(tmp_path):
    tiny_train(tmp_path / "run", model="conv", epochs=1, conditional=True)
    doc = json.loads((tmp_path / "run" / "config.json").read_text())
    assert doc["_class_name"] == "ConvVAE" and doc["_format_version"] == 1
    assert doc["model"]["num_classes"] == 10
    m = vaekit.load(tmp_path / "run")
    assert m.sample(4, torch.tensor([1, 2, 3, 4])).shape == (4, 1, 8, 8)


def test_unknown_or_mistyped_config_key_is_named():
    with pytest.raises(VaekitError, match=r"unknown key 'latnt_dim'.*latent_dim"):
        from_dict(MLPConfig, {"latnt_dim": 3})
    with pytest.raises(VaekitError, match="'latent_dim': expected an integer"):
        from_dict(MLPConfig, {"latent_dim": "three"})
