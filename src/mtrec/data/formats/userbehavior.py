"""Taobao UserBehavior (Tianchi dataset 649): an event log -> multi-task training rows, streamed.

The log has no header and five fields per line, ``user_id,item_id,category_id,behavior_type,timestamp``,
with ``behavior_type`` one of ``pv`` (item page view), ``cart``, ``fav``, ``buy``. The published file is
grouped by user (users in no particular order), each user's events in time order. A dataset config reads
it with ``source: {format: userbehavior}`` (``configs/datasets/taobao_userbehavior.yaml``); the options
(``source.options``) are those of :class:`UserBehaviorOptions`.

Framing (one row per impression; the time of a row is its ``pv`` event's timestamp t):

- every ``pv`` event is a **clicked impression**: ``click = 1``;
- each is accompanied by ``negatives`` **non-clicked impressions** at the same time t, for the same user
  and with the same histories: items drawn in proportion to their ``pv`` counts **in the same period**
  (``(t - period_origin) // period``, a day by default: uniformly from a reservoir sample of ``pool``
  ``pv`` events of that period in the log read so far, this block's included), redrawn when the user
  ever viewed the drawn item; ``click = cart = fav = buy = 0``. Drawing from the row's own period keeps
  the negatives' items those on view at the time: drawn from the whole log, items that trend only late
  would be negatives in the early (train) rows and positives in the late (test) rows, and a model learns
  the opposite of what it is tested on (measured: test click AUC 0.49 for MMoE);
- ``cart`` / ``fav`` / ``buy`` of a clicked row: 1 if the same user has that event on the same item
  **later in the log** (after the ``pv`` in the user's time order) and at most ``window`` seconds after t
  (``null``: any time later). These tasks are observed after the click;
- histories, one per behaviour type (``pv``, ``cart``, ``fav``, ``buy``), of items and of their
  categories: the user's events of that type with timestamp **strictly before** t, oldest first, at most
  the ``max_history`` latest. No event at t or later (the row's own, its labels') is in a history;
- ``timestamp`` (t) is a column, for a time-ordered split (``split: {kind: column, column: timestamp}``).

Output columns (text, as every reader gives them): :data:`COLUMNS`, and the log line of each row's ``pv``
event (:data:`mtrec.data.formats.LINE`); histories are ``|``-joined ids.

Streaming: the log is read in blocks of :data:`EVENT_BLOCK` events; the rows of a block's users are
produced once a later user's first event is read, so memory holds one block, the last user's events, the
``pool`` sample of each period and the ids of the users already read (8 bytes per user, to refuse a log that is not
grouped by user; rows built from such a log would have truncated histories). The rows are a function of
the file and the options alone (random draws come from one generator seeded by ``seed``, in log order).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mtrec.data.dataset import DatasetError
from mtrec.data.formats import LINE, LogBlock, RawFormat, register_format
from mtrec.typed import ConfigModel, Count, NonNegative

BEHAVIOURS = ("pv", "cart", "fav", "buy")
EVENT_COLUMNS = ("user_id", "item_id", "category_id", "behavior_type", "timestamp")
LABELS = ("click", "cart", "fav", "buy")
HISTORIES = tuple(f"hist_{b}_{aspect}" for b in BEHAVIOURS for aspect in ("item", "cat"))
COLUMNS = ("user_id", "item_id", "category_id", "timestamp", *LABELS, *HISTORIES)
EVENT_BLOCK = 1 << 16  # events per block read from the log
SEPARATOR = "|"
_REDRAWS = 10  # rounds of redrawing a negative the user has viewed; one still viewed after them is left out


class UserBehaviorError(DatasetError):
    """An event log that cannot be read as UserBehavior; the message names the file and the line."""


class UserBehaviorOptions(ConfigModel):
    """The options of the ``userbehavior`` format (``source.options`` of a dataset config)."""

    negatives: NonNegative = 1
    seed: int = 0
    pool: Count = 100_000
    period: Count = 86_400
    period_origin: int = 0
    window: Count | None = 86_400
    max_history: Count = 50


@dataclass(frozen=True)
class Events:
    """Consecutive events of the log, all ``[n]``: ids (int64), behaviour (int8 index into
    :data:`BEHAVIOURS`), timestamp (int64) and the 1-based log line."""

    user: np.ndarray
    item: np.ndarray
    category: np.ndarray
    behaviour: np.ndarray
    timestamp: np.ndarray
    line: np.ndarray

    def __len__(self) -> int:
        return int(self.user.shape[0])

    def take(self, index: np.ndarray | slice) -> Events:
        return Events(*(getattr(self, f)[index] for f in self.__dataclass_fields__))

    @staticmethod
    def concat(parts: list[Events]) -> Events:
        return Events(*(np.concatenate([getattr(p, f) for p in parts]) for f in Events.__dataclass_fields__))


def parse_events(table: pa.Table, lines: np.ndarray, where: Callable[[int], str]) -> Events:
    """The events of a text table with :data:`EVENT_COLUMNS`; ``lines`` ``[n]`` their log lines, ``where(i)``
    names row i's file and line in an error (a non-integer id or timestamp, an unknown behaviour)."""
    numbers = {}
    for name in ("user_id", "item_id", "category_id", "timestamp"):
        text = table[name]
        bad = np.flatnonzero(~np.asarray(pc.match_substring_regex(text, r"^-?[0-9]+$").to_numpy(
            zero_copy_only=False), dtype=bool))
        if bad.size:
            raise UserBehaviorError(f"{where(int(bad[0]))}: {name} must be an integer, found "
                                    f"{text[int(bad[0])].as_py()!r}")
        numbers[name] = np.asarray(pc.cast(text, pa.int64()).to_numpy(zero_copy_only=False), dtype=np.int64)
    index = pc.index_in(table["behavior_type"], value_set=pa.array(BEHAVIOURS))
    unknown = np.flatnonzero(np.asarray(pc.is_null(index).to_numpy(zero_copy_only=False), dtype=bool))
    if unknown.size:
        raise UserBehaviorError(f"{where(int(unknown[0]))}: behavior_type must be one of {list(BEHAVIOURS)}, "
                                f"found {table['behavior_type'][int(unknown[0])].as_py()!r}")
    behaviour = np.asarray(index.to_numpy(zero_copy_only=False), dtype=np.int8)
    return Events(numbers["user_id"], numbers["item_id"], numbers["category_id"], behaviour,
                  numbers["timestamp"], np.asarray(lines, dtype=np.int64))


