"""Prompt experiments, without a database: which variants, which players, and the report's numbers.

An experiment generates the same sample of one draft year's players under each named prompt variant
(prompts.PROMPT_VARIANTS) and compares what the judge and the reviewers said about each variant's images.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from math import comb
from statistics import fmean
from typing import Any

from portrait_pipeline.audit.models import APPROVED, NOT_SCORED, PENDING, REJECTED, SCORED
from portrait_pipeline.errors import InvalidInput
from portrait_pipeline.prompts import prompt_variant
from portrait_pipeline.styles import Style

ALPHA = 0.05  # the significance level of the report's notes
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # no ':' (it separates the parts of a run key)


@dataclass(frozen=True)
class ExperimentSpec:
    """What an experiment is: recorded once, and a rerun of the same name must ask for the same."""

    name: str
    draft_year: int
    style: Style
    variants: tuple[str, ...]
    player_ids: tuple[int, ...]
    lane: str


def parse_variants(text: str, style: Style) -> tuple[str, ...]:
    """`a,b` as variant names: at least two, each known, and no two sending the same prompt for `style` (such an
    experiment would pay to compare a prompt with itself)."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if len(set(names)) != len(names):
        raise InvalidInput(f"--variants {text}: a variant is named twice")
    if len(names) < 2:
        raise InvalidInput(f"--variants {text}: name at least two prompt variants to compare, e.g. default,flat-vector")
    variants = []
    for name in names:
        try:
            variants.append(prompt_variant(name))
        except InvalidInput as exc:
            raise InvalidInput(f"--variants: {exc}") from None
    seen: dict[str, str] = {}
    for variant in variants:
        same = seen.setdefault(variant.full_system_prompt(style), variant.name)
        if same != variant.name:
            raise InvalidInput(
                f"--variants: {variant.name} and {same} send the same prompt for style {style} "
                f"({variant.name} changes: {variant.changes})"
            )
    return names


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise InvalidInput(
            f"--name {name!r}: use 1 to 100 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def default_name(draft_year: int, style: str, variants: Sequence[str], sample: int, seed: int) -> str:
    """The name an experiment gets without --name: the same arguments give the same name, so a rerun resumes."""
    return check_name(f"{draft_year}-{style}-{'-vs-'.join(variants)}-n{sample}-seed{seed}")


def sample(player_ids: Sequence[int], size: int, seed: int) -> tuple[int, ...]:
    """`size` of the players, chosen by `seed` alone (the same roster and seed give the same sample), in id order."""
    return tuple(sorted(random.Random(seed).sample(sorted(player_ids), size)))


def check_rerun(recorded: ExperimentSpec, asked: ExperimentSpec) -> None:
    """A rerun of a name resumes it: it must ask for what was recorded (its players come from the record)."""
    differences = [
        f"{what} {theirs} (asked {ours})"
        for what, theirs, ours in (
            ("draft year", recorded.draft_year, asked.draft_year),
            ("style", recorded.style, asked.style),
            ("variants", ",".join(recorded.variants), ",".join(asked.variants)),
            ("sample", len(recorded.player_ids), len(asked.player_ids)),
            ("lane", recorded.lane, asked.lane),
        )
        if theirs != ours
    ]
    if differences:
        raise InvalidInput(
            f"experiment {recorded.name} exists with {'; '.join(differences)}: rerun it with its own settings to "
            "resume it, or choose another --name"
        )


@dataclass(frozen=True)
class ImageFacts:
    """One asset row of a variant's arm, as the report needs it."""

    player_id: int
    succeeded: bool
    cost_usd: Decimal  # the generation, paid failures included
    review_status: str
    judge_cost_usd: Decimal  # every score row of the image: each judge call was paid
    score_status: str | None  # the latest score row's status; None: never judged
    score: int | None = None
    passed: bool | None = None
    criteria: tuple[tuple[str, bool], ...] = ()


def variant_report(name: str, players: int, rows: Sequence[ImageFacts]) -> dict[str, Any]:
    """One variant's numbers. Rates count only what they can: the pass rate over scored images (not-scored ones
    are counted apart, never as a pass or a fail), the approval rate over images a reviewer decided on."""
    variant = prompt_variant(name)
    images = [row for row in rows if row.succeeded]
    scored = [row for row in images if row.score_status == SCORED]
    criteria: dict[str, list[bool]] = {}
    for row in scored:
        for criterion, result in row.criteria:
            criteria.setdefault(criterion, []).append(result)
    statuses = [row.review_status for row in images]
    approved, rejected = statuses.count(APPROVED), statuses.count(REJECTED)
    generation = sum((row.cost_usd for row in rows), Decimal(0))
    judge = sum((row.judge_cost_usd for row in rows), Decimal(0))
    passed = sum(1 for row in scored if row.passed)
    return {
        "variant": variant.name,
        "version": variant.version,
        "changes": variant.changes,
        "players": players,
        "images": len(images),
        "failed_attempts": len(rows) - len(images),
        "missing": players - len({row.player_id for row in images}),
        "scored": len(scored),
        "not_scored": sum(1 for row in images if row.score_status == NOT_SCORED),
        "unjudged": sum(1 for row in images if row.score_status is None),
        "passed": passed,
        "pass_rate": _rate(passed, len(scored)),
        "criteria": {
            criterion: {"passed": sum(results), "scored": len(results), "pass_rate": _rate(sum(results), len(results))}
            for criterion, results in sorted(criteria.items())
        },
        "mean_score": round(fmean(row.score or 0 for row in scored), 2) if scored else None,
        "pending_review": statuses.count(PENDING),
        "reviewed": approved + rejected,
        "approved": approved,
        "approval_rate": _rate(approved, approved + rejected),
        "generation_cost_usd": _usd(generation),
        "judge_cost_usd": _usd(judge),
        "cost_usd": _usd(generation + judge),
        "cost_per_approved_usd": _usd((generation + judge) / approved) if approved else None,
    }


def comparisons(variants: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each variant against the first (the baseline) on the pass rate and the approval rate, with Fisher's exact
    test: exact at any N, where a normal approximation would mislead at the sample sizes experiments use."""
    baseline, rest = variants[0], variants[1:]
    found = []
    for other in rest:
        for metric, hits, total in (("pass_rate", "passed", "scored"), ("approval_rate", "approved", "reviewed")):
            a, n1, b, n2 = baseline[hits], baseline[total], other[hits], other[total]
            p_value = fisher_exact(a, n1, b, n2) if n1 and n2 else None
            found.append(
                {
                    "metric": metric,
                    "baseline": baseline["variant"],
                    "variant": other["variant"],
                    "baseline_count": [a, n1],
                    "variant_count": [b, n2],
                    "p_value": None if p_value is None else round(p_value, 4),
                    "significant": None if p_value is None else p_value < ALPHA,
                    "note": _note(metric, baseline["variant"], other["variant"], (a, n1), (b, n2), p_value),
                }
            )
    return found


def fisher_exact(a: int, n1: int, b: int, n2: int) -> float:
    """Two-sided p-value of Fisher's exact test for a/n1 against b/n2: the probability, with the margins fixed, of
    every 2x2 table at most as likely as the observed one (R's fisher.test, with its 1e-7 relative tolerance)."""
    hits, total = a + b, n1 + n2

    def probability(x: int) -> float:
        return comb(n1, x) * comb(n2, hits - x) / comb(total, hits)

    observed = probability(a) * (1 + 1e-7)
    tables = range(max(0, hits - n2), min(hits, n1) + 1)
    return min(1.0, sum(p for p in map(probability, tables) if p <= observed))


def _note(metric: str, base: str, other: str, first: tuple[int, int], second: tuple[int, int], p: float | None) -> str:
    what = metric.replace("_", " ")
    counts = f"{what} {other} {second[0]}/{second[1]} vs {base} {first[0]}/{first[1]}"
    if p is None:
        return f"{counts}: nothing to test yet (no {'scored' if metric == 'pass_rate' else 'reviewed'} images)"
    if p < ALPHA:
        return f"{counts}: Fisher's exact p = {p:.3f}, significant at α = {ALPHA} (N = {first[1]} / {second[1]})"
    return f"{counts}: Fisher's exact p = {p:.3f}, not significant at N = {first[1]} / {second[1]} (α = {ALPHA})"


def _rate(hits: int, total: int) -> float | None:
    return round(hits / total, 4) if total else None


def _usd(value: Decimal) -> float:
    return float(round(value, 6))
