# The claim tests and design.toml, installed as the package elr.experiments (pyproject.toml's package-dir), so
# that an installed elr runs the study with `pytest --pyargs elr.experiments`; in a checkout `pytest experiments/`.
