"""Merging and querying closed integer intervals."""


def merge(intervals):
    """Merge overlapping or touching [start, end] intervals; the result is sorted."""
    merged = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return merged


def covered(intervals):
    """How many integers the intervals cover together."""
    return sum(end - start + 1 for start, end in merge(intervals))


def contains(intervals, x):
    return any(start <= x <= end for start, end in intervals)
