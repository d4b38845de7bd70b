"""The verdict: what a claim's evaluation returns and the report consumes (plain data only)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

HELD, REFUTED, INCONCLUSIVE = "held", "refuted", "inconclusive"


@dataclass
class Verdict:
    id: str                      # "H1" .. "H5"
    claim: str                   # one sentence: what is claimed
    verdict: str                 # HELD | REFUTED | INCONCLUSIVE
    statistic: float | None      # the test statistic (named in `reason`)
    p: float | None              # uncorrected p-value, None where the claim is judged by an effect size
    effect: float | None         # the effect size (named in `reason`)
    ci: tuple[float, float] | None  # 95% confidence interval of `effect`
    runs: list[str]              # run names used
    reason: str                  # the criterion and the numbers that decided it
    seed_finding: str = ""       # what the seed reproduction reported for this claim
    p_corrected: dict = field(default_factory=dict)  # {"holm": p, "bh": p}, filled across claims
    details: dict = field(default_factory=dict)      # per-run numbers the report may plot (JSON-able)

    def to_json(self) -> dict:
        d = asdict(self)
        d["ci"] = list(self.ci) if self.ci is not None else None
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Verdict":
        names = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in names}   # verdicts.json adds derived keys (the measures' names)
        if d.get("ci") is not None:
            d["ci"] = tuple(d["ci"])
        return cls(**d)
