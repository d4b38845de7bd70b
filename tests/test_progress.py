"""`elr train`'s live line (elr.training.train.Progress), its time format (elr.progress.duration) and its signal
handling (_StopRequest), against a clock the test sets: what the user reads in a terminal and a CI log, character
for character."""
import io
import signal

import pytest

import elr.training.train as train_mod
from elr.config import RunConfig
from elr.progress import duration
from elr.training.train import Progress, _StopRequest


class Stream:
    """Records each write and flush in order: the line must reach a CI log as it is written, not at exit."""

    def __init__(self):
        self.events = []

    def write(self, text):
        self.events.append(text)

    def flush(self):
        self.events.append(None)

    def text(self):
        return "".join(e for e in self.events if e is not None)


class Terminal(io.StringIO):
    """A stderr that says it is a terminal: where `progress=None` shows the live line."""

    def isatty(self):
        return True


@pytest.fixture
def clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(train_mod.time, "perf_counter", lambda: now[0])
    return now


def live_line(epochs=10, **kw):
    stream = Stream()
    return Progress(RunConfig(epochs=epochs), stream, **kw), stream


def test_a_new_line_writes_nothing_until_the_first_step_and_shows_that_step(clock):
    live, stream = live_line()
    assert stream.events == []
    clock[0] = 1005.0
    live.step(1, 4)
    # defaults before begin(): epoch 1 from epoch 0, started at construction; no earlier line to pad over
    assert stream.events == ["\repoch 1/10  step 1/4  5 s  eta 3 min", None]   # 5 s a quarter epoch, 39 quarters left


def test_steps_within_every_seconds_are_not_written(clock):
    live, stream = live_line()
    live.step(1, 100)
    clock[0] += 0.999
    live.step(2, 100)
    assert len(stream.events) == 2                  # default every = 1 s: the second step is skipped
    clock[0] += 0.001
    live.step(3, 100)
    assert "step 3/100" in stream.events[-2]        # exactly 1 s after the last write: written
    slow, s2 = live_line(every=5.0)
    slow.step(1, 100)
    clock[0] += 4.0
    slow.step(2, 100)
    assert len(s2.events) == 2


def test_eta_counts_from_the_resumed_epoch_and_says_unknown_before_any_progress(clock):
    live, stream = live_line(epochs=10)
    live.begin(4)                                   # a resume: epochs 1-4 were done in an earlier session
    live.step(0, 8)
    assert stream.events[-2] == "\repoch 5/10  step 0/8  0 s  eta ?"
    clock[0] += 60.0
    live.step(2, 8)                                 # a quarter epoch in 60 s: 5.75 epochs left at 240 s each
    assert stream.events[-2].rstrip() == "\repoch 5/10  step 2/8  60 s  eta 23 min"


RECORD = {"epoch": 3, "lr": 0.125, "train_loss": 1.23456, "train_acc": 0.5, "test_acc": 0.4567, "elr": 0.0123}


def test_epoch_line_reads_the_record_and_moves_to_the_next_epoch(clock):
    live, stream = live_line(epochs=10)
    live.begin(0)
    clock[0] += 30.0
    live.epoch(RECORD)
    assert stream.events[-2] == ("\repoch 3/10  loss 1.2346  acc 0.500  test 0.457  lr 0.125  elr 0.0123  "
                                 "eta 70 s")   # 10 s an epoch, 7 left
    assert live.current == 4
    clock[0] += 1.0
    live.step(1, 2)
    assert stream.events[-2].startswith("\repoch 4/10  step 1/2")


def test_epoch_line_of_a_pack_a_per_layer_rate_and_missing_values(clock):
    live, stream = live_line(epochs=10, pack=2)     # the smallest pack
    record = {**RECORD, "lr": {"a": 0.1, "b": 0.3}, "train_loss": None, "train_acc": None, "elr": None}
    live.epoch(record)
    assert stream.events[-2].startswith("\repoch 3/10 x2 runs  loss nan  acc nan  test 0.457  lr 0.2  elr nan  ")
    one, s1 = live_line(epochs=10, pack=1)
    one.epoch(RECORD)
    assert s1.events[-2].startswith("\repoch 3/10  loss")


def test_a_shorter_line_is_padded_over_the_longer_one_before_it(clock):
    live, stream = live_line()
    live.note("loading data and building the model")
    live.note("compiling")
    assert stream.events == ["\rloading data and building the model ...", None,
                             "\r" + "compiling ...".ljust(len("loading data and building the model ...")), None]


def test_a_notice_ends_the_live_line_and_stands_on_its_own(clock):
    live, stream = live_line()
    live.note("loading")
    live.notice("torch.compile unavailable")
    live.note("go")
    assert stream.text() == "\rloading ...\nelr: torch.compile unavailable\n\rgo ..."   # not padded to "loading"
    assert stream.events[-1] is None
    quiet, s2 = live_line()
    quiet.notice("first")                           # no open line: nothing to end
    assert s2.events == ["elr: first\n", None]


def test_close_ends_an_open_line_once(clock):
    live, stream = live_line()
    live.close()
    assert stream.events == []
    live.note("x")
    live.close()
    live.close()
    assert stream.events == ["\rx ...", None, "\n", None]


def test_a_second_sigint_interrupts_and_sigterm_only_asks_to_stop():
    stop = _StopRequest()
    stop._handle(signal.SIGTERM, None)
    assert stop.requested
    stop._handle(signal.SIGTERM, None)              # a second SIGTERM: still a request, never an interrupt
    with pytest.raises(KeyboardInterrupt):
        stop._handle(signal.SIGINT, None)
    first = _StopRequest()
    first._handle(signal.SIGINT, None)              # the first SIGINT only asks
    assert first.requested
    with pytest.raises(KeyboardInterrupt):
        first._handle(signal.SIGINT, None)


def test_epoch_line_of_a_diverged_epoch(clock):
    live, stream = live_line(epochs=10)
    live.epoch({**RECORD, "train_loss": float("nan"), "train_acc": float("inf"), "test_acc": float("nan"),
                "elr": float("inf")})
    assert stream.events[-2].startswith("\repoch 3/10  loss nan  acc inf  test nan  lr 0.125  elr inf  ")


def test_durations_read_as_a_person_reads_them():
    assert [duration(s) for s in (42, 720, 11_520, 190_800, 458_912_242, float("inf"))] == \
        ["42 s", "12 min", "3 h 12 min", "2 d 5 h", "5,311 d", "?"]


def test_progress_line_shows_a_long_eta_in_days():
    stream = io.StringIO()
    live = Progress(RunConfig(epochs=1_000_000), stream)
    live.begin(0)
    live.start -= 459                              # one epoch took 459 s: 999,999 more
    live.step(1, 1)
    line = stream.getvalue().strip()
    assert "eta 5,312 d" in line and "7 min" in line, line
