"""ScoreModule: training with a loss component and an EMA of the weights, and PDS sampling for predict."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
from typing import Any, Iterable

import lightning as L
import torch
from torch import nn

from pds_lightning.alpha import AlphaCache, log_alpha_choice, resolve_alpha
from pds_lightning.checkpoints import SETTINGS_HPARAMS, load_module, module_from_hyper_parameters
from pds_lightning.classpath import spec_of
from pds_lightning.data.seeds import derived_seed, seed_values
from pds_lightning.images import to_model_space, to_unit_range
from pds_lightning.likelihood import LikelihoodSettings, bits_per_dim_of_batch
from pds_lightning.losses import LEGACY_DSM_ARGUMENTS, Loss, loss_with_legacy_arguments
from pds_lightning.models.checkpoint import check_finite_weights, state_dict_mismatch
from pds_lightning.models.score import LabelledScore, ScoreModel
from pds_lightning.optim import LEGACY_ADAM_ARGUMENTS, Optimizer, optimizer_with_legacy_arguments
from pds_lightning.sampling import PC, Sampler, generate
from pds_lightning.sde import SDE, VESDE
from pds_lightning.statistics import ImageStatistics

#: The checkpoint key of the seed every training draw derives from (`ScoreModule.step_draws`).
DRAW_SEED_KEY = "draw_seed"


class NonFiniteLossError(RuntimeError):
    """The training loss is NaN / Inf at global step `step`: fit stops before that step's update, so no NaN reaches
    the weights and the checkpoints already saved stay the last good ones."""

    def __init__(self, step: int, loss: float | None):
        self.step = step
        value = "non-finite on another rank" if loss is None else f"{loss}"
        super().__init__(f"fit stopped: the training loss is {value} at global step {step}, before that step's "
                         "update (the weights and the saved checkpoints are those of earlier steps); check the data "
                         "for NaN/Inf, or lower model.optimizer's lr / raise its warmup, then resume with --ckpt_path "
                         "last")


def ema_decay_at(decay: float, num_updates: int) -> float:
    """score_sde's EMA warm-up: the effective decay grows as (1 + n) / (10 + n) until it reaches `decay`."""
    return min(decay, (1 + num_updates) / (10 + num_updates))


