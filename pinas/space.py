"""The Pi-NAS search space: a ResNeSt-D skeleton whose every bottleneck picks one of four split-attention blocks.

A space is data (depths, widths, candidate list, input size); the paper's space and the CPU demo space are two
presets of the same class, so every stage runs the same code on both. An architecture is a tuple with one candidate
index per searchable layer, ordered stage by stage. Its string form groups the digits by stage
(``"301-3231-203213-032"``) so a reader sees the stage boundaries, and :meth:`SearchSpace.parse` turns that string
(or a plain digit string, or a list) back into the tuple, naming the layer when something is wrong.
"""
from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

Arch = tuple[int, ...]

#: Bottleneck expansion of ResNet/ResNeSt: a stage with ``planes`` outputs ``4 * planes`` channels.
EXPANSION = 4


class ArchError(ValueError):
    """An architecture string or sequence that does not belong to the space."""


@dataclass(frozen=True)
class Candidate:
    """One split-attention bottleneck variant, in ResNeSt notation ``{radix}s{cardinality}x{base_width}d``."""

    radix: int
    cardinality: int
    base_width: int

    @property
    def name(self) -> str:
        return f"{self.radix}s{self.cardinality}x{self.base_width}d"

    def group_width(self, planes: int) -> int:
        """Channels of the 3x3 split-attention conv: ``int(planes * w / 64) * c``."""
        return int(planes * self.base_width / 64) * self.cardinality

    def attention_width(self, planes: int, minimum: int) -> int:
        """Hidden width of the attention MLP: ``max(gw * r // 4, minimum)`` (ResNeSt's reduction factor 4)."""
        return max(self.group_width(planes) * self.radix // 4, minimum)


#: The four candidates of Pi-NAS (method doc section 1.2); index 1 is the ResNeSt-50 block.
PINAS_CANDIDATES: tuple[Candidate, ...] = (
    Candidate(radix=1, cardinality=1, base_width=64),
    Candidate(radix=2, cardinality=1, base_width=64),
    Candidate(radix=1, cardinality=2, base_width=42),
    Candidate(radix=2, cardinality=2, base_width=40),
)


class ArchSpace:
    """What a search strategy needs of a space: fixed-length architectures with ``num_choices`` options at each of
    ``num_decisions`` decisions, and the operators on them. Subclasses give the two sizes (properties or fields)
    and may spell architectures their own way (:meth:`format` / :meth:`parse`)."""

    name: str
    num_decisions: int
    num_choices: int

    @property
    def size(self) -> int:
        """Number of distinct architectures."""
        return self.num_choices ** self.num_decisions

    def validate(self, arch: Sequence[int], what: str = "architecture") -> Arch:
        """Return ``arch`` as a tuple of ints, or raise :class:`ArchError` naming the first bad decision."""
        arch = tuple(arch)
        if len(arch) != self.num_decisions:
            raise ArchError(f"{what} has {len(arch)} decisions, space {self.name!r} has {self.num_decisions}")
        for i, choice in enumerate(arch):
            if isinstance(choice, (bool, np.bool_)) or not isinstance(choice, (int, np.integer)):
                raise ArchError(f"{what}: {self.describe_decision(i)} is {choice!r}, not an integer")
            if not 0 <= choice < self.num_choices:
                raise ArchError(f"{what}: {self.describe_decision(i)} has choice {choice}, valid choices are "
                                f"0..{self.num_choices - 1}")
        return tuple(int(c) for c in arch)

    def describe_decision(self, i: int) -> str:
        return f"decision {i + 1}"

    def format(self, arch: Sequence[int]) -> str:
        """One digit per decision."""
        return "".join(str(c) for c in self.validate(arch))

    def parse(self, text: str | Sequence[int]) -> Arch:
        """A digit string (commas, spaces and brackets ignored) or a sequence."""
        if not isinstance(text, str):
            return self.validate(text)
        digits = re.sub(r"[\s,()\[\]]", "", text)
        if not digits.isdigit():
            raise ArchError(f"architecture {text!r}: expected {self.num_decisions} digits 0..{self.num_choices - 1}")
        return self.validate([int(ch) for ch in digits], what=f"architecture {text!r}")

    def all_archs(self) -> list[Arch]:
        """Every architecture, in lexicographic order (for spaces small enough to list; built once)."""
        return list(_all_archs(self.num_decisions, self.num_choices))

    # ------------------------------------------------------------------------------------- sampling operators
    def sample(self, rng: np.random.Generator) -> Arch:
        """One architecture, uniform over the space."""
        return tuple(int(c) for c in rng.integers(0, self.num_choices, size=self.num_decisions))

    def mutate(self, arch: Sequence[int], rng: np.random.Generator, prob: float) -> Arch:
        """Each decision, with probability ``prob``, switches to a different choice (uniform over the others)."""
        arch = self.validate(arch)
        flips = rng.random(self.num_decisions) < prob
        shift = rng.integers(1, self.num_choices, size=self.num_decisions)
        return tuple(int((a + s) % self.num_choices) if f else a for a, f, s in zip(arch, flips, shift))

    def mutate_one(self, arch: Sequence[int], rng: np.random.Generator) -> Arch:
        """Exactly one decision, drawn uniformly, switched to another choice (a step of regularized evolution)."""
        arch = list(self.validate(arch))
        i = int(rng.integers(self.num_decisions))
        arch[i] = int((arch[i] + rng.integers(1, self.num_choices)) % self.num_choices)
        return tuple(arch)

    def crossover(self, a: Sequence[int], b: Sequence[int], rng: np.random.Generator) -> Arch:
        """Uniform crossover: each decision comes from either parent with probability 1/2."""
        a, b = self.validate(a), self.validate(b)
        take_a = rng.random(self.num_decisions) < 0.5
        return tuple(x if t else y for x, y, t in zip(a, b, take_a))

    def neighbours(self, arch: Sequence[int]) -> list[Arch]:
        """Every architecture one decision away, in order of decision then choice."""
        arch = self.validate(arch)
        return [arch[:i] + (c,) + arch[i + 1:] for i in range(self.num_decisions) for c in range(self.num_choices)
                if c != arch[i]]


@functools.cache
def _all_archs(decisions: int, choices: int) -> tuple[Arch, ...]:
    grids = np.indices((choices,) * decisions).reshape(decisions, -1).T
    return tuple(tuple(int(c) for c in row) for row in grids)


@dataclass(frozen=True)
class CategoricalSpace(ArchSpace):
    """A space given by its sizes alone, architectures written one digit per decision (e.g. TransNAS-Bench-101's
    cells: 6 edges, 4 operations each)."""

    name: str
    num_decisions: int
    num_choices: int


@dataclass(frozen=True)
class SearchSpace(ArchSpace):
    """Stage depths and widths, the candidate list and the input size of a ResNeSt-D supernet; its decisions are
    the searchable layers, its choices the candidate blocks."""

    name: str
    depths: tuple[int, ...]
    planes: tuple[int, ...]
    candidates: tuple[Candidate, ...] = PINAS_CANDIDATES
    stem_width: int = 32
    input_size: int = 224
    min_attention_width: int = 32
    named_archs: dict[str, Arch] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if len(self.depths) != len(self.planes) or not self.depths:
            raise ValueError(f"space {self.name!r}: depths {self.depths} and planes {self.planes} must match")
        if any(d < 1 for d in self.depths):
            raise ValueError(f"space {self.name!r}: every stage needs at least one block, got depths {self.depths}")
        if not self.candidates:
            raise ValueError(f"space {self.name!r}: no candidates")
        for idx, cand in enumerate(self.candidates):
            for planes in self.planes:
                gw = cand.group_width(planes)
                attn = cand.attention_width(planes, self.min_attention_width)
                if gw < 1 or gw % (cand.cardinality * cand.radix) or attn % cand.cardinality:
                    raise ValueError(
                        f"space {self.name!r}: candidate {idx} ({cand.name}) does not fit planes={planes}: "
                        f"group width {gw} must divide by cardinality*radix and attention width {attn} by cardinality")
        for label, arch in self.named_archs.items():
            self.validate(arch, what=f"named architecture {label!r}")

    # ----------------------------------------------------------------------------------------------- geometry
    @property
    def num_layers(self) -> int:
        return sum(self.depths)

    @property
    def num_decisions(self) -> int:
        return self.num_layers

    @property
    def num_choices(self) -> int:
        return len(self.candidates)

    @property
    def stage_slices(self) -> tuple[slice, ...]:
        bounds = np.cumsum((0,) + tuple(self.depths))
        return tuple(slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]))

    @property
    def out_channels(self) -> tuple[int, ...]:
        return tuple(EXPANSION * p for p in self.planes)

    @property
    def stem_channels(self) -> int:
        return 2 * self.stem_width

    def layer_position(self, layer: int) -> tuple[int, int]:
        """(stage, block) of a flat layer index, both 0-based."""
        for stage, sl in enumerate(self.stage_slices):
            if sl.start <= layer < sl.stop:
                return stage, layer - sl.start
        raise IndexError(layer)

    def describe_layer(self, layer: int) -> str:
        """1-based, as a person counts: ``layer 12 (stage 3, block 5)``."""
        stage, block = self.layer_position(layer)
        return f"layer {layer + 1} (stage {stage + 1}, block {block + 1})"

    # ------------------------------------------------------------------------------------------ architectures
    def validate(self, arch: Sequence[int], what: str = "architecture") -> Arch:
        """Return ``arch`` as a tuple of ints, or raise :class:`ArchError` naming the first bad layer."""
        arch = tuple(arch)
        if len(arch) != self.num_layers:
            raise ArchError(f"{what} has {len(arch)} layers, space {self.name!r} has {self.num_layers} "
                            f"(depths {list(self.depths)})")
        return super().validate(arch, what)

    def describe_decision(self, i: int) -> str:
        return self.describe_layer(i)

    def format(self, arch: Sequence[int]) -> str:
        """Stage-grouped digit string, e.g. ``"301-3231-203213-032"``."""
        arch = self.validate(arch)
        return "-".join("".join(str(c) for c in arch[sl]) for sl in self.stage_slices)

    def parse(self, text: str | Sequence[int]) -> Arch:
        """Accept the stage-grouped form, a plain digit string, a list literal, a named arch, or a sequence."""
        if not isinstance(text, str):
            return self.validate(text)
        raw = text.strip()
        if raw in self.named_archs:
            return self.named_archs[raw]
        if not raw:
            raise ArchError("empty architecture string")
        body = raw[1:-1] if raw[0] in "[(" and raw[-1] in "])" else raw
        if "," in body or " " in body.strip():
            tokens = [t for t in re.split(r"[,\s]+", body.strip()) if t]
            bad = [t for t in tokens if not t.isdigit()]
            if bad:
                raise ArchError(f"architecture {text!r}: {bad[0]!r} is not a candidate index")
            return self.validate([int(t) for t in tokens], what=f"architecture {text!r}")
        groups = body.split("-")
        for g in groups:
            bad = next((ch for ch in g if not ch.isdigit()), None)
            if bad is not None or not g:
                problem = f"character {bad!r}" if bad is not None else "an empty stage group"
                raise ArchError(f"architecture {text!r} has {problem}; expected digits 0..{self.num_choices - 1} "
                                f"grouped by stage like {self.format(self.default_arch())!r}")
        if len(groups) > 1:
            if len(groups) != len(self.depths):
                raise ArchError(f"architecture {text!r} has {len(groups)} stage groups, space {self.name!r} "
                                f"has {len(self.depths)} stages")
            for stage, (g, depth) in enumerate(zip(groups, self.depths)):
                if len(g) != depth:
                    raise ArchError(f"architecture {text!r}: stage {stage + 1} has {len(g)} digits, "
                                    f"expected {depth}")
        return self.validate([int(ch) for ch in "".join(groups)], what=f"architecture {text!r}")

    def default_arch(self) -> Arch:
        """The plain ResNeSt block everywhere (candidate 1), the natural baseline of the space."""
        return tuple([min(1, self.num_choices - 1)] * self.num_layers)

    # ------------------------------------------------------------------------------------- sampling operators
    def sample_pair(self, rng: np.random.Generator) -> tuple[Arch, Arch]:
        """Two paths that differ at every layer (2 distinct candidates per layer, uniform over ordered pairs)."""
        if self.num_choices < 2:
            raise ValueError("paired sampling needs at least two candidates per layer")
        pairs = [rng.choice(self.num_choices, size=2, replace=False) for _ in range(self.num_layers)]
        return tuple(int(p[0]) for p in pairs), tuple(int(p[1]) for p in pairs)


