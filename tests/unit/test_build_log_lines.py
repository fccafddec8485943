"""Build output becomes plain log lines: no ANSI escapes, and a line redrawn with carriage returns
keeps what a terminal would show last."""

from __future__ import annotations

import pytest

from ember.build.image import plain_log_line


@pytest.mark.parametrize(
    ("raw", "plain"),
    [
        ("Step 2/3 : RUN pip install x", "Step 2/3 : RUN pip install x"),
        ("\x1b[91mERROR: No matching distribution\x1b[0m", "ERROR: No matching distribution"),  # stderr
        ("\x1b[1;32mSuccessfully installed\x1b[0m x-1.0", "Successfully installed x-1.0"),
        ("\x1b[2K\x1b[1A#5 DONE 0.1s", "#5 DONE 0.1s"),  # erase line, cursor up
        ("\x1b]0;a window title\x07done", "done"),  # OSC ended by BEL
        ("\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\", "link"),  # OSC ended by ST (a hyperlink)
        ("a\x1b(Bb", "ab"),  # charset designation
        ("  1%|#  |\r 50%|##  |\r100%|####|\r\n", "100%|####|"),  # a redrawn progress bar
        ("tabs\tstay\n", "tabs\tstay"),
        ("bell\x07 and backspace\x08 go", "bell and backspace go"),
        ("", ""),
    ],
)
def test_plain_log_line_keeps_the_text_a_terminal_shows(raw: str, plain: str) -> None:
    assert plain_log_line(raw) == plain
