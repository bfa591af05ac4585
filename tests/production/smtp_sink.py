"""A real SMTP server on a loopback port (aiosmtpd) that keeps what it receives, for the alert tests."""

from __future__ import annotations

import email
import json
import socket
import time
from email.message import EmailMessage
from email.policy import default
from typing import Self

from aiosmtpd.controller import Controller


class SmtpSink:
    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.messages: list[EmailMessage] = []
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server, session, envelope) -> str:
        self.messages.append(email.message_from_bytes(envelope.content, policy=default))
        return "250 OK"

    def __enter__(self) -> Self:
        self._controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._controller.stop()

    def airflow_connection(self) -> str:
        """The `recsys_smtp` connection (AIRFLOW_CONN_RECSYS_SMTP) for this sink: no TLS, no login."""
        return json.dumps({"conn_type": "smtp", "host": "127.0.0.1", "port": self.port,
                           "extra": {"disable_tls": True, "disable_ssl": True, "from_email": "recsys@test.local"}})

    def wait_for(self, count: int, timeout: float = 120.0) -> list[EmailMessage]:
        """At least `count` messages (the sender may be another process); fails after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.5)
        assert len(self.messages) >= count, f"{len(self.messages)} of {count} alert e-mails arrived"
        return self.messages


def body(message: EmailMessage) -> str:
    return message.get_body(("html", "plain")).get_content()
