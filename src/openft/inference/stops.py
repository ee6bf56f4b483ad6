"""Stop strings found in a growing text, looking at each new character once.

Searching the whole text (or even its tail) again for every stop string on every token costs the stop
strings' length per token, and finding how much of the text's end may still become a stop string (text
a stream must hold back) cost their length squared. Knuth-Morris-Pratt automata do both in amortized
constant time per new character, whatever the length of the stop strings.
"""

from __future__ import annotations


class StopMatcher:
    """The earliest stop string in a text fed piece by piece, and the longest end of it that may still
    become one (`held`). Empty stop strings are ignored."""

    def __init__(self, stops: list[str]):
        self._stops = [stop for stop in stops if stop]
        self._fallbacks = [_fallback_table(stop) for stop in self._stops]
        self._matched = [0] * len(self._stops)  # per stop: length of its longest prefix ending the text
        self.examined = 0
        """Characters looked at, over all stop strings (for tests that bound the work)."""

    def __bool__(self) -> bool:
        return bool(self._stops)

    @property
    def held(self) -> int:
        """Length of the longest end of the text that is the start of a stop string (it may become one)."""
        return max(self._matched, default=0)

    def feed(self, text: str, start: int, end: int) -> int | None:
        """Advance over `text[start:end]`, the text added since the last call.

        Returns where the earliest complete stop string starts, or None. After a match the matcher has
        served its purpose (the choice ends); feeding it more gives unspecified results.
        """
        earliest: int | None = None
        for k, stop in enumerate(self._stops):
            matched, fallback, size = self._matched[k], self._fallbacks[k], len(stop)
            for index in range(start, end):
                char = text[index]
                while matched and stop[matched] != char:
                    matched = fallback[matched - 1]
                if stop[matched] == char:
                    matched += 1
                if matched == size:
                    at = index - size + 1
                    earliest = at if earliest is None else min(earliest, at)
                    break
            self.examined += end - start
            self._matched[k] = matched
        return earliest


def _fallback_table(stop: str) -> list[int]:
    """KMP's failure function: for each prefix of `stop`, the length of its longest proper border."""
    table = [0] * len(stop)
    border = 0
    for index in range(1, len(stop)):
        while border and stop[index] != stop[border]:
            border = table[border - 1]
        if stop[index] == stop[border]:
            border += 1
        table[index] = border
    return table
