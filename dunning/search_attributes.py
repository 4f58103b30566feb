"""Typed custom search attributes kept current by every journey."""

from temporalio.common import SearchAttributeKey

STAGE = SearchAttributeKey.for_keyword("DunningStage")
CUSTOMER_ID = SearchAttributeKey.for_keyword("DunningCustomerId")
AMOUNT_DUE = SearchAttributeKey.for_int("DunningAmountDue")
CURRENCY = SearchAttributeKey.for_keyword("DunningCurrency")
DECLINE_CLASS = SearchAttributeKey.for_keyword("DunningDeclineClass")

ALL = (STAGE, CUSTOMER_ID, AMOUNT_DUE, CURRENCY, DECLINE_CLASS)
