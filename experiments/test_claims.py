"""The seed's claims (H1-H4), the theory that explains them (H5) and the seed's question (H6), one test each.

Each criterion is fixed in elr/claims.py before any data is seen; a test passes when its claim held,
fails when it was refuted (the message gives the statistics) and skips when the evidence is inconclusive.
"""


def test_h1_elr_converges_to_one_value(judge):
    judge("H1")


def test_h2_sawtooth_in_elr_runs(judge):
    judge("H2")


def test_h3_elr_beats_random_configurations(judge):
    judge("H3")


def test_h4_sharp_drop_and_recovery(judge):
    judge("H4")


def test_h5_equilibrium_theory(judge):
    judge("H5")


def test_h6_elr_rule_reduces_lr_sensitivity(judge):
    judge("H6")
