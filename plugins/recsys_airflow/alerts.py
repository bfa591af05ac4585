"""Failure alerts: an e-mail through Airflow's SMTP provider when a task fails for good.

A failed gate (a bad snapshot, a model the quality gate rejects) and any other failure that has used
up its retries send one message naming the run, the step, the rule and the gate's report. Off unless
`RECSYS_ALERT_EMAIL` (comma-separated recipients) is set where tasks run; the SMTP server is the
Airflow connection `recsys_smtp` (host, port, login/password, extra `from_email`, `disable_tls`,
`disable_ssl`), the sender `RECSYS_ALERT_FROM` or the connection's `from_email`.
"""

from __future__ import annotations

import html
import logging
import os
from typing import Any

from airflow.sdk import BaseNotifier

log = logging.getLogger(__name__)
SMTP_CONN_ID = "recsys_smtp"


class FailureAlert(BaseNotifier):
    """on_failure_callback for every task of the DAG."""

    def notify(self, context: dict[str, Any]) -> None:
        recipients = [r.strip() for r in os.environ.get("RECSYS_ALERT_EMAIL", "").split(",") if r.strip()]
        if not recipients:
            log.info("alerts are off (RECSYS_ALERT_EMAIL is not set)")
            return
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        facts = failure_facts(context)
        subject = f"[recsys] {facts['dag']} {facts['run']}: {facts['step']} failed"
        if facts["rule"]:
            subject += f" (rule {facts['rule']})"
        rows = "".join(f"<tr><th align=left>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                       for k, v in facts.items() if v)
        # notify() directly, not the notifier's __call__: the message is already final text, and
        # Jinja must not read braces in a gate's message as a template.
        SmtpNotifier(to=recipients, from_email=os.environ.get("RECSYS_ALERT_FROM") or None, subject=subject,
                     html_content=f"<table>{rows}</table>", smtp_conn_id=SMTP_CONN_ID).notify(context)
        log.info("alert sent to %s: %s", ", ".join(recipients), subject)


def failure_facts(context: dict[str, Any]) -> dict[str, Any]:
    """Run, step, rule, report and message of a failed task, from its callback context."""
    ti, error = context["ti"], context.get("exception")
    cause = getattr(error, "__cause__", None) or error  # run_step wraps InputError in AirflowFailException
    return {
        "dag": ti.dag_id,
        "run": context["run_id"],
        "step": ti.task_id.rsplit(".", 1)[-1],
        "task": ti.task_id,
        "try": getattr(ti, "try_number", None),
        "rule": getattr(cause, "rule", None),
        "report": getattr(cause, "report", None),
        "file": getattr(cause, "file", None),
        "error": f"{type(cause).__name__}: {cause}" if cause else None,
        "log": getattr(ti, "log_url", None),
    }
