"""Logs mask email addresses and phone numbers, whatever logger or handler they go through."""

from __future__ import annotations

import io
import logging

import pytest

from dunning import redaction
from dunning.redaction import RedactingFilter, redact


@pytest.mark.parametrize(
    "text, expected",
    [
        ("sent to ana.pop+billing@example.com", "sent to <email ***@example.com>"),
        ("sms to +40712345678 ok", "sms to <phone ***78> ok"),
        ("call +1 (202) 555-0143", "call <phone ***43>"),
        ("call (202) 555-0143 or 202-555-0143", "call <phone ***43> or <phone ***43>"),
    ],
)
def test_contact_data_is_masked(text, expected):
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "2025-03-01 12:00:00,123 retry-2 at 2025-03-04T09:00:00+02:00",
        "amount 4200 eur, journey dunning-in_1MzT4k2eZvKYlo2C, attempt 3, code 51",
        "pm_1234567890 cus_+40 evt_1700000000",
        "version default@1a2b3c4d5e6f",
    ],
)
def test_ordinary_log_content_is_left_alone(text):
    assert redact(text) == text


def record(msg, *args, exc_info=None) -> logging.LogRecord:
    return logging.LogRecord("t", logging.INFO, __file__, 1, msg, args, exc_info)


def test_filter_masks_arguments_but_keeps_them_structured():
    rec = record('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", "/api/journeys?customer=a@b.example", "1.1", 200)
    assert RedactingFilter().filter(rec) is True
    assert isinstance(rec.args, tuple) and len(rec.args) == 5, "uvicorn's access formatter unpacks args"
    assert rec.getMessage() == '127.0.0.1:5000 - "GET /api/journeys?customer=<email ***@b.example> HTTP/1.1" 200'


def test_filter_masks_objects_and_exceptions():
    class Customer:
        def __str__(self) -> str:
            return "Customer(email=ana@example.com, phone=+40712345678)"

    try:
        raise ValueError("invalid address ana@example.com")
    except ValueError:
        import sys

        rec = record("bad customer %s", Customer(), exc_info=sys.exc_info())
    RedactingFilter().filter(rec)
    handler_output = logging.Formatter("%(message)s").format(rec)
    assert "ana@example.com" not in handler_output and "+40712345678" not in handler_output
    assert "ValueError: invalid address <email ***@example.com>" in handler_output


def test_a_broken_format_string_still_reaches_logging_error_handling():
    rec = record("%d items for %s", "not-a-number", "a@b.example")
    assert RedactingFilter().filter(rec) is True


def test_install_covers_handlers_added_later_and_other_loggers():
    previous = logging.getLogRecordFactory()
    try:
        redaction._installed = None
        redaction.install()
        assert redaction.install() is redaction._installed, "idempotent"
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)  # e.g. uvicorn's, configured after install()
        logger = logging.getLogger("tests.redaction.late")
        logger.addHandler(handler)
        logger.propagate = False
        logger.warning("message to %s failed", "ana@example.com")
        logger.warning("sms %s", "+40712345678")
        assert stream.getvalue() == "message to <email ***@example.com> failed\nsms <phone ***78>\n"
    finally:
        logging.setLogRecordFactory(previous)
        redaction._installed = None
        logger.removeHandler(handler)


def test_without_install_the_same_lines_would_leak():
    stream = io.StringIO()
    logger = logging.getLogger("tests.redaction.control")
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("message to %s failed", "ana@example.com")
    finally:
        logger.removeHandler(handler)
    assert "ana@example.com" in stream.getvalue()
