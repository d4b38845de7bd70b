"""The study's fixtures: `scale` (the selected scale, and the full one behind -m long), `study` (every run trained,
reused or resumed, then every claim judged, once per session) and `judge` (a claim's verdict as a test outcome).
elr/pytest_plugin.py registers this module only in a session that runs the study."""

from __future__ import annotations

from pathlib import Path

import pytest

from .pytest_plugin import FULL_MARKS, STUDY_KEY, VERDICT_KEY, Study, _cluster_options, _device, _train


@pytest.fixture(scope="session", params=["selected", pytest.param("full", marks=[getattr(pytest.mark, m)
                                                                                 for m in FULL_MARKS])])
def scale(request) -> str:
    return request.config.getoption("scale") if request.param == "selected" else "full"


@pytest.fixture(scope="session")
def study(request, scale) -> Study:
    """Train (or reuse, or resume) every run of the study at this scale, then judge all claims."""
    from elr import runs
    from elr.config import ConfigError
    from elr.training.data import DataError
    from elr.study import Design, auto_pack, evaluate, expand

    config = request.config
    try:
        device, opts = _device(config), _cluster_options(config)
        configs = expand(Design.load(config.getoption("design")), scale, seeds=config.getoption("seeds"),
                         data=config.getoption("data"), device=device, check_device=opts.executor == "local")
        root = Path(config.getoption("runs_dir")) / scale
        paths = _train(config, configs, root, opts, config.getoption("pack") or auto_pack(device))
    except (ConfigError, DataError) as e:
        pytest.exit(f"elr: {e}", returncode=2)
    loaded = runs.load_runs(paths)
    return Study(scale, root, loaded, {v.id: v for v in evaluate(loaded)})


@pytest.fixture
def judge(study, record_property):
    """judge("H3"): record the verdict for the report, then pass / fail / skip as the verdict says."""
    from elr.analysis.verdict import HELD, REFUTED

    def _judge(claim_id: str):
        v = study.verdicts[claim_id]
        record_property(STUDY_KEY, {"scale": study.scale, "root": str(study.root.resolve())})
        record_property(VERDICT_KEY, v.to_json())
        message = f"{v.id} {v.verdict}: {v.reason}"
        if v.verdict == REFUTED:
            pytest.fail(message, pytrace=False)
        if v.verdict != HELD:
            pytest.skip(message)
        return v

    return _judge
