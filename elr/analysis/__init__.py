"""Analysis: run directories (elr.runs) in, verdicts and the report out. The theory's predictions, the detectors
and the statistics are pure functions; inspect analyses one run, claims judges H1..H6 over runs, report writes
them up. Nothing here imports the trainer (claims reads one constant, the synthetic data's class count, from
elr.training.data)."""
