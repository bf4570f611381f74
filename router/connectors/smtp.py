"""The SMTP destination: an email to a relay, with templates for recipients, subject and body.

The body template can name ``{text}``, the delivery's payload as text (so a
mapping can write the whole email body); ``attach: true`` sends the payload as
an attachment named by ``{filename}`` instead. STARTTLS is optional and, when
asked for, required: the relay's certificate is verified (against ``ca`` if
given). A 5xx answer fails the delivery, a 4xx or a lost connection retries.
"""

from __future__ import annotations

import asyncio
import json
import smtplib
import ssl
from email.message import EmailMessage
from typing import Any

from router.config.mesh import SecretUnavailable, SmtpTarget
from router.connectors import Delivery, SendResult
from router.connectors.templates import TemplateError, render, template_fields
from router.store.database import Store

TEXT_LIMIT = 1024 * 1024  # a payload larger than this is attached, never put in the body


class SmtpSender:
    def __init__(self, target: SmtpTarget, store: Store) -> None:
        self._target = target
        self._store = store

    async def send(self, delivery: Delivery) -> SendResult:
        return await asyncio.to_thread(self._send, delivery)

    async def close(self) -> None:
        return None  # one connection per email: nothing is kept open

    def _email(self, delivery: Delivery) -> EmailMessage:
        t = self._target
        body = delivery.body
        fields: dict[str, Any] = template_fields(self._store, delivery)
        attach = t.attach or body.size > TEXT_LIMIT
        fields["text"] = "" if attach else body.read().decode("utf-8", errors="replace")
        email = EmailMessage()
        email["From"] = t.sender
        email["To"] = ", ".join(render(to, fields) for to in t.to)
        email["Subject"] = render(t.subject, fields)
        email.set_content(render(t.body, fields))
        if attach:
            name = str(fields.get("filename") or f"{delivery.message_uuid}.bin")
            email.add_attachment(
                body.read(), maintype="application", subtype="octet-stream", filename=name
            )
        return email

    def _send(self, delivery: Delivery) -> SendResult:
        t = self._target
        try:
            email = self._email(delivery)
        except TemplateError as exc:
            return SendResult("fail", error=str(exc))
        try:
            with smtplib.SMTP(t.host, t.port, timeout=t.timeout) as smtp:
                if t.starttls:
                    context = ssl.create_default_context(cafile=str(t.ca) if t.ca else None)
                    smtp.starttls(context=context)
                if t.username is not None and t.password is not None:
                    smtp.login(t.username, t.password.value())
                refused = smtp.send_message(email)
        except smtplib.SMTPRecipientsRefused as exc:
            return _answer(exc.recipients, "all recipients refused")
        except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as exc:
            outcome = "fail" if 500 <= exc.smtp_code < 600 else "retry"
            return SendResult(outcome, error=f"SMTP {exc.smtp_code}: {_text(exc.smtp_error)}")
        except SecretUnavailable as exc:
            return SendResult("retry", error=f"SMTP login: {exc}")
        except (smtplib.SMTPException, OSError, ssl.SSLError) as exc:
            return SendResult("retry", error=f"SMTP {t.host}:{t.port}: {type(exc).__name__}: {exc}")
        # Recipients refused while others took it: sending again would duplicate the email.
        codes = {to: code for to, (code, _) in refused.items()}
        answer = json.dumps({"to": email["To"], "subject": email["Subject"], "refused": codes})
        error = f"some recipients refused: {_detail(refused)}" if refused else None
        return SendResult("sent", answer.encode(), error)


def _answer(refused: dict[str, tuple[int, bytes]], what: str) -> SendResult:
    codes = {to: code for to, (code, _) in refused.items()}
    outcome = "fail" if all(500 <= c < 600 for c in codes.values()) else "retry"
    return SendResult(
        outcome, json.dumps({"refused": codes}).encode(), f"{what}: {_detail(refused)}"
    )


def _detail(refused: dict[str, tuple[int, bytes]]) -> str:
    return "; ".join(f"{to}: {code} {_text(text)}" for to, (code, text) in refused.items())


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value
