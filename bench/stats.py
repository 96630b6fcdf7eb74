"""Figures the benchmarks print."""


def percentile(values, p):
    """The nearest-rank p-th percentile of `values` (NaN when there are none)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))]
