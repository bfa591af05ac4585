"""Progress as a task log sees it (recsys_tasks/logs.py): away from a terminal, periodic INFO records
through logging with the count, rate and ETA, and no bar on stderr (Airflow shows stderr as errors);
on a terminal (a real pseudo-terminal here), tqdm's bar."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WORK = """
import logging, sys, time
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(levelname)s %(name)s: %(message)s")
import recsys_tasks.logs as logs
logs.LOG_EVERY_S = 0.2
for _ in logs.progress(range(12), desc="load movies_v1", total=12, unit="batch"):
    time.sleep(0.05)
bar = logs.progress_bar(desc="download ml-1m", total=None, unit="B", unit_scale=True)
for _ in range(4):
    bar.update(1 << 20)
    time.sleep(0.1)
bar.close()
"""


def test_off_a_terminal_progress_is_periodic_info_records() -> None:
    out = subprocess.run([sys.executable, "-c", WORK], capture_output=True, text=True, cwd=REPO, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, check=True)
    lines = [ln for ln in out.stdout.splitlines() if "load movies_v1" in ln]
    assert len(lines) >= 2, out.stdout  # at least one on the way and the final one
    assert all(ln.startswith("INFO recsys_tasks.progress: load movies_v1: ") for ln in lines)
    assert "batch/s" in lines[0] and "ETA" in lines[0]
    assert lines[-1].startswith("INFO recsys_tasks.progress: load movies_v1: 12/12 (100%)")
    assert any("download ml-1m: 4.19M" in ln and "B/s" in ln for ln in out.stdout.splitlines()), out.stdout
    assert out.stderr == "", f"nothing on stderr (a task log shows it as errors): {out.stderr!r}"


def test_on_a_terminal_progress_is_a_bar() -> None:
    pid, fd = pty.fork()
    if pid == 0:  # the child: stdin/stdout/stderr are the pseudo-terminal
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # 120 columns wide
        os.environ["PYTHONPATH"] = str(REPO)
        os.execv(sys.executable, [sys.executable, "-c", WORK])
    shown = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.waitpid(pid, 0)
    text = shown.decode(errors="replace")
    assert "\r" in text and "load movies_v1: 100%" in text and "12/12" in text, text
    assert "recsys_tasks.progress" not in text, "no log records on a terminal, the bar says it"
