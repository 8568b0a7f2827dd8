"""The bench's own arithmetic (fast: no models, no processes)."""

import math

import pytest

from bench.metrics import CapacitySearch, normalize, percentile, summarize_ms, word_errors


def test_percentile_interpolates_like_numpy() -> None:
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 50) == 2.5
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(list(range(101)), 95) == 95.0
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile(values, 101)


def test_summarize_ms_converts_seconds() -> None:
    out = summarize_ms([0.1, 0.2, 0.3])
    assert out["p50"] == 200.0
    assert out["max"] == 300.0
    assert out["n"] == 3
    assert summarize_ms([]) == {"n": 0}


def test_wer_ignores_number_forms_and_punctuation() -> None:
    assert normalize("Press 4, please.") == normalize("press four please")
    counts = word_errors(["press four please", "hello world"], ["Press 4, please.", "hello"])
    assert counts.reference_words == 5
    assert counts.deletions == 1
    assert counts.wer == pytest.approx(0.2)


def test_wer_does_not_count_a_trailing_ellipsis_as_a_word() -> None:
    assert normalize("The number I have is...") == "the number i have is"
    assert normalize("It costs 3.50 dollars") == normalize("it costs 3.50 dollars")
    assert word_errors(["the number i have is"], ["The number I have is..."]).errors == 0


def test_wer_counts_insertions_on_empty_reference_and_empty_hypothesis() -> None:
    counts = word_errors(["", "hello world"], ["thank you", ""])
    assert counts.insertions == 2
    assert counts.deletions == 2
    assert counts.reference_words == 2


def _search(capacity: int, limit: int = 64) -> tuple[int, list[int]]:
    search = CapacitySearch(limit=limit)
    tried = []
    while (n := search.next_count()) is not None:
        tried.append(n)
        search.record(n, n <= capacity)
    return search.best, tried


@pytest.mark.parametrize("capacity", [0, 1, 2, 3, 5, 6, 7, 8, 13])
def test_capacity_search_finds_the_largest_passing_count(capacity: int) -> None:
    best, tried = _search(capacity)
    assert best == capacity
    assert len(tried) <= 2 * math.ceil(math.log2(capacity + 2)) + 1


def test_capacity_search_stops_at_the_limit() -> None:
    best, tried = _search(100, limit=6)
    assert best == 6
    assert tried[-1] == 6


def test_numbers_are_one_word_in_every_language_num2words_knows() -> None:
    # the Asterisk references write keys as digits in French, Italian and Russian, as words in
    # Spanish; Whisper writes either in any of them
    assert normalize("Appuyez sur 2.", "fr") == normalize("appuyez sur deux", "fr") == "appuyez sur deux"
    assert normalize("нажмите 1", "ru") == normalize("Нажмите один", "ru")
    assert normalize("premere 21 volte", "it") == normalize("premere ventuno volte", "it")
    assert normalize("marque 2", "es") != normalize("marque tres", "es")  # still an error when wrong
    assert normalize("第 2", "zh") == "第 2"  # a language num2words does not know keeps its digits
    counts = word_errors(["presione 7 o 9"], ["presione siete o nueve"], ["es"])
    assert counts.errors == 0 and counts.reference_words == 4
