"""pip's standard output as it comes, minus its "Requirement already satisfied" lines, and a copy.

    pip install ... | python scripts/pip_filter.py COPY

An install over an existing environment (after a change of the requirement
files) prints one such line per installed package, about 150, burying what
is new. Everything else passes through byte by byte, not line by line: pip
redraws a download's progress bar in place (carriage returns and terminal
escapes, no newline until the download ends), so a line-buffered filter
would freeze the bar. COPY receives pip's whole output, dropped lines
included, so that scripts/install.sh can tell why pip failed.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Iterable

DROP = b"Requirement already satisfied"


def filter_stream(chunks: Iterable[bytes], write: Callable[[bytes], object]) -> None:
    """Write ``chunks`` to ``write`` without the lines that start with ``DROP``.

    The start of each line is held back only while it could still turn into
    ``DROP``: at most ``len(DROP)`` bytes, whatever the chunk boundaries.
    Terminal escapes and carriage returns before a line's text go out at once
    and leave it undecided: the progress bar ends by showing the cursor again
    (``ESC [?25h``) just before the next line's text.
    """
    held = b""  # the start of the current line, while it may still be DROP
    # "start": undecided; "pass": the rest of the line goes out; "drop": it does not;
    # "esc", "csi": inside an escape sequence before the line's text.
    mode = "start"
    for chunk in chunks:
        out = bytearray()
        for value in chunk:
            byte = bytes((value,))
            if mode in ("esc", "csi"):
                out += byte
                if mode == "esc" and byte == b"[":
                    mode = "csi"
                elif mode == "esc" or 0x40 <= value <= 0x7E:  # a CSI sequence ends with its final byte
                    mode = "start"
                continue
            if mode == "start" and not held and byte in (b"\x1b", b"\r"):
                out += byte
                mode = "esc" if byte == b"\x1b" else "start"
                continue
            if mode == "drop":
                if byte == b"\n":
                    mode = "start"
                continue
            if mode == "pass":
                out += byte
                if byte == b"\n":
                    mode = "start"
                continue
            held += byte
            if held == DROP:
                held, mode = b"", "drop"
            elif not DROP.startswith(held):
                out += held
                held, mode = b"", ("start" if byte == b"\n" else "pass")
        if out:
            write(bytes(out))
    if held:
        write(held)


def main() -> None:
    # Ctrl-C reaches pip and this filter alike: end quietly, pip reports.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    out = sys.stdout.buffer
    with open(sys.argv[1], "ab") as copy:

        def write(data: bytes) -> None:
            out.write(data)
            out.flush()

        def chunks() -> Iterable[bytes]:
            while data := os.read(sys.stdin.fileno(), 65536):
                copy.write(data)
                yield data

        filter_stream(chunks(), write)


if __name__ == "__main__":
    main()
