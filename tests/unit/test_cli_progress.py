"""The pure parts of the CLI's progress and output: the steps read out of a build log (the classic
builder's and BuildKit's), the new lines of a build log that the server keeps bounded, and a value
as one tab-separated field."""

from __future__ import annotations

from ember.cli.follow import new_lines
from ember.cli.output import plain
from ember.cli.progress import BuildSteps

CLASSIC = """\
Step 1/4 : FROM ember-base:bookworm
 ---> 5d0da3dc9764
Step 2/4 : WORKDIR /app
 ---> Using cache
 ---> 9a2b3c4d5e6f
Step 3/4 : RUN pip install -r requirements.txt
 ---> Running in 7d3b1a2c
Collecting numpy
Removing intermediate container 7d3b1a2c
 ---> 0a1b2c3d4e5f
Step 4/4 : COPY handler.py .
 ---> 1b2c3d4e5f60
Successfully built 1b2c3d4e5f60
Successfully tagged x:latest"""

BUILDKIT = """\
#1 [internal] load build definition from Dockerfile
#1 transferring dockerfile: 143B done
#1 DONE 0.0s
#5 [builder 1/2] FROM docker.io/library/python:3.11
#5 CACHED
#6 [builder 2/2] RUN pip wheel -w /w numpy
#6 0.512 Collecting numpy
#6 DONE 12.3s
#7 [stage-1 1/3] FROM docker.io/library/python:3.11-slim
#7 DONE 0.1s
#8 [stage-1 2/3] COPY --from=builder /w /w
#8 DONE 0.2s
#9 [stage-1 3/3] RUN --mount=type=secret,id=hf_token python fetch.py
#9 1.001 fetching
#9 ERROR: process did not complete successfully: exit code: 1"""


def feed(steps: BuildSteps, text: str) -> list[str]:
    finished = []
    for line in text.splitlines():
        finished += [s.label() for s in steps.feed(line)]
    return finished


def test_classic_builder_steps_layers_and_cache() -> None:
    steps = BuildSteps()
    finished = feed(steps, CLASSIC)
    assert finished == [
        "step 1/4 FROM ember-base:bookworm",
        "step 2/4 WORKDIR /app",
        "step 3/4 RUN pip install -r requirements.txt",
        "step 4/4 COPY handler.py .",
    ]
    assert (steps.total, steps.done, steps.cached, steps.built) == (4, 4, 1, 2)
    assert [s.cached for s in steps.steps.values()] == [False, True, False, False]


def test_classic_builder_part_way() -> None:
    steps = BuildSteps()
    feed(steps, "\n".join(CLASSIC.splitlines()[:8]))
    assert (
        steps.current is not None and steps.current.label() == "step 3/4 RUN pip install -r requirements.txt"
    )
    assert (steps.done, steps.total) == (2, 4)


def test_buildkit_stages_cache_and_a_failed_step() -> None:
    steps = BuildSteps()
    finished = feed(steps, BUILDKIT)
    assert finished == [
        "step builder 1/2 FROM docker.io/library/python:3.11",
        "step builder 2/2 RUN pip wheel -w /w numpy",
        "step stage-1 1/3 FROM docker.io/library/python:3.11-slim",
        "step stage-1 2/3 COPY --from=builder /w /w",
    ]
    assert (steps.total, steps.done, steps.cached) == (5, 4, 1)
    assert steps.current is not None and not steps.current.done
    assert steps.current.label() == "step stage-1 3/3 RUN --mount=type=secret,id=hf_token python fetch.py"


def test_structural_lines_are_not_step_output() -> None:
    assert BuildSteps.structural("Step 1/4 : FROM x") and BuildSteps.structural(" ---> Running in 1a2b")
    assert BuildSteps.structural("#6 [builder 2/2] RUN x") and BuildSteps.structural("#6 DONE 1.0s")
    assert not BuildSteps.structural("Collecting numpy") and not BuildSteps.structural("#6 0.512 Collecting")


def test_new_lines_of_a_growing_log_and_of_a_full_one() -> None:
    assert new_lines([], ["a", "b"]) == ["a", "b"]
    assert new_lines(["a", "b"], ["a", "b", "c"]) == ["c"]
    assert new_lines(["a", "b"], ["a", "b"]) == []
    # The server keeps the last lines only: the window moved on by two.
    assert new_lines(["a", "b", "c", "d"], ["c", "d", "e", "f"]) == ["e", "f"]
    assert new_lines(["a", "b"], ["x", "y"]) == ["x", "y"]


def test_a_value_is_one_whole_tab_separated_field() -> None:
    long_id = "job-" + "0123456789abcdef" * 4
    assert plain(long_id) == long_id
    assert plain(None) == "-" and plain("") == "-" and plain(0) == "0"
    assert plain("two\nlines\tand a tab") == "two lines and a tab"
