"""redis-cli in interactive mode, on a pseudo-terminal, as a person runs it.

Interactive redis-cli asks the server for COMMAND DOCS (its hints) and
reads each reply as it prints it; this drives it through a pty (answering
its cursor-position queries), types each command given, then `quit`, and
prints everything it showed. Run by tests/resp.rs: `python3
redis_cli_tty.py PORT COMMAND...`. Exits non-zero if redis-cli does not
end by itself within 20 s.
"""

import os
import pty
import select
import sys
import time

port = sys.argv[1]
pid, fd = pty.fork()
if pid == 0:
    os.execvp("redis-cli", ["redis-cli", "-p", port])

shown = b""


def pump(seconds, until=None):
    """Reads what redis-cli shows for `seconds`, or until `until` appears."""
    global shown
    start = len(shown)
    end = time.time() + seconds
    while time.time() < end:
        ready, _, _ = select.select([fd], [], [], 0.05)
        if not ready:
            continue
        try:
            data = os.read(fd, 65536)
        except OSError:
            return False
        if not data:
            return False
        shown += data
        if b"\x1b[6n" in data:
            os.write(fd, b"\x1b[1;1R")  # the cursor position linenoise asks for
        if until is not None and until in shown[start:]:
            return True
    return True


# linenoise asks where the cursor is each time it starts a new prompt line
# (not on each keystroke): a new query means the reply has been shown.
QUERY = b"\x1b[6n"
pump(10, f"127.0.0.1:{port}> ".encode())
for command in sys.argv[2:]:
    before = shown.count(QUERY)
    os.write(fd, command.encode() + b"\r")
    deadline = time.time() + 10
    while shown.count(QUERY) <= before and time.time() < deadline:
        pump(0.1)
os.write(fd, b"quit\r")
deadline = time.time() + 20
while time.time() < deadline:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        break
    pump(0.1)
else:
    os.kill(pid, 9)
    sys.stdout.write(shown.decode(errors="replace"))
    sys.exit("redis-cli did not exit after quit")
pump(0.2)
sys.stdout.write(shown.decode(errors="replace"))
sys.exit(os.WEXITSTATUS(status))
