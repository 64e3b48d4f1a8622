"""bench/cpu_by_process.py: the CPU a benchmark prints is attributed to the right processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.cpu_by_process import CpuWatch, kind

# Burns 0.6 s of CPU, then idles long enough for a watch starved by a loaded machine to read
# it before the process exits (what a process used in its last interval is what is lost).
BURN = ("import time\nend = time.process_time() + 0.6\nwhile time.process_time() < end: pass\n"
        "time.sleep(1)\n")


def test_processes_are_grouped_by_what_they_are() -> None:
    assert kind("python3", "/usr/bin/python3 /opt/cloud-double/nextcloud-double.pyz serve") \
        == "cloud double"
    assert kind("coopctl", "/x/.venv/bin/python /x/.venv/bin/coopctl sync --yes") == "coopctl"
    assert kind("cleanup", "cleanup -z -t unix -u -c") == "postfix"
    assert kind("lmtp", "dovecot/lmtp") == "dovecot"
    assert kind("node", "node /opt/etherpad/src/node/server.js") == "etherpad"
    assert kind("sshd", "sshd: root@notty") == "ssh"
    assert kind("awk", "awk {print}") == "awk"


def test_a_child_that_burns_cpu_and_exits_is_counted() -> None:
    with CpuWatch(interval=0.1) as watch:
        subprocess.run([sys.executable, "-c", BURN, "coopctl"], check=True)
    used = watch.seconds_by_kind()
    assert 0.4 <= used.get("coopctl", 0) <= 2.0, used
    assert 0 < watch.busy() <= 1
    assert "coopctl" in watch.summary(per=2) and "ms each" in watch.summary(per=2)
