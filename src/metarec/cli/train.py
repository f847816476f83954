"""``metarec train``: meta-train a model; by default the automatic recipe chooses the dataset-dependent settings."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import List, Optional

import typer

from metarec._io import recover_dir
from metarec.cli.options import (ATTRIBUTE_OPTION, COLUMN_OPTION, DATA_DIR_OPTION, DATASET_OPTION, ITEMS_OPTION,
                                 PROTOCOL_OPTION, RATING_SCALE_OPTION, SPLIT_DIR_OPTION, USERS_OPTION,
                                 console, data_overrides, errors, layered_run_config, process_threads,
                                 progress_bars, split_of)
from metarec.cli.presets import PRESET_OPTION
from metarec.errors import MetarecError


def check_run_folder(out: Path, resume: bool, overwrite: bool, settings_given: list[str]) -> None:
    """A run folder holds one run: a new run never lands silently in an old one's folder, and a resumed
    run continues with the settings its config.toml records (flags that would change them are refused)."""
    if resume:
        if overwrite:
            raise MetarecError("--resume continues the run in --out; --overwrite replaces it: give one")
        # a save killed between its two renames left last/ as its backup: put it back before looking (here,
        # once, before any rank of a distributed run reads the checkpoint)
        recover_dir(out / "last")
        from metarec.meta.search_journal import SearchJournal

        searching = SearchJournal(out / "search").exists()  # a recipe search that was killed: it resumes
        if not searching and (not (out / "config.toml").is_file() or not (out / "last").is_dir()):
            raise MetarecError(f"{out}: no run to resume (config.toml and last/ are missing)")
        if settings_given:
            raise MetarecError(f"--resume continues {out} with the settings in its config.toml; "
                               f"{', '.join(settings_given)} would change them (train into a new --out instead)")
        return
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            raise MetarecError(f"{out} already holds a run: --resume continues it, --overwrite replaces it")
        if out.is_dir():
            shutil.rmtree(out)
        else:
            out.unlink()


def epoch_description(history: list[dict]) -> str:
    """The epochs bar's label after an epoch: its mean training loss and validation MAE (the selection
    score), so a run that diverges or stops improving shows it while it runs."""
    if not history:
        return "epochs"
    last = history[-1]
    loss = last.get("train_loss")
    loss_text = "n/a" if loss is None or loss != loss else f"{loss:.4f}"
    return f"epochs (epoch {last['epoch']}: train loss {loss_text}, validation MAE {last['val_mae']:.4f})"


def _train_flags_fix(outer_lr, query_loss, item_id_embedding, item_id_residual) -> tuple[str, ...]:
    """Searched settings a command-line flag sets: the recipe leaves them as given."""
    fixed = []
    if outer_lr is not None:
        fixed.append("meta.outer_lr")
    if query_loss is not None:
        fixed.append("meta.query_loss")
    if item_id_embedding is not None or item_id_residual is not None:
        fixed.append("model.item_ids")
    return tuple(fixed)


def train(
    out: Path = typer.Option(..., "--out", help="Run folder (config, metrics.jsonl, checkpoints, recipe.json)."),
    config: Optional[Path] = typer.Option(None, "--config", help="A run.toml whose values override the recipe; "
                                          "the searched settings it sets are not searched."),
    preset: Optional[str] = PRESET_OPTION,
    search: bool = typer.Option(True, "--search/--no-search", help="Choose the dataset-dependent settings on "
                                "validation users (outer lr, item ids, id dropout, query loss) [default: search]."),
    dataset: Optional[str] = DATASET_OPTION,
    data_dir: Optional[str] = DATA_DIR_OPTION,
    users: Optional[str] = USERS_OPTION,
    items: Optional[str] = ITEMS_OPTION,
    column: List[str] = COLUMN_OPTION,
    attribute: List[str] = ATTRIBUTE_OPTION,
    rating_scale: Optional[str] = RATING_SCALE_OPTION,
    protocol: Optional[str] = PROTOCOL_OPTION,
    split_dir: Optional[str] = SPLIT_DIR_OPTION,
    model: Optional[str] = typer.Option(None, help="feature-mlp, neural-cf, attention or melu: a plain preset "
                                        "instead of the recipe (no search)."),
    algorithm: Optional[str] = typer.Option(None, help="maml, fomaml, reptile or metasgd (a plain preset, no search)."),
    adapt: Optional[str] = typer.Option(None, help="Parameters adapted per user: all, head or embeddings."),
    inner_steps: Optional[int] = typer.Option(None, help="Inner gradient steps."),
    inner_lr: Optional[float] = typer.Option(None, help="Inner learning rate alpha."),
    outer_lr: Optional[float] = typer.Option(None, help="Outer (Adam) learning rate beta (not searched then)."),
    l2: Optional[float] = typer.Option(None, help="L2 weight lambda on the meta-parameters."),
    meta_batch_size: Optional[int] = typer.Option(None, help="Tasks per meta-batch."),
    query_loss: Optional[str] = typer.Option(None, help="Outer loss on the query set: squared, absolute or huber."),
    item_id_embedding: Optional[bool] = typer.Option(None, "--item-ids/--no-item-ids", help="Learn id vectors of warm items."),
    item_id_residual: Optional[bool] = typer.Option(
        None, "--item-id-residual/--item-id-input",
        help="neural-cf: add item id vectors to the item tower's output (a new item's vector is then the "
             "attributes' prediction) instead of feeding them into it."),
    epochs: Optional[int] = typer.Option(None, help="Maximum epochs."),
    patience: Optional[int] = typer.Option(None, help="Epochs without validation improvement before stopping."),
    seed: Optional[int] = typer.Option(None, help="Seed of the split, the initialisation and the batch order."),
    members: Optional[int] = typer.Option(None, help="Train an ensemble of this many meta-learners (the chosen "
                                          "configuration from other seeds, RUNDIR/members/M); a new user's "
                                          "predictions are their mean. Costs M trainings and M adaptations per "
                                          "request; 5 gave the few-shot results in docs/results.md [default: 1]."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda or cuda:N."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the run already in --out."),
    log_to: List[str] = typer.Option([], "--log-to", help="Also send each epoch's metrics to tensorboard "
                                     "(RUNDIR/tensorboard) or mlflow (RUNDIR/mlruns, or $MLFLOW_TRACKING_URI); "
                                     "repeatable."),
    feedback: str = typer.Option("explicit", help="explicit (ratings) or implicit (plays, clicks: the positives, "
                                 "ranked against the whole catalogue; the implicit benchmark's meta-learner, selected "
                                 "on validation nDCG@20)."),
    positive_threshold: Optional[float] = typer.Option(None, help="With --feedback implicit: ratings >= this are the "
                                                       "positives; default: every interaction is one."),
) -> None:
    """Meta-train a model; the best checkpoint on validation users goes to RUNDIR/best.

    By default the automatic recipe chooses the settings that differ between datasets on validation users
    (recorded in RUNDIR/recipe.json); --config / flags fix what they set."""
    if feedback not in ("explicit", "implicit"):
        raise typer.BadParameter(f"expected explicit or implicit, got {feedback!r}", param_hint="--feedback")
    if feedback == "explicit" and positive_threshold is not None:
        raise typer.BadParameter("only with --feedback implicit", param_hint="--positive-threshold")
    with errors():
        if feedback == "implicit":
            from metarec.cli.train_implicit import refused_flags, train_implicit

            refused_flags({"--preset": preset is not None, "--no-search": not search, "--split-dir": split_dir is not None,
                           "--model": model is not None, "--algorithm": algorithm is not None,
                           "--device": device not in (None, "cpu")})
            given = {"--config": config, "--dataset": dataset, "--data-dir": data_dir, "--users": users,
                     "--items": items, "--column": column or None, "--attribute": attribute or None,
                     "--rating-scale": rating_scale, "--protocol": protocol, "--adapt": adapt,
                     "--inner-steps": inner_steps, "--inner-lr": inner_lr, "--outer-lr": outer_lr, "--l2": l2,
                     "--meta-batch-size": meta_batch_size, "--query-loss": query_loss,
                     "--item-ids": item_id_embedding, "--item-id-residual": item_id_residual, "--epochs": epochs,
                     "--patience": patience, "--seed": seed, "--positive-threshold": positive_threshold,
                     "--members": members}
            check_run_folder(out, resume, overwrite, [flag for flag, value in given.items() if value is not None])
            if resume:
                from metarec.cli.train_implicit import resume_implicit

                return resume_implicit(out, log_to)
            overrides = {"model": dict(item_id_embedding=item_id_embedding, item_id_residual=item_id_residual),
                         "meta": dict(adapt=adapt, inner_steps=inner_steps, inner_lr=inner_lr, outer_lr=outer_lr, l2=l2,
                                      meta_batch_size=meta_batch_size, query_loss=query_loss),
                         "implicit": dict(epochs=epochs, patience=patience)}
            overrides = {k: {n: v for n, v in values.items() if v is not None} for k, values in overrides.items()}
            data = data_overrides(dataset, data_dir, users, items, column, attribute, rating_scale)
            return train_implicit(out, data, positive_threshold, config, {k: v for k, v in overrides.items() if v},
                                  protocol, seed, log_to, members)
        from metarec.meta.distributed import is_main_process
        from metarec.meta.loggers import make_logger
        from metarec.meta.run import RunConfig
        from metarec.meta.trainer import Trainer

        main = is_main_process()  # under torchrun rank 0 alone checks (and clears) --out, prints and draws bars
        console.quiet = console.quiet or not main
        settings = {"--config": config, "--preset": preset, "--dataset": dataset, "--data-dir": data_dir,
                    "--users": users, "--items": items, "--column": column or None, "--attribute": attribute or None,
                    "--rating-scale": rating_scale, "--protocol": protocol, "--split-dir": split_dir, "--model": model,
                    "--algorithm": algorithm, "--adapt": adapt, "--inner-steps": inner_steps, "--inner-lr": inner_lr,
                    "--outer-lr": outer_lr, "--l2": l2, "--meta-batch-size": meta_batch_size,
                    "--query-loss": query_loss, "--item-ids": item_id_embedding, "--item-id-residual": item_id_residual,
                    "--epochs": epochs, "--patience": patience, "--seed": seed, "--members": members}
        if preset is not None:  # an unknown name fails before --overwrite removes anything
            from metarec.meta.recipe import preset_dict

            preset_dict(preset)
        if main:
            check_run_folder(out, resume, overwrite, [flag for flag, value in settings.items() if value is not None])
        journal = None
        if resume:
            from metarec.meta.search_journal import SearchJournal

            journal = SearchJournal(out / "search")
            if journal.exists():  # the recipe search was killed: it continues from its journal
                from metarec.meta.distributed import launched

                if launched():  # every rank would write the one journal
                    raise MetarecError(f"{out}: a recipe search resumes in one process, not under torchrun")
                cfg, fixed = journal.settings()
                search = True
            else:
                cfg, journal, search = RunConfig.from_toml(out / "config.toml"), None, False
        else:
            data = data_overrides(dataset, data_dir, users, items, column, attribute, rating_scale)
            cfg, fixed = layered_run_config(config, preset, model, algorithm, data,
                                            dict(protocol=protocol, seed=seed, split_dir=split_dir))
            search = search and model is None and algorithm is None  # a plain preset is trained as it is
            fixed = (*fixed, *_train_flags_fix(outer_lr, query_loss, item_id_embedding, item_id_residual))
            cfg = cfg.override("model", item_id_embedding=item_id_embedding, item_id_residual=item_id_residual)
            cfg = cfg.override("meta", adapt=adapt, inner_steps=inner_steps, inner_lr=inner_lr, outer_lr=outer_lr, l2=l2,
                               meta_batch_size=meta_batch_size, query_loss=query_loss)
            cfg = cfg.override("train", epochs=epochs, patience=patience, seed=seed, device=device, members=members)
        process_threads(cfg.train.threads)
        if cfg.data.feedback == "implicit" or cfg.model.implicit:
            raise MetarecError("the configuration is an implicit-feedback run's (data.feedback / model.implicit): "
                               "train it with --feedback implicit")
        if device and device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise MetarecError(f"--device {device}: CUDA is not available on this machine")
        bars = progress_bars()
        bars.disable = bars.disable or not main
        with bars as progress, make_logger(log_to if main else (), out) as loggers:
            if search:
                from metarec._io import write_json
                from metarec.meta.distributed import launched
                from metarec.meta.recipe import choose_recipe
                from metarec.meta.search_journal import SearchJournal

                split = split_of(cfg)
                if journal is None and main and not launched():  # (under torchrun a killed search starts over)
                    journal = SearchJournal(out / "search")
                bar = progress.add_task("choosing the recipe on validation users (trainings)", total=None)

                def step(description: str, done: int, total: int) -> None:
                    progress.update(bar, completed=done, total=total)

                chosen = choose_recipe(split, cfg, fixed=fixed, progress=step, journal=journal)
                trainer = chosen.trainer
                loggers.log_params(chosen.config.to_dict())
                loggers.log_history(trainer.history)  # the recipe trained in memory: its epochs, sent now
                if main:
                    write_json(out / "recipe.json", chosen.to_dict())
                trainer.write_run(out)
                if journal is not None:  # the run is written: a resume now continues it, not the search
                    journal.remove()
                state = trainer.state
                console.print("recipe (chosen on validation users): "
                              + ", ".join(f"{k} = {v}" for k, v in min(chosen.trials, key=lambda t: t.val_score)
                                          .settings.items()), highlight=False)
                console.print(f"best epoch {state['best_epoch']}: validation score {state['best_val_mae']:.4f} "
                              f"({state['epoch']} epochs, {len(chosen.trials)} trials); run folder {out}")
                _train_members(chosen.config, split, out, progress)
                return
            bar = progress.add_task("meta-training", total=None)
            epochs_bar = progress.add_task("epochs", total=cfg.train.epochs)

            def report(stage: str, done: int, total: int) -> None:
                if stage == "train":
                    progress.update(bar, completed=done, total=total)
                elif stage == "epoch":
                    progress.update(epochs_bar, completed=done, description=epoch_description(trainer.history))
                    loggers.log_epoch(trainer.history[-1])
                else:
                    progress.update(epochs_bar, completed=done)

            trainer = Trainer(cfg, run_dir=out, progress=report)
            loggers.log_params(cfg.to_dict())
            if resume:
                trainer.resume(out / "last")
            result = trainer.fit()
            console.print(f"best epoch {result.best_epoch}: validation MAE {result.best_val_mae:.4f} "
                          f"({result.epochs_run} epochs); run folder {out}")
            _train_members(cfg, trainer.split, out, progress)


def _train_members(config, split, out: Path, progress) -> None:
    """The ensemble's other members (``train.members`` > 1; :mod:`metarec.meta.ensemble`), after the run."""
    if config.train.members < 2:
        return
    from metarec.meta.ensemble import train_members

    bar = progress.add_task(f"ensemble: training {config.train.members - 1} more members", total=config.train.members - 1)
    train_members(config, split, out, progress=lambda done, total: progress.update(bar, completed=done, total=total))
    console.print(f"ensemble of {config.train.members} meta-learners: the others in {out / 'members'}")
