"""Customer messages: Jinja2 templates per locale, amounts and dates formatted with Babel.

Templates live in `dunning/templates/<locale>/<template>.<channel>.<part>.j2`, e.g.
`ar/reminder.email.html.j2`. Parts: email subject/text/html, sms text, in_app title/text.
A directory named by `DUNNING_TEMPLATE_DIR` (or `template_dir=`) with the same layout is
searched before the built-ins, so wording can change without a release. The locale falls back
along its subtags, then to English: `ar-EG` -> `ar` -> `en`; one locale serves every part.

Also here: the signed unsubscribe links that emails carry (the API verifies them).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import os
import re
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from babel import Locale, UnknownLocaleError
from babel.dates import format_date, format_skeleton, format_time, get_datetime_format
from babel.numbers import format_currency, get_currency_precision
from jinja2 import Environment, FileSystemLoader, StrictUndefined, TemplateNotFound

from dunning.enums import Channel
from dunning.ports import MessageRequest, RenderedMessage

BUILTIN_TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
TEMPLATE_DIR_ENV = "DUNNING_TEMPLATE_DIR"
BRAND_ENV = "DUNNING_BRAND_NAME"
DEFAULT_LOCALE = "en"
TEMPLATES = (
    "payment_failed",
    "reminder",
    "final_notice",
    "incentive",
    "access_restricted",
    "payment_recovered",
)
LOCALES = ("en", "ar", "ro", "ja")
PARTS: dict[Channel, tuple[str, ...]] = {
    Channel.email: ("subject", "text", "html"),
    Channel.sms: ("text",),
    Channel.in_app: ("title", "text"),
}

# Digits of the numbering systems CLDR makes default for some locales (ar-EG, ar-SA, fa...).
# Babel applies their separators but leaves the digits Latin, so they are mapped here.
_NATIVE_DIGITS = {"arab": "٠١٢٣٤٥٦٧٨٩", "arabext": "۰۱۲۳۴۵۶۷۸۹"}
# The workflow names the next step by decision kind when it has no action: an attempt is a retry.
_NEXT_ACTION_ALIASES = {"attempt": "retry"}
# Non-breaking spaces from CLDR patterns would force an SMS into UCS-2.
_SMS_SPACES = str.maketrans({"\u00a0": " ", "\u202f": " ", "\u2009": " "})


class TemplateMissing(LookupError):
    """No locale in the fallback chain has this template for this channel."""


# --- locale -----------------------------------------------------------------------------------


def locale_candidates(tag: str | None) -> list[str]:
    """`ar_eg` -> ["ar-EG", "ar", "en"]: the template directories to try, most specific first."""
    parts = [p for p in re.split(r"[-_]", (tag or "").strip()) if p]
    candidates: list[str] = []
    if parts:
        normalised = [parts[0].lower()]
        for part in parts[1:]:
            if len(part) == 4:  # script subtag: Hant
                normalised.append(part.title())
            elif len(part) in (2, 3):  # region: EG, 419
                normalised.append(part.upper())
            else:
                normalised.append(part)
        for end in range(len(normalised), 0, -1):
            candidates.append("-".join(normalised[:end]))
    if DEFAULT_LOCALE not in candidates:
        candidates.append(DEFAULT_LOCALE)
    return candidates


def _babel_locale(tag: str) -> Locale:
    try:
        return Locale.parse(tag.replace("-", "_"))
    except (UnknownLocaleError, ValueError):
        return Locale.parse(DEFAULT_LOCALE)


def _formatting_locale(requested: str | None, template_locale: str) -> Locale:
    # A regional variant formats better than its language (ar-EG uses Arabic-Indic digits),
    # but never format in a language other than the text's.
    for tag in locale_candidates(requested):
        if tag.split("-")[0] == template_locale.split("-")[0]:
            return _babel_locale(tag)
    return _babel_locale(template_locale)


def _native_digits(text: str, locale: Locale) -> str:
    digits = _NATIVE_DIGITS.get(locale.default_numbering_system)
    return text.translate(str.maketrans("0123456789", digits)) if digits else text


# --- amounts and dates ------------------------------------------------------------------------


def format_amount(amount_minor: int, currency: str, locale: str | Locale) -> str:
    """Minor units with the currency's own digits: JPY 4900 -> ¥4,900; KWD 12345 -> 12.345."""
    loc = locale if isinstance(locale, Locale) else _babel_locale(locale)
    code = currency.upper()
    value = Decimal(amount_minor).scaleb(-get_currency_precision(code))
    text = format_currency(value, code, locale=loc, numbering_system="default")
    return _native_digits(text, loc)


