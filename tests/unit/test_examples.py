"""Every shipped example spec (search_spaces/examples/*.yaml) parses and plans; the MoE ones search ep and etp.

Planning resolves the model, GPU and stack and specialises the space to the problem, so a renamed preset,
GPU or space, or a training shape no layout can meet, fails here rather than in a user's first study.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from autotune.spec import load_spec
from autotune.study.plan import plan_study

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "search_spaces" / "examples").glob("*.yaml"))


def test_the_examples_are_found():
    names = {p.stem for p in EXAMPLES}
    assert {"quickstart", "deepseek-v3-2048xh100", "qwen3-235b-a22b-256xh100", "tiny-moe-cpu"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_parses_and_plans(path):
    spec = load_spec(path)
    assert spec.name == path.stem  # the service lists examples by file name and submits them by spec name
    assert path.read_text().startswith("# ")  # a comment says what the example is and where its figures are from
    plan = plan_study(spec)
    assert plan.space.dimensions and plan.cases


@pytest.mark.parametrize(("name", "experts", "gpus"), [("deepseek-v3-2048xh100", 256, 2048),
                                                       ("qwen3-235b-a22b-256xh100", 128, 256)])
def test_moe_examples_search_expert_parallelism(name, experts, gpus):
    plan = plan_study(load_spec(next(p for p in EXAMPLES if p.stem == name)))
    dims = {d.name: d.choices for d in plan.space.dimensions}
    # megatron.yaml: ep in powers of two 1..64 (all divide 256 / 128 experts and the GPU count), etp 1..8
    assert experts % 64 == 0 and gpus % 64 == 0
    assert dims["ep"] == (1, 2, 4, 8, 16, 32, 64) and dims["etp"] == (1, 2, 4, 8)
