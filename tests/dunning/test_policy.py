"""The policy language: shipped policies load, and every mistake is reported with line, field and fix."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest

from dunning.models import FailedPayment
from dunning.policy import PolicyError, load_policy, parse_policy, pick_variant

ROOT = Path(__file__).resolve().parents[2]

MINIMAL = """\
name: small
window: 10d
grace_period: 2d
steps:
  - id: retry-1
    at: 1d
    action: retry
  - id: end
    at: 10d
    action: hand_off
"""


def test_shipped_policies_load_with_content_versions():
    default = load_policy(ROOT / "policies" / "default.yaml")
    demo = load_policy(ROOT / "policies" / "demo.yaml")
    assert default.version.startswith("default@") and len(default.version) == len("default@") + 12
    assert demo.window <= timedelta(minutes=5), "the demo policy must finish a journey in under 5 minutes"
    assert [s.action for s in demo.steps] == [s.action for s in default.steps], "demo keeps the default's shape"


def test_version_changes_with_the_text_and_only_with_it():
    assert parse_policy(MINIMAL).version == parse_policy(MINIMAL).version
    assert parse_policy(MINIMAL).version != parse_policy(MINIMAL + "\n# tweak\n").version


def test_durations_accept_shorthand_iso_and_seconds():
    policy = parse_policy(MINIMAL.replace("at: 1d", "at: PT36H").replace("window: 10d", "window: 864000s"))
    assert policy.steps[0].at == timedelta(hours=36)
    assert policy.window == timedelta(days=10)


def errors_of(text: str) -> list[str]:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "p.yaml")
    return info.value.problems


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("at: 1d", "at: soon"), ["line 6: steps[0] (step retry-1).at", "invalid duration 'soon'", "'3d'"]),
        (("action: retry", "action: retyr"), ["line 7: steps[0] (step retry-1).action", "'retry'"]),
        (("    action: retry\n", "    action: notify\n"), ["line 5: steps[0] (step retry-1)", "needs `channels`"]),
        (("id: retry-1", "id: Retry 1"), ["line 5: steps[0] (step Retry 1).id", "lowercase slug"]),
        (("window: 10d", "window: 10d\nwindo: 3d"), ["line 3: windo", "Extra inputs are not permitted"]),
        (("action: hand_off", "action: retry"), ["the last step must be hand_off or write_off"]),
        (("at: 10d", "at: 11d"), ["after the policy window"]),
        (("id: end", "id: retry-1"), ["'retry-1' is used twice"]),
        (("at: 1d\n    action: retry", "at: 1d\n    action: restrict_access"), ["inside the grace period"]),
    ],
)
def test_mistakes_name_the_line_the_field_and_the_fix(change, expected):
    old, new = change
    problems = "\n".join(errors_of(MINIMAL.replace(old, new, 1)))
    for fragment in expected:
        assert fragment in problems, problems


def test_steps_out_of_order_are_rejected():
    swapped = """\
name: small
window: 10d
steps:
  - {id: end, at: 10d, action: hand_off}
  - {id: retry-1, at: 1d, action: retry}
"""
    assert "listed in order of `at`" in "\n".join(errors_of(swapped))


def test_not_yaml_and_not_a_mapping_are_clear():
    assert "not valid YAML" in errors_of("name: [unclosed")[0]
    assert "must be a mapping" in errors_of("- just\n- a list\n")[0]


def test_missing_file_is_a_policy_error(tmp_path):
    with pytest.raises(PolicyError, match="cannot read the file"):
        load_policy(tmp_path / "nope.yaml")


SEGMENTED = MINIMAL + """\
segments:
  - name: big-eur
    match: {amount_min: 10000, currencies: [EUR]}
    steps:
      - {id: big-retry, at: 2d, action: retry}
      - {id: big-end, at: 10d, action: write_off}
  - name: vip
    match: {tags: [vip]}
    variants:
      - name: a
        weight: 1
        steps: [{id: a-end, at: 10d, action: hand_off}]
      - name: b
        weight: 3
        steps: [{id: b-end, at: 9d, action: hand_off}]
"""


def payment(amount=500, currency="usd", tags=(), customer="cus_1") -> FailedPayment:
    return FailedPayment.model_validate(
        {
            "id": "in_1",
            "amount": amount,
            "currency": currency,
            "failed_at": "2026-11-01T00:00:00Z",
            "customer": {"id": customer, "tags": list(tags)},
        }
    )


def test_segments_first_match_wins_and_fall_back_to_the_default_ladder():
    policy = parse_policy(SEGMENTED)
    assert policy.ladder_for(payment(20000, "eur", tags=["vip"])).segment == "big-eur"
    assert policy.ladder_for(payment(20000, "usd", tags=["vip"])).segment == "vip"
    fallback = policy.ladder_for(payment())
    assert fallback.segment == "default" and fallback.steps == policy.steps


def test_variants_are_stable_per_customer_and_follow_weights():
    policy = parse_policy(SEGMENTED)
    first = policy.ladder_for(payment(tags=["vip"], customer="cus_42")).variant
    assert all(policy.ladder_for(payment(tags=["vip"], customer="cus_42")).variant == first for _ in range(5))
    counts = Counter(pick_variant(policy.segments[1].variants, f"cus_{i}").name for i in range(4000))
    assert 0.2 < counts["a"] / 4000 < 0.3


def test_segment_ladders_are_validated_too():
    bad = SEGMENTED.replace("{id: big-end, at: 10d, action: write_off}", "{id: big-end, at: 10d, action: retry}")
    assert any("segments.0.steps" in p and "last step" in p for p in errors_of(bad))
