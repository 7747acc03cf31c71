"""The bottom layer: what every computation stores and shares. `cache` (named numpy arrays on disk, computed once
across threads and processes, never unpickled), `locks` (inter-process locks that their owner's death releases),
`files` (atomic writes), `memory` (what is available, and whether a data set's statistics fit)."""
