"""StripeGateway against localstripe (a stateful fake Stripe from PyPI), run as a subprocess.

localstripe binds every interface (`::`) on the port it is given; the port is free and the
server lives only for this module. Its hard-coded /tmp/localstripe.pickle persistence is
switched off by the launcher below so that runs never share state.

Only what localstripe implements as Stripe documents it is exercised here: off-session
PaymentIntents created and confirmed in one call, and reading them back.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import stripe

from activities.stripe_gateway import StripeGateway, make_client
from dunning.ports import ReconcileRequest

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
API_KEY = "sk_test_localstripe"
FAILING_CARD = "4000000000000341"  # attaches, then every charge is declined
WORKING_CARD = "4242424242424242"

LAUNCHER = """
import localstripe.resources
localstripe.resources.Store.dump_to_disk = lambda self: None  # no /tmp/localstripe.pickle
from localstripe.server import start
start()
"""


@dataclass
class LocalStripe:
    url: str
    client: stripe.StripeClient


def _free_port() -> int:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
        sock.bind(("::", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def localstripe() -> Iterator[LocalStripe]:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, "--port", str(port), "--from-scratch"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"localstripe exited: {process.stderr.read().decode()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"localstripe did not listen on port {port} within {START_TIMEOUT}s")
                time.sleep(0.1)
        url = f"http://127.0.0.1:{port}"
        yield LocalStripe(url=url, client=make_client(API_KEY, url))
    finally:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)
        process.stderr.close()


def _card(client: stripe.StripeClient, number: str, customer_id: str) -> str:
    method = client.v1.payment_methods.create(
        {"type": "card", "card": {"number": number, "exp_month": 12, "exp_year": 2034, "cvc": "123"}}
    )
    client.v1.payment_methods.attach(method.id, {"customer": customer_id})
    return method.id


def _off_session_intent(client: stripe.StripeClient, customer_id: str, method_id: str) -> stripe.PaymentIntent:
    return client.v1.payment_intents.create(
        {
            "amount": 2500,
            "currency": "usd",
            "customer": customer_id,
            "payment_method": method_id,
            "confirm": True,
            "off_session": True,
        }
    )


def _reconcile(intent_id: str) -> ReconcileRequest:
    return ReconcileRequest(
        journey_id=f"dunning-{intent_id}", attempt_number=1, payment_reference=intent_id, payment_kind="payment_intent"
    )


def test_off_session_decline_and_success_read_back(localstripe: LocalStripe) -> None:
    client = localstripe.client
    customer = client.v1.customers.create({"email": "ada@example.com"})
    failing = _card(client, FAILING_CARD, customer.id)
    working = _card(client, WORKING_CARD, customer.id)

    with pytest.raises(stripe.CardError) as declined:
        _off_session_intent(client, customer.id, failing)
    failed_charge = client.v1.charges.retrieve(declined.value.error.charge)
    assert failed_charge.status == "failed"

    gateway = StripeGateway(make_client(API_KEY, localstripe.url))
    outcome = gateway.read_back(_reconcile(failed_charge.payment_intent))
    assert outcome.status == "declined"
    assert outcome.charge_id == failed_charge.id
    assert outcome.payment_intent_id == failed_charge.payment_intent
    assert outcome.decline.payment_method == failing

    paid = _off_session_intent(client, customer.id, working)
    settled = gateway.read_back(_reconcile(paid.id))
    charges = client.v1.charges.list({"customer": customer.id}).data
    assert sorted(c.status for c in charges) == ["failed", "succeeded"]
    (success,) = [c for c in charges if c.status == "succeeded"]
    assert (settled.status, settled.charge_id, settled.payment_intent_id) == ("succeeded", success.id, paid.id)
