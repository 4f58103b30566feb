"""Logs never carry customer contact data: email addresses and phone numbers are masked.

`install()` (worker.py, starter.py) masks every record of every logger, including handlers set up
later (uvicorn's). Names cannot be recognised by pattern: they stay out of Temporal through the
payload codec, and code must not log them.
"""

from __future__ import annotations

import logging
import re
import threading

EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]{1,64}@((?:[A-Za-z0-9-]{1,63}\.)+[A-Za-z]{2,63})\b")
# International numbers (+CC ...), and North American ones written with separators. Plain digit
# runs (ids, amounts, timestamps) are left alone.
PHONE = re.compile(
    r"(?<![\w+])\+[1-9](?:[ .()-]{0,2}\d){6,14}(?!\d)"
    r"|(?<!\w)\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}(?!\d)"
    r"|(?<![\w-])\d{3}[.-]\d{3}[.-]\d{4}(?![\w-])"
)


def redact(text: str) -> str:
    text = EMAIL.sub(lambda m: f"<email ***@{m.group(1)}>", text)
    return PHONE.sub(lambda m: "<phone ***" + re.sub(r"\D", "", m.group(0))[-2:] + ">", text)


def _redact_arg(value: object) -> object:
    if value is None or isinstance(value, (bool, int, float)):
        return value
    text = value if isinstance(value, str) else str(value)
    cleaned = redact(text)
    return value if cleaned == text else cleaned


class RedactingFilter(logging.Filter):
    """Masks the record's message, arguments and exception text in place, then lets it pass."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_redacted", False):
            return True
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: leave it to logging's own error report
            return True
        if redact(message) != message:
            # Redact argument by argument first: formatters such as uvicorn's read record.args.
            if isinstance(record.msg, str):
                record.msg = redact(record.msg)
            if isinstance(record.args, tuple):
                record.args = tuple(_redact_arg(arg) for arg in record.args)
            elif isinstance(record.args, dict):
                record.args = {key: _redact_arg(arg) for key, arg in record.args.items()}
            try:
                masked = record.getMessage()
                clean = redact(masked) == masked
            except Exception:  # e.g. %d now meets a masked string
                clean = False
            if not clean:  # merge and mask the whole message
                record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        record._redacted = True
        return True


_lock = threading.Lock()
_installed: RedactingFilter | None = None


def install() -> RedactingFilter:
    """Mask every log record from now on (idempotent)."""
    global _installed
    with _lock:
        if _installed is not None:
            return _installed
        the_filter = RedactingFilter()
        for handler in logging.getLogger().handlers:
            handler.addFilter(the_filter)
        # Handlers configured later (uvicorn's dictConfig) never see an unmasked record either.
        make_record = logging.getLogRecordFactory()

        def redacting_factory(*args, **kwargs) -> logging.LogRecord:
            record = make_record(*args, **kwargs)
            the_filter.filter(record)
            return record

        logging.setLogRecordFactory(redacting_factory)
        _installed = the_filter
        return the_filter
