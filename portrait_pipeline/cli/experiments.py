"""`portrait-pipeline experiment run | report | list`: prompt experiments on the command line.

`run` generates the same sample of players under each variant, one Dagster run per variant (the `generate`
path: same partition, same engine, same lanes), one variant after the other: two variants at once would claim the
same (player, style) and skip each other's players.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING, Any

from portrait_pipeline import experiments
from portrait_pipeline.audit import experiments as records
from portrait_pipeline.audit import queries
from portrait_pipeline.audit.models import utcnow
from portrait_pipeline.errors import InvalidInput
from portrait_pipeline.model_registry import IMAGE_SIZES, usd
from portrait_pipeline.prompts import PROMPT_VARIANTS, prompt_variant
from portrait_pipeline.styles import STYLES

if TYPE_CHECKING:
    from portrait_pipeline.cli.launch import GenerationPlan
    from portrait_pipeline.cli.main import Context


def add_commands(commands: Any) -> None:
    """The `experiment` command and its subcommands, on the main parser's subcommands."""
    experiment = commands.add_parser("experiment", help="prompt experiments: the same players under prompt variants")
    sub = experiment.add_subparsers(dest="experiment_command", required=True, parser_class=type(experiment))
    run = sub.add_parser("run", help="generate a sample of a draft year under each variant (a rerun resumes)")
    run.add_argument("--draft-year", type=int, required=True, help="the draft class to sample, e.g. 2025")
    run.add_argument("--style", default="default", help=f"{', '.join(STYLES)} (default: default)")
    run.add_argument("--variants", required=True, help=f"two or more of {', '.join(PROMPT_VARIANTS)}, comma-separated")
    run.add_argument("--sample", type=int, required=True, metavar="N", help="players to sample from the draft year")
    run.add_argument("--name", help="the experiment's name (default: made from the arguments, so a rerun resumes)")
    run.add_argument("--seed", type=int, default=0, help="picks the sample: same roster and seed, same players")
    run.add_argument("--size", default="1K", help=f"image size: {', '.join(IMAGE_SIZES)} (default 1K)")
    run.add_argument("--batch", action="store_true", help="through Gemini's Batch API: half the price")
    run.add_argument("--dry-run", action="store_true", help="show the sample, the variants and the cost; write nothing")
    report = sub.add_parser("report", help="per variant: pass rates, mean score, approval rate, cost per approval")
    report.add_argument("name")
    report.add_argument("--json", action="store_true", help="the stored report as JSON")
    sub.add_parser("list", help="experiments, their variants and when they were last reported")


def cmd_run(args: argparse.Namespace, ctx: Context) -> int:
    from portrait_pipeline.cli import launch
    from portrait_pipeline.cli.main import check_storage, preflight
    from portrait_pipeline.interrupts import stop_on_signals

    spec, resuming = _spec(args, ctx)
    plans = _plans(ctx, spec, args.size)
    preflight(ctx, plans[0][1].image_size, False, args.dry_run)
    if args.dry_run:
        print(render_dry_run(spec, resuming, args.seed, plans))
        return 0
    check_storage(ctx)
    if not resuming:
        with ctx.database.session() as db:
            records.create(db, spec)
    started, partitions = time.monotonic(), []
    interactive = sys.stdout.isatty()
    with stop_on_signals() as stop:
        for variant, plan in plans:
            summary = launch.run_generation(ctx.instance, ctx.resources, plan, interactive=interactive, stop=stop)
            for partition in summary.partitions:
                partition.partition_key = variant  # one partition, one run per variant: the variant tells them apart
            partitions += summary.partitions
    storage = ctx.resources.storage.get_storage().location
    interrupted = stop.reason if stop.requested else None
    combined = launch.GenerationSummary(partitions, time.monotonic() - started, storage, interrupted, stop.signum)
    print(launch.render_summary(combined))
    print(
        f"experiment {spec.name}: its images wait for review (`portrait-pipeline review list`); "
        f"then `portrait-pipeline experiment report {spec.name}`"
    )
    return combined.exit_status


