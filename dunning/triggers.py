"""Starting and steering journeys from outside: webhooks, the CLI, the ops API and tests."""

from __future__ import annotations

from temporalio.client import Client, WorkflowHandle
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)

from dunning import search_attributes
from dunning.config import TASK_QUEUE
from dunning.journey import (
    SIGNAL_PAYMENT_FAILED,
    WORKFLOW_NAME,
    JourneyInput,
    JourneyStatus,
    PaymentFailed,
)
from dunning.models import FailedPayment

MEMO_SUBSCRIPTION = "subscription"


async def start_journey(
    client: Client,
    payment: FailedPayment,
    *,
    policy_version: str,
    event_id: str,
    task_queue: str = TASK_QUEUE,
) -> WorkflowHandle:
    """Signal-with-start: the first failure event starts the journey, repeats only signal it.

    Returns once the server has persisted the start; no worker needs to be up (fast webhooks).
    A journey that already ended is not restarted by a late duplicate (REJECT_DUPLICATE).
    """
    return await client.start_workflow(
        WORKFLOW_NAME,
        JourneyInput(payment=payment, policy_version=policy_version, event_id=event_id),
        id=payment.journey_id,
        task_queue=task_queue,
        result_type=JourneyStatus,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        # Read back when the subscription is deleted: every open journey of it is cancelled.
        memo={MEMO_SUBSCRIPTION: payment.subscription_id} if payment.subscription_id else None,
        start_signal=SIGNAL_PAYMENT_FAILED,
        start_signal_args=[
            PaymentFailed(event_id=event_id, at=payment.failed_at, decline=payment.initial_decline)
        ],
        search_attributes=TypedSearchAttributes(
            [
                SearchAttributePair(search_attributes.STAGE, "retrying"),
                SearchAttributePair(search_attributes.CUSTOMER_ID, payment.customer.id),
                SearchAttributePair(search_attributes.AMOUNT_DUE, payment.amount),
                SearchAttributePair(search_attributes.CURRENCY, payment.currency),
                SearchAttributePair(search_attributes.DECLINE_CLASS, "none"),
            ]
        ),
    )
