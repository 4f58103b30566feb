"""Templates, locale fallback, Babel formatting, SMS segments and unsubscribe tokens."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from dunning.enums import Channel
from dunning.models import Customer
from dunning.ports import MessageRequest
from dunning.rendering import (
    LOCALES,
    TEMPLATES,
    InvalidToken,
    TemplateMissing,
    available_templates,
    format_amount,
    format_moment,
    locale_candidates,
    read_unsubscribe_token,
    render,
    resolve_locale,
    sms_encoding,
    sms_segments,
    unsubscribe_token,
)

AT = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
NEXT = datetime(2026, 3, 5, 8, 0, tzinfo=UTC)
UPDATE_URL = "https://acme.test/pay/7Hq2xY"  # a short hosted link, as a dunning SMS should carry
ARABIC_DIGITS = set("٠١٢٣٤٥٦٧٨٩")


def request(
    template: str = "payment_failed",
    channel: Channel = Channel.email,
    *,
    locale: str = "en",
    amount: int = 4900,
    currency: str = "usd",
    name: str | None = "Maria Popescu",
    timezone: str | None = "Europe/Bucharest",
    next_action: str | None = "retry",
    next_action_at: datetime | None = NEXT,
    update_url: str | None = UPDATE_URL,
) -> MessageRequest:
    return MessageRequest(
        journey_id="dunning-in_1001",
        step_id="notify-1",
        channel=channel,
        template=template,
        customer=Customer(id="cus_1", name=name, email="maria@example.com", phone="+40712345678", locale=locale, timezone=timezone),
        amount=amount,
        currency=currency,
        payment_reference="in_1001",
        update_url=update_url,
        next_action_at=next_action_at,
        next_action=next_action,
        at=AT,
    )


@pytest.fixture(autouse=True)
def _no_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DUNNING_TEMPLATE_DIR", raising=False)
    monkeypatch.setenv("DUNNING_BRAND_NAME", "Acme")


# --- every template, locale and channel ------------------------------------------------------


@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize("channel", list(Channel))
def test_every_template_renders_in_every_locale_and_channel(template: str, locale: str, channel: Channel) -> None:
    assert resolve_locale(locale, template, channel) == locale  # no silent fallback to English
    message = render(request(template, channel, locale=locale))
    assert message.text.strip()
    assert "{{" not in message.text and "{%" not in message.text
    if channel is Channel.email:
        assert message.subject and "\n" not in message.subject
        assert message.html and message.html.startswith("<!DOCTYPE html>")
        assert f'lang="{locale}"' in message.html
        assert "in_1001" in message.text  # the payment reference support will ask for
    elif channel is Channel.in_app:
        assert message.subject and message.html is None
    else:
        assert message.subject is None and message.html is None
    if template != "payment_recovered":
        assert UPDATE_URL in message.text
    if channel is Channel.email and template != "payment_recovered":
        assert f'href="{UPDATE_URL}"' in (message.html or "")


@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize("template", TEMPLATES)
def test_sms_fit_two_segments_and_carry_only_a_first_name(template: str, locale: str) -> None:
    message = render(request(template, Channel.sms, locale=locale, name="Maria Popescu"))
    assert sms_segments(message.text) <= 2, (sms_encoding(message.text), len(message.text), message.text)
    assert "Popescu" not in message.text
    assert "maria@example.com" not in message.text and "712345678" not in message.text
    assert "STOP" in message.text


def test_english_and_romanian_sms_stay_in_the_gsm_alphabet() -> None:
    for locale in ("en", "ro"):
        for template in TEMPLATES:
            text = render(request(template, Channel.sms, locale=locale, currency="ron")).text
            assert sms_encoding(text) == "gsm7", (locale, template, text)


def test_templates_still_render_without_link_name_or_next_date() -> None:
    for locale in LOCALES:
        for template in TEMPLATES:
            for channel in Channel:
                message = render(request(template, channel, locale=locale, name=None, update_url=None, next_action_at=None, next_action=None))
                assert message.text.strip()


def test_what_happens_next_follows_the_next_action() -> None:
    assert "try again automatically on Thursday, March 5, 2026, 10:00" in render(request()).text
    cancel = render(request("final_notice", next_action="cancel_subscription")).text
    assert "your subscription will be cancelled" in cancel
    restrict = render(request("reminder", next_action="restrict_access")).text
    assert "pause access" in restrict
    # the workflow names an upcoming charge attempt by its decision kind
    assert "try again automatically" in render(request(next_action="attempt")).text


# --- locale fallback ---------------------------------------------------------------------------


def test_locale_candidates_fall_back_along_subtags_then_to_english() -> None:
    assert locale_candidates("ar-EG") == ["ar-EG", "ar", "en"]
    assert locale_candidates("ar_eg") == ["ar-EG", "ar", "en"]
    assert locale_candidates("zh-Hant-TW") == ["zh-Hant-TW", "zh-Hant", "zh", "en"]
    assert locale_candidates(None) == ["en"]


def test_regional_locale_uses_its_language_templates_and_its_own_formatting() -> None:
    message = render(request(locale="ar-EG", currency="egp", amount=123456))
    assert resolve_locale("ar-EG", "payment_failed", Channel.email) == "ar"
    assert 'dir="rtl"' in (message.html or "") and 'lang="ar"' in (message.html or "")
    # ar-EG writes numbers with Arabic-Indic digits and the Arabic decimal separator
    assert "١٬٢٣٤٫٥٦" in message.text
    assert "٢٠٢٦" in message.text  # the date too


def test_unknown_locale_falls_back_to_english() -> None:
    message = render(request(locale="de-DE", currency="eur"))
    assert message.subject == "Your payment of €49.00 didn't go through"


def test_unknown_template_is_reported() -> None:
    with pytest.raises(TemplateMissing, match="winback"):
        render(request("winback"))


def test_available_templates_lists_the_builtins() -> None:
    assert available_templates() == set(TEMPLATES)


# --- Babel formatting ----------------------------------------------------------------------------


def test_amounts_use_the_currency_digits_and_the_locale() -> None:
    assert format_amount(4900, "usd", "en") == "$49.00"
    assert format_amount(4900, "jpy", "en") == "¥4,900"  # JPY has no minor unit
    assert format_amount(4900, "jpy", "ja") == "￥4,900"
    assert format_amount(12345, "kwd", "en") == "KWD12.345"  # KWD has three
    assert format_amount(4900, "eur", "ro") == "49,00\xa0EUR"
    assert format_amount(4900, "usd", "ar") == "\u200f49.00\xa0US$"  # CLDR: plain ar uses Latin digits
    assert format_amount(4900, "usd", "ar-EG") == "\u200f٤٩٫٠٠\xa0US$"


def test_jpy_amount_has_no_decimals_in_a_rendered_message() -> None:
    text = render(request(locale="ja", currency="jpy", amount=4900)).text
    assert "￥4,900" in text and "4,900.00" not in text and "49.00" not in text


def test_dates_are_shown_in_the_customers_timezone() -> None:
    # 08:00 UTC is 10:00 in Bucharest and 17:00 in Tokyo
    assert format_moment(NEXT, "Europe/Bucharest", "en") == "Thursday, March 5, 2026, 10:00\u202fAM"
    assert format_moment(NEXT, "Asia/Tokyo", "ja") == "2026年3月5日木曜日 17:00"
    assert format_moment(NEXT, "Europe/Bucharest", "ro") == "joi, 5 martie 2026, 10:00"
    assert format_moment(NEXT, None, "en").endswith("8:00\u202fAM UTC")  # no zone known: say so
    assert format_moment(NEXT, "Not/AZone", "en").endswith("UTC")


def test_sms_replaces_non_breaking_spaces_so_it_stays_gsm7() -> None:
    text = render(request(channel=Channel.sms, locale="ro", currency="ron")).text
    assert "49,00 RON" in text and "\xa0" not in text


# --- SMS segments --------------------------------------------------------------------------------


def test_sms_segments_follow_gsm7_and_ucs2_limits() -> None:
    assert sms_segments("a" * 160) == 1
    assert sms_segments("a" * 161) == 2
    assert sms_segments("a" * 306) == 2
    assert sms_segments("a" * 307) == 3
    assert sms_segments("€" * 80) == 1  # extension characters take two septets
    assert sms_segments("€" * 81) == 2
    assert sms_segments("ă" * 70) == 1  # Romanian diacritics are not GSM-7
    assert sms_segments("ă" * 71) == 2
    assert sms_segments("あ" * 134) == 2
    assert sms_segments("あ" * 135) == 3
    assert sms_segments("😀" * 35) == 1  # astral characters take two UTF-16 units
    assert sms_segments("😀" * 36) == 2
    assert sms_encoding("Hello {name}") == "gsm7" and sms_encoding("مرحبا") == "ucs2"


# --- overrides and escaping ----------------------------------------------------------------------


def test_override_directory_wins_over_the_builtins(tmp_path: Path) -> None:
    (tmp_path / "en").mkdir()
    (tmp_path / "en" / "payment_failed.email.subject.j2").write_text("Heads up: {{ amount }} is due\n")
    message = render(request(), template_dir=tmp_path)
    assert message.subject == "Heads up: $49.00 is due"
    assert "didn't go through" in message.text  # the parts not overridden keep the built-in text


def test_override_directory_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "reminder.sms.text.j2").write_text("Plata de {{ amount }} asteapta. {{ update_url }}\n")
    monkeypatch.setenv("DUNNING_TEMPLATE_DIR", str(tmp_path))
    assert render(request("reminder", Channel.sms, locale="ro")).text == f"Plata de 49,00 USD asteapta. {UPDATE_URL}"


def test_override_can_add_a_regional_variant(tmp_path: Path) -> None:
    (tmp_path / "ar-EG").mkdir()
    (tmp_path / "ar-EG" / "payment_failed.sms.text.j2").write_text("مصر: {{ amount }}\n")
    assert render(request(channel=Channel.sms, locale="ar-EG"), template_dir=tmp_path).text == "مصر: \u200f٤٩٫٠٠ US$"
    assert render(request(channel=Channel.sms, locale="ar"), template_dir=tmp_path).text.startswith("Acme: ")


def test_override_templates_use_strict_undefined(tmp_path: Path) -> None:
    (tmp_path / "en").mkdir()
    (tmp_path / "en" / "payment_failed.sms.text.j2").write_text("{{ no_such_variable }}\n")
    with pytest.raises(Exception, match="no_such_variable"):
        render(request(channel=Channel.sms), template_dir=tmp_path)


def test_html_is_escaped_but_text_parts_are_not() -> None:
    message = render(request(name="<b>Tom</b> & Co", update_url="https://acme.test/pay?a=1&b=2"))
    assert "<b>Tom</b>" not in (message.html or "") and "&lt;b&gt;Tom&lt;/b&gt;" in (message.html or "")
    assert 'href="https://acme.test/pay?a=1&amp;b=2"' in (message.html or "")
    assert "Hi <b>Tom</b>," in message.text
    assert "https://acme.test/pay?a=1&b=2" in message.text


def test_arabic_email_is_right_to_left() -> None:
    html = render(request("reminder", locale="ar")).html or ""
    assert re.search(r'<html lang="ar" dir="rtl">', html)
    assert "text-align:right" in html


def test_unsubscribe_link_appears_in_the_email_footer() -> None:
    message = render(request(), unsubscribe_url="https://dunning.test/unsubscribe/tok")
    assert 'href="https://dunning.test/unsubscribe/tok"' in (message.html or "")
    assert "https://dunning.test/unsubscribe/tok" in message.text


# --- unsubscribe tokens --------------------------------------------------------------------------


def test_unsubscribe_tokens_round_trip_and_reject_tampering() -> None:
    secret = b"s3cret"
    token = unsubscribe_token("cus:with:colons", Channel.email, secret)
    assert read_unsubscribe_token(token, secret) == ("cus:with:colons", Channel.email)
    with pytest.raises(InvalidToken):
        read_unsubscribe_token(token, b"other secret")
    version, _, mac = token.split(".")
    forged = unsubscribe_token("cus_2", Channel.email, b"attacker").split(".")[1]
    with pytest.raises(InvalidToken):
        read_unsubscribe_token(f"{version}.{forged}.{mac}", secret)
    with pytest.raises(InvalidToken):
        read_unsubscribe_token("not-a-token", secret)