def _resnest50() -> SearchSpace:
    return SearchSpace(
        name="resnest50", depths=(3, 4, 6, 3), planes=(64, 128, 256, 512), stem_width=32, input_size=224,
        named_archs={
            "resnest50": (1,) * 16,
            "pinas-cls": (3, 0, 1, 3, 2, 3, 1, 2, 0, 3, 2, 1, 3, 0, 3, 2),
            "pinas-trans": (3, 3, 3, 3, 1, 1, 3, 3, 3, 0, 0, 1, 1, 0, 2, 1),
        })


def _demo() -> SearchSpace:
    # Same candidates and block structure, 8 layers instead of 16, a quarter of the width, 64 px images:
    # 4^8 = 65,536 architectures, small enough to train and search on two CPU cores in minutes.
    return SearchSpace(name="demo", depths=(2, 2, 2, 2), planes=(16, 32, 64, 128), stem_width=16, input_size=64)


PRESETS = {"resnest50": _resnest50, "demo": _demo}
RESNEST50 = _resnest50()
DEMO = _demo()
RESNEST50_ARCH: Arch = RESNEST50.named_archs["resnest50"]
PINAS_CLS_ARCH: Arch = RESNEST50.named_archs["pinas-cls"]
PINAS_TRANS_ARCH: Arch = RESNEST50.named_archs["pinas-trans"]


def get_space(name: str) -> SearchSpace:
    """A preset by name (``resnest50`` or ``demo``)."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown search space {name!r}; presets: {', '.join(PRESETS)}") from None


def iter_stage_layers(space: SearchSpace) -> Iterable[tuple[int, int, int]]:
    """Yield (flat layer index, stage, block-in-stage) for every searchable layer."""
    layer = 0
    for stage, depth in enumerate(space.depths):
        for block in range(depth):
            yield layer, stage, block
            layer += 1
