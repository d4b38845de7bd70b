"""elr: does an effective learning rate let convolutional networks skip learning-rate cross-validation?

One run:   python -m elr train --model convnet_si --data synthetic --epochs 5 --out runs/demo
A study:   pytest experiments/            (smoke scale, CPU, minutes)
"""

__version__ = "0.1.0"
