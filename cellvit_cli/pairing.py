"""Pairing files of two folders by name: images with masks (`train`), predictions with
ground truth (`evaluate`). One set of rules for both commands:

- A file's *key* is its name without extension (`.tif`, `.ome.tif`, `.png`, ...) and
  without its naming suffix: `img1.tif`, `img1_masks.png` and `img1_seg.npy` all have the
  key `img1`. Files with the same key pair.
- Each folder uses one suffix for all its files, chosen among a side's candidates, which
  come in tiers: named suffixes first (`_masks`, `_labels`, ...), then Cellpose's
  `_seg.npy`, then none (identical names). The first tier that pairs any file is used, and
  in it the suffix that pairs the most; two suffixes of that tier that pair as many
  files differently, or one key with files for two suffixes of the tier
  (`img1_masks.tif` and `img1_labels.tif`), is an ambiguity: a `PairingError` listing the
  files, never a silent choice.
- In one folder (`--images D --masks D`, Cellpose's layout) a file is on the side whose
  suffix it ends with (the longer suffix wins, so `img1_cp_masks.png` is not a `_masks`
  file): an image is never its own mask, and identical names cannot pair there.
- Hidden files (`._img1.tif`, our `.tmp-` files) are never listed.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from itertools import product
from pathlib import Path

from cellvit_cli.io import IMAGE_SUFFIXES, JPEG_SUFFIXES, LABEL_SUFFIXES

SEG_SUFFIX, SEG_EXTENSION = "_seg", ".npy"  # Cellpose's `img_seg.npy` (a dict with "masks")
# longest first: `img.ome.tif` has the extension `.ome.tif`
EXTENSIONS = (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".png", ".jpeg", ".jpg", ".npy")
# names that are masks or outputs (ours, Cellpose's), never images to train on
NOT_IMAGES = ("_masks", "_mask", "_labels", "_cp_masks", "_flows", "_cp_outlines",
              "_overlay", "_maps_star", "_maps_flow", "_maps_boundary")


class PairingError(ValueError):
    """Files that cannot be paired unambiguously; the message is one line naming them."""


@dataclass(frozen=True)
class Naming:
    """The names the files of one side may have.

    tiers: candidate suffixes, best tier first ('' = the key itself); extensions: file
    endings read on this side (`_seg` goes with `.npy` only, `.npy` with `_seg` only);
    excluded: suffixes of files never taken on this side (e.g. masks among images);
    what: how messages call one file ("image", "mask", ...); flag: the option that names
    the suffix, for messages (None: there is none).
    """

    tiers: tuple[tuple[str, ...], ...]
    extensions: tuple[str, ...]
    what: str
    flag: str | None = None
    excluded: tuple[str, ...] = ()

    def fixed(self, suffix: str | None) -> "Naming":
        """This naming with one given suffix (as typed: `_masks`, `''`, `_seg.npy`,
        `_cp_masks.png`); itself when `suffix` is None."""
        if suffix is None:
            return self
        extension = next((e for e in EXTENSIONS if suffix.lower().endswith(e)), None)
        if extension is not None:
            suffix = suffix[: len(suffix) - len(extension)]
        elif suffix == SEG_SUFFIX:
            extension = SEG_EXTENSION
        extensions = (extension,) if extension else self.extensions
        return replace(self, tiers=((suffix,),), extensions=extensions)

    @property
    def suffixes(self) -> tuple[str, ...]:
        return tuple(s for tier in self.tiers for s in tier)

    def describe(self) -> str:
        """The suffixes in words: "_masks, _labels, _seg.npy or none"."""
        names = [shown(s) for s in self.suffixes if s] + (["none"] if "" in self.suffixes else [])
        return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


# label files are listed in JPEG too, so that reading them says why JPEG cannot hold labels
_LABEL_FILES = LABEL_SUFFIXES + JPEG_SUFFIXES
IMAGES = Naming((("",),), IMAGE_SUFFIXES, "image", excluded=NOT_IMAGES)
MASKS = Naming((("_masks", "_mask", "_labels"), (SEG_SUFFIX,), ("",)), _LABEL_FILES, "mask",
               flag="--mask-suffix")
# `_masks` is a weaker sign of a prediction than `_labels` (ours) or `_cp_masks` (Cellpose's):
# beside `_cp_masks` files, Cellpose's `_masks` files are the ground truth
PREDICTIONS = Naming((("_labels", "_cp_masks"), ("_masks",), (SEG_SUFFIX,), ("",)),
                     _LABEL_FILES, "prediction", flag="--pred-suffix",
                     excluded=("_overlay", "_maps_star", "_maps_flow", "_maps_boundary", "_flows"))
GROUND_TRUTH = replace(MASKS, what="ground truth", flag="--gt-suffix")


@dataclass
class Pairing:
    """Files of two folders paired by key.

    pairs: (key, file, partner) sorted by key; unpaired: files without a partner;
    unpaired_partners: partners without a file; suffixes: the suffix used on each side;
    missing_keys: keys asked for (`keys`) that have no file.
    """

    pairs: list[tuple[str, Path, Path]] = field(default_factory=list)
    unpaired: list[Path] = field(default_factory=list)
    unpaired_partners: list[Path] = field(default_factory=list)
    suffixes: tuple[str, str] = ("", "")
    missing_keys: list[str] = field(default_factory=list)


def shown(suffix: str) -> str:
    """A suffix as a person types it: `_seg` is `_seg.npy`, '' is ''."""
    return SEG_SUFFIX + SEG_EXTENSION if suffix == SEG_SUFFIX else suffix


def list_files(folder, extensions: Sequence[str]) -> list[Path]:
    """The files of `folder` (not sub-folders) ending in one of `extensions`, sorted;
    hidden files are skipped."""
    endings = tuple(e.lower() for e in extensions)
    return sorted(p for p in Path(folder).iterdir() if p.is_file()
                  and p.name.lower().endswith(endings) and not p.name.startswith("."))


def key_of(path: Path, suffix: str) -> str | None:
    """The key of `path` when its name ends with `suffix` (before the extension), else None."""
    name = path.name
    extension = next((e for e in EXTENSIONS if name.lower().endswith(e)), None)
    if extension is None or (suffix == SEG_SUFFIX) != (extension == SEG_EXTENSION):
        return None
    base = name[: len(name) - len(extension)]
    if not base.endswith(suffix):
        return None
    key = base[: len(base) - len(suffix)]
    key = key[:-4] if key.lower().endswith(".ome") else key
    return key or None


def _keyed(files: Iterable[Path], suffix: str, not_ending: Sequence[str]) -> dict[str, list[Path]]:
    """{key: files} of the files named with `suffix`, leaving out names ending with a suffix
    of `not_ending` (longer than `suffix`: those belong elsewhere)."""
    keyed: dict[str, list[Path]] = {}
    for path in files:
        key = key_of(path, suffix)
        if key is not None and not any(key_of(path, s) is not None for s in not_ending):
            keyed.setdefault(key, []).append(path)
    return keyed


@dataclass
class _Option:
    """One choice of suffixes (first side, second side) and what it pairs."""

    suffixes: tuple[str, str]
    tier: int
    first: dict[str, list[Path]]
    second: dict[str, list[Path]]

    @property
    def keys(self) -> list[str]:
        return sorted(self.first.keys() & self.second.keys())

    def pairs(self) -> frozenset:
        return frozenset((self.first[k][0], self.second[k][0]) for k in self.keys)


def _options(first_files, second_files, first: Naming, second: Naming, same_folder: bool,
             keys: set | None) -> list[_Option]:
    """Every pair of suffixes the namings allow, best tiers first."""
    options = []
    for (tier_a, tier_b) in product(range(len(first.tiers)), range(len(second.tiers))):
        for suffix_a, suffix_b in product(first.tiers[tier_a], second.tiers[tier_b]):
            if same_folder and suffix_a == suffix_b:
                continue  # a file would be its own partner
            # in one folder a name ending with the other side's longer suffix is the other's
            other_a = [suffix_b] if same_folder and len(suffix_b) > len(suffix_a) else []
            other_b = [suffix_a] if same_folder and len(suffix_a) > len(suffix_b) else []
            keyed_a = _keyed(first_files, suffix_a, [*first.excluded, *other_a])
            if keys is not None:
                keyed_a = {k: v for k, v in keyed_a.items() if k in keys}
            keyed_b = _keyed(second_files, suffix_b, [*second.excluded, *other_b])
            options.append(_Option((suffix_a, suffix_b), tier_a + tier_b, keyed_a, keyed_b))
    return sorted(options, key=lambda o: o.tier)


def pair_folders(first_dir, second_dir, first: Naming, second: Naming,
                 keys: Sequence[str] | None = None) -> Pairing:
    """Pair the files of `first_dir` (named as `first` says) with those of `second_dir`.

    keys: only these keys of the first side (e.g. an ids file; `Pairing.missing_keys` lists
    those without a file). Raises PairingError on an ambiguity (see the module docstring).
    """
    first_files = list_files(first_dir, first.extensions)
    second_files = list_files(second_dir, second.extensions)
    same_folder = Path(first_dir).resolve() == Path(second_dir).resolve()
    wanted = {_plain_key(k) for k in keys} if keys is not None else None
    options = _options(first_files, second_files, first, second, same_folder, wanted)
    if not options:
        return Pairing(unpaired=first_files, unpaired_partners=second_files)
    chosen = _choose(options, first, second)
    _check_alternatives(chosen, options, first, second)
    return _pairing(chosen, keys)


def _choose(options: list[_Option], first: Naming, second: Naming) -> _Option:
    """The option of the best tier that pairs anything, pairing the most; PairingError when
    another option of that tier pairs as many files differently."""
    pairing = [o for o in options if o.keys]
    if not pairing:
        return options[0]
    tier = pairing[0].tier
    best = max(len(o.keys) for o in pairing if o.tier == tier)
    top = [o for o in pairing if o.tier == tier and len(o.keys) == best]
    rivals = [o for o in top[1:] if o.pairs() != top[0].pairs()]
    if rivals:
        raise PairingError(_rival_message(top[0], rivals[0], first, second))
    return top[0]


def _rival_message(one: _Option, other: _Option, first: Naming, second: Naming) -> str:
    def example(option: _Option) -> str:
        key = option.keys[0]
        return f"{option.first[key][0].name} with {option.second[key][0].name}"

    flags = [naming.flag for side, naming in enumerate((first, second))
             if naming.flag and one.suffixes[side] != other.suffixes[side]]
    return (f"ambiguous names: two namings pair {len(one.keys)} file(s) each, e.g. "
            f"{example(one)} and {example(other)}; keep one naming per folder"
            + (f" or choose it with {' and '.join(flags)}" if flags else ""))


def _check_alternatives(chosen: _Option, options: list[_Option], first: Naming,
                        second: Naming) -> None:
    """PairingError when a paired key has several files on a side: two extensions
    (img1.tif, img1.png) or another suffix of the chosen one's tier."""
    for side, naming in ((0, first), (1, second)):
        rivals = [o for o in options if o.tier == chosen.tier
                  and o.suffixes[1 - side] == chosen.suffixes[1 - side]]
        for key in chosen.keys:
            files = dict.fromkeys(p for o in rivals
                                  for p in (o.first if side == 0 else o.second).get(key, []))
            if len(files) > 1:
                names = list(files)
                how = (f" or choose with {naming.flag} (e.g. {naming.flag} "
                       f"'{names[0].name[len(key):]}')" if naming.flag else "")
                raise PairingError(f"{names[0].parent}: ambiguous {naming.what} for {key}: "
                                   f"{', '.join(p.name for p in names)}; keep one of them{how}")


