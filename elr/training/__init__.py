"""Training: the models, the data, the ELR rule and the optimizers, and the trainer (the only stateful loop), which
writes one run directory per run (elr.runs). Of the analysis it imports only theory.relaxation_steps, for the
per-layer relaxation times a per-layer rule logs."""
