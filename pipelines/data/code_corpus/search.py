"""Binary search over sorted sequences."""


def lower_bound(xs, target):
    """The first index i with xs[i] >= target (len(xs) when there is none)."""
    lo, hi = 0, len(xs)
    while lo < hi:
        mid = (lo + hi) // 2
        if xs[mid] < target:
            lo = mid + 1
        else:
            hi = mid
    return lo


def index_of(xs, target):
    i = lower_bound(xs, target)
    return i if i < len(xs) and xs[i] == target else -1


def count_in_range(xs, low, high):
    """How many values v of the sorted xs satisfy low <= v <= high."""
    return lower_bound(xs, high + 1) - lower_bound(xs, low)
