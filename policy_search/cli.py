"""``policy-search`` command line: run, resume, status, export and preview campaigns.

``policy-search run`` with no arguments is the quick-start (bundled CIFAR-10 sample, a few minutes on 2
CPU cores). Expected errors print one red line ``error: ...`` and exit with status 2 (``--debug`` shows the
traceback instead). Nothing imports this module.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Search data-augmentation policies with Ray Tune + Optuna.")
console = Console()
err_console = Console(stderr=True)

Debug = Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")]
Output = Annotated[Path, typer.Option("--output", "-o", help="Folder holding campaigns.")]


def _own_errors() -> tuple[type[BaseException], ...]:
    """This project's one-line errors: their message is shown as it is."""
    from search_spaces import PolicyError
    from search_spaces.export import ExportError
    from search_spaces.files import FileWriteError
    from trainers.data import DataError
    from trainers.engine import TrainingDiverged
    from trainers.pipelines import PipelineError

    from .campaign import CampaignError
    from .config import ConfigError

    return (ConfigError, PolicyError, DataError, ExportError, CampaignError, PipelineError, TrainingDiverged,
            FileWriteError)


def _interrupted() -> tuple[type[BaseException], ...]:
    """``CampaignInterrupted`` (a campaign stopped cleanly by Ctrl-C), if a campaign ran at all."""
    import sys

    reliability = sys.modules.get("policy_search.reliability")
    return (reliability.CampaignInterrupted,) if reliability is not None else ()


def _database_errors() -> tuple[type[BaseException], ...]:
    """SQLAlchemy's errors (storage unreachable, locked, bad URL, ...), if SQLAlchemy was imported at all."""
    import sys

    exc = sys.modules.get("sqlalchemy.exc")
    return (exc.SQLAlchemyError,) if exc is not None else ()


def _expected_errors() -> tuple[type[BaseException], ...]:
    """Failures a user can cause or meet (bad input, files, disk, database, memory): one line, exit status 2.

    Our own errors; ``OSError`` (missing or unwritable files, full disk, refused connections); ``ValueError``
    (bad values, undecodable text); YAML syntax errors; SQLAlchemy errors (``OperationalError``: the
    storage is unreachable or locked); ``MemoryError`` and torch's ``OutOfMemoryError``.
    """
    import sys

    import yaml

    torch = sys.modules.get("torch")
    oom = (torch.OutOfMemoryError,) if torch is not None and hasattr(torch, "OutOfMemoryError") else ()
    return (*_own_errors(), OSError, ValueError, yaml.YAMLError, MemoryError, *oom, *_database_errors())


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0] if lines else ""


def _error_line(exc: BaseException) -> str:
    """The one line shown for an expected error (never a traceback, never several lines)."""
    text = _first_line(exc)
    if isinstance(exc, _own_errors()):
        return text or type(exc).__name__
    kind = type(exc).__name__
    if isinstance(exc, MemoryError) or kind == "OutOfMemoryError":
        detail = f" ({kind}: {text})" if text else f" ({kind})"
        return (f"out of memory{detail}; use a smaller dataset, image or batch size (train_size, batch_size, "
                "decode_size) or fewer trials at once")
    if isinstance(exc, _database_errors()):
        return f"database: {kind}: {text}" if text else f"database: {kind}"
    return f"{kind}: {text}" if text else kind


