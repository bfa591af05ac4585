"""Errors the CLI maps to exit codes: InputError -> 2 (bad input or a failed gate), anything else -> 1."""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """Bad input: the message names the file, the row (where there is one) and the rule broken."""

    def __init__(self, message: str, *, file: str | Path | None = None, row: int | None = None,
                 rule: str | None = None) -> None:
        parts = [str(p) for p in (file and f"file {file}", row is not None and f"row {row}",
                                  rule and f"rule {rule}") if p]
        super().__init__(f"{message} ({', '.join(parts)})" if parts else message)
        self.message, self.file, self.row, self.rule = message, file, row, rule


class GateFailure(InputError):
    """A validation gate failed; `report` is the JSON report written into the step's folder."""

    def __init__(self, message: str, *, report: Path | None = None, rule: str | None = None,
                 file: str | Path | None = None) -> None:
        super().__init__(message, file=file, rule=rule)
        self.report = report
