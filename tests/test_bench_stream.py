"""bench/stream.py's measures on synthetic cases: word latency from partial results, and which
final each utterance of a joined file ends up in."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[1] / "bench" / "stream.py"
_spec = importlib.util.spec_from_file_location("bench_stream", _PATH)
bench = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bench  # dataclasses look their module up there
_spec.loader.exec_module(bench)


def test_first_appearance_is_the_first_partial_with_the_word_at_its_position() -> None:
    events = [(0.3, "R"), (0.5, "RUBOUT"), (0.9, "RUBOUT G"), (1.2, "RUBOUT G N"), (1.5, "RUBOUT G M"), (1.8, "RUBOUT G M E")]
    assert bench.first_appearances(events, ["RUBOUT", "G", "M", "E"]) == [0.5, 0.9, 1.5, 1.8]
    assert bench.first_appearances(events[:2], ["RUBOUT", "G"]) == [0.5, None]


def test_latency_counts_correct_words_only_against_their_reference_word() -> None:
    ref, ends = ["ERASE", "C", "Q", "F"], [0.6, 1.0, 1.4, 2.0]
    hyp, appear = ["ERASE", "Q", "F"], [0.8, 1.7, 2.3]  # C deleted: Q and F keep their own reference ends
    assert bench.word_latencies(ref, ends, hyp, appear) == pytest.approx([0.2, 0.3, 0.3])
    hyp, appear = ["ERASE", "X", "C", "Q", "S"], [0.8, 0.9, 1.1, 1.6, 2.2]  # an insertion and a substitution
    assert bench.word_latencies(ref, ends, hyp, appear) == pytest.approx([0.2, 0.1, 0.2])
    med, p90 = bench.percentiles([0.1, 0.2, 0.3])
    assert med == pytest.approx(200) and p90 == pytest.approx(280)
    assert all(math.isnan(v) for v in bench.percentiles([]))


def _final(*words: tuple[str, float, float]) -> SimpleNamespace:
    return SimpleNamespace(words=[SimpleNamespace(word=w, start=a, end=b) for w, a, b in words])


def test_endpoint_outcome_splits_and_merges() -> None:
    regions = [(0.0, 5.0), (5.0, 10.0), (10.0, 15.0), (15.0, 20.0)]
    finals = [
        _final(("A", 1, 2), ("B", 2, 3)),  # utterance 0 alone: counted
        _final(("C", 6, 7)),  # utterance 1 split over two finals
        _final(("D", 8, 9)),
        _final(("E", 11, 12), ("F", 16, 17)),  # utterances 2 and 3 merged into one final
    ]
    ok, words = bench.endpoint_outcome(finals, regions)
    assert ok == [True, False, False, False]
    assert words == [["A", "B"], ["C", "D"], ["E"], ["F"]]
    ok, words = bench.endpoint_outcome([], regions[:1])
    assert ok == [False] and words == [[]]


def test_joined_file_pauses_and_noise() -> None:
    rate = 16000
    rng = np.random.default_rng(0)
    utts = [bench.Utt(f"u{i}", "A B", (0.3 * rng.standard_normal(rate)).astype(np.float32), rate) for i in range(6)]
    joined = bench.joined_file(utts, minutes=0.2, seed=3, noisy_share=0.5)
    assert len(joined.ids) >= 3 and len(joined.samples) / rate >= 12
    starts = [a for a, _ in joined.regions]
    assert starts[0] == 0 and all(b > a for a, b in joined.regions) and joined.regions[-1][1] == pytest.approx(len(joined.samples) / rate)
    assert joined_file_is_repeatable(utts, joined)


def joined_file_is_repeatable(utts, joined) -> bool:
    again = bench.joined_file(utts, minutes=0.2, seed=3, noisy_share=0.5)
    return np.array_equal(again.samples, joined.samples) and again.noisy == joined.noisy
