"""A data set as a small value: its name, its options and an optional transform, hashable and printable, so that a
page, a cache key, a job and a worker process can all name the same data without passing tensors around.

Glossary
    DataRef     (name, params, transform): ``DataRef("grf", (("alpha", 4.0),))``, or a transform of
                "Locality follows the data" (``transform=(("kind", "inject"), ("strength", 1.0), ("seed", 0))``)
    load        the data set itself: the library caches data sets by name, options and file stamp; transformed
                ones are kept here by the base's fingerprint (a re-imported data set never reads an old entry)
    TRANSFORMS  the transforms a DataRef may carry: "permute" (seed), "inject" (strength, seed), "class" (label)
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass

from locality_core.analysis.transforms import inject_pattern, keep_class, permute_pixels
from locality_core.data import Dataset, DatasetError, load_dataset

TRANSFORMS = {
    "permute": lambda data, seed=0: permute_pixels(data, seed=int(seed)),
    "inject": lambda data, strength=1.0, seed=0: inject_pattern(data, strength=float(strength), mask="W",
                                                                seed=int(seed)),
    "class": lambda data, label=0: keep_class(data, int(label)),
}
KEEP_TRANSFORMED = 4  # transformed data sets kept per process (each a copy of its base's images)


def _number(text: str):
    """An option's value: an int, a float, or the text itself."""
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


def _pairs(mapping: dict | tuple | None) -> tuple[tuple[str, object], ...]:
    return tuple(sorted(dict(mapping or ()).items()))


@dataclass(frozen=True)
class DataRef:
    name: str
    params: tuple[tuple[str, object], ...] = ()
    transform: tuple[tuple[str, object], ...] = ()

    @classmethod
    def of(cls, name: str, params: dict | tuple | None = None, transform: dict | tuple | None = None) -> DataRef:
        ref = cls(name, _pairs(params), _pairs(transform))
        kind = dict(ref.transform).get("kind")
        if ref.transform and kind not in TRANSFORMS:
            raise DatasetError(f"unknown transform {kind!r}; known: {', '.join(TRANSFORMS)}")
        return ref

    @classmethod
    def parse(cls, text: str) -> DataRef:
        """``"grf:n_train=2000,alpha=3"`` -> DataRef("grf", (("alpha", 3), ("n_train", 2000))). A user data set is
        ``user:NAME``, its options after a second colon. ValueError for an option without ``=``."""
        text, prefix = text.strip(), ""
        if text.startswith("user:"):
            prefix, text = "user:", text[len("user:"):]
        name, _, opts = text.partition(":")
        params = {}
        for item in filter(None, (p.strip() for p in opts.split(","))):
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"expected key=value in the options of {prefix + name!r}, got {item!r}")
            params[key.strip()] = _number(value.strip())
        return cls.of(prefix + name, params)

    def with_transform(self, kind: str, **params) -> DataRef:
        return DataRef.of(self.name, self.params, {"kind": kind, **params})

    @property
    def id(self) -> str:
        """Canonical text: part of job keys and file names."""
        parts = [self.name]
        if self.params:
            parts.append(json.dumps(dict(self.params), sort_keys=True, separators=(",", ":")))
        if self.transform:
            parts.append(json.dumps(dict(self.transform), sort_keys=True, separators=(",", ":")))
        return "|".join(parts)

    @property
    def label(self) -> str:
        """For people: the name, its options, and what the transform did."""
        text = self.name + (" (" + ", ".join(f"{k}={v}" for k, v in self.params) + ")" if self.params else "")
        t = dict(self.transform)
        kind = t.pop("kind", None)
        words = {"permute": "pixels shuffled", "inject": "W injected", "class": "one class"}
        if kind:
            text += f", {words[kind]}" + (" (" + ", ".join(f"{k}={v}" for k, v in sorted(t.items())) + ")" if t else "")
        return text

    def load(self) -> Dataset:
        base = load_dataset(self.name, **dict(self.params))
        if not self.transform:
            return base
        key = (base.fingerprint, self.transform)
        with _lock:  # pages of several sessions, and job threads, ask at once: each transform is made once
            if key not in _transformed:
                options = dict(self.transform)
                _transformed[key] = TRANSFORMS[options.pop("kind")](base, **options)
                while len(_transformed) > KEEP_TRANSFORMED:
                    _transformed.popitem(last=False)
            _transformed.move_to_end(key)
            return _transformed[key]


_transformed: OrderedDict[tuple, Dataset] = OrderedDict()
_lock = threading.Lock()
