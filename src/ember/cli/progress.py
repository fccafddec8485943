"""Live progress for the CLI's long steps, with rich: an image build's steps and layers with the running
step's last output lines (`BuildView`), a push's per-layer bars (`PushView`), and the transfer columns
`ember models pull` uses. On a terminal they redraw in place; when standard output is a pipe or a file
they print plain lines instead (every build line, each layer once it is pushed), as a log would want.

`BuildSteps` reads the steps out of a build log and is pure: the classic builder's `Step 2/5 : RUN …`
and ` ---> 1a2b3c` lines, and BuildKit's plain progress (`#7 [2/4] RUN …`, `#7 DONE 1.2s`, `#7 CACHED`)."""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from types import TracebackType

from rich import filesize
from rich.console import Console, Group
from rich.live import Live
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.text import Text


def transfer_columns() -> tuple[ProgressColumn, ...]:
    """One look for byte transfers (a model download, an image layer push); new columns each call, as
    a column keeps state for the one Progress it is in."""
    return (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())


OUTPUT_LINES = 6  # the running step's last lines shown under the bar
FAILED_TAIL_LINES = 20  # lines printed when a build fails: the error is among them

_CLASSIC_STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)$")
_CLASSIC_LAYER = re.compile(r"^ ---> ([0-9a-f]{6,})$")
_KIT_STEP = re.compile(r"^#(\d+) \[(?:(\S+) )?(\d+)/(\d+)\] (.*)$")
_KIT_OUTPUT = re.compile(r"^#\d+ \d+\.\d+ ")
_KIT_END = re.compile(r"^#(\d+) (DONE\b|CACHED\b|ERROR\b)")


@dataclass
class Step:
    """One Dockerfile instruction of a build: `number` of `total` in its stage."""

    number: int
    total: int
    text: str
    stage: str = ""
    cached: bool = False
    done: bool = False

    def label(self) -> str:
        stage = f"{self.stage} " if self.stage else ""
        return f"step {stage}{self.number}/{self.total} {self.text}"


class BuildSteps:
    """What a build log says so far: its steps, the running one, and how many layers were made or
    came from the cache. `feed` one line at a time; it returns the steps that line finished."""

    def __init__(self) -> None:
        self.steps: dict[str, Step] = {}  # by BuildKit vertex (`#7`) or classic step number
        self.current: Step | None = None
        self._totals: dict[str, int] = {}  # stage -> its step count
        self._pending_cache = False

    @property
    def total(self) -> int:
        return sum(self._totals.values())

    @property
    def done(self) -> int:
        return sum(1 for s in self.steps.values() if s.done)

    @property
    def cached(self) -> int:
        return sum(1 for s in self.steps.values() if s.done and s.cached)

    @property
    def built(self) -> int:
        """Layers this build made: finished steps not from the cache, the base image (FROM) aside."""
        return sum(
            1
            for s in self.steps.values()
            if s.done and not s.cached and not s.text.upper().startswith("FROM ")
        )

    @staticmethod
    def structural(line: str) -> bool:
        """Whether a line is the builder's own bookkeeping rather than a step's output."""
        return bool(
            _CLASSIC_STEP.match(line)
            or _KIT_STEP.match(line)
            or _KIT_END.match(line)
            or line.startswith((" ---> ", "Removing intermediate container", "Successfully "))
        )

    def feed(self, line: str) -> list[Step]:
        if m := _CLASSIC_STEP.match(line):
            finished = self._finish(self.current) if self.current and not self.current.done else []
            step = Step(int(m[1]), int(m[2]), m[3].strip())
            self._start(f"classic {m[1]}", step)
            return finished
        if self.current is not None and not self.current.done and line.startswith(" ---> "):
            if line.strip() == "---> Using cache":
                self._pending_cache = True
            elif _CLASSIC_LAYER.match(line):
                self.current.cached = self._pending_cache
                return self._finish(self.current)
            return []
        if m := _KIT_STEP.match(line):
            stage = "" if m[2] in (None, "internal") else m[2]
            if m[2] == "internal":
                return []
            self._start(m[1], Step(int(m[3]), int(m[4]), m[5].strip(), stage))
            return []
        if (m := _KIT_END.match(line)) and m[1] in self.steps:
            step = self.steps[m[1]]
            step.cached = m[2] == "CACHED"
            return [] if m[2] == "ERROR" or step.done else self._finish(step)
        return []

    def _start(self, key: str, step: Step) -> None:
        step = self.steps.setdefault(key, step)  # BuildKit may name a vertex again
        self._totals[step.stage] = max(self._totals.get(step.stage, 0), step.total)
        self.current = step
        self._pending_cache = False

    def _finish(self, step: Step) -> list[Step]:
        step.done = True
        self._pending_cache = False
        return [step]