def customer_zone(timezone: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(timezone) if timezone else ZoneInfo("UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def format_moment(at: datetime, timezone: str | None, locale: str | Locale) -> str:
    """Full date and short time in the customer's zone, e.g. "Tuesday, March 3, 2026, 10:00 AM"."""
    loc = locale if isinstance(locale, Locale) else _babel_locale(locale)
    zone = customer_zone(timezone)
    local = at.astimezone(zone)
    date_text = format_date(local, "full", locale=loc)
    time_text = format_time(local, "short", tzinfo=zone, locale=loc)
    if zone.key != (timezone or ""):
        time_text += " UTC"  # no usable profile zone: say which clock we mean
    pattern = get_datetime_format("full", locale=loc).replace("'", "")
    return _native_digits(pattern.replace("{0}", time_text).replace("{1}", date_text), loc)


def format_day(at: datetime, timezone: str | None, locale: str | Locale) -> str:
    """Short day for SMS, e.g. "Mar 3", "3月3日"."""
    loc = locale if isinstance(locale, Locale) else _babel_locale(locale)
    local = at.astimezone(customer_zone(timezone))
    return _native_digits(format_skeleton("MMMd", local, locale=loc, fuzzy=True), loc)


# --- SMS segments -----------------------------------------------------------------------------

_GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM7_EXTENDED = frozenset("^{}\\[~]|€\f")  # each costs an escape plus the character


def sms_encoding(text: str) -> str:
    """"gsm7" when every character is in the GSM 03.38 alphabet, else "ucs2"."""
    return "gsm7" if all(c in _GSM7_BASIC or c in _GSM7_EXTENDED for c in text) else "ucs2"


def sms_segments(text: str) -> int:
    """Segments a carrier bills: GSM-7 160 alone or 153 per part; UCS-2 70 alone or 67."""
    if sms_encoding(text) == "gsm7":
        units = sum(2 if c in _GSM7_EXTENDED else 1 for c in text)
        single, multi = 160, 153
    else:
        units = len(text.encode("utf-16-le")) // 2  # astral characters take two units
        single, multi = 70, 67
    if units <= single:
        return 1
    return math.ceil(units / multi)


# --- rendering --------------------------------------------------------------------------------


def _autoescape(name: str | None) -> bool:
    return bool(name and name.endswith(".html.j2"))


@lru_cache(maxsize=16)
def _environment(search_path: tuple[str, ...]) -> Environment:
    # auto_reload (the default) re-reads edited override files without a restart.
    return Environment(
        loader=FileSystemLoader(list(search_path)),
        autoescape=_autoescape,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
    )


def _search_path(template_dir: Path | None) -> tuple[str, ...]:
    override = template_dir or (Path(os.environ[TEMPLATE_DIR_ENV]) if os.environ.get(TEMPLATE_DIR_ENV) else None)
    paths = [str(BUILTIN_TEMPLATE_DIR)]
    if override is not None:
        paths.insert(0, str(Path(override)))
    return tuple(paths)


def template_name(locale: str, template: str, channel: Channel, part: str) -> str:
    return f"{locale}/{template}.{channel.value}.{part}.j2"


def resolve_locale(
    locale: str | None, template: str, channel: Channel, *, template_dir: Path | None = None
) -> str:
    """The first locale of the fallback chain that has this template for this channel."""
    env = _environment(_search_path(template_dir))
    first_part = PARTS[channel][0]
    for candidate in locale_candidates(locale):
        try:
            env.get_template(template_name(candidate, template, channel, first_part))
        except TemplateNotFound:
            continue
        return candidate
    raise TemplateMissing(
        f"no template {template!r} for {channel.value} in any of {locale_candidates(locale)} "
        f"(searched {', '.join(_search_path(template_dir))})"
    )


def available_templates(template_dir: Path | None = None) -> set[str]:
    """Template names present in English for every channel (policy checks can use this)."""
    env = _environment(_search_path(template_dir))
    found = set()
    for name in env.list_templates(filter_func=lambda n: n.startswith(f"{DEFAULT_LOCALE}/")):
        stem = name.split("/", 1)[1]
        if stem.count(".") == 3:
            found.add(stem.split(".")[0])
    return {
        t for t in found
        if all(_exists(env, template_name(DEFAULT_LOCALE, t, c, p)) for c in PARTS for p in PARTS[c])
    }


def _exists(env: Environment, name: str) -> bool:
    try:
        env.get_template(name)
    except TemplateNotFound:
        return False
    return True


def _first_name(name: str | None) -> str | None:
    words = (name or "").split()
    return words[0] if words else None


def _tidy(text: str) -> str:
    lines = [line.rstrip() for line in text.strip().splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines))


def render(
    request: MessageRequest,
    *,
    template_dir: Path | None = None,
    brand: str | None = None,
    unsubscribe_url: str | None = None,
) -> RenderedMessage:
    """Render one message. `brand` defaults to DUNNING_BRAND_NAME; `unsubscribe_url` goes in
    the email footer when given."""
    channel = request.channel
    locale = resolve_locale(
        request.customer.locale, request.template, channel, template_dir=template_dir
    )
    loc = _formatting_locale(request.customer.locale, locale)
    zone = request.customer.timezone
    when = request.next_action_at
    context = {
        "brand": brand if brand is not None else (os.environ.get(BRAND_ENV) or None),
        "first_name": _first_name(request.customer.name),
        "full_name": (request.customer.name or "").strip() or None,
        "amount": format_amount(request.amount, request.currency, loc),
        "when": format_moment(when, zone, loc) if when else None,
        "day": format_day(when, zone, loc) if when else None,
        "next_action": _NEXT_ACTION_ALIASES.get(request.next_action or "", request.next_action),
        "update_url": request.update_url,
        "payment_reference": request.payment_reference,
        "unsubscribe_url": unsubscribe_url,
        "locale": locale,
        "lang": locale,
        "dir": "rtl" if loc.character_order == "right-to-left" else "ltr",
        "channel": channel.value,
    }
    env = _environment(_search_path(template_dir))
    fallbacks = locale_candidates(request.customer.locale)
    chain = fallbacks[fallbacks.index(locale):]
    parts: dict[str, str] = {}
    for part in PARTS[channel]:
        names = [template_name(tag, request.template, channel, part) for tag in chain]
        try:
            template = env.select_template(names)
        except TemplateNotFound as exc:
            raise TemplateMissing(f"missing {names[0]} (and fallbacks)") from exc
        parts[part] = template.render(context)

    if channel is Channel.email:
        return RenderedMessage(
            subject=" ".join(parts["subject"].split()),
            text=_tidy(parts["text"]),
            html=parts["html"].strip(),
        )
    if channel is Channel.sms:
        return RenderedMessage(text=" ".join(parts["text"].translate(_SMS_SPACES).split()))
    return RenderedMessage(subject=" ".join(parts["title"].split()), text=" ".join(parts["text"].split()))


# --- unsubscribe links ------------------------------------------------------------------------

UNSUBSCRIBE_SECRET_ENV = "DUNNING_UNSUBSCRIBE_SECRET"
_TOKEN_VERSION = "u1"


class InvalidToken(ValueError):
    pass


def unsubscribe_secret(env: Mapping[str, str] | None = None) -> bytes:
    """DUNNING_UNSUBSCRIBE_SECRET, else derived from the API token (env or the data-dir file),
    so the worker that signs and the API that verifies agree without extra setup."""
    env = os.environ if env is None else env
    explicit = env.get(UNSUBSCRIBE_SECRET_ENV)
    if explicit:
        return explicit.encode("utf-8")
    from dunning.config import Settings, api_token

    overrides = {
        field: env[name]
        for field, name in (("dunning_api_token", "DUNNING_API_TOKEN"), ("dunning_data_dir", "DUNNING_DATA_DIR"))
        if env.get(name)
    }
    root = api_token(Settings(**overrides)).encode("utf-8")
    return hmac.new(root, b"dunning-unsubscribe-v1", hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def unsubscribe_token(customer_id: str, channel: Channel | str, secret: bytes) -> str:
    """`u1.<customer id:channel>.<HMAC-SHA256>`, URL-safe; no expiry (RFC 8058 links must keep
    working for as long as the email sits in an inbox)."""
    payload = f"{customer_id}:{Channel(channel).value}".encode()
    mac = hmac.new(secret, _TOKEN_VERSION.encode() + b"." + payload, hashlib.sha256).digest()
    return f"{_TOKEN_VERSION}.{_b64(payload)}.{_b64(mac)}"


def read_unsubscribe_token(token: str, secret: bytes) -> tuple[str, Channel]:
    """(customer id, channel) of a token this deployment signed; InvalidToken otherwise."""
    try:
        version, payload_b64, mac_b64 = token.split(".")
        payload, mac = _unb64(payload_b64), _unb64(mac_b64)
    except (ValueError, TypeError) as exc:
        raise InvalidToken("malformed unsubscribe token") from exc
    if version != _TOKEN_VERSION:
        raise InvalidToken(f"unknown unsubscribe token version {version!r}")
    expected = hmac.new(secret, version.encode() + b"." + payload, hashlib.sha256).digest()
    if not hmac.compare_digest(mac, expected):
        raise InvalidToken("unsubscribe token signature does not match")
    customer_id, _, channel = payload.decode("utf-8", "replace").rpartition(":")
    try:
        return customer_id, Channel(channel)
    except ValueError as exc:
        raise InvalidToken(f"unknown channel {channel!r} in unsubscribe token") from exc


def unsubscribe_url(public_url: str, customer_id: str, channel: Channel | str, secret: bytes) -> str:
    return f"{public_url.rstrip('/')}/unsubscribe/{unsubscribe_token(customer_id, channel, secret)}"