class ScoreModule(L.LightningModule):
    """A score network trained with `loss` (a pds_lightning.losses.Loss; default score_sde's DSMLoss); samples
    with the EMA weights.

    The preconditioner statistics live in buffers, so a checkpoint alone is enough to sample with PDS.
    Mixed precision (`--trainer.precision bf16-mixed`) runs the network under autocast; its score is cast
    back to float32 (`ScoreModel`), so the SDE, the PDS FFTs, the step sizes and the loss stay float32.
    `compile`: True (or torch.compile keyword arguments, e.g. {"mode": "max-autotune"}) compiles the
    networks lazily, at their first use; the compiled wrappers are not submodules, so checkpoints keep their keys.
    A class-conditional network (`num_classes`) trains on (images, labels) batches (`data.conditional`), each
    label replaced by the null class with probability `label_dropout` (classifier-free guidance).
    `reduce_mean`, `likelihood_weighting`, `train_eps`: the DSMLoss arguments of older configs and checkpoints,
    turned into `loss` once at construction (a loss that says otherwise is refused); new configs set model.loss.
    `optimizer` (pds_lightning.optim; default Adam()) builds the optimizer, warms up its rate and clips the gradient;
    `lr`, `beta1`, `adam_eps`, `weight_decay`, `warmup`, `grad_clip`: its flat keys of older configs and
    checkpoints, turned into `optimizer` the same way (optim.optimizer_with_legacy_arguments).

    The EMA is the module's own (`ema_net`, score_sde's warm-up (1 + n) / (10 + n)), not Lightning's
    EMAWeightAveraging: that callback uses a constant decay, starts its average from the first update's weights,
    stores the average as the whole `state_dict` (no `ema_net.*` keys for the converter and predict to read),
    exists only during fit, and copies the average over the raw weights when training ends.
    """

    def __init__(
        self,
        net: nn.Module,
        sde: SDE,
        continuous: bool = True,
        image_size: int = 32,
        num_channels: int = 3,
        centered: bool = False,
        loss: Loss | None = None,
        reduce_mean: bool | None = None,
        likelihood_weighting: bool | None = None,
        train_eps: float | None = None,
        optimizer: Optimizer | None = None,
        lr: float | None = None,
        beta1: float | None = None,
        adam_eps: float | None = None,
        weight_decay: float | None = None,
        warmup: int | None = None,
        grad_clip: float | None = None,
        ema_decay: float = 0.999,
        sampler: Sampler | None = None,
        compile: bool | dict[str, Any] = False,
        likelihood: LikelihoodSettings | None = None,
        label_dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if not 0.0 <= label_dropout < 1.0:
            raise ValueError(f"label_dropout must lie in [0, 1) (classifier-free guidance uses ~0.1), got {label_dropout}")
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1), got {ema_decay}")
        if image_size < 1 or num_channels < 1:
            raise ValueError(f"image_size and num_channels must be positive, got {image_size}, {num_channels}")
        contradiction = net_contradiction(net, sde, image_size, num_channels, centered)
        if contradiction:
            raise ValueError(contradiction)
        self.loss = loss_with_legacy_arguments(loss, reduce_mean=reduce_mean,
                                               likelihood_weighting=likelihood_weighting, train_eps=train_eps)
        self.optimizer = optimizer_with_legacy_arguments(optimizer, lr=lr, beta1=beta1, adam_eps=adam_eps,
                                                         weight_decay=weight_decay, warmup=warmup, grad_clip=grad_clip)
        self.save_hyperparameters(ignore=["net", "sde"])
        # The loss and the optimizer are recorded once, as model.loss / model.optimizer; the old flat arguments
        # are not kept beside them.
        self.hparams["loss"] = spec_of(self.loss, "model.loss")
        self.hparams["optimizer"] = self.optimizer.config()
        for key in (*LEGACY_DSM_ARGUMENTS, *LEGACY_ADAM_ARGUMENTS):
            self.hparams.pop(key, None)
        # Plain data only in the hyper-parameters, so checkpoints load with weights_only=True; net and sde are
        # recorded as class_path / init_args by set_class_specs (the CLI and load_from_checkpoint call it).
        self.hparams.update(net=None, sde=None)
        for key, settings_type in SETTINGS_HPARAMS.items():
            if isinstance(self.hparams.get(key), settings_type):
                self.hparams[key] = dataclasses.asdict(self.hparams[key])
        self.sampler = PC() if sampler is None else Sampler.from_config(sampler, what="model.sampler")
        self.hparams["sampler"] = self.sampler.config()
        self.net = net
        self.ema_net = copy.deepcopy(net).requires_grad_(False)
        self.sde = sde
        self.continuous = continuous
        self.centered = centered
        self.image_shape = (num_channels, image_size, image_size)
        self.likelihood = likelihood if likelihood is not None else LikelihoodSettings()
        self._alpha_choices = AlphaCache()  # resolved_sampler's choices
        if not isinstance(compile, (bool, dict)):
            raise ValueError(f"model.compile takes true/false or torch.compile options (a mapping), got {compile!r}")
        self._compiled: dict[str, nn.Module] = {}  # a plain dict: not submodules, not in the state dict
        self.draw_seed: int | None = None  # set at fit start, or from the checkpoint a fit resumes
        self.sampler.check(sde)  # a step budget the SDE cannot give fails now, not after training
        self.register_buffer("ema_num_updates", torch.zeros((), dtype=torch.long))
        self.register_buffer("stat_count", torch.zeros((), dtype=torch.float64))
        for name in ("stat_power_mean", "stat_mean", "stat_sq_mean"):
            self.register_buffer(name, torch.zeros(self.image_shape, dtype=torch.float32))

    # ---- building from, and loading, checkpoints ----------------------------------------------
    def set_class_specs(self, net: dict[str, Any] | None, sde: dict[str, Any] | None) -> None:
        """Record how net and sde were built ({'class_path', 'init_args'}) in the hyper-parameters, so a
        checkpoint of this module rebuilds them (`load_from_checkpoint` with no config)."""
        for name, spec in (("net", net), ("sde", sde)):
            if spec is not None and not (isinstance(spec, dict) and isinstance(spec.get("class_path"), str)):
                raise ValueError(f"{name} spec wants a mapping with 'class_path' and 'init_args', got {spec!r}")
            self.hparams[name] = copy.deepcopy(spec)

    @classmethod
    def from_hyper_parameters(cls, net: nn.Module | dict[str, Any] | None = None,
                              sde: SDE | dict[str, Any] | None = None, *, allowed: Iterable[str] = (),
                              **hparams: Any) -> "ScoreModule":
        """The module of plain hyper-parameters, as a checkpoint or config holds them (checkpoints.
        module_from_hyper_parameters: class paths checked against the allow-list before any import)."""
        return module_from_hyper_parameters(cls, net, sde, allowed=allowed, **hparams)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: str | os.PathLike, map_location: Any = None,
                             hparams_file: Any = None, strict: bool | None = None, allowed: Iterable[str] = (),
                             **kwargs: Any) -> "ScoreModule":
        """The module a checkpoint of `fit` or `convert-*` holds (or its `.safetensors` export), in one call and
        with no config: read untrusted (weights_only, class paths allow-listed before import; see
        checkpoints.load_module). `kwargs` override the saved hyper-parameters (e.g. sampler=PC(steps=10)),
        or supply net / sde when none is recorded; `allowed`: class paths or module prefixes you trust."""
        return load_module(cls, checkpoint_path, map_location=map_location, hparams_file=hparams_file,
                           strict=strict, allowed=allowed, **kwargs)

    # ---- score functions -------------------------------------------------------------------
    @property
    def num_classes(self) -> int | None:
        """Classes of a class-conditional network (index num_classes is the null class), else None."""
        return getattr(self.net, "num_classes", None) or None

    def score_fn(self, ema: bool = True) -> ScoreModel:
        """The score s(x, t) of the EMA (default) or the raw network (compiled when `compile` is set)."""
        return ScoreModel(self._network("ema_net" if ema else "net"), self.sde, continuous=self.continuous)

    # ---- compilation (precision/compile only) ------------------------------------------------
    def _network(self, name: str) -> nn.Module:
        """`self.net` / `self.ema_net`, or its torch.compile wrapper built at first use (lazily: a model that
        is only loaded or converted never compiles). The wrapper shares the module's parameters."""
        option = self.hparams.get("compile", False)
        net = getattr(self, name)
        if not option:
            return net
        if name not in self._compiled:
            self._compiled[name] = torch.compile(net, **(option if isinstance(option, dict) else {}))
        return self._compiled[name]

    # ---- statistics ------------------------------------------------------------------------
    @property
    def data_statistics(self) -> ImageStatistics | None:
        """Preconditioner statistics held in the buffers, or None when none were set."""
        if float(self.stat_count) <= 0:
            return None
        return ImageStatistics.from_moments(
            count=int(self.stat_count), power_mean=self.stat_power_mean, mean=self.stat_mean,
            sq_mean=self.stat_sq_mean)

    def set_statistics(self, stats: ImageStatistics) -> None:
        """Copy data statistics into the buffers (checked against the model's image shape)."""
        shape = tuple(stats.power_mean.shape)
        if shape != self.image_shape:
            raise ValueError(
                f"data statistics have shape {shape} but the model expects images {self.image_shape}; "
                "set data.images.size / data.images.num_channels to match model.image_size / model.num_channels")
        self.stat_count.fill_(float(stats.count))
        self.stat_power_mean.copy_(stats.power_mean)
        self.stat_mean.copy_(stats.mean)
        self.stat_sq_mean.copy_(stats.sq_mean)

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        stats = getattr(dm, "statistics", None)
        if stats is not None:
            self.set_statistics(stats)
        data_classes = getattr(dm, "num_classes", None)
        if data_classes is not None and data_classes != self.num_classes:
            raise ValueError(f"the data have {data_classes} classes but model.net has num_classes={self.num_classes}; "
                             f"set model.net.init_args.num_classes: {data_classes}")

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse, in one line naming the keys, a checkpoint of another architecture (before the strict load);
        take its training draw seed (a resumed fit continues the same draws)."""
        problem = state_dict_mismatch(self.state_dict(), checkpoint.get("state_dict", {}))
        if problem:
            raise ValueError(f"checkpoint does not fit this model ({problem}); it was trained with another "
                             "model.net / data.images.size config: use the config.yaml saved next to the checkpoint")
        if checkpoint.get(DRAW_SEED_KEY) is not None:
            self.draw_seed = int(checkpoint[DRAW_SEED_KEY])

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.draw_seed is not None:
            checkpoint[DRAW_SEED_KEY] = self.draw_seed

    # ---- training --------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        if not self.continuous:
            raise ValueError("training follows score_sde's continuous-time objective; set model.continuous: true "
                             "(discrete-time models, e.g. imported ones, can still sample)")
        if self.draw_seed is None:  # a resumed fit keeps its checkpoint's (seed_everything may differ now)
            self.draw_seed = int(self.trainer.strategy.broadcast(torch.initial_seed(), src=0))

    @contextlib.contextmanager
    def step_draws(self, batch_idx: int, device: torch.device):
        """The training step's random draws as a function of (draw_seed, epoch, batch, rank) alone, so a fit
        resumed from any checkpoint draws what the uninterrupted fit drew (nothing but the counters is saved).
        Yields a generator for the draws that take one (label dropout, the loss's noise levels and noise) and
        meanwhile restarts the default generators of the CPU and `device` for those that do not (network
        dropout); they continue as before afterwards."""
        seed = self.draw_seed if self.draw_seed is not None else torch.initial_seed()
        key = (seed, self.current_epoch, batch_idx, self.global_rank)
        generator = torch.Generator(device=device).manual_seed(derived_seed(*key, "step"))
        with seeded_default_generators(derived_seed(*key, "default"), device):
            yield generator

    def _class_score(self, ema: bool, labels: torch.Tensor | None, dropout: float = 0.0,
                     generator: torch.Generator | None = None):
        """The score model of the batch's classes (labels dropped to the null class with probability `dropout`,
        drawn from `generator`), or the unconditional one; either way callable as model(x, t) with `denoise`
        beside it (losses use both)."""
        score = self.score_fn(ema=ema)
        if labels is None or self.num_classes is None:
            if self.num_classes is not None:
                raise ValueError("this model is class-conditional (num_classes) but the batches carry no labels; "
                                 "set data.conditional: true")
            return score
        if dropout > 0:
            drop = torch.rand(labels.shape, device=labels.device, generator=generator) < dropout
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        return LabelledScore(score, labels)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        x, labels = _images_labels(batch)
        with self.step_draws(batch_idx, x.device) as generator:
            score = self._class_score(False, labels, self.hparams.get("label_dropout", 0.0), generator)
            loss = self.loss(score, self.sde, x, generator=generator)
        self._check_finite_loss(loss)
        self.log("train/loss", loss, prog_bar=True, batch_size=x.shape[0])
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=x.shape[0])
        return loss

    def _check_finite_loss(self, loss: torch.Tensor) -> None:
        """NonFiniteLossError before backward when the loss is NaN / Inf on this rank or any other: one isfinite per
        step (not detect_anomaly). Under DDP the decision is all-reduced, so every rank stops at the same step;
        a rank that went on alone would wait forever in the gradient all-reduce."""
        loss = loss.detach()
        finite = bool(torch.isfinite(loss))
        # The strategy all-reduces the decision (on one process it is the decision itself).
        strategy = None if self._trainer is None else self.trainer.strategy
        all_finite = finite if strategy is None else strategy.reduce_boolean_decision(finite, all=True)
        if not all_finite:
            raise NonFiniteLossError(int(self.global_step), float(loss) if not finite else None)

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        x, labels = _images_labels(batch)
        # Fixed noise per batch, so the validation loss is comparable across epochs.
        g = torch.Generator(device=x.device).manual_seed(batch_idx)
        with torch.no_grad():
            loss = self.loss(self._class_score(True, labels), self.sde, x, generator=g)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=x.shape[0])
        if batch_idx == 0 and self.likelihood.val_images > 0:  # the first images of each rank's first batch
            self._log_bits_per_dim("val/bpd", x[: self.likelihood.val_images], batch_idx)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # No scheduler: the warm-up is a function of the global step (set_warmup_lr), so a resumed run,
        # including one from a converted score_sde checkpoint that carries no scheduler state, continues it.
        return self.optimizer.build(self.net.parameters())

    def set_warmup_lr(self, step: int) -> float:
        """Set the optimizer's rate to model.optimizer's value for `step` optimizer steps taken; returns it."""
        lr = self.optimizer.lr_at(step)
        for optimizer in self.trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = lr
        return lr

    def on_train_start(self) -> None:
        self.set_warmup_lr(self.global_step)  # after a resume, before the first batch (and LearningRateMonitor)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        grad_norm = self.optimizer.clip(self.net.parameters())
        self.log("train/grad_norm", grad_norm)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        self.set_warmup_lr(self.global_step)  # score_sde: the step count before this update
        super().optimizer_step(*args, **kwargs)
        self.update_ema()
        self.set_warmup_lr(self.global_step + 1)  # the next update's rate, as loggers will read it

    @torch.no_grad()
    def update_ema(self) -> None:
        """One EMA update with score_sde's warm-up rule (counter first, then the decay)."""
        self.ema_num_updates += 1
        decay = ema_decay_at(self.hparams.ema_decay, int(self.ema_num_updates))
        for p_ema, p in zip(self.ema_net.parameters(), self.net.parameters()):
            p_ema.lerp_(p.detach(), 1.0 - decay)
        for b_ema, b in zip(self.ema_net.buffers(), self.net.buffers()):
            b_ema.copy_(b)

    # ---- sampling --------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, sampler: Sampler, seeds: torch.Tensor, classes: torch.Tensor | None = None):
        """Sample one image per seed with the EMA weights; returns a SampleResult with x in [0, 1].
        `classes` (one per seed) samples a class-conditional model guided by sampler.guidance_scale."""
        self.ema_net.eval()
        sampler, choice = self.resolved_sampler(sampler)
        result = generate(sampler, self.score_fn(ema=True), self.sde, seeds.to(self.device),
                          self.image_shape, statistics=self.data_statistics, centered=self.centered,
                          classes=None if classes is None else torch.as_tensor(classes).to(self.device))
        result.x = to_unit_range(result.x, self.centered).clamp(0.0, 1.0)
        if choice is not None:
            result.info["alpha_auto"] = choice
        return result

    @torch.no_grad()
    def generate_images(self, seeds: int | Iterable[int] | torch.Tensor, sampler: Sampler | None = None,
                        batch_size: int | None = None, classes: Iterable[int] | torch.Tensor | None = None
                        ) -> torch.Tensor:
        """Images `[len(seeds), C, H, W]` in [0, 1] (float32, on the CPU) for the given seeds, e.g.
        `ScoreModule.load_from_checkpoint(path).generate_images(range(16))`; an int n means seeds 0..n-1. Seeds
        follow predict's rules and messages (`data.seeds.seed_values`: integers in [0, MAX_SEED], at most
        MAX_SEEDS a call); non-finite weights are refused before sampling.

        `sampler` (a component or its {'class_path', 'init_args'}) defaults to the module's predict sampler;
        `batch_size` bounds memory. A seed's noise does
        not depend on its batch, so the images are those `pds-lightning predict` writes for the seeds (up to
        float rounding when the batches differ). `classes`: one class per seed (class-conditional models).
        """
        seeds = torch.tensor(seed_values(seeds), dtype=torch.long)  # the CLI's seed rules (data.predict.seeds)
        # Weights that turned NaN after loading (e.g. training in this process) would give NaN images.
        check_finite_weights({k: v for k, v in self.state_dict().items() if not k.startswith("net.")}, "ScoreModule")
        sampler = self.sampler if sampler is None else Sampler.from_config(sampler, what="sampler")
        step = seeds.numel() if batch_size is None else int(batch_size)
        if step < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if classes is not None:
            classes = torch.as_tensor(classes if torch.is_tensor(classes) else list(classes), dtype=torch.long)
            if classes.shape != seeds.shape:
                raise ValueError(f"{classes.numel()} classes for {seeds.numel()} seeds; give one class per seed")
        chunks = [self.sample(sampler, seeds[i:i + step].long(), None if classes is None else classes[i:i + step]
                              ).x.float().cpu() for i in range(0, len(seeds), step)]
        return torch.cat(chunks)

    @torch.no_grad()
    def resolved_sampler(self, sampler: Sampler) -> tuple[Sampler, dict | None]:
        """`sampler` with its PDS alpha chooser resolved by pds_lightning.alpha.resolve_alpha, once per sampler and
        training step (`alpha.AlphaCache`: a pilot samples the model, so it is not repeated per batch), the same on
        every rank (rank 0's choice), and logged; other samplers come back unchanged with None."""
        sampler = Sampler.from_config(sampler, what="sampler")
        if sampler.pds is None or not sampler.pds.chooses_alpha:
            return sampler, None
        choice = self._alpha_choices.get(sampler, int(self.global_step), self._choose_alpha)
        return sampler.with_alpha(choice["alpha"]), choice

    def _choose_alpha(self, sampler: Sampler) -> dict:
        """resolve_alpha's choice for `sampler` (rank 0's on every rank), logged to TensorBoard by rank 0."""
        _, choice = resolve_alpha(sampler, self.sde, self.data_statistics, centered=self.centered,
                                  score_fn=self.score_fn(ema=True), shape=self.image_shape, device=self.device)
        if self._trainer is not None and self.trainer.world_size > 1:
            choice = self.trainer.strategy.broadcast(choice, src=0)
        experiment = getattr(self.logger, "experiment", None) if self._trainer is not None else None
        if hasattr(experiment, "add_scalar") and self.global_rank == 0:
            log_alpha_choice(experiment, sampler.name, choice, self.global_step)
        return choice

    # ---- likelihood ------------------------------------------------------------------------
    def bits_per_dim(self, x: torch.Tensor, batch_idx: int = 0) -> torch.Tensor:
        """Bits/dim [B] of model-space images under the EMA model (`self.likelihood` settings; the draws depend
        only on (likelihood.seed, rank, batch_idx))."""
        self.ema_net.eval()
        return bits_per_dim_of_batch(self.score_fn(ema=True), self.sde, x, self.centered, self.likelihood,
                                     rank=self.global_rank, batch_idx=batch_idx)

    def _log_bits_per_dim(self, name: str, x: torch.Tensor, batch_idx: int) -> torch.Tensor:
        bpd = self.bits_per_dim(x, batch_idx)
        # sync_dist: the mean over all ranks' images, weighted by batch size (Lightning's reduction).
        self.log(name, bpd.mean(), prog_bar=True, sync_dist=True, batch_size=x.shape[0])
        return bpd

    def test_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        """Bits/dim of the test images (`pds-lightning likelihood`), logged as test/bpd over all ranks."""
        return self._log_bits_per_dim("test/bpd", _images(batch), batch_idx)

    # ---- inpainting / colorization ----------------------------------------------------------
    @torch.no_grad()
    def complete(self, batch: dict[str, Any], batch_idx: int = 0) -> dict[str, Any]:
        """Fill in a task batch (data.tasks): each (input, seed) row sampled by `self.sampler`, the known part its
        task (`batch['task']`, an Inpaint / Colorize) says kept."""
        self.ema_net.eval()
        sampler, choice = self.resolved_sampler(self.sampler)
        task, image = batch["task"], batch["image"]
        if tuple(image.shape[1:]) != self.image_shape:
            raise ValueError(f"task images are {tuple(image.shape[1:])} but the model takes {self.image_shape}; "
                             "set data.images.size / data.images.num_channels to the model's")
        shown = task.shown(image, batch["mask"])
        known = task.known_part(to_model_space(shown, self.centered), batch["mask"])
        result = generate(sampler, self.score_fn(ema=True), self.sde, batch["seed"], known.y.shape, known=known,
                          statistics=self.data_statistics, centered=self.centered)
        filled = task.finish(to_unit_range(result.x, self.centered))
        if batch_idx == 0:
            self._log_completions(task.name, shown, filled, image)
        info = {"alpha_auto": choice} if choice is not None else {}
        return {"indices": batch["index"].long().cpu(), "seeds": batch["seed"].long().cpu(),
                "images": filled.float().cpu(), "nfe": result.nfe, "info": info}

    def _log_completions(self, kind: str, shown: torch.Tensor, filled: torch.Tensor, truth: torch.Tensor) -> None:
        """TensorBoard: rows of (input, completion, truth) for the first batch."""
        experiment = getattr(self.logger, "experiment", None) if self._trainer is not None else None
        if not hasattr(experiment, "add_images") or self.global_rank != 0:
            return
        rows = torch.cat([shown, filled, truth], dim=-1)[:8]
        experiment.add_images(f"{kind}/input_filled_truth", rows.float().cpu(), self.global_step)

    def predict_step(self, batch: torch.Tensor, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        if isinstance(batch, dict):
            return self.complete(batch, batch_idx)
        classes = None
        if isinstance(batch, (list, tuple)):  # (seeds, classes) from data.predict.classes
            batch, classes = batch
        seeds = batch if torch.is_tensor(batch) else torch.as_tensor(batch)
        result = self.sample(self.sampler, seeds.long(), classes)
        out = {"seeds": seeds.long().cpu(), "images": result.x.float().cpu(), "nfe": result.nfe, "info": result.info}
        if classes is not None:
            out["classes"] = torch.as_tensor(classes).long().cpu()
        return out


@contextlib.contextmanager
def seeded_default_generators(seed: int, device: torch.device):
    """Within: the default generators of the CPU and of `device` (its current one: Lightning's root device)
    start from `seed`; after: both continue from where they were (torch.random.fork_rng)."""
    accelerator = device.type != "cpu"
    with torch.random.fork_rng(devices=[device] if accelerator else [],
                               device_type=device.type if accelerator else None):
        torch.random.default_generator.manual_seed(seed)
        if accelerator:
            torch.get_device_module(device.type).manual_seed(seed)
        yield


def net_contradiction(net: nn.Module, sde: SDE, image_size: int, num_channels: int, centered: bool) -> str | None:
    """A one-line error when the network's own copy of a fact disagrees with its home: the image geometry
    (data:, linked to the model) or the VE noise levels (model.sde); None when they agree or the net has none."""
    pairs = [(f"model.net {name}={_net_fact(net, name)}", f"data.images.{key}={value}", _net_fact(net, name), value)
             for name, key, value in (("image_size", "size", image_size),
                                      ("num_channels", "num_channels", num_channels))]
    if centered and _net_fact(net, "centered") is False:
        # Only this direction is always wrong (data in [-1, 1] remapped again by 2x - 1). A network that takes
        # [0, 1] data as they are (diffusers' center_input_sample: false, the net inside EDMPrecond) is sound.
        pairs.append(("model.net centered=False", "data.images.centered=True", False, True))
    sigmas = getattr(net, "sigmas", None)
    if isinstance(sde, VESDE) and torch.is_tensor(sigmas) and sigmas.numel() > 1:
        # score_sde's network keeps the SMLD levels sigma_max -> sigma_min; a VE model's must be the SDE's.
        pairs += [(f"model.net num_scales={sigmas.numel()}", f"model.sde num_scales={sde.N}", sigmas.numel(), sde.N),
                  (f"model.net sigma_max={float(sigmas[0]):g}", f"model.sde sigma_max={sde.sigma_max:g}",
                   round(float(sigmas[0]) / sde.sigma_max, 5), 1.0),
                  (f"model.net sigma_min={float(sigmas[-1]):g}", f"model.sde sigma_min={sde.sigma_min:g}",
                   round(float(sigmas[-1]) / sde.sigma_min, 5), 1.0)]
    for net_side, home, a, b in pairs:
        if a is not None and a != b:
            return f"{net_side} contradicts {home}; give both the same value in the config"
    return None


def _net_fact(net: nn.Module, name: str):
    """The network's own value of `name` (an attribute, or a field of a `config` it carries), else None."""
    value = getattr(net, name, None)
    return getattr(getattr(net, "config", None), name, None) if value is None else value


def _images(batch: Any) -> torch.Tensor:
    """Training batches are image tensors; tolerate (images, labels) pairs from torchvision-style loaders."""
    return batch[0] if isinstance(batch, (list, tuple)) else batch


def _images_labels(batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(images, class labels or None) of a batch: an image tensor, or an (images, labels) pair."""
    if isinstance(batch, (list, tuple)):
        return batch[0], (batch[1] if len(batch) > 1 else None)
    return batch, None
