"""Training settings: the loop's and the objective's, one frozen dataclass."""

from __future__ import annotations

from dataclasses import dataclass

from vaekit.config import check

PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # vaekit.precision resolves auto for the device
KL_SCHEDULES = ("constant", "linear", "cyclical")
TRAIN_PARTS = ("all", "decoder", "encoder")
PIXEL_LOSSES = ("l1", "l2")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    objective: str = "elbo"
    beta: float = 1.0  # weight of the KL term (beta-VAE, Higgins et al. 2017)
    kl_schedule: str = "constant"  # constant | linear warm-up | cyclical (Fu et al. 2019)
    warmup_epochs: float = 0.0  # linear: epochs to ramp the KL weight from 0 to beta
    cycles: int = 4  # cyclical: number of cycles over the whole run
    cycle_ratio: float = 0.5  # cyclical: fraction of each cycle spent ramping up
    free_bits: float = 0.0  # lambda nats per latent unit (Kingma et al. 2016); 0 disables
    precision: str = "auto"  # auto (bf16 where the device runs it faster, else fp32) | fp32 | bf16 | fp16 (CUDA)
    device: str = "cpu"
    grad_clip: float = 0.0  # max global gradient norm; 0 disables
    grad_accum: int = 1  # micro-batches per optimizer step
    max_nonfinite: int = 20  # consecutive non-finite steps before training stops
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints; 0: once per epoch
    adam_betas: tuple[float, float] = (0.9, 0.999)
    train_part: str = "all"  # all | decoder (fine-tune the decoder only, as sd-vae-ft-mse) | encoder
    ema_decay: float = 0.0  # exponential moving average of the weights; 0 disables (LDM: 0.9999)
    # the LDM autoencoder objective ("ldm"; Rombach et al. 2022, Esser et al. 2021)
    pixel_loss: str = "l1"  # l1 | l2
    perceptual_weight: float = 1.0  # LPIPS weight
    lpips_net: str = "vgg"  # vgg (as LDM) | alex
    disc_start: int = 50001  # optimizer steps before the discriminator joins
    disc_weight: float = 0.5
    disc_factor: float = 1.0
    disc_ndf: int = 64
    disc_layers: int = 3
    learn_logvar: bool = False  # LDM keeps the output log-variance at its initial value
    logvar_init: float = 0.0
    # beyond the ELBO
    k: int = 50  # iwae: importance samples per example (Burda et al. 2016)
    elbo_epochs: int = 0  # iwae: epochs trained with the ELBO first, then the k-sample bound (Burda et al. sec. 5.2)
    tc_alpha: float = 1.0  # beta-tcvae: weight of the index-code mutual information (beta weighs the TC)
    tc_gamma: float = 1.0  # beta-tcvae: weight of the dimension-wise KL
    factor_gamma: float = 10.0  # factorvae: weight of the total-correlation estimate
    disc_lr: float = 1e-4  # factorvae: the TC discriminator's learning rate
    grad_skip: float = 0.0  # skip updates whose gradient norm exceeds this times the running mean (VDVAE); 0: off
    max_minutes: float = 0.0  # stop once this much training time is spent (a CPU budget); 0: no limit

    def __post_init__(self) -> None:
        check(self.epochs >= 1, f"epochs (--epochs) must be >= 1, got {self.epochs}")
        check(self.batch_size >= 1, f"batch size (--batch-size) must be >= 1, got {self.batch_size}")
        check(self.lr > 0, f"learning rate (--lr) must be positive, got {self.lr}")
        check(self.beta >= 0, f"beta (--beta) must be >= 0, got {self.beta}")
        check(self.kl_schedule in KL_SCHEDULES,
              f"unknown KL schedule '{self.kl_schedule}' (choose from: {', '.join(KL_SCHEDULES)})")
        check(self.warmup_epochs >= 0, f"warm-up epochs (--warmup-epochs) must be >= 0, got {self.warmup_epochs}")
        check(self.cycles >= 1, f"cycles must be >= 1, got {self.cycles}")
        check(0 < self.cycle_ratio <= 1, f"cycle ratio must be in (0, 1], got {self.cycle_ratio}")
        check(self.free_bits >= 0, f"free bits (--free-bits) must be >= 0, got {self.free_bits}")
        check(self.precision in PRECISIONS,
              f"unknown precision '{self.precision}' (--precision; choose from: {', '.join(PRECISIONS)})")
        check(self.precision != "fp16" or self.device.startswith("cuda"),
              f"--precision fp16 needs a CUDA device (it trains with a gradient scaler on the GPU), but the "
              f"device is '{self.device}'; use bf16, fp32 or auto")
        check(self.grad_clip >= 0, f"gradient clip must be >= 0, got {self.grad_clip}")
        check(self.grad_accum >= 1, f"gradient accumulation must be >= 1, got {self.grad_accum}")
        check(self.max_nonfinite >= 1, f"max_nonfinite must be >= 1, got {self.max_nonfinite}")
        check(self.checkpoint_every >= 0, f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        check(all(0 <= b < 1 for b in self.adam_betas), f"Adam betas must be in [0, 1), got {self.adam_betas}")
        check(self.train_part in TRAIN_PARTS,
              f"unknown --train '{self.train_part}' (choose from: {', '.join(TRAIN_PARTS)})")
        check(0 <= self.ema_decay < 1, f"--ema must be in [0, 1), got {self.ema_decay}")
        check(self.pixel_loss in PIXEL_LOSSES,
              f"unknown --pixel-loss '{self.pixel_loss}' (choose from: {', '.join(PIXEL_LOSSES)})")
        check(self.perceptual_weight >= 0, f"--perceptual-weight must be >= 0, got {self.perceptual_weight}")
        check(self.disc_start >= 0, f"--disc-start must be >= 0, got {self.disc_start}")
        check(self.disc_weight >= 0 and self.disc_factor >= 0, "discriminator weights must be >= 0")
        check(self.disc_ndf >= 1 and self.disc_layers >= 1, "the discriminator needs ndf >= 1 and layers >= 1")
        check(self.k >= 1, f"the number of importance samples (--k) must be >= 1, got {self.k}")
        check(self.elbo_epochs >= 0, f"--elbo-epochs must be >= 0, got {self.elbo_epochs}")
        check(self.tc_alpha >= 0 and self.tc_gamma >= 0 and self.factor_gamma >= 0,
              "the weights of the disentangling objectives must be >= 0")
        check(self.disc_lr > 0, f"--disc-lr must be positive, got {self.disc_lr}")
        check(self.grad_skip >= 0, f"--grad-skip must be >= 0, got {self.grad_skip}")
        check(self.max_minutes >= 0, f"--max-minutes must be >= 0, got {self.max_minutes}")