def _pairing(chosen: _Option, keys: Sequence[str] | None) -> Pairing:
    paired = chosen.keys
    first_keys = set(chosen.first)
    missing = [k for k in keys if _plain_key(k) not in first_keys] if keys is not None else []
    return Pairing(
        pairs=[(k, chosen.first[k][0], chosen.second[k][0]) for k in paired],
        unpaired=sorted(p for k in first_keys - set(paired) for p in chosen.first[k]),
        unpaired_partners=sorted(p for k in set(chosen.second) - set(paired)
                                 for p in chosen.second[k]),
        suffixes=chosen.suffixes, missing_keys=missing)


def _plain_key(key: str) -> str:
    """An id as a key: `img1.ome` (a stem of `img1.ome.tif`) is `img1`."""
    return key[:-4] if key.lower().endswith(".ome") else key


def guess_suffixes(first_files: Sequence[Path], second_files: Sequence[Path],
                   limit: int = 2000) -> tuple[str, str, int] | None:
    """The suffixes (first, second) that would pair the most of these files, cutting names
    at '_', '-' or '.', and how many they pair; None when no cut pairs anything. A file
    never pairs with itself (the two lists may hold the same files)."""
    def cuts(files):
        found: dict[str, set[str]] = {}
        for path in files[:limit]:
            name = path.name
            extension = next((e for e in EXTENSIONS if name.lower().endswith(e)), "")
            base = name[: len(name) - len(extension)]
            for i in [i for i, c in enumerate(base) if c in "_-." and i > 0] + [len(base)]:
                found.setdefault(base[i:], set()).add(base[:i])
        return found

    first, second = cuts(first_files), cuts(second_files)
    same = {p.resolve() for p in first_files} & {p.resolve() for p in second_files}
    counts = {(a, b): len(keys_a & keys_b) for a, keys_a in first.items()
              for b, keys_b in second.items() if not (same and a == b)}
    if not counts or max(counts.values()) == 0:
        return None
    (a, b), n = max(counts.items(), key=lambda item: (item[1], -len(item[0][0] + item[0][1])))
    return a, b, n
