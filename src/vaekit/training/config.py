"""Training settings: the loop's and the objective's, one frozen dataclass."""

from __future__ import annotations

from dataclasses import dataclass

from vaekit.config import check

PRECISIONS = ("fp32", "bf16")
KL_SCHEDULES = ("constant", "linear", "cyclical")


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
    precision: str = "fp32"  # fp32 | bf16 (autocast)
    device: str = "cpu"
    grad_clip: float = 0.0  # max global gradient norm; 0 disables
    grad_accum: int = 1  # micro-batches per optimizer step
    max_nonfinite: int = 20  # consecutive non-finite steps before training stops
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints; 0: once per epoch

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
              f"unknown precision '{self.precision}' (choose from: {', '.join(PRECISIONS)})")
        check(self.grad_clip >= 0, f"gradient clip must be >= 0, got {self.grad_clip}")
        check(self.grad_accum >= 1, f"gradient accumulation must be >= 1, got {self.grad_accum}")
        check(self.max_nonfinite >= 1, f"max_nonfinite must be >= 1, got {self.max_nonfinite}")
        check(self.checkpoint_every >= 0, f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
