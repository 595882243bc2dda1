"""The latent-diffusion KL autoencoder: diffusers' exact key schema, round trips with diffusers and
original LDM checkpoints, pickle refusal, tiling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from vaekit.config import from_dict
from vaekit.interop import save_imported_run
from vaekit.interop.ldm import diffusers_to_ldm, ldm_to_diffusers
from vaekit.models import PRESETS
from vaekit.models.autoencoder_kl import AutoencoderKL, AutoencoderKLConfig

FIXTURES = Path(__file__).parent / "fixtures"
TINY = {"block_out_channels": [16, 32, 32], "layers_per_block": 1, "norm_num_groups": 8, "latent_channels": 4,
        "sample_size": 32}


def read_keys(name: str) -> list[tuple[str, str]]:
    return [tuple(line.split("\t")) for line in (FIXTURES / name).read_text().splitlines()]


def tiny(seed: int = 0, **changes) -> AutoencoderKL:
    torch.manual_seed(seed)
    model = AutoencoderKL(from_dict(AutoencoderKLConfig, {**TINY, **changes}))
    with torch.no_grad():  # non-trivial norms and biases, so a wrong mapping cannot hide
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def sd_state():
    cfg = from_dict(AutoencoderKLConfig, PRESETS.get("sd")["model_config"])
    return AutoencoderKL(cfg).state_dict()


def test_sd_preset_matches_diffusers_key_schema_exactly(sd_state):
    assert [(k, str(tuple(v.shape))) for k, v in sd_state.items()] == read_keys("autoencoder_kl_sd1_keys.tsv")
    assert sum(v.numel() for v in sd_state.values()) == 83_653_863


def test_ldm_names_match_the_original_kl_f8_schema(sd_state):
    ldm = diffusers_to_ldm(sd_state)
    assert sorted((k, str(tuple(v.shape))) for k, v in ldm.items()) == sorted(read_keys(
        "ldm_first_stage_kl_f8_keys.tsv"))
    back = ldm_to_diffusers(ldm)
    assert back.keys() == sd_state.keys()
    assert all(back[k].shape == v.shape for k, v in sd_state.items())


def test_encode_decode_shapes_and_latent_scaling():
    m = tiny(shift_factor=0.1, scaling_factor=0.5)
    x = torch.rand(2, 3, 32, 48) * 2 - 1
    q = m.encode(x)
    assert q.mean.shape == (2, 4, 8, 12) and q.kl().shape == (2,)
    assert m.decode(q.mode()).shape == (2, 3, 32, 48)
    z = q.sample(generator=torch.Generator().manual_seed(0))
    assert torch.allclose(m.unscale_latents(m.scale_latents(z)), z, atol=1e-6)
    assert torch.allclose(m.scale_latents(z), (z - 0.1) * 0.5)


def export_tiny(tmp_path, **changes) -> tuple[AutoencoderKL, Path]:
    from vaekit.interop import export_diffusers

    model = tiny(**changes)
    run = save_imported_run(model, tmp_path / "run", "test")
    return model, export_diffusers(run, tmp_path / "diffusers")


@pytest.mark.parametrize("changes", [{}, {"use_quant_conv": False, "use_post_quant_conv": False,
                                          "shift_factor": 0.06, "latent_channels": 16}])
def test_diffusers_round_trip_is_exact(tmp_path, changes):
    diffusers = pytest.importorskip("diffusers")
    model, folder = export_tiny(tmp_path, **changes)
    theirs, info = diffusers.AutoencoderKL.from_pretrained(folder, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"))
    theirs.eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        q, dist = model.encode(x), theirs.encode(x).latent_dist
        assert torch.allclose(q.mean, dist.mean, atol=1e-5) and torch.allclose(q.logvar, dist.logvar, atol=1e-5)
        assert torch.allclose(model.decode(q.mean), theirs.decode(dist.mean).sample, atol=1e-5)
    assert theirs.config.scaling_factor == model.config.scaling_factor
    from vaekit.interop import import_diffusers
    from vaekit.run import load

    back = load(import_diffusers(folder, tmp_path / "back"))
    for k, v in model.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


def test_ldm_checkpoint_import_from_safetensors_and_ckpt(tmp_path):
    from vaekit.interop import import_ldm
    from vaekit.run import load

    model = tiny()
    ldm = {f"first_stage_model.{k}": v.contiguous() for k, v in diffusers_to_ldm(model.state_dict()).items()}
    ldm["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(3)  # a UNet key to ignore
    save_file(ldm, tmp_path / "sd.safetensors")
    torch.save({"state_dict": ldm, "global_step": 10}, tmp_path / "sd.ckpt")
    for name in ("sd.safetensors", "sd.ckpt"):
        run = import_ldm(tmp_path / name, tmp_path / f"run-{name}", {"norm_num_groups": 8, "sample_size": 32})
        loaded = load(run)
        for k, v in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[k], v), k
    bare = {k[len("first_stage_model."):]: v for k, v in ldm.items() if k.startswith("first_stage_model.")}
    save_file(bare, tmp_path / "bare.safetensors")
    assert load(import_ldm(tmp_path / "bare.safetensors", tmp_path / "bare", {"norm_num_groups": 8})).config \
        .block_out_channels == (16, 32, 32)


class Exploit:
    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_needing_arbitrary_unpickling_is_refused_and_never_run(tmp_path, cli):
    marker = tmp_path / "pwned"
    payload = Exploit()
    payload.marker = marker
    torch.save({"state_dict": {"encoder.conv_in.weight": torch.zeros(1)}, "evil": payload}, tmp_path / "evil.ckpt")
    r = cli("import-ldm", tmp_path / "evil.ckpt", "--out", tmp_path / "run")
    assert r.code == 2 and "refused" in r.err and "arbitrary unpickling" in r.err
    assert len(r.err.strip().splitlines()) == 1
    assert not marker.exists()
    assert not (tmp_path / "run").exists()


def smooth_image(h: int = 64, w: int = 96) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    return torch.stack([0.8 * xx, 0.8 * yy, 0.5 * xx * yy])[None]  # [1, 3, h, w]


def test_tiling_is_exact_within_one_tile_and_for_a_local_decoder(monkeypatch):
    m = tiny()
    image = smooth_image()
    with torch.no_grad():
        small = image[..., :32, :32]
        assert torch.equal(m.encode_tiled(small).mean, m.encode(small).mean)
        z = m.encode(image).mean  # [1, 4, 16, 24]
        assert torch.equal(m.decode_tiled(z, tile=256), m.decode(z))
        # with a decoder that looks at one latent pixel at a time, overlap blending must be seamless
        monkeypatch.setattr(m, "decode", lambda t: torch.tanh(t[:, :3]).repeat_interleave(4, 2).repeat_interleave(4, 3))
        reference = m.decode(z)
        for tile, overlap in ((32, 0.25), (32, 0.5), (48, 0.3)):
            assert torch.allclose(m.decode_tiled(z, tile=tile, overlap=overlap), reference, atol=1e-6)


def test_tiled_decode_of_a_smooth_image_follows_the_untiled_one():
    m = tiny(mid_block_add_attention=False)
    with torch.no_grad():
        z = m.encode(smooth_image()).mean
        full = m.decode(z)
        tiled = m.decode_tiled(z, tile=64, overlap=0.5)
        q_tiled = m.encode_tiled(smooth_image(), tile=64, overlap=0.5)
    assert tiled.shape == full.shape and q_tiled.mean.shape == z.shape
    # random weights and per-tile GroupNorm statistics: close, not equal
    assert torch.corrcoef(torch.stack([tiled.flatten(), full.flatten()]))[0, 1] > 0.9
    assert torch.corrcoef(torch.stack([q_tiled.mean.flatten(), z.flatten()]))[0, 1] > 0.9


def test_exported_vae_runs_inside_a_stable_diffusion_pipeline(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    transformers = pytest.importorskip("transformers")
    _, folder = export_tiny(tmp_path)
    vae = diffusers.AutoencoderKL.from_pretrained(folder)
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, norm_num_groups=8, attention_head_dim=8)
    text = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=1000,
        max_position_embeddings=77, projection_dim=32))
    tokenizer = make_tokenizer(tmp_path / "tok", transformers)
    pipe = diffusers.StableDiffusionPipeline(
        vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
        scheduler=diffusers.DDIMScheduler(num_train_timesteps=1000, steps_offset=1, clip_sample=False),
        safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    out = pipe("a photo of a cat", num_inference_steps=2, height=32, width=32, output_type="np",
               generator=torch.Generator().manual_seed(0))
    image = out.images[0]
    assert image.shape == (32, 32, 3)
    assert float(image.min()) >= 0 and float(image.max()) <= 1 and float(image.std()) > 0


def make_tokenizer(folder: Path, transformers):
    """A CLIP BPE tokenizer with a tiny vocabulary written locally (nothing is downloaded)."""
    folder.mkdir()
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens = ["<|startoftext|>", "<|endoftext|>", *letters, *[c + "</w>" for c in letters]]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)