def _spec(args: argparse.Namespace, ctx: Context) -> tuple[experiments.ExperimentSpec, bool]:
    """The experiment asked for, checked; a name already recorded resumes with its recorded players."""
    from portrait_pipeline.cli.launch import style_flag

    style = style_flag(args.style)
    variants = experiments.parse_variants(args.variants, style)
    if args.sample < 1:
        raise InvalidInput(f"--sample {args.sample}: use a positive number of players")
    name = experiments.check_name(args.name) if args.name else None
    name = name or experiments.default_name(args.draft_year, style, variants, args.sample, args.seed)
    lane = "batch" if args.batch else "standard"
    year_key = queries.draft_year_key(args.draft_year)
    with ctx.database.session() as db:
        existing = records.find(db, name)
        players = [player.id for player in queries.players_in_draft_year(db, year_key)]
        if existing is None and not players:
            years = ", ".join(queries.draft_year_keys(db)) or "none (import a roster first)"
            raise InvalidInput(f"--draft-year {args.draft_year}: no players; draft years in the roster: {years}")
        if existing is None and args.sample > len(players):
            raise InvalidInput(f"--sample {args.sample}: draft year {args.draft_year} has only {len(players)} players")
        chosen = experiments.sample(players, min(args.sample, len(players)), args.seed)
        asked = experiments.ExperimentSpec(name, args.draft_year, style, variants, chosen, lane)
        if existing is None:
            return asked, False
        recorded = records.spec_of(existing)
        experiments.check_rerun(recorded, asked)
        return recorded, True


def _plans(ctx: Context, spec: experiments.ExperimentSpec, size: str) -> list[tuple[str, GenerationPlan]]:
    """One plan per variant: the sample's players without an image in that variant's arm yet."""
    from portrait_pipeline.cli.launch import GenerationPlan, PartitionLaunch
    from portrait_pipeline.defs.config import PortraitRunConfig, partition_request
    from portrait_pipeline.defs.partitions import portrait_partition_key
    from portrait_pipeline.generation.partition import PartitionPlan, plan_partition
    from portrait_pipeline.model_registry import parse_image_size

    gemini = ctx.resources.gemini
    pricing, image_size = gemini.image_pricing(), parse_image_size(size, gemini.model)
    key = str(portrait_partition_key(queries.draft_year_key(spec.draft_year), spec.style))
    plans = []
    with ctx.database.session() as db:
        for variant in spec.variants:
            todo = records.players_to_generate(db, spec, variant)
            config = PortraitRunConfig(
                player_ids=todo,
                image_size=size,
                run_key=queries.experiment_run_key(spec.name, variant),
                notes=f"prompt experiment {spec.name}",
                lane="batch" if spec.lane == "batch" else "standard",
                prompt_variant=variant,
            )
            request = partition_request(config, key, gemini.model)
            # No players left: an empty plan (player_ids [] would mean the whole draft year).
            plan = (
                plan_partition(db, ctx.resources.storage.get_storage(), request, pricing)
                if todo
                else PartitionPlan(request, pricing, [], [])
            )
            label = f"experiment {spec.name}, variant {variant}"
            plans.append((variant, GenerationPlan(label, pricing, image_size, [PartitionLaunch(config, plan)])))
    return plans