class _Pool:
    """A reservoir sample (Algorithm R) of ``size`` pv events: ``(item, category)`` pairs, each event of
    the stream kept with equal probability, so an item is drawn in proportion to its pv count."""

    def __init__(self, size: int, rng: np.random.Generator) -> None:
        self.items = np.empty(size, dtype=np.int64)
        self.categories = np.empty(size, dtype=np.int64)
        self.size, self.seen, self.rng = size, 0, rng

    @property
    def filled(self) -> int:
        return min(self.seen, self.size)

    def add(self, items: np.ndarray, categories: np.ndarray) -> None:
        """Offer events ``[m]`` in stream order; event g (global) replaces slot j ~ U{0..g} if j < size."""
        m = items.shape[0]
        g = self.seen + np.arange(m)
        slot = np.where(g < self.size, g, self.rng.integers(0, g + 1) if m else g)
        kept = np.flatnonzero(slot < self.size)
        # a slot written twice keeps the later event: unique over the reversed order finds the last writer
        _, last = np.unique(slot[kept][::-1], return_index=True)
        kept = kept[kept.shape[0] - 1 - last]
        self.items[slot[kept]], self.categories[slot[kept]] = items[kept], categories[kept]
        self.seen += m

    def draw(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` pooled events ``(items [n], categories [n])``, uniformly with replacement."""
        pick = self.rng.integers(0, self.filled, n)
        return self.items[pick], self.categories[pick]


def _runs(user: np.ndarray) -> np.ndarray:
    """Start index of each run of equal consecutive users ``[R]``."""
    return np.concatenate([[0], np.flatnonzero(user[1:] != user[:-1]) + 1]).astype(np.int64)


def _ranges(start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The concatenated ranges ``[start_r, end_r)`` ``[sum lengths]`` and the list offsets ``[R + 1]``."""
    lengths = end - start
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    flat = np.arange(offsets[-1], dtype=np.int64) - np.repeat(offsets[:-1] - start, lengths)
    return flat, offsets


def _joined(ids: np.ndarray, flat: np.ndarray, offsets: np.ndarray) -> pa.Array:
    """Rows of ``|``-joined ids: row r holds ``ids[flat[offsets[r]:offsets[r + 1]]]``."""
    values = pc.cast(pa.array(ids[flat]), pa.string())
    return pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values), SEPARATOR)


class _Labels:
    """For events sorted by (user, time): whether a later event of a behaviour follows on the same item."""

    def __init__(self, ev: Events, user_code: np.ndarray) -> None:
        n = len(ev)
        self.ev, self.n = ev, n
        uniq = np.unique(ev.item)
        self.pair = user_code * uniq.shape[0] + np.searchsorted(uniq, ev.item)  # [n] (user, item) id

    def follows(self, rows: np.ndarray, behaviour: int, window: int | None) -> np.ndarray:
        """``[len(rows)]`` bool: event rows[r] is followed (later position, same user and item) by an event
        of ``behaviour`` at most ``window`` seconds after it."""
        ev, n = self.ev, self.n
        targets = np.flatnonzero(ev.behaviour == behaviour)
        if not targets.size:
            return np.zeros(rows.shape[0], dtype=bool)
        keys = self.pair[targets] * (n + 1) + targets  # [E] (pair, position)
        order = np.argsort(keys)
        keys, targets = keys[order], targets[order]
        j = np.searchsorted(keys, self.pair[rows] * (n + 1) + rows, side="right")  # the first later event
        nxt = targets[np.minimum(j, keys.shape[0] - 1)]
        found = (j < keys.shape[0]) & (self.pair[nxt] == self.pair[rows])
        if window is not None:
            found &= ev.timestamp[nxt] - ev.timestamp[rows] <= window
        return found


class _Pools:
    """One :class:`_Pool` per period (``(timestamp - period_origin) // period``), all drawing from one
    generator."""

    def __init__(self, options: UserBehaviorOptions, rng: np.random.Generator) -> None:
        self.options, self.rng = options, rng
        self.pools: dict[int, _Pool] = {}

    def add(self, items: np.ndarray, categories: np.ndarray, timestamps: np.ndarray) -> None:
        period = (timestamps - self.options.period_origin) // self.options.period
        for p in np.unique(period):  # sorted: the draws do not depend on dict order
            pool = self.pools.setdefault(int(p), _Pool(self.options.pool, self.rng))
            at = period == p
            pool.add(items[at], categories[at])

    def draw(self, timestamps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One pooled event of each timestamp's period: ``(items [n], categories [n])`` (each period of
        ``timestamps`` has had events added)."""
        items, categories = np.empty_like(timestamps), np.empty_like(timestamps)
        period = (timestamps - self.options.period_origin) // self.options.period
        for p in np.unique(period):
            at = np.flatnonzero(period == p)
            items[at], categories[at] = self.pools[int(p)].draw(at.shape[0])
        return items, categories


def _user_rows(ev: Events, pools: _Pools, options: UserBehaviorOptions) -> pa.Table:
    """The rows of complete users' events ``ev`` (each user's events consecutive), :data:`COLUMNS` + LINE."""
    n = len(ev)
    runs = _runs(ev.user)
    user_code = np.repeat(np.arange(runs.shape[0]), np.diff(np.append(runs, n)))  # [n]
    ev = ev.take(np.lexsort((np.arange(n), ev.timestamp, user_code)))  # by user, then time, then log order
    time_rank = np.unique(ev.timestamp, return_inverse=True)[1].astype(np.int64)
    time_key = user_code * (n + 1) + time_rank  # [n], non-decreasing: (user, time)
    pv = np.flatnonzero(ev.behaviour == 0)  # [P] the clicked impressions
    pools.add(ev.item[pv], ev.category[pv], ev.timestamp[pv])

    labels = _Labels(ev, user_code)
    columns: dict[str, pa.Array] = {}
    for b, name in enumerate(BEHAVIOURS):
        events_b = np.flatnonzero(ev.behaviour == b)
        keys = time_key[events_b]
        end = np.searchsorted(keys, time_key[pv], side="left")  # events of b strictly before t
        first = np.searchsorted(keys, user_code[pv] * (n + 1), side="left")  # the user's first event of b
        flat, offsets = _ranges(np.maximum(first, end - options.max_history), end)
        columns[f"hist_{name}_item"] = _joined(ev.item[events_b], flat, offsets)
        columns[f"hist_{name}_cat"] = _joined(ev.category[events_b], flat, offsets)

    # negatives: k draws per clicked row, redrawn while the user has viewed the drawn item
    k = options.negatives
    owner = np.repeat(pv, k)  # [P k] the clicked row each negative accompanies
    items, cats = pools.draw(ev.timestamp[owner])
    viewed_pairs = np.unique(labels.pair[pv])
    uniq = np.unique(ev.item)

    def viewed(rows: np.ndarray, drawn: np.ndarray) -> np.ndarray:
        code = np.minimum(np.searchsorted(uniq, drawn), uniq.shape[0] - 1)
        pair = user_code[rows] * uniq.shape[0] + code
        return (uniq[code] == drawn) & np.isin(pair, viewed_pairs)

    redo = np.flatnonzero(viewed(owner, items))
    for _ in range(_REDRAWS):
        if not redo.size:
            break
        items[redo], cats[redo] = pools.draw(ev.timestamp[owner[redo]])
        redo = redo[viewed(owner[redo], items[redo])]
    keep = np.ones(owner.shape[0], dtype=bool)
    keep[redo] = False

    # rows: each clicked row followed by its negatives
    slot = np.concatenate([np.zeros(pv.shape[0], np.int64), np.tile(np.arange(1, k + 1), pv.shape[0])])
    source = np.concatenate([np.arange(pv.shape[0]), np.repeat(np.arange(pv.shape[0]), k)])  # index into pv
    item = np.concatenate([ev.item[pv], items])
    category = np.concatenate([ev.category[pv], cats])
    kept = np.concatenate([np.ones(pv.shape[0], dtype=bool), keep])
    order = np.lexsort((slot, source))
    order = order[kept[order]]
    src, positive = source[order], slot[order] == 0
    row_event = pv[src]

    def text(values: np.ndarray) -> pa.Array:
        return pc.cast(pa.array(values), pa.string())

    out: dict[str, pa.Array] = {
        "user_id": text(ev.user[row_event]),
        "item_id": text(item[order]),
        "category_id": text(category[order]),
        "timestamp": text(ev.timestamp[row_event]),
        "click": text(positive.astype(np.int8)),
    }
    for b, name in enumerate(BEHAVIOURS[1:], start=1):
        follows = labels.follows(pv, b, options.window)[src] & positive
        out[name] = text(follows.astype(np.int8))
    for name in HISTORIES:
        out[name] = columns[name].take(pa.array(src))
    out[LINE] = pa.array(ev.line[row_event])
    return pa.table(out)


def training_rows(blocks: Iterable[Events], options: UserBehaviorOptions, path: str = "event log"
                  ) -> Iterator[pa.Table]:
    """The training rows of a stream of consecutive event blocks (see the module docstring): one table
    of :data:`COLUMNS` (text) and :data:`LINE` per block, with the rows of the users the block completes.
    Raises UserBehaviorError, naming ``path`` and the line, where a user's events resume after another
    user's (the log is not grouped by user)."""
    rng = np.random.default_rng(options.seed)
    pools = _Pools(options, rng)
    seen = np.empty(0, dtype=np.int64)  # sorted ids of the users whose rows were produced
    pending: Events | None = None
    exhausted = False
    iterator = iter(blocks)
    while not exhausted:
        block = next(iterator, None)
        exhausted = block is None
        parts = [p for p in (pending, block) if p is not None and len(p)]
        if not parts:
            continue
        events = Events.concat(parts) if len(parts) > 1 else parts[0]
        runs = _runs(events.user)
        done = len(events) if exhausted else int(runs[-1])  # the last user may go on in the next block
        ready, pending = events.take(slice(0, done)), events.take(slice(done, None))
        if not len(ready):
            continue
        starts = runs[runs < done]
        users = ready.user[starts]
        resumed = _resumed(users, seen)
        if resumed is not None:
            i = int(starts[resumed])
            raise UserBehaviorError(
                f"{path}, line {int(ready.line[i])}: the events of user {int(ready.user[i])} resume here after "
                f"other users' events; the userbehavior format needs the log grouped by user, each user's "
                f"events together (as published): sort it by user (a stable sort keeps the time order)")
        seen = np.sort(np.concatenate([seen, np.sort(users)]), kind="stable")  # two sorted runs: a merge
        yield _user_rows(ready, pools, options)


def _resumed(users: np.ndarray, seen: np.ndarray) -> int | None:
    """The first run of ``users`` (one id per run of a block) whose user had an earlier run, or None."""
    order = np.argsort(users, kind="stable")
    repeated = order[1:][users[order][1:] == users[order][:-1]]  # later runs of a user repeated here
    at = np.minimum(np.searchsorted(seen, users), max(seen.shape[0] - 1, 0))
    before = np.flatnonzero(seen[at] == users) if seen.shape[0] else np.array([], np.int64)
    again = np.concatenate([repeated, before])
    return int(again.min()) if again.size else None


def _log_rows(blocks: Iterable[LogBlock], options: ConfigModel, path: str) -> Iterator[pa.Table]:
    """:func:`training_rows` of the log's text blocks."""
    assert isinstance(options, UserBehaviorOptions)
    events = (parse_events(b.table, b.lines, b.where) for b in blocks)
    return training_rows(events, options, path)


USERBEHAVIOR = register_format(RawFormat(
    name="userbehavior", options=UserBehaviorOptions, log_columns=EVENT_COLUMNS, columns=COLUMNS,
    rows=_log_rows, block_rows=EVENT_BLOCK))
