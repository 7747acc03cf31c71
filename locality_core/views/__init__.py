"""Each page's default view, as functions of (data set, view parameters) that the pages draw and the warm-up
precomputes: the same calls, so the same cache keys."""
