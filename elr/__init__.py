"""elr: does an effective learning rate let convolutional networks skip learning-rate cross-validation?

One run:   python -m elr train --model convnet_si --data synthetic --epochs 5 --out runs/demo
A study:   pytest experiments/            (smoke scale, CPU, minutes)

elr.training writes run directories (elr.runs), elr.analysis reads them; the study runner (study, cluster,
runlock), the pytest layer, the CLI and the benchmark sit on top. README "How it fits together" maps them.
"""

__version__ = "0.1.0"
