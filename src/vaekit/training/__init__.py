"""Training: ``config`` (TrainConfig), ``trainer`` (the one Trainer and its StepContext),
``checkpoint`` (pickle-free state files) and ``api`` (``train`` / ``resume`` from configs)."""