def render_dry_run(
    spec: experiments.ExperimentSpec, resuming: bool, seed: int, plans: list[tuple[str, GenerationPlan]]
) -> str:
    first = plans[0][1]
    lines = [
        f"Dry run of experiment {spec.name} ({'resuming: its recorded players' if resuming else f'new, seed {seed}'}):"
        f" draft year {spec.draft_year}, style {spec.style}, {len(spec.player_ids)} players, lane {spec.lane}; "
        f"model {first.model}, size {first.image_size}. Nothing generated, nothing written.",
        f"players: {', '.join(map(str, spec.player_ids))}",
        f"{'variant':<20}{'version':<12}{'generate':>9}{'done':>6}{'cost':>10}  changes",
    ]
    for variant, plan in plans:
        todo = sum(len(launch.plan.to_generate) for launch in plan.partitions)
        cost = plan.total_cost("batch" if spec.lane == "batch" else "standard")
        about = prompt_variant(variant)
        lines.append(
            f"{variant:<20}{about.version:<12}{todo:>9}{len(spec.player_ids) - todo:>6}{usd(cost, 2):>10}  "
            f"{about.changes}"
        )
    lines.append("Every variant's images wait for review and never replace a player's live portrait.")
    return "\n".join(lines)


def cmd_report(args: argparse.Namespace, ctx: Context) -> int:
    at = utcnow()
    with ctx.database.session() as db:
        experiment = records.named(db, args.name)
        report = records.build_report(db, experiment, at)
        records.store_report(db, experiment, report, at)
    print(json.dumps(report, indent=2) if args.json else render_report(report))
    return 0


def render_report(report: dict[str, Any]) -> str:
    """The report as tables: one line per variant, the criteria side by side, then the significance notes."""
    arms = report["variants"]
    lines = [
        f"Experiment {report['experiment']}: draft year {report['draft_year']}, style {report['style']}, "
        f"{report['players']} players, lane {report['lane']} (reported {report['reported_at']})",
        f"{'variant':<20}{'version':<12}{'images':>7}{'failed':>7}{'scored':>7}{'no score':>9}{'pass':>13}"
        f"{'mean':>7}{'approved':>15}{'cost':>10}{'$/approved':>11}",
    ]
    for arm in arms:
        lines.append(
            f"{arm['variant']:<20}{arm['version']:<12}{arm['images']:>7}{arm['failed_attempts']:>7}{arm['scored']:>7}"
            f"{arm['not_scored'] + arm['unjudged']:>9}{_share(arm['passed'], arm['scored']):>13}"
            f"{_number(arm['mean_score']):>7}{_share(arm['approved'], arm['reviewed']):>15}"
            f"{'$' + format(arm['cost_usd'], '.2f'):>10}{_money(arm['cost_per_approved_usd']):>11}"
        )
    criteria = sorted({name for arm in arms for name in arm["criteria"]})
    if criteria:
        lines.append("criteria (passed / scored):")
        lines.append(f"  {'criterion':<26}" + "".join(f"{arm['variant']:>20}" for arm in arms))
        for name in criteria:
            cells = [arm["criteria"].get(name, {"passed": 0, "scored": 0}) for arm in arms]
            lines.append(f"  {name:<26}" + "".join(f"{_share(c['passed'], c['scored']):>20}" for c in cells))
    lines += [f"note: {comparison['note']}" for comparison in report["comparisons"]]
    lines.append("no score = the judge left no score (its row says why) or has not judged the image yet")
    return "\n".join(lines)


def cmd_list(args: argparse.Namespace, ctx: Context) -> int:
    with ctx.database.session() as db:
        found = [(experiment, records.spec_of(experiment)) for experiment in records.all_experiments(db)]
    width = max([len(spec.name) for _, spec in found] + [4]) + 2
    print(f"{'name':<{width}}{'draft':<7}{'style':<9}{'players':>8}  {'lane':<10}{'reported (UTC)':<18}variants")
    for experiment, spec in found:
        reported = f"{experiment.reported_at:%Y-%m-%d %H:%M}" if experiment.reported_at else "-"
        print(
            f"{spec.name:<{width}}{spec.draft_year:<7}{spec.style:<9}{len(spec.player_ids):>8}  {spec.lane:<10}"
            f"{reported:<18}{', '.join(spec.variants)}"
        )
    print(f"{len(found)} experiment(s)")
    return 0


def _share(hits: int, total: int) -> str:
    return f"{hits}/{total} ({hits / total:.0%})" if total else "-"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _money(value: float | None) -> str:
    return "-" if value is None else f"${value:.3f}"