def _short(text: str, width: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


class BuildView:
    """`on_log` for a build: on a terminal a bar of steps (with the layers made and cached) and the
    running step's last lines under it, each finished step printed above; otherwise every line plainly.
    Use as a context manager; on a failure the last lines of output stay on the screen."""

    def __init__(self, console: Console, title: str) -> None:
        self.console = console
        self.steps = BuildSteps()
        self.live_mode = console.is_terminal
        self._tail: deque[str] = deque(maxlen=FAILED_TAIL_LINES)
        self._output: deque[str] = deque(maxlen=OUTPUT_LINES)
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[layers]}"),
            TimeElapsedColumn(),
            console=console,
        )
        self._task: TaskID = self._progress.add_task(title, total=None, layers="")
        self._live: Live | None = None
        self.failed = False  # set when the build failed without an exception here (a server's build)

    def __enter__(self) -> BuildView:
        if self.live_mode:
            self._live = Live(self._render(), console=self.console, transient=True, refresh_per_second=8)
            self._live.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._live is None:
            return
        self._live.stop()
        self._live = None
        if (exc_type is not None or self.failed) and self._tail:
            self.console.print("\n".join(self._tail), style="dim", markup=False, highlight=False)
        elif self.steps.total:
            self.console.print(self.summary(), highlight=False)

    def summary(self) -> str:
        s = self.steps
        return f"{s.done}/{s.total} steps, {s.built} layers built, {s.cached} from the cache"

    def line(self, line: str) -> None:
        finished = self.steps.feed(line)
        if not self.live_mode:
            self.console.print(line, style="dim", markup=False, highlight=False)
            return
        self._tail.append(line)
        for step in finished:
            cached = (" (cached)", "dim") if step.cached else ""
            self.console.print(Text.assemble(("✓ ", "green"), _short(step.label(), 100), cached))
        if finished:
            self._output.clear()
        elif line.strip() and not BuildSteps.structural(line):
            self._output.append(_KIT_OUTPUT.sub("", line))  # BuildKit's `#7 1.234 ` prefix
        self._update()

    def _update(self) -> None:
        s = self.steps
        description = _short(s.current.label(), 60) if s.current else self._progress.tasks[0].description
        layers = f"{s.built} layers built, {s.cached} cached" if s.total else ""
        self._progress.update(self._task, description=description, total=s.total or None, completed=s.done)
        self._progress.update(self._task, layers=layers)
        if self._live is not None:
            self._live.update(self._render())

    def _render(self) -> Group:
        width = max(20, self.console.width - 4)
        lines = [Text("  " + ln, style="dim", no_wrap=True, overflow="ellipsis") for ln in self._output]
        for text in lines:
            text.truncate(width, overflow="ellipsis")
        return Group(self._progress, *lines)


class PushView:
    """A push's progress: one bar per layer on a terminal (`progress`), plain lines otherwise (`line`,
    the push's own log: each layer once pushed or found, then the digest)."""

    DONE = ("Pushed", "Layer already exists")

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live_mode = console.is_terminal
        self._progress = Progress(*transfer_columns(), console=console, transient=True)
        self._tasks: dict[str, TaskID] = {}
        self._sizes: dict[str, int] = {}  # layer -> its size, once the registry says it
        self._finished: set[str] = set()  # layers shown as done (a line above the bars)
        self.pushed = 0
        self.existed = 0

    def __enter__(self) -> PushView:
        if self.live_mode:
            self._progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.live_mode:
            self._progress.stop()
            if exc_type is None:
                self.console.print(f"{self.pushed} layers pushed, {self.existed} already in the registry")

    def line(self, line: str) -> None:
        if not self.live_mode:
            self.console.print(line, style="dim", markup=False, highlight=False)

    def progress(self, layer: str, status: str, current: int | None, total: int | None) -> None:
        if not self.live_mode:
            return
        if layer in self._finished:
            return
        task = self._tasks.get(layer)
        if task is None:
            task = self._tasks[layer] = self._progress.add_task(layer, total=None)
        if total:
            self._sizes[layer] = total
        if status in self.DONE or status.startswith("Mounted from"):
            if status == "Pushed":
                self.pushed += 1
            else:
                self.existed += 1
            self._progress.remove_task(task)
            self._finished.add(layer)
            size = self._sizes.get(layer)
            shown = f" ({filesize.decimal(size)})" if size else ""
            self.console.print(Text.assemble(("✓ ", "green"), f"{layer} {status.lower()}{shown}"))
            return
        self._progress.update(task, description=f"{layer} {status.lower()}")
        if current is not None:
            self._progress.update(task, completed=current, total=total or None)
