import pytest

from flashdecode.model import ModelConfig, count_parameters, flops_per_clip

PAPER = {"s": 56.8e6, "b": 161.7e6, "l": 348.0e6, "xl": 769.3e6}


@pytest.mark.parametrize("variant", PAPER)
def test_parameter_counts_match_the_paper(variant):
    n = count_parameters(ModelConfig.build(variant, "wan2.2"))
    assert abs(n - PAPER[variant]) / PAPER[variant] < 1e-3


def test_flops_match_the_cost_model():
    # DESIGN.md section 7: XL ~80.6 TFLOP per 25-frame 720p clip (45x80 tokens), S ~10.1, XL 1080p ~265.
    assert flops_per_clip(ModelConfig.build("xl"), 45, 80, 7) / 1e12 == pytest.approx(80.6, rel=2e-3)
    assert flops_per_clip(ModelConfig.build("s"), 45, 80, 7) / 1e12 == pytest.approx(10.1, rel=3e-3)
    assert flops_per_clip(ModelConfig.build("xl"), 68, 120, 7) / 1e12 == pytest.approx(265, rel=2e-3)


def test_config_json_round_trip():
    c = ModelConfig.build("b", "wan2.1")
    assert ModelConfig.from_json(c.to_json()) == c
    assert (c.in_channels, c.patch) == (16, 2)