def _guard(debug: bool, fn: Callable[[], Any], on_interrupt: Callable[[], str] | None = None) -> Any:
    """Run ``fn``; expected errors (see :func:`_expected_errors`) become one red line and exit code 2 unless
    ``debug``, which re-raises them with their traceback. A Ctrl-C (a campaign that stopped cleanly, or a
    ``KeyboardInterrupt`` elsewhere) is one yellow line saying how to go on (``on_interrupt``), exit code 130."""
    try:
        return fn()
    except KeyboardInterrupt:
        if debug:
            raise
        hint = on_interrupt() if on_interrupt is not None else ""
        err_console.print(f"interrupted (Ctrl-C){'; ' + hint if hint else ''}", style="yellow", markup=False,
                          highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None
    except _expected_errors() as exc:
        if debug:
            raise
        if isinstance(exc, _interrupted()):  # stopped cleanly: results written, the line says how to resume
            err_console.print(_first_line(exc), style="yellow", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(130) from None
        err_console.print(f"error: {_error_line(exc)}", style="red", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _resume_hint(folder: list[Path]) -> Callable[[], str]:
    """What to do after a Ctrl-C outside a clean stop: resume the campaign in ``folder[0]`` (set once known)."""

    def hint() -> str:
        from .session import tune_dir

        if folder and (tune_dir(folder[0]) / "tuner.pkl").is_file():
            return f"continue with: policy-search resume {folder[0]}"
        return "nothing to resume yet: run the command again"

    return hint


def _campaign_folder(campaign: str, output: Path) -> Path:
    from .campaign import CampaignError

    path = Path(campaign)
    for candidate in (path, output / campaign):
        if (candidate / "config.yaml").is_file():
            return candidate.resolve()
    raise CampaignError(f"no campaign '{campaign}' (looked in {path} and {output / campaign})")


def _quiet_libraries() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


class _ProgressView:
    """A rich progress bar fed by the campaign's study poller: trials done/total, best so far, ETA."""

    def __init__(self, total: int, unit: str = "trials") -> None:
        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("best {task.fields[best]}"), TextColumn("running {task.fields[running]}"),
                            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console)
        self.task = self.bar.add_task(unit, total=total, best="-", running=0)
        self.race_task: Any = None

    def __enter__(self) -> _ProgressView:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def __call__(self, p: Any) -> None:
        if getattr(p, "stage", "search") == "race":  # the confirmation race: runs done of (entries x seeds)
            if self.race_task is None:
                self.race_task = self.bar.add_task("race runs", total=p.total, best="-", running="-")
            self.bar.update(self.race_task, completed=p.done, total=p.total)
            return
        self.bar.update(self.task, completed=p.done, total=p.total, running=p.running,
                        best="-" if p.best is None else f"{p.best:.4f}")


def _race_table(race: dict[str, Any], title: str) -> None:
    """The confirmation race (``summary.json``'s ``race``) as a table, then its verdict in plain words."""
    table = Table(title=title)
    for col in ("entry", "kind", "runs", "mean val_acc", "vs best baseline (points)", "paired 95% CI"):
        table.add_column(col, justify="right" if col != "entry" else "left")
    for r in race["table"]:
        d, lo, hi = r.get("vs_best_baseline"), r.get("ci_low"), r.get("ci_high")
        table.add_row(str(r["label"]), str(r["kind"]), str(r["runs"]),
                      "-" if r.get("mean") is None else f"{r['mean']:.4f}",
                      "-" if d is None else f"{100 * d:+.2f}",
                      "-" if lo is None or hi is None else f"[{100 * lo:+.2f}, {100 * hi:+.2f}]")
    console.print(table)
    console.print(race["verdict"], markup=False, highlight=False, soft_wrap=True)


def _report(result: Any) -> None:
    counts = ", ".join(f"{k.lower()} {v}" for k, v in result.counts.items())
    best = "none (no trial completed)" if result.best_score is None else f"{result.best_score:.4f}"
    console.print(f"[bold green]done[/] in {result.wall_s:.0f} s: {counts}; best search val_acc {best}")
    if getattr(result, "race", None) is not None:
        _race_table(result.race.summary(), f"confirmation race (seeds {', '.join(map(str, result.race.seeds))})")
        note = "the race winner" if result.race.winner is not None else "no winner"
        console.print(f"best_policy.json is {note}: {result.race.winner.label if result.race.winner else '-'}")
    for key in ("best_policy", "best_schedule", "history_png", "importances_png", "preview_png", "schedule_png",
                "trials", "population", "summary"):
        if key in result.files:
            console.print(f"  {key:16s} {result.files[key]}")


@app.command()
def run(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML campaign config.")] = None,
    name: Annotated[str | None, typer.Option(help="Campaign name (folder under --output).")] = None,
    dataset: Annotated[str | None, typer.Option(help="'sample', 'cifar10-jpeg' or a folder/zip/npz.")] = None,
    space: Annotated[str | None, typer.Option(help="randaugment_plus | randaugment | autoaugment | custom.")] = None,
    objective: Annotated[str | None, typer.Option(help="finetune | full | proxy | density.")] = None,
    sampler: Annotated[str | None, typer.Option(help="tpe | random | grid.")] = None,
    trials: Annotated[int | None, typer.Option("--trials", "-n", help="Number of trials.")] = None,
    max_concurrent: Annotated[int | None, typer.Option(help="Trials running at once.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Proxy epochs per trial (objective proxy, pbt).")] = None,
    width: Annotated[int | None, typer.Option(help="Proxy model width (objective proxy, pbt).")] = None,
    target_epochs: Annotated[int | None, typer.Option(help="Epochs of the target recipe.")] = None,
    target_width: Annotated[int | None, typer.Option(help="Model width of the target recipe.")] = None,
    race_seeds: Annotated[int | None, typer.Option(help="Paired seeds of the confirmation race.")] = None,
    race: Annotated[bool | None, typer.Option("--race/--no-race", help="Run the confirmation race.")] = None,
    train_size: Annotated[int | None, typer.Option(help="Training images.")] = None,
    val_size: Annotated[int | None, typer.Option(help="Validation images.")] = None,
    cpus_per_trial: Annotated[float | None, typer.Option(help="CPUs per trial.")] = None,
    gpus_per_trial: Annotated[float | None, typer.Option(help="GPU (fraction) per trial.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for splits, sampler and training.")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Folder holding campaigns.")] = None,
    storage: Annotated[str | None, typer.Option(help="Optuna storage URL (default SQLite in the folder).")] = None,
    address: Annotated[str | None, typer.Option(help="Join this Ray cluster (default: local Ray).")] = None,
    baseline: Annotated[list[str] | None, typer.Option(help="Preset enqueued as a first trial (repeatable).")] = None,
    top_k: Annotated[int | None, typer.Option(help="Policies kept in top_k/.")] = None,
    mode: Annotated[str | None, typer.Option(help="search (Optuna + ASHA) | pbt (PBA-style schedule).")] = None,
    population: Annotated[int | None, typer.Option(help="pbt: population size.")] = None,
    interval: Annotated[int | None, typer.Option(help="pbt: epochs between perturbations.")] = None,
    attach: Annotated[bool, typer.Option(help="Run beside another campaign of this name in the --storage "
                                              "database (each keeps its own study).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    debug: Debug = False,
) -> None:
    """Run a campaign (no options: the quick-start on the bundled sample)."""

    where: list[Path] = []

    def go() -> None:
        from .campaign import run_campaign
        from .config import load_config

        overrides = {"name": name, "dataset": dataset, "space": space, "objective": objective, "sampler": sampler,
                     "num_trials": trials, "max_concurrent": max_concurrent, "proxy.epochs": epochs,
                     "proxy.width": width, "train_size": train_size, "val_size": val_size,
                     "resources.cpu": cpus_per_trial, "resources.gpu": gpus_per_trial, "seed": seed,
                     "output": str(output) if output else None, "storage": storage, "ray_address": address,
                     "baselines": baseline or None, "top_k": top_k, "mode": mode,
                     "pbt.population_size": population, "pbt.perturbation_interval": interval,
                     "target.epochs": target_epochs, "target.width": target_width, "race.seeds": race_seeds,
                     "race.enabled": race}
        cfg = load_config(config, overrides)
        where.append(cfg.folder)
        _quiet_libraries()
        t = cfg.target
        plan = (f"race: top {cfg.race.top_k} vs {len(cfg.race.baselines)} baselines x {cfg.race.seeds} seeds"
                if cfg.race.enabled else "no race")
        if cfg.mode == "pbt":
            console.print(f"campaign [bold]{cfg.name}[/]: pbt, population {cfg.pbt.population_size}, "
                          f"{cfg.proxy.epochs} epochs, perturbation every {cfg.pbt.perturbation_interval}; "
                          f"target {t.model} w{t.width} {t.epochs} epochs; {plan} -> {cfg.folder}")
        else:
            console.print(f"campaign [bold]{cfg.name}[/]: {cfg.num_trials} trials, {cfg.space} space, "
                          f"{cfg.objective} objective, {cfg.sampler} sampler; target {t.model} w{t.width} "
                          f"{t.epochs} epochs; {plan} -> {cfg.folder}")
        from .calibrate import find_calibration

        known = find_calibration(cfg)
        if known is not None:
            console.print(f"calibrated rank agreement of the {cfg.objective} objective with full training: Spearman "
                          f"{known['spearman']:+.2f} (95% CI [{known['ci_low']:+.2f}, {known['ci_high']:+.2f}], "
                          f"{known['policies']} policies)", highlight=False)
        if quiet:
            result = run_campaign(cfg, attach=attach)
        else:
            with _ProgressView(*_progress_total(cfg)) as view:
                result = run_campaign(cfg, on_progress=view, attach=attach)
        _report(result)

    _guard(debug, go, _resume_hint(where))


@app.command()
def calibrate(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML campaign config.")] = None,
    objective: Annotated[list[str] | None, typer.Option(
        help="Objective to calibrate (repeatable); finetune@P scores finetune with fraction P.")] = None,
    seeds: Annotated[int, typer.Option(help="Seeds of the full-training reference (>= 2).")] = 2,
    random_policies: Annotated[int, typer.Option(help="Random draws from the space, besides presets and grid.")] = 6,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Folder holding campaigns.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    debug: Debug = False,
) -> None:
    """Measure each objective's rank agreement with full target training on your data (>= 25 policies)."""

    def go() -> None:
        from .calibrate import run_calibration
        from .config import load_config

        cfg = load_config(config, {"output": str(output) if output else None})
        _quiet_libraries()
        names = objective or ["proxy", "finetune"]
        console.print(f"calibration of {', '.join(names)} against the target ({cfg.target.model} "
                      f"w{cfg.target.width}, {cfg.target.epochs} epochs) over {seeds} seeds")
        if quiet:
            result = run_calibration(cfg, names, seeds=seeds, num_random=random_policies)
        else:
            with _ProgressView(1, "reference") as view:
                result = run_calibration(cfg, names, seeds=seeds, num_random=random_policies, on_progress=view)
        table = Table(title=f"rank agreement with full training ({result.folder})")
        for col in ("objective", "Spearman", "bootstrap 95% CI", "policies", "ρ among the 10 best",
                    "regret of its choice (points)"):
            table.add_column(col)
        for r in result.table.itertuples():
            table.add_row(r.objective, f"{r.spearman:+.2f}", f"[{r.ci_low:+.2f}, {r.ci_high:+.2f}]", str(r.policies),
                          f"{r.top10_spearman:+.2f}", f"{r.regret_points:.2f}")
        console.print(table)

    _guard(debug, go)


@app.command()
def resume(
    campaign: Annotated[str, typer.Argument(help="Campaign name or folder.")],
    output: Output = Path("results"),
    address: Annotated[str | None, typer.Option(help="Join this Ray cluster.")] = None,
    retry_errored: Annotated[bool, typer.Option(help="Re-run trials that errored.")] = False,
    trust: Annotated[bool, typer.Option(help="Restore Ray Tune's saved state even if its signatures do not match "
                                             "(it is unpickled: only for folders you trust).")] = False,
    from_study: Annotated[bool, typer.Option(help="Continue from the study alone, in a new Tune experiment "
                                                  "(Tune's saved state is set aside, not read).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
    debug: Debug = False,
) -> None:
    """Finish an interrupted campaign (stale RUNNING trials are marked FAIL first)."""
    where: list[Path] = []

    def go() -> None:
        from .campaign import load_campaign_config, resume_campaign

        folder = _campaign_folder(campaign, output)
        where.append(folder)
        total = _progress_total(load_campaign_config(folder))
        _quiet_libraries()
        kwargs = {"resume_errored": retry_errored, "ray_address": address, "trust": trust, "from_study": from_study}
        if quiet:
            result = resume_campaign(folder, **kwargs)
        else:
            with _ProgressView(*total) as view:
                result = resume_campaign(folder, on_progress=view, **kwargs)
        _report(result)

    _guard(debug, go, _resume_hint(where))


@app.command()
def status(
    campaign: Annotated[str, typer.Argument(help="Campaign name or folder.")],
    output: Output = Path("results"),
    debug: Debug = False,
) -> None:
    """Show a campaign's trials (from trials.csv, or the live study while it runs)."""

    def go() -> None:
        import pandas as pd

        from .campaign import load_campaign_config, load_study

        folder = _campaign_folder(campaign, output)
        cfg = load_campaign_config(folder)
        if cfg.mode == "pbt":
            _pbt_status(folder, cfg)
            return
        if (folder / "trials.csv").is_file():
            df = pd.read_csv(folder / "trials.csv")
            source = "trials.csv"
        else:
            raw = load_study(cfg).trials_dataframe(attrs=("number", "value", "state", "params", "duration"))
            df = raw.rename(columns={"value": "val_acc", "state": "status"})
            df.columns = [c.replace("params_", "param_") for c in df.columns]
            source = "study (running)"
        params = [c for c in df.columns if c.startswith("param_")]
        table = Table(title=f"{cfg.name}: {len(df)}/{cfg.num_trials} trials ({source})")
        for col in ["number", "status", "val_acc", *params]:
            table.add_column(col.removeprefix("param_"), justify="right")
        for _, row in df.iterrows():
            table.add_row(*[_cell(row.get(c)) for c in ["number", "status", "val_acc", *params]])
        console.print(table)
        errors = df[df["error"].fillna("").astype(str).str.len() > 0] if "error" in df else df.iloc[:0]
        for _, row in errors.iterrows():  # the reason of every failed trial, one line each, never cut
            console.print(f"trial {_cell(row.get('number'))} ({row['trial_id']}) {row['status']}: {row['error']}",
                          markup=False, highlight=False, soft_wrap=True)
        if (folder / "summary.json").is_file():
            summary = json.loads((folder / "summary.json").read_text())
            console.print(f"best search val_acc {summary['best_score']} (trial {summary['best_trial']}); "
                          f"counts {summary['counts']}; wall {summary['wall_s']} s")
            if summary.get("noise_warning"):
                console.print(f"warning: {summary['noise_warning']}", markup=False, highlight=False)
            if summary.get("race"):
                _race_table(summary["race"], f"confirmation race (seeds {summary['race']['seeds']})")

    _guard(debug, go)


def _progress_total(cfg: Any) -> tuple[int, str]:
    """What the progress bar counts: trials, or member-epochs of a pbt population."""
    if cfg.mode == "pbt":
        return cfg.pbt.population_size * cfg.proxy.epochs, "member-epochs"
    return cfg.num_trials, "trials"


def _pbt_status(folder: Path, cfg: Any) -> None:
    """Population table (per member: status, epoch, val_acc, exploits) and the best member's lineage."""
    from .pbt import member_table, population_table

    members = member_table(population_table(folder), cfg.proxy.epochs)
    source = "population.csv" if (folder / "population.csv").is_file() else "running"
    table = Table(title=f"{cfg.name}: pbt population {len(members)}/{cfg.pbt.population_size} ({source})")
    columns = ["member", "status", "epoch", "val_acc", "best_val_acc", "exploits"]
    for col in columns:
        table.add_column(col, justify="right")
    for _, row in members.iterrows():
        table.add_row(*[_cell(row.get(c)) for c in columns])
    console.print(table)
    if (folder / "summary.json").is_file():
        summary = json.loads((folder / "summary.json").read_text())
        lineage = " -> ".join(f"{s['member']} [{s['start_epoch']}, {s['end_epoch']})" for s in summary["lineage"] or [])
        console.print(f"best val_acc {summary['best_score']} (member {summary['best_member']}); "
                      f"{summary['perturbations']} perturbations; wall {summary['wall_s']} s")
        console.print(f"lineage: {lineage or '-'}")
        if summary.get("race"):
            _race_table(summary["race"], f"confirmation race (seeds {summary['race']['seeds']})")


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return f"{value:.4f}" if isinstance(value, float) and not float(value).is_integer() else str(value)


@app.command()
def export(
    campaign: Annotated[str, typer.Argument(help="Campaign name or folder.")],
    top: Annotated[int, typer.Option(help="How many ranked policies.")] = 3,
    fmt: Annotated[str, typer.Option("--format", "-f", help="json | torchvision | kornia | albumentations | timm "
                                     "(torchvision/kornia: one self-contained .py each).")] = "json",
    out: Annotated[Path | None, typer.Option(help="Target folder (default <campaign>/export/<format>).")] = None,
    output: Output = Path("results"),
    debug: Debug = False,
) -> None:
    """Export the top policies of a campaign."""

    def go() -> None:
        from .export import export_campaign

        for path in export_campaign(_campaign_folder(campaign, output), top=top, fmt=fmt, out=out):
            console.print(str(path))

    _guard(debug, go)


@app.command()
def preview(
    policy: Annotated[str, typer.Argument(help="Policy JSON file or preset name.")],
    out: Annotated[Path, typer.Option(help="PNG to write.")] = Path("preview.png"),
    dataset: Annotated[str, typer.Option(help="Images to augment.")] = "sample",
    n: Annotated[int, typer.Option(help="Images per row.")] = 8,
    seed: Annotated[int, typer.Option(help="Augmentation seed.")] = 0,
    debug: Debug = False,
) -> None:
    """Render a grid of images augmented by a policy."""

    def go() -> None:
        from search_spaces import load_policy
        from trainers.data import load_dataset

        from .export import preview_policy

        loaded = load_policy(policy)
        images = load_dataset(dataset).images
        step = max(1, len(images) // n)
        console.print(str(preview_policy(loaded, images[::step][:n], out, n=n, seed=seed)))

    _guard(debug, go)


class _StageBars:
    """One rich progress bar per pipeline stage (epochs done/total, last validation accuracy, ETA)."""

    def __init__(self) -> None:
        self.bar = Progress(TextColumn("[bold]{task.description:12s}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("val_acc {task.fields[val]}"), TimeElapsedColumn(), TextColumn("ETA"),
                            TimeRemainingColumn(), console=console)
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> _StageBars:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def __call__(self, event: Any) -> None:
        if event.stage not in self.tasks:
            self.tasks[event.stage] = self.bar.add_task(event.stage, total=event.epochs, completed=event.done,
                                                        val="-")
        val = event.metrics.val_acc if event.metrics is not None else None
        fields = {"val": f"{val:.4f}"} if val is not None else {}
        self.bar.update(self.tasks[event.stage], completed=event.done, **fields)


def _parse_settings(items: list[str]) -> dict[str, Any]:
    import yaml

    from trainers.pipelines import PipelineError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise PipelineError(f"--set {item!r}: expected KEY=VALUE")
        out[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return out


@app.command()
def train(
    pipeline: Annotated[str, typer.Argument(help="transfer | distill | self-train.")],
    policy: Annotated[str | None, typer.Option(help="Policy file or preset to train with.")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML file of pipeline settings.")] = None,
    setting: Annotated[list[str] | None, typer.Option("--set", help="KEY=VALUE pipeline setting (repeatable).")] = None,
    dataset: Annotated[str | None, typer.Option(help="'sample', 'cifar10-jpeg' or a folder/zip/npz.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for splits and training.")] = None,
    name: Annotated[str | None, typer.Option(help="Run name (folder under --output).")] = None,
    output: Output = Path("results"),
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 (default: CUDA if available).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run from its last checkpoint.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    debug: Debug = False,
) -> None:
    """Train a full pipeline with a policy; settings: the pipeline's config fields (see the README)."""

    def go() -> None:
        import yaml

        from trainers.engine import select_device
        from trainers.pipelines import PipelineError, make_config
        from trainers.pipelines import pipeline as lookup
        from trainers.pipelines.common import check_name

        if name is not None:
            check_name(name)  # before anything is read or written: a name never leaves --output
        values: dict[str, Any] = {}
        if config is not None:
            loaded = yaml.safe_load(config.read_text(encoding="utf-8"))
            if not isinstance(loaded, dict):
                raise PipelineError(f"{config}: expected a mapping of settings")
            values.update(loaded)
        values.update(_parse_settings(setting or []))
        values.update({k: v for k, v in {"policy": policy, "dataset": dataset, "seed": seed}.items() if v is not None})
        cfg = make_config(pipeline, values)
        _, run_fn = lookup(pipeline)
        console.print(f"{pipeline}: policy {getattr(cfg, 'policy', None)}, dataset {getattr(cfg, 'dataset', '?')}")
        kwargs = {"output": output, "name": name, "resume": resume, "device": select_device(device)}
        if quiet:
            final = run_fn(cfg, **kwargs)
        else:
            with _StageBars() as bars:
                final = run_fn(cfg, reporter=bars, **kwargs)
        shown = {k: v for k, v in final.items() if isinstance(v, int | float | str) and k != "folder"}
        console.print("[bold green]done[/]: " + ", ".join(f"{k} {_cell(v)}" for k, v in shown.items()))
        console.print(f"  results  {final['folder']}")

    _guard(debug, go)
